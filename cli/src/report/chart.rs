//! The charts: `rounds.svg` of `tessera demo` (accuracy and epsilon spent
//! per round) and `stage_times.svg` of `tessera simulate` (a stacked bar
//! per round of the wall time of each stage, so a run shows at a glance
//! which stage dominates and whether rounds vary).
//!
//! Both are drawn by [`write_chart`]: one size, one white background, one
//! palette, rendered in memory and written with [`super::write_atomic`].
//! plotters draws them with its SVG backend alone (no font libraries: SVG
//! text is emitted as `<text>` elements and the viewer picks the font).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use tessera_aggregation::Stage;
use tessera_aggregation::sim::{Outcome, RoundReport};

use crate::demo::{RoundRow, SweepPoint};
use crate::params::graph_name;
use crate::simulate::Plan;

/// The colours of every chart, in order (Tableau 10's first five): the
/// demo's two lines take the first two, the simulator's stacked stages one
/// each in protocol order, so they stay distinguishable when stacked.
const PALETTE: [RGBColor; 5] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xe1, 0x57, 0x59),
];

/// Every chart's size in pixels.
const SIZE: (u32, u32) = (960, 540);

/// The drawing area a chart is drawn on.
type Canvas<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Renders the chart `draw` draws on a white canvas and writes it to
/// `path` (atomically, so a reader never sees half a chart).
fn write_chart(
    path: &Path,
    draw: impl for<'a, 'b> FnOnce(&'b Canvas<'a>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    super::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// A stage's colour: its place in the protocol's order.
fn stage_colour(stage: Stage) -> RGBColor {
    let index = Stage::ALL.iter().position(|s| *s == stage);
    PALETTE[index.expect("every stage is in Stage::ALL")]
}

/// What the demo's chart marks besides its own run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DemoMarks<'a> {
    /// The epsilon budget, drawn as a dashed line on the epsilon axis.
    pub(crate) budget: Option<f64>,
    /// The no-DP run's accuracy per round (round 1 first), drawn as a
    /// dashed line, so the cost of privacy shows.
    pub(crate) no_dp: Option<&'a [f32]>,
}

/// Draws accuracy (left axis) and epsilon spent (right axis) per round of
/// the demo to `path`; `initial_accuracy` is plotted at round 0, `marks`
/// adds the budget and the no-DP line, and `title` heads the chart.
pub(crate) fn write_demo_chart(
    path: &Path,
    rows: &[RoundRow],
    initial_accuracy: f32,
    marks: DemoMarks<'_>,
    title: &str,
) -> anyhow::Result<()> {
    write_chart(path, |root| {
        draw_demo_chart(root, rows, initial_accuracy, marks, title)
    })
}

/// A dashed horizontal or sloped line through `points`, as plotters'
/// `DashedLineSeries` draws it.
fn dashed<C: Color>(
    points: Vec<(u64, f64)>,
    colour: C,
) -> DashedLineSeries<std::vec::IntoIter<(u64, f64)>, i32> {
    DashedLineSeries::new(points, 6, 4, colour.stroke_width(2))
}

/// The demo's chart on `root`.
fn draw_demo_chart(
    root: &Canvas<'_>,
    rows: &[RoundRow],
    initial_accuracy: f32,
    marks: DemoMarks<'_>,
    title: &str,
) -> anyhow::Result<()> {
    let rounds = rows.last().map_or(1, |r| r.round).max(1);
    let eps_max = rows
        .iter()
        .map(|r| r.epsilon)
        .chain(marks.budget)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .right_y_label_area_size(56)
        .build_cartesian_2d(0u64..rounds, 0f64..1.0)?
        .set_secondary_coord(0u64..rounds, 0f64..eps_max);
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("test accuracy")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("epsilon spent")
        .draw()?;
    let [blue, orange, ..] = PALETTE;
    let accuracy = std::iter::once((0, f64::from(initial_accuracy)))
        .chain(rows.iter().map(|r| (r.round, f64::from(r.accuracy))));
    chart
        .draw_series(LineSeries::new(accuracy, blue.stroke_width(2)))?
        .label("accuracy")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], blue.stroke_width(2)));
    let epsilon = std::iter::once((0, 0.0)).chain(rows.iter().map(|r| (r.round, r.epsilon)));
    chart
        .draw_secondary_series(LineSeries::new(epsilon, orange.stroke_width(2)))?
        .label("epsilon")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], orange.stroke_width(2)));
    let [.., green, _, red] = PALETTE;
    if let Some(budget) = marks.budget {
        chart
            .draw_secondary_series(dashed(vec![(0, budget), (rounds, budget)], red))?
            .label(format!("epsilon budget {budget}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], red.stroke_width(2)));
    }
    if let Some(no_dp) = marks.no_dp {
        let line = std::iter::once((0, f64::from(initial_accuracy)))
            .chain((1..).zip(no_dp.iter().map(|&a| f64::from(a))))
            .collect();
        chart
            .draw_series(dashed(line, green))?
            .label("accuracy without DP")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], green.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Draws final test accuracy against epsilon (log scale) for each private
/// arm of a sweep, with the no-DP and central runs as horizontal dashed
/// reference lines, to `path`.
pub(crate) fn write_sweep_chart(
    path: &Path,
    points: &[SweepPoint],
    title: &str,
) -> anyhow::Result<()> {
    write_chart(path, |root| draw_sweep_chart(root, points, title))
}

/// The sweep's chart on `root`.
fn draw_sweep_chart(root: &Canvas<'_>, points: &[SweepPoint], title: &str) -> anyhow::Result<()> {
    let epsilons: Vec<f64> = points.iter().filter_map(|p| p.epsilon).collect();
    let lo = epsilons
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        * 0.8;
    let hi = epsilons.iter().copied().fold(0.0, f64::max).max(2.0) * 1.25;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("epsilon (delta as titled; each arm against the adversary it names)")
        .y_desc("final test accuracy")
        .x_label_formatter(&|x| format!("{x}"))
        .draw()?;
    let mut arms: Vec<&str> = Vec::new();
    for p in points.iter().filter(|p| p.epsilon.is_some()) {
        if !arms.contains(&p.arm.as_str()) {
            arms.push(&p.arm);
        }
    }
    for (i, arm) in arms.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut line: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.arm == *arm)
            .filter_map(|p| Some((p.epsilon?, f64::from(p.accuracy))))
            .collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        let adversary = points
            .iter()
            .find(|p| p.arm == *arm)
            .map_or("-", |p| p.adversary);
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
            .label(format!(
                "{arm} (against the {})",
                adversary.replace('-', " ")
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?;
    }
    let references = [
        ("no-dp", "no DP, federated"),
        ("central", "central baseline"),
    ];
    for (i, (arm, label)) in references.into_iter().enumerate() {
        let Some(p) = points.iter().find(|p| p.arm == arm) else {
            continue;
        };
        let colour = if i == 0 {
            BLACK
        } else {
            RGBColor(0x76, 0x76, 0x76)
        };
        let y = f64::from(p.accuracy);
        chart
            .draw_series(DashedLineSeries::new(
                [(lo, y), (hi, y)],
                6,
                4,
                colour.stroke_width(2),
            ))?
            .label(format!("{label} {y:.3}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Writes the stage chart of `reports` (rounds of `plan`) to `path`.
pub(crate) fn write_stage_chart(
    path: &Path,
    reports: &[RoundReport],
    plan: &Plan,
) -> anyhow::Result<()> {
    write_chart(path, |root| draw_stage_chart(root, reports, plan))
}

/// The simulator's chart on `root`.
fn draw_stage_chart(root: &Canvas<'_>, reports: &[RoundReport], plan: &Plan) -> anyhow::Result<()> {
    let rounds = reports.len().max(1) as f64;
    let tallest = reports
        .iter()
        .map(|r| r.stage_seconds.values().sum::<f64>())
        .fold(0.0, f64::max);
    let y_max = (tallest * 1.15).max(1e-3);
    let mut chart = ChartBuilder::on(root)
        .caption(stage_caption(plan), ("sans-serif", 20))
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
        let bars = stage_bars(reports, stage, colour, &mut base);
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
    Ok(())
}

/// The stage chart's caption: the round's shape.
fn stage_caption(plan: &Plan) -> String {
    let sim = &plan.sim;
    format!(
        "Wall time per stage: n={} d={} {} k={} t={}",
        sim.clients,
        sim.dim,
        graph_name(sim.graph),
        plan.k,
        sim.threshold
    )
}

/// One bar segment per round that ran `stage`, stacked on `base` (each
/// round's height so far, raised by the segment).
fn stage_bars(
    reports: &[RoundReport],
    stage: Stage,
    colour: RGBColor,
    base: &mut [f64],
) -> Vec<Rectangle<(f64, f64)>> {
    reports
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_row as row;

    #[test]
    fn demo_svg_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.svg");
        write_demo_chart(
            &path,
            &[row(1), row(2), row(3)],
            0.1,
            DemoMarks::default(),
            "demo",
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("epsilon spent"));
        assert!(!svg.contains("epsilon budget") && !svg.contains("without DP"));
    }

    #[test]
    fn the_demo_chart_marks_the_budget_and_the_no_dp_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.svg");
        let marks = DemoMarks {
            budget: Some(8.0),
            no_dp: Some(&[0.5, 0.7, 0.9]),
        };
        write_demo_chart(&path, &[row(1), row(2), row(3)], 0.1, marks, "demo").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("epsilon budget 8"), "{svg}");
        assert!(svg.contains("accuracy without DP"));
    }

    #[test]
    fn the_sweep_chart_draws_each_arm_and_the_reference_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        let point = |arm: &str, epsilon: Option<f64>, accuracy: f32| SweepPoint {
            arm: arm.into(),
            epsilon,
            epsilon_spent: epsilon.unwrap_or(0.0),
            adversary: if epsilon.is_some() { "server" } else { "-" },
            accuracy,
            rounds: 3,
            seconds: 1.0,
            dir: "runs/x".into(),
        };
        let points = [
            point("no-dp", None, 0.9),
            point("central", None, 0.95),
            point("dp-fedavg", Some(1.0), 0.4),
            point("dp-fedavg", Some(8.0), 0.8),
        ];
        write_sweep_chart(&path, &points, "sweep").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for label in [
            "dp-fedavg (against the server)",
            "no DP, federated",
            "central baseline",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
