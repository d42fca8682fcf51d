//! How the RESP front door reaches the key-value state machine: the same
//! in-process path as a request forwarded between cores ([`NodeHandle`]),
//! with the node's exactly-once sessions for every write.
//!
//! The front door is one client of the cluster per node: it opens a few
//! sessions per shard (through the log, as any client does) and shares them
//! among its connections, so a Redis connection costs no session of its own
//! and `redis-benchmark -c 50` does not open fifty. Each write takes the
//! next sequence of a session with room in its window and is retried with
//! that same sequence until it has an outcome, so a write retried after a
//! leader change is applied once. A follower forwards the write to the
//! leader (the binary protocol's `--forward-writes` path, which the RESP
//! front door turns on).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use net::kv::{batch_op_size, encode_batch, shard_for_key, KvOp, BATCH_OPS_MAX};
use net::session::{OpenedSession, Session};
use net::{ClientRequest, ReadConsistency, RequestBody, ResponseStatus};

use crate::kv::KvResponse;
use crate::local::NodeHandle;

/// Sessions the front door keeps per shard, at most. A session's window
/// (1,024 writes by default) bounds the writes it has in flight, so four
/// allow 4,096 writes in flight per shard; a write beyond that waits for
/// room (up to [`CALL_TIMEOUT`]) rather than failing. Each session is one
/// place in the cluster's session table, which every node's front door
/// shares with all other clients.
pub const SESSIONS_PER_SHARD_MAX: usize = 4;
/// How long a command keeps retrying (no leader, busy, leadership moving)
/// before it answers `TRYAGAIN`. Below the session's retry window (half
/// the 10-minute default timeout), so `SessionExpired` always means "not
/// applied".
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a retry.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why a command got no result: the text of its RESP error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFailed(pub String);

impl CallFailed {
    /// `TRYAGAIN` after [`CALL_TIMEOUT`] of retries, the last one's
    /// outcome in words; for a write, that it may have been applied.
    fn timed_out(last: &str, call: Call) -> CallFailed {
        CallFailed(match call {
            Call::Write => format!(
                "TRYAGAIN no outcome within {CALL_TIMEOUT:?} ({last}); the write may or may not have been applied"
            ),
            Call::Read => format!("TRYAGAIN no answer within {CALL_TIMEOUT:?} ({last})"),
        })
    }
}

/// What a retried call is, for its error's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Read,
    Write,
}

/// One shard's sessions.
#[derive(Default)]
struct ShardSessions {
    sessions: Vec<Session>,
    /// A session is being opened: others wait for it instead of opening
    /// their own.
    opening: bool,
}

/// The node's side of every RESP connection. It lives on one core's
/// runtime (`Rc`, never shared between threads).
pub struct Backend {
    handle: NodeHandle,
    shards: Vec<RefCell<ShardSessions>>,
    next_request_id: Cell<u64>,
    /// The largest command a shard accepts: a batch is split below it.
    command_bytes_max: usize,
}

impl Backend {
    pub fn new(handle: NodeHandle, command_bytes_max: usize) -> Backend {
        let shards = (0..handle.shards()).map(|_| RefCell::new(ShardSessions::default())).collect();
        Backend { handle, shards, next_request_id: Cell::new(1), command_bytes_max }
    }

    pub fn shard_count(&self) -> u32 {
        self.handle.shards()
    }

    pub fn node_id(&self) -> u64 {
        self.handle.node_id()
    }

    /// Sends one request to `shard` and waits for its status; a node that
    /// is stopping answers `TimedOut`.
    async fn call(&self, shard: u32, client_id: u64, sequence: u64, ack: u64, body: RequestBody) -> ResponseStatus {
        let request_id = self.next_request_id.get();
        self.next_request_id.set(request_id + 1);
        let request = ClientRequest { request_id, client_id, sequence, ack, body };
        self.handle.call(shard, request).await.unwrap_or(ResponseStatus::TimedOut)
    }

    /// Reads with `query` at the node's configured consistency, retrying
    /// while no leader is known or the shard is busy.
    pub async fn read(&self, shard: u32, query: Bytes) -> Result<KvResponse, CallFailed> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let body = RequestBody::Read { query: query.clone(), consistency: ReadConsistency::NodeDefault };
            match self.call(shard, 0, 0, 0, body).await {
                ResponseStatus::Ok(bytes) => return decode(&bytes),
                status => retry_or_fail(status, deadline, Call::Read).await?,
            }
        }
    }

    /// The shard's status (`node admin status`'s JSON).
    pub async fn status(&self, shard: u32) -> Result<serde_json::Value, CallFailed> {
        match self.call(shard, 0, 0, 0, RequestBody::Status).await {
            ResponseStatus::Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| CallFailed(format!("ERR undecodable status of shard {shard}: {error}"))),
            other => Err(CallFailed(format!("ERR shard {shard} status: {other:?}"))),
        }
    }

    /// Writes `command` once through a session of `shard`: a sequence of a
    /// session with room, retried with the same sequence until an outcome;
    /// a session that expired is replaced and the write sent there as new
    /// (it was not applied).
    pub async fn write(&self, shard: u32, command: Bytes) -> Result<KvResponse, CallFailed> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let (client_id, sequence) = self.start_write(shard, deadline).await?;
            let outcome = self.write_in(shard, client_id, sequence, &command, deadline).await;
            self.finish_write(shard, client_id, sequence);
            match outcome {
                WriteOutcome::Done(result) => return result,
                WriteOutcome::SessionExpired => self.forget_session(shard, client_id),
            }
        }
    }

    /// Writes `ops` (a pipeline's writes, in its order) and returns their
    /// outcomes in the same order: the ops of each shard go as one batch
    /// (several when they exceed the shard's command or op-count limit),
    /// applied in order in one step; the shards run concurrently.
    pub async fn write_ops(&self, ops: Vec<KvOp>) -> Vec<Result<KvResponse, CallFailed>> {
        let shards = self.shard_count();
        if shards == 1 {
            // Every op is the one shard's, in order: nothing to split (the
            // split's vectors, grown op by op, were a tenth of a pipeline's
            // allocations).
            return self.write_shard(0, ops).await;
        }
        let count = ops.len();
        let mut per_shard: Vec<(Vec<usize>, Vec<KvOp>)> =
            (0..shards).map(|_| (Vec::with_capacity(count), Vec::with_capacity(count))).collect();
        for (position, op) in ops.into_iter().enumerate() {
            let shard = &mut per_shard[shard_for_key(op.key(), shards) as usize];
            shard.0.push(position);
            shard.1.push(op);
        }
        let runs = per_shard
            .into_iter()
            .enumerate()
            .filter(|(_, (positions, _))| !positions.is_empty())
            .map(|(shard, (positions, ops))| async move { (positions, self.write_shard(shard as u32, ops).await) });
        let mut outcomes: Vec<Option<Result<KvResponse, CallFailed>>> = (0..count).map(|_| None).collect();
        for (positions, results) in join_all(runs).await {
            for (position, result) in positions.into_iter().zip(results) {
                outcomes[position] = Some(result);
            }
        }
        outcomes.into_iter().map(|outcome| outcome.expect("every op has an outcome")).collect()
    }

    /// Writes one shard's ops in order, in batches under the shard's limits.
    /// Once a batch has no outcome, the later ones are not sent: they could
    /// otherwise be applied before it, out of the pipeline's order.
    async fn write_shard(&self, shard: u32, ops: Vec<KvOp>) -> Vec<Result<KvResponse, CallFailed>> {
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut rest = &ops[..];
        while !rest.is_empty() {
            let mut take = 0;
            let mut size = 5;
            while take < rest.len() && take < BATCH_OPS_MAX {
                size += batch_op_size(&rest[take]);
                if take > 0 && size > self.command_bytes_max {
                    break;
                }
                take += 1;
            }
            let (batch, later) = rest.split_at(take);
            rest = later;
            match batch {
                [op] => outcomes.push(self.write(shard, op.encode()).await),
                _ => match self.write(shard, encode_batch(batch)).await {
                    Ok(KvResponse::Batch(answers)) if answers.len() == batch.len() => {
                        outcomes.extend(answers.into_iter().map(Ok))
                    }
                    Ok(other) => {
                        let failed = CallFailed(format!("ERR unexpected answer to a batch: {other:?}"));
                        outcomes.extend(batch.iter().map(|_| Err(failed.clone())));
                    }
                    Err(failed) => outcomes.extend(batch.iter().map(|_| Err(failed.clone()))),
                },
            }
            if let Some(Err(failed)) = outcomes.last() {
                let unsent = CallFailed(format!(
                    "TRYAGAIN not sent: an earlier write of this pipeline to the same shard failed ({})",
                    failed.0
                ));
                outcomes.extend(rest.iter().map(|_| Err(unsent.clone())));
                break;
            }
        }
        outcomes
    }

    async fn write_in(
        &self,
        shard: u32,
        client_id: u64,
        sequence: u64,
        command: &Bytes,
        deadline: Instant,
    ) -> WriteOutcome {
        loop {
            let ack = self.ack(shard, client_id).unwrap_or(sequence);
            let body = RequestBody::Write { command: command.clone() };
            let status = self.call(shard, client_id, sequence, ack, body).await;
            match status {
                ResponseStatus::Ok(bytes) => return WriteOutcome::Done(decode(&bytes)),
                ResponseStatus::SessionExpired => return WriteOutcome::SessionExpired,
                status => {
                    if let Err(failed) = retry_or_fail(status, deadline, Call::Write).await {
                        return WriteOutcome::Done(Err(failed));
                    }
                }
            }
        }
    }

    /// A session of `shard` with room for one more write, and the write's
    /// sequence: an open one, or a new one when all are full and there are
    /// fewer than [`SESSIONS_PER_SHARD_MAX`].
    async fn start_write(&self, shard: u32, deadline: Instant) -> Result<(u64, u64), CallFailed> {
        loop {
            let open_one = {
                let mut sessions = self.shards[shard as usize].borrow_mut();
                if let Some(session) = sessions.sessions.iter_mut().find(|session| session.can_start()) {
                    return Ok((session.client_id(), session.start()));
                }
                let may_open = !sessions.opening && sessions.sessions.len() < SESSIONS_PER_SHARD_MAX;
                sessions.opening |= may_open;
                may_open
            };
            if open_one {
                let opened = self.open_session(shard, deadline).await;
                let mut sessions = self.shards[shard as usize].borrow_mut();
                sessions.opening = false;
                sessions.sessions.push(Session::new(opened?));
                continue;
            }
            if Instant::now() >= deadline {
                return Err(CallFailed::timed_out("every session of the shard is full", Call::Write));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn open_session(&self, shard: u32, deadline: Instant) -> Result<OpenedSession, CallFailed> {
        loop {
            match self.call(shard, 0, 0, 0, RequestBody::OpenSession).await {
                ResponseStatus::Ok(bytes) => {
                    return OpenedSession::decode(&bytes)
                        .map_err(|error| CallFailed(format!("ERR undecodable session opening: {error}")))
                }
                status => retry_or_fail(status, deadline, Call::Write).await?,
            }
        }
    }

    fn ack(&self, shard: u32, client_id: u64) -> Option<u64> {
        let sessions = self.shards[shard as usize].borrow();
        sessions.sessions.iter().find(|session| session.client_id() == client_id).map(Session::ack)
    }

    fn finish_write(&self, shard: u32, client_id: u64, sequence: u64) {
        let mut sessions = self.shards[shard as usize].borrow_mut();
        if let Some(session) = sessions.sessions.iter_mut().find(|session| session.client_id() == client_id) {
            session.finish(sequence);
        }
    }

    fn forget_session(&self, shard: u32, client_id: u64) {
        self.shards[shard as usize].borrow_mut().sessions.retain(|session| session.client_id() != client_id);
    }

    /// Sessions open now, over every shard (for `INFO`).
    pub fn sessions_open(&self) -> usize {
        self.shards.iter().map(|shard| shard.borrow().sessions.len()).sum()
    }
}

enum WriteOutcome {
    Done(Result<KvResponse, CallFailed>),
    SessionExpired,
}

fn decode(bytes: &Bytes) -> Result<KvResponse, CallFailed> {
    KvResponse::decode(bytes).map_err(|error| CallFailed(format!("ERR undecodable answer: {error}")))
}

/// Waits before a retry of a request that got `status`, or fails with
/// what it means for the client: statuses that may change (no leader yet,
/// busy, timed out, leadership moving) are retried until `deadline`; a
/// refusal is final.
async fn retry_or_fail(status: ResponseStatus, deadline: Instant, call: Call) -> Result<(), CallFailed> {
    let last = match status {
        ResponseStatus::BadRequest(reason) => return Err(CallFailed(format!("ERR {reason}"))),
        ResponseStatus::Forbidden(reason) => return Err(CallFailed(format!("NOPERM {reason}"))),
        // Final too: nothing was applied. Retried, the client waited 10 s
        // for `TRYAGAIN ... may or may not have been applied` (fifth audit).
        ResponseStatus::NoSpace => {
            return Err(CallFailed(
                "ERR a disk this write needs is full (the leader's, or this node's own): nothing applied; retry \
                 later"
                    .into(),
            ))
        }
        ResponseStatus::Ok(_) => unreachable!("an outcome is not retried"),
        ResponseStatus::TimedOut => "timed out in the cluster".to_string(),
        other => other.to_string(),
    };
    if Instant::now() + RETRY_PAUSE >= deadline {
        return Err(CallFailed::timed_out(&last, call));
    }
    tokio::time::sleep(RETRY_PAUSE).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_final_refusal_not_a_retry() {
        tokio_uring::start(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let started = Instant::now();
            let failed = retry_or_fail(ResponseStatus::NoSpace, deadline, Call::Write).await.unwrap_err();
            assert!(started.elapsed() < RETRY_PAUSE, "it waited to retry");
            assert!(failed.0.starts_with("ERR a disk this write needs is full"), "{}", failed.0);
        });
    }
}
