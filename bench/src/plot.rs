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
    let draw_error =
        |error: &dyn std::fmt::Display| PlotError::Draw { path: path.to_path_buf(), message: error.to_string() };
    let ys = || series.iter().flat_map(|line| line.points.iter().map(|&(_, y)| y));
    let y_max = ys().fold(0.0f64, f64::max);
    if y_max <= 0.0 {
        return Err(PlotError::Empty);
    }
    let y_min = ys().filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
    let x_max = series.iter().flat_map(|line| line.points.last().map(|&(x, _)| x)).fold(10.0f64, f64::max);
    // Round the x range up to a power of ten so the axis ends on a label.
    let x_max = 10f64.powf(x_max.log10().ceil()).min(X_MAX);
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| draw_error(&error))?;
    let log = match y_scale {
        YScale::Linear => false,
        YScale::Log => true,
        YScale::Auto => y_max > 50.0 * y_min,
    };
    let result = if log {
        let low = 10f64.powf(y_min.log10().floor());
        let high = 10f64.powf(y_max.log10().ceil());
        draw(&root, series, title, x_max, (low..high).log_scale())
    } else {
        draw(&root, series, title, x_max, 0.0..y_max * 1.05)
    };
    result.map_err(|error| draw_error(&error))?;
    root.present().map_err(|error| draw_error(&error))?;
    Ok(())
}

type DrawResult = Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw<Y>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    series: &[Series],
    title: &str,
    x_max: f64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

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
}
