//! Whole-system tests of the replicated key-value node: the evidence that the
//! cluster never loses an acknowledged write and never returns a wrong answer.
//!
//! # Checking a client history for linearizability
//!
//! [`linearizability`] decides whether what the clients saw could have come
//! from a single copy of the store, each operation taking effect at one moment
//! between its call and its return. Record every request as it is sent and
//! every answer as it arrives, then check the history against a model:
//!
//! ```
//! use tests::linearizability::{check, CheckOptions, HistoryRecorder, NodeKvInput, NodeKvModel, NodeKvOutput};
//!
//! let mut history = HistoryRecorder::new();
//! let put = history.invoke(1, NodeKvInput::Put { key: "k", value: 1 }, 0);
//! let get = history.invoke(2, NodeKvInput::Get { key: "k" }, 1);
//! history.complete(put, NodeKvOutput::Done, 2);
//! history.complete(get, NodeKvOutput::Value(Some(1)), 3);
//! // A request that timed out is left open: it may or may not have applied.
//! history.invoke(3, NodeKvInput::Delete { key: "k" }, 4);
//!
//! let verdict = check(&NodeKvModel::new(), &history.into_operations(), &CheckOptions::default());
//! assert!(verdict.is_linearizable(), "{verdict}");
//! ```
//!
//! - Times are any clock all clients share (the simulator's logical time, or
//!   nanoseconds since one `Instant` in a real-process test); only their
//!   order matters, and equal times count as overlapping. Clients on several
//!   threads share one recorder behind a mutex.
//! - Complete an operation only when the answer says what happened.
//!   [`discard`](linearizability::HistoryRecorder::discard) one that surely
//!   did not happen (refused before it was proposed). Leave everything else
//!   open (timeouts, crashes, lost connections): an open operation has an
//!   unknown outcome, so the checker lets it take effect at any moment after
//!   its call, or never.
//! - A [`Verdict::NotLinearizable`](linearizability::Verdict) carries a
//!   [`Violation`](linearizability::Violation): the longest linearizable
//!   prefix, the state it leaves, and the operation that could not take
//!   effect in time. Print it with the seed that replays the run.
//! - [`CheckOptions`](linearizability::CheckOptions) bounds the search in
//!   time, steps and memo size; running out gives `Verdict::Unknown`, which a
//!   test should treat as a failure to investigate, never as a pass.
//! - The key-value models split a history by key and search the keys in
//!   turns, which keeps the check fast: a few hundred operations per key take
//!   tens of milliseconds. A new model implements
//!   [`Model`](linearizability::Model): an initial state, a `step` that
//!   accepts or rejects an (input, output) pair in a state, and optionally
//!   `partition`.
//! - [`parse`](linearizability::parse) reads the Jepsen and Porcupine
//!   histories of `shared/testdata/linearizability`, which
//!   `tests/t85_linearizability_checker.rs` checks against their known
//!   verdicts.

//!
//! # The tests of this crate
//!
//! | test | what | how long |
//! |---|---|---|
//! | `t10_simulation` | [`sim`]: 2,000 seeded runs of 3- and 5-node clusters of real engines and state machines over a simulated disk and network with every fault; Raft safety after every event, liveness after healing, linearizability of the client history | about 20 s in release on 2 cores |
//! | `t50_chaos` | real `node` processes: repeated leader SIGKILLs, torn WAL tails, an iptables minority partition, a wiped follower rejoining by snapshot, a leader paused (SIGSTOP) past its lease asked for a lease read; history checked, acknowledged writes read back | about 30 s |
//! | `t60_hostile_clients` | random bytes, oversized frames, a wrong token, connections that never read, against a real node serving a good client | about 12 s |
//! | `t85_linearizability_checker` | the checker against histories with known verdicts | seconds |
//! | `t90_regressions` | the smallest reproductions of what the simulator and the chaos tests found | instant |
//!
//! ```text
//! cargo build --release -p node            # t50 and t60 use target/release/node (and refuse a stale one)
//! cargo test --release -p tests
//! SIM_SEEDS=20000 cargo test --release -p tests --test t10_simulation     # more seeds
//! SIM_SEED=26 cargo test --release -p tests --test t10_simulation -- three_nodes --exact --nocapture
//! CHAOS_SECONDS=300 cargo test --release -p tests --test t50_chaos -- --nocapture
//! ```
//!
//! The chaos test partitions with iptables owner rules and runs each node
//! as its own uid, so that case needs root; without root or iptables it is
//! skipped with a message, and without the `node` binary the real-process
//! tests skip too.

pub mod linearizability;
pub mod sim;

/// The `node` binary next to the running test's executable
/// (`target/<profile>/deps/<test>-*`), or `None` when there is none.
///
/// A binary older than any source file it is built from panics, naming
/// the file: `cargo test -p tests` does not rebuild the `node` package's
/// binary, so after an edit the real-process tests would otherwise test
/// the code from before it, and pass or fail for the wrong reason.
/// `cargo test --workspace` builds it first.
pub fn node_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let binary = exe.parent()?.parent()?.join("node");
    let built = std::fs::metadata(&binary).ok()?.modified().ok()?;
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    if let Some((source, _)) = newer_sources(workspace, built).first() {
        panic!(
            "{} is older than {}: rebuild it (cargo build --release -p node), or run the whole workspace's tests",
            binary.display(),
            source.display()
        );
    }
    Some(binary)
}

/// The Rust sources and manifests of the crates the `node` binary is built
/// from that were modified after `built`, newest first.
fn newer_sources(
    workspace: &std::path::Path,
    built: std::time::SystemTime,
) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    fn walk(
        dir: &std::path::Path,
        built: std::time::SystemTime,
        out: &mut Vec<(std::path::PathBuf, std::time::SystemTime)>,
    ) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, built, out);
            } else if path.extension().is_some_and(|ext| ext == "rs" || ext == "toml") {
                if let Ok(modified) = entry.metadata().and_then(|meta| meta.modified()) {
                    if modified > built {
                        out.push((path, modified));
                    }
                }
            }
        }
    }
    let mut newer = Vec::new();
    for krate in ["node", "engine", "wal", "net"] {
        walk(&workspace.join(krate).join("src"), built, &mut newer);
        let manifest = workspace.join(krate).join("Cargo.toml");
        if let Ok(modified) = std::fs::metadata(&manifest).and_then(|meta| meta.modified()) {
            if modified > built {
                newer.push((manifest, modified));
            }
        }
    }
    newer.sort_by_key(|(_, modified)| std::cmp::Reverse(*modified));
    newer
}

#[cfg(test)]
mod binary_tests {
    use std::time::{Duration, SystemTime};

    /// A source edited after the binary was built is named; none is when
    /// the binary is newer than every source.
    #[test]
    fn sources_newer_than_the_binary_are_found() {
        let workspace = std::env::temp_dir().join(format!("tests-newer-sources-{}", std::process::id()));
        std::fs::create_dir_all(workspace.join("wal/src/deep")).unwrap();
        std::fs::write(workspace.join("wal/src/deep/edited.rs"), "// edited").unwrap();
        std::fs::write(workspace.join("wal/src/notes.txt"), "not a source").unwrap();
        let now = SystemTime::now();
        let newer = super::newer_sources(&workspace, now - Duration::from_secs(60));
        let names: Vec<_> = newer.iter().map(|(path, _)| path.strip_prefix(&workspace).unwrap().to_owned()).collect();
        assert_eq!(names, [std::path::PathBuf::from("wal/src/deep/edited.rs")]);
        assert!(super::newer_sources(&workspace, now + Duration::from_secs(60)).is_empty());
        std::fs::remove_dir_all(&workspace).unwrap();
    }
}
