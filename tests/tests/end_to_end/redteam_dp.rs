//! Red-team tests of the ring width and the privacy ledger against a real
//! server: an explicit `bits` is checked at the model's real dimension, and
//! the refusal names the smallest safe value.

use std::time::Duration;

use tessera_server::ServerConfig;
use tessera_server::config::{DpMode, DpSettings, NetworkSettings, RoundRules, ThresholdRule};

/// A distributed-DP configuration whose ring is wide enough for a model of
/// dimension 1 but not for one of 10,000 (conditional rounding's norm bound
/// grows with `sqrt(dim)`, and the wrap bound is a union over coordinates).
fn narrow_ring(data_dir: std::path::PathBuf, dim: Option<u32>, bits: Option<u8>) -> ServerConfig {
    ServerConfig {
        data_dir,
        dim,
        network: NetworkSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            insecure_dev: true,
            ..Default::default()
        },
        round: RoundRules {
            min_clients: 3,
            max_clients: 10,
            join_window: Duration::from_millis(0),
            graph: "complete".parse().unwrap(),
            min_survivors: Some(ThresholdRule::Fraction(0.5)),
            frac_bits: 4,
            bits,
            ..Default::default()
        },
        dp: DpSettings {
            mode: DpMode::Distributed,
            noise_multiplier: 1.0,
            epsilon_budget: 100.0,
            ..Default::default()
        },
        ..ServerConfig::default()
    }
}

/// A data directory that already holds a model of dimension 10,000 and a
/// configuration that does not state `dim` (as `tessera serve` on an
/// existing directory): the explicit `bits = 11` passes the check at the
/// default dimension 1, so the server used to start, listen, gather a
/// lobby and only then stop at its first round. It is refused at start-up
/// now, checked at the model's dimension, naming the smallest safe value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_bits_is_checked_at_the_stored_models_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // First start: creates the model of dimension 10,000 (bits chosen).
    let server = tessera_server::start(narrow_ring(data_dir.clone(), Some(10_000), None))
        .await
        .expect("the server starts with bits chosen for it");
    server.shutdown().await.unwrap();
    // The configuration alone passes (dimension unknown, checked at 1).
    let config = narrow_ring(data_dir, None, Some(11));
    config.validate().expect("bits 11 suffice at dimension 1");
    let err = match tessera_server::start(config).await {
        Ok(server) => {
            server.shutdown().await.unwrap();
            panic!("a ring that lets the noised sum wrap at the model's dimension was accepted");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("bits") && err.contains("wrap"), "{err}");
    let named: u8 = err
        .split("smallest safe value is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no smallest safe value in {err}"));
    assert!(named > 11, "{err}");
    // The value named is safe: the server starts with it.
    let server = tessera_server::start(narrow_ring(dir.path().join("data"), None, Some(named)))
        .await
        .expect("the named value is accepted");
    server.shutdown().await.unwrap();
}
