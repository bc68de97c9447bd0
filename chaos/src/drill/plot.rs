//! The drill's timeline: per second, requests sent, answered well, failed, their median
//! latency, and the healthy replicas the control state lists; the fault and its healing
//! marked.

use super::ledger::{Outcome, Record};
use super::{DrillReport, Second};
use plotters::prelude::*;
use std::path::Path;

/// Buckets the ledger and the health samples by second of sending.
pub fn seconds(records: &[Record], health: &[(u64, usize)]) -> Vec<Second> {
    let last = records.iter().map(|r| r.sent_ms).max().unwrap_or(0) / 1000;
    let mut out = vec![Second::default(); last as usize + 1];
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); out.len()];
    for r in records {
        let s = (r.sent_ms / 1000) as usize;
        out[s].sent += 1;
        if r.outcome == Outcome::Ok {
            out[s].ok += 1;
            latencies[s].push(r.done_ms.saturating_sub(r.sent_ms));
        } else {
            out[s].failed += 1;
        }
    }
    for (s, l) in latencies.iter_mut().enumerate() {
        l.sort_unstable();
        if !l.is_empty() {
            out[s].p50_ms = l[l.len() / 2] as f64;
        }
    }
    let mut h = 0;
    for (s, sec) in out.iter_mut().enumerate() {
        if let Some(&(_, n)) = health
            .iter()
            .rev()
            .find(|(at, _)| *at <= (s as u64 + 1) * 1000)
        {
            h = n;
        }
        sec.healthy_replicas = h;
    }
    out
}

/// A named line of the timeline.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

pub fn timeline(path: &Path, r: &DrillReport) -> anyhow::Result<()> {
    let t = &r.timeline;
    let secs = t.len().max(1) as f64;
    let top_rate = t
        .iter()
        .map(|s| s.sent.max(s.failed) as f64)
        .fold(1.0, f64::max)
        * 1.2;
    let top_lat = t.iter().map(|s| s.p50_ms).fold(10.0, f64::max) * 1.2;
    let top_health = t
        .iter()
        .map(|s| s.healthy_replicas as f64)
        .fold(1.0, f64::max)
        + 1.0;
    let root = SVGBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "drill {}: {} sent, {} ok, {} explicit errors, {} lost",
        r.summary.scenario,
        r.summary.sent,
        r.summary.succeeded,
        r.summary.failed_explicit,
        r.summary.lost
    );
    let (top, rest) = root
        .titled(&title, ("sans-serif", 20))?
        .split_vertically(240);
    let (mid, bottom) = rest.split_vertically(220);
    let marks = [r.fault_at_s, r.healed_at_s];
    let panel = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                 y_top: f64,
                 y_desc: &str,
                 series: Vec<Series>|
     -> anyhow::Result<()> {
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..secs, 0f64..y_top)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_desc)
            .draw()?;
        for m in marks {
            chart.draw_series(LineSeries::new(vec![(m, 0.0), (m, y_top)], BLACK.mix(0.3)))?;
        }
        for (name, color, pts) in series {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    };
    let pts = |f: &dyn Fn(&Second) -> f64| -> Vec<(f64, f64)> {
        t.iter()
            .enumerate()
            .map(|(i, s)| (i as f64, f(s)))
            .collect()
    };
    panel(
        &top,
        top_rate,
        "requests/s",
        vec![
            ("sent", BLUE, pts(&|s| s.sent as f64)),
            ("ok", GREEN, pts(&|s| s.ok as f64)),
            ("failed", RED, pts(&|s| s.failed as f64)),
        ],
    )?;
    panel(
        &mid,
        top_lat,
        "p50 latency, ms",
        vec![("p50 of successes", MAGENTA, pts(&|s| s.p50_ms))],
    )?;
    panel(
        &bottom,
        top_health,
        "replicas",
        vec![(
            "healthy in the registry",
            BLACK,
            pts(&|s| s.healthy_replicas as f64),
        )],
    )?;
    root.present()?;
    Ok(())
}
