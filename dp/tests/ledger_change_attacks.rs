//! Attacks on the ledger's recorded changes of budget and delta: a
//! recompute never states a smaller epsilon than the accountant gives at
//! the new delta for the stored mechanisms (central and distributed,
//! mixed), and a `changes` list that does not chain, or does not end at
//! the file's terms, is refused on read. (A whole change deleted, with
//! the chain still closing, is not detectable without authenticating the
//! file: out of scope until the ledger is MAC'd.)

use serde_json::{Value, json};
use tessera_dp::accountant::{
    DEFAULT_ORDERS, discrete_gaussian_rho, epsilon, rdp_subsampled_gaussian, rdp_to_epsilon,
    skellam_rdp,
};
use tessera_dp::ledger::{Adversary, Mechanism, PrivacyLedger};

const GAUSSIAN: Mechanism = Mechanism::Gaussian {
    noise_multiplier: 1.3,
    sampling_rate: 0.2,
};
const DISCRETE: Mechanism = Mechanism::DiscreteGaussian {
    sigma: 40.0,
    l2_sensitivity: 12.0,
};
const SKELLAM: Mechanism = Mechanism::Skellam {
    mu: 900.0,
    l1: 60.0,
    l2: 12.0,
};

/// One round's RDP at `order`, straight from the accountant.
fn rdp(m: &Mechanism, order: f64) -> f64 {
    match *m {
        Mechanism::Gaussian {
            noise_multiplier,
            sampling_rate,
        } => rdp_subsampled_gaussian(sampling_rate, noise_multiplier, order),
        Mechanism::DiscreteGaussian {
            sigma,
            l2_sensitivity,
        } => discrete_gaussian_rho(sigma, l2_sensitivity) * order,
        Mechanism::Skellam { mu, l1, l2 } => skellam_rdp(mu, l1, l2, order),
        Mechanism::TreeAggregation {
            sigma,
            l2_sensitivity,
            step,
        } => {
            // ceil(log2(r + 1)) nodes hold a leaf once r steps are out.
            let depth = |r: u64| (r as f64 + 1.0).log2().ceil();
            let new = depth(step) - depth(step - 1);
            discrete_gaussian_rho(sigma, l2_sensitivity) * order * new
        }
    }
}

/// The accountant's epsilon after the first `k` mechanisms at `delta`.
fn accountant(mechanisms: &[Mechanism], k: usize, delta: f64) -> f64 {
    let total: Vec<f64> = DEFAULT_ORDERS
        .iter()
        .map(|&a| mechanisms[..k].iter().map(|m| rdp(m, a)).sum())
        .collect();
    rdp_to_epsilon(DEFAULT_ORDERS, &total, delta).0
}

fn ledger_of(mechanisms: &[Mechanism], delta: f64) -> PrivacyLedger {
    let mut l = PrivacyLedger::new(50.0, delta).unwrap();
    for (r, m) in (1..).zip(mechanisms) {
        let adversary = match m {
            Mechanism::Gaussian { .. } => Adversary::ModelConsumers,
            _ => Adversary::Server,
        };
        l.record(r, *m, adversary).unwrap();
    }
    l
}

#[test]
fn a_recompute_never_states_less_than_the_accountant_at_the_new_delta() {
    let runs: [&[Mechanism]; 4] = [
        &[GAUSSIAN; 5],
        &[DISCRETE, DISCRETE, DISCRETE],
        &[SKELLAM, SKELLAM],
        &[GAUSSIAN, DISCRETE, SKELLAM, GAUSSIAN, DISCRETE, SKELLAM],
    ];
    for mechanisms in runs {
        for (from, to) in [(1e-5, 1e-3), (1e-3, 1e-9), (1e-6, 0.5)] {
            let mut l = ledger_of(mechanisms, from);
            l.recompute_at_delta(to, 1).unwrap().unwrap();
            assert_eq!(l.delta(), to);
            // A ledger that had been at `to` all along says the same.
            let fresh = ledger_of(mechanisms, to);
            assert_eq!(l.entries(), fresh.entries(), "{from} -> {to}");
            assert_eq!(l.rdp(), fresh.rdp());
            for (k, e) in (1..).zip(l.entries()) {
                let want = accountant(mechanisms, k, to);
                assert!(
                    e.epsilon_spent >= want * (1.0 - 1e-12),
                    "{from} -> {to}, entry {k}: {} < {want}",
                    e.epsilon_spent
                );
            }
            // The budget check after the recompute runs at the new delta.
            let next = accountant(
                &[mechanisms, &[GAUSSIAN]].concat(),
                mechanisms.len() + 1,
                to,
            );
            if next > 0.0 {
                let mut tight = l.clone();
                tight.set_budget(next * (1.0 - 1e-9), 2).unwrap();
                assert!(!tight.can_spend(&GAUSSIAN), "{from} -> {to}");
            }
        }
    }
    // Central only, against the accountant's own entry point.
    let mut l = ledger_of(&[GAUSSIAN; 4], 1e-5);
    l.recompute_at_delta(1e-7, 1).unwrap();
    for (r, e) in (1..).zip(l.entries()) {
        let want = epsilon(1.3, 0.2, r, 1e-7).unwrap().epsilon;
        assert!((e.epsilon_spent - want).abs() <= 1e-12 * want, "round {r}");
    }
}

/// A serialised ledger with two rounds, a budget change and a delta
/// recompute, as a JSON value to forge.
fn with_changes() -> Value {
    let mut l = ledger_of(&[GAUSSIAN, DISCRETE], 1e-5);
    l.set_budget(30.0, 10).unwrap();
    l.recompute_at_delta(1e-6, 11).unwrap();
    l.set_budget(20.0, 12).unwrap();
    serde_json::to_value(&l).unwrap()
}

fn read(v: &Value) -> Result<PrivacyLedger, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

/// An edit of the serialised ledger.
type Forgery = Box<dyn Fn(&mut Value)>;

#[test]
fn forged_changes_are_refused() {
    let good = with_changes();
    read(&good).unwrap();
    let forgeries: Vec<(&str, Forgery)> = vec![
        (
            "a change whose old is not the previous new",
            Box::new(|v| v["changes"][2]["old"] = json!(25.0)),
        ),
        (
            "a budget that is not the last change's new",
            Box::new(|v| v["budget_epsilon"] = json!(40.0)),
        ),
        (
            "a delta that is not the last recompute's new",
            Box::new(|v| v["delta"] = json!(1e-4)),
        ),
        (
            "a change after a round not charged",
            Box::new(|v| v["changes"][1]["after_round"] = json!(3)),
        ),
        (
            "changes out of round order",
            Box::new(|v| {
                v["changes"][0]["after_round"] = json!(2);
                v["changes"][1]["after_round"] = json!(1);
            }),
        ),
        (
            "a round charge among the changes",
            Box::new(|v| v["changes"][0]["event"] = json!("round-charge")),
        ),
        (
            "a change of an unknown kind",
            Box::new(|v| v["changes"][0]["event"] = json!("budget-raise")),
        ),
        (
            "an extra field in a change",
            Box::new(|v| v["changes"][0]["approved"] = json!(true)),
        ),
        (
            "a delta recompute to delta 1",
            Box::new(|v| {
                v["changes"][1]["new"] = json!(1.0);
                v["delta"] = json!(1.0);
            }),
        ),
        (
            "a budget change to infinity, spelled as a huge number",
            Box::new(|v| {
                v["changes"][2]["new"] = json!(1e308 * 10.0);
            }),
        ),
    ];
    for (what, forge) in forgeries {
        let mut v = good.clone();
        forge(&mut v);
        assert!(read(&v).is_err(), "{what} was accepted: {v}");
    }
}
