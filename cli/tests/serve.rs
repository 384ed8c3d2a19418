//! `tessera serve`, `tessera join` and `tessera inspect` as real processes
//! on loopback: the scriptable contract operators rely on, and crash safety
//! under SIGKILL.

mod common;

use std::process::{Child, Command, Stdio};

use common::{Server, inspect, scratch_dir};

/// The serve flags every test here uses.
fn serve_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--dim", "20", "--log", "info"];
    args.extend_from_slice(extra);
    args
}

fn join(addr: &str, rounds: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "join",
            "--server",
            &format!("http://{addr}"),
            "--random",
            "20",
        ])
        .args(["--rounds", &rounds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera join starts")
}

/// Waits for a `tessera join` that must succeed; returns its stdout.
fn joined(join: Child) -> String {
    let out = join.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "join failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn serve_and_three_joins_complete_rounds_and_inspect_shows_them() {
    let dir = scratch_dir("three");
    let mut server = Server::start(&dir, &serve_args(&["--min-clients", "3", "--rounds", "2"]));
    let joins: Vec<Child> = (0..3).map(|_| join(&server.addr, 2)).collect();
    for j in joins {
        let text = joined(j);
        assert_eq!(text.matches("completed as client").count(), 2, "{text}");
    }
    assert!(
        server.child.wait().unwrap().success(),
        "server exits after --rounds 2"
    );
    let state = inspect(&dir);
    let models = state["models"].as_array().unwrap();
    assert_eq!(models.len(), 3, "the initial model and one per round");
    for (i, m) in models.iter().enumerate() {
        assert_eq!(m["version"], i as u64 + 1);
        assert_eq!(m["round"], i as u64);
        assert_eq!(m["epsilon"], 0.0);
    }
    let rounds = state["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        assert_eq!(r["outcome"], "completed");
        assert_eq!(r["survivors"], 3);
    }
}

#[test]
fn joins_refuse_a_round_outside_their_policy_before_sending_a_key() {
    // A policy that contradicts itself is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["join", "--server", "http://127.0.0.1:9", "--random", "20"])
        .args(["--min-clients", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("policy.min_clients"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `tessera serve` runs no DP by default: clients that require it refuse
    // the round, naming the rule, and the round aborts without their keys.
    let dir = scratch_dir("policy");
    let mut server = Server::start(&dir, &serve_args(&["--min-clients", "3", "--rounds", "1"]));
    let joins: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_tessera"))
                .args(["join", "--server", &format!("http://{}", server.addr)])
                .args(["--random", "20", "--require-dp"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("tessera join starts")
        })
        .collect();
    for j in joins {
        let out = j.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("refused by this client's policy (rule require-dp)"),
            "{stderr}"
        );
    }
    assert!(server.child.wait().unwrap().success());
    let state = inspect(&dir);
    assert_eq!(state["rounds"][0]["outcome"], "aborted", "{state}");
}

#[cfg(unix)]
#[test]
fn sigkill_mid_round_loses_no_published_model_and_a_restart_completes_a_round() {
    let dir = scratch_dir("crash");
    let mut server = Server::start(
        &dir,
        &serve_args(&["--min-clients", "3", "--stage-timeout-ms", "60000"]),
    );
    // Round 1 completes: models v1 (initial) and v2.
    for j in (0..3).map(|_| join(&server.addr, 1)).collect::<Vec<_>>() {
        assert!(j.wait_with_output().unwrap().status.success());
    }
    server.wait_for("round completed");
    let before = inspect(&dir);
    assert_eq!(before["models"].as_array().unwrap().len(), 2);

    // Round 2 opens with a client that stopped answering (SIGSTOP while it
    // waits in the lobby), so the round hangs in its first stage.
    let mut stalled = join(&server.addr, 1);
    server.wait_for("joined the lobby");
    let pid = stalled.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let others: Vec<Child> = (0..2).map(|_| join(&server.addr, 1)).collect();
    server.wait_for("round opened");
    server.child.kill().expect("SIGKILL the server");
    server.child.wait().unwrap();
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let _ = stalled.wait();
    for mut o in others {
        let _ = o.kill();
        let _ = o.wait();
    }

    // Everything published before the crash is intact.
    let after = inspect(&dir);
    assert_eq!(after["models"], before["models"]);
    let rounds = after["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    assert_eq!(rounds[1]["outcome"], "started", "inspect does not rewrite");

    // A restart on the same data dir verifies the models, marks round 2
    // interrupted and runs round 3.
    let mut server = Server::start(&dir, &serve_args(&["--min-clients", "3", "--rounds", "1"]));
    for j in (0..3).map(|_| join(&server.addr, 1)).collect::<Vec<_>>() {
        assert!(j.wait_with_output().unwrap().status.success());
    }
    assert!(server.child.wait().unwrap().success());
    let last = inspect(&dir);
    let models = last["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(
        &models[..2],
        before["models"].as_array().unwrap().as_slice()
    );
    let outcomes: Vec<&str> = last["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["completed", "interrupted", "completed"]);
    assert_eq!(models[2]["round"], 3);
}

#[test]
fn insecure_dev_is_refused_off_loopback() {
    let dir = scratch_dir("public");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--dim",
            "5",
            "--insecure-dev",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback"), "{err}");
}

/// A budget below what the data directory's ledger has spent stops the
/// job at start, as other start errors do, naming the spent epsilon and
/// the new budget; a raise without --raise-budget is refused naming it.
#[test]
fn a_budget_change_the_ledger_cannot_take_is_refused_at_start() {
    let dir = scratch_dir("budget");
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = r#"{"version": 2, "budget_epsilon": 10.0, "delta": 1e-5, "entries": [
        {"event": "round-charge", "round": 1, "adversary": "model-consumers", "neighbouring": "zero-out-one",
         "mechanism": {"kind": "gaussian", "noise_multiplier": 1.0, "sampling_rate": 1.0}, "epsilon_spent": 9.01}
    ]}"#;
    std::fs::write(dir.join("ledger.json"), ledger).unwrap();
    // A ledger written without MACs (as an older build's) is sealed by
    // `tessera migrate`; the server never seals one on start.
    let migrated = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let serve = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure-dev"])
            .args(serve_args(&["--dp", "central"]))
            .args(extra)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = serve(&["--epsilon-budget", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("9.010") && err.contains("budget 5"), "{err}");
    let out = serve(&["--epsilon-budget", "12"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--raise-budget"), "{err}");
}

/// Resending one update in several rounds without DP lets anyone who
/// differences two published models whose cohorts differ by this client
/// alone recover it: `tessera join` warns before it connects.
#[test]
fn join_warns_when_it_resends_one_update_without_dp() {
    let dir = scratch_dir("resend");
    std::fs::create_dir_all(&dir).unwrap();
    let npy = dir.join("update.npy");
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }".to_owned();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in [0.25f32, -0.5] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&npy, bytes).unwrap();
    let join = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args([
                "join",
                "--server",
                "http://127.0.0.1:9",
                "--round-timeout",
                "1",
            ])
            .arg("--update")
            .arg(&npy)
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = |stderr: &str| stderr.contains("the same --update in every round");
    let stderr = join(&["--rounds", "2"]);
    assert!(warned(&stderr), "{stderr}");
    let stderr = join(&["--rounds", "1"]);
    assert!(!warned(&stderr), "{stderr}");
    let stderr = join(&["--rounds", "2", "--require-dp"]);
    assert!(!warned(&stderr), "{stderr}");
}

#[test]
fn a_start_error_is_printed_once() {
    let dir = scratch_dir("start-error");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.txt");
    let made = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["token", "--tokens-file"])
        .arg(&tokens)
        .arg("a")
        .output()
        .unwrap();
    assert!(made.status.success());
    let missing = dir.join("no-such-cert.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dim", "20"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tokens-file")
        .arg(&tokens)
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    let path = missing.display().to_string();
    assert_eq!(error[0].matches(&path).count(), 1, "{stderr}");
    assert_eq!(error[0].matches("No such file").count(), 1, "{stderr}");
}

/// Sends one HTTP GET and returns the whole response.
fn http_get(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_insecure_warning_and_the_metrics_line_name_the_bound_ports() {
    let dir = scratch_dir("bound-ports");
    let mut server = Server::start(
        &dir,
        &serve_args(&["--metrics-listen", "127.0.0.1:0", "--min-clients", "3"]),
    );
    assert!(!server.addr.ends_with(":0"), "{}", server.addr);
    let warn = server.wait_line("INSECURE DEV MODE");
    assert!(warn.contains(&format!("{} ", server.addr)), "{warn}");
    let metrics = server.wait_line("metrics at http://");
    let metrics_addr = metrics
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{metrics}"))
        .to_owned();
    assert!(!metrics_addr.ends_with(":0"), "{metrics}");
    let warning = server.wait_line("WARNING: --insecure-dev");
    assert!(warning.contains(&format!("{}.", server.addr)), "{warning}");
    // The line names the endpoint that really serves the metrics.
    let scraped = http_get(&metrics_addr);
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(scraped.contains("text/plain; version=0.0.4"), "{scraped}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// The credentials of an mTLS deployment, written under `dir`: the CA,
/// the server's certificate and key, and one client certificate and key
/// per name.
fn write_mtls_files(dir: &std::path::Path, clients: &[&str]) {
    use tessera_server::tls::CertificateAuthority;
    std::fs::create_dir_all(dir).unwrap();
    let ca = CertificateAuthority::new("tessera test CA").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    let server = ca.issue_server(&["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.join("server-key.pem"), server.key_pem.as_bytes()).unwrap();
    for name in clients {
        let client = ca.issue_client(name).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), &client.cert_pem).unwrap();
        std::fs::write(
            dir.join(format!("{name}-key.pem")),
            client.key_pem.as_bytes(),
        )
        .unwrap();
    }
}

/// `tessera join --random 20` against an https server on `addr`, trusting
/// `dir`'s CA, with `extra` flags.
fn join_tls(addr: &str, dir: &std::path::Path, extra: &[std::ffi::OsString]) -> Command {
    let mut join = Command::new(env!("CARGO_BIN_EXE_tessera"));
    join.args(["join", "--server", &format!("https://{addr}")])
        .args(["--tls-domain", "localhost", "--random", "20"])
        .arg("--ca-cert")
        .arg(dir.join("ca.pem"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    join
}

#[test]
fn join_with_a_client_certificate_completes_a_round_on_an_mtls_only_server() {
    use std::io::{BufRead as _, BufReader};
    let dir = scratch_dir("mtls-join");
    let names = ["alice", "bob", "carol"];
    write_mtls_files(&dir, &names);
    let mut server = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dim", "20"])
        .args(["--min-clients", "3", "--rounds", "1"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(dir.join("server.pem"))
        .arg("--tls-key")
        .arg(dir.join("server-key.pem"))
        .arg("--tls-client-ca")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line is {first:?}"))
        .to_owned();

    // Without a client certificate the TLS handshake is refused.
    let anonymous = join_tls(&addr, &dir, &[]).output().unwrap();
    assert_eq!(
        anonymous.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );

    let joins: Vec<Child> = names
        .iter()
        .map(|name| {
            let flags = [
                "--client-cert".into(),
                dir.join(format!("{name}.pem")).into_os_string(),
                "--client-key".into(),
                dir.join(format!("{name}-key.pem")).into_os_string(),
            ];
            join_tls(&addr, &dir, &flags).spawn().unwrap()
        })
        .collect();
    for j in joins {
        let text = joined(j);
        assert!(text.contains("completed as client"), "{text}");
    }
    assert!(server.wait().unwrap().success(), "one round, then exit");
}

#[test]
fn join_needs_both_client_tls_files_and_names_one_it_cannot_read() {
    let dir = scratch_dir("mtls-flags");
    write_mtls_files(&dir, &["alice"]);
    let cert = dir.join("alice.pem").into_os_string();
    let half = join_tls("127.0.0.1:9", &dir, &["--client-cert".into(), cert.clone()])
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2), "clap refuses half a pair");
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(stderr.contains("--client-key"), "{stderr}");

    let missing = dir.join("no-such-key.pem");
    let out = join_tls(
        "127.0.0.1:9",
        &dir,
        &[
            "--client-cert".into(),
            cert,
            "--client-key".into(),
            missing.clone().into_os_string(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("client key {}", missing.display())),
        "{stderr}"
    );
}
