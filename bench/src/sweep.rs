//! `bench sweep` and `bench demo`: runs over a matrix of settings against a
//! local cluster the bench starts itself, ending in a comparison.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::cluster::{ClusterError, ClusterSpec, LocalCluster, LOCAL_CLUSTER_ID, LOCAL_TOKEN};
use crate::compare::{compare_table, floor_table, plot_results, CompareError};
use crate::cpu::WindowSampler;
use crate::floor::Floor;
use crate::plot::write_svg;
use crate::progress::ProgressStyleKind;
use crate::report::{charts, render, REPORT_HTML, THROUGHPUT_LATENCY_SVG, TIMELINE_SVG};
use crate::result::{ResultFile, ResultFileError};
use crate::runner::{run, LoadMode, RunError, RunOptions, RunSettings};
use crate::signal;

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Result(#[from] ResultFileError),
    #[error(transparent)]
    Compare(#[from] CompareError),
    #[error(transparent)]
    Report(Box<crate::report::ReportError>),
    #[error("stopped by a signal after {0} runs")]
    Interrupted(usize),
}

impl SweepPlan {
    /// The settings of the run with `inflight` requests of `value_size`
    /// bytes against `addrs`.
    fn run_settings(&self, addrs: Vec<String>, value_size: usize, inflight: usize) -> RunSettings {
        let mut settings = self.base.clone();
        settings.addrs = addrs;
        settings.cluster_id = LOCAL_CLUSTER_ID;
        settings.workload.value_size = value_size;
        settings.load = LoadMode::Closed { inflight };
        // (At least one, so that `--inflight 0` is refused for what it is.)
        settings.connections = self.base.connections.min(inflight.max(1));
        settings
    }
}

/// The matrix: every in-flight count × value size × node option.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    /// Settings shared by every run; `addrs`, `load` and the value size are
    /// set per run.
    pub base: RunSettings,
    pub inflight: Vec<usize>,
    pub value_sizes: Vec<usize>,
    /// Extra `node serve` arguments, one cluster per entry (empty: defaults).
    pub node_options: Vec<Vec<String>>,
    /// Whether each cluster runs TLS: one cluster per node option and mode
    /// (`[false, true]` measures what TLS costs in one run).
    pub tls_modes: Vec<bool>,
    /// Shards per node: one cluster per count, node option and mode
    /// (`[1, 2, 4]` compares shard counts in one run); `cluster.shards` is
    /// replaced by each.
    pub shard_counts: Vec<u32>,
    pub cluster: ClusterSpec,
    /// Where result files, the comparison and the plot go.
    pub out_dir: PathBuf,
    pub progress: ProgressStyleKind,
    /// Print each run's percentile table as it ends.
    pub print_each: bool,
    /// The machine's floor, recorded in every result and saved as
    /// `floor.json` beside them.
    pub floor: Option<Floor>,
}

/// What a sweep produced.
pub struct SweepOutcome {
    pub results: Vec<ResultFile>,
    pub table: String,
    pub plot: Option<PathBuf>,
    /// The HTML report of the sweep (`bench report` of its directory).
    pub report: PathBuf,
}

/// Runs the matrix: for each node option a fresh cluster, then every
/// in-flight count and value size against it.
pub fn sweep(plan: &SweepPlan) -> Result<SweepOutcome, SweepError> {
    // Every run's settings are checked before a cluster is started: a bad
    // one (`--inflight 0`) failed only after the first cluster was up.
    for &value_size in &plan.value_sizes {
        for &inflight in &plan.inflight {
            plan.run_settings(vec!["127.0.0.1:1".to_string()], value_size, inflight).validate()?;
        }
    }
    std::fs::create_dir_all(&plan.out_dir)
        .map_err(|source| ResultFileError::Write { path: plan.out_dir.clone(), source })?;
    let mut results = Vec::new();
    let clusters = plan.shard_counts.iter().flat_map(|&shards| {
        plan.node_options.iter().flat_map(move |option| plan.tls_modes.iter().map(move |&tls| (shards, option, tls)))
    });
    for (shards, node_option, tls) in clusters {
        let spec = ClusterSpec { extra_args: node_option.clone(), tls, shards, ..plan.cluster.clone() };
        eprintln!(
            "starting a {}-node {} cluster with {shards} shard{}{} ...",
            spec.nodes,
            if tls { "TLS" } else { "plaintext" },
            if shards == 1 { "" } else { "s" },
            if node_option.is_empty() { String::new() } else { format!(" and `{}`", node_option.join(" ")) }
        );
        let mut cluster = LocalCluster::start(spec)?;
        cluster.wait_ready(Duration::from_secs(30))?;
        eprintln!("cluster ready: {:?} (data and logs in {})", cluster.client_addrs(), cluster.path().display());
        for &value_size in &plan.value_sizes {
            for &inflight in &plan.inflight {
                if signal::stop_requested() {
                    return Err(SweepError::Interrupted(results.len()));
                }
                let addrs = cluster.client_addrs().iter().map(ToString::to_string).collect();
                let settings = plan.run_settings(addrs, value_size, inflight);
                let mut label = format!("inflight={inflight} value={value_size}B");
                if plan.node_options.len() > 1 {
                    let option = if node_option.is_empty() { "defaults".to_string() } else { node_option.join(" ") };
                    label.push_str(&format!(" node[{option}]"));
                }
                if plan.tls_modes.len() > 1 {
                    label.push_str(if tls { " tls=on" } else { " tls=off" });
                }
                if plan.shard_counts.len() > 1 {
                    label.push_str(&format!(" shards={shards}"));
                }
                let options = RunOptions {
                    settings,
                    // With TLS the bench's certificate authenticates it.
                    token: if tls { Bytes::new() } else { Bytes::from_static(LOCAL_TOKEN.as_bytes()) },
                    tls: cluster.client_tls().cloned(),
                    label: label.clone(),
                    progress: plan.progress,
                    fetch_status: true,
                };
                let sampler = WindowSampler::for_run(cluster.pids(), "local cluster", &options.settings);
                let mut result = run(&options)?;
                cluster.check_alive()?;
                result.floor = plan.floor.clone();
                let writes = result.operations.get("write").map_or(0, |writes| writes.count);
                match sampler.finish(writes) {
                    Ok(cpu) => result.cpu = Some(cpu),
                    Err(error) => eprintln!("warning: no CPU accounting for {label}: {error}"),
                }
                result.local_cluster = Some(serde_json::json!({
                    "nodes": plan.cluster.nodes,
                    "shards": shards,
                    "node_serve_extra_args": node_option,
                    "tls": tls,
                    "node_binary": plan.cluster.node_binary,
                }));
                let file = plan.out_dir.join(format!("{:02}-{}.json", results.len() + 1, file_stem(&label)));
                result.save(&file)?;
                if plan.print_each {
                    println!("\n{label}  ({})\n{}", file.display(), result.percentile_table());
                } else {
                    eprintln!(
                        "{label}: {} ops/s, p50 {}, p99 {}",
                        crate::stats::format_rate(result.throughput_per_second),
                        crate::stats::format_micros(result.total.latency_us.p50),
                        crate::stats::format_micros(result.total.latency_us.p99),
                    );
                }
                results.push(result);
                if signal::stop_requested() {
                    return Err(SweepError::Interrupted(results.len()));
                }
            }
        }
        cluster.stop();
    }
    let mut table = compare_table(&results, "all");
    if let Some(floors) = floor_table(&results) {
        table.push_str(
            "\nagainst the machine's floor (x floor: latency over the floor; of floor: share of the bandwidth):\n",
        );
        table.push_str(&floors);
    }
    let svg = plan.out_dir.join("compare.svg");
    let plot = match plot_results(&results, "all", crate::plot::YScale::Auto, &svg) {
        Ok(()) => Some(svg),
        Err(error) => {
            eprintln!("warning: no plot: {error}");
            None
        }
    };
    std::fs::write(plan.out_dir.join("compare.txt"), &table)
        .map_err(|source| ResultFileError::Write { path: plan.out_dir.join("compare.txt"), source })?;
    if let Some(floor) = &plan.floor {
        if let Err(error) = floor.save(&plan.out_dir.join("floor.json")) {
            eprintln!("warning: {error}");
        }
    }
    let charts = charts(&results, "all")?;
    for (name, svg) in [(THROUGHPUT_LATENCY_SVG, &charts.throughput_latency), (TIMELINE_SVG, &charts.timeline)] {
        if let Some(svg) = svg {
            write_svg(&plan.out_dir.join(name), svg).map_err(CompareError::from)?;
        }
    }
    let report = plan.out_dir.join(REPORT_HTML);
    let html = render(&plan.out_dir.display().to_string(), &results, plan.floor.as_ref())
        .map_err(|error| SweepError::Report(Box::new(error)))?;
    std::fs::write(&report, html).map_err(|source| ResultFileError::Write { path: report.clone(), source })?;
    Ok(SweepOutcome { results, table, plot, report })
}

/// A label as a file name: letters, digits, `-`, `_`, `.` and `=` kept.
pub fn file_stem(label: &str) -> String {
    let stem: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.=".contains(c) { c } else { '_' }).collect();
    stem.chars().take(80).collect()
}

/// A directory of its own for a sweep's files, under `parent`.
pub fn default_out_dir(parent: &Path, kind: &str) -> PathBuf {
    let stamp = crate::result::rfc3339(std::time::SystemTime::now()).replace([':', '-'], "");
    parent.join(format!("{kind}-{stamp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(
            file_stem("inflight=16 value=256B node[--batch-bytes-max 4096]"),
            "inflight=16_value=256B_node_--batch-bytes-max_4096_"
        );
        assert_eq!(file_stem("../etc/passwd"), ".._etc_passwd");
    }

    /// A run that cannot be made is refused before any cluster starts (the
    /// node binary here does not exist: reaching it would fail otherwise),
    /// with the run's own reason.
    #[test]
    fn bad_settings_are_refused_before_a_cluster_starts() {
        let out_dir = std::env::temp_dir().join(format!("bench-sweep-refused-{}", std::process::id()));
        let plan = SweepPlan {
            base: RunSettings::example(),
            inflight: vec![1, 0],
            value_sizes: vec![256],
            node_options: vec![Vec::new()],
            tls_modes: vec![false],
            shard_counts: vec![1],
            cluster: ClusterSpec::three_nodes(PathBuf::from("/nonexistent/node")),
            out_dir: out_dir.clone(),
            progress: ProgressStyleKind::Quiet,
            print_each: false,
            floor: None,
        };
        match sweep(&plan) {
            Err(SweepError::Run(RunError::Settings(reason))) => assert!(reason.contains("in-flight"), "{reason}"),
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a sweep with --inflight 0 ran"),
        }
        assert!(!out_dir.exists(), "the results directory was made for a refused sweep");
    }
}
