//! Checks on the server's settings and tokens file (the flags and the flat
//! TOML file come from one table; the tokens file shares the allow-list's
//! comment rule): the file cannot switch security off under
//! any spelling, the command line wins over the file for every setting,
//! every safety check runs on the merged settings, and a tokens file is
//! read as its operator wrote it.

use std::path::Path;

use tessera_server::ServerConfig;
use tessera_server::auth::{TokenHash, TokenStore};
use tessera_server::config::ServerOverrides;

/// Each key of the flat file with two values, `a` and `b`, that differ
/// from each other.
const SETTINGS: &[(&str, &str, &str)] = &[
    ("listen", "\"127.0.0.1:1000\"", "\"127.0.0.1:2000\""),
    ("data_dir", "\"a\"", "\"b\""),
    ("state_key", "\"a.key\"", "\"b.key\""),
    ("dim", "10", "20"),
    ("initial_model", "\"a.safetensors\"", "\"b.safetensors\""),
    ("min_clients", "4", "5"),
    ("max_clients", "50", "60"),
    ("join_window_ms", "1", "2"),
    ("graph", "\"complete\"", "\"harary:4\""),
    ("threshold", "\"0.6\"", "\"5\""),
    ("min_survivors", "\"0.5\"", "\"7\""),
    ("min_aggregate", "4", "5"),
    ("dropout_rate", "0.2", "0.3"),
    ("corrupt_rate", "0.01", "0.02"),
    ("threat_model", "\"semi-malicious\"", "\"malicious-server\""),
    ("prg", "\"chacha20\"", "\"aes128-ctr\""),
    ("bits", "30", "31"),
    ("frac_bits", "10", "12"),
    ("clip_norm", "2.0", "3.0"),
    ("stage_timeout_ms", "100", "200"),
    ("server_lr", "0.5", "0.7"),
    ("server_momentum", "0.5", "0.9"),
    ("dp", "\"central\"", "\"distributed\""),
    ("dp_noise", "\"skellam\"", "\"discrete-gaussian\""),
    ("noise_multiplier", "1.5", "2.5"),
    ("epsilon_budget", "3.0", "4.0"),
    ("delta", "1e-6", "1e-7"),
    ("tls_cert", "\"a.pem\"", "\"b.pem\""),
    ("tls_key", "\"a.key\"", "\"b.key\""),
    ("tls_client_ca", "\"a-ca.pem\"", "\"b-ca.pem\""),
    ("tokens_file", "\"a.txt\"", "\"b.txt\""),
    ("identities_file", "\"a-ids.txt\"", "\"b-ids.txt\""),
    ("max_connections", "500", "600"),
    ("tls_handshake_timeout_ms", "1000", "2000"),
    ("preface_timeout_ms", "3000", "4000"),
    ("idle_timeout_ms", "30000", "90000"),
    ("metrics_listen", "\"127.0.0.1:9000\"", "\"127.0.0.1:9001\""),
    ("rounds", "3", "4"),
    ("cohort_size", "6", "8"),
    ("cohort_fraction", "0.25", "0.5"),
    ("lobby_keepalive_ms", "1000", "2000"),
    ("ftrl_epoch_rounds", "8", "32"),
    ("ftrl_momentum", "0.5", "0.9"),
    ("strategy", "\"fedadam\"", "\"fedyogi\""),
    ("server_beta1", "0.8", "0.85"),
    ("server_beta2", "0.9", "0.999"),
    ("server_tau", "0.01", "0.0001"),
    ("proximal_mu", "0.01", "0.1"),
    ("weighting", "true", "false"),
    ("max_examples", "50", "60"),
    ("federated_eval", "true", "false"),
    ("eval_max_examples", "70", "80"),
    ("eval_max_loss", "5.0", "6.0"),
    ("adaptive_clip", "true", "false"),
    ("clip_target_quantile", "0.6", "0.7"),
    ("clip_lr", "0.3", "0.4"),
    ("extras_scale", "0.5", "0.75"),
];

fn overrides(text: &str) -> ServerOverrides {
    ServerOverrides::from_toml(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The keys the file accepts, as serde lists them when refusing an unknown
/// one.
fn file_keys() -> Vec<String> {
    let err = ServerOverrides::from_toml("no_such_key = 1\n")
        .unwrap_err()
        .to_string();
    let list = err.split("expected one of ").nth(1).expect("a key list");
    list.split(", ")
        .map(|k| k.trim().trim_matches('`').to_owned())
        .collect()
}

/// For each setting alone: the command line's value wins over the file's,
/// the file's over the default; the table above covers every key the file
/// takes, so a new setting cannot skip this check.
#[test]
fn the_command_line_wins_over_the_file_for_every_setting() {
    let covered: Vec<&str> = SETTINGS.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(file_keys(), covered);
    let defaults = ServerConfig::from_overrides(ServerOverrides::default());
    for (key, a, b) in SETTINGS {
        let file = overrides(&format!("{key} = {a}\n"));
        let cli = overrides(&format!("{key} = {b}\n"));
        let from_file = ServerConfig::from_overrides(file.clone());
        let from_cli = ServerConfig::from_overrides(cli.clone());
        assert_ne!(from_file, from_cli, "{key}: a and b give one config");
        assert_ne!(from_file, defaults, "{key}: the file's value was dropped");
        assert_eq!(
            ServerConfig::from_overrides(cli.clone().or(file.clone())),
            from_cli,
            "{key}: the file's value won over the command line's"
        );
        assert_eq!(
            ServerConfig::from_overrides(ServerOverrides::default().or(file)),
            from_file,
            "{key}: an empty command line changed the file's value"
        );
    }
}

/// No spelling of the file switches security off: not the flag's name,
/// not a quoted key, not the group the setting lives in in code.
#[test]
fn no_spelling_of_the_file_sets_insecure_dev() {
    for text in [
        "insecure_dev = true\n",
        "insecure-dev = true\n",
        "\"insecure_dev\" = true\n",
        "network.insecure_dev = true\n",
        "[network]\ninsecure_dev = true\n",
        "[network]\n",
        "network = { insecure_dev = true }\n",
    ] {
        assert!(
            ServerOverrides::from_toml(text).is_err(),
            "{text:?} was accepted"
        );
    }
}

/// What a command line with `--insecure-dev` on a loopback address and the
/// given settings merges to over `file`.
fn merged(file: &str, cli: &str) -> Result<ServerConfig, String> {
    let mut cli = overrides(cli);
    cli.insecure_dev = true;
    let config = ServerConfig::from_overrides(cli.or(overrides(file)));
    config
        .validate()
        .map(|()| config)
        .map_err(|e| e.to_string())
}

/// The threat model's floors and refusals hold whichever source gave which
/// part of the settings.
#[test]
fn every_safety_check_runs_on_the_merged_settings() {
    let ok = merged("dim = 10\n", "max_clients = 20\n");
    assert!(ok.is_ok(), "{ok:?}");
    for (file, cli, field) in [
        // A sparse graph under the malicious-server model, from either side.
        (
            "threat_model = \"malicious-server\"\nidentities_file = \"ids.txt\"\n",
            "graph = \"harary:4\"\nmax_clients = 20\n",
            "graph",
        ),
        (
            "graph = \"harary:4\"\nmax_clients = 20\n",
            "threat_model = \"malicious-server\"\nidentities_file = \"ids.txt\"\n",
            "graph",
        ),
        // An explicit threshold below the threat model's floor.
        (
            "threshold = \"2\"\ngraph = \"complete\"\n",
            "threat_model = \"semi-malicious\"\nmax_clients = 20\n",
            "threshold",
        ),
        (
            "threat_model = \"semi-malicious\"\nmax_clients = 20\n",
            "threshold = \"2\"\ngraph = \"complete\"\n",
            "threshold",
        ),
        // A ring too narrow for the widest round.
        ("bits = 8\n", "max_clients = 1000\ndim = 10\n", "bits"),
        // DP on from the file, its noise switched off on the command line.
        (
            "dp = \"central\"\n",
            "noise_multiplier = 0.0\n",
            "noise_multiplier",
        ),
        ("dp = \"central\"\n", "delta = 1.0\n", "delta"),
        // Distributed DP without enough honest survivors to carry the noise.
        ("dp = \"distributed\"\n", "dim = 10\n", "min_survivors"),
        // Identities outside the malicious-server model, and the reverse.
        (
            "identities_file = \"ids.txt\"\n",
            "dim = 10\n",
            "identities_file",
        ),
        (
            "threat_model = \"malicious-server\"\n",
            "dim = 10\n",
            "identities_file",
        ),
        // A minimum aggregate that exposes an input, or that the lobby's
        // rounds cannot reach.
        ("min_aggregate = 2\n", "dim = 10\n", "min_aggregate"),
        ("min_aggregate = 5\n", "min_clients = 4\n", "min_aggregate"),
        // --insecure-dev is for loopback only, whoever gave the address.
        ("listen = \"0.0.0.0:7443\"\n", "dim = 10\n", "insecure_dev"),
    ] {
        let err = merged(file, cli).expect_err(&format!("{file:?} + {cli:?} was accepted"));
        assert!(
            err.starts_with(&format!("config: {field}: ")),
            "{file:?} + {cli:?}: {err}"
        );
    }
}

fn tokens(dir: &Path, text: &str) -> Result<TokenStore, String> {
    let path = dir.join("tokens.txt");
    std::fs::write(&path, text).unwrap();
    TokenStore::load(&path).map_err(|e| e.to_string())
}

/// A tokens file is read as written: CRLF endings, tabs, trailing comments
/// and upper-case digits change nothing; a commented-out line lets nobody
/// in; a comment never shortens a hash into another one; a name given twice
/// is refused whatever comments follow it; a raw token with a comment after
/// it is still caught as a raw token.
#[test]
fn a_tokens_file_is_read_as_its_operator_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        TokenHash::of_str("tsr_alice"),
        TokenHash::of_str("tsr_bob"),
        TokenHash::of_str("tsr_carol"),
    );
    let upper = c.to_string().replace("sha256:", "").to_uppercase();
    let store = tokens(
        dir.path(),
        &format!(
            "# tokens\r\nalice {a} # laptop\r\n#bob {b}\r\n  # bob {b}\r\ncarol\tsha256:{upper}\t#x\r\n"
        ),
    )
    .unwrap();
    assert_eq!(store.names().collect::<Vec<_>>(), ["alice", "carol"]);
    assert_eq!(store.authenticate("tsr_alice").unwrap().as_str(), "alice");
    assert_eq!(store.authenticate("tsr_carol").unwrap().as_str(), "carol");
    assert!(store.authenticate("tsr_bob").is_none());

    let hash = a.to_string();
    let (head, tail) = hash.split_at(40);
    for text in [
        format!("alice {hash}#laptop\n"),
        format!("alice {head}#{tail}\n"),
        format!("alice {head} #{tail}\n"),
        format!("alice {a} # one\nalice {b} # two\n"),
        format!("al\u{200b}ice {a}\n"),
        "alice tsr_0123456789abcdef # the raw token\n".to_owned(),
    ] {
        assert!(tokens(dir.path(), &text).is_err(), "{text:?} was accepted");
    }
}
