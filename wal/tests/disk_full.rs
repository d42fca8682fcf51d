//! A full disk makes the log wait for space, not fail: appends queue, the log
//! says it is full, writes resume by themselves once space is freed, and
//! nothing is reported durable that is not. The test mounts a small tmpfs, so it needs root (as in
//! CI); without the privilege it says so and checks nothing.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use wal::testing::{batch, shape};
use wal::{LogStore, Wal, WalConfig};

/// A 256 KiB tmpfs, unmounted and removed when dropped.
struct Mount(PathBuf);

impl Mount {
    /// Where a test puts the file that fills the disk.
    fn ballast(&self) -> PathBuf {
        self.0.join("ballast")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A 256 KiB tmpfs named after `name`, holding a log directory configured
/// with 64 KiB segments and 16 KiB writes; `None` (said loudly) without the
/// privilege to mount.
fn small_disk(name: &str) -> Option<(Mount, WalConfig)> {
    wal::io_uring_available().expect("these tests need io_uring");
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(&dir).status();
    if !mounted.is_ok_and(|status| status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs at {} (needs root)", dir.display());
        return None;
    }
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let mut config = WalConfig::new(dir.join("log"), 1, 1);
    config.segment_bytes = 64 << 10;
    config.write_bytes_max = 16 << 10;
    config.batch_bytes_max = 16 << 10;
    Some((Mount(dir), config))
}

/// Issue 16: before, a full disk stopped the log for good ("disk full while
/// preallocating"), and the node answered `Busy` until restarted.
#[test]
fn disk_full_waits_for_space_and_resumes_by_itself() {
    let Some((mount, config)) = small_disk("wal-full") else { return };
    let ballast = mount.ballast();
    let durable_index = tokio_uring::start(async {
        let (wal, _) = Wal::open(config.clone()).await.unwrap();
        // The active segment and its spare take 128 KiB; the ballast leaves
        // too little room for a third segment.
        std::fs::write(&ballast, vec![1u8; 96 << 10]).unwrap();
        let wait = Duration::from_secs(3);
        let mut next = 1;
        let stuck = loop {
            let ticket = wal.append(batch(next, &[1; 20])).expect("a full disk does not refuse appends");
            next = ticket.last_index + 1;
            match tokio::time::timeout(wait, wal.wait_durable(ticket.sequence)).await {
                Ok(result) => result.expect("durable"),
                Err(_) => break ticket,
            }
            assert!(next < 1_000_000, "a 256 KiB disk never filled");
        };
        assert!(wal.no_space(), "the log says why appends wait");
        let durable_before = wal.durable_index();
        assert!(durable_before > 0 && durable_before < stuck.last_index);
        // Space comes back: the waiting append becomes durable by itself.
        std::fs::remove_file(&ballast).unwrap();
        tokio::time::timeout(wait, wal.wait_durable(stuck.sequence))
            .await
            .expect("writes resume once space is freed")
            .expect("durable");
        assert!(!wal.no_space());
        let durable_index = wal.durable_index();
        assert_eq!(durable_index, stuck.last_index);
        wal.close().await.unwrap();
        durable_index
    });
    // Every append reported durable is there after reopening.
    let recovered = tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config).await.unwrap();
        drop(wal);
        recovered
    });
    let entries = shape(&recovered.entries);
    assert_eq!(entries.len() as u64, durable_index);
    drop(mount);
}

/// Issue 16: a local snapshot that does not fit on a full disk stopped the
/// log (and the shard with it). Now it is given up, its temporary file
/// removed, and the log keeps taking appends; once space is freed a
/// snapshot is stored.
#[test]
fn a_snapshot_that_does_not_fit_is_given_up_and_the_log_goes_on() {
    let Some((mount, config)) = small_disk("wal-full-snapshot") else { return };
    let dir = mount.0.clone();
    let ballast = mount.ballast();
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config.clone()).await.unwrap();
        let ticket = wal.append(batch(1, &[1; 20])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        std::fs::write(&ballast, vec![1u8; 96 << 10]).unwrap();
        let meta = engine::SnapshotMeta { index: 10, term: 1, conf: engine::ConfState::new([1], []) };
        let data = bytes::Bytes::from(vec![5u8; 200 << 10]);
        match wal.save_snapshot(meta.clone(), data.clone()).await {
            Err(wal::WalError::NoSpace { .. }) => {}
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(!dir.join("log").join("SNAPSHOT.tmp").exists(), "the partial snapshot is removed");
        // The log goes on.
        let ticket = wal.append(batch(21, &[1; 5])).expect("the log still takes appends");
        tokio::time::timeout(Duration::from_secs(3), wal.wait_durable(ticket.sequence))
            .await
            .expect("durable in time")
            .expect("the log did not stop");
        std::fs::remove_file(&ballast).unwrap();
        wal.save_snapshot(meta, bytes::Bytes::from(vec![5u8; 32 << 10])).await.expect("stored once there is room");
        wal.close().await.unwrap();
    });
    drop(mount);
}

/// A spare segment given up while the disk was full, with space freed
/// before the log needs it: the switch makes a new spare instead of
/// reporting the old failure. Before, the log said "disk full" for at
/// least one retry interval (500 ms) on a disk with room, and a leader
/// refused writes with `NoSpace` meanwhile (seen in `t50_chaos`
/// `full_followers_make_the_leader_refuse_writes_with_no_space`, whose
/// leader's file system was grown just after the log opened).
#[test]
fn a_spare_given_up_earlier_is_made_anew_when_space_returned() {
    let Some((mount, config)) = small_disk("wal-full-spare") else { return };
    let (log_dir, ballast) = (config.dir.clone(), mount.ballast());
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config).await.unwrap();
        let mut next = 1;
        // Appends until the log switched segments `switches` times, checking
        // that it never says its disk is full meanwhile.
        let mut fill_until = async |switches: u64| {
            while wal.stats().segment_switches < switches {
                let ticket = wal.append(batch(next, &[1; 20])).unwrap();
                next = ticket.last_index + 1;
                let mut durable = std::pin::pin!(wal.wait_durable(ticket.sequence));
                loop {
                    match tokio::time::timeout(Duration::from_millis(1), &mut durable).await {
                        Ok(result) => break result.expect("durable"),
                        Err(_) => assert!(
                            !wal.no_space(),
                            "the log says its disk is full at index {}, before switch {switches}",
                            ticket.last_index
                        ),
                    }
                }
            }
        };
        // The first segment and its spare.
        fill_until(1).await;
        // The ballast leaves no room for the spare made at the next switch.
        std::fs::write(&ballast, vec![1u8; 96 << 10]).unwrap();
        fill_until(2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spares = std::fs::read_dir(&log_dir)
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().ends_with(".prealloc"))
            .count();
        assert_eq!(spares, 0, "the spare that did not fit is given up");
        // Space comes back before the log needs the spare.
        std::fs::remove_file(&ballast).unwrap();
        fill_until(3).await;
        wal.close().await.unwrap();
    });
    drop(mount);
}

/// A snapshot that does not fit while the pool of recycled spares holds
/// space: the pool is let go before the next try, which fits. The pool may hold a
/// whole snapshot interval's segments (as many as the last compaction
/// freed); before, their space stayed taken, the next snapshot failed
/// again, and the log went on into the pooled files until the disk was
/// full for it too.
#[test]
fn a_snapshot_that_does_not_fit_lets_the_pool_go_and_the_next_try_fits() {
    let Some((mount, config)) = small_disk("wal-full-pool") else { return };
    let log_dir = config.dir.clone();
    let pooled = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().ends_with(".recycled.prealloc"))
            .count()
    };
    tokio_uring::start(async {
        let (wal, _) = Wal::open(config).await.unwrap();
        // One sealed segment, the active one and a spare: 192 KiB of 256.
        let mut next = 1;
        while wal.stats().segment_switches < 2 {
            let ticket = wal.append(batch(next, &[1; 20])).unwrap();
            wal.wait_durable(ticket.sequence).await.unwrap();
            next = ticket.last_index + 1;
        }
        let sealed_last = next - 1;
        let ticket = wal.append(batch(next, &[1; 5])).unwrap();
        wal.wait_durable(ticket.sequence).await.unwrap();
        // A small snapshot, and the compaction pools the sealed segment.
        let meta = |index| engine::SnapshotMeta { index, term: 1, conf: engine::ConfState::new([1], []) };
        wal.save_snapshot(meta(sealed_last), bytes::Bytes::from(vec![5u8; 4 << 10])).await.unwrap();
        wal.compact(sealed_last).await.unwrap();
        assert_eq!(pooled(&log_dir), 1, "the compacted segment is pooled");
        // A snapshot larger than the room left (about 60 KiB) but not than
        // the room the pooled segment holds besides.
        let large = bytes::Bytes::from(vec![6u8; 100 << 10]);
        match wal.save_snapshot(meta(ticket.last_index), large.clone()).await {
            Err(wal::WalError::NoSpace { .. }) => {}
            other => panic!("expected NoSpace, got {other:?}"),
        }
        wal.save_snapshot(meta(ticket.last_index), large).await.expect("the next try fits");
        assert_eq!(pooled(&log_dir), 0, "the pool was let go for the snapshot's sake");
        wal.close().await.unwrap();
    });
    drop(mount);
}
