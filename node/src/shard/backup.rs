//! Serving a backup of the shard's state (`node admin backup`): where it
//! starts, then the stored snapshot's bytes chunk by chunk.
//!
//! A backup must hold every write acknowledged before it began, on any
//! node: so it begins, as a linearizable read does, by confirming what the
//! cluster has committed (a ReadIndex round), and takes the index this node
//! has applied once it reached that point as the bar. A stored snapshot at
//! or past the bar is what the client copies; if there is none, one is
//! taken (in the background, as always) and the client asks again with the
//! bar it was given, so a bar never moves under load and one snapshot
//! serves. The chunks are read from the stored file at their offsets, as a
//! follower's are, so neither side holds the state in memory; a newer
//! snapshot replacing the file mid-copy is answered as such (the client
//! begins again).

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use engine::raft::ReadMode;
use net::ResponseStatus;
use serde_json::json;
use wal::WalError;

use super::{Clock, Shard, ShardStorage, ShardTransport};
use crate::app::StateMachine;

/// A chunk a backup client asked for, served at the next `process` (reads
/// of the snapshot file are asynchronous).
pub(super) struct BackupRead<R> {
    index: u64,
    offset: u64,
    len: u32,
    reply: R,
}

/// Chunk reads a shard queues at most; more are answered `Busy` (a client
/// keeps one in flight).
const BACKUP_READS_MAX: usize = 16;

/// The first byte of a chunk's answer: the serving node's id (u64) and
/// the bytes follow. (A client given several addresses may reach another
/// node than the one that named the snapshot: its file at the same index
/// need not hold the same bytes, so the client checks the id.)
pub const BACKUP_CHUNK_DATA: u8 = 0;
/// Bytes before the data in a chunk's answer.
pub const BACKUP_CHUNK_HEAD: usize = 9;
/// The only byte of a chunk's answer when the stored snapshot is no longer
/// the one asked for.
pub const BACKUP_CHUNK_REPLACED: u8 = 1;

impl<S, D, T, C> Shard<S, D, T, C>
where
    S: StateMachine,
    D: ShardStorage,
    T: ShardTransport,
    C: Clock,
{
    /// Whether this node can serve a backup; a witness holds no state.
    fn backup_refusal(&self) -> Option<ResponseStatus> {
        self.raft.is_witness().then(|| {
            ResponseStatus::BadRequest("this node is a witness and keeps no state: back up from a full member".into())
        })
    }

    /// [`net::AdminRequest::BackupBegin`]: with `at_least` 0 the commit
    /// barrier first (answered from [`Shard::backup_point`] once safe).
    pub(super) fn backup_begin(&mut self, at_least: u64, reply: T::Reply, arrived: Instant) {
        if let Some(refusal) = self.backup_refusal() {
            self.transport.reply(reply, refusal);
            return;
        }
        if at_least > 0 {
            return self.backup_point(at_least, reply);
        }
        self.read_barrier(ReadMode::ReadIndex, None, reply, arrived);
    }

    /// Answers where a backup at or past `bar` starts: the stored
    /// snapshot if it reaches the bar, else `pending` (taking a snapshot
    /// when none is being stored or restored and this node applied the
    /// bar).
    pub(super) fn backup_point(&mut self, bar: u64, reply: T::Reply) {
        let body = match self.snapshots.current() {
            Some((meta, size)) if meta.index >= bar => {
                json!({ "index": meta.index, "term": meta.term, "size": size, "node": self.ctx.node_id })
            }
            _ => {
                if self.snapshots.idle() && self.fsm.applied() >= bar {
                    if let Err(reason) = self.take_snapshot_now() {
                        tracing::debug!(shard = self.ctx.shard_id, reason, "backup snapshot not taken yet");
                    }
                }
                json!({ "pending": bar })
            }
        };
        self.transport.reply(reply, ResponseStatus::Ok(Bytes::from(body.to_string())));
    }

    /// [`net::AdminRequest::BackupChunk`]: queued for the next `process`.
    pub(super) fn backup_chunk(&mut self, index: u64, offset: u64, len: u32, reply: T::Reply) {
        if let Some(refusal) = self.backup_refusal() {
            self.transport.reply(reply, refusal);
            return;
        }
        if self.backup_reads.len() >= BACKUP_READS_MAX {
            self.transport.reply(reply, ResponseStatus::Busy);
            return;
        }
        self.backup_reads.push(BackupRead { index, offset, len, reply });
    }

    /// Reads the queued chunks from the stored snapshot file and answers
    /// them.
    pub(super) async fn serve_backup_reads(&mut self) {
        for read in std::mem::take(&mut self.backup_reads) {
            let current = self.snapshots.current().is_some_and(|(meta, _)| meta.index == read.index);
            let chunk = match current {
                false => Ok(None),
                true => self.storage.read_snapshot(read.index, read.offset, u64::from(read.len)).await,
            };
            let status = match chunk {
                Ok(Some(data)) => {
                    let mut body = BytesMut::with_capacity(BACKUP_CHUNK_HEAD + data.len());
                    body.put_u8(BACKUP_CHUNK_DATA);
                    body.put_u64_le(self.ctx.node_id);
                    body.put_slice(&data);
                    ResponseStatus::Ok(body.freeze())
                }
                Ok(None) => ResponseStatus::Ok(Bytes::from_static(&[BACKUP_CHUNK_REPLACED])),
                Err(error) => {
                    if matches!(error, WalError::Corrupt { .. }) {
                        self.stored_snapshot_damaged(&error, "no backup from it");
                    }
                    ResponseStatus::BadRequest(format!("reading the stored snapshot failed: {error}"))
                }
            };
            self.transport.reply(read.reply, status);
        }
    }
}
