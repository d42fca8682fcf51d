//! Why bytes from the network are not a valid frame.
//!
//! Every variant is bad input from a remote end, never a bug: the connection
//! that sent it is closed with the error logged, and the process serves on.

use engine::BatchError;

use crate::frame::FrameKind;

/// A frame that could not be decoded. The variants name the first check that
/// failed, so a log line says exactly what the remote end got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad frame magic {found:#010x}: the remote end does not speak this protocol")]
    BadMagic { found: u32 },
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported protocol version {found} (this build speaks {})", crate::frame::PROTOCOL_VERSION)]
    BadVersion { found: u8 },
    #[error("unknown frame kind {found}")]
    UnknownKind { found: u8 },
    #[error("reserved frame flags {found:#06x} are set")]
    BadFlags { found: u16 },
    #[error("frame of {length} bytes exceeds frame_size_max {limit}")]
    TooLarge { length: usize, limit: usize },
    #[error("frame body checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyChecksum { stored: u32, computed: u32 },
    #[error("{kind:?} body too short: need {needed} bytes, have {available}")]
    BodyTooShort { kind: FrameKind, needed: usize, available: usize },
    #[error("{kind:?} body has {count} bytes left over")]
    TrailingBytes { kind: FrameKind, count: usize },
    #[error("{kind:?} field {field}: {reason}")]
    BadField { kind: FrameKind, field: &'static str, reason: &'static str },
    #[error("AppendEntries carries a bad entry batch: {0}")]
    Batch(#[from] BatchError),
}
