//! `bench report DIR`: a results directory as one self-contained HTML page.
//!
//! The page holds the comparison table, the runs against the machine's
//! floor with their servers' CPU per write, the floor itself, and three
//! charts as inline SVG: latency by percentile, latency against throughput
//! (one line per configuration across in-flight counts) and the timeline
//! (throughput and p99 second by second). It needs nothing beside itself:
//! no script, no style sheet, font or image from elsewhere, so it can be
//! mailed, attached to an issue or opened offline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::compare::{bandwidth_writers_note, compare_rows, file_system_note, floor_rows, op_result};
use crate::floor::{Floor, FLOOR_FORMAT};
use crate::plot::{
    percentiles_svg, throughput_latency_svg, timeline_svg, PlotError, Series, ThroughputLine, TimelineLine, YScale,
};
use crate::result::{ResultFile, ResultFileError, RESULT_FORMAT};
use crate::runner::LoadMode;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the directory {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no result files (bench run/sweep *.json)")]
    NoResults { path: PathBuf },
    #[error(transparent)]
    Result(#[from] ResultFileError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The charts of a set of runs, as SVG documents (`None` where nothing can
/// be drawn, such as a timeline of runs that recorded none).
pub struct Charts {
    pub percentiles: Option<String>,
    pub throughput_latency: Option<String>,
    pub timeline: Option<String>,
}

/// The chart files `bench sweep` leaves beside `compare.svg`.
pub const THROUGHPUT_LATENCY_SVG: &str = "throughput-latency.svg";
pub const TIMELINE_SVG: &str = "timeline.svg";
/// The report's default file name in the results directory.
pub const REPORT_HTML: &str = "report.html";

/// What set of settings a run belongs to, apart from its load level: runs
/// of one configuration at several in-flight counts (or rates) make one
/// line of the throughput-latency chart.
pub fn configuration(result: &ResultFile) -> String {
    let settings = &result.bench;
    let mut name = format!("value={}B", settings.workload.value_size);
    if settings.workload.read_fraction > 0.0 {
        let _ = write!(name, " reads={}%", (settings.workload.read_fraction * 100.0).round());
    }
    if let Some(protocol) = &result.protocol {
        let _ = write!(name, " {protocol}");
    }
    if let Some(options) = result.local_cluster.as_ref().and_then(|cluster| cluster.get("node_serve_extra_args")) {
        let options: Vec<&str> = options.as_array().into_iter().flatten().filter_map(|o| o.as_str()).collect();
        if !options.is_empty() {
            let _ = write!(name, " node[{}]", options.join(" "));
        }
    }
    name
}

/// The load level that orders a configuration's points.
fn load_level(result: &ResultFile) -> f64 {
    match result.bench.load {
        LoadMode::Closed { inflight } => inflight as f64,
        LoadMode::Open { rate, .. } => rate,
    }
}

/// One line per configuration: (ops/s, p50, p99) at each load level.
pub fn throughput_lines(results: &[ResultFile], op: &str) -> Vec<ThroughputLine> {
    /// A point of a configuration's line, with the load level that orders it.
    type LoadPoint = (f64, (f64, f64, f64));
    let mut groups: BTreeMap<String, Vec<LoadPoint>> = BTreeMap::new();
    for result in results {
        let Some(ops) = op_result(result, op).filter(|ops| ops.count > 0) else { continue };
        let point = (ops.throughput_per_second, ops.latency_us.p50 / 1_000.0, ops.latency_us.p99 / 1_000.0);
        groups.entry(configuration(result)).or_default().push((load_level(result), point));
    }
    groups
        .into_iter()
        .map(|(label, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            ThroughputLine { label, points: points.into_iter().map(|(_, point)| point).collect() }
        })
        .collect()
}

/// One line per run that recorded a timeline.
pub fn timeline_lines(results: &[ResultFile]) -> Vec<TimelineLine> {
    results
        .iter()
        .filter(|result| !result.timeline.is_empty())
        .map(|result| TimelineLine {
            label: result.label.clone(),
            points: result
                .timeline
                .iter()
                .map(|point| (point.end_s, point.ops_per_second, point.p99_us / 1_000.0))
                .collect(),
        })
        .collect()
}

/// Draws the three charts of `results` (operation `op`).
pub fn charts(results: &[ResultFile], op: &str) -> Result<Charts, ResultFileError> {
    let mut series = Vec::new();
    for result in results {
        let Some(ops) = op_result(result, op) else { continue };
        let histogram = ops.latency_histogram().map_err(|source| ResultFileError::Histogram {
            path: PathBuf::from(&result.label),
            op: op.to_string(),
            source,
        })?;
        series.push(Series::from_histogram(&result.label, &histogram));
    }
    let drawn = |svg: Result<String, PlotError>| match svg {
        Ok(svg) => Some(svg),
        Err(PlotError::Empty) => None,
        Err(error) => {
            eprintln!("warning: a chart could not be drawn: {error}");
            None
        }
    };
    Ok(Charts {
        percentiles: drawn(percentiles_svg(&series, &format!("Latency by percentile ({op})"), YScale::Auto)),
        throughput_latency: drawn(throughput_latency_svg(
            &throughput_lines(results, op),
            &format!("Latency against throughput ({op}; one point per in-flight count)"),
        )),
        timeline: drawn(timeline_svg(&timeline_lines(results), "Throughput and p99, second by second")),
    })
}

/// The result files and the floor file of `dir`, by file name.
pub fn load_dir(dir: &Path) -> Result<(Vec<ResultFile>, Option<Floor>), ReportError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReportError::ReadDir { path: dir.to_path_buf(), source })?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    paths.sort();
    let mut results = Vec::new();
    let mut floor = None;
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|source| ResultFileError::Read { path: path.clone(), source })?;
        let format = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| value.get("format").and_then(|format| format.as_str().map(String::from)));
        match format.as_deref() {
            Some(RESULT_FORMAT) => results.push(ResultFile::load(&path)?),
            Some(FLOOR_FORMAT) => floor = Floor::load(&path).ok(),
            _ => eprintln!("note: {} is not a result file; left out of the report", path.display()),
        }
    }
    Ok((results, floor))
}

/// Writes the report of `dir` to `out` and returns how many runs it shows.
pub fn write_report(dir: &Path, out: &Path) -> Result<usize, ReportError> {
    let (results, floor_file) = load_dir(dir)?;
    if results.is_empty() {
        return Err(ReportError::NoResults { path: dir.to_path_buf() });
    }
    let floor = floor_file.or_else(|| results.iter().find_map(|result| result.floor.clone()));
    let html = render(&dir.display().to_string(), &results, floor.as_ref())?;
    std::fs::write(out, html).map_err(|source| ReportError::Write { path: out.to_path_buf(), source })?;
    Ok(results.len())
}

/// The page.
pub fn render(title: &str, results: &[ResultFile], floor: Option<&Floor>) -> Result<String, ReportError> {
    let charts = charts(results, "all")?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>bench report: {}</title>\n\
         <style>\nbody {{ font-family: sans-serif; margin: 2em; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 1em 0; }}\n\
         th, td {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }}\n\
         th:first-child, td:first-child {{ text-align: left; }}\nth {{ background: #eee; }}\n\
         figure {{ margin: 1.5em 0; }}\nfigure svg {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}\n\
         .note {{ color: #555; }}\n</style>\n</head>\n<body>\n",
        escape(title)
    );
    let _ =
        writeln!(html, "<h1>bench report</h1>\n<p class=\"note\">{} runs from <code>{}</code>.</p>", results.len(), {
            escape(title)
        });
    html.push_str(
        "<h2>Runs</h2>\n<p class=\"note\">Latency from each request's intended send time, all operations.</p>\n",
    );
    html.push_str(&html_table("runs", &compare_rows(results, "all")));
    if let Some(rows) = floor_rows(results) {
        html.push_str(
            "<h2>Against the machine's floor</h2>\n<p class=\"note\">x floor: write latency over the floor \
             (synced write with the cluster's writers on the disk plus two loopback round trips); of floor: \
             payload bytes per second as a share of the disk's synced write bandwidth per replica; CPU/write: \
             the servers' user and system CPU time over the measured window divided by the writes; RSS max: the \
             largest resident set among the servers at the window's end.</p>\n",
        );
        html.push_str(&html_table("floor-ratios", &rows));
        for note in [file_system_note(results), bandwidth_writers_note(results)] {
            if !note.is_empty() {
                let _ = writeln!(html, "<pre class=\"note\">{}</pre>", escape(note.trim()));
            }
        }
    }
    if let Some(floor) = floor {
        let _ =
            writeln!(html, "<h2>Floor</h2>\n<p class=\"note\">Measured {} in {}.</p>", escape(&floor.measured_at), {
                escape(&floor.dir.display().to_string())
            });
        let _ = writeln!(html, "<pre id=\"floor\">{}</pre>", escape(&floor.table()));
    }
    html.push_str("<h2>Charts</h2>\n");
    let series_count = |count: usize| count.to_string();
    figure(
        &mut html,
        "chart-percentiles",
        "Latency by percentile: one line per run.",
        charts.percentiles.as_deref(),
        &series_count(results.len()),
    );
    figure(
        &mut html,
        "chart-throughput-latency",
        "Latency against throughput: p50 (thick) and p99 (thin) per configuration, one point per load level.",
        charts.throughput_latency.as_deref(),
        &series_count(2 * throughput_lines(results, "all").len()),
    );
    figure(
        &mut html,
        "chart-timeline",
        "Throughput (top) and p99 (bottom) second by second, warm-up included.",
        charts.timeline.as_deref(),
        &series_count(timeline_lines(results).len()),
    );
    html.push_str("<h2>Settings</h2>\n");
    let mut rows = vec![["run", "protocol", "load", "value", "reads", "connections", "measured", "errors"]
        .iter()
        .map(|cell| cell.to_string())
        .collect::<Vec<_>>()];
    for result in results {
        let load = match result.bench.load {
            LoadMode::Closed { inflight } => format!("closed, {inflight} in flight"),
            LoadMode::Open { rate, inflight_max } => format!("open, {rate}/s (at most {inflight_max})"),
        };
        let errors: Vec<String> = result.errors.iter().map(|(kind, count)| format!("{kind}={count}")).collect();
        rows.push(vec![
            result.label.clone(),
            result.protocol.clone().unwrap_or_else(|| "native".into()),
            load,
            format!("{} B", result.bench.workload.value_size),
            format!("{:.0}%", result.bench.workload.read_fraction * 100.0),
            result.bench.connections.to_string(),
            format!("{:.1} s from {}", result.measured_seconds, result.started_at),
            if errors.is_empty() { "none".into() } else { errors.join(" ") },
        ]);
    }
    html.push_str(&html_table("settings", &rows));
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

fn figure(html: &mut String, id: &str, caption: &str, svg: Option<&str>, series: &str) {
    match svg {
        Some(svg) => {
            let _ = writeln!(
                html,
                "<figure id=\"{id}\" data-series=\"{series}\">\n<figcaption>{}</figcaption>\n{}\n</figure>",
                escape(caption),
                strip_xml_declaration(svg)
            );
        }
        None => {
            let _ = writeln!(html, "<p id=\"{id}\" class=\"note\">{} (nothing to draw)</p>", escape(caption));
        }
    }
}

/// An SVG document's text, without an XML declaration (not allowed inside
/// HTML).
fn strip_xml_declaration(svg: &str) -> &str {
    match svg.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or(svg, |(_, body)| body.trim_start()),
        None => svg,
    }
}

fn html_table(id: &str, rows: &[Vec<String>]) -> String {
    let mut html = format!("<table id=\"{id}\">\n");
    for (index, row) in rows.iter().enumerate() {
        let cell = if index == 0 { "th" } else { "td" };
        html.push_str("<tr>");
        for value in row {
            let _ = write!(html, "<{cell}>{}</{cell}>", escape(value));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::tests::sample_result;

    #[test]
    fn the_page_is_self_contained_and_escapes_labels() {
        let mut results = vec![sample_result("in-flight 1 <a>", 1), sample_result("in-flight 16", 3)];
        results[1].bench.load = LoadMode::Closed { inflight: 16 };
        let html = render("dir & co", &results, None).unwrap();
        assert!(html.contains("in-flight 1 &lt;a&gt;") && html.contains("dir &amp; co"));
        // Nothing loaded from elsewhere (SVG's xmlns is a name, not a load).
        for outside in ["<a>", "<script", "<link", "src=", "href=", "url(", "@import"] {
            assert!(!html.contains(outside), "{outside} in {html}");
        }
        assert_eq!(html.matches("<svg").count(), 2, "percentiles and throughput (no timeline recorded)");
        assert!(html.contains("id=\"chart-timeline\" class=\"note\""));
    }

    /// Runs whose floors differ in what they measured say so on the page,
    /// as `bench compare` does under its table.
    #[test]
    fn floors_of_different_writer_counts_are_pointed_out() {
        let mut results = vec![sample_result("before", 1), sample_result("after", 1)];
        for result in &mut results {
            result.floor = Some(crate::floor::sample_floor());
        }
        let html = render("runs", &results, None).unwrap();
        assert!(html.contains("id=\"floor-ratios\"") && !html.contains("different numbers of writers"), "{html}");
        results[0].floor.as_mut().unwrap().write_bandwidth_writers = 1;
        let html = render("runs", &results, None).unwrap();
        assert!(html.contains("different numbers of writers") && html.contains("before: 1 writer"), "{html}");
    }

    #[test]
    fn a_configuration_is_one_line_ordered_by_load() {
        let mut results = vec![sample_result("b", 2), sample_result("a", 1)];
        results[0].bench.load = LoadMode::Closed { inflight: 64 };
        results[1].bench.load = LoadMode::Closed { inflight: 1 };
        let lines = throughput_lines(&results, "all");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].label, "value=256B");
        // The 1-in-flight run first, whatever the file order.
        assert!(lines[0].points[0].1 < lines[0].points[1].1, "{lines:?}");
    }
}
