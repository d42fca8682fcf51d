//! `SIM_TRACE`: what a failing seed did, on stderr. Besides what the disks
//! report (restarts, torn writes, snapshots), every Raft message as it is
//! delivered (`T<time> <from>-><to> t<term> <body>`, appends by their index
//! and term range) and every change of a replica's role, term, leader, log
//! end, commit index, repair target or configuration (`S<time> n<node>
//! s<shard> ...`), and every client request and answer as it is delivered
//! (`C<time> c<client> op<operation> a<attempt> -> n<node> ...` with the
//! session, sequence, ack and command; `A<time> n<node> -> c<client> ...`
//! with the answer decoded). A liveness failure's story is usually in the
//! `S` lines and the vote messages: `grep -E '^S|Vote'`; a client's in its
//! `C` and `A` lines: `grep -E '^[CA][0-9]+ .*c1 '`.

use std::collections::BTreeMap;

use engine::{Message, MessageBody, NodeId, Raft};

/// Whether `SIM_TRACE` is set.
pub fn enabled() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

/// Prints a message being delivered at `now`.
pub fn message(now: u64, message: &Message) {
    let body = match &message.body {
        MessageBody::Append(append) => format!(
            "Append prev={}/{} commit={} entries={:?}",
            append.prev_index,
            append.prev_term,
            append.commit,
            append.entries.as_ref().map(|batch| (batch.first_index(), batch.last_index(), batch.last_term()))
        ),
        MessageBody::InstallSnapshot(chunk) => {
            format!(
                "InstallSnapshot {}/{} offset={} done={}",
                chunk.meta.index, chunk.meta.term, chunk.offset, chunk.done
            )
        }
        MessageBody::Propose { command } => format!("Propose {} bytes", command.len()),
        other => format!("{other:?}"),
    };
    eprintln!("T{now} {}->{} t{} {body}", message.from, message.to, message.term);
}

/// The replicas' states last printed, to print only changes.
#[derive(Default)]
pub struct States {
    last: BTreeMap<(NodeId, u32), String>,
}

impl States {
    /// Prints replica (`id`, `shard`)'s state at `now` if it changed.
    pub fn replica(&mut self, now: u64, id: NodeId, shard: u32, raft: &Raft) {
        let last = raft.last_index();
        let state = format!(
            "{:?} t{} leader={} last={last}/{} commit={} repair={:?} conf={:?}",
            raft.role(),
            raft.term(),
            raft.leader(),
            raft.term_at(last).unwrap_or(0),
            raft.committed(),
            raft.repair_target(),
            raft.conf()
        );
        if self.last.get(&(id, shard)) != Some(&state) {
            eprintln!("S{now} n{id} s{shard} {state}");
            self.last.insert((id, shard), state);
        }
    }
}

/// Prints a client's request as it reaches node `to` (`C<time>`): the
/// client, its operation and attempt, the session, sequence and ack, and
/// the write's command or the request's kind.
pub fn request(now: u64, to: NodeId, request: &super::node::Request) {
    let super::node::Request { waiter, shard, request } = request;
    let body = match &request.body {
        net::client::RequestBody::Write { command } => match net::kv::KvOp::decode(command) {
            Ok(op) => format!("{op:?}"),
            Err(_) => format!("write of {} bytes", command.len()),
        },
        other => format!("{other:?}"),
    };
    eprintln!(
        "C{now} c{} op{} a{} -> n{to} s{shard} session={} seq={} ack={} {body}",
        waiter.client, waiter.operation, waiter.attempt, request.client_id, request.sequence, request.ack
    );
}

/// Prints an answer as it reaches its client (`A<time>`).
pub fn response(now: u64, from: NodeId, response: &super::node::Response) {
    let super::node::Response { waiter, status } = response;
    let status = match status {
        net::client::ResponseStatus::Ok(bytes) => match net::kv::KvResponse::decode(bytes) {
            Ok(answer) => format!("Ok {answer:?}"),
            Err(_) => format!("Ok {bytes:?}"),
        },
        other => format!("{other:?}"),
    };
    eprintln!("A{now} n{from} -> c{} op{} a{} {status}", waiter.client, waiter.operation, waiter.attempt);
}
