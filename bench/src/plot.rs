//! The percentile-distribution plot, like HdrHistogram's plotter: latency
//! (y) against percentile (x) where x is `1 / (1 - percentile)` on a log
//! scale, so 90%, 99%, 99.9%, ... are evenly spaced and the tail, where
//! configurations differ most, gets as much room as the median.
//!
//! SVG only, with plotters' built-in text handling (no system fonts needed).

use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// The largest x plotted: the 99.9999th percentile.
const X_MAX: f64 = 1_000_000.0;

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot draw {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("nothing to plot: no run has recorded latencies")]
    Empty,
}

/// One line of the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    /// `(1 / (1 - quantile), latency in milliseconds)`, x increasing.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// The percentile distribution of a nanosecond histogram, at five points
    /// per halving of the remaining tail (as HdrHistogram's
    /// `outputPercentileDistribution` does).
    pub fn from_histogram(label: &str, histogram: &Histogram<u64>) -> Series {
        let mut points = Vec::new();
        if !histogram.is_empty() {
            let samples = (histogram.len() as f64).max(2.0);
            for value in histogram.iter_quantiles(5) {
                let quantile = value.quantile_iterated_to();
                // The max sits where the sample count puts it: with n samples
                // the finest percentile resolved is 1 - 1/n.
                let x = if quantile >= 1.0 { samples } else { 1.0 / (1.0 - quantile) }.min(X_MAX);
                let millis = histogram.highest_equivalent(value.value_iterated_to()) as f64 / 1e6;
                if points.last().is_none_or(|&(last, _)| x > last) {
                    points.push((x, millis));
                } else if let Some(last) = points.last_mut() {
                    last.1 = last.1.max(millis);
                }
            }
        }
        Series { label: label.to_string(), points }
    }
}

/// The label of x on the plot's axis: `x = 1 / (1 - p)` back to `p` in percent.
pub fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / x);
    if x < 1.5 {
        return "0%".to_string();
    }
    // As many decimals as the number of nines past 99 needs.
    let decimals = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{percent:.decimals$}%")
}

/// How the latency axis is scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum YScale {
    /// Linear, as HdrHistogram's plotter draws it.
    Linear,
    /// Logarithmic: runs whose tails differ a hundredfold stay readable.
    Log,
    /// Logarithmic when the highest latency is over 50 times the lowest
    /// median, linear otherwise.
    Auto,
}

/// Draws `series` to an SVG file.
pub fn plot_percentiles(series: &[Series], title: &str, y_scale: YScale, path: &Path) -> Result<(), PlotError> {
    let svg = percentiles_svg(series, title, y_scale)?;
    write_svg(path, &svg)
}

/// Writes a drawing to `path`.
/// Writes `svg` to `path`, making its directory first as `bench run --out`
/// does (`compare --svg plots/a.svg` failed, and printed no table either).
pub fn write_svg(path: &Path, svg: &str) -> Result<(), PlotError> {
    let failed = |error: std::io::Error| PlotError::Draw { path: path.to_path_buf(), message: error.to_string() };
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(path, svg).map_err(failed)
}

/// The error of a drawing made in memory.
fn draw_error(error: &dyn std::fmt::Display) -> PlotError {
    PlotError::Draw { path: PathBuf::from("(in memory)"), message: error.to_string() }
}

/// The percentile-distribution plot of `series` as an SVG document.
pub fn percentiles_svg(series: &[Series], title: &str, y_scale: YScale) -> Result<String, PlotError> {
    let ys = || series.iter().flat_map(|line| line.points.iter().map(|&(_, y)| y));
    let y_max = ys().fold(0.0f64, f64::max);
    if y_max <= 0.0 {
        return Err(PlotError::Empty);
    }
    let y_min = ys().filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
    let x_max = series.iter().flat_map(|line| line.points.last().map(|&(x, _)| x)).fold(10.0f64, f64::max);
    // Round the x range up to a power of ten so the axis ends on a label.
    let x_max = 10f64.powf(x_max.log10().ceil()).min(X_MAX);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| draw_error(&error))?;
        let result = if use_log(y_scale, y_min, y_max) {
            let (low, high) = decades(y_min, y_max);
            draw(&root, series, title, x_max, (low..high).log_scale())
        } else {
            draw(&root, series, title, x_max, 0.0..y_max * 1.05)
        };
        result.map_err(|error| draw_error(&error))?;
        root.present().map_err(|error| draw_error(&error))?;
    }
    Ok(svg)
}

fn use_log(y_scale: YScale, y_min: f64, y_max: f64) -> bool {
    match y_scale {
        YScale::Linear => false,
        YScale::Log => true,
        YScale::Auto => y_max > 50.0 * y_min,
    }
}

/// The powers of ten around `low..high`.
fn decades(low: f64, high: f64) -> (f64, f64) {
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf(high.log10().ceil());
    (low, if high > low { high } else { low * 10.0 })
}

type DrawResult = Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw<Y>(root: &Area<'_>, series: &[Series], title: &str, x_max: f64, y_range: Y) -> DrawResult
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale(), y_range)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One configuration's line of the throughput-latency chart: one point per
/// in-flight count, `(ops/s, p50 ms, p99 ms)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ThroughputLine {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Latency (p50: thick line, filled dots; p99: thin line, hollow dots)
/// against throughput, one colour per configuration, points joined in
/// in-flight order: the knee where latency climbs without throughput
/// following is the configuration's capacity.
pub fn throughput_latency_svg(lines: &[ThroughputLine], title: &str) -> Result<String, PlotError> {
    let points = || lines.iter().flat_map(|line| line.points.iter());
    let x_max = points().map(|&(x, _, _)| x).fold(0.0f64, f64::max);
    let y_max = points().map(|&(_, p50, p99)| p50.max(p99)).fold(0.0f64, f64::max);
    if x_max <= 0.0 || y_max <= 0.0 {
        return Err(PlotError::Empty);
    }
    let y_min = points().map(|&(_, p50, p99)| p50.min(p99)).filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| draw_error(&error))?;
        let x_range = 0.0..x_max * 1.08;
        let result = if use_log(YScale::Auto, y_min, y_max) {
            let (low, high) = decades(y_min, y_max);
            draw_throughput(&root, lines, title, x_range, (low..high).log_scale())
        } else {
            draw_throughput(&root, lines, title, x_range, 0.0..y_max * 1.08)
        };
        result.map_err(|error| draw_error(&error))?;
        root.present().map_err(|error| draw_error(&error))?;
    }
    Ok(svg)
}

fn draw_throughput<Y>(
    root: &Area<'_>,
    lines: &[ThroughputLine],
    title: &str,
    x_range: std::ops::Range<f64>,
    y_range: Y,
) -> DrawResult
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc("throughput (ops/s)")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| crate::stats::format_rate(*x))
        .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .draw()?;
    for (index, line) in lines.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        for (name, width, filled, pick) in
            [("p50", 3, true, (|point: &(f64, f64, f64)| point.1) as fn(&_) -> f64), ("p99", 1, false, |point| point.2)]
        {
            let points: Vec<(f64, f64)> = line.points.iter().map(|point| (point.0, pick(point))).collect();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(width)))?
                .label(format!("{} {name}", line.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width)));
            let style = if filled { color.filled() } else { color.stroke_width(1) };
            chart.draw_series(points.iter().map(|&point| Circle::new(point, 4, style)))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One run's line of the timeline chart: `(seconds since the start, ops/s,
/// p99 ms)` per second.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineLine {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Throughput (top) and p99 latency (bottom) second by second, one line per
/// run, warm-up included: a stall shows as a dip above and a spike below at
/// the same second.
pub fn timeline_svg(lines: &[TimelineLine], title: &str) -> Result<String, PlotError> {
    let points = || lines.iter().flat_map(|line| line.points.iter());
    let x_max = points().map(|&(x, _, _)| x).fold(0.0f64, f64::max);
    let ops_max = points().map(|&(_, ops, _)| ops).fold(0.0f64, f64::max);
    let p99_max = points().map(|&(_, _, p99)| p99).fold(0.0f64, f64::max);
    if x_max <= 0.0 || (ops_max <= 0.0 && p99_max <= 0.0) {
        return Err(PlotError::Empty);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(|error| draw_error(&error))?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(|error| draw_error(&error))?;
        let (top, bottom) = root.split_vertically(340);
        let x_range = 0.0..x_max.ceil().max(1.0);
        draw_timeline_panel(&top, lines, x_range.clone(), ops_max * 1.1, "ops/s", |point| point.1, true)
            .map_err(|error| draw_error(&error))?;
        draw_timeline_panel(&bottom, lines, x_range, p99_max.max(1e-3) * 1.1, "p99 (ms)", |point| point.2, false)
            .map_err(|error| draw_error(&error))?;
        root.present().map_err(|error| draw_error(&error))?;
    }
    Ok(svg)
}

fn draw_timeline_panel(
    area: &Area<'_>,
    lines: &[TimelineLine],
    x_range: std::ops::Range<f64>,
    y_max: f64,
    y_desc: &str,
    pick: fn(&(f64, f64, f64)) -> f64,
    legend: bool,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(48)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, 0.0..y_max.max(1e-9))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start (warm-up included)")
        .y_desc(y_desc)
        .y_label_formatter(&|y| {
            if *y >= 1_000.0 {
                crate::stats::format_rate(*y)
            } else if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()?;
    for (index, line) in lines.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let series = chart.draw_series(LineSeries::new(
            line.points.iter().map(|point| (point.0, pick(point))),
            color.stroke_width(2),
        ))?;
        if legend {
            series
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn an_svg_goes_into_a_directory_made_for_it() {
        let dir = std::env::temp_dir().join(format!("bench-plot-dir-{}", std::process::id()));
        let path = dir.join("plots").join("a.svg");
        write_svg(&path, "<svg/>").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<svg/>");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn labels_of_the_log_axis() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1_000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn series_is_increasing_and_ends_at_the_max() {
        let mut histogram = new_histogram();
        for micros in 1..=10_000u64 {
            histogram.record(micros * 1_000).unwrap();
        }
        let series = Series::from_histogram("run", &histogram);
        assert!(series.points.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1));
        let (x, y) = *series.points.last().unwrap();
        assert_eq!(x, 10_000.0);
        assert!((y - 10.0).abs() < 0.02, "max {y} ms");
        assert!(Series::from_histogram("empty", &new_histogram()).points.is_empty());
    }

    #[test]
    fn charts_draw_one_line_per_series_with_its_label() {
        let lines = vec![
            ThroughputLine { label: "value=256B".into(), points: vec![(2_400.0, 0.4, 0.9), (60_000.0, 1.1, 2.5)] },
            ThroughputLine { label: "value=4096B".into(), points: vec![(2_000.0, 0.5, 1.2), (20_000.0, 3.0, 8.0)] },
        ];
        let svg = throughput_latency_svg(&lines, "throughput and latency").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("value=4096B p99") && svg.contains("value=256B p50"));
        // Four series and their four legend samples (axes and ticks are black).
        assert_eq!(coloured_polylines(&svg), 8, "{svg}");
        let timeline = vec![TimelineLine { label: "run".into(), points: vec![(1.0, 100.0, 1.0), (2.0, 0.0, 250.0)] }];
        let svg = timeline_svg(&timeline, "timeline").unwrap();
        // The run in both panels, and its legend sample in the top one.
        assert_eq!(coloured_polylines(&svg), 3, "{svg}");
        assert!(matches!(throughput_latency_svg(&[], "empty"), Err(PlotError::Empty)));
        assert!(matches!(timeline_svg(&[], "empty"), Err(PlotError::Empty)));
    }

    fn coloured_polylines(svg: &str) -> usize {
        svg.matches("<polyline").count()
            - svg.matches("<polyline fill=\"none\" opacity=\"1\" stroke=\"#000000\"").count()
    }
}
