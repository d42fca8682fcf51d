//! Lease reads in real time, and what every voter says of its votes.
//!
//! The engine counts a leader's lease in its own ticks: a quorum
//! acknowledged a heartbeat round sent less than `election_ticks_min -
//! lease_drift_ticks` ticks ago ([`engine::Raft::lease_sent_at`]). That is
//! safe only while no voter that acknowledged the round can help elect
//! another leader before the lease runs out, and two things here make it
//! so in real time:
//!
//! - **The leader's ticks may fall behind.** The driver's timer does not
//!   fire the ticks it missed (a process paused, or starved of CPU, resumes
//!   with its ticks behind), so the shard remembers when each recent tick
//!   ran and measures the round's age on the clock.
//! - **The voters' settings may differ.** A voter refuses votes for its own
//!   `--election-ticks-min` times its own `--tick-interval` after it hears a
//!   leader (or starts). Each member says how long that is through the log
//!   ([`NodeCommand::VotesHeld`], once in each term with a leader), and the
//!   lease lasts no longer than the shortest hold among the voters, less
//!   the drift allowance. Until every voter has said, no lease read is
//!   served from the lease (each goes through a quorum), so a voter of an
//!   older build, or one whose word has not been applied here yet, costs a
//!   round trip and never a stale read. Before, a leader with a longer
//!   election timeout than its followers served reads from a lease they no
//!   longer honoured.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use engine::{Index, NodeId, Term};
use serde_json::json;

use super::{Clock, Shard, ShardStorage, ShardTransport};
use crate::app::StateMachine;
use crate::replicated::NodeCommand;

/// A shard's lease bookkeeping.
#[derive(Default)]
pub(super) struct Lease {
    /// When each of the latest ticks ran, oldest first, one entry per tick
    /// (the engine's tick count, the clock).
    tick_times: VecDeque<(u64, Instant)>,
    /// The term in which this node last said how long it holds its vote,
    /// and when.
    announced_term: Term,
    announced_at: Option<Instant>,
    /// The voter with the shortest hold below this node's own, as last
    /// logged (a warning when it changes).
    warned: Option<(NodeId, Duration)>,
    /// A longer hold said before this node's restart, which the engine
    /// keeps until this node's new word is in force (see
    /// [`crate::vote_hold`]): the term the shard started in, and the index
    /// of the first entry of a later term applied here.
    raised: Option<RaisedHold>,
}

/// See [`Lease::raised`].
#[derive(Clone, Copy, Debug)]
pub(super) struct RaisedHold {
    started_in: Term,
    later_term_from: Option<Index>,
}

/// Whether a leader's lease holds for a read asked now.
pub(super) enum LeaseNow {
    /// No lease in ticks, or a voter has not said how long it holds its
    /// vote.
    None,
    /// It holds in ticks only, or its round's tick is no longer remembered.
    Late,
    /// It holds in real time for a read asked now.
    Holds(LeaseRead),
}

/// A read asked under a lease: when the tick of the round the lease rests
/// on ran, and when the read was asked. Checked again when it is served
/// (`Shard::lease_held_for`).
#[derive(Clone, Copy, Debug)]
pub(super) struct LeaseRead {
    round: Instant,
    asked: Instant,
}

impl LeaseRead {
    /// Whether the read was asked less than `length` after its round.
    fn within(self, length: Duration) -> bool {
        self.asked.saturating_duration_since(self.round) < length
    }
}

/// How long a lease lasts in real time, or which voter keeps that unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeaseLength {
    /// It lasts this long after its round was sent; `shortest` is the voter
    /// whose hold bounds it (this node, when none is shorter).
    Known { length: Duration, shortest: NodeId },
    /// This voter has not said how long it holds its vote.
    Unknown(NodeId),
}

impl<S, D, T, C> Shard<S, D, T, C>
where
    S: StateMachine,
    D: ShardStorage,
    T: ShardTransport,
    C: Clock,
{
    /// Remembers when the engine's latest tick ran: as many ticks back as
    /// the longest election timeout, which a valid lease never exceeds.
    pub(super) fn note_tick_time(&mut self, now: Instant) {
        let times = &mut self.lease.tick_times;
        times.push_back((self.raft.ticks(), now));
        let kept = usize::try_from(self.raft.config().election_ticks_max).unwrap_or(usize::MAX).saturating_add(1);
        while times.len() > kept {
            times.pop_front();
        }
    }

    /// How long this node refuses votes after it hears a leader or starts:
    /// its `--election-ticks-min` times its `--tick-interval`.
    fn votes_held_here(&self) -> Duration {
        self.ctx.tick_interval * self.raft.config().election_ticks_min
    }

    /// How long a lease lasts after its round was sent: the shortest hold
    /// of any voter (both halves of a joint configuration, witnesses
    /// included, this node's own), less `lease_drift_ticks` of this node's
    /// ticks.
    pub(super) fn lease_length(&self) -> LeaseLength {
        let me = self.ctx.node_id;
        let conf = self.raft.conf();
        let mut shortest = (self.votes_held_here(), me);
        for &id in conf.voters.iter().chain(&conf.voters_outgoing).filter(|&&id| id != me) {
            match self.fsm.votes_held(id) {
                Some(held) if held < shortest.0 => shortest = (held, id),
                Some(_) => {}
                None => return LeaseLength::Unknown(id),
            }
        }
        let drift = self.ctx.tick_interval * self.raft.config().lease_drift_ticks;
        LeaseLength::Known { length: shortest.0.saturating_sub(drift), shortest: shortest.1 }
    }

    /// Whether the leader's lease also holds in real time: the heartbeat
    /// round it rests on was sent less than [`Shard::lease_length`] ago
    /// (the round's tick ran no later than the round was sent, so its time
    /// is a safe start). `None` when no lease holds even in ticks, or a
    /// voter has not said how long it holds its vote; `Some(false)` when it
    /// holds in ticks only, or its round's tick is no longer remembered
    /// (the read then goes through a quorum, ReadIndex, either way).
    pub(super) fn lease_holds_in_real_time(&self) -> Option<bool> {
        match self.lease_now() {
            LeaseNow::None => None,
            LeaseNow::Late => Some(false),
            LeaseNow::Holds(_) => Some(true),
        }
    }

    /// [`Shard::lease_holds_in_real_time`], with the times a lease read
    /// asked now keeps when it holds: the engine's lease is looked up once
    /// (each lookup sorts the voters' acknowledgements).
    pub(super) fn lease_now(&self) -> LeaseNow {
        let Some(sent) = self.raft.lease_sent_at() else { return LeaseNow::None };
        let LeaseLength::Known { length, .. } = self.lease_length() else { return LeaseNow::None };
        let times = &self.lease.tick_times;
        let remembered = times.front().and_then(|&(first, _)| {
            let &(tick, at) = times.get(usize::try_from(sent.checked_sub(first)?).ok()?)?;
            debug_assert_eq!(tick, sent, "one entry per tick");
            (tick == sent).then_some(at)
        });
        match remembered.map(|round| LeaseRead { round, asked: self.clock.now() }) {
            Some(read) if read.within(length) => LeaseNow::Holds(read),
            _ => LeaseNow::Late,
        }
    }

    /// Whether a read asked under a lease is still within the lease as the
    /// words applied now size it. It is served once this node has applied everything committed
    /// when it was asked: a voter's shorter word committed by then (a voter
    /// restarted with shorter settings holds its old, longer hold only
    /// until it has applied that word, see [`crate::vote_hold`]) may have
    /// been applied here only since, when a long apply was split over
    /// turns.
    pub(super) fn lease_held_for(&self, read: LeaseRead) -> bool {
        match self.lease_length() {
            LeaseLength::Known { length, .. } => read.within(length),
            LeaseLength::Unknown(_) => false,
        }
    }

    /// The status's `lease`: how long this node's leases last in real time
    /// and which voter's hold bounds them, or which voter has not said yet
    /// (no lease read is served from the lease until it has);
    /// `holds`: whether this leader's lease holds now, in ticks and in
    /// real time; `forfeited_by_transfer`: this leader started a transfer
    /// in its term, so it serves no lease read until the next term;
    /// `vote_hold_ms`: how long this node refuses votes after it hears a
    /// leader, `vote_hold_raised` when that is a longer hold it said before
    /// its restart (see [`crate::vote_hold`]).
    pub(super) fn lease_json(&self) -> serde_json::Value {
        let (length_ms, bounded_by, unknown_voter) = match self.lease_length() {
            LeaseLength::Known { length, shortest } => (Some(length.as_secs_f64() * 1000.0), Some(shortest), None),
            LeaseLength::Unknown(id) => (None, None, Some(id)),
        };
        json!({
            "length_ms": length_ms,
            "bounded_by": bounded_by,
            "unknown_voter": unknown_voter,
            "holds": self.lease_holds_in_real_time() == Some(true),
            "forfeited_by_transfer": self.raft.lease_forfeited(),
            "vote_hold_ms": (self.ctx.tick_interval * self.raft.vote_hold_ticks()).as_secs_f64() * 1000.0,
            "vote_hold_raised": self.lease.raised.is_some(),
        })
    }

    /// Whether a lease read asked now would be served from the lease, with
    /// no quorum round: the simulator checks that such a leader holds every
    /// entry any node has seen committed.
    pub fn lease_serves_now(&self) -> bool {
        self.lease_holds_in_real_time() == Some(true)
    }

    /// Says, through the leader, how long this node refuses votes (node
    /// command kind 10): once in each term with a leader, since a new
    /// leader may not have applied the earlier word (it is kept in no
    /// snapshot), and again while this node has applied another value. A
    /// witness says it too (it votes), though it applies nothing.
    pub(super) fn announce_votes_held(&mut self, now: Instant) {
        let me = self.ctx.node_id;
        let term = self.raft.term();
        let held = self.votes_held_here();
        let conf = self.raft.conf();
        let voter = conf.voters.contains(&me) || conf.voters_outgoing.contains(&me);
        let applied_here = self.raft.is_witness() || self.fsm.votes_held(me) == Some(held);
        if !voter
            || !self.may_speak(self.lease.announced_at, now)
            || (self.lease.announced_term == term && applied_here)
        {
            return;
        }
        let micros = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        match self.raft.forward_announcement(NodeCommand::VotesHeld { id: me, micros }.encode()) {
            Ok(()) => {
                self.lease.announced_term = term;
                self.lease.announced_at = Some(now);
            }
            Err(error) => tracing::debug!(shard = self.ctx.shard_id, %error, "vote hold not announced"),
        }
    }

    /// Keeps the longer vote hold this node said before its restart, if
    /// any (see [`crate::vote_hold`]): leaders may size their leases by
    /// that word until this node's new one is applied there.
    pub(super) fn raise_vote_hold(&mut self) {
        let Some(said) = &self.ctx.said_hold else { return };
        let ticks = said.before().as_micros().div_ceil(self.ctx.tick_interval.as_micros().max(1));
        self.raft.set_vote_hold_ticks(u32::try_from(ticks).unwrap_or(u32::MAX));
        self.lease.raised = Some(RaisedHold { started_in: self.raft.term(), later_term_from: None });
        tracing::info!(
            shard = self.ctx.shard_id,
            ticks = self.raft.vote_hold_ticks(),
            "holding votes as long as this node said before its restart, until its new word is in force"
        );
    }

    /// Notes an applied entry's term while the hold is raised: the first
    /// entry of a term after the one the shard started in comes after any
    /// word this node said before its restart, in every log that holds it
    /// (an older word has an older term, and terms never fall along a log).
    pub(super) fn note_applied_term(&mut self, index: Index, term: Term) {
        if let Some(raised) = &mut self.lease.raised {
            if raised.later_term_from.is_none() && term > raised.started_in {
                raised.later_term_from = Some(index);
            }
        }
    }

    /// Lowers the raised hold once this node's new word is in force: the
    /// latest word applied here is its settings', from an entry past the
    /// first of a later term (so after any older, longer word that may
    /// still have committed). A leader that has applied it sizes its leases
    /// by it; one that has committed but not yet applied it checks each
    /// lease read again when it serves it (`Shard::serve_reads`). A witness
    /// applies no word and keeps the raised hold for this process's life.
    pub(super) fn release_vote_hold(&mut self) {
        let Some(raised) = self.lease.raised else { return };
        let Some(from) = raised.later_term_from else { return };
        let said = self.fsm.votes_held_said_at(self.ctx.node_id);
        if !said.is_some_and(|(held, at)| held == self.votes_held_here() && at >= from) {
            return;
        }
        self.lease.raised = None;
        self.raft.set_vote_hold_ticks(0);
        tracing::info!(
            shard = self.ctx.shard_id,
            ticks = self.raft.vote_hold_ticks(),
            "this node's new vote hold is in force"
        );
        if let Some(said) = &self.ctx.said_hold {
            said.shard_released();
        }
    }

    /// Warns, once each time it changes, when a voter holds its vote for
    /// less time than this node: this node's leases are then shorter than
    /// its own settings say (lease reads more often go through a quorum).
    pub(super) fn note_short_vote_hold(&mut self) {
        let here = self.votes_held_here();
        let shorter = match self.lease_length() {
            LeaseLength::Known { shortest, .. } if shortest != self.ctx.node_id => {
                self.fsm.votes_held(shortest).map(|held| (shortest, held))
            }
            _ => None,
        };
        if shorter == self.lease.warned {
            return;
        }
        self.lease.warned = shorter;
        if let Some((id, held)) = shorter {
            tracing::warn!(
                shard = self.ctx.shard_id,
                member = id,
                "member {id} refuses votes for {held:?} after it hears a leader, this node for {here:?} \
                 (--election-ticks-min times --tick-interval): this node's leases last no longer than the \
                 shorter, so run every node with the same settings"
            );
        }
    }
}
