//! `tessera simulate`: whole rounds in process, with dropouts injected at
//! chosen stages, and what they cost.
//!
//! Each round runs every client and the server through the library's state
//! machines ([`tessera_aggregation::sim::run_round`]), checks the unmasked sum
//! against the plain sum of the accepted inputs, and reports stage times,
//! traffic and memory. This module turns flags into a
//! [`SimulateRequest`] (the library's [`sim::plan`] asks the parameter
//! finder for whatever the user left out, as it does for the Python
//! package), runs the rounds, and hands each record to the
//! [`crate::report`] sinks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_aggregation::Stage;
use tessera_aggregation::sim::Faults;
use tessera_aggregation::sim::plan::{GraphFamily, SimulateRequest};
use tessera_aggregation::sim::{self, Progress, SimError};

use crate::UsageError;
use crate::args::{GraphArg, PrgArg, ThreatArg, parse_drop, parse_rate};
use crate::report::{self, CsvWriter, Summary, Table};

/// The plan of a run: the library's, so the CLI and the Python package
/// plan alike.
pub(crate) use tessera_aggregation::sim::plan::Plan;

/// One-line description of the subcommand, for `tessera --help`.
pub(crate) const ABOUT: &str = "Run secure aggregation rounds in process and report their cost";

/// The paragraph `tessera simulate --help` opens with.
pub(crate) const LONG_ABOUT: &str = "Runs whole secure aggregation rounds in this process: every client and the \
        server go through the same state machines and wire encoding a deployment uses, with \
        the chosen fraction of clients dropping out just before they send at each stage. For \
        each round it prints whether the round completed and whether the unmasked sum equals \
        the plain sum of the accepted inputs (verified), who survived, per-stage wall time, \
        client masking and server unmasking time, bytes on the wire and peak memory. With no \
        flags: 100 clients, vectors of 100,000 32-bit values, the graph and threshold the \
        parameter finder picks for a 10% dropout and 5% corrupt rate, AES-CTR masks, and 10% \
        of clients dropping at masked-input, one round, seed 42. Exit code 0 also when a \
        round aborts (a normal outcome); 2 for bad flags; 1 if a completed round's sum is \
        wrong or the protocol fails.";

/// The examples `tessera simulate --help` ends with.
pub(crate) const EXAMPLES: &str = "Examples:\n  \
        tessera simulate\n  \
        tessera simulate --clients 1000 --dim 10000 --drop share-keys=0.05 --drop masked-input=0.1 --rounds 5\n  \
        tessera simulate --graph harary --neighbours 40 --threshold 21 --prg chacha20 --json\n  \
        tessera simulate --rounds 10 --out results/   # writes results/rounds.csv and results/stage_times.svg";

/// Flags of `tessera simulate`.
#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Clients invited to each round (at least 2).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(2..))]
    clients: u32,
    /// Length of each client's input vector.
    #[arg(long, value_name = "D", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    dim: u32,
    /// Neighbour graph [default: what the parameter finder picks; harary
    /// when --neighbours is given].
    #[arg(long, value_enum)]
    graph: Option<GraphArg>,
    /// Neighbours per client for the Harary graph: even, at least 2, less
    /// than --clients [default: the parameter finder's k].
    #[arg(long, value_name = "K")]
    neighbours: Option<u32>,
    /// Shamir threshold t, between 2 and the share holders per client (its k
    /// neighbours) [default: the parameter finder's t when it chose the same
    /// graph, else a majority of the share holders]. A t below the threat
    /// model's floor for the corrupt rate still runs, for research, and the
    /// JSON says `"secure": false` and why.
    #[arg(long, value_name = "T")]
    threshold: Option<u32>,
    /// Dropout rate the parameter finder sizes k and t for.
    #[arg(long, value_name = "RATE", default_value = "0.1", value_parser = parse_rate)]
    dropout_rate: f64,
    /// Corrupt rate the parameter finder sizes k and t for.
    #[arg(long, value_name = "RATE", default_value = "0.05", value_parser = parse_rate)]
    corrupt_rate: f64,
    /// Who the round must stay private against (semi-malicious adds the
    /// consistency-check stage).
    #[arg(long, value_enum, default_value_t = ThreatArg::SemiHonest)]
    threat_model: ThreatArg,
    /// Fraction of the clients still in the round that drop out just before
    /// sending at STAGE (advertise-keys, share-keys, masked-input,
    /// consistency-check, unmasking). Repeatable; giving any replaces the
    /// default. `--drop masked-input=0` for no dropouts.
    #[arg(long = "drop", value_name = "STAGE=FRACTION", default_value = "masked-input=0.1",
          value_parser = parse_drop)]
    drops: Vec<(Stage, f64)>,
    /// Arithmetic modulus 2^BITS of inputs and masks (1 to 32).
    #[arg(long, value_name = "B", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    bits: u8,
    /// Stream cipher expanding the masks.
    #[arg(long, value_enum, default_value_t = PrgArg::Aes)]
    prg: PrgArg,
    /// Rounds to run, each with fresh keys, inputs and dropouts.
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seed of everything random (keys, inputs, who drops), so runs
    /// reproduce.
    #[arg(long, value_name = "S", default_value_t = 42)]
    seed: u64,
    /// An unreliable network between clients and server, seeded by --seed:
    /// e.g. `loss=0.01,duplicate=0.01,delay=0.02,reorder`. Rounds must still
    /// verify or abort; what the faults did is in the JSON (`faults`).
    #[arg(long, value_name = "SPEC")]
    faults: Option<Faults>,
    /// Worker threads [default: one per core].
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    threads: Option<usize>,
    /// Directory to write rounds.csv (one row per round) and
    /// stage_times.svg (per-stage wall time of each round) into; created if
    /// missing.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print one JSON object per round on stdout, one per line, and nothing
    /// else there (no progress bar).
    #[arg(long)]
    json: bool,
}

/// Runs `tessera simulate`.
pub(crate) fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("starting the worker threads")?;
    }
    if let Some(warning) = &plan.warning {
        eprintln!("warning: {warning}");
    }
    // Weaker settings run (for research) but never silently: the JSON
    // carries `"secure": false` and the reasons, the terminal a warning.
    for reason in plan.sim.round_config(0).insecure_reasons() {
        eprintln!("warning: not secure: {reason}");
    }

    let mut csv = match &args.out {
        Some(dir) => Some(CsvWriter::create(dir)?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let table = Table::new(&plan.stages);
    if !args.json {
        report::write_header(&mut out, &plan, args.rounds, rayon::current_num_threads())?;
        table.write_heading(&mut out)?;
    }

    let mut reports = Vec::with_capacity(args.rounds as usize);
    let mut summary = Summary::default();
    for round in 0..args.rounds {
        let bar = progress_bar(args.json, round, args.rounds);
        // Rayon workers report out of order: keep the bar moving forward
        // within a stage.
        let stage = Mutex::new(None);
        let on_progress = |p: Progress| {
            let mut stage = stage.lock().unwrap_or_else(PoisonError::into_inner);
            if *stage != Some(p.stage) {
                *stage = Some(p.stage);
                bar.set_position(0);
                bar.set_length(p.total);
                bar.set_message(p.stage.name());
            }
            if p.done > bar.position() {
                bar.set_position(p.done);
            }
        };
        let result = sim::plan::round_record(&plan, round, &on_progress);
        bar.finish_and_clear();
        let report = result.map_err(|e| sim_error(e, round))?;

        if args.json {
            report::write_json_line(&mut out, &report)?;
        } else {
            table.write_row(&mut out, &report)?;
        }
        if let Some(csv) = &mut csv {
            csv.write_row(&report)?;
        }
        summary.add(&report);
        reports.push(report);
    }

    if let Some(dir) = &args.out {
        let path = dir.join("stage_times.svg");
        report::write_stage_chart(&path, &reports, &plan)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.json {
        summary.write(&mut out)?;
        if let Some(dir) = &args.out {
            use std::io::Write;
            writeln!(
                out,
                "wrote {} and {}",
                dir.join("rounds.csv").display(),
                dir.join("stage_times.svg").display()
            )?;
        }
    }
    if let Some(message) = sim::plan::unverified_error(&reports) {
        anyhow::bail!(message);
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr for one round: done/total clients of the current
/// stage. Hidden with `--json` (scripts read stdout; a bar would still be
/// noise in their logs) and, by indicatif, when stderr is not a terminal.
fn progress_bar(json: bool, round: u32, rounds: u32) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{prefix} {elapsed:>4} {wide_bar:.cyan/blue} {pos}/{len} clients {msg:<17}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    // Until the first stage reports: the clients are generating their keys.
    let bar = ProgressBar::new(1).with_style(style);
    bar.set_prefix(format!("round {}/{}", round + 1, rounds));
    bar.set_message("starting");
    bar
}

/// Maps a simulator error: configuration problems are the user's (exit 2),
/// anything else is a failure of the run (exit 1).
fn sim_error(error: SimError, round: u32) -> anyhow::Error {
    match error {
        SimError::Config(_) | SimError::DropFraction { .. } => {
            anyhow::Error::new(UsageError(error.to_string()))
        }
        other => anyhow::Error::new(other).context(format!("round {round} failed")),
    }
}

/// Fills in the graph, k and t the user left out and checks the flags that
/// only make sense together ([`sim::plan::plan`], shared with the Python
/// package); a refusal is a usage error.
pub(crate) fn plan(args: &SimulateArgs) -> anyhow::Result<Plan> {
    sim::plan::plan(&args.request()).map_err(|e| anyhow::Error::new(UsageError(e.to_string())))
}

impl SimulateArgs {
    /// The flags as the library's request.
    fn request(&self) -> SimulateRequest {
        SimulateRequest {
            clients: self.clients,
            dim: self.dim,
            graph: self.graph.map(GraphFamily::from),
            neighbours: self.neighbours,
            threshold: self.threshold,
            dropout_rate: self.dropout_rate,
            corrupt_rate: self.corrupt_rate,
            threat_model: self.threat_model.into(),
            drops: self.drops.clone(),
            bits: self.bits,
            prg: self.prg.into(),
            seed: self.seed,
            faults: self.faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tessera_aggregation::ThreatModel;

    /// Parses `tessera simulate <flags>` the way the binary does.
    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SimulateArgs,
    }

    /// The plan for `tessera simulate <flags>`.
    fn plan_for(flags: &str) -> anyhow::Result<Plan> {
        let argv = std::iter::once("simulate").chain(flags.split_whitespace());
        let wrapper = Wrapper::try_parse_from(argv).expect("flags parse");
        plan(&wrapper.args)
    }

    /// The message of the usage error `flags` must cause.
    fn usage_message(flags: &str) -> String {
        let error = plan_for(flags).expect_err("flags should be refused");
        assert!(error.downcast_ref::<UsageError>().is_some(), "{error}");
        error.to_string()
    }

    #[test]
    fn the_flags_defaults_are_the_librarys() {
        let argv = ["simulate"];
        let wrapper = Wrapper::try_parse_from(argv).expect("no flags parse");
        assert_eq!(wrapper.args.request(), SimulateRequest::default());
    }

    #[test]
    fn every_flag_reaches_the_request() {
        let flags = "--clients 7 --dim 9 --graph harary --neighbours 4 --threshold 3 \
                     --dropout-rate 0.2 --corrupt-rate 0.1 --threat-model semi-malicious \
                     --drop share-keys=0.25 --drop unmasking=0 --bits 16 --prg chacha20 \
                     --seed 5 --faults loss=0.5";
        let argv = std::iter::once("simulate").chain(flags.split_whitespace());
        let request = Wrapper::try_parse_from(argv).unwrap().args.request();
        let expected = SimulateRequest {
            clients: 7,
            dim: 9,
            graph: Some(GraphFamily::Harary),
            neighbours: Some(4),
            threshold: Some(3),
            dropout_rate: 0.2,
            corrupt_rate: 0.1,
            threat_model: ThreatModel::SemiMalicious,
            drops: vec![(Stage::ShareKeys, 0.25), (Stage::Unmasking, 0.0)],
            bits: 16,
            prg: tessera_aggregation::mask::Prg::ChaCha20,
            seed: 5,
            faults: Some("loss=0.5".parse().unwrap()),
        };
        assert_eq!(request, expected);
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        assert!(usage_message("--clients 10 --neighbours 3").contains("--neighbours"));
        assert!(usage_message("--clients 10 --neighbours 10").contains("--neighbours"));
        assert!(usage_message("--graph complete --neighbours 4").contains("--neighbours"));
        assert!(
            usage_message("--clients 10 --graph complete --threshold 11").contains("--threshold")
        );
        assert!(
            usage_message("--clients 10 --graph complete --threshold 1").contains("--threshold")
        );
        assert!(usage_message("--drop consistency-check=0.1").contains("semi-malicious"));
        assert!(usage_message("--drop share-keys=0.1 --drop share-keys=0.2").contains("twice"));
    }
}
