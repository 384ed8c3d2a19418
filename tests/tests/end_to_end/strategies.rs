//! Server strategies over the real gRPC service: a FedAdam server
//! publishes the Adam step of its clients' mean, across a restart (its
//! moments come back from the data directory), records the strategy in
//! each round record, and tells clients FedProx's mu with the model and in
//! each round's start.

use std::time::Duration;

use tessera_server::ServerConfig;
use tessera_server::config::{Strategy, StrategyRecord};
use tessera_tests::{ServerOptions, TestServer, mean, update};

const DIM: u32 = 24;
const CLIENTS: u64 = 5;

/// FedAdam with η = 0.02 (defaults β1 = 0.9, β2 = 0.99, τ = 1e-3) and
/// FedProx's mu = 0.25.
fn fedadam(c: &mut ServerConfig) {
    c.aggregation.strategy = Some(Strategy::FedAdam);
    c.aggregation.server_lr = 0.02;
    c.aggregation.proximal_mu = 0.25;
}

/// Reddi et al.'s FedAdam step, written out here in f64 from the paper's
/// Algorithm 2 (m = β1 m + (1−β1) Δ, v = β2 v + (1−β2) Δ², x += η m /
/// (√v + τ)), independent of the server's code.
fn adam_step(x: &mut [f64], m: &mut [f64], v: &mut [f64], delta: &[f32]) {
    let (lr, b1, b2, tau) = (0.02, 0.9, 0.99, 1e-3);
    for i in 0..x.len() {
        let d = f64::from(delta[i]);
        m[i] = b1 * m[i] + (1.0 - b1) * d;
        v[i] = b2 * v[i] + (1.0 - b2) * d * d;
        x[i] += lr * m[i] / (v[i].sqrt() + tau);
    }
}

/// Runs one round of `CLIENTS` SDK clients against `url`; returns their
/// updates after checking each heard FedProx's mu in RoundStart.
async fn round(url: &str, seed: u64) -> Vec<Vec<f32>> {
    let updates: Vec<Vec<f32>> = (0..CLIENTS).map(|i| update(DIM, seed + i)).collect();
    let tasks: Vec<_> = updates
        .iter()
        .cloned()
        .map(|u| {
            let client = tessera_client::Client::builder(url.to_owned())
                .round_timeout(Duration::from_secs(120))
                .build()
                .expect("client builds");
            tokio::spawn(async move { client.participate(&u).await })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.unwrap().expect("every client completes");
        assert_eq!(outcome.survivors, CLIENTS as u32);
        assert_eq!(outcome.proximal_mu, 0.25, "RoundStart carries mu");
    }
    updates
}

async fn latest(url: &str) -> tessera_client::GlobalModel {
    tessera_client::Client::builder(url.to_owned())
        .build()
        .expect("client builds")
        .latest_model()
        .await
        .expect("model")
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max)
}

/// The published model is within the fixed-point error of the exact step:
/// each client's value is rounded to a multiple of 2^-16, so the decoded
/// mean is within 2^-16 of the exact one; the Adam step's derivative in Δ
/// is at most η (1−β1) / (2τ) = 1 in the first round (largest at Δ = 0),
/// and the second round's error is at most a few times the first's.
const ROUND1_TOLERANCE: f64 = 3e-5;
const ROUND2_TOLERANCE: f64 = 2e-4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fedadam_server_publishes_the_adam_step_and_keeps_its_moments_over_a_restart() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: CLIENTS as u32,
        tweak: fedadam,
        ..ServerOptions::default()
    })
    .await;
    let initial = latest(&ts.url).await;
    assert_eq!(initial.proximal_mu, 0.25, "GetModel carries mu");
    let mut x: Vec<f64> = initial.flatten().iter().map(|&w| f64::from(w)).collect();
    let (mut m, mut v) = (vec![0.0; DIM as usize], vec![1e-6; DIM as usize]);

    let updates = round(&ts.url, 100).await;
    let delta = mean(&updates);
    adam_step(&mut x, &mut m, &mut v, &delta);
    let published = latest(&ts.url).await;
    assert_eq!(published.version, 2);
    let diff = max_diff(&published.flatten(), &x);
    assert!(diff <= ROUND1_TOLERANCE, "round 1: {diff} from FedAdam");
    // Plain FedAvg (x0 + Δ) is far from it: the test tells them apart.
    let fedavg: Vec<f64> = initial
        .flatten()
        .iter()
        .zip(&delta)
        .map(|(&w, &d)| f64::from(w + d))
        .collect();
    assert!(max_diff(&published.flatten(), &fedavg) > 1e-2);
    // An older version, read from the store rather than the cache, too.
    let first = tessera_client::Client::builder(ts.url.clone())
        .build()
        .expect("client builds")
        .model(1)
        .await
        .expect("version 1");
    assert_eq!((first.version, first.proximal_mu), (1, 0.25));
    let after_round1: Vec<f64> = published.flatten().iter().map(|&w| f64::from(w)).collect();

    // A restart from the same data directory: the second round's step
    // needs round 1's m and v.
    let data_dir = ts.data_dir.clone();
    ts.server.shutdown().await.unwrap();
    let mut config = ServerConfig {
        data_dir: data_dir.clone(),
        dim: Some(DIM),
        ..ServerConfig::default()
    };
    config.network.listen = "127.0.0.1:0".parse().unwrap();
    config.network.insecure_dev = true;
    config.round.min_clients = CLIENTS as u32;
    config.round.max_clients = CLIENTS as u32;
    config.round.join_window = Duration::ZERO;
    config.round.graph = "complete".parse().unwrap();
    fedadam(&mut config);
    let server = tessera_server::start(config).await.expect("restarts");
    let url = format!("http://127.0.0.1:{}", server.local_addr().port());
    let updates = round(&url, 200).await;
    adam_step(&mut x, &mut m, &mut v, &mean(&updates));
    let published = latest(&url).await;
    assert_eq!(published.version, 3);
    let diff = max_diff(&published.flatten(), &x);
    assert!(diff <= ROUND2_TOLERANCE, "round 2: {diff} from FedAdam");
    // From fresh moments the second step would be another one.
    let (mut fresh_x, mut fresh_m, mut fresh_v) = (
        after_round1,
        vec![0.0; DIM as usize],
        vec![1e-6; DIM as usize],
    );
    adam_step(&mut fresh_x, &mut fresh_m, &mut fresh_v, &mean(&updates));
    assert!(max_diff(&published.flatten(), &fresh_x) > 1e-3);
    server.shutdown().await.unwrap();

    let records = tessera_server::store::inspect(&data_dir).unwrap().rounds;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            r.strategy,
            Some(StrategyRecord {
                strategy: Strategy::FedAdam,
                server_lr: 0.02,
                server_momentum: None,
                server_beta1: Some(0.9),
                server_beta2: Some(0.99),
                server_tau: Some(1e-3),
                proximal_mu: 0.25,
            }),
            "round {}",
            r.round
        );
    }
}
