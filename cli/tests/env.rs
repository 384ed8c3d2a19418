//! `tessera serve`'s settings from `TESSERA_<SETTING>` environment
//! variables: flag over variable over file, a bad value names its
//! variable, and no variable can do what only a flag may (switch security
//! off).

mod common;

use std::process::{Command, Output};

use common::{Server, scratch_dir};

/// `tessera serve` with none of the caller's own `TESSERA_*` variables,
/// only `vars`.
fn serve(args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.arg("serve").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command
}

fn run(args: &[&str], vars: &[(&str, &str)]) -> (Output, String) {
    let out = serve(args, vars).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// The effective max_clients shows in the error a min_clients of 50
/// above it causes: 5 from the file, 6 from the variable, 7 from the flag.
#[test]
fn a_flag_beats_its_variable_and_the_variable_beats_the_file() {
    let dir = scratch_dir("env-precedence");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.toml");
    std::fs::write(&file, "max_clients = 5\nmin_clients = 40\n").unwrap();
    let file = file.to_str().unwrap();
    let base = ["--config", file, "--insecure-dev", "--dim", "4"];
    let with_flag: Vec<&str> = base.iter().copied().chain(["--max-clients", "7"]).collect();
    let env_min = ("TESSERA_MIN_CLIENTS", "50");
    for (args, vars, effective) in [
        (
            &base[..],
            vec![env_min],
            "max_clients: 5 is below min_clients 50",
        ),
        (
            &base[..],
            vec![env_min, ("TESSERA_MAX_CLIENTS", "6")],
            "max_clients: 6 is below min_clients 50",
        ),
        (
            &with_flag[..],
            vec![env_min, ("TESSERA_MAX_CLIENTS", "6")],
            "max_clients: 7 is below min_clients 50",
        ),
        // Without the variable, the file's min_clients holds.
        (
            &with_flag[..],
            vec![],
            "max_clients: 7 is below min_clients 40",
        ),
    ] {
        let (out, stderr) = run(args, &vars);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(effective), "{vars:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_configured_by_the_environment_alone_starts() {
    let dir = scratch_dir("env-only");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let config = dir.join("server.toml");
    std::fs::write(&config, "dim = 99\nmax_connections = 321\n").unwrap();
    let mut command = serve(
        &["--insecure-dev"],
        &[
            ("TESSERA_CONFIG", config.to_str().unwrap()),
            ("TESSERA_LISTEN", "127.0.0.1:0"),
            ("TESSERA_DATA_DIR", data.to_str().unwrap()),
            ("TESSERA_DIM", "7"),
            ("TESSERA_LOG", "unused: not a setting"),
        ],
    );
    command.args(["--log", "info"]);
    let mut server = Server::spawn(command);
    // The variable's dimension over the file's; the file's other setting
    // still applies.
    let serving = server.wait_line("serving");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(serving.contains("dim=7 max_connections=321"), "{serving}");
    assert!(
        data.join("models").is_dir(),
        "the data directory is the variable's"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A variable left in a service unit or an image must not switch TLS and
/// authentication off: only the flag does. (The other flag-only switches,
/// --raise-budget and --recompute-delta, have no variable either: see the
/// settings table's test and `tessera serve --help`.)
#[test]
fn no_variable_switches_security_off() {
    let dir = scratch_dir("env-insecure");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    for value in ["1", "true"] {
        let (out, stderr) = run(
            &["--listen", "127.0.0.1:0", "--dim", "4", "--data-dir", data],
            &[("TESSERA_INSECURE_DEV", value)],
        );
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains("TLS is required"), "{value}: {stderr}");
    }
    assert!(!dir.exists(), "nothing was started");
}

#[test]
fn a_bad_value_from_a_variable_names_the_variable() {
    let (out, stderr) = run(&["--insecure-dev"], &[("TESSERA_MIN_CLIENTS", "lots")]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'lots' for '--min-clients <N>'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the environment variable TESSERA_MIN_CLIENTS"),
        "{stderr}"
    );
    // Given as a flag, the flag is named alone.
    let (_, stderr) = run(
        &["--min-clients", "lots"],
        &[("TESSERA_MIN_CLIENTS", "lots")],
    );
    assert!(!stderr.contains("environment variable"), "{stderr}");
}

/// A variable left in an image or a service unit overrides the reviewed
/// configuration file (here the tokens file, which says who may join): the
/// server names every setting it took from the environment when it
/// starts, so the swap is in the log, not silent; the values are not
/// printed, and a setting given by its flag is not listed.
#[test]
fn the_settings_taken_from_the_environment_are_named_at_start() {
    let dir = scratch_dir("env-notice");
    std::fs::create_dir_all(&dir).unwrap();
    let reviewed = dir.join("reviewed.tokens");
    let swapped = dir.join("swapped.tokens");
    std::fs::write(&reviewed, "").unwrap();
    std::fs::write(&swapped, "").unwrap();
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!("dim = 4\ntokens_file = {:?}\n", reviewed.to_str().unwrap()),
    )
    .unwrap();
    let data = dir.join("data");
    let mut command = serve(
        &[
            "--insecure-dev",
            "--listen",
            "127.0.0.1:0",
            "--min-clients",
            "3",
        ],
        &[
            ("TESSERA_CONFIG", config.to_str().unwrap()),
            ("TESSERA_DATA_DIR", data.to_str().unwrap()),
            ("TESSERA_TOKENS_FILE", swapped.to_str().unwrap()),
            ("TESSERA_MIN_CLIENTS", "4"),
        ],
    );
    command.args(["--log", "info"]);
    let mut server = Server::spawn(command);
    let notice = server.wait_line("from the environment");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for var in ["TESSERA_CONFIG", "TESSERA_DATA_DIR", "TESSERA_TOKENS_FILE"] {
        assert!(notice.contains(var), "{var}: {notice}");
    }
    assert!(
        !notice.contains("TESSERA_MIN_CLIENTS"),
        "the flag's: {notice}"
    );
    assert!(!notice.contains("swapped"), "no values: {notice}");
    let _ = std::fs::remove_dir_all(&dir);
}
