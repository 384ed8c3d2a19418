//! Red team, issue 15: attacks the merged code resists, kept as
//! regression tests. (Attacks that succeed are in `redteam_is15_open.rs`;
//! hostile-server attacks on the SDK's extras checks are in
//! `client-sdk/tests/sdk.rs`, `redteam_*`.)

use tessera_dp::accountant::tree_epsilon_after_rounds;
use tessera_dp::extras::{ClientExtras, EvalBounds, ExtrasLayout, next_clip_norm};
use tessera_dp::ledger::{Adversary, Mechanism, PrivacyLedger};

fn tree(z: f64, step: u64) -> Mechanism {
    Mechanism::TreeAggregation {
        sigma: z * 1000.0,
        l2_sensitivity: 1000.0,
        step,
    }
}

/// A server (or noise) reporting any indicator fraction at all, NaN and
/// infinities included, moves adaptive clipping's C by at most
/// `exp(η max(γ, 1 − γ))` in one round: the clip-norm sequence is
/// post-processing of the noised bit sum and cannot jump.
#[test]
fn redteam_adaptive_clipping_moves_c_by_a_bounded_factor_whatever_the_bits_say() {
    for gamma in [0.1, 0.5, 0.9] {
        for eta in [0.2, 1.0] {
            let (low, high) = ((-eta * (1.0f64 - gamma)).exp(), (eta * gamma).exp());
            for fraction in [
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                -1e300,
                1e300,
                -3.0,
                4.0,
                0.0,
                1.0,
                0.5,
            ] {
                let next = f64::from(next_clip_norm(2.0, fraction, gamma, eta)) / 2.0;
                assert!(
                    next.is_finite() && next >= low * (1.0 - 1e-6) && next <= high * (1.0 + 1e-6),
                    "γ {gamma} η {eta} fraction {fraction}: factor {next}"
                );
            }
        }
    }
}

/// A client that lies about every extra (a billion examples, more correct
/// than total, infinite loss) and has a huge update still sends a vector
/// within Δ, the sensitivity the noise and the ledger use, for any public
/// layout a server may choose (the largest scale the SDK accepts, every
/// block on, a tiny clip norm).
#[test]
fn redteam_a_lying_client_stays_within_the_charged_sensitivity_for_any_layout() {
    for (clip, scale) in [(1e-3f32, 16.0f32), (1.0, 0.25), (50.0, 1.0)] {
        let layout = ExtrasLayout {
            weighting: Some(7),
            evaluation: Some(EvalBounds {
                max_examples: 3,
                max_loss: 0.5,
            }),
            clip_indicator: true,
            ..ExtrasLayout::new(clip, scale)
        };
        let extras = ClientExtras {
            num_examples: Some(1_000_000_000),
            evaluation: Some(tessera_dp::extras::Evaluation {
                correct: u64::MAX,
                total: 1,
                loss_sum: f64::INFINITY,
            }),
        };
        let update = vec![1e6f32; 100];
        let v = layout.client_vector(&update, &extras).unwrap();
        let norm = v
            .values
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        assert!(
            norm <= f64::from(layout.joint_bound()),
            "C {clip} κ {scale}: norm {norm} > Δ {}",
            layout.joint_bound()
        );
    }
}

/// The guard that keeps a tree node from being released twice: the ledger
/// refuses (and `can_spend` answers false for) a tree step that repeats or
/// skips its predecessor, and a change of noise inside a tree; a new tree
/// (step 1) is always a fresh start. And the tree's noise is the server's:
/// no tree entry may claim to hold against the server.
#[test]
fn redteam_the_ledger_refuses_a_tree_step_released_twice_or_claimed_against_the_server() {
    let mut ledger = PrivacyLedger::new(1e6, 1e-5).unwrap();
    ledger
        .record(1, tree(1.0, 1), Adversary::ModelConsumers)
        .unwrap();
    ledger
        .record(2, tree(1.0, 2), Adversary::ModelConsumers)
        .unwrap();
    // Step 2 again (a rolled-back tree state releasing its nodes again).
    assert!(!ledger.can_spend(&tree(1.0, 2)));
    assert!(
        ledger
            .record(3, tree(1.0, 2), Adversary::ModelConsumers)
            .is_err()
    );
    // A skipped step, and less noise in the same tree.
    assert!(!ledger.can_spend(&tree(1.0, 4)));
    assert!(!ledger.can_spend(&tree(0.5, 3)));
    // The server saw the sums: a tree entry cannot claim `server`.
    assert!(ledger.record(3, tree(1.0, 3), Adversary::Server).is_err());
    // A new tree starts at step 1.
    assert!(ledger.can_spend(&tree(1.0, 1)));
    ledger
        .record(3, tree(1.0, 3), Adversary::ModelConsumers)
        .unwrap();
}

/// The ledger's per-step tree charges, summed, equal the reference
/// accountant after every number of rounds, partial epochs included: a
/// server that stops mid-tree is charged exactly what the tree released,
/// never less.
#[test]
fn redteam_ledger_tree_charges_match_the_accountant_after_every_round() {
    let (z, s, delta) = (1.3, 5u64, 1e-5);
    let mut ledger = PrivacyLedger::new(1e6, delta).unwrap();
    for round in 1..=3 * s + 2 {
        let step = (round - 1) % s + 1;
        ledger
            .record(round, tree(z, step), Adversary::ModelConsumers)
            .unwrap();
        let want = tree_epsilon_after_rounds(z, s, round, delta)
            .unwrap()
            .epsilon;
        let got = ledger.spent();
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "after {round} rounds: ledger {got}, accountant {want}"
        );
    }
}
