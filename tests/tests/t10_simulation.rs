//! Deterministic simulation of the replicated key-value node: real engines
//! and state machines over a simulated disk and network with crashes,
//! partitions, membership changes and snapshots, clients with exactly-once
//! sessions, and every run's history checked for linearizability (see
//! `tests::sim`).
//!
//! `SIM_SEEDS=N` runs N seeds per cluster size (default 1000, so 2000 runs
//! in all; `SIM_FAULT_SEEDS=N`, default 150, for the storage-fault tests), starting at `SIM_SEED_START` (default 0); `SIM_SEED=S` replays
//! one seed (`SIM_TRACE=1` adds every delivered Raft message, every change of a replica's role, term, log end, commit or repair, and what each restarting node found on disk: see `tests::sim::trace`; `SIM_RESTORE_DELAY=N` makes a
//! restore off the driver report back after N time units on average, default 50). A failure prints the seed and the
//! command that replays it. Run it in release: the debug build is about ten
//! times slower.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use tests::sim::{run, run_with, Summary};

fn run_many(voters: u64, test_name: &str) {
    run_many_with(voters, test_name, false);
}

/// Runs the seeds; with `storage_faults`, `SIM_FAULT_SEEDS` (default 150)
/// sets their number instead of `SIM_SEEDS`.
fn run_many_with(voters: u64, test_name: &str, storage_faults: bool) {
    let run = |seed, voters| run_with(seed, voters, storage_faults);
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        let summary = run(seed, voters);
        eprintln!("{summary:?}");
        return;
    }
    let (variable, default) = if storage_faults { ("SIM_FAULT_SEEDS", 150) } else { ("SIM_SEEDS", 1000) };
    let seeds: u64 = std::env::var(variable).map_or(default, |s| s.parse().expect("the seed count is a number"));
    let first: u64 = std::env::var("SIM_SEED_START").map_or(0, |s| s.parse().expect("SIM_SEED_START is a number"));
    let started = Instant::now();
    let mut total = Summary::default();
    let mut multi_shard_seeds = 0;
    let mut large_value_seeds = 0;
    for seed in first..first + seeds {
        let result = catch_unwind(AssertUnwindSafe(|| run(seed, voters)));
        match result {
            Ok(summary) => {
                total.operations += summary.operations;
                total.completed += summary.completed;
                total.crashes += summary.crashes;
                total.partitions += summary.partitions;
                total.membership_changes += summary.membership_changes;
                total.admin_membership_requests += summary.admin_membership_requests;
                total.snapshots_installed += summary.snapshots_installed;
                total.state_machine_rebuilds += summary.state_machine_rebuilds;
                total.disk_stalls += summary.disk_stalls;
                total.lease_reads |= summary.lease_reads;
                total.lease_reads_served += summary.lease_reads_served;
                total.terms_with_leader += summary.terms_with_leader;
                total.committed += summary.committed;
                total.forward_writes |= summary.forward_writes;
                total.forwarded_answered += summary.forwarded_answered;
                total.sessions_opened += summary.sessions_opened;
                total.installs_with_reads_waiting += summary.installs_with_reads_waiting;
                total.restores_off_driver += summary.restores_off_driver;
                total.installs_while_restoring += summary.installs_while_restoring;
                total.forwards_redirected += summary.forwards_redirected;
                total.writes_grouped += summary.writes_grouped;
                total.clean_stops += summary.clean_stops;
                total.sessions_expired += summary.sessions_expired;
                total.sessions_refused += summary.sessions_refused;
                total.writes_given_up += summary.writes_given_up;
                total.unknown_placed += summary.unknown_placed;
                total.unknown_dropped += summary.unknown_dropped;
                total.unknown_left += summary.unknown_left;
                total.storage_faults += summary.storage_faults;
                for (total, count) in total.fault_kinds.iter_mut().zip(summary.fault_kinds) {
                    *total += count;
                }
                total.faults_undone += summary.faults_undone;
                total.disks_full += summary.disks_full;
                total.no_space += summary.no_space;
                total.appends_no_space += summary.appends_no_space;
                total.stalled_unsure += summary.stalled_unsure;
                total.witness_nodes += summary.witness_nodes;
                total.witnesses_at_end += summary.witnesses_at_end;
                total.witness_snapshots_taken += summary.witness_snapshots_taken;
                total.witness_snapshots_installed += summary.witness_snapshots_installed;
                multi_shard_seeds += u64::from(summary.shards > 1);
                large_value_seeds += u64::from(summary.large_values);
                total.slices_copied += summary.slices_copied;
                total.recovered_early += summary.recovered_early;
                total.recovered_discarded += summary.recovered_discarded;
                total.thefts += summary.thefts;
                total.thefts_refused += summary.thefts_refused;
            }
            Err(panic) => {
                eprintln!(
                    "\nsimulation failed: {voters} voters, seed {seed}\n\
                     replay: SIM_SEED={seed} cargo test --release -p tests --test t10_simulation -- {test_name} --exact --nocapture\n"
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "{seeds} seeds with {voters} voters in {:.1?}: {} operations checked ({} completed), {} crashes, {} partitions, \
         {} membership changes ({} more asked through the admin path), {} disk stalls, {} snapshots installed, {} state machines rebuilt, {} terms with a leader, \
         {} entries committed, {} forwarded writes answered; sessions: {} opened, {} found expired or evicted, \
         {} openings refused (table full), {} writes given up past the retry window; shell: {} snapshots installed \
         while reads waited, {} restored off the driver ({} installed while one was), {} forwarded writes redirected by a term change, {} writes proposed in groups, {} reads served under a lease, {} clean stops; unknown outcomes: {} \
         placed where their value was first stored, {} dropped (never stored, or reads), {} left to the checker; \
         {} seeds with several shards, {} crashes that lost durable entries, {} nodes run as witnesses ({} members \
         at the end, {} snapshots taken and {} installed by witnesses), {} seeds with large values ({} kept as \
         slices and copied later), {} writes in other users' sessions ({} answered, all Forbidden), {} starts \
         that kept what they applied while reading the log ({} that discarded it) ({:.0} seeds/s)",
        started.elapsed(),
        total.operations,
        total.completed,
        total.crashes,
        total.partitions,
        total.membership_changes,
        total.admin_membership_requests,
        total.disk_stalls,
        total.snapshots_installed,
        total.state_machine_rebuilds,
        total.terms_with_leader,
        total.committed,
        total.forwarded_answered,
        total.sessions_opened,
        total.sessions_expired,
        total.sessions_refused,
        total.writes_given_up,
        total.installs_with_reads_waiting,
        total.restores_off_driver,
        total.installs_while_restoring,
        total.forwards_redirected,
        total.writes_grouped,
        total.lease_reads_served,
        total.clean_stops,
        total.unknown_placed,
        total.unknown_dropped,
        total.unknown_left,
        multi_shard_seeds,
        total.storage_faults,
        total.witness_nodes,
        total.witnesses_at_end,
        total.witness_snapshots_taken,
        total.witness_snapshots_installed,
        large_value_seeds,
        total.slices_copied,
        total.thefts,
        total.thefts_refused,
        total.recovered_early,
        total.recovered_discarded,
        seeds as f64 / started.elapsed().as_secs_f64(),
    );
    if storage_faults {
        let kinds: Vec<String> = tests::sim::image::FAULT_KINDS
            .iter()
            .zip(total.fault_kinds)
            .map(|(kind, count)| format!("{count} {kind}s"))
            .collect();
        eprintln!(
            "{test_name}: storage faults kept: {}; {} undone (undetectable by design); {} full-disk periods, {} \
             requests or snapshot chunks refused with NoSpace, {} appends answered \"no space\" by full followers",
            kinds.join(", "),
            total.faults_undone,
            total.disks_full,
            total.no_space,
            total.appends_no_space
        );
    }
    // The simulator must actually exercise the faults it claims to.
    if storage_faults && seeds >= 50 {
        assert!(total.storage_faults > 0, "no disk lost a durable entry");
        for (kind, count) in tests::sim::image::FAULT_KINDS.iter().zip(total.fault_kinds) {
            assert!(count > 0, "no {kind} injected");
        }
        assert!(total.disks_full > 0 && total.no_space > 0, "no disk filled, or no write met a full disk");
        assert!(total.appends_no_space > 0, "no full follower answered an append \"no space\"");
        // Faults recovery cannot detect are undone, not injected (see
        // `tests::sim::disk::SimDisk::damage`); if that became common the
        // mode would test little. Restarts whose faults were undone have
        // been 2-4 % of the faults kept.
        let kept: u64 = total.fault_kinds.iter().sum();
        assert!(
            total.faults_undone * 5 <= kept,
            "{} restarts had their faults undone against {kept} faults kept",
            total.faults_undone
        );
    }
    // A group whose voters are mostly repairing or cannot tell their empty
    // log from a wiped one may not elect a leader (by design); it must stay
    // rare.
    if total.stalled_unsure > 0 {
        eprintln!("{test_name}: {} seeds stalled with a majority unable to vote safely", total.stalled_unsure);
    }
    assert!(total.stalled_unsure * 20 <= seeds.max(20), "{} of {seeds} seeds stalled", total.stalled_unsure);
    if seeds >= 50 {
        assert!(total.crashes > 0 && total.partitions > 0, "no crashes or partitions injected");
        assert!(total.membership_changes > 0, "no membership changes");
        if !storage_faults {
            assert!(total.admin_membership_requests > 0, "no membership change through the admin path");
        }
        assert!(total.snapshots_installed > 0, "no snapshot was ever sent to a follower");
        assert!(total.disk_stalls > 0, "no disk stalls");
        assert!(total.forwarded_answered > 0, "no follower forwarded a write that was then answered");
        assert!(total.lease_reads, "no run used lease reads");
        // Every voter must say how long it holds its vote before a leader
        // serves from its lease (`shard::lease`): some leader must get there.
        assert!(total.lease_reads_served > 0, "no leader served a read under its lease");
        assert!(total.sessions_expired > 0, "no session ever expired or was evicted under a client");
        assert!(total.sessions_refused > 0, "no session opening was ever refused for a full table");
        assert!(total.installs_with_reads_waiting > 0, "no snapshot was installed while reads waited");
        assert!(total.restores_off_driver > 0, "no snapshot was restored off the driver");
        if seeds >= 200 {
            assert!(total.installs_while_restoring > 0, "no snapshot was installed while another was restored");
        }
        assert!(total.forwards_redirected > 0, "no forwarded write crossed a term change");
        assert!(total.writes_grouped > 0, "no leader proposed several writes as one entry");
        assert!(total.clean_stops > 0, "no node was stopped cleanly");
        assert!(total.completed > seeds, "clients completed almost nothing");
        assert!(multi_shard_seeds > 0, "no seed ran several shards per node");
        assert!(total.witnesses_at_end > 0, "no run ended with a witness member");
        assert!(total.witness_snapshots_taken > 0, "no witness took a snapshot");
        assert!(total.witness_snapshots_installed > 0, "no witness installed a leader's snapshot");
        assert!(total.slices_copied > 0, "no store copied a large value it had kept as a slice of its entry");
        assert!(total.thefts_refused > 0, "no write in another user's session was refused");
        // Restarts beyond the payload budget apply the log as recovery
        // reads it; an entry applied that a later record replaces makes
        // the start discard it and read again (1-4 % of such starts in
        // the runs of 2026-12-07).
        assert!(total.recovered_early > 0, "no start applied the log while recovery read it");
        if seeds >= 100 {
            assert!(total.recovered_discarded > 0, "no start discarded what it applied while reading the log");
        }
    }
}

#[test]
fn three_nodes() {
    run_many(3, "three_nodes");
}

#[test]
fn five_nodes() {
    run_many(5, "five_nodes");
}

/// Issue 16: a minority of replicas per seed lose durable entries when they
/// crash (damaged records cut by recovery, lost durable suffixes), and must
/// repair themselves from their peers; the safety and linearizability
/// checks hold throughout.
#[test]
fn three_nodes_with_storage_faults() {
    run_many_with(3, "three_nodes_with_storage_faults", true);
}

#[test]
fn five_nodes_with_storage_faults() {
    run_many_with(5, "five_nodes_with_storage_faults", true);
}

/// Seeds that once failed, replayed on every run (the campaigns run other
/// seeds): 241921 with three voters and storage faults elected a leader
/// without committed entries, because a fault the WAL cannot detect (a
/// segment's entries gone with nothing valid after them) was counted as
/// detected when other damage was found before it (see
/// `tests::sim::disk::SimDisk::damage`); 320130 with three voters (no
/// storage faults) left a client stuck for good, retrying a session write
/// at a removed learner that never caught up to the session's opening and
/// answered `Busy` each time (see `Shard::refuse_session_caller`);
/// 600021 with five voters (no storage faults) stalled for good: two
/// voters of a new cluster, cut off during its first round, heard a log
/// that was not empty before every other voter had told them its empty
/// one, took their pasts for unknown, and a joint configuration needed
/// one of their votes (see `Raft::note_evidence`: the evidence now keeps
/// counting in that repair); 771904 with five voters and storage faults
/// stayed leaderless after healing: a voter in repair waited for entries
/// only a learner held, and the learner never campaigned (see
/// `engine/src/raft/learner.rs`); 776682 with three voters and storage
/// faults: a simulated client took a duplicated answer to its previous
/// session opening for its new one, reused a session it had written in,
/// and got another write's answer (see `tests::sim::client`'s `Opening`).
#[test]
fn seeds_that_failed_once() {
    const FAILED_ONCE: &[(u64, u64, bool)] =
        &[(241921, 3, true), (320130, 3, false), (600021, 5, false), (771904, 5, true), (776682, 3, true)];
    for &(seed, voters, storage_faults) in FAILED_ONCE {
        let summary = run_with(seed, voters, storage_faults);
        assert!(summary.committed > 0, "seed {seed} committed nothing: {summary:?}");
    }
}

/// A seed replays exactly: the same faults, the same operations, the same
/// outcome. (A map iterated in a random order anywhere in the driver, such
/// as the order in which waiting clients are answered, broke this once.)
#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 426, 558] {
        let first = format!("{:?}", run(seed, 5));
        let second = format!("{:?}", run(seed, 5));
        assert_eq!(first, second, "seed {seed} ran differently twice");
    }
}
