//! `SIM_TRACE`: what a failing seed did, on stderr. Besides what the disks
//! report (restarts, torn writes, snapshots), every Raft message as it is
//! delivered (`T<time> <from>-><to> t<term> <body>`, appends by their index
//! and term range) and every change of a replica's role, term, leader, log
//! end, commit index, repair target or configuration (`S<time> n<node>
//! s<shard> ...`). A liveness failure's story is usually in the `S` lines
//! and the vote messages: `grep -E '^S|Vote'`.

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
