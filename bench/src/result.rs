//! The result file: one JSON document per run.
//!
//! It holds everything needed to understand and redo the run (the bench
//! settings and, when a node answered the status request, the cluster's
//! status), the headline numbers (throughput, percentiles) and the full
//! latency histograms serialized as HdrHistogram V2 + deflate in base64, so
//! `bench compare` can re-plot or merge runs without loss.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cpu::CpuAccounting;
use crate::floor::Floor;
use crate::runner::RunSettings;
use crate::stats::{
    decode_histogram, encode_histogram, format_micros, format_rate, HistogramError, OpStats, Percentiles, Recorder,
    PERCENTILE_NAMES,
};

/// The `format` field of every result file this code writes; a reader
/// refuses other formats rather than misreading them.
pub const RESULT_FORMAT: &str = "raft-kv-bench-result/1";

/// Why a result file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ResultFileError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a result file (JSON): {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path} has format {found:?}; this bench reads {RESULT_FORMAT:?}")]
    Format { path: PathBuf, found: String },
    #[error("{path}: histogram of {op}: {source}")]
    Histogram { path: PathBuf, op: String, source: HistogramError },
}

/// One operation type's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpResult {
    /// Answered successfully in the measured window.
    pub count: u64,
    pub throughput_per_second: f64,
    /// From the intended send time (see [`OpStats::latency`]).
    pub latency_us: Percentiles,
    /// From the actual send time (see [`OpStats::service`]).
    pub service_us: Percentiles,
    /// The latency histogram, nanoseconds, HdrHistogram V2 + deflate, base64.
    pub histogram: String,
    /// The service-time histogram, same encoding.
    pub service_histogram: String,
}

impl OpResult {
    fn new(stats: &OpStats, measured: Duration) -> Result<OpResult, HistogramError> {
        let count = stats.latency.len();
        Ok(OpResult {
            count,
            throughput_per_second: count as f64 / measured.as_secs_f64().max(1e-9),
            latency_us: Percentiles::of(&stats.latency),
            service_us: Percentiles::of(&stats.service),
            histogram: encode_histogram(&stats.latency)?,
            service_histogram: encode_histogram(&stats.service)?,
        })
    }

    /// The latency histogram, decoded.
    pub fn latency_histogram(&self) -> Result<Histogram<u64>, HistogramError> {
        decode_histogram(&self.histogram)
    }
}

/// A run's result file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultFile {
    /// [`RESULT_FORMAT`].
    pub format: String,
    /// A short name for tables and plot legends.
    pub label: String,
    /// When the measured window started, UTC, RFC 3339.
    pub started_at: String,
    /// The load generator's settings.
    pub bench: RunSettings,
    /// The cluster's answers to the status request, by node client address
    /// (`null` where a node did not answer), or `null` if none was asked.
    pub cluster: Option<serde_json::Value>,
    /// The nodes' answers to the admin stats request after the run
    /// (counters, per-stage latency histograms), by address.
    #[serde(default)]
    pub cluster_stats: Option<serde_json::Value>,
    /// Settings of the cluster the bench started itself (`sweep`, `demo`):
    /// node count and the extra `node serve` options.
    #[serde(default)]
    pub local_cluster: Option<serde_json::Value>,
    /// The measured window's length.
    pub measured_seconds: f64,
    /// Successful operations per second over every type.
    pub throughput_per_second: f64,
    /// Every operation type together.
    pub total: OpResult,
    /// By operation type (`write`, `read`).
    pub operations: BTreeMap<String, OpResult>,
    /// Failed requests by type, in the measured window.
    pub errors: BTreeMap<String, u64>,
    /// One message per error type.
    pub error_examples: BTreeMap<String, String>,
    /// Requests answered during the warm-up (not in the histograms).
    pub warmup_completed: u64,
    /// Failed requests by type during the warm-up.
    #[serde(default)]
    pub warmup_errors: BTreeMap<String, u64>,
    /// Refusals (`not_leader`, `busy`) retried and then answered or failed,
    /// by type, in the measured window (see `Recorder::retried`).
    #[serde(default)]
    pub retried: BTreeMap<String, u64>,
    /// Throughput and latency second by second (warm-up included).
    #[serde(default)]
    pub timeline: Vec<crate::progress::TimelinePoint>,
    /// Latency unit of the histograms.
    pub histogram_unit: String,
    /// The wire protocol: `resp` for `bench run --protocol resp`; absent
    /// (the native protocol) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The machine's floor (`bench floor`), measured at the start of the run
    /// or sweep or loaded with `--floor FILE`; `bench compare` reads the
    /// run's figures as ratios to it.
    #[serde(default)]
    pub floor: Option<Floor>,
    /// The servers' CPU time over the measured window, per write.
    #[serde(default)]
    pub cpu: Option<CpuAccounting>,
}

impl ResultFile {
    /// The result of a run from what its workers recorded.
    pub fn new(
        label: String,
        bench: RunSettings,
        cluster: Option<serde_json::Value>,
        recorder: &Recorder,
        measured: Duration,
        started_at: SystemTime,
    ) -> Result<ResultFile, HistogramError> {
        let total = OpResult::new(&recorder.total(), measured)?;
        let mut operations = BTreeMap::new();
        for (op, stats) in &recorder.ops {
            operations.insert(op.as_str().to_string(), OpResult::new(stats, measured)?);
        }
        Ok(ResultFile {
            format: RESULT_FORMAT.to_string(),
            label,
            started_at: rfc3339(started_at),
            bench,
            cluster,
            cluster_stats: None,
            local_cluster: None,
            measured_seconds: measured.as_secs_f64(),
            throughput_per_second: total.throughput_per_second,
            total,
            operations,
            errors: recorder.errors.clone(),
            error_examples: recorder.error_examples.clone(),
            warmup_completed: recorder.warmup_completed,
            warmup_errors: recorder.warmup_errors.clone(),
            retried: recorder.retried.clone(),
            timeline: Vec::new(),
            histogram_unit: "ns".to_string(),
            protocol: None,
            floor: None,
            cpu: None,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ResultFileError> {
        let write_error = |source| ResultFileError::Write { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        let text = serde_json::to_string_pretty(self).expect("a result serializes");
        std::fs::write(path, text + "\n").map_err(write_error)
    }

    /// Reads a result file and checks that its histograms decode.
    pub fn load(path: &Path) -> Result<ResultFile, ResultFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ResultFileError::Read { path: path.to_path_buf(), source })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ResultFileError::Json { path: path.to_path_buf(), source })?;
        let found = value.get("format").and_then(|format| format.as_str()).unwrap_or("(none)");
        if found != RESULT_FORMAT {
            return Err(ResultFileError::Format { path: path.to_path_buf(), found: found.to_string() });
        }
        let result: ResultFile = serde_json::from_value(value)
            .map_err(|source| ResultFileError::Json { path: path.to_path_buf(), source })?;
        for (op, op_result) in
            std::iter::once(("total", &result.total)).chain(result.operations.iter().map(|(op, r)| (op.as_str(), r)))
        {
            op_result.latency_histogram().map_err(|source| ResultFileError::Histogram {
                path: path.to_path_buf(),
                op: op.to_string(),
                source,
            })?;
        }
        Ok(result)
    }

    /// The per-operation percentile table printed at the end of a run.
    pub fn percentile_table(&self) -> String {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header = vec!["op".to_string(), "count".to_string(), "ops/s".to_string()];
        header.extend(PERCENTILE_NAMES.iter().map(|name| name.to_string()));
        rows.push(header);
        let mut row = |name: &str, op: &OpResult| {
            let mut row = vec![name.to_string(), op.count.to_string(), format_rate(op.throughput_per_second)];
            // No operation, no latency: `-`, not a 0us that reads as fast.
            let latency = |micros: f64| if op.count == 0 { "-".to_string() } else { format_micros(micros) };
            row.extend(op.latency_us.values().iter().map(|&micros| latency(micros)));
            rows.push(row);
        };
        for (name, op) in &self.operations {
            row(name, op);
        }
        if self.operations.len() != 1 {
            row("all", &self.total);
        }
        let mut out = render_table(&rows);
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            let _ = write!(out, "errors:");
            for (kind, count) in &self.errors {
                let _ = write!(out, " {kind}={count}");
            }
            out.push('\n');
            for (kind, example) in &self.error_examples {
                let _ = writeln!(out, "  {kind}: {example}");
            }
        }
        if let Some(cpu) = &self.cpu {
            let per_write = cpu.cpu_us_per_write.map_or("-".to_string(), |micros| format!("{micros:.1}us"));
            let _ = writeln!(
                out,
                "server CPU: {per_write} per write ({:.2} cores busy, {} process{}, {})",
                cpu.cores_busy,
                cpu.pids.len(),
                if cpu.pids.len() == 1 { "" } else { "es" },
                cpu.source
            );
            if let (Some(resident), Some(peak)) = (cpu.resident_bytes_max, cpu.peak_resident_bytes_max) {
                let _ = writeln!(
                    out,
                    "server memory: {} MiB resident at most at the end, {} MiB at most at any time",
                    resident >> 20,
                    peak >> 20
                );
            }
        }
        if let Some(ratios) = crate::compare::FloorRatios::of(self) {
            let _ = writeln!(
                out,
                "against the floor: write p50 {:.2}x of {}, p99 {:.2}x of {}; {} of the {} write bandwidth share",
                ratios.p50_ratio,
                format_micros(ratios.p50_floor_us),
                ratios.p99_ratio,
                format_micros(ratios.p99_floor_us),
                format_percent(ratios.bandwidth_ratio),
                crate::floor::format_bandwidth(ratios.bandwidth_floor),
            );
        }
        if !self.retried.is_empty() {
            let _ = write!(out, "refused and sent again (latency counts from the first try):");
            for (kind, count) in &self.retried {
                let _ = write!(out, " {kind}={count}");
            }
            out.push('\n');
        }
        if !self.warmup_errors.is_empty() {
            let _ = write!(out, "during warm-up (not counted):");
            for (kind, count) in &self.warmup_errors {
                let _ = write!(out, " {kind}={count}");
            }
            out.push('\n');
        }
        out
    }
}

/// A share as a percentage with one decimal: `12.5%`.
pub fn format_percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Renders rows as a plain-text table: the first row is the header, the
/// first column left-aligned, the others right-aligned (they are numbers).
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().filter_map(|row| row.get(column)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (index, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column == 0 {
                let _ = write!(line, "{cell:<width$}", width = widths[0]);
            } else {
                let _ = write!(line, "  {cell:>width$}", width = widths[column]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if index == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// `time` as RFC 3339 in UTC (`2026-11-22T07:05:00Z`), without a calendar
/// crate: days since the epoch to a civil date (H. Hinnant's algorithm).
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3_600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::OpKind;

    pub(crate) fn sample_result(label: &str, scale: u64) -> ResultFile {
        let mut recorder = Recorder::default();
        for micros in 1..=1_000u64 {
            let latency = Duration::from_micros(micros * scale);
            recorder.record(OpKind::Write, latency, latency / 2);
        }
        recorder.error("busy", || "the node is overloaded".into());
        let settings = RunSettings::example();
        ResultFile::new(
            label.to_string(),
            settings,
            Some(serde_json::json!({"127.0.0.1:7101": {"role": "leader"}})),
            &recorder,
            Duration::from_secs(2),
            UNIX_EPOCH + Duration::from_secs(1_795_849_500),
        )
        .unwrap()
    }

    #[test]
    fn result_file_round_trips_with_its_histograms() {
        let result = sample_result("in-flight 16", 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/run.json");
        result.save(&path).unwrap();
        let loaded = ResultFile::load(&path).unwrap();
        assert_eq!(loaded.label, "in-flight 16");
        assert_eq!(loaded.bench, result.bench);
        assert_eq!(loaded.total.count, 1_000);
        assert_eq!(loaded.throughput_per_second, 500.0);
        assert_eq!(loaded.errors["busy"], 1);
        let histogram = loaded.operations["write"].latency_histogram().unwrap();
        assert_eq!(histogram.len(), 1_000);
        assert_eq!(Percentiles::of(&histogram), result.operations["write"].latency_us);
        assert!((loaded.total.latency_us.p99 - 990.0).abs() < 1.0);
        assert!((loaded.total.service_us.p99 - 495.0).abs() < 1.0);
    }

    #[test]
    fn load_refuses_other_formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.json");
        std::fs::write(&path, r#"{"format": "something-else/2"}"#).unwrap();
        assert!(matches!(ResultFile::load(&path), Err(ResultFileError::Format { .. })));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(ResultFile::load(&path), Err(ResultFileError::Json { .. })));
    }

    #[test]
    fn percentile_table_lists_ops_and_errors() {
        let table = sample_result("a", 1).percentile_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("op") && lines[0].contains("p99.99") && lines[0].ends_with("max"), "{table}");
        assert!(lines[2].starts_with("write") && lines[2].contains("500"), "{table}");
        assert!(table.contains("errors: busy=1"), "{table}");
        assert!(!table.contains("sent again"), "nothing was retried: {table}");
        let mut retried = sample_result("a", 1);
        retried.retried.insert("not_leader".into(), 7);
        let table = retried.percentile_table();
        assert!(table.contains("refused and sent again (latency counts from the first try): not_leader=7"), "{table}");
        // A run that completed nothing shows no latency, not 0us.
        let mut empty = sample_result("a", 1);
        empty.operations.get_mut("write").unwrap().count = 0;
        let table = empty.percentile_table();
        let write = table.lines().find(|line| line.starts_with("write")).unwrap();
        assert!(write.contains(" - ") && !write.contains("us"), "{table}");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_849_530)), "2026-11-28T07:05:30Z");
    }
}
