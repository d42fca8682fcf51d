//! Randomized in-memory clusters (3 and 5 nodes, and the same sizes with
//! witnesses: 2 full + 1 witness, 3 full + 2 witnesses) under message loss,
//! duplication, reordering, partitions that heal, delayed disk writes and
//! crashes that lose them. After every step the four safety properties of
//! Raft paper Figure 3 are checked, and that no witness leads or holds a
//! payload; every read answered (ReadIndex, and lease reads where the ticks
//! keep pace) must be at or past every index seen committed before it was
//! asked; in the seeds whose ticks keep pace, a leader whose lease holds
//! must hold every committed entry. After the faults heal, liveness.
//! With the engine of b001437 (before this file's lease checks), the lease
//! check fails `three_nodes` seeds 1855 (an aborted transfer) and 2019 (a
//! leader leaving the configuration) and `five_nodes` seed 2206 (a
//! transfer); the read check alone fails `three_nodes` seed 12097, a lease
//! read answered below an index committed before it was asked.
//!
//! `ENGINE_SEEDS=N` runs N seeds per cluster size (default 2000; a quarter
//! of that for the witness variants, to keep CI time bounded);
//! `ENGINE_SEED=S` replays one seed. A failure prints the command that
//! replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use engine::config::Rng;
use engine::testing::{check_log_matching, Cluster, CommittedLog};
use engine::{ConfChange, ConfChangeOp, Config, EntryKind, Index, NodeId, ReadMode, Role, Term};

/// What the whole cluster has observed, for the cross-node properties.
#[derive(Default)]
struct Observed {
    /// Election safety: the leader seen in each term.
    leaders: BTreeMap<Term, NodeId>,
    /// The terms whose leader was a learner of its configuration (a
    /// learner's last resort, `engine/src/raft/learner.rs`): counted, so a
    /// run shows that the path is exercised.
    learner_terms: BTreeSet<Term>,
    /// Every index any node has seen committed, and in which lowest term.
    committed: CommittedLog,
    /// Every index any node has applied, with its term and payload.
    applied: BTreeMap<Index, (Term, Bytes)>,
    /// Per node, how many of its applied entries were checked (reset on
    /// restart and when a snapshot replaced its state).
    applied_checked: BTreeMap<NodeId, (u64, usize)>,
    /// Whether every node's ticks keep pace in this run (the lease's clock
    /// assumption), so that lease safety is checked too.
    lockstep: bool,
    /// Reads asked and not yet answered, by context: the highest index any
    /// node had seen committed when each was asked, which its answer must
    /// reach (a read sees every write committed before it began).
    reads: BTreeMap<u64, Index>,
}

/// Read safety: every read answered since the last step (a `ReadState`)
/// is at or past the highest index seen committed when it was asked.
fn check_reads(cluster: &mut Cluster, observed: &mut Observed, step: usize) {
    for (&id, node) in cluster.nodes.iter_mut() {
        for read in node.read_states.drain(..) {
            let Some(required) = observed.reads.remove(&read.context) else { continue };
            assert!(
                read.index >= required,
                "step {step}: node {id} answered read {} at index {}, below {required}, committed before it was asked",
                read.context,
                read.index
            );
        }
    }
}

fn check_safety(cluster: &Cluster, observed: &mut Observed, step: usize) {
    let at = format!("step {step}");
    for (&id, node) in &cluster.nodes {
        let raft = &node.raft;
        raft.check_invariants();
        if cluster.down.contains(&id) {
            continue;
        }
        // Election safety: at most one leader per term, counted once its
        // term is durable. Before that a crash takes the term back, and
        // nothing of it has left the leader (the harness checks that no
        // leader's message leaves ahead of its term: a sole voter elects
        // itself in memory, and seed 954552 saw one crash at once, then vote
        // for another leader of the same term after its restart).
        let term_durable = node.storage.hard_state().term == raft.term();
        if raft.role() == Role::Leader {
            assert!(!raft.is_witness(), "step {step}: witness {id} leads");
            let previous = if term_durable { *observed.leaders.entry(raft.term()).or_insert(id) } else { id };
            if term_durable && raft.conf().is_learner(id) {
                observed.learner_terms.insert(raft.term());
            }
            assert_eq!(
                previous,
                id,
                "step {step}: two leaders in term {}; confs: {:?}",
                raft.term(),
                cluster
                    .nodes
                    .iter()
                    .map(|(i, n)| (*i, n.raft.role(), n.raft.term(), n.raft.conf().clone()))
                    .collect::<Vec<_>>()
            );
            // Leader completeness: a leader holds every entry committed in
            // an earlier term.
            observed.committed.check_leader_holds(id, raft, 0, &at);
        }
        // Record what this node says is committed; it must agree with
        // everything recorded before.
        observed.committed.record(id, raft, &at);
        // State machine safety: every node applies the same entry at an index.
        let checked = observed.applied_checked.entry(id).or_insert((node.restores, 0));
        if checked.0 != node.restores || checked.1 > node.applied.len() {
            *checked = (node.restores, 0);
        }
        for entry in &node.applied[checked.1..] {
            let recorded = observed.applied.entry(entry.index).or_insert((entry.term, entry.data.clone()));
            assert_eq!(
                (recorded.0, &recorded.1),
                (entry.term, &entry.data),
                "step {step}: node {id} applied a different entry at {}",
                entry.index
            );
        }
        checked.1 = node.applied.len();
        if raft.is_witness() {
            // A witness applies only configuration entries and holds no
            // other payload.
            check_witness_holds_no_payload(id, cluster, step);
            continue;
        }
        // Applied entries are in index order without gaps.
        for pair in node.applied.windows(2) {
            assert_eq!(pair[1].index, pair[0].index + 1, "step {step}: node {id} applied out of order");
        }
    }
    // Lease safety: while a leader's lease holds, no entry committed
    // anywhere is missing from its log (a lease read would miss it).
    if observed.lockstep {
        for (&id, node) in &cluster.nodes {
            if !cluster.down.contains(&id) && node.raft.lease_valid() {
                observed.committed.check_lease_holder_holds(id, &node.raft, &at);
            }
        }
    }
    // Log matching: if two logs hold an entry with the same index and term,
    // the logs are identical up to it.
    let rafts: Vec<(NodeId, &engine::Raft)> = cluster.nodes.iter().map(|(&id, node)| (id, &node.raft)).collect();
    check_log_matching(&rafts, &at);
}

fn check_witness_holds_no_payload(id: NodeId, cluster: &Cluster, step: usize) {
    let node = cluster.node(id);
    for entry in &node.applied {
        assert_eq!(
            entry.kind,
            EntryKind::Config,
            "step {step}: witness {id} applied entry {} (restores {}, {:?})",
            entry.index,
            node.restores,
            node.raft.status()
        );
    }
    let raft = &node.raft;
    for index in raft.first_index()..=raft.last_index() {
        let entry = raft.entry(index).expect("held");
        assert!(
            entry.kind == EntryKind::Config || entry.data.is_empty(),
            "step {step}: witness {id} holds a payload at {index}"
        );
    }
    assert!(node.storage.snapshot_data().is_empty(), "step {step}: witness {id} stored a state machine image");
}

/// Runs one seed; returns how many terms a learner led.
fn run_seed(nodes: u64, witnesses: &[NodeId], seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    // One spare node starts outside the cluster; membership changes may add it.
    let ids: Vec<NodeId> = (1..=nodes + 1).collect();
    let voters: Vec<NodeId> = (1..=nodes).collect();
    let pre_vote = rng.range(0, 2) == 1;
    let check_quorum = rng.range(0, 2) == 1;
    // With witnesses, the spare node is started as a witness (as a node
    // started with --witness) half the time, and then only ever added as
    // one: a witness's log lacks payloads, so a node that was one is never
    // made a full member (the node layer must refuse that too).
    let spare = nodes + 1;
    let mut ever_witness: Vec<NodeId> = witnesses.to_vec();
    if !witnesses.is_empty() && rng.range(0, 2) == 0 {
        ever_witness.push(spare);
    }
    let snapshot_entries = rng.range(4, 40);
    // A third of the seeds drop applied payloads beyond a small budget
    // (`Config::log_memory_bytes`); drawn from its own stream, so every
    // other choice of a seed stays what it was.
    let mut memory = Rng::new(seed ^ 0x10C_3E30_4B17);
    let log_memory_bytes = if memory.range(0, 3) == 0 { memory.range(1, 400) } else { 0 };
    // Half the seeds start the nodes without introducing them, so a new
    // cluster's first election (each replica unsure whether its empty log
    // is new or wiped: `Raft::unverified`) meets the faults too; drawn
    // from its own stream, as the budget is.
    let introduced = Rng::new(seed ^ 0x5EED_B007).range(0, 2) == 0;
    let make_config = |id| {
        let members = if id <= nodes { voters.clone() } else { Vec::new() };
        let mut config = Config::new(id, members);
        config.witnesses = if id <= nodes { witnesses.to_vec() } else { Vec::new() };
        // As a node started with --witness would be.
        config.witness = ever_witness.contains(&id);
        config.snapshot_entries = snapshot_entries;
        config.compaction_tail = snapshot_entries / 4;
        config.log_memory_bytes = log_memory_bytes;
        config.snapshot_chunk_bytes = 64;
        config.snapshot_chunks_inflight_max = 2;
        config.promotion_lag_max = 5;
        config.seed = seed.wrapping_mul(1_000_003).wrapping_add(id);
        config.pre_vote = pre_vote;
        config.check_quorum = check_quorum;
        config.inflight_batches_max = 4;
        config.batch_bytes_max = 256;
        config
    };
    // Half the seeds keep every node's ticks in step (a single node's tick
    // becomes everyone's), so that lease safety holds and is checked; from
    // its own stream too.
    let lockstep = Rng::new(seed ^ 0x1EA5_E0C1).range(0, 2) == 0;
    let mut read_modes = Rng::new(seed ^ 0x4EAD_0DE5);
    let mut cluster = if introduced { Cluster::new(&ids, make_config) } else { Cluster::starting(&ids, make_config) };
    cluster.sync_writes = false;
    let mut observed = Observed { lockstep, ..Observed::default() };
    let mut proposals = 0u64;
    let steps = 1500;
    for step in 0..steps {
        let pick = |rng: &mut Rng| ids[rng.range(0, ids.len() as u64) as usize];
        match rng.range(0, 100) {
            0..=4 => {
                let id = pick(&mut rng);
                if lockstep {
                    cluster.tick_all();
                } else if !cluster.down.contains(&id) {
                    cluster.raft(id).tick();
                }
            }
            5..=6 => cluster.tick_all(),
            7..=19 => {
                if let Some(leader) = cluster.leader() {
                    proposals += 1;
                    let _ = cluster.raft(leader).propose(Bytes::from(format!("{seed}:{proposals}")));
                }
            }
            20..=54 => {
                if !cluster.network.is_empty() {
                    let position = rng.range(0, cluster.network.len() as u64) as usize;
                    let message = cluster.network.swap_remove(position);
                    match rng.range(0, 20) {
                        0 => {} // dropped
                        1 => {
                            cluster.deliver(message.clone());
                            cluster.network.push(message); // duplicated
                        }
                        _ => {
                            cluster.deliver(message);
                        }
                    }
                }
            }
            55..=69 => {
                let id = pick(&mut rng);
                cluster.process_ready(id);
            }
            70..=81 => {
                let id = pick(&mut rng);
                if !cluster.down.contains(&id) {
                    let count = rng.range(1, 3) as usize;
                    cluster.persist(id, count);
                }
            }
            82..=84 => {
                let id = pick(&mut rng);
                // Lease reads only where the lease's clock assumption
                // holds; drawn from their own stream.
                let mode = if lockstep && read_modes.range(0, 2) == 0 { ReadMode::Lease } else { ReadMode::ReadIndex };
                if !cluster.down.contains(&id) {
                    let required = observed.committed.entries.keys().next_back().copied().unwrap_or(0);
                    observed.reads.insert(step as u64, required);
                    let _ = cluster.raft(id).read_index(step as u64, mode);
                }
            }
            85 => {
                // A random partition (healed below, at random).
                let split = rng.range(1, nodes) as usize;
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = rng.range(0, i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                let (a, b) = shuffled.split_at(split);
                cluster.partition(a, b);
            }
            86 => cluster.heal(),
            87 => {
                let id = pick(&mut rng);
                if !cluster.down.contains(&id) && cluster.down.len() < (nodes as usize - 1) / 2 {
                    cluster.crash(id);
                }
            }
            88 if rng.range(0, 3) == 0 => {
                // A membership change: add a learner, promote, or remove.
                if let Some(leader) = cluster.leader() {
                    let target = pick(&mut rng);
                    let conf = cluster.node(leader).raft.conf().clone();
                    // A witness joins directly or as a learner first (it
                    // stores no payloads either way: it was started as one).
                    let witness = ever_witness.contains(&target);
                    let op = if conf.is_learner(target) && witness {
                        ConfChangeOp::AddWitness(target)
                    } else if conf.is_learner(target) {
                        ConfChangeOp::AddVoter(target)
                    } else if conf.is_voter(target) {
                        ConfChangeOp::Remove(target)
                    } else if witness && rng.range(0, 2) == 0 {
                        ConfChangeOp::AddWitness(target)
                    } else if rng.range(0, 2) == 0 || witness {
                        ConfChangeOp::AddLearner(target)
                    } else {
                        ConfChangeOp::AddVoter(target)
                    };
                    let direct = matches!(op, ConfChangeOp::AddVoter(id) if !conf.is_voter(id) && !conf.is_learner(id));
                    let result = cluster.raft(leader).propose_conf_change(ConfChange { ops: vec![op] });
                    // A full voter joins as a learner first (see
                    // `propose_conf_change`): one added directly while its
                    // log was empty could wait for members that had left.
                    assert!(
                        !direct || result.is_err(),
                        "step {step}: {op:?} of a node that is no learner was not refused: {result:?}"
                    );
                }
            }
            88 => {
                // A leader transfer to a random voter.
                if let Some(leader) = cluster.leader() {
                    let target = pick(&mut rng);
                    let _ = cluster.raft(leader).transfer_leader(target);
                }
            }
            _ => {
                // A round of normal operation: every node processes its Ready,
                // some writes land, and what is in flight is delivered.
                for &id in &ids {
                    cluster.process_ready(id);
                    if !cluster.down.contains(&id) && rng.range(0, 2) == 0 {
                        cluster.persist(id, usize::MAX);
                    }
                }
                for message in std::mem::take(&mut cluster.network) {
                    if rng.range(0, 50) != 0 {
                        cluster.deliver(message);
                    }
                }
            }
        }
        // Crashed nodes come back after a while.
        if !cluster.down.is_empty() && rng.range(0, 40) == 0 {
            let id = *cluster.down.iter().next().expect("non-empty");
            cluster.restart(id);
            observed.applied_checked.remove(&id);
        }
        check_reads(&mut cluster, &mut observed, step);
        check_safety(&cluster, &mut observed, step);
    }
    if std::env::var_os("ENGINE_VERBOSE").is_some() {
        let roles: Vec<String> = cluster
            .nodes
            .values()
            .map(|n| format!("{:?}/t{}/c{}", n.raft.role(), n.raft.term(), n.raft.committed()))
            .collect();
        eprintln!(
            "seed {seed} after chaos: {roles:?} network={} cut={} down={:?}",
            cluster.network.len(),
            cluster.cut.len(),
            cluster.down
        );
    }
    // Liveness: once every fault heals, a leader emerges and commits.
    cluster.heal();
    for id in ids.clone() {
        if cluster.down.contains(&id) {
            cluster.restart(id);
            observed.applied_checked.remove(&id);
        }
    }
    cluster.sync_writes = true;
    for id in ids.clone() {
        cluster.persist(id, usize::MAX);
    }
    let mut committed_at = None;
    for round in 0..400 {
        cluster.tick_all();
        cluster.stabilize();
        check_safety(&cluster, &mut observed, steps + round);
        if let Some(leader) = cluster.leader() {
            let payload = Bytes::from(format!("{seed}:final"));
            if let Ok((index, term)) = cluster.raft(leader).propose(payload) {
                cluster.stabilize();
                let members = cluster.node(leader).raft.conf().members();
                if members.iter().all(|&id| cluster.node(id).raft.term_at(index) == Some(term)) {
                    committed_at = Some(round);
                    break;
                }
            }
        }
    }
    if committed_at.is_none() {
        let states: Vec<_> = cluster
            .nodes
            .iter()
            .map(|(i, n)| {
                format!(
                    "{i}: {:?} t{} leader={} commit={} applied={} last={} snap={} payloads_from={} repair={:?} conf={:?} status={:?}",
                    n.raft.role(),
                    n.raft.term(),
                    n.raft.leader(),
                    n.raft.committed(),
                    n.raft.applied(),
                    n.raft.last_index(),
                    n.raft.snapshot().index,
                    n.raft.payloads_from(),
                    n.raft.status().repair_target,
                    n.raft.conf(),
                    n.raft
                        .status()
                        .progress
                        .iter()
                        .map(|p| (p.id, p.state, p.match_index, p.next_index))
                        .collect::<Vec<_>>()
                )
            })
            .collect();
        panic!("no leader committed a proposal within 400 rounds after healing:\n{}", states.join("\n"));
    }
    // Every member converges on the same applied sequence (a removed leader
    // steps down, so give the rest time to elect a new one).
    for _ in 0..400 {
        cluster.tick_all();
        cluster.stabilize();
        if let Some(leader) = cluster.leader() {
            let raft = &cluster.node(leader).raft;
            let members = raft.conf().members();
            let done = raft.committed() == raft.last_index()
                && members.iter().all(|&id| cluster.node(id).raft.applied() == raft.committed());
            if done {
                break;
            }
        }
    }
    check_safety(&cluster, &mut observed, usize::MAX);
    if std::env::var_os("ENGINE_VERBOSE").is_some() {
        let restores: u64 = cluster.nodes.values().map(|n| n.restores).sum();
        eprintln!(
            "seed {seed}: {} terms with a leader, {} committed, {proposals} proposals, {restores} snapshot installs",
            observed.leaders.len(),
            observed.committed.entries.len(),
        );
    }
    let Some(leader) = cluster.leader() else {
        let states: Vec<_> = cluster
            .nodes
            .iter()
            .map(|(i, n)| (*i, n.raft.role(), n.raft.term(), n.raft.leader(), n.raft.conf().clone()))
            .collect();
        panic!("no leader after healing: {states:?}");
    };
    let members = cluster.node(leader).raft.conf().members();
    let reference = cluster.node(leader).applied.last().map(|e| e.index);
    for &id in &members {
        let node = cluster.node(id);
        let applied =
            if node.raft.is_witness() { Some(node.raft.applied()) } else { node.applied.last().map(|e| e.index) };
        assert_eq!(applied, reference, "node {id} did not converge");
    }
    observed.learner_terms.len()
}

fn run_many(nodes: u64, witnesses: &[NodeId], name: &str) {
    if let Ok(seed) = std::env::var("ENGINE_SEED") {
        let learner_terms = run_seed(nodes, witnesses, seed.parse().expect("ENGINE_SEED is a number"));
        eprintln!("a learner led {learner_terms} terms");
        return;
    }
    let seeds: u64 = std::env::var("ENGINE_SEEDS").map_or(2000, |s| s.parse().expect("ENGINE_SEEDS is a number"));
    // The witness variants run a quarter of the seeds: they add coverage of
    // one feature, not of the whole engine again.
    let seeds = if witnesses.is_empty() { seeds } else { seeds.div_ceil(4) };
    let start: u64 =
        std::env::var("ENGINE_SEED_START").map_or(0, |s| s.parse().expect("ENGINE_SEED_START is a number"));
    let (mut learner_seeds, mut learner_terms) = (0, 0);
    for seed in start..start + seeds {
        match catch_unwind(AssertUnwindSafe(|| run_seed(nodes, witnesses, seed))) {
            Ok(terms) => {
                learner_seeds += usize::from(terms > 0);
                learner_terms += terms;
            }
            Err(panic) => {
                eprintln!(
                    "\nrandomized cluster test failed: {nodes} nodes (witnesses {witnesses:?}), seed {seed}\n\
                     replay: ENGINE_SEED={seed} cargo test --release -p engine --test t30_randomized -- {name} --nocapture\n"
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    // Shown with --nocapture: how often the learner's last resort ran.
    eprintln!("{name}: seeds {start}..{}: a learner led {learner_terms} terms in {learner_seeds} seeds", start + seeds);
}

/// Seeds outside the default range that once failed, replayed on every run.
/// 349237 (`three_nodes`): a local snapshot at 34 (term 3) taken while a
/// write of entries 39-41 of a stale term-2 branch was still pending; the
/// harness stored the snapshot the way it stores a received one, voiding
/// the entries after it, and the pending write then had a gap to append to
/// (a harness bug: a write-ahead log compacts, and the later write that
/// replaced the branch truncates it). 103059 (`three_nodes`, not
/// introduced): node 3 of a new cluster, cut off during its first round,
/// took its past for unknown, and the leader then removed node 2, leaving
/// {1, 3} needing node 3's vote: no leader after healing (membership's
/// `check_new_voters_caught_up` now refuses such a change). 303508
/// (`three_nodes`, not introduced): the same, with node 3 partly caught up
/// in that repair, so the check, which then counted any voter that had
/// acknowledged something, let the change through. 2206 (`five_nodes`,
/// lockstep ticks): a leader whose transfer was aborted served lease reads
/// again, on acknowledgements from before the transfer, while the target,
/// told late, led a newer term (`Raft::lease_forfeited`). 2019
/// (`three_nodes`, lockstep): a leader leaving the configuration kept its
/// lease while the sole remaining voter elected itself. 12097
/// (`three_nodes`, lockstep): a lease read answered below an index
/// committed before it was asked (the same bugs, seen by the read check).
/// 965226 (`five_nodes_with_two_witnesses`): a witness removed and added
/// again was sent a snapshot from before its removal, whose entries after
/// it needed whole and the leader had dropped from memory: it asked again
/// and was sent the same snapshot for ever (`start_snapshot` now takes a
/// fresh one).
#[test]
fn seeds_that_failed_before() {
    run_seed(3, &[], 349_237);
    run_seed(3, &[], 103_059);
    run_seed(3, &[], 303_508);
    run_seed(5, &[], 2_206);
    run_seed(3, &[], 2_019);
    run_seed(3, &[], 12_097);
    run_seed(5, &[4, 5], 965_226);
}

#[test]
fn three_nodes() {
    run_many(3, &[], "three_nodes");
}

#[test]
fn five_nodes() {
    run_many(5, &[], "five_nodes");
}

/// Two full replicas and a witness (node 3).
#[test]
fn three_nodes_with_a_witness() {
    run_many(3, &[3], "three_nodes_with_a_witness");
}

/// Three full replicas and two witnesses (nodes 4 and 5).
#[test]
fn five_nodes_with_two_witnesses() {
    run_many(5, &[4, 5], "five_nodes_with_two_witnesses");
}
