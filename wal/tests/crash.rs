//! Crash tests: a child process (this test binary, re-executed) appends,
//! truncates, saves hard states and snapshots, printing each operation before
//! it starts and each durability report as it arrives; the parent kills it with
//! SIGKILL at a random moment, reopens the log, and checks that what it finds
//! is the result of a prefix of the child's operations that contains every
//! operation reported durable. Then the next child continues on the same
//! directory.
//!
//! `WAL_CRASH_ITERATIONS` (default 10) sets the number of kills and
//! `WAL_CRASH_SEED` replays a run.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::{ConfState, HardState, Index, SnapshotMeta, Term};
use rand::{Rng, SeedableRng};
use wal::testing::{batch, shape};
use wal::{LogStore, Wal, WalConfig};

const CHILD_DIR_VAR: &str = "WAL_CRASH_CHILD_DIR";
const CHILD_SEED_VAR: &str = "WAL_CRASH_CHILD_SEED";
/// Appends the child keeps in flight: enough to form groups and pipeline.
const INFLIGHT_APPENDS_MAX: usize = 48;

fn config(dir: PathBuf) -> WalConfig {
    let mut config = WalConfig::new(dir, 11, 3);
    config.segment_bytes = 256 << 10;
    config.write_bytes_max = 32 << 10;
    config.batch_bytes_max = 32 << 10;
    // Crashes while compacted segments are pooled and reused.
    config.recycled_segments_max = 4;
    config
}

/// The log as a list of `(index, term)` after a snapshot point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    snapshot: (Index, Term),
    entries: Vec<(Index, Term)>,
}

impl Model {
    fn last(&self) -> (Index, Term) {
        self.entries.last().copied().unwrap_or(self.snapshot)
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        let first = self.snapshot.0 + 1;
        (index >= first).then(|| self.entries.get((index - first) as usize).map(|&(_, term)| term)).flatten()
    }

    fn append(&mut self, first: Index, count: u64, term: Term) {
        let keep = (first - self.snapshot.0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend((first..first + count).map(|index| (index, term)));
    }

    fn snapshot(&mut self, index: Index, term: Term) {
        if self.term(index) == Some(term) {
            self.entries.retain(|&(entry, _)| entry > index);
        } else {
            self.entries.clear();
        }
        self.snapshot = (index, term);
    }
}

#[derive(Debug)]
enum Op {
    Append { first: Index, count: u64, term: Term },
    Snapshot { index: Index, term: Term },
}

/// The child's state: its model of the log and the appends in flight.
struct Child<'a> {
    wal: &'a Wal,
    model: Model,
    rng: rand::rngs::StdRng,
    out: std::io::StdoutLock<'static>,
    /// `(ticket sequence, op number)` of appends not yet seen durable.
    inflight: std::collections::VecDeque<(u64, u64)>,
    op_number: u64,
}

impl Child<'_> {
    /// Prints, then submits, one append: usually the next index, sometimes a
    /// conflicting one with a new term.
    fn append_one(&mut self) {
        let (last, last_term) = self.model.last();
        let conflict = self.rng.random_bool(0.03) && last > self.model.snapshot.0 + 1;
        let (first, term) = if conflict {
            (self.rng.random_range(self.model.snapshot.0 + 1..=last), last_term + 1)
        } else {
            (last + 1, last_term.max(1))
        };
        let count = self.rng.random_range(1..=8u64);
        self.op_number += 1;
        writeln!(self.out, "@A {} {first} {count} {term}", self.op_number).unwrap();
        let ticket = self.wal.append(batch(first, &vec![term; count as usize])).expect("append");
        self.model.append(first, count, term);
        self.inflight.push_back((ticket.sequence, self.op_number));
    }

    /// Reports every op whose durability the log has confirmed.
    fn report_durable(&mut self, at_least_op: u64) {
        let durable = self.wal.durable_sequence();
        let mut reported = at_least_op;
        while self.inflight.front().is_some_and(|&(sequence, _)| sequence <= durable) {
            reported = reported.max(self.inflight.pop_front().unwrap().1);
        }
        if reported > 0 {
            writeln!(self.out, "@D {reported}").unwrap();
        }
    }
}

/// The child: runs until killed.
#[test]
#[ignore = "run by crash_test_kills_and_recovers as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        panic!("the crash child runs only under crash_test_kills_and_recovers");
    };
    let seed: u64 = std::env::var(CHILD_SEED_VAR).unwrap().parse().unwrap();
    tokio_uring::start(async move {
        let (wal, recovered) = Wal::open(config(PathBuf::from(dir))).await.expect("child open");
        let mut hard_term = recovered.hard_state.term;
        let mut child = Child {
            wal: &wal,
            model: Model {
                snapshot: recovered.snapshot.as_ref().map_or((0, 0), |meta| (meta.index, meta.term)),
                entries: shape(&recovered.entries),
            },
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            out: std::io::stdout().lock(),
            inflight: std::collections::VecDeque::new(),
            op_number: 0,
        };
        writeln!(child.out, "@R").unwrap();
        loop {
            while child.inflight.len() < INFLIGHT_APPENDS_MAX {
                child.append_one();
            }
            let (sequence, _) = *child.inflight.front().unwrap();
            wal.wait_durable(sequence).await.expect("durable");
            child.report_durable(0);
            if child.rng.random_bool(0.05) {
                hard_term += 1;
                writeln!(child.out, "@h {hard_term}").unwrap();
                wal.save_hard_state(HardState { term: hard_term, vote: 1, commit: 0, ack_term: 0, verified: false })
                    .await
                    .expect("hard state");
                writeln!(child.out, "@H {hard_term}").unwrap();
            }
            let (last, _) = child.model.last();
            if child.rng.random_bool(0.02) && last > child.model.snapshot.0 + 20 {
                // A snapshot behind the end, usually agreeing with the log,
                // sometimes not (which voids every segment), with appends
                // submitted while it is being stored, as a node does.
                let index = child.rng.random_range(child.model.snapshot.0 + 1..last - 10);
                let agree = child.rng.random_bool(0.8);
                let term = if agree { child.model.term(index).unwrap() } else { child.model.last().1 + 1 };
                child.op_number += 1;
                let snapshot_op = child.op_number;
                writeln!(child.out, "@S {snapshot_op} {index} {term}").unwrap();
                let meta = SnapshotMeta { index, term, conf: ConfState::new([1, 2, 3], []) };
                let mut save = Box::pin(wal.save_snapshot(meta, Bytes::from(vec![7u8; 1000])));
                let early = wal::testing::poll_once(save.as_mut());
                child.model.snapshot(index, term);
                child.inflight.retain(|&(_, op)| op > snapshot_op);
                for _ in 0..child.rng.random_range(0..6) {
                    child.append_one();
                }
                let result = match early {
                    Some(result) => result,
                    None => save.await,
                };
                result.expect("snapshot");
                child.report_durable(snapshot_op);
                wal.compact(index).await.expect("compact");
            }
        }
    });
}

#[test]
fn crash_test_kills_and_recovers() {
    wal::io_uring_available().expect("these tests need io_uring");
    let iterations: u32 = std::env::var("WAL_CRASH_ITERATIONS").ok().and_then(|value| value.parse().ok()).unwrap_or(10);
    let seed: u64 = std::env::var("WAL_CRASH_SEED").ok().and_then(|value| value.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("crash test seed {seed}; replay with WAL_CRASH_SEED={seed} cargo test -p wal --release --test crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("wal-crash-{}-{seed}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut model = Model::default();
    let mut hard_term_durable = 0;
    let mut total_ops = 0;
    for iteration in 0..iterations {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_VAR, &dir)
            .env(CHILD_SEED_VAR, rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let started = Instant::now();
        while !lines.lock().unwrap().iter().any(|line| line.ends_with("@R")) {
            assert!(started.elapsed() < Duration::from_secs(20), "child did not start: {:?}", child.try_wait());
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();

        // Parse what the child said.
        let lines = lines.lock().unwrap();
        let mut ops = Vec::new();
        let mut durable_op = 0u64;
        let mut hard_term_attempted = hard_term_durable;
        // Markers start at '@' (libtest may print its own text before one).
        for line in lines.iter().filter_map(|line| line.find('@').map(|at| &line[at + 1..])) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |at: usize| -> u64 { fields[at].parse().unwrap() };
            match fields.first() {
                Some(&"A") => {
                    assert_eq!(number(1), ops.len() as u64 + 1, "ops are numbered in order");
                    ops.push(Op::Append { first: number(2), count: number(3), term: number(4) });
                }
                Some(&"S") => {
                    assert_eq!(number(1), ops.len() as u64 + 1, "ops are numbered in order");
                    ops.push(Op::Snapshot { index: number(2), term: number(3) });
                }
                Some(&"D") => durable_op = durable_op.max(number(1)),
                Some(&"h") => hard_term_attempted = number(1),
                Some(&"H") => hard_term_durable = number(1),
                _ => {}
            }
        }
        total_ops += ops.len();

        // Reopen and compare with every admissible prefix.
        let (recovered, entries) = tokio_uring::start(async {
            let (wal, recovered) = Wal::open(config(dir.clone())).await.expect("reopen after kill");
            let entries = shape(&recovered.entries);
            wal.close().await.unwrap();
            (recovered, entries)
        });
        let found =
            Model { snapshot: recovered.snapshot.as_ref().map_or((0, 0), |meta| (meta.index, meta.term)), entries };
        let term = recovered.hard_state.term;
        assert!(
            (hard_term_durable..=hard_term_attempted).contains(&term),
            "seed {seed} iteration {iteration}: hard state term {term} outside [{hard_term_durable}, {hard_term_attempted}]"
        );
        hard_term_durable = term;
        // A snapshot the log agrees with changes no segment, so appends made
        // while it is stored may be durable before it: until its save is
        // reported done, a recovered log may also lack it (`lenient`).
        let mut candidate = model.clone();
        let mut lenient = model.clone();
        let mut matched = None;
        for (done, op) in std::iter::once(None).chain(ops.iter().map(Some)).enumerate() {
            match op {
                Some(Op::Append { first, count, term }) => {
                    candidate.append(*first, *count, *term);
                    lenient.append(*first, *count, *term);
                }
                Some(Op::Snapshot { index, term }) => {
                    candidate.snapshot(*index, *term);
                    let unfinished_and_agreeing = done as u64 > durable_op && lenient.term(*index) == Some(*term);
                    if !unfinished_and_agreeing {
                        lenient.snapshot(*index, *term);
                    }
                }
                None => {}
            }
            if done as u64 >= durable_op && (candidate == found || lenient == found) {
                matched = Some(done);
            }
        }
        let Some(prefix) = matched else {
            panic!(
                "seed {seed} iteration {iteration}: recovered log (snapshot {:?}, last {:?}, {} entries) is no prefix of the {} ops with at least {durable_op} applied",
                found.snapshot,
                found.last(),
                found.entries.len(),
                ops.len()
            );
        };
        println!(
            "iteration {iteration}: {} ops, {durable_op} reported durable, recovered after {prefix}, last {:?}",
            ops.len(),
            found.last()
        );
        model = found;
    }
    assert!(total_ops > 0, "the children did no work");
    std::fs::remove_dir_all(&dir).unwrap();
}
