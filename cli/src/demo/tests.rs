//! The demo end to end over loopback gRPC (TLS, tokens, dropouts), small:
//! 5 clients, 3 rounds, the MLP on the digits.

use tessera_dp::accountant::{discrete_gaussian_rho, zcdp_to_epsilon};
use tessera_dp::encoding::FixedPoint;
use tessera_dp::mechanism::{DistributedEncoding, NoiseKind};
use tessera_train::experiment::Experiment;

use super::{DemoConfig, DemoEvent, DpMode, calibrate, run_job};

/// The small job with `dp`, writing into `out`.
fn small(out: &std::path::Path, dp: DpMode) -> DemoConfig {
    DemoConfig {
        training: Experiment {
            clients: 5,
            rounds: 3,
            // One client of five hangs up each round, at a random stage.
            dropout: 0.2,
            ..Experiment::default()
        },
        dp,
        out: out.to_owned(),
        ..DemoConfig::default()
    }
}

/// [`small`] with DP off and `clip_norm` (and `server_momentum`).
fn small_without_dp(
    out: &std::path::Path,
    clip_norm: f32,
    server_momentum: Option<f32>,
) -> DemoConfig {
    let cfg = small(out, DpMode::Off);
    DemoConfig {
        training: Experiment {
            clip_norm,
            server_momentum,
            ..cfg.training
        },
        ..cfg
    }
}

/// The fixed-point error of one FedAvg step: each survivor's update is
/// randomly rounded to a multiple of 2^-16, so their mean is within 2^-16
/// of the exact mean; f32 arithmetic on weights below 10 adds under 1e-6.
const FIXED_POINT_ERROR: f32 = 1.0 / 65536.0 + 1e-6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dp_the_secure_model_is_plain_fedavg_and_it_learns() {
    let dir = tempfile::tempdir().unwrap();
    // Without DP clipping protects nothing, so a loose clip lets three
    // rounds make real progress.
    let cfg = small_without_dp(dir.path(), 10.0, None);
    let mut events = Vec::new();
    let report = run_job(&cfg, |e| events.push(e.clone())).await.unwrap();
    assert_eq!(report.rows.len(), 3);
    assert!(report.stopped_early.is_none());
    for row in &report.rows {
        assert!(row.completed, "{row:?}");
        assert_eq!(row.dropped, 1);
        assert!(row.survivors == 4 || row.survivors == 5, "{row:?}");
        let error = row.max_error_vs_plain.expect("checked with DP off");
        assert!(error <= FIXED_POINT_ERROR, "round {}: {error}", row.round);
        // At least the masked vector: 16 fractional bits and more per value.
        assert!(row.bytes_per_client > 2 * report.dim as u64, "{row:?}");
        assert_eq!(row.epsilon, 0.0);
    }
    // Ten classes: the initial model guesses; three rounds of FedAvg on a
    // non-IID split must reach well above chance (measured: 0.84).
    let last = report.rows.last().unwrap().accuracy;
    assert!(
        report.initial_accuracy < 0.25,
        "{}",
        report.initial_accuracy
    );
    assert!(last > 0.6, "final accuracy {last}");
    // Every client's end of every round was reported, then the round.
    let done = events
        .iter()
        .filter(|e| matches!(e, DemoEvent::ClientDone { .. }))
        .count();
    assert_eq!(done, 15);
    // Published models: the initial one and one per round, on disk.
    let stored = tessera_server::store::inspect(&report.data_dir).unwrap();
    assert_eq!(stored.models.len(), 4);
    assert!(stored.ledger.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_server_momentum_the_secure_model_is_plain_fedavgm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_without_dp(dir.path(), 10.0, Some(0.5));
    let report = run_job(&cfg, |_| {}).await.unwrap();
    for row in &report.rows {
        let error = row.max_error_vs_plain.expect("checked with DP off");
        assert!(error <= FIXED_POINT_ERROR, "round {}: {error}", row.round);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_server_rounds_with_enrolled_identities_are_plain_fedavg() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        threat_model: tessera_aggregation::ThreatModel::MaliciousServer,
        ..small_without_dp(dir.path(), 10.0, None)
    };
    let report = run_job(&cfg, |_| {}).await.unwrap();
    assert_eq!(report.rows.len(), 3);
    for row in &report.rows {
        assert!(row.completed, "{row:?}");
        let error = row.max_error_vs_plain.expect("checked with DP off");
        assert!(error <= FIXED_POINT_ERROR, "round {}: {error}", row.round);
    }
    // The allow-list the server admitted from: one identity per client.
    let enrolled = std::fs::read_to_string(dir.path().join("enrolled.txt")).unwrap();
    let list = tessera_aggregation::identity::parse_allow_list(&enrolled).unwrap();
    assert_eq!(list.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_distributed_dp_the_ledger_charges_what_the_accountant_says() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(dir.path(), DpMode::Distributed);
    let report = run_job(&cfg, |_| {}).await.unwrap();
    let z = calibrate(&cfg).unwrap();
    assert_eq!(report.noise_multiplier, z);
    // The accountant's value for the parameters used: each completed round
    // released a discrete Gaussian of the survivors' noise against the
    // norm bound of the round's encoding.
    let encoding = DistributedEncoding::new(
        FixedPoint::new(cfg.training.clip_norm, 16, 32).unwrap(),
        NoiseKind::DiscreteGaussian,
        z,
        report.min_survivors,
        report.dim,
    )
    .unwrap();
    let mut rho = 0.0;
    for row in &report.rows {
        if row.completed {
            rho +=
                discrete_gaussian_rho(encoding.dp.actual_sigma(row.survivors), encoding.norm_bound);
        }
        let (expected, _) = zcdp_to_epsilon(rho, cfg.delta);
        assert!(
            (row.epsilon - expected).abs() <= 1e-9 * expected,
            "round {}: {} vs {expected}",
            row.round,
            row.epsilon
        );
    }
    let stored = tessera_server::store::inspect(&report.data_dir).unwrap();
    let ledger = stored.ledger.expect("DP keeps a ledger");
    assert_eq!(ledger.spent(), report.rows.last().unwrap().epsilon);
    assert!(ledger.spent() <= cfg.epsilon, "within the budget");
    // The noise multiplier spends the whole budget over the planned rounds
    // at the fewest survivors; more survivors carried more noise.
    assert!(ledger.spent() > 0.5 * cfg.epsilon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_stops_training_before_it_is_passed() {
    // Calibrated for 3 rounds but asked for more: the server refuses the
    // round that would pass epsilon, and the demo says why.
    let dir = tempfile::tempdir().unwrap();
    let planned = small(dir.path(), DpMode::Central);
    let z = calibrate(&planned).unwrap();
    let cfg = DemoConfig {
        training: Experiment {
            rounds: 3,
            ..planned.training.clone()
        },
        epsilon: 0.6 * planned.epsilon,
        ..planned
    };
    // Same z as for 3 rounds at full epsilon, but a smaller budget: fewer
    // rounds fit.
    let cfg = DemoConfig {
        noise_multiplier: Some(z),
        ..cfg
    };
    let report = run_job(&cfg, |_| {}).await.unwrap();
    let why = report.stopped_early.expect("stopped by the budget");
    assert!(why.contains("privacy budget"), "{why}");
    assert!(report.rows.len() < 3);
    let spent = report.rows.last().map_or(0.0, |r| r.epsilon);
    assert!(spent <= cfg.epsilon, "{spent}");
}

#[test]
fn a_bad_output_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let cfg = small(dir.path(), DpMode::Off);
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_job(&cfg, |_| {}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn the_noise_warning_fires_for_a_few_clients_and_not_for_many() {
    // Five clients at epsilon 8 over 20 rounds: the averaged update's
    // noise dwarfs the clip norm.
    let few = DemoConfig {
        training: Experiment {
            clients: 5,
            dropout: 0.0,
            ..Experiment::default()
        },
        ..DemoConfig::default()
    };
    let z = calibrate(&few).unwrap();
    let clip = f64::from(few.training.clip_norm);
    let norm = super::expected_noise_norm(DpMode::Distributed, z, clip, 2410, 5, 5, 1);
    // By hand: sigma = z C; the sum of 5 clients carries sigma^2 * 5 / 4;
    // the mean divides by 5; times sqrt(2410).
    let by_hand = z * clip * (5.0f64 / 4.0).sqrt() / 5.0 * 2410f64.sqrt();
    assert!((norm - by_hand).abs() < 1e-9 * by_hand);
    let warning = super::command::noise_warning(&few, z, 2410, norm).expect("a warning");
    assert!(
        warning.contains(&format!("larger than the clip norm {clip}")),
        "{warning}"
    );
    assert!(warning.contains(&format!("{norm:.3}")));
    // Many clients: well under the clip norm, no warning.
    let many = super::expected_noise_norm(DpMode::Distributed, z, clip, 2410, 1000, 1000, 50);
    assert!(many < clip);
    assert!(super::command::noise_warning(&few, z, 2410, many).is_none());
    // Without DP there is no noise.
    assert_eq!(
        super::expected_noise_norm(DpMode::Off, z, 0.5, 2410, 5, 5, 1),
        0.0
    );
}

#[test]
fn the_sweep_runs_no_dp_first_then_every_arm_at_every_epsilon() {
    let runs = super::sweep::planned_runs(&super::sweep::Arm::ALL);
    assert_eq!(runs[0].0, "no-dp");
    assert_eq!(runs[1].0, "central");
    assert_eq!(
        runs.len(),
        2 + super::sweep::Arm::ALL.len() * super::sweep::EPSILONS.len()
    );
    let mut names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), runs.len(), "every run has its own directory");
    for arm in super::sweep::Arm::ALL {
        for eps in super::sweep::EPSILONS {
            assert!(runs.contains(&(format!("{}-eps{eps}", arm.name()), Some((arm, eps)))));
        }
    }
}

#[test]
fn a_sweep_writes_its_csv_and_chart_and_hands_the_no_dp_line_to_the_private_runs() {
    struct Quiet;
    impl super::sweep::SweepProgress for Quiet {
        fn starting(&mut self, _: usize, _: usize, _: &str) {}
        fn finished(&mut self, _: &super::sweep::SweepPoint) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let base = small(dir.path(), DpMode::Distributed);
    let mut seen = Vec::new();
    let points =
        super::sweep::run_sweep(&base, &super::sweep::Arm::ALL, &mut Quiet, |cfg, no_dp| {
            seen.push((
                cfg.dp,
                cfg.epsilon,
                cfg.out.clone(),
                no_dp.map(<[f32]>::to_vec),
            ));
            // Accuracy rises with epsilon, as a real run's would; no DP best.
            let accuracy = if cfg.dp == DpMode::Off {
                0.9
            } else {
                (cfg.epsilon / 20.0) as f32
            };
            Ok(super::sweep::RunResult {
                accuracy,
                epsilon_spent: if cfg.dp == DpMode::Off {
                    0.0
                } else {
                    cfg.epsilon
                },
                per_round: vec![0.5, 0.7, accuracy],
            })
        })
        .unwrap();
    // No DP first, with no line to draw; every private run gets its curve.
    assert_eq!(seen[0].0, DpMode::Off);
    assert!(seen[0].3.is_none());
    for (dp, _, out, no_dp) in &seen[1..] {
        assert!(matches!(dp, DpMode::Distributed | DpMode::Ftrl), "{dp:?}");
        assert_eq!(no_dp.as_deref(), Some(&[0.5, 0.7, 0.9][..]));
        assert!(out.starts_with(dir.path().join("runs")));
    }
    let epsilons: Vec<f64> = seen[1..].iter().map(|s| s.1).collect();
    let expected: Vec<f64> = super::sweep::Arm::ALL
        .iter()
        .flat_map(|_| super::sweep::EPSILONS)
        .collect();
    assert_eq!(epsilons, expected);
    // DP-FTRL's epsilon holds against the model's consumers only.
    let ftrl = points.iter().find(|p| p.arm == "dp-ftrl").unwrap();
    assert_eq!(ftrl.adversary, "model-consumers");
    // The central baseline really ran and wrote its own files.
    let central = points.iter().find(|p| p.arm == "central").unwrap();
    assert!(central.accuracy > 0.0 && central.rounds == 3);
    assert!(dir.path().join("runs/central/rounds.csv").is_file());
    assert!(dir.path().join("runs/central/rounds.svg").is_file());
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + points.len());
    assert!(csv.contains("dp-fedavg,8,8.0000,server,0.4000,3,"), "{csv}");
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
    assert!(svg.contains("no DP, federated 0.900"));
}

#[test]
fn dp_ftrl_deals_each_client_into_one_cohort_per_epoch() {
    let cfg = DemoConfig {
        training: Experiment {
            clients: 12,
            rounds: 6,
            dropout: 0.25,
            ..Experiment::default()
        },
        dp: DpMode::Ftrl,
        ftrl_epoch_rounds: 3,
        ..DemoConfig::default()
    };
    assert_eq!(cfg.cohort_size(), 4);
    for epoch in 0..2u64 {
        let mut seen: Vec<usize> = (1..=3)
            .flat_map(|slot| cfg.cohort_of(epoch * 3 + slot))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..12).collect::<Vec<_>>(), "epoch {epoch}");
    }
    assert_ne!(cfg.cohort_of(1), cfg.cohort_of(4), "a new deal each epoch");
    // Dropouts come from the round's cohort only: one of its four.
    let plan = cfg.dropout_plan(2);
    let cohort = cfg.cohort_of(2);
    assert_eq!(plan.iter().filter(|d| d.is_some()).count(), 1);
    assert!(
        plan.iter()
            .enumerate()
            .all(|(c, d)| d.is_none() || cohort.contains(&c))
    );
    // Too few clients per cohort is refused, naming the flags.
    let tiny = DemoConfig {
        training: Experiment {
            clients: 8,
            ..cfg.training.clone()
        },
        ..cfg.clone()
    };
    let err = tiny.check().unwrap_err().to_string();
    assert!(err.contains("--ftrl-epoch-rounds 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_ftrl_runs_over_the_real_service_charging_tree_steps_to_model_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        training: Experiment {
            clients: 9,
            rounds: 4,
            dropout: 0.0,
            ..Experiment::default()
        },
        dp: DpMode::Ftrl,
        ftrl_epoch_rounds: 3,
        out: dir.path().to_owned(),
        ..DemoConfig::default()
    };
    let report = run_job(&cfg, |_| {}).await.unwrap();
    assert_eq!(report.rows.len(), 4);
    assert!(report.rows.iter().all(|r| r.completed && r.survivors == 3));
    let stored = tessera_server::store::inspect(&report.data_dir).unwrap();
    let ledger = stored.ledger.expect("DP keeps a ledger");
    let steps: Vec<u64> = ledger
        .entries()
        .iter()
        .map(|e| match e.mechanism {
            tessera_dp::ledger::Mechanism::TreeAggregation { step, .. } => step,
            other => panic!("not a tree step: {other:?}"),
        })
        .collect();
    // Two trees of three rounds: the fourth round starts the second.
    assert_eq!(steps, [1, 2, 3, 1]);
    assert!(
        ledger
            .entries()
            .iter()
            .all(|e| e.adversary == tessera_dp::ledger::Adversary::ModelConsumers)
    );
    let last = report.rows.last().unwrap();
    assert!(
        last.epsilon > 0.0 && last.epsilon <= cfg.epsilon,
        "{last:?}"
    );
}

/// The most a weighted round's step may differ from the plain weighted
/// FedAvg, with weights summing to `d >= 1` (the server's floor): each of
/// the `n` clients rounds `w clip(u)` to a multiple of 2^-16 (numerator
/// error at most `n 2^-16`), and its weight's extra coordinate
/// `(2w - 1) κ C` too, which moves the denominator by at most
/// `n 2^-16 / (2 κ C)` and the mean by that times `|mean| / d <= C / d`:
/// together at most `(1 + 1 / (2κ)) n 2^-16 / d`, plus f32 rounding.
fn weighted_fixed_point_error(clients: usize) -> f32 {
    let kappa = tessera_server::config::ExtrasSettings::default().scale;
    (1.0 + 1.0 / (2.0 * kappa)) * clients as f32 / 65536.0 + 1e-6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_weighting_the_secure_model_is_the_plain_weighted_fedavg() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        weighting: true,
        ..small_without_dp(dir.path(), 10.0, None)
    };
    // Dirichlet(0.5) over five clients: their example counts, and so their
    // weights, differ (else the weighted mean would be the plain one and
    // this would test nothing).
    let (dataset, _) = cfg.training.prepare().unwrap();
    let mut counts: Vec<usize> = cfg
        .training
        .client_shares(&dataset)
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    counts.sort_unstable();
    assert!(counts[0] * 4 < counts[2] * 3, "{counts:?}");
    let report = run_job(&cfg, |_| {}).await.unwrap();
    for row in &report.rows {
        assert!(row.completed, "{row:?}");
        let error = row.max_error_vs_plain.expect("checked with DP off");
        assert!(
            error <= weighted_fixed_point_error(5),
            "round {}: {error}",
            row.round
        );
    }
    let stored = tessera_server::store::inspect(&report.data_dir).unwrap();
    let weight_sum = stored.rounds[0]
        .extras
        .as_ref()
        .and_then(|e| e.weight_sum)
        .expect("a weighted round records its weight sum");
    assert!(weight_sum > 1.0 && weight_sum < 5.0, "{weight_sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_evaluation_reports_the_base_models_accuracy_on_the_clients_own_examples() {
    let dir = tempfile::tempdir().unwrap();
    let base = small_without_dp(dir.path(), 10.0, None);
    let cfg = DemoConfig {
        federated_eval: true,
        training: Experiment {
            dropout: 0.0,
            ..base.training.clone()
        },
        ..base
    };
    let report = run_job(&cfg, |_| {}).await.unwrap();
    // Round 1's base model is the initial one: every client's counts on
    // its own held-out fifth, summed in the clear, are what the secure sum
    // must give (each count is rounded within 2^-16 of its encoding's
    // scale, far below one example).
    let (dataset, arch) = cfg.training.prepare().unwrap();
    let initial = super::federation::initial_model(&arch, cfg.training.seed).unwrap();
    // Each client evaluates at most the median client's count.
    let eval_sets: Vec<_> = cfg
        .training
        .client_shares(&dataset)
        .unwrap()
        .iter()
        .map(|share| {
            let (_, eval) = tessera_train::local::held_out(&dataset.train.select(share), 0.2);
            std::sync::Arc::new(eval)
        })
        .collect();
    let limit = super::rounds::typical_count(&eval_sets);
    let (mut correct, mut total) = (0u64, 0u64);
    for eval in &eval_sets {
        let eval = super::rounds::at_most(eval, limit);
        let counts = tessera_train::local::evaluation_counts(&arch, &initial.params, &eval);
        correct += counts.correct;
        total += counts.total;
    }
    let expected = correct as f64 / total as f64;
    let first = report.rows[0].federated_accuracy.expect("evaluated");
    assert!((first - expected).abs() < 1e-3, "{first} vs {expected}");
    // Later rounds evaluate the trained models: well above the initial
    // guess, like the test split's accuracy.
    let last = report.rows.last().unwrap();
    assert!(
        last.federated_accuracy.unwrap() > expected + 0.2,
        "{:?} from {expected}",
        last.federated_accuracy
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedadam_runs_over_the_service_and_its_rounds_record_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DemoConfig {
        strategy: Some(tessera_server::config::Strategy::FedAdam),
        training: Experiment {
            server_lr: 0.01,
            ..small_without_dp(dir.path(), 10.0, None).training
        },
        ..small_without_dp(dir.path(), 10.0, None)
    };
    let report = run_job(&cfg, |_| {}).await.unwrap();
    assert_eq!(report.rows.len(), 3);
    for row in &report.rows {
        assert!(row.completed, "{row:?}");
        // Adam's step divides by moments the demo does not track.
        assert_eq!(row.max_error_vs_plain, None);
    }
    let last = report.rows.last().unwrap().accuracy;
    assert!(last > report.initial_accuracy + 0.2, "{last}");
    let stored = tessera_server::store::inspect(&report.data_dir).unwrap();
    for round in &stored.rounds {
        let strategy = round.strategy.as_ref().expect("recorded");
        assert_eq!(strategy.strategy, tessera_server::config::Strategy::FedAdam);
        assert_eq!(strategy.server_lr, 0.01);
        assert_eq!(strategy.server_momentum, None);
    }
}

#[test]
fn dp_ftrl_refuses_another_server_update_and_extras_it_cannot_carry() {
    use tessera_server::config::Strategy;
    let ftrl = DemoConfig {
        dp: DpMode::Ftrl,
        training: Experiment {
            clients: 40,
            ..Experiment::default()
        },
        ..DemoConfig::default()
    };
    assert!(ftrl.check().is_ok());
    let refused = [
        DemoConfig {
            strategy: Some(Strategy::FedAdam),
            ..ftrl.clone()
        },
        DemoConfig {
            weighting: true,
            ..ftrl.clone()
        },
        DemoConfig {
            federated_eval: true,
            ..ftrl.clone()
        },
    ];
    for cfg in refused {
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains("--dp ftrl"), "{err}");
    }
    let no_momentum = DemoConfig {
        strategy: Some(Strategy::FedAvgM),
        training: Experiment {
            server_momentum: None,
            ..Experiment::default()
        },
        ..DemoConfig::default()
    };
    let err = no_momentum.check().unwrap_err().to_string();
    assert!(err.contains("--server-momentum"), "{err}");
}
