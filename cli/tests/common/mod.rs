//! `tessera serve` and `tessera inspect` as processes, for the tests that
//! drive the real binary.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// A fresh directory under the system temp dir, named for the test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A `tessera serve --insecure-dev` process on 127.0.0.1, its address, and
/// its stderr lines.
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the server on `data_dir` with `args` after the listen,
    /// data-dir and insecure-dev flags; returns once it printed its address.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command.args(serve_args(data_dir, args));
        Server::spawn(command)
    }

    /// Starts `command`, which runs (or `exec`s) `tessera serve`; returns
    /// once it printed its address.
    pub fn spawn(mut command: Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tessera serve starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("first line");
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line is {first:?}"))
            .to_owned();
        let (tx, log) = mpsc::channel();
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server { child, addr, log }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&self, needle: &str) {
        self.wait_line(needle);
    }

    /// Waits for a log line containing `needle` and returns it (lines
    /// before it are consumed).
    pub fn wait_line(&self, needle: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no log line with {needle:?} within 60 s"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

/// The arguments of `tessera serve` on 127.0.0.1 with `--insecure-dev`,
/// then `args`.
pub fn serve_args(data_dir: &Path, args: &[&str]) -> Vec<std::ffi::OsString> {
    let mut all: Vec<std::ffi::OsString> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--insecure-dev",
        "--data-dir",
    ]
    .iter()
    .map(Into::into)
    .collect();
    all.push(data_dir.into());
    all.extend(args.iter().map(Into::into));
    all
}

/// Every log line the server printed so far and until it exits.
impl Server {
    pub fn rest_of_log(&self) -> Vec<String> {
        self.log.iter().collect()
    }
}

/// `tessera inspect --json` of a data directory.
pub fn inspect(data_dir: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["inspect", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("tessera inspect runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}
