//! `tessera privacy`: the privacy accountant on the command line.
//!
//! Before a training job starts, its owner wants three answers: how much
//! privacy a run at noise multiplier z spends (`epsilon`), which z a target
//! epsilon needs (`noise`), and how many rounds a budget allows (`rounds`).
//! Two mechanisms are accounted (`--mechanism`): DP-FedAvg with Poisson
//! sampling of clients (the default), and DP-FTRL with tree aggregation
//! (Kairouz et al. 2021), whose tree restarts every `--steps-per-epoch`
//! rounds and which samples nothing (each client at most once per tree),
//! so it takes epochs and steps instead of rounds and a sampling rate. The
//! numbers come from the Rényi DP accountant of the `tessera-dp` crate,
//! which matches Google's dp-accounting for both.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tessera_dp::accountant;

use crate::usage;

/// One-line description of the subcommand, for `tessera --help`.
pub(crate) const ABOUT: &str =
    "Account for differential privacy: epsilon, noise multiplier, rounds";

/// The paragraph `tessera privacy --help` opens with.
pub(crate) const LONG_ABOUT: &str = "The Rényi DP accountant. `--mechanism dp-fedavg` (the \
        default) is the Poisson-subsampled Gaussian mechanism (DP-FedAvg): each round samples \
        clients with probability q, clips their updates to norm C and adds Gaussian noise of \
        standard deviation z*C to the sum; it takes --sampling-rate and --rounds. \
        `--mechanism dp-ftrl` is DP-FTRL with tree aggregation (Kairouz et al. 2021, as Google's \
        dp-accounting SingleEpochTreeAggregationDpEvent): the server adds noise of standard \
        deviation z*C to every node of a binary tree over the rounds of an epoch, restarts the \
        tree every --steps-per-epoch S rounds, and takes each client at most once per tree; it \
        takes --steps-per-epoch and --epochs, and refuses --sampling-rate and --rounds (no \
        sampling is claimed). Its epsilon holds against consumers of the published model, not \
        against the server, which adds the noise. Both use the zero-out-one (replace-special) \
        neighbouring relation of the ledger. `epsilon` says what a run spends at a given delta, \
        `noise` finds the smallest z that keeps a run within a target epsilon, `rounds` says how \
        many rounds fit in a budget. Bad input (z <= 0, q outside (0, 1], delta outside (0, 1), \
        zero rounds, steps or epochs, a flag the mechanism does not use) exits with code 2.";

/// The examples `tessera privacy --help` ends with.
pub(crate) const EXAMPLES: &str = "Examples:\n  \
        tessera privacy epsilon --noise-multiplier 1.1 --sampling-rate 0.01 --rounds 1000 --delta 1e-5\n  \
        tessera privacy noise --target-epsilon 8 --sampling-rate 0.05 --rounds 30 --delta 1e-5\n  \
        tessera privacy rounds --noise-multiplier 1.0 --sampling-rate 0.01 --target-epsilon 3 --delta 1e-5 --json\n  \
        tessera privacy epsilon --mechanism dp-ftrl --noise-multiplier 1.5 --steps-per-epoch 15 --epochs 10 --delta 1e-5\n  \
        tessera privacy noise --mechanism dp-ftrl --epsilon 8 --steps-per-epoch 16 --epochs 5 --delta 1e-5\n  \
        tessera privacy rounds --mechanism dp-ftrl --epsilon 8 --noise-multiplier 2 --steps-per-epoch 16 --delta 1e-5";

/// Flags of `tessera privacy`.
#[derive(Debug, Args)]
pub(crate) struct PrivacyArgs {
    /// Which question to answer.
    #[command(subcommand)]
    question: Question,
}

/// Which mechanism's accountant answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mechanism {
    /// DP-FedAvg: Poisson-subsampled Gaussian, per round.
    DpFedavg,
    /// DP-FTRL: tree aggregation restarted every epoch, no sampling.
    DpFtrl,
}

/// The three questions.
#[derive(Debug, Subcommand)]
enum Question {
    /// Epsilon spent by a run, and the Rényi order that attains it.
    #[command(
        after_help = "Examples:\n  tessera privacy epsilon --noise-multiplier 1.1 --sampling-rate 0.01 --rounds 1000 --delta 1e-5\n  tessera privacy epsilon --mechanism dp-ftrl --noise-multiplier 1.5 --steps-per-epoch 15 --epochs 10 --delta 1e-5 --json"
    )]
    Epsilon {
        /// Noise multiplier z: the noise std over the clip norm (> 0).
        #[arg(long, value_name = "Z")]
        noise_multiplier: f64,
        /// Rounds, epochs, sampling rate, delta, output format.
        #[command(flatten)]
        run: Run,
    },
    /// The smallest noise multiplier that keeps a run within a target epsilon.
    #[command(
        after_help = "Examples:\n  tessera privacy noise --target-epsilon 8 --sampling-rate 0.05 --rounds 30 --delta 1e-5\n  tessera privacy noise --mechanism dp-ftrl --epsilon 8 --steps-per-epoch 16 --epochs 5 --delta 1e-5"
    )]
    Noise {
        /// The epsilon not to exceed (> 0).
        #[arg(long, visible_alias = "epsilon", value_name = "E")]
        target_epsilon: f64,
        /// Rounds, epochs, sampling rate, delta, output format.
        #[command(flatten)]
        run: Run,
    },
    /// How many rounds fit in a target epsilon.
    #[command(
        after_help = "Examples:\n  tessera privacy rounds --noise-multiplier 1.0 --sampling-rate 0.01 --target-epsilon 3 --delta 1e-5\n  tessera privacy rounds --mechanism dp-ftrl --epsilon 8 --noise-multiplier 2 --steps-per-epoch 16 --delta 1e-5"
    )]
    Rounds {
        /// Noise multiplier z (> 0).
        #[arg(long, value_name = "Z")]
        noise_multiplier: f64,
        /// The epsilon not to exceed (> 0).
        #[arg(long, visible_alias = "epsilon", value_name = "E")]
        target_epsilon: f64,
        /// Mechanism, sampling rate or steps per epoch, delta, output format.
        #[command(flatten)]
        common: Common,
    },
}

/// The length of the run `epsilon` and `noise` ask about.
#[derive(Debug, Args)]
struct Run {
    /// Number of rounds T (at least 1); dp-fedavg only.
    #[arg(long, value_name = "T")]
    rounds: Option<u64>,
    /// Number of trees E the run composes (at least 1); dp-ftrl only.
    #[arg(long, value_name = "E")]
    epochs: Option<u64>,
    /// Mechanism, sampling rate or steps per epoch, delta, output format.
    #[command(flatten)]
    common: Common,
}

/// Flags every question takes.
#[derive(Debug, Args)]
struct Common {
    /// Which mechanism to account: dp-fedavg (Poisson-subsampled Gaussian)
    /// or dp-ftrl (tree aggregation, restarted every epoch).
    #[arg(long, value_enum, default_value = "dp-fedavg", value_name = "M")]
    mechanism: Mechanism,
    /// Probability q that a client takes part in a round, in (0, 1];
    /// dp-fedavg only.
    #[arg(long, value_name = "Q")]
    sampling_rate: Option<f64>,
    /// Rounds S in one tree before it restarts (at least 1); dp-ftrl only.
    #[arg(long, value_name = "S")]
    steps_per_epoch: Option<u64>,
    /// Delta of the (epsilon, delta) guarantee, in (0, 1).
    #[arg(long, value_name = "D")]
    delta: f64,
    /// Print one JSON object instead of text (keys: `epsilon` and `order`;
    /// `noise_multiplier`; `rounds`).
    #[arg(long)]
    json: bool,
}

/// `tessera privacy epsilon --json`.
#[derive(Debug, Serialize)]
struct EpsilonOutput {
    epsilon: f64,
    order: f64,
}

/// `tessera privacy noise --json`.
#[derive(Debug, Serialize)]
struct NoiseOutput {
    noise_multiplier: f64,
}

/// `tessera privacy rounds --json`.
#[derive(Debug, Serialize)]
struct RoundsOutput {
    rounds: u64,
}

/// What the mechanism's accountant needs besides z (or the target) and δ.
enum Shape {
    /// DP-FedAvg: the sampling rate, and the rounds if the question has them.
    FedAvg { q: f64, rounds: Option<u64> },
    /// DP-FTRL: steps per tree, and the trees if the question has them.
    Ftrl { steps: u64, epochs: Option<u64> },
}

/// Checks the flags against `--mechanism`: each mechanism's own flags must
/// be given (`length` says whether the question needs the run's length),
/// the other mechanism's are refused rather than silently ignored.
fn shape(
    common: &Common,
    rounds: Option<u64>,
    epochs: Option<u64>,
    length: bool,
) -> anyhow::Result<Shape> {
    match common.mechanism {
        Mechanism::DpFedavg => {
            if common.steps_per_epoch.is_some() || epochs.is_some() {
                usage!(
                    "--steps-per-epoch and --epochs are for --mechanism dp-ftrl; dp-fedavg (the default) takes --sampling-rate and --rounds"
                );
            }
            let Some(q) = common.sampling_rate else {
                usage!("--sampling-rate is required for --mechanism dp-fedavg (the default)");
            };
            if length && rounds.is_none() {
                usage!("--rounds is required for --mechanism dp-fedavg (the default)");
            }
            Ok(Shape::FedAvg { q, rounds })
        }
        Mechanism::DpFtrl => {
            if common.sampling_rate.is_some() {
                usage!(
                    "--sampling-rate is not used by --mechanism dp-ftrl: it samples nothing (each client takes part at most once per tree, and no amplification is claimed); remove it"
                );
            }
            if rounds.is_some() {
                usage!(
                    "--rounds is not used by --mechanism dp-ftrl: give the run as --steps-per-epoch S (rounds per tree) and --epochs E (trees)"
                );
            }
            let Some(steps) = common.steps_per_epoch else {
                usage!("--steps-per-epoch is required for --mechanism dp-ftrl");
            };
            if length && epochs.is_none() {
                usage!("--epochs is required for --mechanism dp-ftrl");
            }
            Ok(Shape::Ftrl { steps, epochs })
        }
    }
}

/// Prints `output` as one JSON line.
fn print_json(out: &mut impl Write, output: &impl Serialize) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}",
        serde_json::to_string(output).context("serialising")?
    )?;
    Ok(())
}

/// Turns the accountant's refusal into a usage error (exit code 2).
fn checked<T>(result: Result<T, accountant::AccountantError>) -> anyhow::Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(e) => usage!("{e}"),
    }
}

/// `tessera privacy epsilon`.
fn epsilon(out: &mut impl Write, z: f64, run: &Run) -> anyhow::Result<()> {
    let (delta, json) = (run.common.delta, run.common.json);
    let (report, what) = match shape(&run.common, run.rounds, run.epochs, true)? {
        Shape::FedAvg { q, rounds } => {
            let rounds = rounds.unwrap_or_default();
            (
                checked(accountant::epsilon(z, q, rounds, delta))?,
                format!("after {rounds} rounds (z = {z}, q = {q})"),
            )
        }
        Shape::Ftrl { steps, epochs } => {
            let epochs = epochs.unwrap_or_default();
            (
                checked(accountant::tree_epsilon(z, steps, epochs, delta))?,
                format!(
                    "after {epochs} epochs of {steps} steps of DP-FTRL tree aggregation (z = {z}; holds against model consumers, not the server)"
                ),
            )
        }
    };
    if json {
        return print_json(
            out,
            &EpsilonOutput {
                epsilon: report.epsilon,
                order: report.order,
            },
        );
    }
    writeln!(
        out,
        "epsilon = {:.6} at delta = {delta:e} {what}; optimal Rényi order {}",
        report.epsilon, report.order
    )?;
    Ok(())
}

/// `tessera privacy noise`.
fn noise(out: &mut impl Write, target: f64, run: &Run) -> anyhow::Result<()> {
    let (delta, json) = (run.common.delta, run.common.json);
    let (z, what) = match shape(&run.common, run.rounds, run.epochs, true)? {
        Shape::FedAvg { q, rounds } => {
            let rounds = rounds.unwrap_or_default();
            (
                checked(accountant::noise_multiplier(target, q, rounds, delta))?,
                format!("{rounds} rounds at q = {q}"),
            )
        }
        Shape::Ftrl { steps, epochs } => {
            let epochs = epochs.unwrap_or_default();
            (
                checked(accountant::tree_noise_multiplier(
                    target, steps, epochs, delta,
                ))?,
                format!("{epochs} epochs of {steps} steps of DP-FTRL"),
            )
        }
    };
    if json {
        return print_json(
            out,
            &NoiseOutput {
                noise_multiplier: z,
            },
        );
    }
    writeln!(
        out,
        "noise multiplier z = {z:.6} keeps {what} within epsilon = {target} at delta = {delta:e}"
    )?;
    Ok(())
}

/// `tessera privacy rounds`.
fn rounds(out: &mut impl Write, z: f64, target: f64, common: &Common) -> anyhow::Result<()> {
    let (delta, json) = (common.delta, common.json);
    let (rounds, what) = match shape(common, None, None, false)? {
        Shape::FedAvg { q, .. } => (
            checked(accountant::max_rounds(z, q, target, delta))?,
            format!("(z = {z}, q = {q})"),
        ),
        Shape::Ftrl { steps, .. } => {
            let rounds = checked(accountant::tree_max_rounds(z, steps, target, delta))?;
            (
                rounds,
                format!(
                    "({} full epoch{} of {steps} steps and {} more; DP-FTRL, z = {z})",
                    rounds / steps,
                    if rounds / steps == 1 { "" } else { "s" },
                    rounds % steps
                ),
            )
        }
    };
    if json {
        return print_json(out, &RoundsOutput { rounds });
    }
    writeln!(
        out,
        "{rounds} rounds fit within epsilon = {target} at delta = {delta:e} {what}"
    )?;
    Ok(())
}

/// Runs `tessera privacy`.
pub(crate) fn run(args: PrivacyArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.question {
        Question::Epsilon {
            noise_multiplier,
            run,
        } => epsilon(&mut out, noise_multiplier, &run)?,
        Question::Noise {
            target_epsilon,
            run,
        } => noise(&mut out, target_epsilon, &run)?,
        Question::Rounds {
            noise_multiplier,
            target_epsilon,
            common,
        } => rounds(&mut out, noise_multiplier, target_epsilon, &common)?,
    }
    Ok(ExitCode::SUCCESS)
}
