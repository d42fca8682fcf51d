//! `bench`: the load generator of the Raft key-value node.
//!
//! - `bench run`: load against a running cluster, a result file and a
//!   percentile table;
//! - `bench compare A.json B.json ...`: a side-by-side table and an SVG plot;
//! - `bench sweep`: a matrix of settings against a local cluster it starts;
//! - `bench demo`: a local three-node cluster, a short load, the table;
//! - `bench floor`: this machine's limits (synced writes, disk bandwidth,
//!   loopback round trip), which runs record and comparisons divide by;
//! - `bench report DIR`: a results directory as one self-contained HTML page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bench::cluster::{find_node_binary, ClusterSpec};
use bench::compare::compare_files;
use bench::cpu::{pids_for_addrs, WindowSampler};
use bench::floor::{measure, Floor, FloorOptions};
use bench::plot::YScale;
use bench::progress::ProgressStyleKind;
use bench::runner::{run, Consistency, LoadMode, RunOptions, RunSettings};
use bench::sweep::{default_out_dir, file_stem, sweep, SweepPlan};
use bench::workload::{Distribution, WorkloadConfig};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator for the Raft key-value node: latency percentiles and
/// throughput, result files, comparisons and plots.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load against a running cluster and write a result file.
    Run(RunArgs),
    /// Compare result files: a side-by-side table and an SVG percentile plot.
    Compare(CompareArgs),
    /// Run a matrix of settings against a local cluster started for it.
    Sweep(SweepArgs),
    /// Start a local three-node cluster, run a short load, print the
    /// percentiles, clean up.
    Demo(DemoArgs),
    /// Measure this machine's floor: synced 4 KiB direct writes (1 and N
    /// writers), synced sequential write and direct read bandwidth, the
    /// loopback round trip.
    Floor(FloorArgs),
    /// Write a results directory as one self-contained HTML page (tables and
    /// charts).
    Report(ReportArgs),
}

/// Whether and how a run records the machine's floor.
#[derive(Clone, Debug, Args)]
struct FloorChoice {
    /// Use this floor file (from `bench floor --out`) instead of measuring
    /// the floor at the start.
    #[arg(long, conflicts_with = "no_floor")]
    floor: Option<PathBuf>,
    /// Record no floor (saves the 3-4 s it takes to measure).
    #[arg(long)]
    no_floor: bool,
    /// Where to measure the floor: a directory on the disk the servers
    /// write to. [default: the system's temporary directory, where the
    /// bench's local clusters keep their data]
    #[arg(long)]
    floor_dir: Option<PathBuf>,
}

impl FloorChoice {
    /// The floor to record: loaded, measured (with `writers` concurrent
    /// writers) or none.
    fn obtain(&self, writers: usize) -> Result<Option<Floor>, String> {
        if self.no_floor {
            return Ok(None);
        }
        if let Some(path) = &self.floor {
            let floor = Floor::load(path).map_err(|error| error.to_string())?;
            let age = std::fs::metadata(path).and_then(|meta| meta.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|age| age > Duration::from_secs(3_600)) {
                eprintln!(
                    "warning: the floor in {} was measured over an hour ago ({}); a shared machine's disk moves by 2x \
                     from hour to hour",
                    path.display(),
                    floor.measured_at
                );
            }
            return Ok(Some(floor));
        }
        eprintln!("measuring this machine's floor (3-4 s; --floor FILE reuses one, --no-floor skips it) ...");
        let options = FloorOptions { dir: self.floor_dir.clone(), writers, ..FloorOptions::default() };
        let floor = measure(&options).map_err(|error| error.to_string())?;
        eprint!("{}", floor.table());
        Ok(Some(floor))
    }
}

/// The wire protocol of `bench run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// The node's own client protocol (`net/PROTOCOL.md`).
    Native,
    /// The Redis protocol: `SET key value` and `GET key`, against
    /// `redis-server` or the node's RESP front door.
    Resp,
}

#[derive(Debug, Args)]
struct FloorArgs {
    /// A directory on the file system to measure. [default: the system's
    /// temporary directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Concurrent writers of the second case and of the bandwidth case: the nodes sharing the disk.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Seconds of each of the five timed cases.
    #[arg(long, default_value_t = 0.6)]
    case_seconds: f64,
    /// The floor file. [default: bench-results/floor-TIME.json]
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// A directory of result files (`bench sweep --out-dir`, or `bench run
    /// --out` files gathered in one place), with an optional floor file.
    dir: PathBuf,
    /// The HTML file. [default: DIR/report.html]
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Settings of the load that every subcommand shares.
#[derive(Clone, Debug, Args)]
struct LoadArgs {
    /// Connections, spread over the worker threads (at most the number of
    /// in-flight requests in a closed loop).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Worker threads, each with its own io_uring runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keys in the key space.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = DistributionArg::Uniform)]
    distribution: DistributionArg,
    /// The zipfian exponent, in (0, 1).
    #[arg(long, default_value_t = 0.99)]
    zipf_theta: f64,
    /// Share of reads, 0 to 1 (0: writes only).
    #[arg(long, default_value_t = 0.0)]
    read_fraction: f64,
    /// How fresh reads must be.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    consistency: Consistency,
    /// Length of the measured window, such as `10s` or `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the measured window, not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// The shards to send to, such as `0` or `0,2` (round robin over
    /// connections; each connection sends only its shard's keys). [default:
    /// every shard of the cluster]
    #[arg(long, value_delimiter = ',')]
    shards: Vec<u32>,
    /// Drop a connection whose requests get no answer for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Seed of the key and operation draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DistributionArg {
    Uniform,
    Zipfian,
}

impl LoadArgs {
    fn settings(&self, addrs: Vec<String>, cluster_id: u64, load: LoadMode, value_size: usize) -> RunSettings {
        RunSettings {
            addrs,
            cluster_id,
            connections: self.connections,
            threads: self.threads,
            load,
            workload: WorkloadConfig {
                keys: self.keys,
                distribution: match self.distribution {
                    DistributionArg::Uniform => Distribution::Uniform,
                    DistributionArg::Zipfian => Distribution::Zipfian { theta: self.zipf_theta },
                },
                read_fraction: self.read_fraction,
                value_size,
            },
            consistency: self.consistency,
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            shards: self.shards.clone(),
            request_timeout_s: self.request_timeout.as_secs_f64(),
            seed: self.seed,
        }
    }

    fn progress(&self) -> ProgressStyleKind {
        ProgressStyleKind::detect(self.quiet)
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Client addresses of the cluster's nodes (any node: the bench follows
    /// the leader); repeat or separate with commas. The default is
    /// `node dev`'s cluster.
    #[arg(
        long = "addr",
        env = "NODE_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7103,127.0.0.1:7105"
    )]
    addrs: Vec<String>,
    /// The cluster's id.
    #[arg(long, default_value_t = 1)]
    cluster_id: u64,
    /// The cluster's shared secret (default: `node dev`'s).
    #[arg(long, env = "NODE_TOKEN", hide_env_values = true, default_value = DEFAULT_TOKEN)]
    token: String,
    /// A file holding the shared secret (trailing newlines ignored);
    /// overrides --token.
    #[arg(long, env = "NODE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Connect with TLS, checking the nodes' certificates against this CA
    /// (the node CA, PEM); authenticate with --tls-cert and --tls-key or a
    /// per-user --token.
    #[arg(long, env = "NODE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) naming `raft-client://CLUSTER/USER?roles=...`.
    #[arg(long, env = "NODE_TLS_CERT", requires = "tls_ca", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NODE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Requests in flight over all connections (closed loop).
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Target requests per second: an open loop instead of a closed one,
    /// latency measured from each request's intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: requests in flight at most; beyond it sending waits (and
    /// the wait counts in the latency).
    #[arg(long, default_value_t = 4_096)]
    inflight_max: usize,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[command(flatten)]
    load: LoadArgs,
    /// The run's name in tables and plots. [default: from the settings]
    #[arg(long)]
    label: Option<String>,
    /// The result file. [default: bench-results/LABEL-TIME.json]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not ask the nodes for their status (before) and stats (after)
    /// for the result file.
    #[arg(long)]
    no_status: bool,
    /// The wire protocol: the node's own, or RESP (Redis) for comparing
    /// with `redis-server`.
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    #[command(flatten)]
    floor: FloorChoice,
    /// Nodes sharing the disk, for a floor measured at the start.
    #[arg(long, default_value_t = 3)]
    floor_writers: usize,
    /// The servers' process ids, for CPU time per write; `auto` finds the
    /// processes listening on every member's client port (servers on this
    /// machine; with --protocol resp, the --addr ports).
    #[arg(long, value_delimiter = ',')]
    node_pids: Vec<String>,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Result files written by `bench run` or `bench sweep`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Which operations: all, write or read.
    #[arg(long, default_value = "all")]
    op: String,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "compare.svg")]
    svg: PathBuf,
    /// Only the table.
    #[arg(long)]
    no_plot: bool,
    /// The latency axis of the plot.
    #[arg(long, value_enum, default_value_t = YScale::Auto)]
    y_scale: YScale,
}

/// How the bench starts a local cluster.
#[derive(Clone, Debug, Args)]
struct ClusterArgs {
    /// The `node` binary. [default: the one next to this binary; under
    /// `cargo run`, built (or brought up to date) first with the same profile]
    #[arg(long, env = "BENCH_NODE_BIN")]
    node_bin: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Shards per node (`node serve --shards`). `bench sweep` takes a list,
    /// one cluster each, to compare shard counts in one run (`1,2,4`).
    #[arg(long = "node-shards", value_delimiter = ',', default_value = "1")]
    node_shards: Vec<u32>,
    /// The nodes' log filter.
    #[arg(long, default_value = "warn")]
    node_log_level: String,
    /// Keep the cluster's data and logs.
    #[arg(long)]
    keep_cluster: bool,
    /// Under `cargo run`, use the node binary as it is instead of building it.
    #[arg(long)]
    no_build: bool,
}

impl ClusterArgs {
    fn spec(&self) -> Result<ClusterSpec, String> {
        let node_binary = find_node_binary(self.node_bin.as_deref(), !self.no_build).map_err(|e| e.to_string())?;
        Ok(ClusterSpec {
            node_binary,
            nodes: self.nodes,
            shards: self.node_shards.first().copied().unwrap_or(1),
            extra_args: Vec::new(),
            log_level: self.node_log_level.clone(),
            keep: self.keep_cluster,
            tls: false,
        })
    }
}

/// `node dev`'s shared token, the default of `bench run --token`.
const DEFAULT_TOKEN: &str = "dev-cluster-token";

/// Whether a sweep's cluster runs TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TlsMode {
    /// Plaintext with the shared token.
    Off,
    /// Mutual TLS between nodes and a client certificate for the bench,
    /// from throwaway credentials.
    On,
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// In-flight request counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    inflight: Vec<usize>,
    /// Value sizes to try, in bytes.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    value_size: Vec<usize>,
    /// Extra `node serve` arguments, one cluster each; repeat to compare
    /// node settings, such as `--node-option "" --node-option
    /// "--batch-bytes-max 65536"`. [default: one cluster with defaults]
    #[arg(long, allow_hyphen_values = true)]
    node_option: Vec<String>,
    /// TLS modes to try, one cluster each per node option: `off`, `on`, or
    /// `off,on` to measure what TLS costs in one run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
    tls: Vec<TlsMode>,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    load: LoadArgs,
    /// Where result files, compare.txt, the charts and report.html go.
    /// [default: bench-results/sweep-TIME]
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    floor: FloorChoice,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// In-flight request counts to try.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    inflight: Vec<usize>,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Measured seconds per setting.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up per setting.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Keep the result files and plot here. [default: a temporary directory,
    /// removed at the end]
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    floor: FloorChoice,
}

/// `10s`, `500ms`, `2m`, `1.5s`, or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1e-3)
    } else if let Some(number) = text.strip_suffix("us") {
        (number, 1e-6)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a duration such as 10s or 500ms"))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(format!("{text:?} is not a duration such as 10s or 500ms"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    bench::signal::install();
    let outcome = match cli.command {
        Command::Run(args) => command_run(args),
        Command::Compare(args) => command_compare(args),
        Command::Sweep(args) => command_sweep(args),
        Command::Demo(args) => command_demo(args),
        Command::Floor(args) => command_floor(args),
        Command::Report(args) => command_report(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn command_run(args: RunArgs) -> Result<(), String> {
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read(path).map_err(|error| {
                format!("cannot read the token file {} (--token-file or NODE_TOKEN_FILE): {error}", path.display())
            })?;
            let end = text.iter().rposition(|&byte| byte != b'\n' && byte != b'\r').map_or(0, |last| last + 1);
            Bytes::from(text[..end].to_vec())
        }
        None => Bytes::from(args.token.clone()),
    };
    let load = match args.rate {
        Some(rate) => LoadMode::Open { rate, inflight_max: args.inflight_max },
        None => LoadMode::Closed { inflight: args.inflight },
    };
    let settings = args.load.settings(args.addrs.clone(), args.cluster_id, load, args.value_size);
    let label = args.label.clone().unwrap_or_else(|| {
        let protocol = if args.protocol == Protocol::Resp { " resp" } else { "" };
        match load {
            LoadMode::Closed { inflight } => format!("inflight={inflight} value={}B{protocol}", args.value_size),
            LoadMode::Open { rate, .. } => format!("rate={rate} value={}B{protocol}", args.value_size),
        }
    });
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = bench::result::rfc3339(std::time::SystemTime::now()).replace([':', '-'], "");
        Path::new("bench-results").join(format!("{}-{stamp}.json", file_stem(&label)))
    });
    let floor = args.floor.obtain(args.floor_writers)?;
    let tls = args.tls_ca.clone().map(|node_ca| net::ClientTlsFiles {
        node_ca,
        certificate: args.tls_cert.clone(),
        private_key: args.tls_key.clone(),
    });
    let options = RunOptions {
        settings,
        // A client certificate authenticates alone unless a token is given
        // explicitly (the default token is `node dev`'s shared one).
        token: if args.tls_cert.is_some() && args.token_file.is_none() && args.token == DEFAULT_TOKEN {
            Bytes::new()
        } else {
            token
        },
        tls,
        label: label.clone(),
        progress: args.load.progress(),
        fetch_status: !args.no_status,
    };
    let cpu_pids = match args.node_pids.as_slice() {
        [] => None,
        [auto] if auto == "auto" => {
            // Every member a native run drives, not only those given.
            let addrs = match args.protocol {
                Protocol::Native => bench::runner::member_addrs(&options).unwrap_or(options.settings.addrs.clone()),
                Protocol::Resp => options.settings.addrs.clone(),
            };
            match pids_for_addrs(&addrs) {
                Ok(pids) => Some((pids, "auto (ports)")),
                Err(error) => {
                    eprintln!("warning: no CPU accounting: {error}");
                    None
                }
            }
        }
        pids => Some((
            pids.iter()
                .map(|pid| pid.trim().parse::<u32>().map_err(|_| format!("--node-pids: {pid:?} is not a process id")))
                .collect::<Result<Vec<_>, _>>()?,
            "--node-pids",
        )),
    };
    let sampler = cpu_pids.map(|(pids, source)| WindowSampler::for_run(pids, source, &options.settings));
    let mut result = match args.protocol {
        Protocol::Native => run(&options),
        Protocol::Resp => bench::resp_runner::run_resp(&options),
    }
    .map_err(|error| error.to_string())?;
    result.floor = floor;
    if let Some(sampler) = sampler {
        let writes = result.operations.get("write").map_or(0, |writes| writes.count);
        match sampler.finish(writes) {
            Ok(cpu) => result.cpu = Some(cpu),
            Err(error) => eprintln!("warning: no CPU accounting: {error}"),
        }
    }
    result.save(&out).map_err(|error| error.to_string())?;
    let stopped = bench::signal::stop_requested();
    println!(
        "{label}: {} ops/s over {:.1}s",
        bench::stats::format_rate(result.throughput_per_second),
        result.measured_seconds
    );
    print!("{}", result.percentile_table());
    println!("result file: {}", out.display());
    // A run in which nothing succeeded measured nothing: a wrong token or
    // address must not pass for a result in a script.
    if result.total.count == 0 && !result.errors.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        let example = result.error_examples.values().next().map(|text| format!("; e.g. {text}")).unwrap_or_default();
        return Err(format!("no request succeeded ({}){example}", errors.join(", ")));
    }
    // Said last and as a failure: a script must not take a run cut short
    // for the length it asked for (it exited 0).
    if stopped {
        return Err(format!(
            "stopped early by a signal: the measured window is {:.1}s (the result file holds that shorter run)",
            result.measured_seconds
        ));
    }
    Ok(())
}

fn command_compare(args: CompareArgs) -> Result<(), String> {
    let svg = (!args.no_plot).then_some(args.svg.as_path());
    let table = compare_files(&args.files, &args.op, svg, args.y_scale).map_err(|error| error.to_string())?;
    print!("{table}");
    if let Some(svg) = svg {
        println!("plot: {}", svg.display());
    }
    Ok(())
}

fn command_sweep(args: SweepArgs) -> Result<(), String> {
    let spec = args.cluster.spec()?;
    if args.cluster.node_shards.contains(&0) {
        return Err("--node-shards: a node runs at least one shard".into());
    }
    let node_options = if args.node_option.is_empty() {
        vec![Vec::new()]
    } else {
        args.node_option.iter().map(|option| option.split_whitespace().map(String::from).collect()).collect()
    };
    let value_size = args.value_size.first().copied().unwrap_or(256);
    let floor = args.floor.obtain(args.cluster.nodes as usize)?;
    let plan = SweepPlan {
        base: args.load.settings(Vec::new(), 1, LoadMode::Closed { inflight: 1 }, value_size),
        inflight: args.inflight.clone(),
        value_sizes: args.value_size.clone(),
        node_options,
        tls_modes: args.tls.iter().map(|mode| *mode == TlsMode::On).collect(),
        shard_counts: args.cluster.node_shards.clone(),
        cluster: spec,
        out_dir: args.out_dir.clone().unwrap_or_else(|| default_out_dir(Path::new("bench-results"), "sweep")),
        progress: args.load.progress(),
        print_each: false,
        floor,
    };
    let outcome = sweep(&plan).map_err(|error| error.to_string())?;
    println!();
    print!("{}", outcome.table);
    println!("results: {}", plan.out_dir.display());
    if let Some(plot) = outcome.plot {
        println!("plots: {} (and throughput-latency.svg, timeline.svg)", plot.display());
    }
    println!("report: {}", outcome.report.display());
    Ok(())
}

fn command_demo(args: DemoArgs) -> Result<(), String> {
    let spec = args.cluster.spec()?;
    if args.cluster.node_shards.len() != 1 {
        return Err("--node-shards: the demo runs one shard count (bench sweep compares several)".into());
    }
    let temporary = match &args.out_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("raft-bench-demo-").tempdir().map_err(|e| e.to_string())?),
    };
    let out_dir = args.out_dir.clone().unwrap_or_else(|| temporary.as_ref().expect("made above").path().to_path_buf());
    let load = LoadArgs {
        connections: 4,
        threads: 1,
        keys: 100_000,
        distribution: DistributionArg::Uniform,
        zipf_theta: 0.99,
        read_fraction: 0.0,
        consistency: Consistency::Linearizable,
        duration: args.duration,
        warmup: args.warmup,
        shards: Vec::new(),
        request_timeout: Duration::from_secs(10),
        seed: 1,
        quiet: args.quiet,
    };
    let plan = SweepPlan {
        base: load.settings(Vec::new(), 1, LoadMode::Closed { inflight: 1 }, args.value_size),
        inflight: args.inflight.clone(),
        value_sizes: vec![args.value_size],
        node_options: vec![Vec::new()],
        tls_modes: vec![false],
        shard_counts: vec![spec.shards],
        cluster: spec,
        out_dir: out_dir.clone(),
        progress: load.progress(),
        print_each: true,
        floor: args.floor.obtain(args.cluster.nodes as usize)?,
    };
    let outcome = sweep(&plan).map_err(|error| error.to_string())?;
    println!("\nsummary ({} nodes on loopback, {}-byte values, writes):", plan.cluster.nodes, args.value_size);
    print!("{}", outcome.table);
    match temporary {
        None => println!("results, plots and report.html: {}", out_dir.display()),
        // The paths printed with each run are gone once this returns.
        Some(_) => println!("(result files were in a temporary directory, removed now: --out-dir DIR keeps them)"),
    }
    Ok(())
}

fn command_floor(args: FloorArgs) -> Result<(), String> {
    let options = FloorOptions { dir: args.dir, writers: args.writers, case_seconds: args.case_seconds };
    let floor = measure(&options).map_err(|error| error.to_string())?;
    let out = args.out.unwrap_or_else(|| {
        let stamp = bench::result::rfc3339(std::time::SystemTime::now()).replace([':', '-'], "");
        Path::new("bench-results").join(format!("floor-{stamp}.json"))
    });
    floor.save(&out).map_err(|error| error.to_string())?;
    print!("{}", floor.table());
    println!("measured in {:.1}s; floor file: {}", floor.seconds, out.display());
    Ok(())
}

fn command_report(args: ReportArgs) -> Result<(), String> {
    let out = args.out.unwrap_or_else(|| args.dir.join(bench::report::REPORT_HTML));
    let runs = bench::report::write_report(&args.dir, &out).map_err(|error| error.to_string())?;
    println!("report of {runs} run{}: {}", if runs == 1 { "" } else { "s" }, out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
