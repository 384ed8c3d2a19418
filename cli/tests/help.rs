//! Every command's `--help` is also in docs/cli/, which the README links:
//! this test fails when the two drift apart. To refresh the files after
//! changing a command's help: `TESSERA_BLESS=1 cargo test -p tessera --test help`.

use std::path::PathBuf;
use std::process::Command;

/// Each command line before `--help` (a space separates a subcommand's
/// words; its file is named with a dash).
const COMMANDS: [&str; 17] = [
    "",
    "demo",
    "simulate",
    "params",
    "privacy",
    "privacy epsilon",
    "privacy noise",
    "privacy rounds",
    "serve",
    "join",
    "model",
    "model get",
    "inspect",
    "migrate",
    "token",
    "cert",
    "keygen",
];

#[test]
fn docs_hold_each_commands_current_help() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/cli");
    let bless = std::env::var_os("TESSERA_BLESS").is_some();
    let mut stale = Vec::new();
    for command in COMMANDS {
        let mut args: Vec<&str> = Vec::new();
        args.extend(command.split_whitespace());
        args.push("--help");
        let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(&args)
            .env_remove("COLUMNS")
            .output()
            .expect("tessera runs");
        assert!(out.status.success(), "tessera {command} --help failed");
        let help = String::from_utf8(out.stdout).expect("UTF-8 help");
        assert!(help.contains("Usage:"), "{command}: {help}");
        let name = if command.is_empty() {
            "tessera".to_owned()
        } else {
            command.replace(' ', "-")
        };
        let file = docs.join(format!("{name}.txt"));
        if bless {
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(&file, &help).unwrap();
        } else if std::fs::read_to_string(&file).ok().as_deref() != Some(help.as_str()) {
            stale.push(file.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date (TESSERA_BLESS=1 cargo test -p tessera --test help rewrites them): {stale:?}"
    );
}
