//! The durable Raft log of one shard, on io_uring.
//!
//! - Records are the engine's entry batches, byte for byte ([`engine::batch`]):
//!   a follower writes what it received without re-encoding, and every record
//!   carries its own crc32c.
//! - Segment files of a configured size, preallocated, the next one prepared
//!   ahead of need ([`segment`]).
//! - Group commit with pipelined, self-syncing (`O_DSYNC`), direct (`O_DIRECT`,
//!   4 KiB-aligned) writes, durability reported in
//!   submission order, a bounded queue (`commit.rs`).
//! - Recovery that cuts a torn tail and refuses corruption elsewhere, naming
//!   the file and offset (`recovery.rs`).
//! - The hard state in two alternating checksummed slots ([`hard_state`]);
//!   snapshots as checksummed files written under a temporary name and renamed
//!   ([`snapshot`]); a data-directory identity and lock ([`dir`]).
//!
//! The node talks to storage through [`LogStore`]; [`Wal`] is the io_uring
//! implementation and [`MemLog`] the in-memory one, and [`testing::suite`]
//! holds both to the same behaviour.

mod commit;
pub mod config;
pub mod dir;
pub mod error;
pub mod filesystem;
pub mod hard_state;
pub mod mem;
mod recovery;
mod reread;
pub mod seed;
pub mod segment;
pub mod snapshot;
pub mod store;
mod terms;
pub mod testing;
pub mod wal;

pub use commit::WalStats;
pub use config::WalConfig;
pub use error::WalError;
pub use mem::{MemDisk, MemLog};
pub use recovery::{
    claimed_after_damage, recover_images, settle_taker, DroppedReader, ImageRecovery, RecoveryApply, SegmentImage,
};
pub use seed::Seed;
pub use snapshot::{SnapshotDraft, SnapshotReader};
pub use store::{AppendTicket, LogStore};
pub use wal::Wal;

/// Checks that this process may use io_uring, by setting up (and dropping) a
/// small ring. `tokio_uring::start` panics when io_uring is unavailable (an old
/// kernel, or a container whose seccomp profile blocks it); call this first and
/// report the error instead.
pub fn io_uring_available() -> Result<(), WalError> {
    io_uring::IoUring::new(2).map(drop).map_err(|error| WalError::IoUringUnavailable { reason: error.to_string() })
}

/// Runs `future` on a new tokio-uring runtime on this thread, or returns
/// [`WalError::IoUringUnavailable`] instead of panicking when io_uring cannot
/// be used.
pub fn try_start<F: std::future::Future>(future: F) -> Result<F::Output, WalError> {
    io_uring_available()?;
    Ok(tokio_uring::start(future))
}
