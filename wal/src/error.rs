//! The one error type of the crate. Every variant is an operating condition
//! (bad disk data, a full disk, a caller asking for something the log's shape
//! forbids), never a bug: bugs are assertions.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::Index;

/// What went wrong, phrased so the operator or the caller knows what to do.
///
/// The type is `Clone` because one failure of the commit pipeline is handed to
/// every waiter; I/O errors are shared through an `Arc` for that reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("io_uring is unavailable ({reason}); the WAL needs Linux io_uring: check the kernel version and the container's seccomp profile")]
    IoUringUnavailable { reason: String },
    #[error("data directory {path} does not exist; create it or point the node at the right directory")]
    DirMissing { path: PathBuf },
    #[error("data directory {path} is not writable ({source}); fix its permissions or mount")]
    DirUnwritable { path: PathBuf, source: Arc<io::Error> },
    #[error("data directory {path} is in use by another process (its LOCK file is held)")]
    DirLocked { path: PathBuf },
    #[error("data directory {path} belongs to cluster {found_cluster} node {found_node}, but this node is cluster {expected_cluster} node {expected_node}; use the right directory")]
    WrongIdentity { path: PathBuf, found_cluster: u64, found_node: u64, expected_cluster: u64, expected_node: u64 },
    #[error("data directory {path} has format version {found}; this build reads version {expected}")]
    UnsupportedFormat { path: PathBuf, found: u32, expected: u32 },
    #[error("data directory {path} holds log files but no IDENTITY file; refusing to guess whose log it is")]
    MissingIdentity { path: PathBuf },
    #[error("corrupt {file} at offset {offset}: expected {expected}, found {found}")]
    Corrupt { file: PathBuf, offset: u64, expected: String, found: String },
    #[error("disk full while {op} {path}; free space, then restart the node")]
    NoSpace { op: &'static str, path: PathBuf },
    #[error("I/O error while {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: Arc<io::Error> },
    #[error("the log stopped accepting writes after an earlier failure: {cause}")]
    Stopped { cause: Box<WalError> },
    #[error("the append queue is full ({queued_bytes} of {queued_bytes_max} bytes not yet durable); wait for durability and retry")]
    QueueFull { queued_bytes: usize, queued_bytes_max: usize },
    #[error("batch of {length} bytes exceeds batch_bytes_max {batch_bytes_max}; split it")]
    BatchTooLarge { length: usize, batch_bytes_max: usize },
    #[error("append at index {first} would leave a gap after the last index {last}")]
    Gap { first: Index, last: Index },
    #[error("append at index {first} rewrites entries covered by the snapshot at {snapshot}")]
    BeforeSnapshot { first: Index, snapshot: Index },
    #[error("compaction to index {index} goes past the stored snapshot at {snapshot}; save a snapshot first")]
    CompactBeyondSnapshot { index: Index, snapshot: Index },
    #[error("snapshot at index {index} is older than the stored snapshot at {current}")]
    SnapshotStale { index: Index, current: Index },
    #[error("snapshot of {length} bytes exceeds snapshot_bytes_max {snapshot_bytes_max}")]
    SnapshotTooLarge { length: u64, snapshot_bytes_max: u64 },
    #[error("invalid WAL configuration: {reason}")]
    Config { reason: String },
    #[error("the log is closed")]
    Closed,
}

impl WalError {
    /// Wraps an I/O error, giving a full disk its own variant because the
    /// operator's remedy differs.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> WalError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return WalError::NoSpace { op, path: path.to_path_buf() };
        }
        WalError::Io { op, path: path.to_path_buf(), source: Arc::new(source) }
    }

    /// Builds a corruption error naming what was expected where.
    pub(crate) fn corrupt(file: &Path, offset: u64, expected: impl Into<String>, found: impl Into<String>) -> WalError {
        WalError::Corrupt { file: file.to_path_buf(), offset, expected: expected.into(), found: found.into() }
    }

    /// Whether this error means the log refuses further writes (as opposed to
    /// a refused request the caller can correct).
    pub fn is_fatal(&self) -> bool {
        matches!(self, WalError::NoSpace { .. } | WalError::Io { .. } | WalError::Stopped { .. })
    }
}
