//! Three engines in one process, no network and no disk: messages passed in
//! memory and writes reported durable at once. Measures committed entries per
//! second with 1 proposer and with 256 concurrent proposers (each proposer
//! keeps one command outstanding), for 16- and 256-byte commands.
//!
//! `cargo bench -p engine --bench engine`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::{Config, Message, Raft, Recovered, Role};

struct Bench {
    nodes: Vec<Raft>,
    queue: Vec<Message>,
    /// Entries the leader applied so far.
    applied: u64,
}

impl Bench {
    fn new() -> Bench {
        let nodes = (1..=3)
            .map(|id| {
                let mut config = Config::new(id, vec![1, 2, 3]);
                config.pre_vote = false;
                Raft::new(config, Recovered::default()).unwrap()
            })
            .collect();
        let mut bench = Bench { nodes, queue: Vec::new(), applied: 0 };
        bench.nodes[0].campaign();
        while bench.nodes[0].role() != Role::Leader || bench.nodes[0].committed() == 0 {
            bench.pump();
        }
        bench.applied = 0;
        bench
    }

    /// One round: every node handles its Ready (writes durable at once), then
    /// every queued message is delivered.
    fn pump(&mut self) {
        for (position, node) in self.nodes.iter_mut().enumerate() {
            if !node.has_ready() {
                continue;
            }
            let mut ready = node.ready();
            self.queue.append(&mut ready.messages);
            if let Some((index, term)) = ready.last_entry() {
                node.persisted(index, term);
            }
            self.queue.append(&mut ready.messages_after_persist);
            if position == 0 {
                self.applied += ready.committed_entries.len() as u64;
            }
            node.advance(ready);
        }
        for message in self.queue.drain(..) {
            let to = (message.to - 1) as usize;
            let _ = self.nodes[to].step(message);
        }
    }

    /// Commits `count` commands with `proposers` outstanding at a time.
    fn run(&mut self, count: u64, proposers: u64, command: &Bytes) {
        let target = self.applied + count;
        let mut proposed = self.applied;
        while self.applied < target {
            while proposed < target && proposed - self.applied < proposers {
                self.nodes[0].propose(command.clone()).expect("leader accepts");
                proposed += 1;
            }
            self.pump();
        }
    }
}

fn commit_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("three_engines_commit");
    group.measurement_time(Duration::from_secs(4));
    for size in [16usize, 256] {
        for proposers in [1u64, 256] {
            let command = Bytes::from(vec![7u8; size]);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(
                BenchmarkId::new(format!("{size}B"), format!("{proposers}_proposers")),
                &proposers,
                |b, &proposers| {
                    let mut bench = Bench::new();
                    b.iter_custom(|iterations| {
                        let start = Instant::now();
                        bench.run(iterations, proposers, &command);
                        start.elapsed()
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, commit_throughput);
criterion_main!(benches);
