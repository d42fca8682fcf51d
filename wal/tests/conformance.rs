//! The conformance suite against both log stores.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;

use wal::testing::{block_on, suite};
use wal::{MemDisk, MemLog, Wal, WalConfig};

/// A fresh directory under the system temp dir for this test process.
fn scratch(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("wal-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Small segments and writes so the suite crosses segment boundaries.
fn small_config(dir: PathBuf) -> WalConfig {
    let mut config = WalConfig::new(dir, 7, 1);
    config.segment_bytes = 64 << 10;
    config.write_bytes_max = 16 << 10;
    config.batch_bytes_max = 16 << 10;
    config.queued_bytes_max = 1 << 20;
    config
}

#[test]
fn mem_log_passes_the_suite() {
    let disks: RefCell<HashMap<String, MemDisk>> = RefCell::default();
    block_on(suite::<MemLog>(&|name| disks.borrow_mut().entry(name.to_string()).or_default().clone()));
}

#[test]
fn wal_passes_the_suite() {
    wal::io_uring_available().expect("these tests need io_uring");
    let base = scratch("suite");
    tokio_uring::start(suite::<Wal>(&|name| {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        small_config(dir)
    }));
    std::fs::remove_dir_all(&base).unwrap();
}
