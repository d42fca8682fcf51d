//! `bench compare`: several result files side by side.

use std::path::{Path, PathBuf};

use crate::floor::format_bandwidth;
use crate::plot::{plot_percentiles, PlotError, Series, YScale};
use crate::result::{format_percent, render_table, OpResult, ResultFile, ResultFileError};
use crate::stats::{format_micros, format_rate, PERCENTILE_NAMES};

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Result(#[from] ResultFileError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("{path} has no {op} operations (it has: {available})")]
    MissingOp { path: PathBuf, op: String, available: String },
}

/// Which operations a comparison looks at: `all` (every type merged),
/// `write` or `read`.
pub fn op_result<'a>(result: &'a ResultFile, op: &str) -> Option<&'a OpResult> {
    if op == "all" {
        Some(&result.total)
    } else {
        result.operations.get(op)
    }
}

/// The side-by-side table: one row per run, throughput and percentiles of
/// operation `op` in columns.
pub fn compare_table(results: &[ResultFile], op: &str) -> String {
    render_table(&compare_rows(results, op))
}

/// The rows of [`compare_table`], header first.
pub fn compare_rows(results: &[ResultFile], op: &str) -> Vec<Vec<String>> {
    let mut header: Vec<String> = vec!["run".into(), "ops/s".into()];
    header.extend(PERCENTILE_NAMES.iter().map(|name| name.to_string()));
    header.push("errors".into());
    let mut rows = vec![header];
    for result in results {
        let mut row = vec![result.label.clone()];
        match op_result(result, op) {
            Some(op_result) => {
                row.push(format_rate(op_result.throughput_per_second));
                row.extend(op_result.latency_us.values().iter().map(|&micros| format_micros(micros)));
            }
            None => row.extend(std::iter::repeat_n("-".to_string(), 1 + PERCENTILE_NAMES.len())),
        }
        row.push(result.errors.values().sum::<u64>().to_string());
        rows.push(row);
    }
    rows
}

/// A run's figures as ratios to the machine's floor recorded with it
/// (`bench/README.md`, "Ratios to the floor", has the formulas).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloorRatios {
    /// Synced write with the cluster's writers on the disk plus two loopback
    /// round trips, p50 and p99.
    pub p50_floor_us: f64,
    pub p99_floor_us: f64,
    /// The run's write latency over the floor: 1 is the floor itself.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// Payload bytes written per second: writes/s times the value size.
    pub write_bytes_per_second: f64,
    /// The disk's synced write bandwidth over the replicas sharing it.
    pub bandwidth_floor: f64,
    /// The share of the bandwidth floor the run used: 1 is all of it.
    pub bandwidth_ratio: f64,
}

impl FloorRatios {
    /// The ratios of `result`'s writes (all operations if it has none), if
    /// it recorded a floor.
    pub fn of(result: &ResultFile) -> Option<FloorRatios> {
        let floor = result.floor.as_ref()?;
        let writes = result.operations.get("write").unwrap_or(&result.total);
        if writes.count == 0 {
            return None;
        }
        let (p50_floor_us, p99_floor_us) = floor.write_latency_us();
        let write_bytes_per_second = writes.throughput_per_second * result.bench.workload.value_size as f64;
        let bandwidth_floor = floor.write_bandwidth_share();
        let ratio = |value: f64, floor: f64| if floor > 0.0 { value / floor } else { f64::NAN };
        Some(FloorRatios {
            p50_floor_us,
            p99_floor_us,
            p50_ratio: ratio(writes.latency_us.p50, p50_floor_us),
            p99_ratio: ratio(writes.latency_us.p99, p99_floor_us),
            write_bytes_per_second,
            bandwidth_floor,
            bandwidth_ratio: ratio(write_bytes_per_second, bandwidth_floor),
        })
    }
}

/// The runs against their floors and their servers' CPU per write: one row
/// per run; `None` if no run recorded a floor or CPU time.
pub fn floor_table(results: &[ResultFile]) -> Option<String> {
    floor_rows(results).map(|rows| render_table(&rows))
}

/// The rows of [`floor_table`], header first.
pub fn floor_rows(results: &[ResultFile]) -> Option<Vec<Vec<String>>> {
    if results.iter().all(|result| result.floor.is_none() && result.cpu.is_none()) {
        return None;
    }
    let header = [
        "run",
        "write p50",
        "floor",
        "x floor",
        "write p99",
        "floor",
        "x floor",
        "payload",
        "floor/replica",
        "of floor",
        "CPU/write",
        "RSS max",
    ];
    let mut rows = vec![header.iter().map(|name| name.to_string()).collect::<Vec<_>>()];
    for result in results {
        let mut row = vec![result.label.clone()];
        match FloorRatios::of(result) {
            Some(ratios) => {
                let writes = result.operations.get("write").unwrap_or(&result.total);
                row.extend([
                    format_micros(writes.latency_us.p50),
                    format_micros(ratios.p50_floor_us),
                    format!("{:.2}", ratios.p50_ratio),
                    format_micros(writes.latency_us.p99),
                    format_micros(ratios.p99_floor_us),
                    format!("{:.2}", ratios.p99_ratio),
                    format_bandwidth(ratios.write_bytes_per_second),
                    format_bandwidth(ratios.bandwidth_floor),
                    format_percent(ratios.bandwidth_ratio),
                ]);
            }
            None => row.extend(std::iter::repeat_n("-".to_string(), 9)),
        }
        row.push(
            result
                .cpu
                .as_ref()
                .and_then(|cpu| cpu.cpu_us_per_write)
                .map_or("-".to_string(), |micros| format!("{micros:.1}us")),
        );
        row.push(
            result
                .cpu
                .as_ref()
                .and_then(|cpu| cpu.resident_bytes_max)
                .map_or("-".to_string(), |bytes| format!("{} MiB", bytes >> 20)),
        );
        rows.push(row);
    }
    Some(rows)
}

/// Loads `paths`, and gives the table and, if `svg` is set, writes the plot.
pub fn compare_files(paths: &[PathBuf], op: &str, svg: Option<&Path>, y_scale: YScale) -> Result<String, CompareError> {
    let mut results = paths.iter().map(|path| ResultFile::load(path)).collect::<Result<Vec<_>, _>>()?;
    // Runs with equal labels are told apart by their file names.
    let labels: Vec<String> = results.iter().map(|result| result.label.clone()).collect();
    for (path, result) in paths.iter().zip(&mut results) {
        if labels.iter().filter(|label| **label == result.label).count() > 1 {
            let stem = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
            result.label = format!("{} ({stem})", result.label);
        }
    }
    for (path, result) in paths.iter().zip(&results) {
        if op_result(result, op).is_none() {
            let available = result.operations.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(CompareError::MissingOp { path: path.clone(), op: op.to_string(), available });
        }
    }
    if let Some(svg) = svg {
        plot_results(&results, op, y_scale, svg)?;
    }
    let mut table = compare_table(&results, op);
    if let Some(floors) = floor_table(&results) {
        table.push_str(
            "\nagainst the machine's floor (x floor: latency over the floor; of floor: share of the bandwidth):\n",
        );
        table.push_str(&floors);
    }
    table.push_str(&file_system_note(&results));
    table.push_str(&bandwidth_writers_note(&results));
    Ok(table)
}

/// A note when the runs' floors were measured on different file systems
/// (their ratios then compare machines as much as configurations); empty
/// otherwise.
pub fn file_system_note(results: &[ResultFile]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for result in results {
        let Some(floor) = &result.floor else { continue };
        if !floor.file_system.is_empty() && !seen.contains(&floor.file_system.as_str()) {
            seen.push(&floor.file_system);
        }
    }
    if seen.len() < 2 {
        return String::new();
    }
    let mut note = String::from("\nnote: the floors were measured on different file systems:\n");
    for result in results {
        if let Some(floor) = result.floor.as_ref().filter(|floor| !floor.file_system.is_empty()) {
            note.push_str(&format!("  {}: {}\n", result.label, floor.file_system));
        }
    }
    note
}

/// A note when the runs' bandwidth floors were measured with different
/// writer counts: floors recorded before 2026-12-07 measured the synced
/// sequential write with one writer, later ones with the cluster's N at
/// once (1.0-1.7x higher on that day's disk), so their `of floor` ratios do
/// not compare; empty otherwise.
pub fn bandwidth_writers_note(results: &[ResultFile]) -> String {
    let counts: Vec<(&str, usize)> = results
        .iter()
        .filter_map(|result| result.floor.as_ref().map(|floor| (result.label.as_str(), floor.write_bandwidth_writers)))
        .collect();
    if counts.iter().all(|&(_, count)| count == counts[0].1) {
        return String::new();
    }
    let mut note = String::from(
        "\nnote: the bandwidth floors were measured with different numbers of writers (one writer before \
         2026-12-07), so their `of floor` ratios do not compare:\n",
    );
    for (label, count) in counts {
        note.push_str(&format!("  {label}: {count} writer{}\n", if count == 1 { "" } else { "s" }));
    }
    note
}

/// Writes the percentile-distribution plot of `results` to `svg`.
pub fn plot_results(results: &[ResultFile], op: &str, y_scale: YScale, svg: &Path) -> Result<(), CompareError> {
    let mut series = Vec::new();
    for result in results {
        let Some(op_result) = op_result(result, op) else { continue };
        let histogram = op_result.latency_histogram().map_err(|source| ResultFileError::Histogram {
            path: PathBuf::from(&result.label),
            op: op.to_string(),
            source,
        })?;
        series.push(Series::from_histogram(&result.label, &histogram));
    }
    plot_percentiles(&series, &format!("Latency by percentile ({op})"), y_scale, svg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::YScale;
    use crate::result::tests::sample_result;

    #[test]
    fn table_has_one_row_per_run_in_order() {
        let results = vec![sample_result("in-flight 1", 1), sample_result("in-flight 256", 4)];
        let table = compare_table(&results, "all");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("run") && lines[0].contains("ops/s") && lines[0].contains("p99.9"), "{table}");
        assert!(lines[1].chars().all(|c| c == '-'));
        assert!(lines[2].starts_with("in-flight 1 ") && lines[2].contains("500us") && lines[2].contains("1.00ms"));
        // The second run's latencies are four times the first's.
        assert!(lines[3].starts_with("in-flight 256") && lines[3].contains("2.00ms") && lines[3].contains("4.00ms"));
        // Columns line up: every line is as wide as the rule under the header.
        assert_eq!(lines[0].len(), lines[3].len(), "{table}");
        let reads = compare_table(&results, "read");
        assert!(reads.lines().nth(2).unwrap().contains(" - "), "{reads}");
    }

    #[test]
    fn floor_ratios_follow_the_documented_formulas() {
        use crate::floor::LatencyFloor;
        let latency = |p50_us, p99_us| LatencyFloor { count: 1, ops_per_second: 1.0, p50_us, p99_us, mean_us: p50_us };
        let mut result = sample_result("in-flight 1", 1);
        assert_eq!(FloorRatios::of(&result), None);
        assert_eq!(floor_table(std::slice::from_ref(&result)), None);
        let mut floor = crate::floor::sample_floor();
        floor.synced_write_n = latency(300.0, 800.0);
        floor.loopback_round_trip = latency(50.0, 100.0);
        (floor.write_bytes_per_second, floor.read_bytes_per_second) = (3e6, 6e6);
        result.floor = Some(floor);
        // 1,000 writes of 1..=1000 us over 2 s, 256-byte values.
        let ratios = FloorRatios::of(&result).unwrap();
        assert_eq!((ratios.p50_floor_us, ratios.p99_floor_us), (400.0, 1_000.0));
        assert!((ratios.p50_ratio - 500.0 / 400.0).abs() < 0.01, "{ratios:?}");
        assert!((ratios.p99_ratio - 0.99).abs() < 0.01, "{ratios:?}");
        assert_eq!(ratios.write_bytes_per_second, 500.0 * 256.0);
        assert_eq!(ratios.bandwidth_floor, 1e6);
        assert!((ratios.bandwidth_ratio - 0.128).abs() < 1e-9);
        let table = floor_table(std::slice::from_ref(&result)).unwrap();
        assert!(table.lines().nth(2).unwrap().contains("1.25") && table.contains("12.8%"), "{table}");
        // Floors from two file systems are pointed out; from one, not.
        let mut other = result.clone();
        other.label = "other machine".into();
        assert_eq!(file_system_note(&[result.clone(), other.clone()]), "");
        let floor = |result: &mut ResultFile, text: &str| result.floor.as_mut().unwrap().file_system = text.into();
        floor(&mut result, "ext4 on /dev/vda (mounted at /), no journal");
        floor(&mut other, "xfs on /dev/nvme0n1 (mounted at /data)");
        let note = file_system_note(&[result.clone(), other.clone()]);
        assert!(note.contains("different file systems") && note.contains("in-flight 1: ext4"), "{note}");
        assert!(note.contains("other machine: xfs"), "{note}");
        floor(&mut other, "ext4 on /dev/vda (mounted at /), no journal");
        assert_eq!(file_system_note(&[result.clone(), other.clone()]), "");
        // So are bandwidth floors of one writer (before 2026-12-07) beside
        // ones of the cluster's writers.
        assert_eq!(bandwidth_writers_note(&[result.clone(), other.clone()]), "");
        other.floor.as_mut().unwrap().write_bandwidth_writers = 1;
        let note = bandwidth_writers_note(&[result, other]);
        assert!(note.contains("different numbers of writers"), "{note}");
        assert!(note.contains("in-flight 1: 3 writers") && note.contains("other machine: 1 writer\n"), "{note}");
    }

    #[test]
    fn compare_files_writes_table_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(index, label)| {
                let path = dir.path().join(format!("{label}.json"));
                sample_result(label, index as u64 + 1).save(&path).unwrap();
                path
            })
            .collect();
        let svg = dir.path().join("plot.svg");
        let table = compare_files(&paths, "write", Some(&svg), YScale::Linear).unwrap();
        assert_eq!(table.lines().count(), 4);
        let drawing = std::fs::read_to_string(&svg).unwrap();
        assert!(drawing.starts_with("<svg") && drawing.contains("99.9%") && drawing.contains("\nb\n"), "{drawing}");
        assert!(matches!(compare_files(&paths, "read", None, YScale::Auto), Err(CompareError::MissingOp { .. })));
    }
}
