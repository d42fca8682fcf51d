//! Latency histograms and error counts, per operation type.
//!
//! Latencies are recorded in nanoseconds in [`hdrhistogram`] histograms with
//! three significant digits, so a result file keeps the whole distribution
//! (not only a few percentiles) and runs can be merged and re-plotted later.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The highest latency a histogram tracks: one hour. Larger values are
/// clamped to it (`saturating_record`), which a result would show as the max.
pub const LATENCY_NANOS_MAX: u64 = 3_600 * 1_000_000_000;
/// Significant digits kept: values are exact to 0.1%.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// A new empty latency histogram (nanoseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NANOS_MAX, SIGNIFICANT_DIGITS).expect("static bounds are valid")
}

/// Why a serialized histogram could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("the histogram is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("the histogram does not deserialize (expected HdrHistogram V2, deflate): {0:?}")]
    Deserialize(hdrhistogram::serialization::DeserializeError),
    #[error("cannot serialize the histogram: {0:?}")]
    Serialize(hdrhistogram::serialization::V2DeflateSerializeError),
}

/// Serializes `histogram` in HdrHistogram's V2 format with deflate, as
/// base64: the same bytes the Java and Go HdrHistogram libraries read.
pub fn encode_histogram(histogram: &Histogram<u64>) -> Result<String, HistogramError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(histogram, &mut bytes).map_err(HistogramError::Serialize)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Reads a histogram written by [`encode_histogram`].
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(HistogramError::Deserialize)
}

/// The kinds of operation the load generator issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Write,
    Read,
}

impl OpKind {
    pub const ALL: [OpKind; 2] = [OpKind::Write, OpKind::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Write => "write",
            OpKind::Read => "read",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The percentiles a result reports, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
    pub mean: f64,
}

/// The headings of [`Percentiles::values`], in order.
pub const PERCENTILE_NAMES: [&str; 6] = ["p50", "p90", "p99", "p99.9", "p99.99", "max"];

impl Percentiles {
    /// The percentiles of a nanosecond histogram, in microseconds; all zero
    /// for an empty one.
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        Percentiles {
            p50: micros(histogram.value_at_quantile(0.50)),
            p90: micros(histogram.value_at_quantile(0.90)),
            p99: micros(histogram.value_at_quantile(0.99)),
            p99_9: micros(histogram.value_at_quantile(0.999)),
            p99_99: micros(histogram.value_at_quantile(0.9999)),
            max: micros(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        }
    }

    /// The values in the order of [`PERCENTILE_NAMES`].
    pub fn values(&self) -> [f64; 6] {
        [self.p50, self.p90, self.p99, self.p99_9, self.p99_99, self.max]
    }
}

/// A latency in microseconds, printed with a unit that keeps it short:
/// `87us`, `1.24ms`, `3.50s`.
pub fn format_micros(micros: f64) -> String {
    if micros < 1_000.0 {
        format!("{micros:.0}us")
    } else if micros < 1_000_000.0 {
        format!("{:.2}ms", micros / 1_000.0)
    } else {
        format!("{:.2}s", micros / 1_000_000.0)
    }
}

/// A rate printed with thousands separators: `151,234`.
pub fn format_rate(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The latencies of one operation type.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// From the request's intended send time to its answer: what a user
    /// waiting for the operation sees, including any time the load
    /// generator could not send because earlier requests were slow (in an
    /// open loop). In a closed loop the intended time is the send time.
    pub latency: Histogram<u64>,
    /// From the moment the request was handed to the connection to its
    /// answer: the server's share alone.
    pub service: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> OpStats {
        OpStats { latency: new_histogram(), service: new_histogram() }
    }
}

/// What one worker (or the whole run, after merging) recorded during the
/// measured window.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    pub ops: BTreeMap<OpKind, OpStats>,
    /// Failed requests by type (`not_leader`, `busy`, `timed_out`, ...).
    pub errors: BTreeMap<String, u64>,
    /// One example message per error type, for the report.
    pub error_examples: BTreeMap<String, String>,
    /// Requests answered during the warm-up, not in the histograms.
    pub warmup_completed: u64,
    /// Failed requests by type during the warm-up (leader discovery shows
    /// here as `not_leader`), not in `errors`.
    pub warmup_errors: BTreeMap<String, u64>,
    /// Refusals that were retried (a `not_leader` or `busy` answer, sent
    /// again under the same session sequence), by type, in the measured
    /// window: the request's latency runs from its first intended start, so
    /// the retry shows there; only one that ran out of time is an error.
    pub retried: BTreeMap<String, u64>,
}

impl Recorder {
    pub fn record(&mut self, op: OpKind, latency: Duration, service: Duration) {
        let stats = self.ops.entry(op).or_default();
        stats.latency.saturating_record(duration_nanos(latency));
        stats.service.saturating_record(duration_nanos(service));
    }

    pub fn error(&mut self, kind: &str, example: impl FnOnce() -> String) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
        if !self.error_examples.contains_key(kind) {
            self.error_examples.insert(kind.to_string(), example());
        }
    }

    /// Adds `count` failures of one kind at once (for example every request
    /// in flight on a connection that broke).
    pub fn errors_n(&mut self, kind: &str, count: u64, example: impl FnOnce() -> String) {
        if count == 0 {
            return;
        }
        *self.errors.entry(kind.to_string()).or_default() += count;
        if !self.error_examples.contains_key(kind) {
            self.error_examples.insert(kind.to_string(), example());
        }
    }

    /// Folds another worker's recording into this one.
    pub fn merge(&mut self, other: Recorder) {
        for (op, stats) in other.ops {
            let mine = self.ops.entry(op).or_default();
            mine.latency.add(&stats.latency).expect("histograms with equal bounds add");
            mine.service.add(&stats.service).expect("histograms with equal bounds add");
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        for (kind, example) in other.error_examples {
            self.error_examples.entry(kind).or_insert(example);
        }
        self.warmup_completed += other.warmup_completed;
        for (kind, count) in other.warmup_errors {
            *self.warmup_errors.entry(kind).or_default() += count;
        }
        for (kind, count) in other.retried {
            *self.retried.entry(kind).or_default() += count;
        }
    }

    /// Every operation type's latencies in one histogram.
    pub fn total(&self) -> OpStats {
        let mut total = OpStats::default();
        for stats in self.ops.values() {
            total.latency.add(&stats.latency).expect("histograms with equal bounds add");
            total.service.add(&stats.service).expect("histograms with equal bounds add");
        }
        total
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A duration in nanoseconds, at least 1 (a histogram's lowest value).
pub fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_round_trips_through_base64_v2_deflate() {
        let mut histogram = new_histogram();
        for value in [1_000u64, 250_000, 250_000, 480_000, 2_000_000, 117_000_000] {
            histogram.record(value).unwrap();
        }
        let text = encode_histogram(&histogram).unwrap();
        let decoded = decode_histogram(&text).unwrap();
        assert_eq!(decoded.len(), histogram.len());
        assert_eq!(decoded.max(), histogram.max());
        assert_eq!(decoded.value_at_quantile(0.5), histogram.value_at_quantile(0.5));
        assert_eq!(decoded, histogram);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(decode_histogram("not base64!"), Err(HistogramError::Base64(_))));
        let text = base64::engine::general_purpose::STANDARD.encode(b"not a histogram");
        assert!(matches!(decode_histogram(&text), Err(HistogramError::Deserialize(_))));
    }

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut histogram = new_histogram();
        for micros in 1..=1_000u64 {
            histogram.record(micros * 1_000).unwrap();
        }
        let percentiles = Percentiles::of(&histogram);
        assert!((percentiles.p50 - 500.0).abs() <= 1.0, "{percentiles:?}");
        assert!((percentiles.p99 - 990.0).abs() <= 1.0, "{percentiles:?}");
        assert!((percentiles.max - 1_000.0).abs() <= 1.0, "{percentiles:?}");
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn merge_adds_counts_and_errors() {
        let mut a = Recorder::default();
        a.record(OpKind::Write, Duration::from_micros(100), Duration::from_micros(90));
        a.error("busy", || "first".into());
        let mut b = Recorder::default();
        b.record(OpKind::Write, Duration::from_micros(300), Duration::from_micros(200));
        b.record(OpKind::Read, Duration::from_micros(50), Duration::from_micros(50));
        b.error("busy", || "second".into());
        b.errors_n("connection_lost", 3, || "reset".into());
        a.merge(b);
        assert_eq!(a.ops[&OpKind::Write].latency.len(), 2);
        assert_eq!(a.ops[&OpKind::Read].latency.len(), 1);
        assert_eq!(a.total().latency.len(), 3);
        assert_eq!(a.errors["busy"], 2);
        assert_eq!(a.error_examples["busy"], "first");
        assert_eq!(a.errors_total(), 5);
    }

    #[test]
    fn formats() {
        assert_eq!(format_micros(87.4), "87us");
        assert_eq!(format_micros(1_240.0), "1.24ms");
        assert_eq!(format_micros(3_500_000.0), "3.50s");
        assert_eq!(format_rate(151_234.4), "151,234");
        assert_eq!(format_rate(999.0), "999");
        assert_eq!(format_rate(1_000.0), "1,000");
    }
}
