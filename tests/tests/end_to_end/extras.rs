//! Extras inside the secure sum, over real gRPC (see `tessera_dp::extras`):
//! weighted averaging by example count, federated evaluation counts and
//! adaptive clipping's indicator bits, exact without DP, noised by the
//! clients and charged with the joint bound Δ under distributed DP, the
//! clip norm durable across a restart, and what a lying client can and
//! cannot do to the result.

use std::time::Duration;

use tessera_client::{Contribution, Evaluation, RoundOutcome};
use tessera_dp::encoding::FixedPoint;
use tessera_dp::extras::{EvalBounds, ExtrasLayout};
use tessera_dp::ledger::Mechanism;
use tessera_dp::mechanism::{DistributedEncoding, NoiseKind};
use tessera_server::ServerConfig;
use tessera_server::config::{DpMode, RoundRules};
use tessera_server::store::{ExtrasRecord, RoundStatus};
use tessera_tests::{ScriptedClient, ServerOptions, TestServer, update};

const DIM: u32 = 40;
const MAX_EXAMPLES: u32 = 100;
const EVAL_MAX: u32 = 50;

fn weighted_and_evaluated(config: &mut ServerConfig) {
    config.round.extras.weighting = true;
    config.round.extras.max_examples = MAX_EXAMPLES;
    config.round.extras.federated_eval = true;
    config.round.extras.eval_max_examples = EVAL_MAX;
}

/// Runs one round of `contributions` (update, examples, evaluation) with
/// the real SDK; every client completes.
async fn round(
    ts: &TestServer,
    contributions: &[(Vec<f32>, u64, Evaluation)],
) -> Vec<RoundOutcome> {
    let tasks: Vec<_> = contributions
        .iter()
        .cloned()
        .map(|(u, n, e)| {
            let client = ts.client(None);
            tokio::spawn(async move {
                client
                    .contribute(Contribution::new(&u).num_examples(n).evaluation(e))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().expect("every client completes"));
    }
    outcomes
}

fn eval(correct: u64, total: u64, loss_sum: f64) -> Evaluation {
    Evaluation {
        correct,
        total,
        loss_sum,
    }
}

/// The extras of the latest completed round, from the data directory.
fn last_extras(ts: &TestServer) -> ExtrasRecord {
    let stored = tessera_server::store::inspect(ts.data_dir()).unwrap();
    let record = stored
        .rounds
        .iter()
        .rev()
        .find(|r| r.outcome == RoundStatus::Completed)
        .expect("a completed round");
    record
        .extras
        .clone()
        .expect("the round recorded its extras")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_mean_and_federated_accuracy_are_the_plain_ratios_without_dp() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 5,
        tweak: weighted_and_evaluated,
        ..ServerOptions::default()
    })
    .await;
    let before = ts.client(None).latest_model().await.unwrap();
    // The last client's 250 examples count as MAX_EXAMPLES; its 80
    // evaluation examples as EVAL_MAX (and its correct answers at most
    // that many).
    let examples = [10u64, 30, 60, 100, 250];
    let evals = [
        eval(7, 10, 3.0),
        eval(20, 25, 5.5),
        eval(0, 0, 0.0),
        eval(30, 40, 12.0),
        eval(75, 80, 20.0),
    ];
    let contributions: Vec<_> = (0..5)
        .map(|i| (update(DIM, 10 + i as u64), examples[i], evals[i]))
        .collect();
    let outcomes = round(&ts, &contributions).await;
    assert!(outcomes.iter().all(|o| o.clip_norm == 1.0 && !o.clipped));
    let after = ts.client(None).latest_model().await.unwrap();
    assert_eq!(after.version, before.version + 1);

    // Σ w_i u_i / Σ w_i with w_i = min(n_i, N) / N.
    let weights: Vec<f64> = examples
        .iter()
        .map(|&n| n.min(u64::from(MAX_EXAMPLES)) as f64 / f64::from(MAX_EXAMPLES))
        .collect();
    let total_weight: f64 = weights.iter().sum();
    let (b, a) = (before.flatten(), after.flatten());
    let mut plain_gap = 0f64;
    for j in 0..DIM as usize {
        let weighted: f64 = contributions
            .iter()
            .zip(&weights)
            .map(|((u, _, _), w)| w * f64::from(u[j]))
            .sum::<f64>()
            / total_weight;
        let plain: f64 = contributions
            .iter()
            .map(|(u, _, _)| f64::from(u[j]))
            .sum::<f64>()
            / 5.0;
        let step = f64::from(a[j]) - f64::from(b[j]);
        assert!(
            (step - weighted).abs() < 2e-4,
            "coordinate {j}: step {step}, weighted mean {weighted}"
        );
        plain_gap = plain_gap.max((plain - weighted).abs());
    }
    assert!(plain_gap > 1e-2, "the weights must make a difference");

    // Federated accuracy of the base version: Σ correct / Σ total, each
    // capped at EVAL_MAX.
    let extras = last_extras(&ts);
    assert_eq!(extras.noise_std, 0.0);
    assert!((extras.weight_sum.unwrap() - total_weight).abs() < 1e-3);
    let fed = extras.federated.expect("federated evaluation");
    assert_eq!(fed.model_version, before.version);
    let (correct, total, loss) = (7.0 + 20.0 + 30.0 + 50.0, 10.0 + 25.0 + 40.0 + 50.0, 40.5);
    assert!((fed.examples - total).abs() < 1e-2, "{fed:?}");
    assert!(
        (fed.accuracy.unwrap() - correct / total).abs() < 1e-3,
        "{fed:?}"
    );
    // Loss sums are capped at L = 10 per example: 20 <= 500, so kept.
    assert!((fed.loss.unwrap() - loss / total).abs() < 1e-3, "{fed:?}");
    ts.server.shutdown().await.unwrap();
}

const Z: f64 = 0.5;
const CLIENTS: u32 = 8;
/// Majority of the 7 share holders of the complete graph of 8.
const THRESHOLD: u32 = 4;

fn distributed_with_every_extra(config: &mut ServerConfig) {
    weighted_and_evaluated(config);
    config.round.extras.adaptive_clip = true;
    config.dp.mode = DpMode::Distributed;
    config.dp.noise_multiplier = Z;
    config.dp.epsilon_budget = 100.0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_distributed_dp_the_extras_are_noised_and_charged_with_the_joint_bound() {
    let dim = 200u32;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: CLIENTS,
        tweak: distributed_with_every_extra,
        ..ServerOptions::default()
    })
    .await;
    let rounds = 3;
    let mut z_squares = Vec::new();
    let mut differs = false;
    for r in 0..rounds {
        let contributions: Vec<_> = (0..u64::from(CLIENTS))
            .map(|i| {
                // Half the updates have norm 0.29, half 2.9.
                let scale = if i % 2 == 0 { 1.0 } else { 10.0 };
                let u: Vec<f32> = update(dim, 100 * r + i).iter().map(|x| x * scale).collect();
                (u, 20 + 10 * i, eval(i, 2 * i + 1, 0.5 * i as f64))
            })
            .collect();
        let outcomes = round(&ts, &contributions).await;
        assert!(outcomes.iter().all(|o| o.client_noise));
        let clip = outcomes[0].clip_norm;
        let extras = last_extras(&ts);
        assert_eq!(extras.clip_norm, clip);

        // The charge: the discrete Gaussian the 8 clients' noise makes,
        // against the norm bound of the whole vector, Δ = C sqrt(1 + 3 κ²),
        // of dimension dim + 5.
        let layout = ExtrasLayout {
            weighting: Some(MAX_EXAMPLES),
            evaluation: Some(EvalBounds {
                max_examples: EVAL_MAX,
                max_loss: 10.0,
            }),
            clip_indicator: true,
            ..ExtrasLayout::new(clip, 0.25)
        };
        let delta = layout.joint_bound();
        let encoding = DistributedEncoding::new(
            FixedPoint::new(delta, 16, 32).unwrap(),
            NoiseKind::DiscreteGaussian,
            Z,
            THRESHOLD,
            dim as usize + 5,
        )
        .unwrap();
        let alone = DistributedEncoding::new(
            FixedPoint::new(clip, 16, 32).unwrap(),
            NoiseKind::DiscreteGaussian,
            Z,
            THRESHOLD,
            dim as usize,
        )
        .unwrap();
        let stored = tessera_server::store::inspect(ts.data_dir()).unwrap();
        let entry = *stored.ledger.unwrap().entries().last().unwrap();
        match entry.mechanism {
            Mechanism::DiscreteGaussian {
                sigma,
                l2_sensitivity,
            } => {
                assert!(
                    (l2_sensitivity - encoding.norm_bound).abs() < 1e-6 * l2_sensitivity,
                    "charged {l2_sensitivity}, Δ's bound {}",
                    encoding.norm_bound
                );
                assert!(l2_sensitivity > 1.05 * alone.norm_bound);
                assert!((sigma - encoding.dp.actual_sigma(CLIENTS)).abs() < 1e-6 * sigma);
            }
            other => panic!("charged {other:?}"),
        }
        // The documented noise: actual_sigma / 2^f on each coordinate,
        // σ / (2 s) on each decoded sum.
        let coordinate = encoding.dp.actual_sigma(CLIENTS) / 65536.0;
        assert!((extras.noise_std - coordinate).abs() < 1e-9 * coordinate);
        let noise = layout.unit_noise(coordinate);
        let fed = extras.federated.clone().unwrap();
        assert!((fed.examples_noise_std - noise.eval_count).abs() < 1e-9);

        let exact_weight: f64 = contributions
            .iter()
            .map(|(_, n, _)| (*n).min(u64::from(MAX_EXAMPLES)) as f64 / f64::from(MAX_EXAMPLES))
            .sum();
        let exact_total: f64 = contributions.iter().map(|(_, _, e)| e.total as f64).sum();
        let exact_within = outcomes.iter().filter(|o| !o.clipped).count() as f64;
        let residuals = [
            (extras.weight_sum.unwrap() - exact_weight) / noise.weight,
            (fed.examples - exact_total) / noise.eval_count,
            (extras.unclipped_fraction.unwrap() * f64::from(CLIENTS) - exact_within)
                / noise.within_clip,
        ];
        for z in residuals {
            differs |= z.abs() > 1e-3;
            z_squares.push(z * z);
        }
    }
    // Nine standardized residuals: their mean square is a chi-square over 9,
    // within [0.1, 4] except with probability below 1e-4.
    let mean_square = z_squares.iter().sum::<f64>() / z_squares.len() as f64;
    assert!(differs, "the extras must carry noise under DP");
    assert!(
        (0.1..4.0).contains(&mean_square),
        "the extras' noise is not of the documented std: mean z² {mean_square} ({z_squares:?})"
    );
    ts.server.shutdown().await.unwrap();
}

fn adaptive(config: &mut ServerConfig) {
    config.round.extras.adaptive_clip = true;
    config.round.clip_norm = 0.5;
}

/// Rounds where every update's norm (2.9) is above the clip norm: the
/// clip norm grows, by exp(0.2 x 0.5) a round without DP.
async fn clipped_rounds(ts: &TestServer, rounds: u64, seed: u64) -> Vec<f32> {
    let mut norms = Vec::new();
    for r in 0..rounds {
        let tasks: Vec<_> = (0..3u64)
            .map(|i| {
                let client = ts.client(None);
                let u: Vec<f32> = update(DIM, seed + 10 * r + i)
                    .iter()
                    .map(|x| x * 10.0)
                    .collect();
                tokio::spawn(async move { client.participate(&u).await })
            })
            .collect();
        let mut clip = None;
        for task in tasks {
            let outcome = task.await.unwrap().expect("completes");
            assert!(outcome.clipped);
            clip = Some(outcome.clip_norm);
        }
        norms.push(clip.unwrap());
    }
    norms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_clipping_moves_the_clip_norm_and_it_survives_a_restart() {
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 3,
        tweak: adaptive,
        ..ServerOptions::default()
    })
    .await;
    let norms = clipped_rounds(&ts, 3, 0).await;
    let step = (0.1f64).exp() as f32;
    assert!((norms[0] - 0.5).abs() < 1e-6, "{norms:?}");
    for pair in norms.windows(2) {
        assert!((pair[1] / pair[0] - step).abs() < 1e-4, "{norms:?}");
    }
    let next = last_extras(&ts).next_clip_norm.unwrap();
    assert!((next / norms[2] - step).abs() < 1e-4);
    // The same data directory, restarted: the next round runs with the
    // clip norm the last record set (MAC'd), not --clip-norm's 0.5.
    let mut config = ServerConfig {
        dim: Some(DIM),
        round: RoundRules {
            min_clients: 3,
            max_clients: 3,
            join_window: Duration::ZERO,
            graph: "complete".parse().unwrap(),
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    adaptive(&mut config);
    let restarted = ts.restart(config).await;
    let after = clipped_rounds(&restarted, 1, 50).await;
    assert!(
        (after[0] - next).abs() < 1e-6,
        "resumed at {after:?}, expected {next}"
    );
    restarted.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_lies_in_its_extras_moves_the_mean_only_as_far_as_the_bound_allows() {
    // Three honest clients with 50 examples each (weight 0.5) and one that
    // claims an absurd weight: it skips the SDK's clamping and hands the
    // round's standard encoding [0 ; 1e6], which clips the whole vector to
    // Δ. Its weight coordinate is then Δ instead of at most κ C: a weight
    // of (Δ / (κ C) + 1) / 2, not 1e6.
    let ts = TestServer::start(ServerOptions {
        dim: DIM,
        min_clients: 4,
        tweak: |c| {
            c.round.extras.weighting = true;
            c.round.extras.max_examples = MAX_EXAMPLES;
        },
        ..ServerOptions::default()
    })
    .await;
    let before = ts.client(None).latest_model().await.unwrap().flatten();
    let honest: Vec<Vec<f32>> = (0..3).map(|i| update(DIM, 70 + i)).collect();
    let mut tasks = Vec::new();
    for u in honest.clone() {
        let client = ts.client(None);
        tasks.push(tokio::spawn(async move {
            client
                .contribute(Contribution::new(&u).num_examples(50))
                .await
                .map(|_| ())
        }));
    }
    let mut liar = ScriptedClient::new(vec![0.0; DIM as usize], 5);
    let mut vector = vec![0.0f32; DIM as usize];
    vector.push(1e6);
    liar.raw_vector = Some(vector);
    let channel = ts.channel().await;
    let lie = tokio::spawn(async move { liar.run(channel).await });
    for t in tasks {
        t.await.unwrap().expect("honest clients complete");
    }
    let outcome = lie.await.unwrap();
    assert!(outcome.result.is_some(), "{outcome:?}");

    let layout = ExtrasLayout {
        weighting: Some(MAX_EXAMPLES),
        ..ExtrasLayout::new(1.0, 0.25)
    };
    let delta = f64::from(layout.joint_bound());
    let liar_weight = (delta / 0.25 + 1.0) / 2.0;
    assert!(liar_weight > 1.0 && liar_weight < 3.0, "{liar_weight}");
    // 1.5 + 2.56 is more than 4 honest weights can sum to: the server
    // clamps the denominator to the contributor count.
    let weight_sum = last_extras(&ts).weight_sum.unwrap();
    let expected = (1.5 + liar_weight).min(4.0);
    assert!(
        (weight_sum - expected).abs() < 1e-3,
        "Σw {weight_sum}, expected min(1.5 + {liar_weight}, 4)"
    );
    // The published step: the honest weighted updates over that sum; the
    // lie dilutes the step (by at most what Δ allows), it cannot blow it up.
    let after = ts.client(None).latest_model().await.unwrap().flatten();
    for j in 0..DIM as usize {
        let expected: f64 = honest.iter().map(|u| 0.5 * f64::from(u[j])).sum::<f64>() / weight_sum;
        let step = f64::from(after[j]) - f64::from(before[j]);
        assert!((step - expected).abs() < 2e-4, "{j}: {step} vs {expected}");
    }

    // Now a liar that claims a negative weight, within Δ too: its
    // coordinate is -Δ, a weight of (1 - Δ / (κ C)) / 2 = -1.56, which
    // would cancel the honest 1.5 and leave a denominator near 0 (a step
    // blown up without bound). The server floors it at 1: the step is at
    // most the plain sum of the weighted updates.
    let before = after;
    let mut tasks = Vec::new();
    for u in honest.clone() {
        let client = ts.client(None);
        tasks.push(tokio::spawn(async move {
            client
                .contribute(Contribution::new(&u).num_examples(50))
                .await
                .map(|_| ())
        }));
    }
    let mut liar = ScriptedClient::new(vec![0.0; DIM as usize], 6);
    let mut vector = vec![0.0f32; DIM as usize];
    vector.push(-1e6);
    liar.raw_vector = Some(vector);
    let channel = ts.channel().await;
    let lie = tokio::spawn(async move { liar.run(channel).await });
    for t in tasks {
        t.await.unwrap().expect("honest clients complete");
    }
    assert!(lie.await.unwrap().result.is_some());
    assert_eq!(last_extras(&ts).weight_sum, Some(1.0));
    let after = ts.client(None).latest_model().await.unwrap().flatten();
    for j in 0..DIM as usize {
        let expected: f64 = honest.iter().map(|u| 0.5 * f64::from(u[j])).sum::<f64>();
        let step = f64::from(after[j]) - f64::from(before[j]);
        assert!((step - expected).abs() < 2e-4, "{j}: {step} vs {expected}");
    }
    ts.server.shutdown().await.unwrap();
}
