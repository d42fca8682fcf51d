//! Backups of a running cluster and new clusters restored from them
//! (`node admin backup`, `node restore`): what a cluster that lost a
//! majority of its replicas (or all of them) comes back from, as etcd's
//! `snapshot save` and `snapshot restore`.
//!
//! A backup copies one stored snapshot per shard from one node, chunk by
//! chunk ([`net::AdminRequest::BackupBegin`] and
//! [`net::AdminRequest::BackupChunk`]; the node side is
//! `crate::shard::backup`): each shard's snapshot holds every write the
//! cluster acknowledged before the backup asked for it (a linearizable
//! barrier first). Shards are copied one after another, each consistent on
//! its own: as with every request across shards, there is no instant at
//! which all shards are captured together.
//!
//! A restore seeds one node's data directory of a *new* cluster with every
//! shard's snapshot ([`wal::Seed`]): the snapshot's index and term, the new
//! cluster's voters as its membership, the node section rewritten for them
//! ([`crate::replicated::restore_snapshot_head`]), the state machine's bytes
//! as they were. Every node of the new cluster is restored from the same
//! file, then started with `node serve` as usual. The restore records which
//! backup the data continues ([`BackupSummary::history`], the
//! `crate::membership::HISTORY_FILE`): peers of another history (nodes
//! started empty, or restored from another backup) are refused at the
//! handshake, so a node restored alone can never replace what empty nodes
//! acknowledged meanwhile ([`net::History`]). The new cluster must have
//! another cluster id than the backed-up one: a surviving member of the old
//! cluster (same ids, perhaps the same addresses) holds log entries past the
//! backup under terms the new cluster will use too, and Raft's log matching
//! would take its entries for the new cluster's; the handshake refuses a
//! peer of another cluster, so a new id keeps them apart.
//!
//! File layout (little-endian): a 40-byte head (magic `RAFTBKUP`, u32
//! version 1, u32 shard count, u64 cluster id, u64 creation time in
//! milliseconds since the epoch, u32 reserved, u32 crc32c of the bytes
//! before it), then per shard in order a 48-byte section head (magic
//! `RAFTBSHD`, u32 shard, u32 reserved, u64 snapshot index, u64 term, u64
//! data length, u32 crc32c of the data, u32 crc32c of the bytes before it)
//! and the data (the node's snapshot format, see
//! `NodeStateMachine::snapshot_image`). Nothing follows the last section.
//! A backup is written as `FILE.partial`, synced and renamed, so `FILE`
//! exists only whole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::{ConfState, NodeId, SnapshotMeta};
use net::{AdminRequest, CallError, BACKUP_CHUNK_BYTES_MAX};

use crate::client_cmd::{BlockingClient, ClientCmdError};
use crate::config::ClientConfig;
use crate::shard::{BACKUP_CHUNK_DATA, BACKUP_CHUNK_HEAD, BACKUP_CHUNK_REPLACED};

const FILE_MAGIC: &[u8; 8] = b"RAFTBKUP";
const SECTION_MAGIC: &[u8; 8] = b"RAFTBSHD";
const VERSION: u32 = 1;
const HEAD_SIZE: usize = 40;
const SECTION_HEAD_SIZE: usize = 48;
/// How long a backup waits for a shard's snapshot to be stored.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);
/// How often a shard's copy starts again (a newer snapshot replaced the
/// one being copied) before the backup gives up.
const RESTARTS_MAX: u32 = 5;

/// Why a backup or a restore failed; the reason says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Client(#[from] ClientCmdError),
    #[error("the cluster refused: {0}")]
    Cluster(String),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("backup file {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("shard {shard}: {source}")]
    Wal { shard: u32, source: wal::WalError },
}

impl From<CallError> for BackupError {
    fn from(error: CallError) -> BackupError {
        BackupError::Client(ClientCmdError::Call(error))
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io { op, path: path.to_path_buf(), source }
}

/// One shard's part of a backup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ShardPoint {
    pub shard: u32,
    /// The snapshot's last index and its term.
    pub index: u64,
    pub term: u64,
    pub bytes: u64,
}

/// What a backup file holds, from its heads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupSummary {
    pub cluster_id: u64,
    pub shards: Vec<ShardPoint>,
}

fn file_head(cluster_id: u64, shards: u32) -> [u8; HEAD_SIZE] {
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
    let mut head = [0u8; HEAD_SIZE];
    head[..8].copy_from_slice(FILE_MAGIC);
    head[8..12].copy_from_slice(&VERSION.to_le_bytes());
    head[12..16].copy_from_slice(&shards.to_le_bytes());
    head[16..24].copy_from_slice(&cluster_id.to_le_bytes());
    head[24..32].copy_from_slice(&created.to_le_bytes());
    let crc = crc32c::crc32c(&head[..36]);
    head[36..].copy_from_slice(&crc.to_le_bytes());
    head
}

fn section_head(point: &ShardPoint, data_crc: u32) -> [u8; SECTION_HEAD_SIZE] {
    let mut head = [0u8; SECTION_HEAD_SIZE];
    head[..8].copy_from_slice(SECTION_MAGIC);
    head[8..12].copy_from_slice(&point.shard.to_le_bytes());
    head[16..24].copy_from_slice(&point.index.to_le_bytes());
    head[24..32].copy_from_slice(&point.term.to_le_bytes());
    head[32..40].copy_from_slice(&point.bytes.to_le_bytes());
    head[40..44].copy_from_slice(&data_crc.to_le_bytes());
    let crc = crc32c::crc32c(&head[..44]);
    head[44..].copy_from_slice(&crc.to_le_bytes());
    head
}

fn u32_at(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(raw[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(raw[at..at + 8].try_into().expect("eight bytes"))
}

/// Reads and checks a backup's head: its cluster id and shard count.
fn read_file_head(path: &Path, input: &mut impl Read) -> Result<(u64, u32), BackupError> {
    let bad = |reason: String| BackupError::Format { path: path.to_path_buf(), reason };
    let mut head = [0u8; HEAD_SIZE];
    input.read_exact(&mut head).map_err(|_| bad("shorter than a backup's head (not a backup)".into()))?;
    if &head[..8] != FILE_MAGIC {
        return Err(bad("not a backup (wrong magic)".into()));
    }
    if u32_at(&head, 36) != crc32c::crc32c(&head[..36]) {
        return Err(bad("the head fails its checksum (damaged)".into()));
    }
    let version = u32_at(&head, 8);
    if version != VERSION {
        return Err(bad(format!("format version {version}; this build reads version {VERSION}")));
    }
    let shards = u32_at(&head, 12);
    if shards == 0 {
        return Err(bad("no shards".into()));
    }
    Ok((u64_at(&head, 16), shards))
}

/// Reads and checks shard `shard`'s section head: its point and the data's
/// crc32c.
fn read_section_head(path: &Path, shard: u32, input: &mut impl Read) -> Result<(ShardPoint, u32), BackupError> {
    let bad = |reason: String| BackupError::Format { path: path.to_path_buf(), reason };
    let mut head = [0u8; SECTION_HEAD_SIZE];
    input.read_exact(&mut head).map_err(|_| bad(format!("ends before shard {shard}'s part (truncated)")))?;
    if &head[..8] != SECTION_MAGIC || u32_at(&head, 44) != crc32c::crc32c(&head[..44]) {
        return Err(bad(format!("shard {shard}'s part has a damaged head")));
    }
    let point = ShardPoint {
        shard: u32_at(&head, 8),
        index: u64_at(&head, 16),
        term: u64_at(&head, 24),
        bytes: u64_at(&head, 32),
    };
    if point.shard != shard {
        return Err(bad(format!("shard {}'s part where shard {shard}'s belongs", point.shard)));
    }
    Ok((point, u32_at(&head, 40)))
}

/// A reader that counts and checksums what it passes on.
struct Tracked<R> {
    inner: R,
    count: u64,
    crc: u32,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.count += read as u64;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..read]);
        Ok(read)
    }
}

/// Copies every shard's state from the cluster `config` names (one node,
/// the first that answers) into `out`, printing progress to stderr when
/// `progress`. `out` must not exist; nothing is left at `out` or beside it
/// when the backup fails.
pub fn run_backup(config: &ClientConfig, out: &Path, progress: bool) -> Result<BackupSummary, BackupError> {
    if out.exists() {
        return Err(BackupError::Refused(format!("{} exists; give a new file name", out.display())));
    }
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let mut client = BlockingClient::new(config)?;
    let shards = client.shards()?;
    let mut file = File::create(&partial).map_err(io_error("creating", &partial))?;
    let copied = copy_shards(&mut client, &mut file, &partial, (config.cluster_id, shards), progress);
    let finished = copied.and_then(|points| {
        file.sync_all().map_err(io_error("syncing", &partial))?;
        std::fs::rename(&partial, out).map_err(io_error("renaming", &partial))?;
        let parent = out.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(parent).and_then(|dir| dir.sync_all()).map_err(io_error("syncing", parent))?;
        Ok(BackupSummary { cluster_id: config.cluster_id, shards: points })
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    finished
}

/// The file's head, then each shard's section.
fn copy_shards(
    client: &mut BlockingClient,
    file: &mut File,
    path: &Path,
    (cluster_id, shards): (u64, u32),
    progress: bool,
) -> Result<Vec<ShardPoint>, BackupError> {
    file.write_all(&file_head(cluster_id, shards)).map_err(io_error("writing", path))?;
    let mut points = Vec::new();
    for shard in 0..shards {
        client.set_shard(shard);
        let point = copy_shard(client, file, path, shard, progress)?;
        if progress {
            eprintln!("shard {shard}: {} bytes at index {} (term {})", point.bytes, point.index, point.term);
        }
        points.push(point);
    }
    Ok(points)
}

/// Shard `shard`'s section: its head (written again with the data's
/// checksum once copied) and its snapshot, started again when a newer
/// snapshot replaces the one being copied.
fn copy_shard(
    client: &mut BlockingClient,
    file: &mut File,
    path: &Path,
    shard: u32,
    progress: bool,
) -> Result<ShardPoint, BackupError> {
    let start = file.stream_position().map_err(io_error("seeking in", path))?;
    for _ in 0..=RESTARTS_MAX {
        file.set_len(start).map_err(io_error("truncating", path))?;
        file.seek(SeekFrom::Start(start)).map_err(io_error("seeking in", path))?;
        let (point, node) = backup_point(client, shard, progress)?;
        file.write_all(&section_head(&point, 0)).map_err(io_error("writing", path))?;
        if let Some(crc) = copy_snapshot(client, file, path, (&point, node), progress)? {
            file.seek(SeekFrom::Start(start)).map_err(io_error("seeking in", path))?;
            file.write_all(&section_head(&point, crc)).map_err(io_error("writing", path))?;
            file.seek(SeekFrom::End(0)).map_err(io_error("seeking in", path))?;
            return Ok(point);
        }
        if progress {
            eprintln!("shard {shard}: the snapshot being copied was replaced (or another node answered); copying the shard again");
        }
    }
    Err(BackupError::Refused(format!(
        "shard {shard}: newer snapshots replaced the one being copied {} times; the node snapshots faster than this \
         backup copies (raise --snapshot-log-factor or back up from a less loaded node)",
        RESTARTS_MAX + 1
    )))
}

/// Where shard `shard`'s backup starts: a stored snapshot holding every
/// write acknowledged before the first ask (see
/// `net::AdminRequest::BackupBegin`).
/// The node that named it comes with it: its chunks must come from it.
fn backup_point(client: &mut BlockingClient, shard: u32, progress: bool) -> Result<(ShardPoint, u64), BackupError> {
    let started = Instant::now();
    let deadline = started + SNAPSHOT_WAIT;
    let mut bar = 0;
    let mut shown = started;
    loop {
        let answer = client.admin(AdminRequest::BackupBegin { at_least: bar })?;
        let value: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|error| BackupError::Cluster(format!("shard {shard}: an answer that is not JSON: {error}")))?;
        if let (Some(index), Some(term), Some(bytes), Some(node)) =
            (value["index"].as_u64(), value["term"].as_u64(), value["size"].as_u64(), value["node"].as_u64())
        {
            return Ok((ShardPoint { shard, index, term, bytes }, node));
        }
        let Some(pending) = value["pending"].as_u64() else {
            return Err(BackupError::Cluster(format!("shard {shard}: an unexpected answer {value}")));
        };
        if progress && bar == 0 {
            eprintln!("shard {shard}: waiting for a snapshot at or past index {pending}");
        } else if progress && shown.elapsed() >= Duration::from_secs(1) {
            // A snapshot is written at the node's --snapshot-write-rate: a
            // large state takes seconds, which were silent.
            shown = Instant::now();
            eprintln!(
                "shard {shard}: still waiting for the snapshot ({}s; the node writes it at its --snapshot-write-rate)",
                started.elapsed().as_secs()
            );
        }
        bar = pending;
        if Instant::now() > deadline {
            return Err(BackupError::Refused(format!(
                "shard {shard}: no snapshot at or past index {bar} was stored within {}s; see the node's log",
                SNAPSHOT_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies the snapshot at `point` that node `node` stores into `file`; its
/// data's crc32c, or `None` when a newer snapshot replaced it meanwhile (or
/// another node answered).
fn copy_snapshot(
    client: &mut BlockingClient,
    file: &mut File,
    path: &Path,
    (point, node): (&ShardPoint, u64),
    progress: bool,
) -> Result<Option<u32>, BackupError> {
    let (mut crc, mut offset, mut shown) = (0, 0, Instant::now());
    while offset < point.bytes {
        let len = (point.bytes - offset).min(u64::from(BACKUP_CHUNK_BYTES_MAX)) as u32;
        let answer = client.admin(AdminRequest::BackupChunk { index: point.index, offset, len })?;
        let data = match answer.first() {
            Some(&BACKUP_CHUNK_DATA)
                if answer.len() > BACKUP_CHUNK_HEAD && answer.len() - BACKUP_CHUNK_HEAD <= len as usize =>
            {
                if answer[1..BACKUP_CHUNK_HEAD] != node.to_le_bytes() {
                    return Ok(None);
                }
                &answer[BACKUP_CHUNK_HEAD..]
            }
            Some(&BACKUP_CHUNK_REPLACED) if answer.len() == 1 => return Ok(None),
            _ => {
                return Err(BackupError::Cluster(format!(
                    "shard {}: a chunk answer of {} bytes at offset {offset} of {} (the snapshot ends early?)",
                    point.shard,
                    answer.len(),
                    point.bytes
                )))
            }
        };
        file.write_all(data).map_err(io_error("writing", path))?;
        crc = crc32c::crc32c_append(crc, data);
        offset += data.len() as u64;
        if progress && shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            eprintln!("shard {}: {:.1} of {:.1} MB", point.shard, offset as f64 / 1e6, point.bytes as f64 / 1e6);
        }
    }
    Ok(Some(crc))
}

/// What `node restore` is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The backup file.
    pub backup: PathBuf,
    /// This node's data directory: it must not exist or be empty.
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// The new cluster's voters (this node among them).
    pub voters: Vec<NodeId>,
    /// The new cluster's id: not the backed-up cluster's.
    pub cluster_id: u64,
}

/// Seeds `config.data_dir` from the backup as a node of the new cluster
/// (see the module documentation). The whole file is checked before
/// anything is written; if seeding fails part way, the shard directories it
/// made are removed, so a node is never started from part of a backup.
pub fn run_restore(config: &RestoreConfig) -> Result<BackupSummary, BackupError> {
    let summary = check_backup(&config.backup)?;
    if summary.cluster_id == config.cluster_id {
        return Err(BackupError::Refused(format!(
            "the backup is of cluster {}; restore it as a new cluster with another --cluster-id (a member of the old \
             cluster still running would hold log entries past the backup under terms the new cluster will use, and \
             could join it: the cluster id keeps them apart; clients and certificates then name the new id)",
            summary.cluster_id
        )));
    }
    let dir = &config.data_dir;
    if dir.exists() && !dir.is_dir() {
        return Err(BackupError::Refused(format!("data directory {} is a file, not a directory", dir.display())));
    }
    if let Some(entry) = std::fs::read_dir(dir).ok().and_then(|mut listing| listing.next()) {
        let name = entry.map_or_else(|_| "?".into(), |entry| entry.file_name().to_string_lossy().into_owned());
        return Err(BackupError::Refused(format!(
            "data directory {} is not empty (it holds {name}): a restore writes only into a new or empty directory",
            dir.display()
        )));
    }
    // The history first: a data directory with shards and no history file
    // would take part in a cluster that started empty.
    let seeded = crate::membership::write_history(dir, summary.history())
        .map_err(|error| BackupError::Refused(error.to_string()))
        .and_then(|()| seed_shards(config, summary.shards.len() as u32));
    if seeded.is_err() {
        for shard in 0..summary.shards.len() {
            let _ = std::fs::remove_dir_all(dir.join(format!("shard-{shard}")));
        }
        let _ = std::fs::remove_file(dir.join(crate::membership::HISTORY_FILE));
    }
    seeded.map(|()| summary)
}

impl BackupSummary {
    /// The history of the cluster restored from this backup
    /// ([`net::History`]): the same for every node restored from the same
    /// file (a hash of its cluster id and its shards' snapshot points, so a
    /// backup of another moment, or of another cluster, begins another),
    /// never the fresh one.
    pub fn history(&self) -> net::History {
        const FNV_PRIME: u64 = 0x100_0000_01b3;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut fields = vec![self.cluster_id];
        for point in &self.shards {
            fields.extend([u64::from(point.shard), point.index, point.term, point.bytes]);
        }
        for byte in fields.iter().flat_map(|field| field.to_le_bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        net::History(hash.max(1))
    }
}

/// Reads the whole backup and checks every checksum; what it holds.
pub fn check_backup(path: &Path) -> Result<BackupSummary, BackupError> {
    if path.is_dir() {
        return Err(BackupError::Refused(format!("{} is a directory, not a backup file", path.display())));
    }
    let file = File::open(path).map_err(io_error("opening", path))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    let (cluster_id, shards) = read_file_head(path, &mut input)?;
    let mut points = Vec::new();
    for shard in 0..shards {
        let (point, data_crc) = read_section_head(path, shard, &mut input)?;
        let mut data = Tracked { inner: (&mut input).take(point.bytes), count: 0, crc: 0 };
        std::io::copy(&mut data, &mut std::io::sink()).map_err(io_error("reading", path))?;
        check_section(path, &point, &data, data_crc)?;
        points.push(point);
    }
    check_end(path, &mut input)?;
    Ok(BackupSummary { cluster_id, shards: points })
}

fn check_section<R>(path: &Path, point: &ShardPoint, data: &Tracked<R>, data_crc: u32) -> Result<(), BackupError> {
    let bad = |reason: String| BackupError::Format { path: path.to_path_buf(), reason };
    if data.count != point.bytes {
        return Err(bad(format!(
            "shard {}'s part ends after {} of {} bytes (truncated)",
            point.shard, data.count, point.bytes
        )));
    }
    if data.crc != data_crc {
        return Err(bad(format!("shard {}'s part fails its checksum (damaged)", point.shard)));
    }
    Ok(())
}

fn check_end(path: &Path, input: &mut impl Read) -> Result<(), BackupError> {
    let mut extra = [0u8; 1];
    match input.read(&mut extra).map_err(io_error("reading", path))? {
        0 => Ok(()),
        _ => Err(BackupError::Format { path: path.to_path_buf(), reason: "bytes after the last shard's part".into() }),
    }
}

/// Each shard's directory from its section.
fn seed_shards(config: &RestoreConfig, shards: u32) -> Result<(), BackupError> {
    let path = &config.backup;
    let file = File::open(path).map_err(io_error("opening", path))?;
    let mut input = std::io::BufReader::with_capacity(1 << 20, file);
    read_file_head(path, &mut input)?;
    for shard in 0..shards {
        let (point, data_crc) = read_section_head(path, shard, &mut input)?;
        let conf = ConfState::new(config.voters.iter().copied(), []);
        let meta = SnapshotMeta { index: point.index, term: point.term, conf };
        let dir = config.data_dir.join(format!("shard-{shard}"));
        let wal = |source| BackupError::Wal { shard, source };
        let mut seed = wal::Seed::create(&dir, config.cluster_id, config.node_id, meta).map_err(wal)?;
        let mut data = Tracked { inner: (&mut input).take(point.bytes), count: 0, crc: 0 };
        let head = crate::replicated::restore_snapshot_head(&mut data, &config.voters).map_err(|error| {
            BackupError::Format { path: path.clone(), reason: format!("shard {shard}: {}", error.0) }
        })?;
        seed.write_all(&head).map_err(io_error("writing", &dir))?;
        std::io::copy(&mut data, &mut seed).map_err(io_error("writing", &dir))?;
        check_section(path, &point, &data, data_crc)?;
        seed.finish().map_err(wal)?;
    }
    check_end(path, &mut input)
}
