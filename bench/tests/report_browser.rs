//! `bench report DIR` opened in a real headless browser (Debian's
//! `chromium`): every chart is rendered as inline SVG with the expected
//! series and their labels, and a screenshot of the page is kept at
//! `target/bench-report-screenshot.png` (the test prints the path).
//!
//! The results directory is synthetic but well formed: result files made
//! through the bench's own types (histograms, timelines, a floor, CPU
//! accounting) for two configurations at three in-flight counts, as
//! `bench sweep` would leave them. No cluster is started.
//!
//! Needs `chromium` on PATH (`.ci/run` installs it; `BENCH_CHROMIUM=PATH`
//! names another binary). Without it the test fails, unless
//! `BENCH_SKIP_BROWSER=1` is set, when it says SKIPPED.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bench::cpu::{CpuAccounting, CpuTicks};
use bench::floor::{Floor, LatencyFloor, FLOOR_FORMAT};
use bench::progress::TimelinePoint;
use bench::result::ResultFile;
use bench::runner::{LoadMode, RunSettings};
use bench::stats::{OpKind, Recorder};

const INFLIGHT: [usize; 3] = [1, 16, 64];
const VALUE_SIZES: [usize; 2] = [256, 4096];

fn synthetic_floor() -> Floor {
    let latency =
        |p50_us, p99_us| LatencyFloor { count: 1_000, ops_per_second: 5_000.0, p50_us, p99_us, mean_us: p50_us };
    Floor {
        format: FLOOR_FORMAT.into(),
        measured_at: "2026-12-02T07:00:00Z".into(),
        dir: PathBuf::from("/tmp/bench-floor-synthetic"),
        direct_io: true,
        file_system: "ext4 on /dev/vda (mounted at /)".into(),
        notes: Vec::new(),
        synced_write_1: latency(120.0, 400.0),
        synced_write_n: latency(260.0, 900.0),
        writers: 3,
        write_bytes_per_second: 200e6,
        write_bandwidth_writers: 3,
        read_bytes_per_second: 650e6,
        loopback_round_trip: latency(12.0, 40.0),
        seconds: 3.2,
    }
}

/// A run at `inflight` requests with `value_size`-byte values: latencies
/// that grow with the load and the value, a timeline with a one-second
/// stall, CPU per write.
fn synthetic_result(inflight: usize, value_size: usize) -> ResultFile {
    let base_us = 350.0 * (1.0 + inflight as f64 / 24.0) * (1.0 + value_size as f64 / 8_192.0);
    let mut recorder = Recorder::default();
    // Little's law: in-flight requests over latency, for the 4 s window.
    let samples = ((inflight as f64 / (base_us * 1e-6) * 4.0) as u64).min(100_000);
    for index in 0..samples {
        // A long right tail: the top 1% is 4 to 8 times the median.
        let quantile = (index as f64 + 0.5) / samples as f64;
        let factor = 0.6 + 0.8 * quantile + if quantile > 0.99 { 4.0 * (quantile - 0.99) * 100.0 } else { 0.0 };
        let latency = Duration::from_nanos((base_us * factor * 1_000.0) as u64);
        recorder.record(OpKind::Write, latency, latency * 9 / 10);
    }
    recorder.warmup_completed = 500;
    let mut settings = RunSettings::example();
    settings.load = LoadMode::Closed { inflight };
    settings.workload.value_size = value_size;
    settings.duration_s = 4.0;
    let label = format!("inflight={inflight} value={value_size}B");
    let measured = Duration::from_secs(4);
    let started = UNIX_EPOCH + Duration::from_secs(1_796_194_800);
    let mut result = ResultFile::new(label, settings, None, &recorder, measured, started).unwrap();
    let rate = samples as f64 / 4.0;
    result.timeline = (1..=5)
        .map(|second| {
            let stalled = second == 3;
            TimelinePoint {
                end_s: second as f64,
                ops_per_second: if stalled { rate / 10.0 } else { rate },
                errors: 0,
                p50_us: base_us,
                p99_us: if stalled { base_us * 20.0 } else { base_us * 3.0 },
                max_us: base_us * 25.0,
            }
        })
        .collect();
    result.floor = Some(synthetic_floor());
    let ticks = CpuTicks { user: 300, system: 100 };
    result.cpu = Some(CpuAccounting::new(vec![101, 102, 103], "local cluster", measured, ticks, samples));
    result.local_cluster = Some(serde_json::json!({"nodes": 3, "shards": 1, "node_serve_extra_args": []}));
    result
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `page` with `mode` (`--dump-dom` or
/// `--screenshot=PATH`) and returns its standard output.
fn chromium(binary: &Path, page: &Path, mode: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,3400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read both pipes while it runs: a DOM larger than a pipe's buffer
    // would otherwise block it.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {mode} within 90 s: {}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "chromium {mode} failed ({status}): {stderr}");
    stdout
}

/// The part of the DOM inside `<figure id="ID" ...>...</figure>`.
fn figure<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom.find(&format!("<figure id=\"{id}\"")).unwrap_or_else(|| panic!("no figure {id} in the DOM"));
    let end = dom[start..].find("</figure>").expect("the figure is closed") + start;
    &dom[start..end]
}

/// Polylines drawn in a series colour (axes and ticks are black).
fn series_polylines(svg: &str) -> usize {
    svg.split("<polyline")
        .skip(1)
        .filter(|element| {
            let tag = &element[..element.find('>').unwrap_or(element.len())];
            !tag.contains("stroke=\"#000000\"") && tag.contains("points=")
        })
        .count()
}

#[test]
fn the_html_report_renders_every_chart_in_a_headless_browser() {
    let Some(chromium_binary) = find_chromium() else {
        if std::env::var("BENCH_SKIP_BROWSER").is_ok_and(|value| value == "1") {
            eprintln!("SKIPPED (BENCH_SKIP_BROWSER=1): chromium is not installed; the report was not rendered");
            return;
        }
        panic!(
            "chromium is not on PATH: install it (Debian: apt-get install chromium; .ci/run does), name it with \
             BENCH_CHROMIUM=PATH, or set BENCH_SKIP_BROWSER=1 to skip this test"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let mut index = 0;
    for value_size in VALUE_SIZES {
        for inflight in INFLIGHT {
            index += 1;
            let result = synthetic_result(inflight, value_size);
            result.save(&dir.path().join(format!("{index:02}-{}.json", inflight))).unwrap();
        }
    }
    synthetic_floor().save(&dir.path().join("floor.json")).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_bench")).arg("report").arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "bench report failed: {}", String::from_utf8_lossy(&output.stderr));
    let page = dir.path().join("report.html");
    assert!(String::from_utf8_lossy(&output.stdout).contains("report of 6 runs"), "{output:?}");

    let dom = chromium(&chromium_binary, &page, "--dump-dom");
    let runs = INFLIGHT.len() * VALUE_SIZES.len();
    // Percentiles: a line and a legend sample per run.
    let percentiles = figure(&dom, "chart-percentiles");
    assert_eq!(percentiles.matches("<svg").count(), 1);
    assert_eq!(series_polylines(percentiles), 2 * runs, "{percentiles}");
    // Throughput-latency: p50 and p99 per configuration, each with a
    // legend sample, and a dot per in-flight count on each line.
    let throughput = figure(&dom, "chart-throughput-latency");
    assert_eq!(series_polylines(throughput), 2 * 2 * VALUE_SIZES.len(), "{throughput}");
    assert_eq!(throughput.matches("<circle").count(), 2 * VALUE_SIZES.len() * INFLIGHT.len());
    // Timeline: each run in both panels, legend samples in the top one.
    let timeline = figure(&dom, "chart-timeline");
    assert_eq!(series_polylines(timeline), 3 * runs, "{timeline}");
    for value_size in VALUE_SIZES {
        for percentile in ["p50", "p99"] {
            assert!(throughput.contains(&format!("value={value_size}B {percentile}")), "{throughput}");
        }
        for inflight in INFLIGHT {
            let label = format!("inflight={inflight} value={value_size}B");
            assert!(percentiles.contains(&label) && timeline.contains(&label), "no legend for {label}");
        }
    }
    // The tables: a row per run in each, and the floor.
    for table in ["runs", "floor-ratios", "settings"] {
        let start = dom.find(&format!("<table id=\"{table}\"")).unwrap_or_else(|| panic!("no table {table}"));
        let end = dom[start..].find("</table>").unwrap() + start;
        assert_eq!(dom[start..end].matches("<tr").count(), runs + 1, "table {table}");
    }
    assert!(dom.contains("synced 4 KiB write, 3 writers"), "no floor table");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("bench-report-screenshot.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&chromium_binary, &page, &format!("--screenshot={}", screenshot.display()));
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 3400));
    // A blank page of this size compresses to a few kilobytes.
    assert!(png.len() > 50_000, "the screenshot is {} bytes: blank?", png.len());
    println!("screenshot of the report: {}", screenshot.display());
}
