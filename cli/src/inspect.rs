//! `tessera inspect`: what a server's data directory holds: published
//! models, round records and the privacy ledger. It reads without changing
//! anything, so it is safe beside a running server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tessera_dp::ledger::{Adversary, PrivacyLedger};
use tessera_server::store;

pub(crate) const ABOUT: &str = "Show the models, rounds and privacy ledger in a data directory";
pub(crate) const LONG_ABOUT: &str = "Reads a `tessera serve` data directory without changing it \
    and prints its published models (version, round, survivors, epsilon), its round records \
    (outcome, survivors, where and why aborted rounds stopped) and the privacy ledger: each \
    round's charge, its mechanism, and against whom each epsilon holds (server: distributed DP, \
    the noise was in the sum before the server saw it; model-consumers: central DP, the server \
    saw the un-noised sum). Entries migrated from an older ledger layout are marked; recorded changes of the \
    budget or of delta (`tessera serve --raise-budget`, `--recompute-delta`, a lower budget) \
    follow the entries. With --json prints one object {models: [...], rounds: [...], ledger: ...}.";
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
        Some(ledger) => print_ledger(ledger),
        None => println!("privacy ledger: none (DP off)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What an adversary name means, for the ledger's summary line.
fn meaning(adversary: Adversary) -> &'static str {
    match adversary {
        Adversary::Server => {
            "the server (with its colluding clients) and everyone downstream of it"
        }
        Adversary::ModelConsumers => {
            "consumers of the published models only; the server saw un-noised sums"
        }
    }
}

/// The ledger: a summary line, then one line per entry with whom its
/// charge and the running total hold against.
fn print_ledger(ledger: &PrivacyLedger) {
    println!(
        "privacy ledger: epsilon {:.4} of {:.4} spent at delta {:e} over {} rounds",
        ledger.spent(),
        ledger.budget_epsilon(),
        ledger.delta(),
        ledger.entries().len()
    );
    if let Some(adversary) = ledger.holds_against() {
        println!(
            "  the total holds against {}: {}",
            adversary.name(),
            meaning(adversary)
        );
    }
    if ledger.migrated() {
        println!(
            "  entries marked migrated were read from an older ledger layout; their adversary was inferred from the mechanism"
        );
    }
    println!(
        "  round  event         mechanism          charge against   epsilon total  total against    note"
    );
    let entries = ledger.entries();
    for (i, e) in entries.iter().enumerate() {
        let total = PrivacyLedger::weakest(&entries[..=i]).map_or("", Adversary::name);
        let event = serde_json::to_value(e.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let note = e
            .migrated_from
            .map(|v| format!("migrated from ledger v{v}"))
            .unwrap_or_default();
        println!(
            "  {:>5}  {:<12}  {:<17}  {:<15}  {:>13.4}  {:<15}  {}",
            e.round,
            event,
            e.mechanism.name(),
            e.adversary.name(),
            e.epsilon_spent,
            total,
            note
        );
    }
    print_changes(ledger);
}

/// The recorded changes of the budget and of delta, if any: one line each
/// after the entries.
fn print_changes(ledger: &PrivacyLedger) {
    if ledger.changes().is_empty() {
        return;
    }
    println!(
        "  changes of the ledger's terms ({}):",
        ledger.changes().len()
    );
    println!("  after round  event            old          new          at (unix seconds)");
    for c in ledger.changes() {
        println!(
            "  {:>11}  {:<15}  {:<11}  {:<11}  {}",
            c.after_round,
            c.event.name(),
            c.old,
            c.new,
            c.at_unix
        );
    }
}
