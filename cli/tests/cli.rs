//! Runs the built `tessera` binary as a user would and checks its exit codes
//! and outputs: JSON lines scripts rely on, aborted rounds, bad flags, the
//! parameter finder, and the files `--out` writes.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `tessera <args>` to completion.
fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("the tessera binary runs")
}

/// Standard output as text.
fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

/// Standard error as text.
fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// Every stdout line parsed as JSON (fails on any line that is not).
fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// A fresh directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The keys scripts rely on in every `--json` line.
const REQUIRED_KEYS: [&str; 20] = [
    "round",
    "outcome",
    "verified",
    "survivors",
    "dropped",
    "k",
    "t",
    "stage_seconds",
    "client_mask_seconds_median",
    "server_unmask_seconds",
    "total_seconds",
    "bytes_sent_per_client",
    "bytes_received_per_client",
    "server_bytes_received",
    "server_bytes_sent",
    "peak_rss_bytes",
    "abort_stage",
    "abort_reason",
    "secure",
    "insecure_reasons",
];

#[test]
fn simulate_json_prints_one_verified_line_per_round() {
    let output = tessera(&[
        "simulate",
        "--clients",
        "30",
        "--dim",
        "1000",
        "--drop",
        "masked-input=0.1",
        "--rounds",
        "2",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rounds = json_lines(&output);
    assert_eq!(rounds.len(), 2, "one line per round and nothing else");
    for (i, round) in rounds.iter().enumerate() {
        for key in REQUIRED_KEYS {
            assert!(round.get(key).is_some(), "missing {key} in {round}");
        }
        assert_eq!(round["round"], i as u64);
        assert_eq!(round["outcome"], "completed");
        assert_eq!(round["verified"], true);
        assert_eq!(round["secure"], true);
        assert_eq!(round["insecure_reasons"], serde_json::json!([]));
        assert_eq!(round["abort_stage"], Value::Null);
        assert_eq!(round["abort_reason"], Value::Null);
        // 10% of 30 drop at masked-input; nobody else does.
        assert_eq!(round["dropped"]["masked-input"], 3);
        assert_eq!(round["dropped"]["share-keys"], 0);
        assert_eq!(round["survivors"], 27);
        assert!(round["stage_seconds"]["unmasking"].as_f64().unwrap() > 0.0);
        // A client's masked vector alone is 4 bytes per value.
        assert!(round["bytes_sent_per_client"].as_f64().unwrap() >= 4000.0);
        if cfg!(target_os = "linux") {
            assert!(round["peak_rss_bytes"].as_u64().unwrap() > 0);
        }
    }
}

/// Issue 11: the simulator may run a threshold below the threat model's
/// floor (research), but says so. Semi-malicious, 10 clients, one corrupt
/// (10%), complete graph: the 8 honest holders of a client's shares split
/// 4 + 4, each half with the colluder makes 5, so t = 5 is beatable and the
/// floor is 6. A Harary graph under a malicious server is refused.
#[test]
fn simulate_marks_weaker_settings_insecure_and_refuses_a_sparse_malicious_server_graph() {
    let run = |threshold: &str| {
        tessera(&[
            "simulate",
            "--clients",
            "10",
            "--dim",
            "50",
            "--graph",
            "complete",
            "--threshold",
            threshold,
            "--threat-model",
            "semi-malicious",
            "--corrupt-rate",
            "0.1",
            "--drop",
            "masked-input=0",
            "--json",
        ])
    };
    let output = run("5");
    assert!(output.status.success(), "{}", stderr(&output));
    let round = &json_lines(&output)[0];
    assert_eq!(round["outcome"], "completed");
    assert_eq!(round["secure"], false);
    let reasons = round["insecure_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{round}");
    let reason = reasons[0].as_str().unwrap();
    assert!(
        reason.contains("threshold 5 is below the semi-malicious floor 6 for 1 corrupt"),
        "{reason}"
    );
    assert!(
        stderr(&output).contains("not secure"),
        "{}",
        stderr(&output)
    );

    let output = run("6");
    assert!(output.status.success(), "{}", stderr(&output));
    let round = &json_lines(&output)[0];
    assert_eq!(round["secure"], true, "{round}");

    let output = tessera(&[
        "simulate",
        "--clients",
        "20",
        "--dim",
        "50",
        "--graph",
        "harary",
        "--neighbours",
        "6",
        "--threat-model",
        "malicious-server",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("complete graph only"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_round_below_threshold_aborts_with_exit_code_zero() {
    let output = tessera(&[
        "simulate",
        "--clients",
        "30",
        "--dim",
        "100",
        "--graph",
        "complete",
        "--threshold",
        "25",
        "--drop",
        "share-keys=0.5",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rounds = json_lines(&output);
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0]["outcome"], "aborted");
    assert_eq!(rounds[0]["verified"], false);
    assert_eq!(rounds[0]["abort_stage"], "share-keys");
    assert_eq!(rounds[0]["t"], 25);
    // The doomed configuration is announced on stderr, not stdout.
    assert!(
        stderr(&output).contains("will abort"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn human_output_has_a_header_a_row_per_round_and_a_summary() {
    let output = tessera(&[
        "simulate",
        "--clients",
        "20",
        "--dim",
        "500",
        "--graph",
        "harary",
        "--neighbours",
        "6",
        "--rounds",
        "2",
        "--prg",
        "chacha20",
        "--bits",
        "20",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("n=20 d=500 graph=harary k=6 t="),
        "{text}"
    );
    assert!(lines[0].contains("bits=20 prg=chacha20"), "{text}");
    // The threshold's origin is stated.
    assert!(
        lines[1].starts_with("  k from --neighbours; t from the parameter finder")
            || lines[1].starts_with("  k from --neighbours; t = K/2+1 = 4"),
        "{text}"
    );
    assert!(lines[2].starts_with("round"), "{text}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("completed  yes"))
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("2 rounds: 2 completed (2 verified), 0 aborted"),
        "{text}"
    );
}

#[test]
fn unknown_stage_is_a_usage_error() {
    let output = tessera(&["simulate", "--drop", "bogus=0.1"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("--drop") && message.contains("bogus"),
        "{message}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn fraction_above_one_is_a_usage_error() {
    let output = tessera(&["simulate", "--drop", "masked-input=1.5"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--drop"), "{}", stderr(&output));
}

#[test]
fn inconsistent_parameters_are_usage_errors_naming_the_flag() {
    for (flags, flag) in [
        (
            &["--clients", "10", "--neighbours", "3"][..],
            "--neighbours",
        ),
        (
            &["--clients", "10", "--neighbours", "10"][..],
            "--neighbours",
        ),
        (
            &[
                "--clients",
                "10",
                "--graph",
                "complete",
                "--threshold",
                "11",
            ][..],
            "--threshold",
        ),
        (
            &["--clients", "10", "--graph", "complete", "--threshold", "1"][..],
            "--threshold",
        ),
        (&["--bits", "33"][..], "--bits"),
        (&["--bits", "0"][..], "--bits"),
        (&["--clients", "1"][..], "--clients"),
        (&["--dim", "0"][..], "--dim"),
        (&["--dropout-rate", "1"][..], "--dropout-rate"),
        (&["--drop", "consistency-check=0.1"][..], "--drop"),
    ] {
        let mut args = vec!["simulate"];
        args.extend_from_slice(flags);
        let output = tessera(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr(&output);
        assert!(message.contains(flag), "{args:?}: {message}");
        assert_eq!(
            message
                .trim()
                .lines()
                .next()
                .map(|l| l.starts_with("error:")),
            Some(true)
        );
    }
}

#[test]
fn params_reproduces_the_published_secagg_plus_row() {
    // shared/reference/secagg_plus_params.csv (Bell et al. 2020, table 2):
    // n = 1000, 5% corrupt, 5% dropout, semi-honest -> k = 30, t <= 17.
    let output = tessera(&[
        "params",
        "--clients",
        "1000",
        "--dropout-rate",
        "0.05",
        "--corrupt-rate",
        "0.05",
        "--threat-model",
        "semi-honest",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let answer = json_lines(&output);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0]["k"], 30);
    assert_eq!(answer[0]["graph"], "harary");
    let t = answer[0]["t"].as_u64().unwrap();
    assert!((2..=17).contains(&t), "t = {t}");
}

#[test]
fn params_rejects_infeasible_input_with_the_library_message() {
    let output = tessera(&["params", "--clients", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("at least 2 clients"),
        "{}",
        stderr(&output)
    );
    let output = tessera(&["params", "--clients", "100", "--corrupt-rate", "1.5"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("corrupt_rate"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn out_writes_a_csv_row_per_round_and_an_svg_chart() {
    let dir = scratch_dir("out");
    let output = tessera(&[
        "simulate",
        "--clients",
        "12",
        "--dim",
        "200",
        "--rounds",
        "3",
        "--drop",
        "masked-input=0.2",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(json_lines(&output).len(), 3);

    let csv = std::fs::read_to_string(dir.join("rounds.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "header and one row per round:\n{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    for column in [
        "round",
        "outcome",
        "verified",
        "survivors",
        "total_seconds",
        "peak_rss_bytes",
    ] {
        assert!(header.contains(&column), "missing {column}: {}", lines[0]);
    }
    assert!(header.contains(&"dropped_masked_input") && header.contains(&"seconds_unmasking"));
    for (i, row) in lines[1..].iter().enumerate() {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{row}");
        assert_eq!(cells[0], i.to_string());
        assert_eq!(cells[1], "completed");
        assert_eq!(cells[2], "true");
    }

    let svg = std::fs::read_to_string(dir.join("stage_times.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
    assert!(svg.contains("<rect"), "the bars are drawn");
    assert!(svg.contains("masked-input"), "the legend names the stages");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_and_version() {
    let output = tessera(&["--version"]);
    assert!(output.status.success());
    assert!(stdout(&output).starts_with("tessera "));
    for args in [
        &["--help"][..],
        &["simulate", "--help"],
        &["params", "--help"],
    ] {
        let output = tessera(args);
        assert!(output.status.success(), "{args:?}");
        let text = stdout(&output);
        assert!(
            text.contains("Examples:") && text.contains("tessera "),
            "{args:?}: {text}"
        );
    }
    let text = stdout(&tessera(&["simulate", "--help"]));
    assert!(text.contains("[default: 100]") && text.contains("[default: masked-input=0.1]"));
}

/// The first JSON line's number at `key`.
fn json_number(output: &Output, key: &str) -> f64 {
    let lines = json_lines(output);
    assert_eq!(lines.len(), 1, "one JSON line: {}", stdout(output));
    lines[0][key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number at {key}: {}", stdout(output)))
}

#[test]
fn privacy_epsilon_matches_google_dp_accounting() {
    // shared/reference/dp_accounting_reference.csv: z = 0.8, q = 0.01,
    // T = 1000, delta = 1e-5: eps_rdp = 3.695613193 (dp-accounting 0.6.0,
    // default orders), eps_pld = 3.141018318 (a tighter accountant).
    let output = tessera(&[
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "0.8",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let epsilon = json_number(&output, "epsilon");
    assert!(epsilon <= 3.695613193 * (1.0 + 1e-6), "{epsilon}");
    assert!(epsilon >= 3.141018318 - 1e-3, "{epsilon}");
    assert!(json_number(&output, "order") > 1.0);
}

#[test]
fn privacy_noise_and_rounds_invert_epsilon() {
    let output = tessera(&[
        "privacy",
        "noise",
        "--target-epsilon",
        "3.7",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "1000",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let z = json_number(&output, "noise_multiplier");
    // z = 0.8 gives 3.6956 < 3.7, so the smallest z is just below 0.8.
    assert!(z < 0.8 && z > 0.78, "{z}");

    let output = tessera(&[
        "privacy",
        "rounds",
        "--noise-multiplier",
        "0.8",
        "--sampling-rate",
        "0.01",
        "--target-epsilon",
        "3.7",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let rounds = json_number(&output, "rounds");
    assert!(
        rounds >= 1000.0,
        "1000 rounds spend 3.6956 < 3.7, got {rounds}"
    );
    assert!(rounds < 1100.0, "{rounds}");
}

#[test]
fn privacy_rejects_bad_input_with_exit_code_two() {
    let cases: [&[&str]; 5] = [
        &[
            "epsilon",
            "--noise-multiplier",
            "0",
            "--sampling-rate",
            "0.01",
            "--rounds",
            "10",
            "--delta",
            "1e-5",
        ],
        &[
            "epsilon",
            "--noise-multiplier",
            "1",
            "--sampling-rate",
            "1.5",
            "--rounds",
            "10",
            "--delta",
            "1e-5",
        ],
        &[
            "epsilon",
            "--noise-multiplier",
            "1",
            "--sampling-rate",
            "0.01",
            "--rounds",
            "10",
            "--delta",
            "1",
        ],
        &[
            "epsilon",
            "--noise-multiplier",
            "1",
            "--sampling-rate",
            "0.01",
            "--rounds",
            "0",
            "--delta",
            "1e-5",
        ],
        &[
            "noise",
            "--target-epsilon",
            "-1",
            "--sampling-rate",
            "0.01",
            "--rounds",
            "10",
            "--delta",
            "1e-5",
        ],
    ];
    for case in cases {
        let args: Vec<&str> = std::iter::once("privacy")
            .chain(case.iter().copied())
            .collect();
        let output = tessera(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).starts_with("error: "),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn demo_trains_over_grpc_and_writes_the_table_csv_and_plot() {
    let dir = scratch_dir("demo");
    let out = tessera(&[
        "demo",
        "--clients",
        "4",
        "--rounds",
        "2",
        "--dropout",
        "0.25",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("round  survivors/dropped  accuracy"),
        "{text}"
    );
    assert!(text.contains("distributed DP"), "{text}");
    // One table line per round: survivors/dropped with one dropout each.
    assert_eq!(text.matches("/1 ").count(), 2, "{text}");
    let csv = std::fs::read_to_string(dir.join("rounds.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0]
            .starts_with("round,survivors,dropped,accuracy,loss,epsilon,seconds,bytes_per_client")
    );
    assert_eq!(lines.len(), 3, "{csv}");
    let epsilon: f64 = lines[2].split(',').nth(5).unwrap().parse().unwrap();
    assert!(epsilon > 0.0 && epsilon <= 8.0, "{epsilon}");
    assert!(
        std::fs::read_to_string(dir.join("rounds.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    assert!(dir.join("data/manifest.json").is_file());
    // A second run replaces the demo's own files.
    let again = tessera(&[
        "demo",
        "--clients",
        "3",
        "--rounds",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    let csv = std::fs::read_to_string(dir.join("rounds.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2);
}

#[test]
fn demo_refuses_bad_settings_and_foreign_directories() {
    let out = tessera(&["demo", "--dropout", "1.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--dropout"), "{}", stderr(&out));
    let out = tessera(&["demo", "--clients", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let dir = scratch_dir("demo-foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("thesis.tex"), "mine").unwrap();
    let out = tessera(&["demo", "--rounds", "1", "--out", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("thesis.tex"), "{}", stderr(&out));
    assert!(dir.join("thesis.tex").exists());
    let out = tessera(&[
        "demo",
        "--dataset",
        "fashion-mnist",
        "--fashion-mnist-dir",
        "/nonexistent/fashion",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("dataset-fashion-mnist"),
        "{}",
        stderr(&out)
    );
}

/// A `#` in the name would make the printed line a comment (or a refused
/// line) of the allow-list, so keygen refuses it and writes no key.
#[test]
fn keygen_refuses_a_name_the_allow_list_cannot_read() {
    let dir = scratch_dir("keygen-hash");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["#alice", "al#ice"] {
        let key = dir.join("k.key");
        let out = tessera(&["keygen", "--out", key.to_str().unwrap(), name]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot contain `#`"),
            "{}",
            stderr(&out)
        );
        assert!(!key.exists());
    }
}

#[test]
fn keygen_writes_a_private_key_file_and_prints_the_enrolment_line() {
    let dir = scratch_dir("keygen");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("alice.key");
    let out = tessera(&["keygen", "--out", key.to_str().unwrap(), "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    let (name, public) = line.trim().split_once(' ').expect("NAME KEY");
    assert_eq!(name, "alice");
    // The line parses as an allow-list and matches the key file.
    let enrolled = tessera_aggregation::identity::parse_allow_list(&line).unwrap();
    let secret = std::fs::read_to_string(&key).unwrap();
    let identity = tessera_aggregation::identity::IdentityKey::from_key_file(&secret).unwrap();
    assert_eq!(enrolled[0].key, identity.verifying_key());
    assert!(public.starts_with("ed25519:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwritten: a usage error, exit code 2.
    let again = tessera(&["keygen", "--out", key.to_str().unwrap(), "alice"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), secret);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_an_explicit_ring_that_would_wrap() {
    // Three clients at clip norm 1 and 16 fraction bits can sum to
    // 3 (2^16 + 1), which an 18-bit ring cannot hold: the published model
    // would be wrong. The server refuses to start and names the floor.
    let dir = scratch_dir("serve-bits");
    let data = dir.join("data");
    let out = serve_no_rounds(
        &data,
        &[
            "--dim",
            "4",
            "--bits",
            "18",
            "--clip-norm",
            "1",
            "--frac-bits",
            "16",
            "--min-clients",
            "3",
            "--max-clients",
            "3",
            "--dp",
            "off",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("smallest safe value is 19"),
        "{}",
        stderr(&out)
    );
    assert!(!data.exists(), "refused before touching the data directory");
}

#[test]
fn serve_checks_an_explicit_ring_at_the_stored_models_dimension() {
    // A data directory that holds a model of dimension 10,000, served again
    // without --dim: the distributed-DP ring of 11 bits is enough at the
    // dimension-1 check of the flags alone, not for the stored model (the
    // norm bound grows with the dimension). The server used to start and
    // stop at its first round; it refuses at start-up now, a usage error
    // naming the smallest safe value.
    let dir = scratch_dir("serve-bits-dim");
    let data = dir.join("data");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "--dp",
            "distributed",
            "--noise-multiplier",
            "1",
            "--frac-bits",
            "4",
            "--graph",
            "complete",
            "--min-survivors",
            "0.5",
            "--min-clients",
            "3",
            "--max-clients",
            "10",
        ];
        args.extend_from_slice(extra);
        serve_no_rounds(&data, &args)
    };
    let first = serve(&["--dim", "10000"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = serve(&["--bits", "11"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("dimension 10000") && message.contains("smallest safe value is"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `tessera serve` on loopback without TLS over `data` for zero
/// rounds with `args`: it checks its settings, opens the data directory
/// and exits, so a test sees what the server accepts without a client.
fn serve_no_rounds(data: &std::path::Path, args: &[&str]) -> Output {
    let data = data.to_str().unwrap();
    let mut all = vec![
        "serve",
        "--insecure-dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--rounds",
        "0",
    ];
    all.extend_from_slice(args);
    tessera(&all)
}

/// `tessera join` with a token sends it over https only, or over plain
/// http to a loopback server when asked with `--insecure-dev`; anything
/// else is a usage error (exit 2) naming the fix, before any connection.
#[test]
fn join_refuses_a_token_over_plain_http_unless_insecure_dev_on_loopback() {
    let join = |server: &str, extra: &[&str]| {
        let mut args = vec![
            "join",
            "--server",
            server,
            "--random",
            "4",
            "--round-timeout",
            "1",
            "--token",
            "hunter2-secret",
        ];
        args.extend_from_slice(extra);
        tessera(&args)
    };
    for server in ["http://127.0.0.1:9", "http://fl.example.org:7443"] {
        let out = join(server, &[]);
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{message}");
        assert!(
            message.contains("--insecure-dev") && message.contains("https://"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
    // The opt-in does not cover a host off this machine.
    let out = join("http://10.0.0.7:7443", &["--insecure-dev"]);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(message.contains("loopback"), "{message}");
    // On loopback the opt-in lets the client try: nothing listens on port 9,
    // so it fails to connect (exit 1), not on its flags.
    let out = join("http://127.0.0.1:9", &["--insecure-dev"]);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(!message.contains("insecure_loopback"), "{message}");
}

/// A token for a loopback server is never handed to a proxy named in the
/// environment (where it would travel in plain text, off the machine): the
/// client connects to the server itself. The proxy here is a listener that
/// must see no connection.
#[test]
fn join_sends_no_token_to_an_environment_proxy() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    for server in ["http://127.0.0.1:9", "http://localhost:9"] {
        let mut join = Command::new(env!("CARGO_BIN_EXE_tessera"));
        join.args([
            "join",
            "--server",
            server,
            "--insecure-dev",
            "--random",
            "4",
            "--round-timeout",
            "1",
            "--token",
            "hunter2-secret",
        ]);
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            join.env(var, &proxy_url);
        }
        join.env_remove("NO_PROXY").env_remove("no_proxy");
        let out = join.output().expect("the tessera binary runs");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        match proxy.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("{server}: the proxy was contacted: {other:?}"),
        }
    }
}
