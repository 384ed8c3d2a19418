//! `tessera demo --sweep`: the privacy/accuracy trade-off, measured.
//!
//! The demo's job is run once per (mechanism, epsilon) over epsilon in
//! {1, 2, 4, 8, 16} for each private mechanism [`Arm`], once without DP
//! (the federated reference) and once as the central baseline (one model
//! trained on all the clients' data, no server). Every run keeps its own
//! directory under `OUT/runs/` with its `rounds.csv` and `rounds.svg`;
//! the sweep writes `OUT/sweep.csv` (one line per run) and `OUT/sweep.svg`
//! (final test accuracy against epsilon, one line per mechanism, the
//! no-DP and central runs as horizontal reference lines).
//!
//! Each epsilon is the ledger's, against the adversary the mechanism
//! names: distributed DP-FedAvg holds against the server; server-added
//! noise (DP-FTRL) only against consumers of the published model. The
//! CSV says which, per line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tessera_train::baseline;

use super::{DemoConfig, DemoError, DpMode};

/// The epsilons every private mechanism is run at.
pub(crate) const EPSILONS: [f64; 5] = [1.0, 2.0, 4.0, 8.0, 16.0];

/// One private mechanism of the sweep: how it turns the demo's settings
/// into a run at a given epsilon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arm {
    /// Distributed DP-FedAvg with the demo's fixed clip norm: clients add
    /// discrete Gaussian noise; holds against the server.
    FedAvg,
    /// The same with adaptive clipping (Andrew et al. 2021): the clip norm
    /// follows the median update norm, from clients' noisy indicator bits;
    /// holds against the server.
    FedAvgAdaptiveClip,
    /// DP-FTRL (Kairouz et al. 2021): the server adds tree noise to the
    /// prefix sums, clients take part once per tree; holds against the
    /// model's consumers only.
    Ftrl,
}

impl Arm {
    /// Every arm, in the order the CSV and the chart list them.
    pub(crate) const ALL: [Arm; 3] = [Arm::FedAvg, Arm::FedAvgAdaptiveClip, Arm::Ftrl];

    /// Its name in the CSV, the chart and the run directories.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Arm::FedAvg => "dp-fedavg",
            Arm::FedAvgAdaptiveClip => "dp-fedavg-adaptive-clip",
            Arm::Ftrl => "dp-ftrl",
        }
    }

    /// Against whom its epsilon holds, as the ledger names it.
    pub(crate) fn adversary(self) -> &'static str {
        match self {
            Arm::FedAvg | Arm::FedAvgAdaptiveClip => "server",
            Arm::Ftrl => "model-consumers",
        }
    }

    /// The run of this arm at `epsilon`, from the demo's settings `base`.
    pub(crate) fn config(self, base: &DemoConfig, epsilon: f64, out: PathBuf) -> DemoConfig {
        let (dp, adaptive_clip) = match self {
            Arm::FedAvg => (DpMode::Distributed, false),
            Arm::FedAvgAdaptiveClip => (DpMode::Distributed, true),
            Arm::Ftrl => (DpMode::Ftrl, false),
        };
        DemoConfig {
            dp,
            adaptive_clip,
            epsilon,
            noise_multiplier: None,
            out,
            ..base.clone()
        }
    }
}

/// One run of the sweep, as `sweep.csv` lists it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SweepPoint {
    /// `dp-fedavg`, ..., `no-dp` or `central`.
    pub(crate) arm: String,
    /// The target epsilon (`None`: no DP).
    pub(crate) epsilon: Option<f64>,
    /// The epsilon the ledger charged by the end (0 without DP).
    pub(crate) epsilon_spent: f64,
    /// Against whom it holds (`-` without DP).
    pub(crate) adversary: &'static str,
    /// Test accuracy of the final published model.
    pub(crate) accuracy: f32,
    /// Rounds the run completed (for `central`: rounds' worth of epochs).
    pub(crate) rounds: u64,
    /// Wall time of the run.
    pub(crate) seconds: f64,
    /// Its directory, relative to the sweep's `--out`.
    pub(crate) dir: PathBuf,
}

/// What a sweep shows while it runs.
pub(crate) trait SweepProgress {
    /// A run is about to start; `index` of `total`.
    fn starting(&mut self, index: usize, total: usize, label: &str);
    /// A run ended.
    fn finished(&mut self, point: &SweepPoint);
}

/// The runs of a sweep, in order: no DP first (every private run's chart
/// draws its accuracy as the no-DP line), the central baseline, then each
/// arm at each epsilon.
pub(crate) fn planned_runs(arms: &[Arm]) -> Vec<(String, Option<(Arm, f64)>)> {
    let mut runs: Vec<(String, Option<(Arm, f64)>)> =
        vec![("no-dp".into(), None), ("central".into(), None)];
    runs.extend(arms.iter().flat_map(|&arm| {
        EPSILONS
            .iter()
            .map(move |&eps| (format!("{}-eps{eps}", arm.name()), Some((arm, eps))))
    }));
    runs
}

/// What one demo job of the sweep gives back.
pub(crate) struct RunResult {
    /// Test accuracy of the final published model.
    pub(crate) accuracy: f32,
    /// Epsilon the ledger charged by the end.
    pub(crate) epsilon_spent: f64,
    /// Accuracy after each round, for the next runs' no-DP line.
    pub(crate) per_round: Vec<f32>,
}

/// Runs the sweep into `base.out`; `run` runs one demo job and writes its
/// files (the caller's, so it keeps its display), given the no-DP run's
/// accuracy per round once there is one.
pub(crate) fn run_sweep(
    base: &DemoConfig,
    arms: &[Arm],
    progress: &mut dyn SweepProgress,
    mut run: impl FnMut(&DemoConfig, Option<&[f32]>) -> anyhow::Result<RunResult>,
) -> anyhow::Result<Vec<SweepPoint>> {
    let runs = planned_runs(arms);
    let total = runs.len();
    let mut points = Vec::with_capacity(total);
    let mut no_dp_line: Option<Vec<f32>> = None;
    for (index, (label, arm)) in runs.into_iter().enumerate() {
        progress.starting(index, total, &label);
        let dir = PathBuf::from("runs").join(&label);
        let out = base.out.join(&dir);
        let started = Instant::now();
        let point = match (label.as_str(), arm) {
            (_, Some((arm, epsilon))) => {
                let cfg = arm.config(base, epsilon, out);
                let result = run(&cfg, no_dp_line.as_deref())
                    .with_context(|| format!("sweep run {label}"))?;
                SweepPoint {
                    arm: arm.name().into(),
                    epsilon: Some(epsilon),
                    epsilon_spent: result.epsilon_spent,
                    adversary: arm.adversary(),
                    accuracy: result.accuracy,
                    rounds: result.per_round.len() as u64,
                    seconds: started.elapsed().as_secs_f64(),
                    dir,
                }
            }
            ("no-dp", None) => {
                let cfg = DemoConfig {
                    dp: DpMode::Off,
                    adaptive_clip: false,
                    out,
                    ..base.clone()
                };
                let result = run(&cfg, None).with_context(|| format!("sweep run {label}"))?;
                let point = SweepPoint {
                    arm: label.clone(),
                    epsilon: None,
                    epsilon_spent: 0.0,
                    adversary: "-",
                    accuracy: result.accuracy,
                    rounds: result.per_round.len() as u64,
                    seconds: started.elapsed().as_secs_f64(),
                    dir,
                };
                no_dp_line = Some(result.per_round);
                point
            }
            _ => {
                let cfg = DemoConfig {
                    out,
                    ..base.clone()
                };
                let rows = central_run(&cfg)?;
                SweepPoint {
                    arm: label.clone(),
                    epsilon: None,
                    epsilon_spent: 0.0,
                    adversary: "-",
                    accuracy: rows.last().map_or(f32::NAN, |r| r.accuracy),
                    rounds: rows.len() as u64,
                    seconds: started.elapsed().as_secs_f64(),
                    dir,
                }
            }
        };
        progress.finished(&point);
        points.push(point);
        crate::report::write_sweep_csv(&base.out.join("sweep.csv"), &points)
            .context("writing sweep.csv")?;
    }
    crate::report::write_sweep_chart(&base.out.join("sweep.svg"), &points, &sweep_title(base))
        .context("writing sweep.svg")?;
    Ok(points)
}

/// The central baseline of the sweep, written into its own directory like
/// a baseline run.
fn central_run(cfg: &DemoConfig) -> anyhow::Result<Vec<baseline::BaselineRound>> {
    super::output::prepare_out(&cfg.out)?;
    let rows = baseline::central_rounds(&cfg.training, |_| {})
        .map_err(DemoError::from)
        .context("sweep run central")?;
    super::command::write_baseline_files(cfg, &rows, "central baseline")?;
    Ok(rows)
}

/// The chart's title.
fn sweep_title(base: &DemoConfig) -> String {
    let t = &base.training;
    format!(
        "{} clients, {} rounds, {} dropout: final test accuracy against epsilon (delta {})",
        t.clients, t.rounds, t.dropout, base.delta
    )
}

/// Files and directories a sweep writes in its `--out`.
pub(crate) const SWEEP_OUTPUTS: [&str; 3] = ["sweep.csv", "sweep.svg", "runs"];
