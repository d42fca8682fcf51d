//! The data directory: its identity file, its lock, and durable directory
//! updates.
//!
//! The IDENTITY file says which cluster and node a directory belongs to and
//! which format it holds, so that a node pointed at another node's directory
//! stops at start-up instead of serving someone else's log. It is written last
//! when a directory is initialized (temp file, fsync, rename, directory fsync),
//! so its presence means initialization finished.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::WalError;

/// The identity file's name.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// The lock file's name; an exclusive `flock` on it marks the directory in use.
pub const LOCK_FILE: &str = "LOCK";
/// The on-disk format version this build writes and reads. Version 2: each
/// hard-state slot also records the durable log's last index at the save
/// (issue 16), which changes the slot's checksummed length.
pub const FORMAT_VERSION: u32 = 2;

const IDENTITY_MAGIC: [u8; 8] = *b"RAFTWAL\0";

/// The identity file's layout.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct IdentityRecord {
    /// crc32c over bytes 4.. of the record.
    crc: U32,
    format_version: U32,
    magic: [u8; 8],
    cluster_id: U64,
    node_id: U64,
}

const IDENTITY_SIZE: usize = 32;
const _: () = assert!(size_of::<IdentityRecord>() == IDENTITY_SIZE);

/// Checks that `dir` exists and is a directory, and takes its lock. The
/// returned file holds the lock for as long as it lives.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, WalError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(WalError::DirMissing { path: dir.to_path_buf() }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(WalError::DirMissing { path: dir.to_path_buf() })
        }
        Err(error) => return Err(WalError::io("reading the metadata of", dir, error)),
    }
    let path = dir.join(LOCK_FILE);
    let lock =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(
            |error| match error.raw_os_error() {
                Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                    WalError::DirUnwritable { path: dir.to_path_buf(), source: Arc::new(error) }
                }
                _ => WalError::io("creating", &path, error),
            },
        )?;
    // SAFETY: flock on a valid, owned descriptor has no memory-safety
    // preconditions.
    let result = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WalError::DirLocked { path: dir.to_path_buf() });
        }
        return Err(WalError::io("locking", &path, error));
    }
    Ok(lock)
}

/// Reads and checks the identity file. Returns `Ok(false)` when there is none
/// (a directory to initialize).
pub(crate) fn check_identity(dir: &Path, cluster_id: u64, node_id: u64) -> Result<bool, WalError> {
    let path = dir.join(IDENTITY_FILE);
    let raw = match fs::read(&path) {
        Ok(raw) => raw,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(WalError::io("reading", &path, error)),
    };
    let Ok((record, _)) = IdentityRecord::ref_from_prefix(&raw[..]) else {
        return Err(WalError::corrupt(&path, 0, format!("{IDENTITY_SIZE} bytes"), format!("{} bytes", raw.len())));
    };
    let computed = crc32c::crc32c(&raw[4..IDENTITY_SIZE]);
    if record.crc.get() != computed {
        return Err(WalError::corrupt(
            &path,
            0,
            format!("crc32c {computed:#010x}"),
            format!("{:#010x}", record.crc.get()),
        ));
    }
    if record.magic != IDENTITY_MAGIC {
        return Err(WalError::corrupt(&path, 8, "magic RAFTWAL", format!("{:?}", record.magic)));
    }
    if record.format_version.get() != FORMAT_VERSION {
        return Err(WalError::UnsupportedFormat {
            path: dir.to_path_buf(),
            found: record.format_version.get(),
            expected: FORMAT_VERSION,
        });
    }
    if record.cluster_id.get() != cluster_id || record.node_id.get() != node_id {
        return Err(WalError::WrongIdentity {
            path: dir.to_path_buf(),
            found_cluster: record.cluster_id.get(),
            found_node: record.node_id.get(),
            expected_cluster: cluster_id,
            expected_node: node_id,
        });
    }
    Ok(true)
}

/// Writes the identity file atomically (temp, fsync, rename, directory fsync).
pub(crate) fn write_identity(dir: &Path, cluster_id: u64, node_id: u64) -> Result<(), WalError> {
    let mut record = IdentityRecord {
        crc: U32::new(0),
        format_version: U32::new(FORMAT_VERSION),
        magic: IDENTITY_MAGIC,
        cluster_id: U64::new(cluster_id),
        node_id: U64::new(node_id),
    };
    record.crc = U32::new(crc32c::crc32c(&record.as_bytes()[4..]));
    write_file_atomically(dir, IDENTITY_FILE, record.as_bytes())
}

/// Writes `name` in `dir` so that a crash leaves either the old file or the
/// complete new one: temp file, fsync, rename, directory fsync. Blocking; used
/// at start-up only.
pub(crate) fn write_file_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WalError> {
    let temp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let mut file = File::create(&temp).map_err(|error| WalError::io("creating", &temp, error))?;
    file.write_all(bytes).map_err(|error| WalError::io("writing", &temp, error))?;
    file.sync_all().map_err(|error| WalError::io("syncing", &temp, error))?;
    drop(file);
    fs::rename(&temp, &target).map_err(|error| WalError::io("renaming", &temp, error))?;
    sync_dir_blocking(dir)
}

/// Makes directory entries (creations, renames, removals) in `dir` durable.
pub(crate) fn sync_dir_blocking(dir: &Path) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(|error| WalError::io("opening", dir, error))?;
    handle.sync_all().map_err(|error| WalError::io("syncing", dir, error))
}

/// The same as [`sync_dir_blocking`] on the io_uring runtime, for directory
/// updates on the write path (segment switches, compaction).
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(|error| WalError::io("opening", dir, error))?;
    let handle = tokio_uring::fs::File::from_std(handle);
    handle.sync_all().await.map_err(|error| WalError::io("syncing", dir, error))?;
    handle.close().await.map_err(|error| WalError::io("closing", dir, error))
}

/// Files in `dir` whose name ends with `suffix`, sorted by name.
pub(crate) fn list_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, WalError> {
    let mut paths = Vec::new();
    for item in fs::read_dir(dir).map_err(|error| WalError::io("listing", dir, error))? {
        let item = item.map_err(|error| WalError::io("listing", dir, error))?;
        if item.file_name().to_str().is_some_and(|name| name.ends_with(suffix)) {
            paths.push(item.path());
        }
    }
    paths.sort();
    Ok(paths)
}
