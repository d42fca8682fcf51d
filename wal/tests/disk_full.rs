//! A full disk stops the log with a typed error, and nothing is reported
//! durable that is not. The test mounts a small tmpfs, so it needs root (as in
//! CI); without the privilege it says so and checks nothing.

use std::path::Path;
use std::process::Command;

use wal::testing::{batch, shape};
use wal::{LogStore, Wal, WalConfig, WalError};

struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn disk_full_stops_the_log_with_a_typed_error() {
    wal::io_uring_available().expect("these tests need io_uring");
    let dir = std::env::temp_dir().join(format!("wal-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=192k", "tmpfs"]).arg(&dir).status();
    if !mounted.is_ok_and(|status| status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs at {} (needs root)", dir.display());
        return;
    }
    let mount = Mount(&dir);
    let mut config = WalConfig::new(&dir, 1, 1);
    config.segment_bytes = 64 << 10;
    config.write_bytes_max = 16 << 10;
    config.batch_bytes_max = 16 << 10;
    let durable_index = tokio_uring::start(async {
        let (wal, _) = Wal::open(config.clone()).await.unwrap();
        let mut next = 1;
        let failure = loop {
            let ticket = match wal.append(batch(next, &[1; 20])) {
                Ok(ticket) => ticket,
                Err(error) => break error,
            };
            next = ticket.last_index + 1;
            if let Err(error) = wal.wait_durable(ticket.sequence).await {
                break error;
            }
            assert!(next < 1_000_000, "a 192 KiB disk never filled");
        };
        let cause = match &failure {
            WalError::Stopped { cause } => cause.as_ref(),
            other => other,
        };
        assert!(matches!(cause, WalError::NoSpace { .. }), "{failure}");
        assert!(failure.is_fatal());
        // The log accepts nothing more, and says why.
        assert!(matches!(wal.append(batch(next, &[1])), Err(WalError::Stopped { .. })));
        let durable_index = wal.durable_index();
        assert!(durable_index > 0, "some appends were durable before the disk filled");
        drop(wal);
        durable_index
    });
    // Every append reported durable is there after reopening.
    let recovered = tokio_uring::start(async {
        let (wal, recovered) = Wal::open(config).await.unwrap();
        drop(wal);
        recovered
    });
    let entries = shape(&recovered.entries);
    assert!(entries.len() as u64 >= durable_index, "{} entries recovered, {durable_index} durable", entries.len());
    drop(mount);
    let _ = std::fs::remove_dir(&dir);
}
