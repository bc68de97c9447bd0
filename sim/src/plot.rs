//! SVG plots of a comparison: latency CDFs per policy, and per-replica load over time.

use super::outcome::RequestRecord;
use super::run::Sample;
use super::scaling::ScalePoint;
use plotters::prelude::*;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One line per policy: the CDF of `metric` (ms) over its requests, x on a log scale.
pub fn latency_cdf(
    path: &Path,
    title: &str,
    series: &[(String, Vec<RequestRecord>)],
    metric: fn(&RequestRecord) -> Option<f64>,
) -> Result<(), PlotError> {
    let lines: Vec<(String, Vec<f64>)> = series
        .iter()
        .map(|(name, recs)| {
            let mut v: Vec<f64> = recs
                .iter()
                .filter_map(metric)
                .map(|x| x.max(0.01))
                .collect();
            v.sort_by(f64::total_cmp);
            (name.clone(), v)
        })
        .collect();
    let max = lines
        .iter()
        .filter_map(|(_, v)| v.last().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let min = lines
        .iter()
        .filter_map(|(_, v)| v.first().copied())
        .fold(max, f64::min)
        .max(0.01);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((min..max).log_scale(), 0f64..1f64)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(|e| err(path, e))?;
    for (i, (name, v)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let n = v.len().max(1) as f64;
        // At most ~400 points a line keeps the SVG small.
        let stride = (v.len() / 400).max(1);
        let pts = v
            .iter()
            .enumerate()
            .filter(|(j, _)| j % stride == 0 || *j + 1 == v.len())
            .map(|(j, x)| (*x, (j + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// Outstanding requests of every replica over time (one faint line each) with the
/// fleet's max and mean on top.
pub fn replica_load(path: &Path, title: &str, timeline: &[Sample]) -> Result<(), PlotError> {
    let (Some(first), Some(last)) = (timeline.first(), timeline.last()) else {
        return Err(err(path, "no samples"));
    };
    let t0 = first.at_us;
    let secs = |s: &Sample| (s.at_us - t0) as f64 / 1e6;
    let peak = timeline
        .iter()
        .flat_map(|s| s.outstanding.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..secs(last).max(1.0), 0f64..peak)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests outstanding")
        .draw()
        .map_err(|e| err(path, e))?;
    let replicas = first.outstanding.len();
    // Many replicas: draw a bounded number of individual lines.
    let stride = (replicas / 32).max(1);
    for r in (0..replicas).step_by(stride) {
        let pts = timeline.iter().map(|s| {
            (
                secs(s),
                f64::from(s.outstanding.get(r).copied().unwrap_or(0)),
            )
        });
        chart
            .draw_series(LineSeries::new(pts, BLUE.mix(0.25)))
            .map_err(|e| err(path, e))?;
    }
    let max_pts = timeline.iter().map(|s| {
        (
            secs(s),
            f64::from(s.outstanding.iter().copied().max().unwrap_or(0)),
        )
    });
    chart
        .draw_series(LineSeries::new(max_pts, RED.stroke_width(2)))
        .map_err(|e| err(path, e))?
        .label("max")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
    let mean_pts = timeline.iter().map(|s| {
        let n = s.outstanding.len().max(1) as f64;
        (
            secs(s),
            s.outstanding.iter().map(|&v| f64::from(v)).sum::<f64>() / n,
        )
    });
    chart
        .draw_series(LineSeries::new(mean_pts, BLACK.stroke_width(2)))
        .map_err(|e| err(path, e))?
        .label("mean")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// Replicas (ready plus starting) over time under each autoscaler, with the replicas the
/// offered load needs at the planned utilization as a dashed reference.
pub fn replicas_over_time(
    path: &Path,
    title: &str,
    series: &[(String, Vec<ScalePoint>)],
    per_replica_mu_per_min: f64,
) -> Result<(), PlotError> {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (Some(t0), Some(t1)) = (
        points().map(|p| p.at_us).min(),
        points().map(|p| p.at_us).max(),
    ) else {
        return Err(err(path, "no autoscaler ticks"));
    };
    let mins = |at: u64| (at - t0) as f64 / 60e6;
    let need = |p: &ScalePoint| {
        if per_replica_mu_per_min > 0.0 {
            p.mu_per_min / per_replica_mu_per_min
        } else {
            0.0
        }
    };
    let top = points()
        .map(|p| ((p.ready + p.starting) as f64).max(need(p)))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..mins(t1).max(1.0), 0f64..top)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("replicas")
        .draw()
        .map_err(|e| err(path, e))?;
    if let Some((_, first)) = series.first() {
        let pts: Vec<(f64, f64)> = first.iter().map(|p| (mins(p.at_us), need(p))).collect();
        chart
            .draw_series(LineSeries::new(pts, BLACK.mix(0.35)))
            .map_err(|e| err(path, e))?
            .label("needed by offered MU")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.35)));
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (mins(p.at_us), (p.ready + p.starting) as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}
