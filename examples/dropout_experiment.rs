//! How dropouts cost a round: sweeps the dropout rate from 0 to 40% and
//! the client count, with the in-process simulator (real client and server
//! state machines, virtual time), and reports round time and the fraction
//! of rounds that completed.
//!
//! ```text
//! cargo run --release -p tessera-examples --example dropout_experiment -- [OUT_DIR]
//! ```
//!
//! Each client count uses the SecAgg+ parameters the finder picks for an
//! expected dropout of 10% (so rates above that probe the margin); the
//! dropouts are spread evenly over the four stages. Writes
//! `OUT_DIR/dropout.csv` and `OUT_DIR/dropout.svg` (default OUT_DIR:
//! `dropout-experiment`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use plotters::prelude::*;
use tessera_aggregation::Stage;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;
use tessera_aggregation::params::{ParamsRequest, find_params};
use tessera_aggregation::sim::{Outcome, SimConfig, run_round};

const CLIENTS: [u32; 3] = [50, 100, 200];
const RATES: [f64; 5] = [0.0, 0.1, 0.2, 0.3, 0.4];
const ROUNDS: u32 = 5;
const DIM: u32 = 1000;
const STAGES: [Stage; 4] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInput,
    Stage::Unmasking,
];

/// One point of the sweep.
struct Point {
    clients: u32,
    rate: f64,
    success: f64,
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "dropout-experiment".into()),
    );
    std::fs::create_dir_all(&out)?;
    let mut points = Vec::new();
    for &clients in &CLIENTS {
        let params = find_params(&ParamsRequest {
            clients,
            dropout_rate: 0.1,
            corrupt_rate: 0.05,
            threat_model: ThreatModel::SemiHonest,
        })?;
        for &rate in &RATES {
            // Per-stage fraction f with 1 - (1 - f)^4 = rate.
            let per_stage = 1.0 - (1.0 - rate).powf(0.25);
            let drops: BTreeMap<Stage, f64> = STAGES.iter().map(|&s| (s, per_stage)).collect();
            let sim = SimConfig {
                clients,
                dim: DIM,
                graph: params.graph,
                threshold: params.threshold,
                bits: 24,
                prg: Prg::Aes128Ctr,
                threat_model: ThreatModel::SemiHonest,
                corrupt: 0,
                drops,
                seed: u64::from(clients) * 1000 + (rate * 100.0) as u64,
                faults: None,
            };
            let (mut completed, mut seconds) = (0u32, 0.0);
            for round in 0..ROUNDS {
                let report = run_round(&sim, round, &|_| {})?;
                if report.outcome == Outcome::Completed {
                    anyhow::ensure!(report.verified, "a completed round's sum was wrong");
                    completed += 1;
                }
                seconds += report.total_seconds;
            }
            let point = Point {
                clients,
                rate,
                success: f64::from(completed) / f64::from(ROUNDS),
                seconds: seconds / f64::from(ROUNDS),
            };
            println!(
                "n = {clients:3} (k = {}, t = {}), dropout {:>3.0}%: {:.0}% of rounds completed, {:.3} s per round",
                params.k,
                params.threshold,
                rate * 100.0,
                point.success * 100.0,
                point.seconds
            );
            points.push(point);
        }
    }

    let mut csv = std::fs::File::create(out.join("dropout.csv"))?;
    writeln!(csv, "clients,dropout,success_rate,mean_round_seconds")?;
    for p in &points {
        writeln!(
            csv,
            "{},{},{},{:.4}",
            p.clients, p.rate, p.success, p.seconds
        )?;
    }
    plot(&out.join("dropout.svg"), &points)?;
    println!("wrote {}/dropout.csv and dropout.svg", out.display());
    Ok(())
}

fn plot(path: &std::path::Path, points: &[Point]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let slowest = points.iter().map(|p| p.seconds).fold(0.0, f64::max) * 1.15;
    let colours = [
        RGBColor(0x4e, 0x79, 0xa7),
        RGBColor(0xf2, 0x8e, 0x2b),
        RGBColor(0x59, 0xa1, 0x4f),
    ];
    for (area, title, y_max, value) in [
        (&left, "round time (s)", slowest.max(1e-3), 0usize),
        (&right, "rounds completed", 1.05, 1),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title} vs dropout"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..0.4, 0f64..y_max)?;
        chart.configure_mesh().x_desc("dropout rate").draw()?;
        for (i, &n) in CLIENTS.iter().enumerate() {
            let series = points
                .iter()
                .filter(|p| p.clients == n)
                .map(|p| (p.rate, if value == 0 { p.seconds } else { p.success }));
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(series, colour.stroke_width(2)))?
                .label(format!("n = {n}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
