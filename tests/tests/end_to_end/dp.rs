//! Distributed DP over real gRPC: clients add their share of discrete
//! Gaussian noise before masking, the server publishes the noised average
//! and accounts exactly what the survivors' noise bought.

use tessera_aggregation::Stage;
use tessera_client::Participation;
use tessera_dp::accountant::{discrete_gaussian_rho, zcdp_to_epsilon};
use tessera_dp::encoding::FixedPoint;
use tessera_dp::mechanism::{DistributedEncoding, NoiseKind};
use tessera_server::config::DpMode;
use tessera_tests::{ServerOptions, TestServer, mean, update};

const DIM: u32 = 2000;
const CLIENTS: u32 = 8;
/// Majority of the 7 share holders of the complete graph of 8.
const THRESHOLD: u32 = 4;
const Z: f64 = 0.5;

fn distributed(config: &mut tessera_server::ServerConfig) {
    config.dp.mode = DpMode::Distributed;
    config.dp.noise_multiplier = Z;
    config.dp.epsilon_budget = 100.0;
}

/// Runs one round where client 0 drops before `drop` (if any); returns the
/// updates of the clients whose inputs are in the sum.
async fn round(ts: &TestServer, seed: u64, drop: Option<Stage>) -> Vec<Vec<f32>> {
    let updates: Vec<Vec<f32>> = (0..u64::from(CLIENTS))
        .map(|i| update(DIM, seed + i))
        .collect();
    let tasks: Vec<_> = updates
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, u)| {
            let client = ts.client(None);
            tokio::spawn(async move {
                match (i, drop) {
                    (0, Some(stage)) => client.participate_or_drop(&u, stage).await,
                    _ => client.participate(&u).await.map(Participation::Completed),
                }
            })
        })
        .collect();
    let mut summed = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap().expect("every client ends as asked") {
            Participation::Completed(outcome) => {
                assert!(outcome.bytes_sent > u64::from(DIM) * 2, "{outcome:?}");
                // Each client added its share of the noise before masking.
                assert!(outcome.client_noise, "{outcome:?}");
                summed.push(updates[i].clone());
            }
            Participation::Dropped { stage, .. } => assert_eq!(Some(stage), drop),
        }
    }
    summed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_dp_noises_the_average_and_the_ledger_accounts_the_survivors_noise() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: CLIENTS,
        tweak: distributed,
        ..ServerOptions::default()
    })
    .await;
    let encoding = DistributedEncoding::new(
        FixedPoint::new(1.0, 16, 32).unwrap(),
        NoiseKind::DiscreteGaussian,
        Z,
        THRESHOLD,
        DIM as usize,
    )
    .unwrap();
    let b = encoding.norm_bound;
    let scale = 65536.0f64;

    let mut rho = 0.0;
    let mut before = ts.client(None).latest_model().await.unwrap().flatten();
    for (r, drop) in [None, Some(Stage::MaskedInput)].into_iter().enumerate() {
        let summed = round(&ts, 100 * r as u64, drop).await;
        let n = summed.len() as u32;
        assert_eq!(n, if drop.is_some() { CLIENTS - 1 } else { CLIENTS });
        let model = ts.client(None).latest_model().await.unwrap();
        let after = model.flatten();
        // The published step minus the plain mean is the noise of the n
        // survivors' shares, divided by n (FedAvg averages), plus rounding.
        let (mu, var) = noise_moments(&before, &after, &summed);
        let d = f64::from(DIM);
        let expected =
            f64::from(n) * encoding.dp.per_client_variance() / scale.powi(2) / f64::from(n).powi(2);
        assert!(
            (var / expected - 1.0).abs() < 0.15,
            "round {r}: noise variance {var}, expected {expected}"
        );
        assert!(mu.abs() < 5.0 * (var / d).sqrt(), "noise is centred: {mu}");

        // The ledger charges the noise the n survivors actually carried.
        rho += discrete_gaussian_rho(encoding.dp.actual_sigma(n), b);
        let (eps, _) = zcdp_to_epsilon(rho, 1e-5);
        let stored = tessera_server::store::inspect(ts.data_dir()).unwrap();
        let ledger = stored.ledger.expect("a ledger with DP on");
        assert_eq!(ledger.entries().len(), r + 1);
        assert!(
            (ledger.spent() - eps).abs() <= 1e-9 * eps,
            "{} vs {eps}",
            ledger.spent()
        );
        assert_eq!(model.epsilon, ledger.spent());
        assert_eq!(model.delta, 1e-5);
        before = after;
    }
    ts.server.shutdown().await.unwrap();
}

/// A quarter of the 8 clients may collude with the server: 2 corrupt.
fn distributed_with_colluders(config: &mut tessera_server::ServerConfig) {
    distributed(config);
    config.round.corrupt_rate = 0.25;
}

/// Colluders know their own noise and subtract it: with 2 of 8 clients
/// assumed corrupt, each client's noise is calibrated so that the honest
/// survivors of the floor (4 - 2) carry the target, and the ledger charges
/// the noise of the round's honest contributors (8 - 2), not of all 8. The
/// old code calibrated for 4 and charged for 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_dp_calibrates_and_charges_for_the_honest_contributors() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: CLIENTS,
        tweak: distributed_with_colluders,
        ..ServerOptions::default()
    })
    .await;
    let corrupt = 2;
    // Majority of the 7 holders of the complete graph of 8.
    let floor = 4;
    let fp = FixedPoint::new(1.0, 16, 32).unwrap();
    let kind = NoiseKind::DiscreteGaussian;
    let encoding =
        DistributedEncoding::calibrate(fp, kind, Z, floor, corrupt, DIM as usize).unwrap();
    let before = ts.client(None).latest_model().await.unwrap().flatten();
    let summed = round(&ts, 7, None).await;
    assert_eq!(summed.len() as u32, CLIENTS);
    let after = ts.client(None).latest_model().await.unwrap().flatten();
    // Every client's share of the noise is the honest calibration's.
    let (_, var) = noise_moments(&before, &after, &summed);
    let n = f64::from(CLIENTS);
    let expected = n * encoding.dp.per_client_variance() / 65536f64.powi(2) / n.powi(2);
    assert!(
        (var / expected - 1.0).abs() < 0.15,
        "noise variance {var}, expected {expected}"
    );

    // The charge: the accountant's epsilon for the noise of 8 - 2 honest
    // contributors.
    let honest = CLIENTS - corrupt;
    let rho = discrete_gaussian_rho(encoding.dp.actual_sigma(honest), encoding.norm_bound);
    let (eps, _) = zcdp_to_epsilon(rho, 1e-5);
    let ledger = tessera_server::store::inspect(ts.data_dir())
        .unwrap()
        .ledger
        .expect("a ledger with DP on");
    assert!(
        (ledger.spent() - eps).abs() <= 1e-9 * eps,
        "{} vs {eps}",
        ledger.spent()
    );
    // The old charge counted all 8 contributors' noise, colluders' too:
    // a smaller epsilon than the colluding server faces.
    let old_rho = discrete_gaussian_rho(encoding.dp.actual_sigma(CLIENTS), encoding.norm_bound);
    let (old_eps, _) = zcdp_to_epsilon(old_rho, 1e-5);
    assert!(ledger.spent() > old_eps, "{} <= {old_eps}", ledger.spent());
    ts.server.shutdown().await.unwrap();
}

/// The sample mean and variance over the model's coordinates of the
/// published step minus the plain mean of the updates the survivors sent:
/// the DP noise of the round's average (plus fixed-point rounding).
fn noise_moments(before: &[f32], after: &[f32], summed: &[Vec<f32>]) -> (f64, f64) {
    let noise: Vec<f64> = after
        .iter()
        .zip(before)
        .zip(mean(summed))
        .map(|((a, b), m)| f64::from(a - b) - f64::from(m))
        .collect();
    let d = noise.len() as f64;
    let mu = noise.iter().sum::<f64>() / d;
    let var = noise.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (d - 1.0);
    (mu, var)
}
