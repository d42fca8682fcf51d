//! Regressions and known problems found by the simulator and the chaos tests,
//! each reduced to the smallest scenario that shows it.

use bytes::Bytes;
use engine::batch::EntryBatch;
use engine::storage::MemStorage;
use engine::testing::Cluster;
use engine::{AppendRequest, Config, Entry, EntryKind, HardState, Message, MessageBody, Raft, Recovered};

/// Found by `t10_simulation` (seed 26, three nodes, with disk stalls): a
/// follower held an uncommitted entry of an old term at index 2; the new
/// leader replaced it and told the follower the commit index 2 in the same
/// append. The engine handed the shell a hard state with commit 2 alongside
/// the not yet durable replacement; the node's shard writes the hard state
/// on its own (synchronously for a new term or vote, lazily otherwise),
/// unordered with the WAL append, so a crash in between left commit 2 over
/// the stale entry on disk, and the restarted node applied it as committed:
/// two state machines applied different commands at one index.
///
/// Fixed in engine/src/raft.rs `Raft::hard_state`: the commit index it
/// reports never exceeds the durable log (`min(committed, persisted)`).
#[test]
fn hard_state_commit_never_covers_entries_not_yet_durable() {
    let entry = |index, term, data: &'static [u8]| Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from_static(data),
    };
    let recovered = Recovered {
        hard_state: HardState { term: 1, vote: 1, commit: 1, ack_term: 1, verified: false },
        snapshot: None,
        entries: vec![entry(1, 1, b"a"), entry(2, 1, b"stale")],
        acknowledged: 0,
        ..Recovered::default()
    };
    let mut follower = Raft::new(Config::new(1, vec![1, 2, 3]), recovered).expect("valid config");
    let append = AppendRequest {
        prev_index: 1,
        prev_term: 1,
        commit: 2,
        entries: Some(EntryBatch::encode(&[entry(2, 2, b"new")])),
    };
    follower.step(Message { from: 2, to: 1, term: 2, body: MessageBody::Append(append) }).expect("accepted");
    let ready = follower.ready();
    assert_eq!(ready.last_entry(), Some((2, 2)), "the replacement is handed to the shell to persist");
    let hard_state = ready.hard_state.expect("the term changed");
    assert!(
        hard_state.commit <= 1,
        "the hard state's commit {} covers index 2, whose durable entry is still the stale one",
        hard_state.commit
    );
    follower.advance(ready);
    // Once the replacement is durable, the commit index may cover it.
    follower.persisted(2, 2);
    let ready = follower.ready();
    assert_eq!(ready.hard_state.map(|hard_state| hard_state.commit), Some(2));
}

/// Found by `t50_chaos` (a follower restarted with the last batch of its WAL
/// torn): a follower that comes back with fewer entries than it had
/// acknowledged is never caught up by the leader that holds its old
/// `match_index`. The leader probes at `match + 1`; the follower rejects
/// (it lacks `match`); the leader discards the rejection as stale because it
/// is at or below `match` (engine/src/raft.rs, `handle_append_response`,
/// `Progress::maybe_decrease_to`), so the follower stays behind until the
/// leadership changes.
///
/// Fixed (issue 16): the restarted follower's commit index lies beyond its
/// log, so it starts in repair (no votes until a leader verified its log
/// again) and answers the probe with `missing`; the leader then forgets the
/// old match instead of discarding the rejection.
#[test]
fn follower_that_lost_acknowledged_entries_catches_up() {
    let mut cluster = Cluster::with_voters(3, 7);
    cluster.elect(1);
    cluster.commit_values(1, 5);
    // The leader's next tick tells the followers the last commit, so node
    // 3's commit index covers what it is about to lose.
    cluster.tell_commit();
    let last = cluster.node(1).raft.last_index();
    assert_eq!(cluster.node(3).raft.last_index(), last, "follower 3 holds everything before the crash");
    // Node 3 crashes and its last acknowledged entry is lost (a torn tail).
    cluster.crash(3);
    let durable = &cluster.node(3).storage;
    let entries = durable.entries(durable.first_index(), durable.last_index()).expect("entries on disk");
    let mut torn = MemStorage::new();
    torn.set_hard_state(durable.hard_state());
    torn.append(&EntryBatch::encode(&entries)).expect("a contiguous prefix");
    cluster.nodes.get_mut(&3).expect("node 3").storage = torn;
    cluster.restart(3);
    assert_eq!(cluster.node(3).raft.last_index(), last - 1);
    assert_eq!(cluster.node(3).raft.repair_target(), Some(last), "it knows it lost an acknowledged entry");
    // The same leader goes on; node 3 must catch up.
    for round in 0..50u8 {
        let _ = cluster.raft(1).propose(Bytes::from(vec![100 + round]));
        cluster.tick_all();
        run_rounds(&mut cluster, 20);
    }
    let leader_last = cluster.node(1).raft.last_index();
    assert_eq!(
        cluster.node(3).raft.last_index(),
        leader_last,
        "follower 3 never caught up: the leader's status: {:?}",
        cluster.node(1).raft.status().progress
    );
    assert_eq!(cluster.node(3).raft.repair_target(), None, "repaired, it votes again");
}

/// Ready processing and delivery for a bounded number of rounds (the
/// harness's `stabilize` panics on a cluster that keeps exchanging messages,
/// which is what the broken case does).
fn run_rounds(cluster: &mut Cluster, rounds: usize) {
    for _ in 0..rounds {
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.process_ready(id);
        }
        cluster.deliver_all();
    }
}

/// Lets a replica created with a term (a restart) through the election
/// timeout in which it refuses every vote (a lease may rest on what it
/// acknowledged before: `engine::Raft`'s restart hold), so that a test sees
/// the vote rule it is about. Every Ready is taken and advanced past.
fn past_the_restart_hold(replica: &mut Raft) {
    for _ in 0..replica.config().election_ticks_min {
        replica.tick();
        let ready = replica.ready();
        replica.advance(ready);
    }
}

/// Steps `replica` with a (pre-)vote request from `from` in `term` and
/// returns its answers (granted or not), advancing past the Ready.
fn ask_vote(replica: &mut Raft, from: u64, term: u64, request: engine::VoteRequest, pre: bool) -> Vec<bool> {
    let body = if pre { MessageBody::PreVote(request) } else { MessageBody::Vote(request) };
    replica.step(Message { from, to: replica.id(), term, body }).expect("handled");
    let ready = replica.ready();
    let granted = ready
        .messages
        .iter()
        .chain(&ready.messages_after_persist)
        .filter_map(|message| match message.body {
            MessageBody::PreVoteResponse { granted } if pre => Some(granted),
            MessageBody::VoteResponse { granted } if !pre => Some(granted),
            _ => None,
        })
        .collect();
    replica.advance(ready);
    granted
}

/// Found by `t10_simulation` (seed 11991, three nodes): a follower received
/// the last chunk of snapshot 22 and, before the shell took the Ready, the
/// first chunk of the leader's newer snapshot 33. The Ready then held both
/// writes and the install of snapshot 22; the shell (node/src/shard.rs
/// `process_ready` does the same) writes the chunks in order, offset 0
/// starting a new file, and installs what it holds: the first bytes of
/// snapshot 33 under the name of snapshot 22. The key-value snapshot's
/// checksum refused it, which stops the shard.
///
/// Fixed in engine/src/raft/snapshot.rs `handle_snapshot_chunk`: while an
/// install waits for the shell, further chunks are ignored (the leader
/// resends them after its stall timeout). Since issue 16's full-disk work
/// the install itself waits one Ready more, until the last chunk's write is
/// done.
#[test]
fn no_snapshot_chunk_follows_a_pending_install_in_one_ready() {
    use engine::{ConfState, SnapshotChunk, SnapshotMeta};
    let mut follower = Raft::new(Config::new(3, vec![1, 2, 3]), Recovered::default()).expect("valid config");
    let meta = |index| SnapshotMeta { index, term: 1, conf: ConfState::new([1, 2, 3], []) };
    let chunk = |index, data: &'static [u8], done| Message {
        from: 1,
        to: 3,
        term: 1,
        body: MessageBody::InstallSnapshot(SnapshotChunk {
            meta: meta(index),
            offset: 0,
            data: Bytes::from_static(data),
            done,
        }),
    };
    let _ = follower.step(chunk(5, b"first snapshot", true));
    let _ = follower.step(chunk(8, b"second", false));
    // The last chunk's write comes first; the install in the Ready after
    // the shell advanced past it (so a shell that could not write it can
    // still drop the snapshot).
    let written = follower.ready();
    let writes = written.snapshot_writes.clone();
    assert!(written.snapshot_install.is_none(), "installed before its last chunk was written");
    follower.advance(written);
    let ready = follower.ready();
    let installed = ready.snapshot_install.clone().expect("the first snapshot is complete");
    // Assemble the file the way a shell does: offset 0 starts a new one.
    let mut file = Vec::new();
    for write in writes.iter().chain(&ready.snapshot_writes) {
        if write.offset == 0 {
            file.clear();
        }
        file.extend_from_slice(&write.data);
    }
    assert_eq!(installed.index, 5);
    assert_eq!(file, b"first snapshot", "the shell would install other bytes than snapshot 5's");
}

/// Found by `t10_simulation` (seed 69 of `three_nodes` with
/// `SIM_OUT_OF_ORDER_TAILS=1`, state machine safety): a follower holding
/// entries 1..7 received a whole snapshot at 5 (its commit index was 3),
/// then, before the Ready that wrote the snapshot's last chunk, an append
/// that committed 7. That Ready handed entries 4..7 to apply, and the
/// engine installed snapshot 5 when the shell advanced past it: the shell
/// restored its state machine to 5 while the engine went on applying from
/// 8, so entries 6 and 7 (a session's clock entry) were lost on that
/// replica only.
///
/// Fixed in engine/src/raft/snapshot.rs `install_received`: a snapshot the
/// log was committed up to meanwhile is acknowledged, not installed.
#[test]
fn received_snapshot_committed_past_before_its_install_is_not_installed() {
    use engine::{ConfState, SnapshotChunk, SnapshotMeta};
    let entries: Vec<Entry> = (1..=7)
        .map(|index| Entry { index, term: 1, kind: EntryKind::Normal, data: Bytes::from_static(b"x") })
        .collect();
    let recovered = Recovered {
        hard_state: HardState { term: 1, vote: 0, commit: 3, ack_term: 1, verified: false },
        entries,
        ..Recovered::default()
    };
    let mut follower = Raft::new(Config::new(3, vec![1, 2, 3]), recovered).expect("valid config");
    let meta = SnapshotMeta { index: 5, term: 1, conf: ConfState::new([1, 2, 3], []) };
    let chunk = SnapshotChunk { meta, offset: 0, data: Bytes::from_static(b"state at 5"), done: true };
    follower.step(Message { from: 1, to: 3, term: 1, body: MessageBody::InstallSnapshot(chunk) }).expect("accepted");
    let heartbeat = AppendRequest { prev_index: 7, prev_term: 1, commit: 7, entries: None };
    follower.step(Message { from: 1, to: 3, term: 1, body: MessageBody::Append(heartbeat) }).expect("accepted");
    let ready = follower.ready();
    assert_eq!(ready.committed_entries.last().map(|entry| entry.index), Some(7));
    assert!(!ready.snapshot_writes.is_empty(), "the last chunk is written");
    follower.advance(ready);
    let next = follower.ready();
    assert!(next.snapshot_install.is_none(), "snapshot 5 would rewind a state machine that applied 7");
    assert_eq!(follower.applied(), 7);
    assert_eq!(follower.last_index(), 7, "the log keeps its entries");
}

/// Protocol-Aware Recovery (FAST'18): a replica whose storage lost entries
/// it acknowledged must not vote, or a candidate lacking a committed entry
/// could win with its vote. Node 1 restarts with commit 5 saved but only
/// entries 1..3 readable; node 2 asks for its vote with a log ending at 3.
#[test]
fn replica_that_lost_acknowledged_entries_grants_no_vote() {
    use engine::VoteRequest;
    let entries = (1..=3)
        .map(|index| Entry { index, term: 1, kind: EntryKind::Normal, data: Bytes::from_static(b"x") })
        .collect();
    let recovered = Recovered {
        hard_state: HardState { term: 1, vote: 1, commit: 5, ack_term: 1, verified: false },
        snapshot: None,
        entries,
        acknowledged: 0,
        ..Recovered::default()
    };
    let mut replica = Raft::new(Config::new(1, vec![1, 2, 3]), recovered).expect("valid config");
    past_the_restart_hold(&mut replica);
    assert_eq!(replica.repair_target(), Some(5));
    assert_eq!(replica.committed(), 0, "a possibly stale prefix is not committed until a leader verifies it");
    let request = VoteRequest { last_log_index: 3, last_log_term: 1, transfer: false, commit: 0 };
    for pre in [true, false] {
        let granted = ask_vote(&mut replica, 2, 2, request, pre);
        assert_eq!(granted, vec![false], "pre-vote {pre}: a replica in repair grants nothing");
    }
    // Ticking never makes it campaign either.
    for _ in 0..100 {
        replica.tick();
    }
    assert_eq!(replica.role(), engine::Role::Follower);
}

/// Issue 16, item 3: a voter whose data directory was wiped comes back under
/// its old id with an empty log (and no vote). Node 3 holds only the first
/// entries; nodes 1 and 2 committed more. Node 2 is wiped and node 1 is
/// down: before the fix node 2 granted node 3 its vote (an empty log is
/// never more up to date than anyone's), and node 3 won with a log lacking
/// committed entries. Now a replica that starts with an empty log votes
/// only for candidates whose log is empty too (a new cluster's first
/// election) and, once it hears a leader, repairs without voting until it
/// holds that leader's log through an entry of its term and its commit.
#[test]
fn wiped_voter_grants_no_vote_until_caught_up() {
    let mut cluster = Cluster::with_voters(3, 11);
    cluster.elect(1);
    cluster.raft(1).propose(Bytes::from_static(b"early")).expect("leader accepts");
    cluster.stabilize();
    cluster.isolate(3);
    cluster.commit_values(1, 5);
    let committed = cluster.node(1).raft.committed();
    assert!(cluster.node(3).raft.last_index() < committed, "node 3 lags");
    // Node 2 loses its whole data directory; node 1 goes down.
    cluster.crash(2);
    cluster.nodes.get_mut(&2).expect("node 2").storage = MemStorage::new();
    cluster.restart(2);
    cluster.crash(1);
    cluster.heal();
    cluster.raft(3).campaign();
    cluster.stabilize();
    assert_ne!(
        cluster.node(3).raft.role(),
        engine::Role::Leader,
        "node 3 won with a log lacking committed entries, with the vote of a wiped node"
    );
    // Node 1 returns: it leads again, node 2 repairs from it and only then
    // votes again.
    cluster.restart(1);
    cluster.elect(1);
    assert_eq!(cluster.node(2).raft.repair_target(), None, "repaired");
    assert_eq!(cluster.node(2).raft.last_index(), cluster.node(1).raft.last_index());
    for index in 1..=committed {
        assert_eq!(cluster.node(2).raft.entry(index), cluster.node(1).raft.entry(index));
    }
}

/// Replica `id` of `voters`, started with an empty log, after a heartbeat
/// from leader `leader` of `term`: in repair to [`engine::REPAIR_UNKNOWN`].
fn empty_replica_that_heard_a_leader(id: u64, voters: Vec<u64>, leader: u64, term: u64) -> Raft {
    let mut replica = Raft::new(Config::new(id, voters), Recovered::default()).expect("valid config");
    let heartbeat = MessageBody::Heartbeat { commit: 0, read_context: 0 };
    replica.step(Message { from: leader, to: id, term, body: heartbeat }).expect("accepted");
    assert_eq!(replica.repair_target(), Some(engine::REPAIR_UNKNOWN));
    let ready = replica.ready();
    replica.advance(ready);
    replica
}

/// A wiped replica that heard a leader is in repair with an unknown target,
/// and a candidate's log does not talk it out of it.
#[test]
fn wiped_voter_in_repair_refuses_votes() {
    use engine::VoteRequest;
    let mut replica = empty_replica_that_heard_a_leader(2, vec![1, 2, 3], 1, 4);
    let request = VoteRequest { last_log_index: 1_000, last_log_term: 4, transfer: true, commit: 1_000 };
    assert_eq!(ask_vote(&mut replica, 3, 5, request, false), vec![false]);
}

/// Found by `t10_simulation` (seed 132274 of five_nodes_with_storage_faults,
/// on 1a44944): witness 5 helped commit entries 1-2 of term 2 with nodes 1
/// and 4, then came back in repair to [`engine::REPAIR_UNKNOWN`] without
/// them. Nodes 2 and 3 had never received an entry. The witness granted
/// node 2 its vote because node 2's log was empty (the rule that lets a new
/// cluster hold its first election), and node 2 led term 3 without the
/// committed entries. (The cause of that seed, a stale unknown target, is
/// `the_end_of_an_unknown_repair_survives_a_crash`; this is the vote.)
///
/// Fixed in engine/src/raft.rs `handle_vote_request`: a replica with an
/// unknown past voted freely for an empty log only while no voter reported
/// a log that is not empty. Since 2026-12-06 one that heard a history (or
/// whose hard state was damaged) votes for no one in a group of more than
/// two until a leader has caught it up: no report can vouch for its vote
/// (`engine/tests/t81_stale_report.rs`).
#[test]
fn replica_with_an_unknown_past_refuses_an_empty_log_once_a_history_was_reported() {
    use engine::VoteRequest;
    let empty = VoteRequest { last_log_index: 0, last_log_term: 0, transfer: false, commit: 0 };
    let history = VoteRequest { last_log_index: 21, last_log_term: 2, transfer: false, commit: 2 };
    // It heard a leader after starting empty.
    let heard = || {
        let mut replica = empty_replica_that_heard_a_leader(5, vec![1, 2, 3, 4, 5], 4, 2);
        // Node 4 is gone: its lease runs out (a replica in repair starts
        // no election meanwhile).
        for _ in 0..100 {
            replica.tick();
        }
        replica
    };
    // Its storage found its hard state damaged (the write-ahead log reports
    // that as an unknown acknowledgement).
    let damaged = || {
        let recovered = Recovered {
            hard_state: HardState { term: 2, vote: 4, commit: 0, ack_term: 2, verified: false },
            acknowledged: engine::REPAIR_UNKNOWN,
            ..Recovered::default()
        };
        let mut replica = Raft::new(Config::new(5, vec![1, 2, 3, 4, 5]), recovered).expect("valid config");
        past_the_restart_hold(&mut replica);
        assert_eq!(replica.repair_target(), Some(engine::REPAIR_UNKNOWN));
        replica
    };
    for (name, make) in [("heard a leader", &heard as &dyn Fn() -> Raft), ("damaged hard state", &damaged)] {
        // It heard a history (a leader, or its damaged hard state says it
        // may have): not even an empty log gets its vote.
        let mut replica = make();
        assert_eq!(ask_vote(&mut replica, 2, 3, empty, true), vec![false], "{name}: nothing reported");
        let mut replica = make();
        assert_eq!(ask_vote(&mut replica, 1, 3, history, true), vec![false], "{name}: a history");
        assert_eq!(ask_vote(&mut replica, 2, 3, empty, true), vec![false], "{name}: pre-vote for an empty log");
        assert_eq!(ask_vote(&mut replica, 2, 3, empty, false), vec![false], "{name}: vote for an empty log");
        // Nor a log at least as up to date as every other voter's.
        let mut replica = make();
        for from in [1, 2, 3] {
            assert_eq!(ask_vote(&mut replica, from, 3, history, from == 3), vec![false], "{name}: node {from}");
        }
    }
}

/// A wiped replica (empty log, no vote remembered) voted, until
/// 2026-12-06, once it heard vote requests from enough other voters (2 of
/// 3) that one of them held every committed entry, for the most up-to-date
/// of them. A report may predate its sender's acknowledgement of an entry
/// that was then committed (`engine/tests/t81_stale_report.rs`), so it now
/// votes for no one in a group of three, whatever the reports, and in a
/// group of two for the other voter only.
#[test]
fn wiped_voter_votes_on_no_quorum_of_reports() {
    use engine::VoteRequest;
    let mut replica = Raft::new(Config::new(2, vec![1, 2, 3]), Recovered::default()).expect("valid config");
    let ask = |replica: &mut Raft, from, term, last_log_index, pre| {
        let request = VoteRequest { last_log_index, last_log_term: 2, transfer: false, commit: 0 };
        ask_vote(replica, from, term, request, pre) == vec![true]
    };
    assert!(!ask(&mut replica, 3, 3, 5, true), "one report of two");
    assert!(!ask(&mut replica, 1, 3, 7, true), "two reports of two");
    assert!(!ask(&mut replica, 1, 3, 7, false));
    assert!(replica.past_unknown());
    let mut pair = Raft::new(Config::new(2, vec![1, 2]), Recovered::default()).expect("valid config");
    assert!(ask(&mut pair, 1, 3, 7, false), "in a group of two, the other voter's own request vouches");
}

/// Found by `t10_simulation` (seed 101000, three nodes with storage faults):
/// a replica came back short of entries it had acknowledged (repair target
/// 27) while the new leader, of a later term, held only 24 entries: what the
/// replica acknowledged past 24 was never committed, and with no new writes
/// the target never came. The replica stayed in repair (no votes) forever.
///
/// Fixed in engine/src/raft.rs `handle_append`: a replica in repair is whole
/// once it holds the log of a leader of a term later than any in which it
/// acknowledged anything, through an entry of that term. A leader of the
/// same term does not end it that way: it may have counted the lost
/// acknowledgements.
#[test]
fn repair_ends_on_a_later_leaders_log_short_of_the_target() {
    let entry = |index, term| Entry { index, term, kind: EntryKind::Normal, data: Bytes::from_static(b"x") };
    let repairing = || {
        let recovered = Recovered {
            hard_state: HardState { term: 2, vote: 2, commit: 0, ack_term: 2, verified: false },
            snapshot: None,
            entries: (1..=3).map(|index| entry(index, 1)).collect(),
            acknowledged: 5,
            ..Recovered::default()
        };
        let replica = Raft::new(Config::new(1, vec![1, 2, 3]), recovered).expect("valid config");
        assert_eq!(replica.repair_target(), Some(5), "it lost acknowledged entries 4 and 5");
        replica
    };
    let append = |term| AppendRequest {
        prev_index: 3,
        prev_term: 1,
        commit: 3,
        entries: Some(EntryBatch::encode(&[entry(4, term)])),
    };
    // The leader of term 2 (in which the replica acknowledged 4 and 5) may
    // still count them: the repair goes on.
    let mut replica = repairing();
    replica.step(Message { from: 2, to: 1, term: 2, body: MessageBody::Append(append(2)) }).expect("accepted");
    assert_eq!(replica.repair_target(), Some(5), "a leader of the same term does not end the repair short of it");
    // A leader of term 3 whose log ends at its first entry, 4: whatever was
    // committed is at or before it.
    let mut replica = repairing();
    replica.step(Message { from: 2, to: 1, term: 3, body: MessageBody::Append(append(3)) }).expect("accepted");
    assert_eq!(replica.repair_target(), None, "it holds the later leader's log through an entry of its term");
}

/// The same seed, when the leader is of the term in which the replica
/// acknowledged what it lost: a replica whose repair target lies past the
/// leader's log (what it acknowledged there was never committed) asks, on
/// every heartbeat, for the entry after its last. Before the fix nothing
/// came while clients wrote nothing, and it stayed in repair; now the leader
/// answers a request past its log with one empty entry at a time until the
/// replica reaches its target.
#[test]
fn leader_grows_its_log_for_a_replica_repairing_past_it() {
    let mut cluster = Cluster::with_voters(3, 5);
    cluster.elect(1);
    cluster.commit_values(1, 3);
    let last = cluster.node(1).raft.last_index();
    cluster.crash(3);
    cluster.restart(3);
    // Its storage says it acknowledged three entries the cluster never
    // committed (an older leader's tail, say).
    let node = cluster.nodes.get_mut(&3).expect("node 3");
    let recovered = Recovered { acknowledged: last + 3, ..node.storage.recovered() };
    node.raft = Raft::new(node.config.clone(), recovered).expect("valid config");
    assert_eq!(cluster.node(3).raft.repair_target(), Some(last + 3));
    for _ in 0..30 {
        cluster.tick_all();
        run_rounds(&mut cluster, 10);
    }
    assert_eq!(cluster.node(3).raft.repair_target(), None, "still in repair with an idle leader");
    assert!(cluster.node(1).raft.last_index() >= last + 3);
    assert_eq!(cluster.node(3).raft.last_index(), cluster.node(1).raft.last_index());
}

/// Found by `t10_simulation` (seed 50151, three nodes): a replica came back
/// short of what it had acknowledged (target 2) after many elections that no
/// one won, so its term (131) was far above the term of every log. A
/// replica in repair voted only for a candidate whose last entry's term was
/// at least its own current term: no one's was, no leader could be elected,
/// and a third replica that started empty could not vote either.
///
/// Fixed: the hard state records the last term in which the replica
/// acknowledged anything (`HardState::ack_term`, synced before the first
/// acknowledgement of a term leaves), and the repair's vote rule compares
/// with that term instead.
#[test]
fn replica_in_repair_after_failed_elections_votes_for_a_complete_log() {
    use engine::VoteRequest;
    let entries = vec![Entry { index: 1, term: 3, kind: EntryKind::Normal, data: Bytes::from_static(b"x") }];
    let recovered = Recovered {
        hard_state: HardState { term: 40, vote: 0, commit: 0, ack_term: 3, verified: false },
        snapshot: None,
        entries,
        acknowledged: 2,
        ..Recovered::default()
    };
    let mut replica = Raft::new(Config::new(1, vec![1, 2, 3]), recovered).expect("valid config");
    past_the_restart_hold(&mut replica);
    assert_eq!(replica.repair_target(), Some(2));
    let vote = |replica: &mut Raft, term, last_log_index, last_log_term| {
        let request = VoteRequest { last_log_index, last_log_term, transfer: false, commit: 0 };
        ask_vote(replica, 2, term, request, false) == vec![true]
    };
    assert!(!vote(&mut replica, 41, 1, 3), "a log short of what it acknowledged");
    assert!(vote(&mut replica, 42, 6, 3), "a log through the target, of the term it acknowledged in");
}

/// Found by `t10_simulation` (seed 6339, three nodes with storage faults):
/// a replica won term 8 with a log through 72 (term 6) and crashed before
/// its first entry of term 8 reached its disk, which then lost 70..=72. It
/// came back in repair (target 72) with `ack_term` 8, the term it led (a
/// leader counts its own log from its election on), so it voted only for a
/// log ending in an entry of term 8 or later: none survived anywhere that
/// a voter could campaign with, both healthy replicas were refused, and the
/// group stayed leaderless for good although both held every committed
/// entry.
///
/// Fixed in engine/src/raft.rs `repair_vote_allowed`: vote requests carry
/// the candidate's commit index, and a replica in repair also votes for a
/// candidate whose commit index reaches its target (it holds the committed
/// entry at every index the replica may have acknowledged).
#[test]
fn replica_in_repair_votes_for_a_candidate_that_committed_its_target() {
    use engine::VoteRequest;
    let entries = (70..=71)
        .map(|index| Entry { index, term: 6, kind: EntryKind::Normal, data: Bytes::from_static(b"x") })
        .collect();
    let snapshot = engine::SnapshotMeta { index: 69, term: 6, conf: engine::ConfState::new(vec![1, 2, 3], vec![]) };
    let recovered = Recovered {
        hard_state: HardState { term: 8, vote: 2, commit: 72, ack_term: 8, verified: false },
        snapshot: Some(snapshot),
        entries,
        acknowledged: 72,
        ..Recovered::default()
    };
    let mut replica = Raft::new(Config::new(2, vec![1, 2, 3]), recovered).expect("valid config");
    past_the_restart_hold(&mut replica);
    assert_eq!(replica.repair_target(), Some(72));
    let request = |last_log_index, commit| VoteRequest { last_log_index, last_log_term: 6, transfer: false, commit };
    for pre in [true, false] {
        let term = if pre { 9 } else { 10 };
        assert_eq!(
            ask_vote(&mut replica, 3, term, request(76, 71), pre),
            vec![false],
            "pre-vote {pre}: a candidate that knows only 71 committed may lack what it acknowledged at 72"
        );
        assert_eq!(
            ask_vote(&mut replica, 1, term, request(72, 72), pre),
            vec![true],
            "pre-vote {pre}: a candidate that committed 72 holds whatever of it was committed"
        );
    }
}

/// Found by `t10_simulation` (seed 132285 of three_nodes_with_storage_faults):
/// node 2 restarted empty, heard leader 1 and repaired to
/// [`engine::REPAIR_UNKNOWN`]; the commit index reached it while it still
/// repaired, so the last hard-state save recorded that unknown target as
/// acknowledged. Its repair then ended with no later save (the commit index
/// stayed put), so after a crash it came back in repair with every entry it
/// had, unable to campaign. Leader 1 had lost its unsynced entries 8-9 in
/// the same crash and could not win the witness's vote: no leader, forever.
///
/// Fixed in node/src/shard/ready.rs `save_unknown_repair_end`: the end of
/// an unknown repair whose start was saved is saved too, once the log that
/// ended it is durable.
#[test]
fn the_end_of_an_unknown_repair_survives_a_crash() {
    // Crashed with everything durable: whole.
    let mut node = repaired_from_an_unknown_past();
    settle(&mut node);
    crash_and_restart(&mut node);
    assert_eq!(node.raft(0).last_index(), 3);
    assert_eq!(
        node.raft(0).repair_target(),
        None,
        "a replica that finished its repair and crashed with everything durable is in repair again"
    );
    // Crashed before the entry that ended the repair was durable: in repair
    // to the unknown target again, not to an index that may exist nowhere.
    let mut node = repaired_from_an_unknown_past();
    crash_and_restart(&mut node);
    assert_eq!(node.raft(0).last_index(), 2);
    assert_eq!(node.raft(0).repair_target(), Some(engine::REPAIR_UNKNOWN));
}

/// Found by `t10_simulation` (seed 133695 of three_nodes): a replica whose
/// repair to the unknown target started and ended in one Ready (its first
/// append from a leader, in a new term) had the log's end recorded as
/// acknowledged by that Ready's hard-state save, before the entry was
/// durable. The crash lost the entry, which no one else had either, and the
/// replica stayed in repair for it: with a witness, no one could be elected.
///
/// Fixed in node/src/shard/ready.rs `repair_changed`: such a repair records
/// nothing, so a crash brings the replica back as it started: with an empty
/// log and no repair target (unverified, which a leader's log of any length
/// ends).
#[test]
fn a_repair_started_and_ended_at_once_waits_for_no_lost_entry() {
    let mut node = sim_node();
    node.step(0, from_leader_1(1, append(0, 0, 0, &[entry(1, 1)])));
    node.process();
    assert_eq!(node.raft(0).repair_target(), None, "started and ended within one Ready");
    crash_and_restart(&mut node);
    assert_eq!(node.raft(0).last_index(), 0, "the entry was never durable");
    assert_eq!(node.raft(0).repair_target(), None, "in repair for an entry that may exist nowhere");
    assert!(node.raft(0).past_unknown(), "it starts again as an empty replica does");
    // Once durable, it stays.
    let mut node = sim_node();
    node.step(0, from_leader_1(1, append(0, 0, 0, &[entry(1, 1)])));
    settle(&mut node);
    crash_and_restart(&mut node);
    assert_eq!((node.raft(0).last_index(), node.raft(0).repair_target()), (1, None));
}

/// Found by `t10_simulation` (seed 161021 of three_nodes, two shards):
/// leader 3 of term 2 lost its unsynced entries in a crash, and nodes 1 and
/// 2, both of which had started empty, heard it and took those entries,
/// crashed before the ends of their repairs were saved: both came back in
/// repair to the unknown target, holding the only copies of entries that may
/// be committed. A replica in such a repair with a log did not campaign,
/// and voted only after hearing vote requests from both other voters; node
/// 3 alone campaigned, so no one was ever elected. (On the build before the
/// end of an unknown repair was saved late, node 1 came back in repair to a
/// known index instead, with the same outcome.)
///
/// Fixed in engine/src/raft.rs: a replica in repair to the unknown target
/// campaigned, counting its own vote only as it would vote for another
/// candidate with its log, and a voter in repair to a known target reported
/// its log as a witness does (`report_log`), so the other could count its
/// own vote. Since 2026-12-06 a replica that cannot know its past casts no
/// vote in a group of three, its own included (no report can vouch for it:
/// `engine/tests/t81_stale_report.rs`): two such replicas of three are a
/// majority that cannot vote safely, and the group waits, as the simulator
/// allows (`stalled_unsure`). A new cluster no longer makes this state: a
/// leader is elected only with the vote of a replica that heard every
/// other voter ask with an empty log, which then never repairs to the
/// unknown target.
#[test]
fn two_replicas_of_three_in_repair_elect_no_one() {
    let log = |last: u64| {
        let mut storage = MemStorage::new();
        storage.append(&engine::testing::batch_of_terms(1, &vec![2; last as usize])).expect("appends");
        storage.set_hard_state(HardState { term: 2, vote: 3, commit: 2.min(last), ack_term: 2, verified: false });
        storage
    };
    // Node 2 in repair to the unknown target, or to entry 6 (which it
    // acknowledged and lost; no one else has it, so it is not committed).
    for node_2_target in [engine::REPAIR_UNKNOWN, 6] {
        let mut cluster = Cluster::with_voters(3, 161_021);
        for (id, last) in [(1, 5), (2, 4), (3, 2)] {
            cluster.nodes.get_mut(&id).expect("node").storage = log(last);
            cluster.crash(id);
            cluster.restart(id);
        }
        for (id, target) in [(1, engine::REPAIR_UNKNOWN), (2, node_2_target)] {
            let node = cluster.nodes.get_mut(&id).expect("node");
            let recovered = Recovered { acknowledged: target, ..node.storage.recovered() };
            node.raft = Raft::new(node.config.clone(), recovered).expect("valid config");
            assert_eq!(node.raft.repair_target(), Some(target));
        }
        for _ in 0..2_000 {
            cluster.tick_all();
            cluster.stabilize();
            assert_eq!(cluster.leader(), None, "target {node_2_target}: a leader without a safe majority");
        }
        assert!(cluster.node(1).raft.past_unknown());
        assert_eq!(cluster.node(2).raft.repair_target(), Some(node_2_target));
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, kind: EntryKind::Normal, data: Bytes::new() }
}

fn append(prev_index: u64, prev_term: u64, commit: u64, entries: &[Entry]) -> MessageBody {
    MessageBody::Append(AppendRequest { prev_index, prev_term, commit, entries: Some(EntryBatch::encode(entries)) })
}

/// A message from node 1 to node 2 in `term`.
fn from_leader_1(term: u64, body: MessageBody) -> Message {
    Message { from: 1, to: 2, term, body }
}

/// Node 2 of three, a simulated node over a simulated disk.
fn sim_node() -> tests::sim::node::SimNode {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    let effects = Rc::new(RefCell::new(tests::sim::effects::WriteEffects::default()));
    let clock = Rc::new(Cell::new(0));
    tests::sim::node::SimNode::new(Config::new(2, vec![1, 2, 3]), 1, clock, std::time::Instant::now(), false, effects)
}

/// Every queued write lands, and the driver hears of it.
fn settle(node: &mut tests::sim::node::SimNode) {
    for _ in 0..4 {
        node.process();
        node.disk_progress(0, usize::MAX, true, false);
    }
}

/// A crash that lands none of the queued writes, and a restart.
fn crash_and_restart(node: &mut tests::sim::node::SimNode) {
    // Seed 7's first draws (see `SimDisk::lose_unsynced`) land nothing.
    node.crash(&mut engine::config::Rng::new(7));
    node.restart();
}

/// Node 2 started empty, heard leader 1 (its past unknown, saved), took
/// entries 1-2 of term 1 with commit index 2 from the leader of term 2 (the
/// repair goes on: no entry of the leader's term yet; the commit index is
/// saved with the unknown target), then entry 3 of term 2 with the same
/// commit index, which ends the repair; that last entry is not durable yet.
fn repaired_from_an_unknown_past() -> tests::sim::node::SimNode {
    let mut node = sim_node();
    node.step(0, from_leader_1(1, MessageBody::Heartbeat { commit: 0, read_context: 0 }));
    settle(&mut node);
    assert_eq!(node.raft(0).repair_target(), Some(engine::REPAIR_UNKNOWN));
    node.step(0, from_leader_1(2, append(0, 0, 2, &[entry(1, 1), entry(2, 1)])));
    settle(&mut node);
    assert_eq!(node.raft(0).committed(), 2);
    assert_eq!(node.raft(0).repair_target(), Some(engine::REPAIR_UNKNOWN));
    node.step(0, from_leader_1(2, append(2, 1, 2, &[entry(3, 2)])));
    node.process();
    assert_eq!(node.raft(0).repair_target(), None, "repaired");
    node
}

/// Found by `node/tests/t23_witness.rs` (one failure in a loaded run): an
/// operator's `admin remove` reached a node that had just become the leader
/// (the old leader, asked to remove itself, had handed leadership over and
/// the client retried) before it had applied what was committed, so the
/// engine refused the change as one "in progress". The shard answered that
/// as a bad request, which the client reports and does not retry, although
/// the change would go through a moment later: the operator's command
/// failed. The same happens to two changes sent at once by two operators.
///
/// Fixed in node/src/shard/requests.rs `refusal`: a change refused because
/// another is in progress is answered `Busy`, which clients retry until
/// their deadline, as they do for a leader transfer in progress.
#[test]
fn a_membership_change_behind_another_is_answered_busy_and_goes_through_after_it() {
    use net::{AdminRequest, ClientRequest, RequestBody, ResponseStatus};
    use tests::sim::node::{Request, Waiter};
    let mut node = single_voter_leader();
    let admin = |operation, admin| Request {
        waiter: Waiter { client: 0, operation, attempt: 0 },
        shard: 0,
        request: ClientRequest::plain(0, RequestBody::Admin(admin)),
    };
    // The first change is proposed and not yet applied when the second
    // arrives.
    node.request(admin(1, AdminRequest::AddLearner { id: 3, addr: "127.0.0.1:10003".into() }));
    node.request(admin(2, AdminRequest::AddLearner { id: 4, addr: "127.0.0.1:10004".into() }));
    let mut answers = node.process().responses;
    for _ in 0..4 {
        node.disk_progress(0, usize::MAX, true, false);
        answers.extend(node.process().responses);
    }
    let answer = |answers: &[tests::sim::node::Response], operation| {
        answers.iter().find(|answer| answer.waiter.operation == operation).map(|answer| answer.status.clone())
    };
    assert!(matches!(answer(&answers, 1), Some(ResponseStatus::Ok(_))), "{:?}", answer(&answers, 1));
    assert!(
        matches!(answer(&answers, 2), Some(ResponseStatus::Busy)),
        "a change behind another is refused for good: {:?}",
        answer(&answers, 2)
    );
    // The client's retry, once the first is applied, goes through.
    node.request(admin(3, AdminRequest::AddLearner { id: 4, addr: "127.0.0.1:10004".into() }));
    let mut answers = node.process().responses;
    for _ in 0..4 {
        node.disk_progress(0, usize::MAX, true, false);
        answers.extend(node.process().responses);
    }
    assert!(matches!(answer(&answers, 3), Some(ResponseStatus::Ok(_))), "{:?}", answer(&answers, 3));
    assert_eq!(node.raft(0).conf().learners, [3, 4]);
}

/// A one-node cluster (node 2) once it leads, over the simulator's disk.
fn single_voter_leader() -> tests::sim::node::SimNode {
    single_voter_leader_with(Config::new(2, vec![2]))
}

/// Node 2 leading a group of itself alone, with this engine configuration.
fn single_voter_leader_with(config: Config) -> tests::sim::node::SimNode {
    let mut node = {
        use std::cell::{Cell, RefCell};
        use std::rc::Rc;
        let effects = Rc::new(RefCell::new(tests::sim::effects::WriteEffects::default()));
        let clock = Rc::new(Cell::new(0));
        tests::sim::node::SimNode::new(config, 1, clock, std::time::Instant::now(), false, effects)
    };
    for _ in 0..100 {
        if node.is_leader(0) {
            break;
        }
        node.tick();
        settle(&mut node);
    }
    assert!(node.is_leader(0), "a single voter elects itself");
    settle(&mut node);
    node
}

/// Sessions were not bound to the user that opened them (README "Limits"
/// until this fix): a session's id is the index of its opening entry, easy
/// to guess, and any client with the write role could write in another
/// user's session (its writes then answered from that session's cache, or
/// refused as stale, in the owner's name) or close it.
///
/// Fixed in node/src/shard/requests.rs `refuse_session_caller`: the node a
/// write or close arrives at checks the caller against the session's owner,
/// which the opening entry records on every replica. (The simulator's
/// clients are users `client-N`; the node announces that it reads owners
/// at its first tick as leader, which `single_voter_leader` includes.)
#[test]
fn a_write_in_another_users_session_is_refused_where_it_arrives() {
    use net::session::OpenedSession;
    use net::{ClientRequest, RequestBody, ResponseStatus};
    use tests::sim::node::{Request, Waiter};
    let mut node = single_voter_leader();
    node.tick();
    settle(&mut node);
    let mut ask = |client: usize, operation: u64, client_id: u64, sequence: u64, body: RequestBody| {
        let ack = sequence.min(1);
        let request = ClientRequest { request_id: operation, client_id, sequence, ack, body };
        node.request(Request { waiter: Waiter { client, operation, attempt: 0 }, shard: 0, request });
        let mut answers = node.process().responses;
        for _ in 0..4 {
            node.disk_progress(0, usize::MAX, true, false);
            answers.extend(node.process().responses);
        }
        let answer = answers.into_iter().find(|answer| answer.waiter.operation == operation);
        answer.expect("an answer").status
    };
    let opened = match ask(0, 1, 0, 0, RequestBody::OpenSession) {
        ResponseStatus::Ok(bytes) => OpenedSession::decode(&bytes).expect("an opened session"),
        other => panic!("opening: {other:?}"),
    };
    let id = opened.client_id;
    let put = |value: &'static str| RequestBody::Write {
        command: node::kv::KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(value.as_bytes()) }
            .encode(),
    };
    let status = ask(1, 2, id, 1, put("thief"));
    assert!(matches!(status, ResponseStatus::Forbidden(_)), "another user wrote in the session: {status:?}");
    assert!(matches!(ask(0, 3, id, 1, put("owner")), ResponseStatus::Ok(_)), "the owner's write");
    let status = ask(1, 4, id, 1, put("thief"));
    assert!(matches!(status, ResponseStatus::Forbidden(_)), "another user got the owner's answer: {status:?}");
    let status = ask(1, 5, id, 0, RequestBody::CloseSession);
    assert!(matches!(status, ResponseStatus::Forbidden(_)), "another user closed the session: {status:?}");
    assert!(matches!(ask(0, 6, id, 0, RequestBody::CloseSession), ResponseStatus::Ok(_)), "the owner's close");
}

/// A backup (`node admin backup`, issue of no number: disaster recovery)
/// must hold every write the cluster acknowledged before it started, on
/// whichever node it is asked of. A follower's applied index may lag the
/// leader's commit: a snapshot of what the follower applied would miss
/// writes already acknowledged. So a backup begins with a linearizable
/// barrier (node/src/shard/backup.rs): the follower asks the leader for
/// the commit index, waits to apply it, and only then names the point a
/// snapshot must reach.
#[test]
fn a_backup_asked_of_a_follower_behind_the_commit_waits_for_it() {
    use net::{AdminRequest, ClientRequest, RequestBody, ResponseStatus};
    use tests::sim::node::{Request, Waiter};
    let mut node = sim_node();
    let entries: Vec<Entry> = (1..=4).map(|index| entry(index, 1)).collect();
    node.step(0, from_leader_1(1, append(0, 0, 2, &entries)));
    settle(&mut node);
    assert_eq!(node.raft(0).applied(), 2, "the follower applied what it knows committed");
    let begin = |operation, at_least| Request {
        waiter: Waiter { client: 0, operation, attempt: 0 },
        shard: 0,
        request: ClientRequest::plain(operation, RequestBody::Admin(AdminRequest::BackupBegin { at_least })),
    };
    node.request(begin(1, 0));
    let out = node.process();
    assert!(out.responses.is_empty(), "answered before the barrier: {:?}", out.responses);
    let context = out
        .messages
        .iter()
        .find_map(|(_, message)| match message.body {
            MessageBody::ReadIndex { context } => Some(context),
            _ => None,
        })
        .expect("the follower asks the leader for the commit index");
    // The leader committed everything: reads (and backups) wait for 4.
    node.step(0, from_leader_1(1, MessageBody::ReadIndexResponse { context, index: 4 }));
    let early = node.process().responses;
    assert!(early.is_empty(), "answered before applying the commit index: {early:?}");
    node.step(0, from_leader_1(1, MessageBody::Heartbeat { commit: 4, read_context: 0 }));
    let mut answers = node.process().responses;
    for _ in 0..4 {
        node.disk_progress(0, usize::MAX, true, false);
        answers.extend(node.process().responses);
    }
    let point = |answers: &[tests::sim::node::Response], operation| -> serde_json::Value {
        match answers.iter().find(|answer| answer.waiter.operation == operation).map(|answer| &answer.status) {
            Some(ResponseStatus::Ok(bytes)) => serde_json::from_slice(bytes).expect("JSON"),
            other => panic!("backup begin {operation}: {other:?}"),
        }
    };
    assert_eq!(point(&answers, 1)["pending"], 4, "the bar is the commit index the leader confirmed");
    // Asked again with the bar, it names a stored snapshot at or past it.
    for operation in 2..20 {
        node.request(begin(operation, 4));
        let mut answers = node.process().responses;
        for _ in 0..4 {
            node.disk_progress(0, usize::MAX, true, false);
            answers.extend(node.process().responses);
        }
        let answer = point(&answers, operation);
        if let Some(index) = answer["index"].as_u64() {
            assert!(index >= 4, "a backup point below the acknowledged writes: {answer}");
            return backup_chunks_until_replaced(&mut node, index, answer["size"].as_u64().expect("a size"));
        }
        assert_eq!(answer["pending"], 4, "{answer}");
    }
    panic!("no snapshot at or past the bar was stored");
}

/// The stored snapshot at `index` (`size` bytes) is served in chunks; once
/// a newer snapshot replaced it, a chunk of it is answered "replaced".
fn backup_chunks_until_replaced(node: &mut tests::sim::node::SimNode, index: u64, size: u64) {
    use net::{AdminRequest, ClientRequest, RequestBody, ResponseStatus};
    use tests::sim::node::{Request, Waiter};
    let ask = |node: &mut tests::sim::node::SimNode, operation, admin| {
        let waiter = Waiter { client: 0, operation, attempt: 0 };
        let request = ClientRequest::plain(operation, RequestBody::Admin(admin));
        node.request(Request { waiter, shard: 0, request });
        let mut answers = node.process().responses;
        for _ in 0..4 {
            node.disk_progress(0, usize::MAX, true, false);
            answers.extend(node.process().responses);
        }
        answers.into_iter().find(|answer| answer.waiter.operation == operation).expect("an answer").status
    };
    let chunk = |offset, len| AdminRequest::BackupChunk { index, offset, len };
    let whole = ask(node, 30, chunk(0, 1 << 20));
    let tail = ask(node, 31, chunk(size - 3, 1 << 20));
    match (whole, tail) {
        (ResponseStatus::Ok(whole), ResponseStatus::Ok(tail)) => {
            let head = node::shard::BACKUP_CHUNK_HEAD;
            assert_eq!((whole[0], &whole[1..head]), (node::shard::BACKUP_CHUNK_DATA, &2u64.to_le_bytes()[..]));
            assert_eq!(whole.len() - head, size as usize);
            assert_eq!(&tail[..], &[&whole[..head], &whole[whole.len() - 3..]].concat()[..]);
        }
        other => panic!("chunks: {other:?}"),
    }
    let entries: Vec<Entry> = (5..=8).map(|index| entry(index, 1)).collect();
    node.step(0, from_leader_1(1, append(4, 1, 8, &entries)));
    settle(node);
    assert!(matches!(ask(node, 32, AdminRequest::TakeSnapshot), ResponseStatus::Ok(_)));
    settle(node);
    match ask(node, 33, chunk(0, 1 << 20)) {
        ResponseStatus::Ok(bytes) => assert_eq!(&bytes[..], [node::shard::BACKUP_CHUNK_REPLACED]),
        other => panic!("a chunk of a replaced snapshot: {other:?}"),
    }
}

/// Found reading the snapshot path while bounding the in-memory log
/// (2026-12-05): when the shell did not take a snapshot the engine asked
/// for (storing it failed, on a full disk say, or another was being stored
/// or restored), nothing told the engine, which still counted the snapshot
/// as asked for and asked again only after `snapshot_entries` more applied
/// entries (100,000 groups of writes in the node). Until then the log was
/// never compacted however many bytes it grew by, and a follower that
/// needed a fresh snapshot waited as long.
///
/// Fixed in engine/src/raft/snapshot.rs `Raft::snapshot_not_taken`, which
/// the shard calls for a skipped or failed snapshot (node/src/shard/ready.rs,
/// node/src/shard/snapshots.rs): the engine asks again after a pause that
/// doubles with each miss in a row.
#[test]
fn a_snapshot_that_failed_to_store_is_taken_again() {
    use net::{ClientRequest, RequestBody};
    use tests::sim::node::{Request, Waiter};
    let mut config = Config::new(2, vec![2]);
    // A snapshot once 4 KiB of entries were applied; the count rule far off.
    config.snapshot_log_bytes = 4096;
    config.snapshot_log_factor = 0;
    config.snapshot_entries = 1_000_000;
    let mut node = single_voter_leader_with(config);
    let write = |node: &mut tests::sim::node::SimNode, operation: u64| {
        let command =
            node::kv::KvOp::Put { key: Bytes::from(format!("k{operation}")), value: Bytes::from(vec![7; 5000]) };
        let request = ClientRequest::plain(operation, RequestBody::Write { command: command.encode() });
        node.request(Request { waiter: Waiter { client: 0, operation, attempt: 0 }, shard: 0, request });
        node.process();
        node.disk_progress(0, usize::MAX, true, false);
    };
    // The write is durable; applying it asks for a snapshot, whose store
    // meets a full disk and is given up.
    write(&mut node, 1);
    node.set_disk_full(true);
    for _ in 0..3 {
        node.process();
        node.disk_progress(0, usize::MAX, true, false);
    }
    assert_eq!(node.snapshots_taken(), 0, "the snapshot met a full disk");
    node.set_disk_full(false);
    // Room again: after a pause, with nothing more written, it is asked for
    // and taken again.
    for _ in 0..engine::SNAPSHOT_RETRY_TICKS_MIN * 2 {
        node.tick();
        settle(&mut node);
    }
    assert_eq!(node.snapshots_taken(), 1, "the snapshot was not taken again once the disk had room");
    assert_eq!(node.raft(0).snapshot().index, node.raft(0).applied());
    // And the byte rule goes on as before.
    for operation in 2..5 {
        write(&mut node, operation);
        settle(&mut node);
    }
    assert!(node.snapshots_taken() >= 2, "no snapshot after the next 4 KiB");
}
