//! `tessera inspect` on a data directory's privacy ledger: against whom
//! each epsilon holds, and entries migrated from the version 1 layout
//! marked as such (inspect reads; it never rewrites the file).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-inspect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tessera inspect --data-dir DIR [extra]`: its stdout, after checking it
/// succeeded.
fn inspect(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["inspect", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("the tessera binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The ledger line of `round`.
fn entry_line(text: &str, round: u64) -> &str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(&round.to_string()) && l.contains("charge"))
        .unwrap_or_else(|| panic!("no ledger line for round {round}:\n{text}"))
}

#[test]
fn inspect_shows_against_whom_each_epsilon_holds_and_marks_migrated_entries() {
    let dir = scratch_dir("v1");
    // As a server before the ledger had adversaries wrote it: a central
    // round (float Gaussian) then a distributed one.
    let v1 = r#"{"version": 1, "budget_epsilon": 8.0, "delta": 1e-5, "entries": [
        {"round": 1, "mechanism": {"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}, "epsilon_spent": 4.0},
        {"round": 2, "mechanism": {"kind": "discrete-gaussian", "sigma": 3.0, "l2_sensitivity": 1.0}, "epsilon_spent": 5.0}
    ]}"#;
    std::fs::write(dir.join("ledger.json"), v1).unwrap();
    let text = inspect(&dir, &[]);
    let central = entry_line(&text, 1);
    assert!(
        central.contains("gaussian")
            && central.contains("model-consumers")
            && central.contains("migrated from ledger v1"),
        "{central}"
    );
    let distributed = entry_line(&text, 2);
    assert!(
        distributed.contains("discrete-gaussian") && distributed.contains("server"),
        "{distributed}"
    );
    // The round's charge holds against the server, the running total
    // (which includes the central round) only against consumers.
    assert!(
        distributed.contains("model-consumers"),
        "the total after a central round: {distributed}"
    );
    assert!(
        text.contains("the total holds against model-consumers"),
        "{text}"
    );
    assert!(text.contains("inferred from the mechanism"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&inspect(&dir, &["--json"])).unwrap();
    let entries = &json["ledger"]["entries"];
    assert_eq!(json["ledger"]["version"], 2);
    assert_eq!(entries[0]["adversary"], "model-consumers");
    assert_eq!(entries[0]["migrated_from"], 1);
    assert_eq!(entries[1]["adversary"], "server");
    assert_eq!(entries[1]["neighbouring"], "zero-out-one");
    assert_eq!(entries[1]["event"], "round-charge");
    assert_eq!(
        std::fs::read_to_string(dir.join("ledger.json")).unwrap(),
        v1,
        "inspect changes nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_of_a_distributed_only_ledger_says_it_holds_against_the_server() {
    let dir = scratch_dir("v2");
    let v2 = r#"{"version": 2, "budget_epsilon": 8.0, "delta": 1e-5, "entries": [
        {"event": "round-charge", "round": 3, "adversary": "server", "neighbouring": "zero-out-one",
         "mechanism": {"kind": "skellam", "mu": 400.0, "l1": 30.0, "l2": 1.0}, "epsilon_spent": 1.5}
    ]}"#;
    std::fs::write(dir.join("ledger.json"), v2).unwrap();
    let text = inspect(&dir, &[]);
    let line = entry_line(&text, 3);
    assert!(
        line.contains("skellam") && line.contains("server") && !line.contains("migrated"),
        "{line}"
    );
    assert!(text.contains("the total holds against server"), "{text}");
    assert!(!text.contains("model-consumers"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A DP-FTRL round's record says where its sum sits in the tree, and
/// inspect shows it beside the round and its tree-aggregation charge.
#[test]
fn inspect_shows_a_dp_ftrl_rounds_tree_epoch_and_step() {
    let dir = scratch_dir("ftrl");
    std::fs::create_dir_all(dir.join("rounds")).unwrap();
    let record = r#"{"round": 7, "outcome": "completed", "clients": 3, "survivors": 3, "dropped": 0,
        "threshold": 2, "stage": null, "reason": null, "model_version": 5, "started_at_unix_ms": 0,
        "seconds": 0.5, "tree": {"epoch": 1, "step": 1}}"#;
    std::fs::write(dir.join("rounds/round-000007.json"), record).unwrap();
    let ledger = r#"{"version": 2, "budget_epsilon": 8.0, "delta": 1e-5, "entries": [
        {"event": "round-charge", "round": 7, "adversary": "model-consumers", "neighbouring": "zero-out-one",
         "mechanism": {"kind": "tree-aggregation", "sigma": 4.0, "l2_sensitivity": 1.0, "step": 1}, "epsilon_spent": 1.0}
    ]}"#;
    std::fs::write(dir.join("ledger.json"), ledger).unwrap();
    let text = inspect(&dir, &[]);
    let round = text
        .lines()
        .find(|l| l.contains("published v5"))
        .unwrap_or_else(|| panic!("no round line:\n{text}"));
    // The ledger refuses a tree step that does not follow its tree's
    // previous one, so the lone entry is a tree's first step.
    assert!(round.contains("dp-ftrl tree 1 step 1"), "{round}");
    let charge = entry_line(&text, 7);
    assert!(
        charge.contains("tree-aggregation") && charge.contains("model-consumers"),
        "{charge}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Changes of the ledger's terms (a budget change, a delta recompute) are
/// listed after the entries, which keep their lines.
#[test]
fn inspect_lists_the_recorded_changes_of_budget_and_delta() {
    let dir = scratch_dir("changes");
    let ledger = r#"{"version": 2, "budget_epsilon": 5.0, "delta": 0.001, "entries": [
        {"event": "round-charge", "round": 1, "adversary": "model-consumers", "neighbouring": "zero-out-one",
         "mechanism": {"kind": "gaussian", "noise_multiplier": 2.0, "sampling_rate": 1.0}, "epsilon_spent": 1.5}
    ], "changes": [
        {"event": "budget-change", "after_round": 1, "at_unix": 1767225600, "old": 8.0, "new": 5.0},
        {"event": "delta-recompute", "after_round": 1, "at_unix": 1767225601, "old": 1e-5, "new": 0.001}
    ]}"#;
    std::fs::write(dir.join("ledger.json"), ledger).unwrap();
    let text = inspect(&dir, &[]);
    assert!(entry_line(&text, 1).contains("gaussian"), "{text}");
    assert!(
        text.contains("changes of the ledger's terms (2):"),
        "{text}"
    );
    let budget = text.lines().find(|l| l.contains("budget-change")).unwrap();
    assert!(
        budget.contains('8') && budget.contains('5') && budget.contains("1767225600"),
        "{budget}"
    );
    let delta = text
        .lines()
        .find(|l| l.contains("delta-recompute"))
        .unwrap();
    assert!(
        delta.contains("0.00001") && delta.contains("0.001"),
        "{delta}"
    );
    let json: serde_json::Value = serde_json::from_str(&inspect(&dir, &["--json"])).unwrap();
    assert_eq!(json["ledger"]["changes"][0]["event"], "budget-change");
    assert_eq!(json["ledger"]["changes"][1]["new"], 0.001);
}

/// `tessera COMMAND --data-dir DIR --state-key KEY [extra]`.
fn run(command: &str, dir: &Path, key: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([command, "--data-dir"])
        .arg(dir)
        .arg("--state-key")
        .arg(key)
        .args(extra)
        .output()
        .expect("the tessera binary runs")
}

/// A directory an older build wrote (a ledger without MACs): `tessera
/// serve` with an existing state key refuses it and points at `tessera
/// migrate`, which seals it and says what it did; `inspect --audit`
/// verifies the log that records it, and names a line edited afterwards.
#[test]
fn migrate_seals_a_legacy_directory_and_inspect_audit_verifies_the_record() {
    let scratch = scratch_dir("migrate");
    let (dir, key) = (scratch.join("data"), scratch.join("state.key"));
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = r#"{"version": 2, "budget_epsilon": 8.0, "delta": 1e-5, "entries": [
        {"event": "round-charge", "round": 1, "adversary": "model-consumers", "neighbouring": "zero-out-one",
         "mechanism": {"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}, "epsilon_spent": 4.0}
    ]}"#;
    std::fs::write(dir.join("ledger.json"), ledger).unwrap();
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();

    let out = run(
        "serve",
        &dir,
        &key,
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-dev",
            "--dim",
            "4",
            "--dp",
            "central",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("without MACs")
            && err.contains("tessera migrate")
            && err.contains("ledger.json"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ledger.json")).unwrap(),
        ledger
    );

    let out = run("migrate", &dir, &key, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sealed 1 file(s)") && text.contains("ledger.json"),
        "{text}"
    );
    let out = run("migrate", &dir, &key, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already authenticated"));

    let text =
        String::from_utf8_lossy(&run("inspect", &dir, &key, &["--audit"]).stdout).into_owned();
    assert!(
        text.contains("every MAC verified") && text.contains("migrated"),
        "{text}"
    );
    let text = inspect(&dir, &[]);
    assert!(
        text.contains("sealed"),
        "the ledger records the sealing:\n{text}"
    );

    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    std::fs::write(
        dir.join("audit.jsonl"),
        audit.replacen("ledger.json", "ledger.jsom", 1),
    )
    .unwrap();
    let out = run("inspect", &dir, &key, &["--audit"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("audit.jsonl") && err.contains("line 1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A round record as a server writes it (without its MAC: inspect reads,
/// it does not verify), with `strategy` as given.
fn record(round: u64, strategy: &str) -> String {
    format!(
        r#"{{"round": {round}, "outcome": "completed", "clients": 5, "survivors": 5, "dropped": 0, "threshold": 3, "stage": null, "reason": null, "model_version": {}, "started_at_unix_ms": 0, "seconds": 0.5{strategy}}}"#,
        round + 1
    )
}

#[test]
fn inspect_shows_the_strategy_each_run_of_rounds_ran_with() {
    let dir = scratch_dir("strategy");
    let rounds = dir.join("rounds");
    std::fs::create_dir_all(&rounds).unwrap();
    let adam = r#", "strategy": {"strategy": "fedadam", "server_lr": 0.05, "server_beta1": 0.9, "server_beta2": 0.99, "server_tau": 0.001, "proximal_mu": 0.1}"#;
    let avgm = r#", "strategy": {"strategy": "fedavgm", "server_lr": 1.0, "server_momentum": 0.9, "proximal_mu": 0.0}"#;
    // Round 1 predates recorded strategies.
    for (round, strategy) in [(1, ""), (2, adam), (3, adam), (4, avgm)] {
        std::fs::write(
            rounds.join(format!("round-{round:06}.json")),
            record(round, strategy),
        )
        .unwrap();
    }
    let text = inspect(&dir, &[]);
    let shown: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "strategy:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        shown,
        [
            "  rounds 2-3: fedadam server_lr=0.05 beta1=0.9 beta2=0.99 tau=0.001 proximal_mu=0.1",
            "  round 4: fedavgm server_lr=1 momentum=0.9 proximal_mu=0",
        ],
        "{text}"
    );
    let json = inspect(&dir, &["--json"]);
    assert!(json.contains("\"strategy\": \"fedadam\""), "{json}");
}

#[test]
fn inspect_shows_the_federated_metric_and_adaptive_clipping_of_a_round() {
    let dir = scratch_dir("extras");
    std::fs::create_dir_all(dir.join("rounds")).unwrap();
    // A completed round with extras, as the server records it (inspect
    // reads records without verifying their MACs).
    let record = r#"{"round": 3, "outcome": "completed", "clients": 8, "survivors": 8,
        "dropped": 0, "threshold": 5, "stage": null, "reason": null, "model_version": 4,
        "started_at_unix_ms": 0, "seconds": 1.5,
        "extras": {"clip_norm": 0.5, "next_clip_norm": 0.55, "unclipped_fraction": 0.25,
            "weight_sum": 3.2, "noise_std": 0.001,
            "federated": {"model_version": 3, "accuracy": 0.8125, "loss": 0.42,
                "examples": 160.0, "examples_noise_std": 12.5}}}"#;
    std::fs::write(dir.join("rounds/round-000003.json"), record).unwrap();
    let text = inspect(&dir, &[]);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with('3'))
        .unwrap_or_else(|| panic!("no line for round 3:\n{text}"));
    for part in [
        "federated accuracy 0.8125 loss 0.4200 of v3 on 160 examples",
        "(noisy: std 12.5 examples)",
        "weight sum 3.200",
        "clip norm 0.5000 -> 0.5500 (25% unclipped)",
        "extras noisy under DP",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    let json = inspect(&dir, &["--json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value["rounds"][0]["extras"]["federated"]["accuracy"],
        0.8125
    );
}
