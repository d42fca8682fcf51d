//! The key-value state machine's apply path, as a node runs it for each
//! committed batch: 128 `Put`s of 256-byte values over random keys of a
//! 100,000-key map (the load generator's default key space), every key
//! already present, so each write overwrites.
//!
//! - `apply_batch/with_prefetch`: `StateMachine::prefetch` over the batch,
//!   then `apply` for each entry, as the node's shard does;
//! - `apply_batch/without_prefetch`: `apply` alone, for comparison.
//!
//! The map is far larger than the CPU's caches only in a real node's
//! company (three nodes and the bench on one machine); alone here it partly
//! fits in a large L2/L3, so the gap between the two is smaller than in the
//! cluster (RESULTS.md).
//!
//! Run: `cargo bench -p bench --bench kv`.

use std::cell::Cell;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engine::{Entry, EntryKind, StateMachine};
use node::session::{encode_envelope, CLIENT_ID_NONE};
use node::{KvOp, KvStateMachine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 100_000;
const BATCH: usize = 128;
const VALUE_SIZE: usize = 256;

fn put(key: u64, fill: u8) -> Bytes {
    let op = KvOp::Put { key: bench::workload::key_name(key), value: Bytes::from(vec![fill; VALUE_SIZE]) };
    encode_envelope(CLIENT_ID_NONE, 0, &op.encode())
}

fn apply_batch(c: &mut Criterion) {
    let mut machine = KvStateMachine::default();
    let next_index = Cell::new(1u64);
    for key in 0..KEYS {
        machine.apply(next_index.get(), &put(key, 1));
        next_index.set(next_index.get() + 1);
    }
    let mut rng = StdRng::seed_from_u64(7);
    // Enough distinct batches that they do not stay in cache between uses.
    let commands: Vec<Vec<Bytes>> =
        (0..256).map(|_| (0..BATCH).map(|_| put(rng.random_range(0..KEYS), 2)).collect()).collect();
    let next_batch = Cell::new(0usize);
    let make_batch = || {
        let batch = &commands[next_batch.get() % commands.len()];
        next_batch.set(next_batch.get() + 1);
        batch
            .iter()
            .map(|data| {
                let index = next_index.get();
                next_index.set(index + 1);
                Entry { index, term: 1, kind: EntryKind::Normal, data: data.clone() }
            })
            .collect::<Vec<Entry>>()
    };
    let mut group = c.benchmark_group("apply_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("with_prefetch", |b| {
        b.iter_batched(
            make_batch,
            |entries| {
                machine.prefetch(&entries);
                for entry in &entries {
                    std::hint::black_box(machine.apply(entry.index, &entry.data));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("without_prefetch", |b| {
        b.iter_batched(
            make_batch,
            |entries| {
                for entry in &entries {
                    std::hint::black_box(machine.apply(entry.index, &entry.data));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_batch);
criterion_main!(benches);
