//! The terminal side of `tessera demo`: run the job (or a baseline) with
//! progress bars, print its table as rounds end, and write its files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::graph::GraphKind;
use tessera_train::baseline::{self, BaselineRound};
use tessera_train::experiment::{Experiment, ExperimentError};

use super::args::{BaselineArg, DatasetArg, DemoArgs};
use super::{DemoConfig, DemoError, DemoEvent, DemoReport, DpMode, RoundRow, Started, sweep};
use crate::report::{self, DEMO_TABLE_HEADER, DemoMarks, demo_table_row};
use crate::usage;

/// Runs `tessera demo`.
pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config();
    if args.dataset == DatasetArg::FashionMnist && !args.fashion_mnist_dir.is_dir() {
        usage!(
            "{} does not exist: install Debian's dataset-fashion-mnist package \
             (apt-get install dataset-fashion-mnist) or pass --fashion-mnist-dir",
            args.fashion_mnist_dir.display()
        );
    }
    if let Some(which) = args.baseline {
        return run_baseline(&cfg, which);
    }
    if args.sweep {
        return run_sweep(&cfg);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let started = Instant::now();
    let report = demo_job(&runtime, &cfg)?;
    // The no-DP line of the chart: the same training in process, no
    // masking, no DP (the `plain-fedavg` baseline).
    let no_dp = if cfg.dp == DpMode::Off {
        None
    } else {
        Some(no_dp_line(&cfg)?)
    };
    let (csv, svg) = write_files(&cfg, &report, no_dp.as_deref())?;
    print_summary(&report, started, &csv, &svg);
    Ok(ExitCode::SUCCESS)
}

/// Runs one demo job with its progress display; a setting out of range is
/// a usage error.
fn demo_job(runtime: &tokio::runtime::Runtime, cfg: &DemoConfig) -> anyhow::Result<DemoReport> {
    let mut display = Display::new(cfg);
    let result = runtime.block_on(super::run_job(cfg, |event| display.show(event)));
    display.finish();
    match result {
        Ok(report) => Ok(report),
        Err(DemoError::Config(why)) => usage!("{why}"),
        Err(e) => Err(anyhow::Error::new(e).context("the demo failed")),
    }
}

/// The plain-FedAvg baseline's accuracy per round, for the chart's no-DP
/// line.
fn no_dp_line(cfg: &DemoConfig) -> anyhow::Result<Vec<f32>> {
    let started = Instant::now();
    let rows = checked(cfg, |training| baseline::plain_fedavg(training, |_| {}))?;
    println!(
        "no-DP reference for rounds.svg: plain FedAvg in process, final accuracy {:.4} ({:.1} s)",
        rows.last().map_or(f32::NAN, |r| r.accuracy),
        started.elapsed().as_secs_f64()
    );
    Ok(rows.iter().map(|r| r.accuracy).collect())
}

/// Runs `tessera demo --sweep`: the demo over epsilon for each private
/// mechanism, the no-DP run and the central baseline.
fn run_sweep(cfg: &DemoConfig) -> anyhow::Result<ExitCode> {
    if let Err(DemoError::Config(why)) = cfg.check() {
        usage!("{why}");
    }
    super::output::prepare_sweep_out(&cfg.out)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let started = Instant::now();
    let arms = sweep::Arm::ALL;
    println!(
        "sweep: {} runs ({} mechanisms x epsilon {:?}, no DP, central baseline) into {}",
        sweep::planned_runs(&arms).len(),
        arms.len(),
        sweep::EPSILONS,
        cfg.out.display()
    );
    let mut progress = SweepDisplay;
    let points = sweep::run_sweep(cfg, &arms, &mut progress, |run, no_dp| {
        let report = demo_job(&runtime, run)?;
        write_files(run, &report, no_dp)?;
        Ok(sweep::RunResult {
            accuracy: report
                .rows
                .iter()
                .rev()
                .find(|r| r.completed)
                .map_or(report.initial_accuracy, |r| r.accuracy),
            epsilon_spent: report.rows.last().map_or(0.0, |r| r.epsilon),
            per_round: report.rows.iter().map(|r| r.accuracy).collect(),
        })
    })?;
    println!(
        "sweep done: {} runs in {:.1} s; wrote {}, {}",
        points.len(),
        started.elapsed().as_secs_f64(),
        cfg.out.join("sweep.csv").display(),
        cfg.out.join("sweep.svg").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The sweep's lines between runs (each run prints its own table).
struct SweepDisplay;

impl sweep::SweepProgress for SweepDisplay {
    fn starting(&mut self, index: usize, total: usize, label: &str) {
        println!("\n== sweep run {}/{total}: {label}", index + 1);
    }

    fn finished(&mut self, point: &sweep::SweepPoint) {
        println!(
            "== {}: final accuracy {:.4}, epsilon {:.3} against {} ({:.1} s)",
            point.arm, point.accuracy, point.epsilon_spent, point.adversary, point.seconds
        );
    }
}

/// A progress bar style with `template`.
fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

/// The job's progress on the terminal: a bar of rounds, a bar of the
/// clients done in the current round, and the table printed above them.
struct Display<'a> {
    /// The settings, for the opening lines.
    cfg: &'a DemoConfig,
    /// Both bars.
    multi: MultiProgress,
    /// Rounds done.
    rounds_bar: ProgressBar,
    /// Clients done in the current round.
    clients_bar: ProgressBar,
    /// The round `clients_bar` counts.
    current_round: u64,
}

impl<'a> Display<'a> {
    /// The bars, hidden unless stderr is a terminal.
    fn new(cfg: &'a DemoConfig) -> Self {
        let multi = MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        let rounds_bar = multi.add(ProgressBar::new(cfg.training.rounds));
        rounds_bar.set_style(bar_style(
            "rounds  [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        ));
        let clients_bar = multi.add(ProgressBar::new(cfg.cohort_size() as u64));
        clients_bar.set_style(bar_style("clients [{bar:30}] {pos}/{len} {msg}"));
        Display {
            cfg,
            multi,
            rounds_bar,
            clients_bar,
            current_round: 0,
        }
    }

    /// Shows one event of the job.
    fn show(&mut self, event: &DemoEvent) {
        match event {
            DemoEvent::Started(started) => {
                let opening = opening(self.cfg, started);
                self.multi.suspend(|| println!("{opening}"));
            }
            DemoEvent::ClientDone { round } => {
                if *round != self.current_round {
                    self.current_round = *round;
                    self.clients_bar.reset();
                    self.clients_bar.set_message(format!("round {round}"));
                }
                self.clients_bar.inc(1);
            }
            DemoEvent::Round(row) => {
                self.multi.suspend(|| println!("{}", demo_table_row(row)));
                self.rounds_bar.inc(1);
            }
        }
    }

    /// Clears the bars.
    fn finish(self) {
        self.clients_bar.finish_and_clear();
        self.rounds_bar.finish_and_clear();
    }
}

/// The lines printed once the server listens: the federation, the
/// masking, the privacy, the threat model if not the default, and the
/// table's heading.
fn opening(cfg: &DemoConfig, started: &Started) -> String {
    let Started {
        url,
        dim,
        noise_multiplier,
        graph,
        threshold,
        min_survivors,
        accuracy,
        expected_noise_norm,
    } = started;
    let privacy = match cfg.dp {
        DpMode::Off => "no DP".to_owned(),
        DpMode::Central => format!(
            "central DP, noise multiplier {noise_multiplier:.3} for epsilon {} at delta {}",
            cfg.epsilon, cfg.delta
        ),
        DpMode::Distributed => format!(
            "distributed DP (discrete Gaussian), noise multiplier {noise_multiplier:.3} for epsilon {} at delta {}",
            cfg.epsilon, cfg.delta
        ),
        DpMode::Ftrl => format!(
            "DP-FTRL (tree noise added by the server; holds against model consumers, not the server), \
             noise multiplier {noise_multiplier:.3} for epsilon {} at delta {}; {} clients per round, \
             each once per tree of {} rounds",
            cfg.epsilon,
            cfg.delta,
            cfg.cohort_size(),
            cfg.ftrl_epoch_rounds
        ),
    };
    let graph = match graph {
        GraphKind::Complete => "complete graph".to_owned(),
        GraphKind::Harary { k } => format!("SecAgg+ Harary graph, {k} neighbours"),
    };
    let clients = cfg.training.clients;
    let cohort = cfg.cohort_size();
    let mut text = format!(
        "server at {url} (TLS, {clients} tokens); model {} with {dim} parameters\n\
         masking: {graph}, Shamir threshold {threshold}, rounds need {min_survivors} of {cohort} survivors\n\
         {privacy}; initial accuracy {accuracy:.4}",
        cfg.training.model,
    );
    if cfg.threat_model != ThreatModel::SemiHonest {
        text.push_str(&format!(
            "\nthreat model: {}{}",
            cfg.threat_model,
            if cfg.threat_model == ThreatModel::MaliciousServer {
                " (adverts and survivor sets signed with the identities in enrolled.txt)"
            } else {
                ""
            }
        ));
    }
    if let Some(warning) = noise_warning(cfg, *noise_multiplier, *dim, *expected_noise_norm) {
        text.push('\n');
        text.push_str(&warning);
    }
    text.push('\n');
    text.push_str(DEMO_TABLE_HEADER);
    text
}

/// The warning printed before training when the DP noise in the averaged
/// update is expected to be larger than the clip norm, which bounds every
/// client's update: the rounds would then mostly apply noise.
pub(super) fn noise_warning(
    cfg: &DemoConfig,
    noise_multiplier: f64,
    dim: usize,
    expected_noise_norm: f64,
) -> Option<String> {
    let clip = f64::from(cfg.training.clip_norm);
    (expected_noise_norm > clip).then(|| {
        format!(
            "warning: the DP noise in each round's averaged update is expected to have norm \
             {expected_noise_norm:.3}, larger than the clip norm {clip} that bounds every \
             client's update ({} clients, {} expected to drop, noise multiplier \
             {noise_multiplier:.3}, {dim} parameters): the model will mostly learn noise. \
             More clients, fewer rounds, a smaller model or a larger epsilon lower it.",
            cfg.cohort_size(),
            cfg.dropouts_per_round(),
        )
    })
}

/// Writes `rounds.csv` and `rounds.svg` into the output directory, the
/// chart marking the epsilon budget (DP on) and `no_dp`'s accuracy per
/// round; returns their paths.
fn write_files(
    cfg: &DemoConfig,
    report: &DemoReport,
    no_dp: Option<&[f32]>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let marks = DemoMarks {
        budget: (cfg.dp != DpMode::Off).then_some(cfg.epsilon),
        no_dp,
    };
    write_rows(
        cfg,
        &report.rows,
        report.initial_accuracy,
        marks,
        &chart_title(cfg),
    )
}

/// Writes `rows` as `rounds.csv` and `rounds.svg` into `cfg.out`.
fn write_rows(
    cfg: &DemoConfig,
    rows: &[RoundRow],
    initial_accuracy: f32,
    marks: DemoMarks<'_>,
    title: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let csv = cfg.out.join("rounds.csv");
    report::write_demo_csv(&csv, rows).with_context(|| format!("writing {}", csv.display()))?;
    let svg = cfg.out.join("rounds.svg");
    report::write_demo_chart(&svg, rows, initial_accuracy, marks, title)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", svg.display()))?;
    Ok((csv, svg))
}

/// Writes a baseline's rounds as the demo's `rounds.csv` and `rounds.svg`
/// into `cfg.out` (no traffic, no DP).
pub(super) fn write_baseline_files(
    cfg: &DemoConfig,
    rows: &[BaselineRound],
    what: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let initial = initial_accuracy(cfg)?;
    let rows: Vec<RoundRow> = rows.iter().map(baseline_row).collect();
    let title = format!(
        "{what}: {} clients' data, {} rounds, no DP: accuracy per round",
        cfg.training.clients,
        rows.len()
    );
    write_rows(cfg, &rows, initial, DemoMarks::default(), &title)
}

/// Accuracy of the initial model on the held-out split, for round 0 of a
/// baseline's chart.
fn initial_accuracy(cfg: &DemoConfig) -> anyhow::Result<f32> {
    let (dataset, arch) = cfg.training.prepare().map_err(DemoError::from)?;
    let init = tessera_client::burn::flatten(&arch.init(cfg.training.seed));
    Ok(tessera_train::local::evaluate(&arch, &init, &dataset.test).0)
}

/// The title of `rounds.svg`.
fn chart_title(cfg: &DemoConfig) -> String {
    format!(
        "{} clients, {} dropout, {}: accuracy and epsilon per round",
        cfg.training.clients,
        cfg.training.dropout,
        match cfg.dp {
            DpMode::Off => "no DP".to_owned(),
            DpMode::Central => format!("central DP eps {}", cfg.epsilon),
            DpMode::Distributed => format!("distributed DP eps {}", cfg.epsilon),
            DpMode::Ftrl => format!("DP-FTRL eps {}", cfg.epsilon),
        }
    )
}

/// The closing lines: why the job stopped early, if it did, the final
/// accuracy and epsilon, and what was written where.
fn print_summary(report: &DemoReport, started: Instant, csv: &Path, svg: &Path) {
    if let Some(why) = &report.stopped_early {
        println!("stopped after {} rounds: {why}", report.rows.len());
    }
    let last = report.rows.last();
    println!(
        "{} rounds in {:.1} s; final accuracy {:.4} (initial {:.4}); epsilon spent {:.3}",
        report.rows.len(),
        started.elapsed().as_secs_f64(),
        last.map_or(report.initial_accuracy, |r| r.accuracy),
        report.initial_accuracy,
        last.map_or(0.0, |r| r.epsilon),
    );
    println!(
        "wrote {} (published models, ledger), {}, {}",
        report.data_dir.display(),
        csv.display(),
        svg.display()
    );
}

/// Runs `tessera demo --baseline WHICH`: the same training without the
/// server.
fn run_baseline(cfg: &DemoConfig, which: BaselineArg) -> anyhow::Result<ExitCode> {
    if let Err(DemoError::Config(why)) = cfg.check() {
        usage!("{why}");
    }
    super::output::prepare_out(&cfg.out)?;
    let started = Instant::now();
    let training = &cfg.training;
    match which {
        BaselineArg::PlainFedavg => {
            println!(
                "plain FedAvg baseline: {} clients, {} rounds, same split, model and dropouts; no masking, no DP",
                training.clients, training.rounds
            );
            println!("{DEMO_TABLE_HEADER}");
            let show = |round: &BaselineRound| println!("{}", demo_table_row(&baseline_row(round)));
            let rows = checked(cfg, |training| baseline::plain_fedavg(training, show))?;
            let last = rows.last().map_or(f32::NAN, |r| r.accuracy);
            println!(
                "final accuracy {last:.4} after {} rounds in {:.1} s",
                rows.len(),
                started.elapsed().as_secs_f64()
            );
            let (csv, svg) = write_baseline_files(cfg, &rows, "plain FedAvg baseline")?;
            println!("wrote {}, {}", csv.display(), svg.display());
        }
        BaselineArg::Central => {
            println!(
                "central baseline: one model on all training data, {} epochs per round",
                training.local.epochs
            );
            println!("{DEMO_TABLE_HEADER}");
            let show = |round: &BaselineRound| println!("{}", demo_table_row(&baseline_row(round)));
            let rows = checked(cfg, |training| baseline::central_rounds(training, show))?;
            let last = rows.last().map_or(f32::NAN, |r| r.accuracy);
            println!(
                "final accuracy {last:.4} after {} epochs in {:.1} s",
                training.local.epochs * rows.len(),
                started.elapsed().as_secs_f64()
            );
            let (csv, svg) = write_baseline_files(cfg, &rows, "central baseline")?;
            println!("wrote {}, {}", csv.display(), svg.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `baseline` on the job's training settings once every setting of
/// the job checks out, as the demo would: a setting out of range is a
/// usage error, like the demo's.
fn checked<T>(
    cfg: &DemoConfig,
    baseline: impl FnOnce(&Experiment) -> Result<T, ExperimentError>,
) -> anyhow::Result<T> {
    let result = cfg
        .check()
        .and_then(|()| baseline(&cfg.training).map_err(DemoError::from));
    match result {
        Ok(value) => Ok(value),
        Err(DemoError::Config(why)) => usage!("{why}"),
        Err(e) => Err(anyhow::Error::new(e).context("the baseline failed")),
    }
}

/// A round of the plain-FedAvg baseline as a row of the demo's table: no
/// traffic, no DP, nothing to check against.
fn baseline_row(round: &BaselineRound) -> RoundRow {
    RoundRow {
        round: round.round,
        survivors: round.survivors,
        dropped: round.dropped,
        lost: 0,
        completed: true,
        accuracy: round.accuracy,
        loss: round.loss,
        epsilon: 0.0,
        seconds: round.seconds,
        bytes_per_client: 0,
        bytes_received: 0,
        max_error_vs_plain: None,
        federated_accuracy: None,
    }
}
