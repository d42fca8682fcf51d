//! The apply path as a node runs it for each committed batch: the node's
//! state machine (sessions) around the key-value store, 128 `Put`s of
//! 256-byte values over random keys of a 100,000-key map (the load
//! generator's default key space), every key already present, so each write
//! overwrites.
//!
//! - `apply_batch/with_prefetch`: the prefetch hint over the batch, then
//!   `apply` for each entry, as the node's shard does;
//! - `apply_batch/without_prefetch`: `apply` alone, for comparison;
//! - `apply_batch/in_sessions`: as `with_prefetch`, but every write in one
//!   of 64 exactly-once sessions, each acknowledging the answers before it
//!   (the load generator's pattern), so the session table's bookkeeping is
//!   measured too;
//! - `after_image/first_writes`: a snapshot image is taken as the shard
//!   takes it (`before_image` first), then 32 batches as in
//!   `with_prefetch` (4,096 writes, enough to reach nearly every one of the
//!   map's 1,024 buckets), then the image is dropped, as on a node right
//!   after it starts a snapshot. Per write, against `with_prefetch`, it
//!   shows what writing beside an image costs: the changes kept beside
//!   each shared table, and folding them in at the next image (a build
//!   before 2026-12-07 copied each bucket at its first write instead).
//!
//! The map is far larger than the CPU's caches only in a real node's
//! company (three nodes and the bench on one machine); alone here it partly
//! fits in a large L2/L3, so the gap between the first two is smaller than
//! in the cluster (RESULTS.md).
//!
//! Run: `cargo bench -p node --bench kv`. `KV_BENCH_KEYS=1000000` sets the
//! key space (default 100,000): a map far larger than the caches shows
//! the misses even on a machine of its own.

use std::cell::Cell;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engine::{Entry, EntryKind, Index};
use node::replicated::{NodeCommand, NodeStateMachine, Write};
use node::{KvOp, KvStateMachine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The key space when `KV_BENCH_KEYS` does not set it.
const KEYS_DEFAULT: u64 = 100_000;

fn keys() -> u64 {
    match std::env::var("KV_BENCH_KEYS") {
        Ok(keys) => keys.parse().expect("KV_BENCH_KEYS is a number of keys"),
        Err(_) => KEYS_DEFAULT,
    }
}
const BATCH: usize = 128;
const VALUE_SIZE: usize = 256;
const SESSIONS: u64 = 64;

fn key_name(index: u64) -> Bytes {
    Bytes::from(format!("key-{index:012}"))
}

fn put(key: u64, fill: u8) -> Bytes {
    KvOp::Put { key: key_name(key), value: Bytes::from(vec![fill; VALUE_SIZE]) }.encode()
}

fn entry(index: Index, data: Bytes) -> Entry {
    Entry { index, term: 1, kind: EntryKind::Normal, data }
}

fn apply_batch(c: &mut Criterion) {
    let mut machine = NodeStateMachine::new(KvStateMachine::new());
    let next_index = Cell::new(1u64);
    let index = || {
        let index = next_index.get();
        next_index.set(index + 1);
        index
    };
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let at = index();
        machine.apply(at, &NodeCommand::OpenSession { proposer: 1, nonce: at, owner: None }.encode());
        sessions.push((at, 0u64));
    }
    let keys = keys();
    for key in 0..keys {
        let command = put(key, 1);
        machine.apply(index(), &Write { client_id: 0, sequence: 0, ack: 0, command: &command }.encode());
    }
    let mut rng = StdRng::seed_from_u64(7);
    // Enough distinct batches that they do not stay in cache between uses.
    let commands: Vec<Vec<Bytes>> =
        (0..256).map(|_| (0..BATCH).map(|_| put(rng.random_range(0..keys), 2)).collect()).collect();
    let next_batch = Cell::new(0usize);
    let batch = || {
        let batch = &commands[next_batch.get() % commands.len()];
        next_batch.set(next_batch.get() + 1);
        batch
    };
    let plain = |command: &Bytes| Write { client_id: 0, sequence: 0, ack: 0, command }.encode();
    let mut group = c.benchmark_group("apply_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("with_prefetch", |b| {
        b.iter_batched(
            || batch().iter().map(|command| entry(index(), plain(command))).collect::<Vec<Entry>>(),
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
            || batch().iter().map(|command| entry(index(), plain(command))).collect::<Vec<Entry>>(),
            |entries| {
                for entry in &entries {
                    std::hint::black_box(machine.apply(entry.index, &entry.data));
                }
            },
            BatchSize::SmallInput,
        )
    });
    let mut turn = 0usize;
    group.bench_function("in_sessions", |b| {
        b.iter_batched(
            || {
                batch()
                    .iter()
                    .map(|command| {
                        let (client_id, last) = &mut sessions[turn % SESSIONS as usize];
                        turn += 1;
                        *last += 1;
                        let write = Write { client_id: *client_id, sequence: *last, ack: *last, command };
                        entry(index(), write.encode())
                    })
                    .collect::<Vec<Entry>>()
            },
            |entries| {
                machine.prefetch(&entries);
                for entry in &entries {
                    std::hint::black_box(machine.apply(entry.index, &entry.data));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let mut group = c.benchmark_group("after_image");
    group.throughput(Throughput::Elements((image_batches() * BATCH) as u64));
    group.bench_function("first_writes", |b| {
        b.iter_batched(
            || {
                (0..image_batches())
                    .map(|_| batch().iter().map(|command| entry(index(), plain(command))).collect())
                    .collect::<Vec<Vec<Entry>>>()
            },
            |batches| {
                machine.before_image();
                let image = machine.snapshot_image();
                for entries in &batches {
                    machine.prefetch(entries);
                    for entry in entries {
                        std::hint::black_box(machine.apply(entry.index, &entry.data));
                    }
                }
                drop(image);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Batches applied after each image in `after_image`.
const IMAGE_BATCHES: usize = 32;

/// Batches written while the image lives: [`IMAGE_BATCHES`], or
/// `KV_BENCH_IMAGE_BATCHES` (a snapshot of a large state lives long).
fn image_batches() -> usize {
    match std::env::var("KV_BENCH_IMAGE_BATCHES") {
        Ok(batches) => batches.parse().expect("KV_BENCH_IMAGE_BATCHES is a number of batches"),
        Err(_) => IMAGE_BATCHES,
    }
}

criterion_group!(benches, apply_batch);
criterion_main!(benches);
