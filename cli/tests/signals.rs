//! `tessera serve` as its operator runs it: signals (SIGHUP reloads the
//! tokens file, SIGTERM drains), the file-descriptor limit, and an error
//! that stops a running server reported once.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, inspect, scratch_dir, serve_args};

fn signal(server: &Server, name: &str) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// `tessera token` for `name` into `tokens`; the token.
fn make_token(tokens: &Path, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["token", "--tokens-file"])
        .arg(tokens)
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn join(addr: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "join",
            "--server",
            &format!("http://{addr}"),
            "--random",
            "20",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera join starts")
}

/// A join with `token` over loopback http.
fn join_with(addr: &str, dir: &Path, token: &str) -> Child {
    let file = dir.join(format!("{}.token", &token[..12]));
    std::fs::write(&file, token).unwrap();
    join(
        addr,
        &["--insecure-dev", "--token-file", file.to_str().unwrap()],
    )
}

fn refused(join: Child) -> String {
    let out = join.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn sighup_reloads_the_tokens_file_and_a_bad_file_keeps_the_tokens_in_force() {
    let dir = scratch_dir("sighup");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.txt");
    let alice = make_token(&tokens, "alice");
    let bob = make_token(&tokens, "bob");
    let tokens_arg = tokens.to_str().unwrap();
    let server = Server::start(
        &dir.join("data"),
        &[
            "--dim",
            "20",
            "--min-clients",
            "3",
            "--log",
            "info",
            "--tokens-file",
            tokens_arg,
        ],
    );

    // alice is in: she waits in the lobby.
    let mut waiting = join_with(&server.addr, &dir, &alice);
    assert!(server.wait_line("joined the lobby").contains("alice"));
    waiting.kill().unwrap();
    waiting.wait().unwrap();

    // Revoked: her line deleted, SIGHUP, refused without a restart.
    let text = std::fs::read_to_string(&tokens).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("alice "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&tokens, kept).unwrap();
    signal(&server, "HUP");
    let reloaded = server.wait_line("tokens file reloaded");
    assert!(reloaded.contains("removed=[\"alice\"]"), "{reloaded}");
    let stderr = refused(join_with(&server.addr, &dir, &alice));
    assert!(stderr.contains("the bearer token is not valid"), "{stderr}");
    assert!(!stderr.contains(&alice), "{stderr}");

    // A broken file: the log says why, bob's token still works.
    std::fs::write(&tokens, "bob tsr_pasted-a-raw-token\n").unwrap();
    signal(&server, "HUP");
    let kept = server.wait_line("tokens file not reloaded");
    assert!(
        kept.contains("line 1") && !kept.contains("pasted"),
        "{kept}"
    );
    let mut waiting = join_with(&server.addr, &dir, &bob);
    assert!(server.wait_line("joined the lobby").contains("bob"));
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[test]
fn sigterm_lets_the_round_in_flight_finish_refuses_new_clients_and_exits_0() {
    let dir = scratch_dir("sigterm");
    let mut server = Server::start(
        &dir,
        &[
            "--dim",
            "20",
            "--min-clients",
            "4",
            "--graph",
            "complete",
            "--stage-timeout-ms",
            "2500",
            "--log",
            "info",
        ],
    );
    // A round of four, one of which stopped answering: the round is in
    // flight until its first stage's deadline.
    let mut stalled = join(&server.addr, &["--rounds", "1"]);
    server.wait_for("joined the lobby");
    let pid = stalled.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let others: Vec<Child> = (0..3)
        .map(|_| join(&server.addr, &["--rounds", "1"]))
        .collect();
    server.wait_for("round opened");
    let signalled = Instant::now();
    signal(&server, "TERM");
    server.wait_for("SIGTERM: shutting down once the round in flight ends");

    // No new client while draining.
    let stderr = refused(join(&server.addr, &["--rounds", "1"]));
    assert!(stderr.contains("shutting down"), "{stderr}");

    // The round finishes without the stalled client; the server exits 0.
    for j in others {
        let out = j.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("completed as client"), "{text}");
    }
    let status = server.child.wait().unwrap();
    let log = server.rest_of_log();
    assert!(status.success(), "{log:?}");
    assert!(log.iter().any(|l| l.contains("round completed")), "{log:?}");
    assert!(log.last().is_some_and(|l| l.contains("stopped")), "{log:?}");
    assert!(signalled.elapsed() < Duration::from_secs(30));
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let _ = stalled.wait();
    let rounds = inspect(&dir)["rounds"].as_array().unwrap().clone();
    assert_eq!(rounds.len(), 1);
    assert_eq!(rounds[0]["outcome"], "completed");
    assert_eq!(rounds[0]["survivors"], 3);
}

#[test]
fn an_error_that_stops_a_running_server_is_printed_once() {
    let dir = scratch_dir("runtime-error");
    let mut server = Server::start(
        &dir,
        &["--dim", "20", "--min-clients", "3", "--log", "info"],
    );
    // The data directory disappears under the running server: the round
    // record cannot be written and the server stops.
    std::fs::remove_dir_all(&dir).unwrap();
    let joins: Vec<Child> = (0..3)
        .map(|_| join(&server.addr, &["--rounds", "1"]))
        .collect();
    let status = server.child.wait().unwrap();
    let log = server.rest_of_log();
    assert_eq!(status.code(), Some(1), "{log:?}");
    let errors: Vec<&String> = log.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log:?}");
    let cause = errors[0]
        .strip_prefix("error: server stopped: ")
        .unwrap_or_else(|| panic!("{log:?}"));
    let said = log.iter().filter(|l| l.contains(cause)).count();
    assert_eq!(said, 1, "the error is printed {said} times: {log:?}");
    for mut j in joins {
        let _ = j.kill();
        let _ = j.wait();
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn at_the_file_descriptor_limit_the_server_backs_off_logs_and_recovers() {
    let dir = scratch_dir("emfile");
    let mut args: Vec<String> = serve_args(
        &dir,
        &[
            "--dim",
            "20",
            "--min-clients",
            "3",
            "--rounds",
            "1",
            "--preface-timeout-ms",
            "3000",
        ],
    )
    .into_iter()
    .map(|a| a.into_string().unwrap())
    .collect();
    args.insert(0, env!("CARGO_BIN_EXE_tessera").to_owned());
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 48 && exec \"$@\"", "sh"])
        .args(&args);
    let server = Server::spawn(command);

    // Far more connections than descriptors: the server runs out.
    let flood: Vec<std::net::TcpStream> = (0..120)
        .filter_map(|_| std::net::TcpStream::connect(&server.addr).ok())
        .collect();
    assert!(flood.len() > 48);
    let line = server.wait_line("cannot accept connections");
    assert!(line.contains("waiting"), "{line}");
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "{used} CPU seconds in 2 s at the descriptor limit"
    );

    // Once the flood is gone (or timed out), honest clients get in.
    drop(flood);
    let joins: Vec<Child> = (0..3)
        .map(|_| join(&server.addr, &["--rounds", "1"]))
        .collect();
    for j in joins {
        let out = j.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn token_expires_in_writes_an_expiry_the_server_enforces() {
    let dir = scratch_dir("expires-in");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["token", "--expires-in", "1s", "--tokens-file"])
        .arg(&tokens)
        .arg("temp")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let line = std::fs::read_to_string(&tokens).unwrap();
    assert!(
        line.starts_with("temp sha256:") && line.contains(" expires=20"),
        "{line}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("valid until"));
    let bad = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["token", "--expires-in", "soon", "--tokens-file"])
        .arg(&tokens)
        .arg("other")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let mut server = Server::start(
        &dir.join("data"),
        &[
            "--dim",
            "20",
            "--min-clients",
            "3",
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_millis(2100));
    let stderr = refused(join_with(&server.addr, &dir, &token));
    assert!(stderr.contains("the bearer token expired at"), "{stderr}");
    assert!(!stderr.contains(&token), "{stderr}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
