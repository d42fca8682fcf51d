//! `bench compare`: several result files side by side.

use std::path::{Path, PathBuf};

use crate::plot::{plot_percentiles, PlotError, Series, YScale};
use crate::result::{render_table, OpResult, ResultFile, ResultFileError};
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
    render_table(&rows)
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
    Ok(compare_table(&results, op))
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
