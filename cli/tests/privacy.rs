//! `tessera privacy --mechanism dp-ftrl`: DP-FTRL's accountant on the
//! command line, against Google dp-accounting's numbers for
//! `SingleEpochTreeAggregationDpEvent` (dp/tests/data/dp_ftrl_reference.csv),
//! its inverses, and the flags it refuses.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `tessera privacy <args>` to completion.
fn privacy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("privacy")
        .args(args)
        .output()
        .expect("the tessera binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// The one JSON line's number at `key`, after checking success.
fn json_number(output: &Output, key: &str) -> f64 {
    assert!(output.status.success(), "{}", stderr(output));
    let text = stdout(output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {text}");
    let value: Value = serde_json::from_str(lines[0]).expect("JSON");
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {key}: {text}"))
}

/// Rows of the reference as the strings the CLI is given:
/// (z, S, E, delta, epsilon).
fn reference() -> Vec<[String; 5]> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dp/tests/data/dp_ftrl_reference.csv"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("noise_multiplier"))
        .map(|l| {
            let v: Vec<String> = l.split(',').map(str::to_owned).collect();
            [
                v[0].clone(),
                v[1].clone(),
                v[2].clone(),
                v[3].clone(),
                v[4].clone(),
            ]
        })
        .collect()
}

fn epsilon(z: &str, s: &str, e: &str, delta: &str) -> f64 {
    json_number(
        &privacy(&[
            "epsilon",
            "--mechanism",
            "dp-ftrl",
            "--noise-multiplier",
            z,
            "--steps-per-epoch",
            s,
            "--epochs",
            e,
            "--delta",
            delta,
            "--json",
        ]),
        "epsilon",
    )
}

#[test]
fn dp_ftrl_epsilon_matches_dp_accounting() {
    let rows = reference();
    assert_eq!(rows.len(), 36);
    // Every seventh row: each z, S, E and delta of the table appears.
    for [z, s, e, delta, want] in rows.iter().step_by(7) {
        let want: f64 = want.parse().unwrap();
        let got = epsilon(z, s, e, delta);
        assert!(
            ((got - want) / want).abs() < 1e-6,
            "z={z} S={s} E={e} delta={delta}: {got}, reference {want}"
        );
    }
    // The text form names the adversary.
    let output = privacy(&[
        "epsilon",
        "--mechanism",
        "dp-ftrl",
        "--noise-multiplier",
        "1.5",
        "--steps-per-epoch",
        "15",
        "--epochs",
        "10",
        "--delta",
        "1e-5",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.starts_with("epsilon = 27.811847 "), "{text}");
    assert!(text.contains("not the server"), "{text}");
}

/// `--rounds` and `--sampling-rate` are DP-FedAvg's: given to dp-ftrl they
/// are refused (exit code 2, the flag named), never silently ignored; and
/// dp-ftrl's own flags are refused by dp-fedavg.
#[test]
fn dp_ftrl_refuses_the_flags_it_does_not_use() {
    let ftrl = [
        "--mechanism",
        "dp-ftrl",
        "--noise-multiplier",
        "1.5",
        "--steps-per-epoch",
        "15",
        "--delta",
        "1e-5",
    ];
    let cases: [(&[&str], &str); 6] = [
        (
            &["epsilon", "--epochs", "2", "--rounds", "30"],
            "--rounds is not used",
        ),
        (
            &["epsilon", "--epochs", "2", "--sampling-rate", "0.1"],
            "--sampling-rate is not used",
        ),
        (
            &["rounds", "--epsilon", "8", "--sampling-rate", "1"],
            "--sampling-rate is not used",
        ),
        (&["epsilon"], "--epochs is required"),
        (&["epsilon", "--epochs", "0"], "epochs must be at least 1"),
        (&["rounds", "--epsilon", "0"], "target epsilon must be > 0"),
    ];
    for (extra, message) in cases {
        let args: Vec<&str> = std::iter::once(extra[0])
            .chain(ftrl)
            .chain(extra[1..].iter().copied())
            .collect();
        let output = privacy(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let output = privacy(&[
        "rounds",
        "--mechanism",
        "dp-ftrl",
        "--noise-multiplier",
        "2",
        "--epsilon",
        "8",
        "--steps-per-epoch",
        "0",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("steps per epoch must be at least 1"));
    let output = privacy(&[
        "epsilon",
        "--noise-multiplier",
        "1.1",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "10",
        "--epochs",
        "3",
        "--delta",
        "1e-5",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("are for --mechanism dp-ftrl"));
}

/// `noise` then `epsilon` lands on the target; `rounds` is the largest
/// count within budget: its epsilon is within the target and one more
/// round's is not (checked through the accountant after that many rounds,
/// a partial epoch included).
#[test]
fn dp_ftrl_noise_and_rounds_invert_epsilon() {
    for (target, s, e) in [("8", "16", "5"), ("2.5", "64", "1"), ("20", "3", "10")] {
        let z = json_number(
            &privacy(&[
                "noise",
                "--mechanism",
                "dp-ftrl",
                "--epsilon",
                target,
                "--steps-per-epoch",
                s,
                "--epochs",
                e,
                "--delta",
                "1e-5",
                "--json",
            ]),
            "noise_multiplier",
        );
        let target: f64 = target.parse().unwrap();
        let back = epsilon(&z.to_string(), s, e, "1e-5");
        assert!(
            back <= target && back > target * (1.0 - 1e-6),
            "z {z}: {back} vs {target}"
        );
        let less = epsilon(&(z * (1.0 - 1e-6)).to_string(), s, e, "1e-5");
        assert!(less > target, "z {z} is not the smallest");
    }
    // The reference row z = 3, S = 15, E = 10: 11.44 at delta = 1e-5, so
    // 150 rounds fit within 11.5 and a partial 11th tree is counted too.
    let rounds = json_number(
        &privacy(&[
            "rounds",
            "--mechanism",
            "dp-ftrl",
            "--target-epsilon",
            "11.5",
            "--noise-multiplier",
            "3",
            "--steps-per-epoch",
            "15",
            "--delta",
            "1e-5",
            "--json",
        ]),
        "rounds",
    ) as u64;
    assert!(rounds >= 150, "{rounds}");
    let within = tessera_dp::accountant::tree_epsilon_after_rounds(3.0, 15, rounds, 1e-5)
        .unwrap()
        .epsilon;
    let beyond = tessera_dp::accountant::tree_epsilon_after_rounds(3.0, 15, rounds + 1, 1e-5)
        .unwrap()
        .epsilon;
    assert!(
        within <= 11.5 && beyond > 11.5,
        "{rounds}: {within}, {beyond}"
    );
    // With whole epochs only: the epochs that fit, checked by the CLI's
    // own epsilon.
    let full = (rounds / 15).to_string();
    assert!(epsilon("3", "15", &full, "1e-5") <= 11.5);
    assert!(epsilon("3", "15", &(rounds / 15 + 1).to_string(), "1e-5") > 11.5);
}
