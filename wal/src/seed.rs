//! A data directory seeded with a snapshot and nothing else (`node
//! restore`): the replica starts from that snapshot, with an empty log
//! after it, as if it had installed it from a leader.
//!
//! [`Seed::create`] refuses a directory that holds anything of a node's
//! (a restore never overwrites a replica); the snapshot's data is written
//! through [`std::io::Write`] into a temporary file (synced as it goes);
//! [`Seed::finish`] seals and renames it as any stored snapshot is (checked
//! against the checksum computed on the way in, read back), then writes the
//! hard state (the snapshot's term, its index committed and acknowledged)
//! and, last, the IDENTITY file, whose presence means the directory is
//! complete: a restore that stops before it leaves a directory the node
//! refuses to start from (`MissingIdentity`) rather than a partial one.

use std::fs::File;
use std::path::{Path, PathBuf};

use engine::{HardState, SnapshotMeta};

use crate::dir::{self, LOCK_FILE};
use crate::error::WalError;
use crate::hard_state::{self, HARD_STATE_FILE};
use crate::snapshot::{self, SnapshotDraft, StoredSnapshot};

/// A data directory being seeded; see the module documentation.
pub struct Seed {
    dir: PathBuf,
    cluster_id: u64,
    node_id: u64,
    draft: SnapshotDraft,
    /// Held until the directory is complete.
    _lock: File,
}

impl Seed {
    /// Creates `dir` if needed and starts the snapshot `meta` in it.
    /// Refused when `dir` holds any file (a node's data, or anything else).
    pub fn create(dir: &Path, cluster_id: u64, node_id: u64, meta: SnapshotMeta) -> Result<Seed, WalError> {
        std::fs::create_dir_all(dir).map_err(|error| WalError::io("creating", dir, error))?;
        let listing = std::fs::read_dir(dir).map_err(|error| WalError::io("listing", dir, error))?;
        for entry in listing {
            let entry = entry.map_err(|error| WalError::io("listing", dir, error))?;
            if entry.file_name() != LOCK_FILE {
                return Err(WalError::Config {
                    reason: format!(
                        "{} is not empty (it holds {}): a restore writes only into an empty directory",
                        dir.display(),
                        entry.file_name().to_string_lossy()
                    ),
                });
            }
        }
        let lock = dir::lock_dir(dir)?;
        let draft = SnapshotDraft::create(dir, meta, false, 0)?;
        Ok(Seed { dir: dir.to_path_buf(), cluster_id, node_id, draft, _lock: lock })
    }

    /// Bytes of snapshot data written so far.
    pub fn length(&self) -> u64 {
        self.draft.length()
    }

    /// Seals the snapshot, writes the hard state and the identity; returns
    /// the snapshot's data length. Blocking (runs the seal on a tokio-uring
    /// runtime of its own: do not call it from one).
    pub fn finish(self) -> Result<u64, WalError> {
        let Seed { dir, cluster_id, node_id, draft, _lock } = self;
        let meta = draft.meta().clone();
        let stored = StoredSnapshot { meta: meta.clone(), segment_sequence_min: 0 };
        let length = tokio_uring::start(snapshot::seal(&dir, &stored, draft))?;
        let hard_state =
            HardState { term: meta.term, vote: 0, commit: meta.index, ack_term: meta.term, verified: true };
        hard_state::write_initial(&dir, hard_state, meta.index)?;
        dir::write_identity(&dir, cluster_id, node_id)?;
        // Read back whole, as a node's open will.
        snapshot::load_head_blocking(&dir)?;
        debug_assert!(dir.join(HARD_STATE_FILE).exists());
        Ok(length)
    }
}

impl std::io::Write for Seed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.draft.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use engine::ConfState;

    use super::*;
    use crate::store::LogStore;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { index: 40, term: 6, conf: ConfState::new([1, 2, 3], []) }
    }

    /// A seeded directory opens as a log whose snapshot is the seed, with
    /// nothing after it, the hard state at the snapshot's term and index,
    /// and no repair to do.
    #[test]
    fn a_seeded_directory_opens_at_its_snapshot() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("shard-0");
        let mut seed = Seed::create(&dir, 9, 2, meta()).unwrap();
        seed.write_all(b"the state").unwrap();
        assert_eq!(seed.finish().unwrap(), 9);
        tokio_uring::start(async {
            let config = crate::WalConfig::new(dir.clone(), 9, 2);
            let (wal, recovered) = crate::Wal::open(config).await.unwrap();
            assert_eq!(recovered.snapshot, Some(meta()));
            assert!(recovered.entries.is_empty());
            assert_eq!((recovered.hard_state.term, recovered.hard_state.commit), (6, 40));
            assert_eq!(recovered.acknowledged, 40);
            let (stored, _, mut reader) = wal.open_snapshot(true).unwrap().unwrap();
            assert_eq!(stored, meta());
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            assert_eq!(data, b"the state");
            wal.close().await.unwrap();
        });
    }

    /// A directory holding anything is refused, and a seed dropped before
    /// `finish` leaves no file a node would start from.
    #[test]
    fn a_seed_needs_an_empty_directory_and_an_unfinished_one_leaves_nothing() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("notes.txt"), b"mine").unwrap();
        let refused = Seed::create(temp.path(), 9, 2, meta()).err().expect("refused");
        assert!(refused.to_string().contains("not empty"), "{refused}");
        let dir = temp.path().join("shard-0");
        let mut seed = Seed::create(&dir, 9, 2, meta()).unwrap();
        seed.write_all(b"half").unwrap();
        drop(seed);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|name| name == LOCK_FILE), "{left:?}");
    }
}
