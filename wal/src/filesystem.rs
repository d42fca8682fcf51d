//! What the file system holding a log directory means for durability and
//! speed: the node checks its data directory once at start and warns when
//! its log and snapshots sit where they do not survive what the operator
//! likely expects them to, or where every synced write costs more than it
//! should; `bench floor` records it with the machine's floor.
//!
//! - **tmpfs or ramfs** (memory): a restart of the machine empties the
//!   directory. One replica coming back empty repairs from its peers, but
//!   machines that restart together (a power cut of one rack) lose
//!   acknowledged writes.
//! - **overlayfs** (a container's writable layer): the directory goes away
//!   with the container, the way issue 10's containers lost state.
//! - **ext4 without a journal**: the `O_DSYNC` write that makes a log group
//!   durable also writes the file's inode, synchronously, whenever the
//!   write moved the file's modification time, which it does once per tick
//!   of the kernel clock per file written (`ext4_fsync_nojournal`). On the
//!   project's 2-CPU machine that was 12.6 % more synced writes with one
//!   shard and 23.8 % with four (bench/RESULTS.md, "Journal-less ext4
//!   writes each log file's inode once per clock tick"); a journaled ext4
//!   keeps the time in its journal and skips the write.
//!
//! The facts come from `/proc/self/mountinfo` (the mount that holds the
//! directory: the longest mount point that prefixes its canonical path,
//! the last one listed when mounts stack) and, for ext4, `/proc/fs/ext4`
//! and `/proc/fs/jbd2` (a journaled ext4 device has a `NAME-INODE` entry
//! in the latter). Anything unreadable yields no warning: the check only
//! ever adds a log line, never refuses to start.

use std::path::{Path, PathBuf};

/// The mount that holds a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// The block device's `MAJOR:MINOR` (`0:N` for file systems without
    /// one).
    pub device: String,
}

/// What the check found worth telling the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// tmpfs or ramfs: gone when the machine restarts.
    Memory,
    /// overlayfs: gone with the container.
    ContainerLayer,
    /// ext4 without a journal: an extra synced inode write per tick per
    /// log file.
    Ext4WithoutJournal,
}

impl Finding {
    /// The warning for `dir` on `mount`.
    pub fn warning(&self, dir: &Path, mount: &Mount) -> String {
        let (dir, fs_type, point) = (dir.display(), &mount.fs_type, mount.mount_point.display());
        match self {
            Finding::Memory => format!(
                "the data directory {dir} is on {fs_type} (memory, mounted at {point}): a restart of the machine \
                 empties it. A replica that comes back empty repairs from its peers, but machines that restart \
                 together lose acknowledged writes. Put the data directory on a disk"
            ),
            Finding::ContainerLayer => format!(
                "the data directory {dir} is on overlayfs (a container's writable layer, mounted at {point}): it \
                 is removed with the container. Mount a volume there"
            ),
            Finding::Ext4WithoutJournal => format!(
                "the data directory {dir} is on ext4 without a journal ({}, mounted at {point}): each synced log \
                 write that moves a log file's modification time (once per kernel clock tick per file) also \
                 writes the file's inode synchronously, 12-24 % more synced writes on the project's test machine. \
                 ext4 with its journal, or XFS, does not",
                mount.source
            ),
        }
    }
}

/// Checks the file system holding `dir` (which exists): the mount and what
/// is worth a warning, or `None` when the mount cannot be told.
pub fn check(dir: &Path) -> Option<(Mount, Option<Finding>)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mount_of(&mountinfo, &dir)?;
    let finding = classify(&mount, ext4_journaled);
    Some((mount, finding))
}

/// What `mount` is worth a warning for; `journaled` says whether an ext4
/// device (`MAJOR:MINOR`) has a journal, `None` when it cannot tell.
pub fn classify(mount: &Mount, journaled: impl Fn(&str) -> Option<bool>) -> Option<Finding> {
    match mount.fs_type.as_str() {
        "tmpfs" | "ramfs" => Some(Finding::Memory),
        "overlay" => Some(Finding::ContainerLayer),
        "ext4" if journaled(&mount.device) == Some(false) => Some(Finding::Ext4WithoutJournal),
        _ => None,
    }
}

/// The mount holding `dir` (canonical) in a `/proc/self/mountinfo` text.
pub fn mount_of(mountinfo: &str, dir: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        let Some(mount) = parse_line(line) else { continue };
        if !dir.starts_with(&mount.mount_point) {
            continue;
        }
        // Longer mount points are nearer; among equal ones the later line
        // is the mount on top.
        let nearer = best
            .as_ref()
            .is_none_or(|best| mount.mount_point.components().count() >= best.mount_point.components().count());
        if nearer {
            best = Some(mount);
        }
    }
    best
}

/// One `mountinfo` line: `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS
/// [OPTIONAL...] - FS_TYPE SOURCE SUPER_OPTIONS`.
fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let device = fields.get(2)?;
    let mount_point = fields.get(4)?;
    let separator = fields.iter().skip(6).position(|field| *field == "-")? + 6;
    let fs_type = fields.get(separator + 1)?;
    let source = fields.get(separator + 2)?;
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fs_type: unescape(fs_type),
        source: unescape(source),
        device: device.to_string(),
    })
}

/// Undoes `mountinfo`'s octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).filter(|digits| digits.iter().all(|digit| (b'0'..=b'7').contains(digit)));
        match (bytes[at], octal) {
            (b'\\', Some(digits)) => {
                out.push(digits.iter().fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0')) as u8);
                at += 4;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the ext4 on block device `MAJOR:MINOR` has a journal: its
/// kernel name from `/sys/dev/block`, then an entry `NAME-*` in
/// `/proc/fs/jbd2` (journaled) or only `/proc/fs/ext4/NAME` (not).
fn ext4_journaled(device: &str) -> Option<bool> {
    let link = std::fs::read_link(format!("/sys/dev/block/{device}")).ok()?;
    let name = link.file_name()?.to_str()?.to_string();
    if !Path::new("/proc/fs/ext4").join(&name).exists() {
        return None;
    }
    let prefix = format!("{name}-");
    let journaled = match std::fs::read_dir("/proc/fs/jbd2") {
        Ok(entries) => entries.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with(&prefix)),
        // No jbd2 at all: no ext4 here has a journal.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => return None,
    };
    Some(journaled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683792k
40 27 7:0 / /mnt/with\\040space rw,relatime - ext4 /dev/loop0 rw
41 27 0:50 / /var/lib/data rw,relatime master:3 - overlay overlay rw,lowerdir=/a,upperdir=/b
42 27 0:51 / /var/lib/data rw,relatime - tmpfs tmpfs rw
";

    fn mount(dir: &str) -> Mount {
        mount_of(MOUNTINFO, Path::new(dir)).expect("a mount")
    }

    #[test]
    fn the_nearest_and_topmost_mount_holds_a_directory() {
        assert_eq!(mount("/srv/node").mount_point, PathBuf::from("/"));
        assert_eq!(mount("/srv/node").device, "254:0");
        assert_eq!(mount("/dev/shm/x").fs_type, "tmpfs");
        // A path component, not a string prefix.
        assert_eq!(mount("/dev/shmx").mount_point, PathBuf::from("/"));
        assert_eq!(mount("/mnt/with space/node").source, "/dev/loop0");
        // Two mounts at one point: the later line is on top.
        assert_eq!(mount("/var/lib/data/node").fs_type, "tmpfs");
    }

    #[test]
    fn memory_containers_and_journal_less_ext4_are_findings() {
        let unknown = |_: &str| None;
        assert_eq!(classify(&mount("/dev/shm/a"), unknown), Some(Finding::Memory));
        let overlay = Mount { fs_type: "overlay".into(), ..mount("/srv") };
        assert_eq!(classify(&overlay, unknown), Some(Finding::ContainerLayer));
        let journaled = |journal: bool| move |device: &str| (device == "254:0").then_some(journal);
        assert_eq!(classify(&mount("/srv"), journaled(false)), Some(Finding::Ext4WithoutJournal));
        assert_eq!(classify(&mount("/srv"), journaled(true)), None);
        // Cannot tell: no warning.
        assert_eq!(classify(&mount("/srv"), unknown), None);
        let xfs = Mount { fs_type: "xfs".into(), ..mount("/srv") };
        assert_eq!(classify(&xfs, journaled(false)), None);
        let text = Finding::Ext4WithoutJournal.warning(Path::new("/srv/node"), &mount("/srv"));
        assert!(text.contains("/srv/node") && text.contains("/dev/vda") && text.contains("journal"), "{text}");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let text = "garbage\n27 1 254:0 / / rw - ext4 /dev/vda rw\n1 2 3 4\n";
        assert_eq!(mount_of(text, Path::new("/a")).map(|mount| mount.fs_type), Some("ext4".to_string()));
        assert_eq!(mount_of("", Path::new("/a")), None);
    }

    #[test]
    fn this_machine_s_data_directories_are_told() {
        // Whatever this machine mounts, the temporary directory lies on some
        // mount that the check can name.
        let (mount, _) = check(&std::env::temp_dir()).expect("/proc/self/mountinfo names a mount");
        assert!(std::env::temp_dir().canonicalize().unwrap().starts_with(&mount.mount_point));
        assert!(!mount.fs_type.is_empty());
    }
}
