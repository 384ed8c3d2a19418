//! `stage_times.svg`: a stacked bar per round of the wall time of each stage,
//! so a run shows at a glance which stage dominates and whether rounds vary.
//!
//! plotters draws it with its SVG backend alone (no font libraries: SVG text
//! is emitted as `<text>` elements and the viewer picks the font).

use std::path::Path;

use plotters::prelude::*;
use tessera_aggregation::Stage;
use tessera_aggregation::sim::{Outcome, RoundReport};

use crate::params::graph_name;
use crate::simulate::Plan;

/// One colour per stage, in protocol order, distinguishable when stacked.
fn stage_colour(stage: Stage) -> RGBColor {
    match stage {
        Stage::AdvertiseKeys => RGBColor(0x4e, 0x79, 0xa7),
        Stage::ShareKeys => RGBColor(0xf2, 0x8e, 0x2b),
        Stage::MaskedInput => RGBColor(0x59, 0xa1, 0x4f),
        Stage::ConsistencyCheck => RGBColor(0xb0, 0x7a, 0xa1),
        Stage::Unmasking => RGBColor(0xe1, 0x57, 0x59),
    }
}

/// Writes the chart of `reports` (rounds of `plan`) to `path`.
pub(crate) fn write_stage_chart(
    path: &Path,
    reports: &[RoundReport],
    plan: &Plan,
) -> anyhow::Result<()> {
    let rounds = reports.len().max(1) as f64;
    let tallest = reports
        .iter()
        .map(|r| r.stage_seconds.values().sum::<f64>())
        .fold(0.0, f64::max);
    let y_max = (tallest * 1.15).max(1e-3);

    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let sim = &plan.sim;
    let caption = format!(
        "Wall time per stage: n={} d={} {} k={} t={}",
        sim.clients,
        sim.dim,
        graph_name(sim.graph),
        plan.k,
        sim.threshold
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..rounds - 0.5, 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(reports.len().clamp(2, 12) + 1)
        // Rounds are integers; ticks between them stay unlabelled.
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && *x >= 0.0 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
        .x_desc("round")
        .y_desc("seconds")
        .draw()?;

    let mut base = vec![0.0; reports.len()];
    for &stage in &plan.stages {
        let colour = stage_colour(stage);
        let bars: Vec<Rectangle<(f64, f64)>> = reports
            .iter()
            .enumerate()
            .filter_map(|(i, report)| {
                let seconds = *report.stage_seconds.get(&stage)?;
                let bottom = base[i];
                base[i] += seconds;
                let x = i as f64;
                Some(Rectangle::new(
                    [(x - 0.35, bottom), (x + 0.35, bottom + seconds)],
                    colour.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(stage.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    // Mark aborted rounds: their bars stop at the stage that aborted.
    if reports.len() <= 40 {
        chart.draw_series(
            reports
                .iter()
                .enumerate()
                .filter(|(_, r)| r.outcome == Outcome::Aborted)
                .map(|(i, _)| {
                    Text::new(
                        "aborted",
                        (i as f64 - 0.3, base[i] + y_max * 0.04),
                        ("sans-serif", 12),
                    )
                }),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
