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
    (outcome, survivors, where and why aborted rounds stopped, and what the round's extras \
    said: federated accuracy and loss of the round's base model, the weight sum of weighted \
    averaging, adaptive clipping's clip norm and its next value; marked noisy under DP, with \
    the noise's standard deviation) and the privacy ledger: each \
    round's charge, its mechanism, and against whom each epsilon holds (server: distributed DP, \
    the noise was in the sum before the server saw it; model-consumers: central DP, the server \
    saw the un-noised sum). Entries migrated from an older ledger layout are marked; recorded changes of the \
    budget or of delta (`tessera serve --raise-budget`, `--recompute-delta`, a lower budget) \
    follow the entries. With --json prints one object {models: [...], rounds: [...], ledger: ...}. \
    With --audit prints the audit log instead (audit.jsonl: joins, evictions, aborted rounds, \
    publications with the model's SHA-256 and epsilon, changes of the privacy terms, token \
    reloads, migrations), verifying every line's MAC under the state key (found as `tessera \
    serve` finds it: --state-key, else state.key beside --tls-key, else DIR.state-key); an edited \
    line is an error naming it, a torn last line (a crash mid-append) is reported. Without the \
    key the log is printed unverified, and says so.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera inspect --data-dir tessera-data\n  \
    tessera inspect --data-dir tessera-data --json | jq '.models[-1]'\n  \
    tessera inspect --data-dir /var/lib/tessera --audit --tls-key /etc/tessera/key.pem";

/// Flags of `tessera inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The server's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Print the audit log (verified under the state key) instead.
    #[arg(long)]
    audit: bool,
    /// The state key file, to verify the audit log.
    #[arg(long, value_name = "PATH")]
    state_key: Option<PathBuf>,
    /// The server's TLS key, to find the state key beside it.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

pub(crate) fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    if args.audit {
        return print_audit(args);
    }
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
        let mut note = match (&r.stage, &r.reason, r.model_version) {
            (Some(stage), Some(reason), _) => format!("{reason} at {stage}"),
            (_, _, Some(v)) => format!("published v{v}"),
            _ => String::new(),
        };
        note = match r.tree {
            Some(t) => format!("{note} (dp-ftrl tree {} step {})", t.epoch, t.step),
            None => note,
        };
        if let Some(extras) = &r.extras {
            note.push_str(&extras_note(extras));
        }
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
    print_strategies(&state.rounds);
    match &state.ledger {
        Some(ledger) => print_ledger(ledger),
        None => println!("privacy ledger: none (DP off)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The server strategy the rounds ran with: one line per run of rounds
/// with the same strategy and hyper-parameters (records written before
/// strategies were recorded have none).
fn print_strategies(rounds: &[store::RoundRecord]) {
    let mut runs: Vec<(u64, u64, &tessera_server::config::StrategyRecord)> = Vec::new();
    for r in rounds {
        let Some(s) = &r.strategy else { continue };
        match runs.last_mut() {
            Some((_, last, prev)) if *prev == s => *last = r.round,
            _ => runs.push((r.round, r.round, s)),
        }
    }
    if runs.is_empty() {
        return;
    }
    println!("strategy:");
    for (first, last, s) in runs {
        let span = if first == last {
            format!("round {first}")
        } else {
            format!("rounds {first}-{last}")
        };
        println!("  {span}: {s}");
    }
}

/// A completed round's extras, for its note: federated evaluation, the
/// weighted mean's denominator, adaptive clipping; `(noisy: std ...)` when
/// DP noise is in them.
fn extras_note(e: &store::ExtrasRecord) -> String {
    let mut note = String::new();
    if let Some(f) = &e.federated {
        let figure = |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"));
        note.push_str(&format!(
            "; federated accuracy {} loss {} of v{} on {:.0} examples",
            figure(f.accuracy),
            figure(f.loss),
            f.model_version,
            f.examples
        ));
        if e.noise_std > 0.0 {
            note.push_str(&format!(
                " (noisy: std {:.1} examples)",
                f.examples_noise_std
            ));
        }
    }
    if let Some(w) = e.weight_sum {
        note.push_str(&format!("; weight sum {w:.3}"));
    }
    note.push_str(&format!("; clip norm {:.4}", e.clip_norm));
    if let (Some(next), Some(fraction)) = (e.next_clip_norm, e.unclipped_fraction) {
        note.push_str(&format!(
            " -> {next:.4} ({:.0}% unclipped)",
            100.0 * fraction
        ));
    }
    if e.noise_std > 0.0 {
        note.push_str(&format!(
            "; extras noisy under DP (std {:.3e} per coordinate)",
            e.noise_std
        ));
    }
    note
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

/// `--audit`: the audit log, one line per event, verified if the state key
/// is found.
fn print_audit(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let path = crate::migrate::key_path(&args.data_dir, args.state_key, args.tls_key);
    let key = if path.exists() {
        Some(store::StateKey::load(&path)?)
    } else {
        None
    };
    let (records, torn) = store::read_audit(&args.data_dir, key.as_ref())
        .with_context(|| format!("reading the audit log of {}", args.data_dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &key {
        Some(_) => println!(
            "audit log ({} events), every MAC verified under {}:",
            records.len(),
            path.display()
        ),
        None => println!(
            "audit log ({} events), NOT verified: no state key at {} (give --state-key)",
            records.len(),
            path.display()
        ),
    }
    for r in &records {
        let mut event = serde_json::to_value(&r.event)?;
        let kind = event
            .as_object_mut()
            .and_then(|o| o.remove("kind"))
            .and_then(|k| k.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "  {:>5}  {:>13}  {:<18}  {}",
            r.seq, r.at_unix_ms, kind, event
        );
    }
    if torn > 0 {
        println!(
            "  a torn last line of {torn} bytes (a crash mid-append) follows; the server cuts it off when it next opens the directory"
        );
    }
    Ok(ExitCode::SUCCESS)
}
