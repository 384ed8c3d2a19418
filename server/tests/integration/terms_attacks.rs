//! Attacks on the job's privacy terms and on the minimum aggregate size,
//! as an operator's restarts with other flags or config files would make
//! them: none may raise the effective budget, change delta or shrink the
//! smallest published sum without the command-line flag and a record.

use std::path::Path;
use std::time::Duration;

use tessera_dp::ledger::{Adversary, Mechanism, PrivacyLedger};
use tessera_server::ServerConfig;
use tessera_server::config::{DpMode, ServerOverrides, ThresholdRule};

fn config(dir: &Path, mode: DpMode) -> ServerConfig {
    let mut c = ServerConfig {
        data_dir: dir.to_owned(),
        dim: Some(4),
        rounds: Some(0),
        ..ServerConfig::default()
    };
    c.network.insecure_dev = true;
    c.network.listen = "127.0.0.1:0".parse().unwrap();
    c.dp.mode = mode;
    c
}

async fn run_to_end(c: ServerConfig) -> Result<(), String> {
    let server = tessera_server::start(c).await.map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stops by itself")
        .map_err(|e| e.to_string())
}

/// A data directory whose ledger (budget 1, δ 1e-5) has spent its budget
/// on one central round.
async fn exhausted_job(dir: &Path) -> PrivacyLedger {
    run_to_end(config(dir, DpMode::Central)).await.unwrap();
    let mut ledger = PrivacyLedger::new(1.0, 1e-5).unwrap();
    let m = Mechanism::Gaussian {
        noise_multiplier: 0.5,
        sampling_rate: 1.0,
    };
    ledger.record(1, m, Adversary::ModelConsumers).unwrap();
    assert!(ledger.spent() > ledger.budget_epsilon());
    // Written by the holder of the state key: an editor without it is
    // refused before any term is looked at.
    let key_file = config(dir, DpMode::Central).state_key_path();
    let key = tessera_server::store::StateKey::load(&key_file).unwrap();
    tessera_server::store::hazmat::rewrite_ledger(dir, &key, &ledger).unwrap();
    ledger
}

/// A job that spent its budget under DP, restarted with DP off (a config
/// file that forgets `dp`, whose default is off): every later model would
/// be an un-noised release, an unbounded epsilon the ledger never sees.
/// The start is refused, naming the ledger.
#[tokio::test]
async fn dp_off_on_a_data_directory_with_a_ledger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = exhausted_job(tmp.path()).await;
    let before = std::fs::read(tmp.path().join("ledger.json")).unwrap();
    let err = run_to_end(config(tmp.path(), DpMode::Off))
        .await
        .expect_err("a DP job's data directory ran with DP off");
    assert!(err.contains("ledger.json") && err.contains("--dp"), "{err}");
    assert_eq!(
        std::fs::read(tmp.path().join("ledger.json")).unwrap(),
        before,
        "a refusal writes nothing"
    );
    // With DP on: refused by the budget, as before.
    let err = run_to_end(config(tmp.path(), DpMode::Central))
        .await
        .unwrap_err();
    assert!(err.contains(&format!("{:.3}", ledger.spent())), "{err}");
}

/// Neither permission can come from the file, under any spelling.
#[test]
fn no_spelling_of_the_file_sets_raise_budget_or_recompute_delta() {
    for key in ["raise_budget", "recompute_delta"] {
        let kebab = key.replace('_', "-");
        for text in [
            format!("{key} = true\n"),
            format!("{kebab} = true\n"),
            format!("\"{key}\" = true\n"),
            format!("dp.{key} = true\n"),
            format!("[dp]\n{key} = true\n"),
            format!("dp = {{ {key} = true }}\n"),
            format!("{key} = 1\n"),
            format!("{key} = \"true\"\n"),
        ] {
            assert!(
                ServerOverrides::from_toml(&text).is_err(),
                "{text:?} was accepted"
            );
        }
    }
}

/// `min_aggregate` below 3 is refused from the file, and no combination of
/// lower settings brings a round's survivor floor below it.
#[test]
fn the_minimum_aggregate_cannot_go_below_three() {
    for m in ["0", "1", "2"] {
        let text = format!("min_aggregate = {m}\n");
        let c = ServerConfig::from_toml(&text).unwrap();
        assert!(c.validate().is_err(), "{text:?} validated");
    }
    assert!(ServerConfig::from_toml("min_aggregate = -1\n").is_err());
    let mut c = ServerConfig::from_toml(
        "min_clients = 3\nmax_clients = 3\nthreshold = \"2\"\nmin_survivors = \"2\"\n",
    )
    .unwrap();
    c.network.insecure_dev = true;
    c.validate().unwrap();
    assert_eq!(c.round.min_aggregate, 3);
    for n in 3..=10 {
        for t in 1..=n {
            assert!(c.survivor_floor(n, t) >= 3.min(n), "n {n} t {t}");
        }
    }
    for rule in [ThresholdRule::Count(1), ThresholdRule::Fraction(0.01)] {
        c.round.min_survivors = Some(rule);
        assert_eq!(c.survivor_floor(3, 2), 3);
    }
    c.round.min_aggregate = 2;
    assert!(c.validate().is_err());
}
