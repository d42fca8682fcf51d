//! The vote hold a node said before it restarted.
//!
//! Each member says through the log how long it refuses votes after it
//! hears a leader (`NodeCommand::VotesHeld`), and a leader's lease lasts no
//! longer than the shortest word among its voters (`shard::lease`). A word
//! stays in force at a leader until the member's next word is applied
//! there. A node restarted with shorter settings (`--election-ticks-min` or
//! `--tick-interval`) therefore keeps its old, longer hold until its new
//! word is in force. Before, it held only its new hold after the restart:
//! two such nodes, cut off from their leader, elected one of their own and
//! took writes while the old leader still served lease reads sized by
//! their old word (`t50_chaos::
//! voters_restarted_with_a_shorter_hold_serve_no_stale_lease_read`).
//!
//! The node keeps the longest hold it may have said in [`VOTES_HELD_FILE`]
//! in its data directory, written durably before any shard starts, so
//! before any longer word is said. A start with shorter settings raises
//! every shard's hold to the old one (its restart hold included: the
//! engine's [`engine::Raft::set_vote_hold_ticks`]) until the shard has
//! applied its new word from an entry of a term after the one it started
//! in (so after any older word that may still commit; see
//! `Shard::release_vote_hold`). Once every shard has, the file records
//! the new hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::membership::{data_dir_error, write_durably, JoinError};

/// The file in the data directory that records the longest vote hold the
/// node may have said (microseconds).
pub const VOTES_HELD_FILE: &str = "votes-held";

/// A node's shards hold their votes longer than its settings say, for the
/// hold it said before its restart.
#[derive(Debug)]
pub struct SaidHold {
    dir: PathBuf,
    /// What the node said before its restart.
    before: Duration,
    /// What its settings say now (shorter).
    now: Duration,
    /// Shards whose new word is not in force yet.
    shards_left: AtomicU32,
}

impl SaidHold {
    /// Reads what the node said before this start and records this start's
    /// hold, `now`, when it is longer (or nothing was recorded). `Some` when
    /// the node said a longer hold before: its `shards` must keep it.
    pub fn at_start(dir: &Path, now: Duration, shards: u32) -> Result<Option<Arc<SaidHold>>, JoinError> {
        let before = read(dir)?;
        match before {
            Some(before) if before > now => {
                tracing::warn!(
                    before = ?before,
                    now = ?now,
                    "this node said it refuses votes for {before:?} after it hears a leader, and its settings now \
                     say {now:?}: it keeps the longer hold until its new word is in force (leaders may still size \
                     their leases by the old one)"
                );
                let left = AtomicU32::new(shards);
                Ok(Some(Arc::new(SaidHold { dir: dir.to_path_buf(), before, now, shards_left: left })))
            }
            Some(before) if before == now => Ok(None),
            _ => write(dir, now).map(|()| None),
        }
    }

    /// The hold the node said before its restart, which its shards keep.
    pub fn before(&self) -> Duration {
        self.before
    }

    /// One shard's new word is in force; when it is the last, the file
    /// records the new hold (a restart then no longer raises it).
    pub fn shard_released(&self) {
        if self.shards_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        match write(&self.dir, self.now) {
            Ok(()) => tracing::info!(now = ?self.now, "every shard's new vote hold is in force"),
            Err(error) => tracing::warn!(error = %error.0, "the new vote hold is in force but not recorded: a restart \
                 keeps the old one again until its word is in force"),
        }
    }
}

fn read(dir: &Path) -> Result<Option<Duration>, JoinError> {
    let path = dir.join(VOTES_HELD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .strip_prefix("micros=")
            .and_then(|micros| micros.parse().ok())
            .map(|micros| Some(Duration::from_micros(micros)))
            .ok_or_else(|| data_dir_error(dir, format!("{} is damaged: {text:?}", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(data_dir_error(dir, format!("cannot read {}: {error}", path.display()))),
    }
}

fn write(dir: &Path, hold: Duration) -> Result<(), JoinError> {
    write_durably(dir, VOTES_HELD_FILE, &format!("micros={}\n", hold.as_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("vote-hold-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_longer_hold_said_before_is_kept_until_every_shard_releases_it() {
        let dir = Scratch::new("kept");
        let long = Duration::from_secs(4);
        let short = Duration::from_millis(300);
        assert!(SaidHold::at_start(dir.path(), long, 2).unwrap().is_none(), "a first start says its own");
        assert_eq!(read(dir.path()).unwrap(), Some(long));
        let said = SaidHold::at_start(dir.path(), short, 2).unwrap().expect("the longer hold said before");
        assert_eq!(said.before(), long);
        said.shard_released();
        assert_eq!(read(dir.path()).unwrap(), Some(long), "one shard of two");
        // A restart now still keeps the longer hold.
        assert!(SaidHold::at_start(dir.path(), short, 2).unwrap().is_some());
        said.shard_released();
        assert_eq!(read(dir.path()).unwrap(), Some(short), "every shard's new word is in force");
        assert!(SaidHold::at_start(dir.path(), short, 2).unwrap().is_none());
        // A longer hold is recorded at the start, before any word says it.
        assert!(SaidHold::at_start(dir.path(), long, 2).unwrap().is_none());
        assert_eq!(read(dir.path()).unwrap(), Some(long));
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let dir = Scratch::new("damaged");
        std::fs::write(dir.path().join(VOTES_HELD_FILE), "micros=x\n").unwrap();
        let error = SaidHold::at_start(dir.path(), Duration::from_millis(300), 1).unwrap_err();
        assert!(error.0.contains("is damaged"), "{}", error.0);
    }
}
