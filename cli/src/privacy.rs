//! `tessera privacy`: the privacy accountant on the command line.
//!
//! Before a training job starts, its owner wants three answers about
//! DP-FedAvg with Poisson sampling of clients: how much privacy T rounds at
//! noise multiplier z spend (`epsilon`), which z a target epsilon needs
//! (`noise`), and how many rounds a budget allows (`rounds`). The numbers
//! come from the Rényi DP accountant of the protocol crate, which matches
//! Google's dp-accounting.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_dp::accountant;

use crate::usage;

/// One-line description of the subcommand, for `tessera --help`.
pub(crate) const ABOUT: &str =
    "Account for differential privacy: epsilon, noise multiplier, rounds";

/// The paragraph `tessera privacy --help` opens with.
pub(crate) const LONG_ABOUT: &str = "The Rényi DP accountant of the Poisson-subsampled Gaussian \
        mechanism (DP-FedAvg): each round samples clients with probability q, clips their \
        updates to norm C and adds Gaussian noise of standard deviation z*C to the sum. \
        `epsilon` says what T rounds spend at a given delta, `noise` finds the smallest z that \
        keeps T rounds within a target epsilon, `rounds` says how many rounds fit in a budget. \
        Bad input (z <= 0, q outside (0, 1], delta outside (0, 1), T = 0) exits with code 2.";

/// The examples `tessera privacy --help` ends with.
pub(crate) const EXAMPLES: &str = "Examples:\n  \
        tessera privacy epsilon --noise-multiplier 1.1 --sampling-rate 0.01 --rounds 1000 --delta 1e-5\n  \
        tessera privacy noise --target-epsilon 8 --sampling-rate 0.05 --rounds 30 --delta 1e-5\n  \
        tessera privacy rounds --noise-multiplier 1.0 --sampling-rate 0.01 --target-epsilon 3 --delta 1e-5 --json";

/// Flags of `tessera privacy`.
#[derive(Debug, Args)]
pub(crate) struct PrivacyArgs {
    /// Which question to answer.
    #[command(subcommand)]
    question: Question,
}

/// The three questions.
#[derive(Debug, Subcommand)]
enum Question {
    /// Epsilon spent by T rounds, and the Rényi order that attains it.
    #[command(
        after_help = "Example:\n  tessera privacy epsilon --noise-multiplier 1.1 --sampling-rate 0.01 --rounds 1000 --delta 1e-5"
    )]
    Epsilon {
        /// Noise multiplier z: the noise std over the clip norm (> 0).
        #[arg(long, value_name = "Z")]
        noise_multiplier: f64,
        /// Number of rounds T (at least 1).
        #[arg(long, value_name = "T")]
        rounds: u64,
        /// Sampling rate, delta, output format.
        #[command(flatten)]
        common: Common,
    },
    /// The smallest noise multiplier that keeps T rounds within a target epsilon.
    #[command(
        after_help = "Example:\n  tessera privacy noise --target-epsilon 8 --sampling-rate 0.05 --rounds 30 --delta 1e-5"
    )]
    Noise {
        /// The epsilon not to exceed (> 0).
        #[arg(long, value_name = "E")]
        target_epsilon: f64,
        /// Number of rounds T (at least 1).
        #[arg(long, value_name = "T")]
        rounds: u64,
        /// Sampling rate, delta, output format.
        #[command(flatten)]
        common: Common,
    },
    /// How many rounds fit in a target epsilon.
    #[command(
        after_help = "Example:\n  tessera privacy rounds --noise-multiplier 1.0 --sampling-rate 0.01 --target-epsilon 3 --delta 1e-5"
    )]
    Rounds {
        /// Noise multiplier z (> 0).
        #[arg(long, value_name = "Z")]
        noise_multiplier: f64,
        /// The epsilon not to exceed (> 0).
        #[arg(long, value_name = "E")]
        target_epsilon: f64,
        /// Sampling rate, delta, output format.
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every question takes.
#[derive(Debug, Args)]
struct Common {
    /// Probability q that a client takes part in a round, in (0, 1].
    #[arg(long, value_name = "Q")]
    sampling_rate: f64,
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

/// Runs `tessera privacy`.
pub(crate) fn run(args: PrivacyArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.question {
        Question::Epsilon {
            noise_multiplier,
            rounds,
            common:
                Common {
                    sampling_rate,
                    delta,
                    json,
                },
        } => {
            let report = match accountant::epsilon(noise_multiplier, sampling_rate, rounds, delta) {
                Ok(report) => report,
                Err(e) => usage!("{e}"),
            };
            if json {
                let output = EpsilonOutput {
                    epsilon: report.epsilon,
                    order: report.order,
                };
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&output).context("serialising")?
                )?;
            } else {
                writeln!(
                    out,
                    "epsilon = {:.6} at delta = {delta:e} after {rounds} rounds (z = {noise_multiplier}, q = {sampling_rate}); optimal Rényi order {}",
                    report.epsilon, report.order
                )?;
            }
        }
        Question::Noise {
            target_epsilon,
            rounds,
            common:
                Common {
                    sampling_rate,
                    delta,
                    json,
                },
        } => {
            let z = match accountant::noise_multiplier(target_epsilon, sampling_rate, rounds, delta)
            {
                Ok(z) => z,
                Err(e) => usage!("{e}"),
            };
            if json {
                let output = NoiseOutput {
                    noise_multiplier: z,
                };
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&output).context("serialising")?
                )?;
            } else {
                writeln!(
                    out,
                    "noise multiplier z = {z:.6} keeps {rounds} rounds at q = {sampling_rate} within epsilon = {target_epsilon} at delta = {delta:e}"
                )?;
            }
        }
        Question::Rounds {
            noise_multiplier,
            target_epsilon,
            common:
                Common {
                    sampling_rate,
                    delta,
                    json,
                },
        } => {
            let rounds = match accountant::max_rounds(
                noise_multiplier,
                sampling_rate,
                target_epsilon,
                delta,
            ) {
                Ok(rounds) => rounds,
                Err(e) => usage!("{e}"),
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&RoundsOutput { rounds }).context("serialising")?
                )?;
            } else {
                writeln!(
                    out,
                    "{rounds} rounds fit within epsilon = {target_epsilon} at delta = {delta:e} (z = {noise_multiplier}, q = {sampling_rate})"
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
