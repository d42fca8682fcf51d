//! The live view of a run: throughput and latency of the last interval, as
//! a progress bar on a terminal and as plain lines otherwise (so logs of CI
//! or `| tee` stay readable).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::stats::{format_micros, format_rate, new_histogram};

/// Counters the workers update and the display reads. Shared across worker
/// threads; the histogram lock is taken once per answer, which costs far
/// less than the answer's system calls.
pub struct Live {
    /// Successful answers, warm-up included.
    pub completed: AtomicU64,
    /// Failed requests, warm-up included.
    pub errors: AtomicU64,
    interval: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Live {
        Live { completed: AtomicU64::new(0), errors: AtomicU64::new(0), interval: Mutex::new(new_histogram()) }
    }
}

impl Live {
    pub fn record(&self, latency_nanos: u64) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.interval.lock().expect("no worker panics holding the lock").saturating_record(latency_nanos);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The latencies since the last call.
    fn take_interval(&self) -> Histogram<u64> {
        let mut interval = self.interval.lock().expect("no worker panics holding the lock");
        let taken = interval.clone();
        interval.reset();
        taken
    }
}

/// How the display looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyleKind {
    /// A bar that redraws in place (stderr is a terminal).
    Bar,
    /// One line per second.
    Lines,
    /// Nothing.
    Quiet,
}

impl ProgressStyleKind {
    /// A bar on a terminal, lines otherwise, nothing if `quiet`.
    pub fn detect(quiet: bool) -> ProgressStyleKind {
        if quiet {
            ProgressStyleKind::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressStyleKind::Bar
        } else {
            ProgressStyleKind::Lines
        }
    }
}

/// Shows the progress of a run until `done()` is true, and returns its
/// timeline (one point per second, whatever the display).
pub fn watch(
    live: &Live,
    kind: ProgressStyleKind,
    label: &str,
    start: Instant,
    warmup: Duration,
    duration: Duration,
    done: impl Fn() -> bool,
) -> Vec<TimelinePoint> {
    let total = warmup + duration;
    let bar = (kind == ProgressStyleKind::Bar).then(|| {
        let bar = ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {elapsed:>3}/{len_s} {msg}")
                .expect("a valid template")
                .with_key("len_s", |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{}s", state.len().unwrap_or(0) / 1_000);
                })
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar
    });
    let tick = Duration::from_millis(250);
    let mut timeline = Vec::new();
    let mut last = Instant::now();
    let mut last_completed = 0u64;
    let mut second_start = Instant::now();
    let mut second_completed = 0u64;
    let mut second_errors = 0u64;
    let mut errors_at_measure: Option<u64> = None;
    let mut second_histogram = new_histogram();
    loop {
        let finished = done();
        if !finished {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() < tick {
                continue;
            }
        }
        let now = Instant::now();
        let completed = live.completed.load(Ordering::Relaxed);
        let errors_total = live.errors.load(Ordering::Relaxed);
        let interval = live.take_interval();
        second_histogram.add(&interval).expect("equal bounds");
        let measuring = now.duration_since(start) >= warmup;
        let phase = if measuring { "measure" } else { "warm-up" };
        // The errors shown are the phase's own: those of the warm-up (such as
        // the `NotLeader` answers that find the leader) are not the run's,
        // and the result file keeps them apart too.
        if measuring && errors_at_measure.is_none() {
            errors_at_measure = Some(errors_total);
        }
        let errors = errors_total - errors_at_measure.unwrap_or(0);
        if let Some(bar) = &bar {
            let rate = (completed - last_completed) as f64 / now.duration_since(last).as_secs_f64();
            bar.set_position((now.duration_since(start).as_millis() as u64).min(total.as_millis() as u64));
            bar.set_message(format!(
                "{phase} {} ops/s  p50 {}  p99 {}  errors {errors}",
                format_rate(rate),
                percentile(&interval, 0.5),
                percentile(&interval, 0.99),
            ));
        }
        let second = now.duration_since(second_start);
        // A last partial second is kept only if long enough for its rate to mean something.
        let last_partial = finished && !second_histogram.is_empty() && second >= Duration::from_millis(500);
        if second >= Duration::from_secs(1) || last_partial {
            let point = TimelinePoint {
                end_s: now.saturating_duration_since(start).as_secs_f64(),
                ops_per_second: (completed - second_completed) as f64 / second.as_secs_f64(),
                errors: errors_total - second_errors,
                p50_us: quantile_micros(&second_histogram, 0.5),
                p99_us: quantile_micros(&second_histogram, 0.99),
                max_us: second_histogram.max() as f64 / 1_000.0,
            };
            if kind == ProgressStyleKind::Lines {
                eprintln!(
                    "{label}: {:>5.1}s {phase} {} ops/s  p50 {}  p99 {}  max {}  errors {errors}",
                    point.end_s,
                    format_rate(point.ops_per_second),
                    percentile(&second_histogram, 0.5),
                    percentile(&second_histogram, 0.99),
                    percentile(&second_histogram, 1.0),
                );
            }
            timeline.push(point);
            second_histogram.reset();
            second_completed = completed;
            second_errors = errors_total;
            second_start = now;
        }
        last = now;
        last_completed = completed;
        if finished {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    timeline
}

/// One second of a run, as the live display saw it: answers by completion
/// time (warm-up included), so stalls and leader changes show where they
/// happened.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the start (warm-up included) at the end of the interval.
    pub end_s: f64,
    pub ops_per_second: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

fn quantile_micros(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

fn percentile(histogram: &Histogram<u64>, quantile: f64) -> String {
    if histogram.is_empty() {
        return "-".to_string();
    }
    format_micros(histogram.value_at_quantile(quantile) as f64 / 1_000.0)
}
