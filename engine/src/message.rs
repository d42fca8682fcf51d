//! Every message Raft peers exchange. The engine produces and consumes these
//! values; the `net` crate gives them a byte encoding.

use bytes::Bytes;

use crate::batch::EntryBatch;
use crate::types::{Index, NodeId, SnapshotMeta, Term};

/// One Raft message. `term` is the sender's current term, except for pre-vote
/// requests (the term the sender would campaign in) and pre-vote responses
/// (the term of the request they answer), as in etcd's pre-vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// The body of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me?" without disturbing anyone's term (Raft thesis 9.6).
    PreVote(VoteRequest),
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote (Raft paper 5.2).
    Vote(VoteRequest),
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries with entries (Raft paper 5.3). An empty `entries` is a probe.
    Append(AppendRequest),
    AppendResponse(AppendResponse),
    /// A leader's heartbeat. `commit` is at most the follower's known match, so
    /// a follower never commits past what it holds; `read_context` names the
    /// ReadIndex round it confirms (0 for none).
    Heartbeat {
        commit: Index,
        read_context: u64,
    },
    HeartbeatResponse {
        read_context: u64,
    },
    /// One chunk of a snapshot (Raft paper 7).
    InstallSnapshot(SnapshotChunk),
    /// Acknowledges snapshot chunks: the follower holds `next_offset` bytes of
    /// the snapshot at `index`/`term`. `rejected` means "start over" (for
    /// example a chunk arrived for a different snapshot or out of order).
    InstallSnapshotResponse {
        index: Index,
        term: Term,
        next_offset: u64,
        rejected: bool,
    },
    /// Leader transfer: "start an election now, skipping pre-vote" (Raft thesis 3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        context: u64,
    },
    /// The leader's answer: reads at `index` are linearizable once the follower
    /// has applied it. `index` is 0 when the leader could not serve the read.
    ReadIndexResponse {
        context: u64,
        index: Index,
    },
    /// A command a client gave a follower, forwarded to the leader, which
    /// proposes it as its own (raft-rs's proposal forwarding). There is no
    /// answer: the follower learns the outcome by applying the log like every
    /// replica, so the command must say who it is for (the node's client
    /// sessions do). A leader that cannot take it (busy, transferring, no
    /// longer leader) drops it, and the client's retry is safe for the same
    /// reason.
    Propose {
        command: Bytes,
    },
}

/// The fields shared by vote and pre-vote requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    pub last_log_index: Index,
    pub last_log_term: Term,
    /// Set when the election was started by a leader transfer; voters then
    /// ignore their leader lease (Raft thesis 4.2.3).
    pub transfer: bool,
    /// The candidate's commit index: its log holds the committed entries
    /// through it. A replica in repair may vote for a log it covers (see
    /// `Raft::repair_vote_allowed`). 0 from a sender that predates it.
    pub commit: Index,
}

/// AppendEntries: the entries after `prev_index` (if any) and the leader's
/// commit index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub prev_index: Index,
    pub prev_term: Term,
    pub commit: Index,
    /// The entries, as the encoded batch that also goes to disk.
    pub entries: Option<EntryBatch>,
}

/// The answer to an AppendEntries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    /// On success, the last index the follower now matches; on rejection, the
    /// `prev_index` that did not match.
    pub index: Index,
    pub reject: bool,
    /// On rejection, a hint for fast back-tracking (Raft thesis 5.3 and etcd's
    /// `findConflictByTerm`): the follower's last index at or below `index`
    /// whose term is at most `hint_term`.
    pub hint_index: Index,
    pub hint_term: Term,
    /// On rejection: the follower does not hold `index` at all (its log ends
    /// before it). A leader that recorded `index` as matched learns from this
    /// that the follower lost acknowledged entries (a damaged disk) and
    /// forgets its match instead of discarding the answer as stale.
    pub missing: bool,
    /// With `reject`: the follower's disk is full, so it took nothing from
    /// this append (`index` is the append's `prev_index`). It says nothing
    /// about where the logs match: the leader neither counts it toward
    /// commit nor backs off `next_index` below what the follower matched,
    /// and keeps probing once per heartbeat until the follower has room.
    pub no_space: bool,
    /// With `no_space`: not a full disk, but a follower whose applying is
    /// held (it restores a snapshot) while the entries it has not applied
    /// hold more payload bytes than its log budget: it takes nothing more
    /// until it applies, so that what arrives during a restore does not
    /// grow its memory without bound. The leader treats it as a full
    /// disk for replication, not in what it reports or refuses.
    pub applying: bool,
}

impl AppendResponse {
    /// A plain acknowledgement: the follower matches the leader through
    /// `index`.
    pub fn accepted(index: Index) -> AppendResponse {
        AppendResponse {
            index,
            reject: false,
            hint_index: 0,
            hint_term: 0,
            missing: false,
            no_space: false,
            applying: false,
        }
    }

    /// The answer of a follower whose disk is full to an append at
    /// `prev_index` (see [`AppendResponse::no_space`]).
    pub fn without_space(prev_index: Index) -> AppendResponse {
        AppendResponse { no_space: true, reject: true, ..AppendResponse::accepted(prev_index) }
    }

    /// The answer of a follower that takes no entries until it applies
    /// (see [`AppendResponse::applying`]) to an append at `prev_index`.
    pub fn while_applying(prev_index: Index) -> AppendResponse {
        AppendResponse { applying: true, ..AppendResponse::without_space(prev_index) }
    }
}

/// One chunk of a snapshot; chunks are sent in order by byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: Bytes,
    /// Set on the last chunk.
    pub done: bool,
}
