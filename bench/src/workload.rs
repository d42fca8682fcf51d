//! What the load generator asks for: which keys (uniform or zipfian over a
//! key space), which operations (a read/write mix) and how large the values
//! are. Each connection has its own seeded generator, so a run's sequence of
//! operations is reproducible from its seed.

use bytes::Bytes;
use net::kv::KvOp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::stats::OpKind;

/// How keys are drawn from the key space.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Key of rank `i` (0-based) drawn with probability proportional to
    /// `1 / (i + 1)^theta`: a few hot keys, a long cold tail, as in YCSB.
    Zipfian { theta: f64 },
}

/// A bad workload setting.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error("the key space must hold at least one key")]
    EmptyKeySpace,
    #[error("the zipfian exponent must be in (0, 1) for this generator (YCSB uses 0.99); got {0}")]
    Theta(f64),
    #[error("the read fraction must be between 0 and 1; got {0}")]
    ReadFraction(f64),
    #[error("values are at most {max} bytes; got {size}")]
    ValueSize { size: usize, max: usize },
}

/// The zipfian generator of Gray et al., "Quickly Generating Billion-Record
/// Synthetic Databases" (SIGMOD 1994), as YCSB uses it: constant time per
/// draw after an O(n) precomputation of the generalized harmonic number.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over ranks `0..items`. `theta` is in (0, 1): the formula
    /// divides by `1 - theta`.
    pub fn new(items: u64, theta: f64) -> Result<Zipfian, WorkloadError> {
        if items == 0 {
            return Err(WorkloadError::EmptyKeySpace);
        }
        if !(theta > 0.0 && theta < 1.0) {
            return Err(WorkloadError::Theta(theta));
        }
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2.min(items), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = if items > 1 { (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan) } else { 0.0 };
        Ok(Zipfian { items, theta, alpha, zetan, eta })
    }

    /// The probability of rank `rank` (for tests and reports).
    pub fn probability(&self, rank: u64) -> f64 {
        1.0 / ((rank + 1) as f64).powf(self.theta) / self.zetan
    }

    /// The next rank, in `0..items`.
    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) && self.items > 1 {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// The generalized harmonic number `sum(1 / i^theta, i = 1..=n)`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Draws keys.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian(Zipfian),
}

impl KeyChooser {
    pub fn new(keys: u64, distribution: Distribution) -> Result<KeyChooser, WorkloadError> {
        match distribution {
            _ if keys == 0 => Err(WorkloadError::EmptyKeySpace),
            Distribution::Uniform => Ok(KeyChooser::Uniform { keys }),
            Distribution::Zipfian { theta } => Ok(KeyChooser::Zipfian(Zipfian::new(keys, theta)?)),
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.random_range(0..*keys),
            KeyChooser::Zipfian(zipfian) => zipfian.sample(rng),
        }
    }
}

/// The key of rank `index`: fixed width, so every key has the same size.
pub fn key_name(index: u64) -> Bytes {
    Bytes::from(format!("key-{index:012}"))
}

/// The settings a workload is built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    pub keys: u64,
    pub distribution: Distribution,
    /// The share of reads, 0 (writes only) to 1 (reads only).
    pub read_fraction: f64,
    pub value_size: usize,
}

impl WorkloadConfig {
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if !(0.0..=1.0).contains(&self.read_fraction) {
            return Err(WorkloadError::ReadFraction(self.read_fraction));
        }
        if self.value_size > net::kv::VALUE_SIZE_MAX {
            return Err(WorkloadError::ValueSize { size: self.value_size, max: net::kv::VALUE_SIZE_MAX });
        }
        KeyChooser::new(self.keys, self.distribution).map(|_| ())
    }
}

/// One connection's stream of operations.
pub struct Workload {
    rng: StdRng,
    keys: KeyChooser,
    read_fraction: f64,
    /// One random value, reused: the server stores bytes, their content does
    /// not matter, and generating them per request would cost client CPU
    /// that belongs to the server on a shared machine.
    value: Bytes,
    /// Only keys of this shard (of this many) are drawn.
    route: Option<(u32, u32)>,
}

impl Workload {
    /// A workload whose draws depend only on `config` and `seed`.
    pub fn new(config: &WorkloadConfig, keys: KeyChooser, seed: u64) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let value: Vec<u8> = (0..config.value_size).map(|_| rng.random()).collect();
        Workload { rng, keys, read_fraction: config.read_fraction, value: Bytes::from(value), route: None }
    }

    /// Draws only keys that shard `shard` of `shards` owns
    /// (`net::kv::shard_for_key`): a key drawn for another shard is drawn
    /// again, so each shard sees the key distribution restricted to its keys.
    pub fn routed(mut self, shard: u32, shards: u32) -> Workload {
        self.route = (shards > 1).then_some((shard, shards));
        self
    }

    /// The next operation: its kind and its encoded key-value command (a
    /// `Put`) or query (a `Get`), as `net::kv` defines them.
    pub fn next_op(&mut self) -> (OpKind, Bytes) {
        match self.next_key_value() {
            KeyValueOp::Get { key } => (OpKind::Read, KvOp::Get { key }.encode()),
            KeyValueOp::Put { key, value } => (OpKind::Write, KvOp::Put { key, value }.encode()),
        }
    }

    /// The next operation as a key and a value, for protocols that spell
    /// commands their own way (RESP's `SET` and `GET`): the same draws, in
    /// the same order, as [`Workload::next_op`].
    pub fn next_key_value(&mut self) -> KeyValueOp {
        let is_read = self.read_fraction > 0.0 && self.rng.random::<f64>() < self.read_fraction;
        let mut key = key_name(self.keys.sample(&mut self.rng));
        if let Some((shard, shards)) = self.route {
            while net::kv::shard_for_key(&key, shards) != shard {
                key = key_name(self.keys.sample(&mut self.rng));
            }
        }
        if is_read {
            KeyValueOp::Get { key }
        } else {
            KeyValueOp::Put { key, value: self.value.clone() }
        }
    }
}

/// One drawn operation before any protocol encodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyValueOp {
    Get { key: Bytes },
    Put { key: Bytes, value: Bytes },
}

impl KeyValueOp {
    pub fn kind(&self) -> OpKind {
        match self {
            KeyValueOp::Get { .. } => OpKind::Read,
            KeyValueOp::Put { .. } => OpKind::Write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_stays_in_range_and_favours_low_ranks() {
        let zipfian = Zipfian::new(1_000, 0.99).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u64; 1_000];
        for _ in 0..draws {
            let rank = zipfian.sample(&mut rng);
            assert!(rank < 1_000);
            counts[rank as usize] += 1;
        }
        // The generator's head is exact (ranks 0 and 1 are special-cased), so
        // their frequencies must match the distribution closely.
        for rank in [0u64, 1] {
            let expected = zipfian.probability(rank) * draws as f64;
            let found = counts[rank as usize] as f64;
            assert!((found - expected).abs() < expected * 0.05, "rank {rank}: {found} draws, expected {expected:.0}");
        }
        // The tail is an approximation: check the shape, not exact values.
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        let top_ten: u64 = counts[..10].iter().sum();
        let expected_top_ten: f64 = (0..10).map(|rank| zipfian.probability(rank)).sum::<f64>() * draws as f64;
        assert!((top_ten as f64 - expected_top_ten).abs() < expected_top_ten * 0.1, "{top_ten} vs {expected_top_ten}");
    }

    #[test]
    fn zipfian_is_reproducible_from_the_seed() {
        let zipfian = Zipfian::new(10_000, 0.8).unwrap();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..100).map(|_| zipfian.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn zipfian_edge_cases() {
        assert_eq!(Zipfian::new(0, 0.99).unwrap_err(), WorkloadError::EmptyKeySpace);
        assert_eq!(Zipfian::new(10, 1.0).unwrap_err(), WorkloadError::Theta(1.0));
        assert_eq!(Zipfian::new(10, 0.0).unwrap_err(), WorkloadError::Theta(0.0));
        let single = Zipfian::new(1, 0.99).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..1_000).all(|_| single.sample(&mut rng) == 0));
        let total: f64 = (0..100).map(|rank| Zipfian::new(100, 0.5).unwrap().probability(rank)).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn workload_mix_and_encoding() {
        let config =
            WorkloadConfig { keys: 100, distribution: Distribution::Uniform, read_fraction: 0.25, value_size: 256 };
        config.validate().unwrap();
        let keys = KeyChooser::new(config.keys, config.distribution).unwrap();
        let mut workload = Workload::new(&config, keys, 11);
        let mut reads = 0;
        for _ in 0..4_000 {
            let (kind, bytes) = workload.next_op();
            match (kind, KvOp::decode(&bytes).unwrap()) {
                (OpKind::Read, KvOp::Get { key }) => {
                    reads += 1;
                    assert_eq!(key.len(), 16);
                }
                (OpKind::Write, KvOp::Put { key, value }) => {
                    assert_eq!(key.len(), 16);
                    assert_eq!(value.len(), 256);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((800..1_200).contains(&reads), "{reads} reads of 4000 at 25%");
        let bad = WorkloadConfig { read_fraction: 1.5, ..config };
        assert_eq!(bad.validate().unwrap_err(), WorkloadError::ReadFraction(1.5));
    }
}
