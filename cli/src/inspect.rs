//! `tessera inspect`: what a server's data directory holds: published
//! models, round records and the privacy ledger. It reads without changing
//! anything, so it is safe beside a running server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tessera_server::store;

pub(crate) const ABOUT: &str = "Show the models, rounds and privacy ledger in a data directory";
pub(crate) const LONG_ABOUT: &str = "Reads a `tessera serve` data directory without changing it \
    and prints its published models (version, round, survivors, epsilon), its round records \
    (outcome, survivors, where and why aborted rounds stopped) and the privacy ledger. With \
    --json prints one object {models: [...], rounds: [...], ledger: ...}.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera inspect --data-dir tessera-data\n  \
    tessera inspect --data-dir tessera-data --json | jq '.models[-1]'";

/// Flags of `tessera inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The server's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let state = store::inspect(&args.data_dir)
        .with_context(|| format!("reading {}", args.data_dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("models ({}):", state.models.len());
    println!("  version  round  survivors  dropped  epsilon   file");
    for m in &state.models {
        println!(
            "  {:>7}  {:>5}  {:>9}  {:>7}  {:>7.3}   {}",
            m.version, m.round, m.survivors, m.dropped, m.epsilon, m.file
        );
    }
    println!("rounds ({}):", state.rounds.len());
    println!("  round  outcome      clients  survivors  threshold  seconds  note");
    for r in &state.rounds {
        let outcome = serde_json::to_value(r.outcome)?;
        let note = match (&r.stage, &r.reason, r.model_version) {
            (Some(stage), Some(reason), _) => format!("{reason} at {stage}"),
            (_, _, Some(v)) => format!("published v{v}"),
            _ => String::new(),
        };
        println!(
            "  {:>5}  {:<11}  {:>7}  {:>9}  {:>9}  {:>7.2}  {}",
            r.round,
            outcome.as_str().unwrap_or("?"),
            r.clients,
            r.survivors,
            r.threshold,
            r.seconds,
            note
        );
    }
    match &state.ledger {
        Some(ledger) => println!(
            "privacy ledger: epsilon {:.4} of {:.4} spent at delta {:e} over {} rounds",
            ledger.spent(),
            ledger.budget_epsilon(),
            ledger.delta(),
            ledger.entries().len()
        ),
        None => println!("privacy ledger: none (DP off)"),
    }
    Ok(ExitCode::SUCCESS)
}
