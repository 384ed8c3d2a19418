//! The server optimizer: turns a round's mean update `Δ` into the next
//! global model, by the strategy the operator chose
//! ([`crate::config::Strategy`]).
//!
//! FedAvg and FedAvgM are [`FedAvg`]'s, unchanged. The adaptive optimizers
//! are Algorithm 2 of Reddi et al., "Adaptive Federated Optimization"
//! (ICLR 2021), per coordinate:
//!
//! ```text
//! m = β1 m + (1 − β1) Δ
//! v = v + Δ²                              FedAdagrad
//! v = v − (1 − β2) Δ² sign(v − Δ²)        FedYogi
//! v = β2 v + (1 − β2) Δ²                  FedAdam
//! x = x + η m / (√v + τ)
//! ```
//!
//! `m` starts at 0 and `v` at τ² for all three: Algorithm 2 asks for
//! `v₋₁ ≥ τ²` and the authors' code starts Adam's and Yogi's at τ²
//! exactly; Adagrad takes the same start, so that τ means the same for the
//! three (the step of the first round is `η (1 − β1) Δ / (√(τ² + c Δ²) +
//! τ)` with `c` the rule's weight). There is no bias correction, as in the
//! paper. The moments are computed in f64 from the stored f32 values and
//! kept as f32, so the state in memory is exactly the state the store
//! writes, and a restarted server continues bit for bit.

use crate::config::{AggregationSettings, Strategy};
use crate::fedavg::FedAvg;
use crate::model::{Model, ModelError};
use crate::store::OptimizerState;

/// The server optimizer of a running server, with its state.
#[derive(Clone, Debug)]
pub(crate) enum ServerOptimizer {
    /// FedAvg or FedAvgM.
    FedAvg(FedAvg),
    /// FedAdam, FedYogi or FedAdagrad.
    Adaptive(Adaptive),
}

impl From<FedAvg> for ServerOptimizer {
    fn from(f: FedAvg) -> Self {
        ServerOptimizer::FedAvg(f)
    }
}

impl ServerOptimizer {
    /// The optimizer `settings` choose, with fresh state (the settings are
    /// validated; this checks the numbers again, as [`FedAvg::new`] does).
    pub(crate) fn new(settings: &AggregationSettings) -> Result<Self, ModelError> {
        let strategy = settings.effective_strategy();
        if !strategy.is_adaptive() {
            return FedAvg::new(settings.server_lr, settings.server_momentum).map(Self::FedAvg);
        }
        Adaptive::new(
            strategy,
            settings.server_lr,
            settings.beta1(),
            settings.beta2(),
            settings.tau(),
        )
        .map(Self::Adaptive)
    }

    /// Applies a round's mean update to `model`; on error the model and the
    /// state are left as they were.
    pub(crate) fn apply(&mut self, model: &mut Model, mean: &[f32]) -> Result<(), ModelError> {
        match self {
            ServerOptimizer::FedAvg(f) => f.apply(model, mean),
            ServerOptimizer::Adaptive(a) => a.apply(model, mean),
        }
    }

    /// FedAvgM's velocity, for the store.
    pub(crate) fn velocity(&self) -> Option<&[f32]> {
        match self {
            ServerOptimizer::FedAvg(f) => f.velocity(),
            ServerOptimizer::Adaptive(_) => None,
        }
    }

    /// The adaptive optimizer's moments, for the store.
    pub(crate) fn state(&self) -> Option<&OptimizerState> {
        match self {
            ServerOptimizer::FedAvg(_) => None,
            ServerOptimizer::Adaptive(a) => a.state.as_ref(),
        }
    }

    /// Takes up the state the store persisted with the latest version:
    /// the velocity for FedAvgM, the moments for the adaptive optimizer
    /// that wrote them. Moments another optimizer wrote (the operator
    /// changed the strategy) are dropped with a warning: Adagrad's `v` is a
    /// sum, Adam's an average, and neither means anything to FedAvgM.
    pub(crate) fn restore(&mut self, velocity: Option<Vec<f32>>, state: Option<OptimizerState>) {
        match self {
            ServerOptimizer::FedAvg(f) => {
                if let (Some(_), Some(v)) = (f.momentum, velocity) {
                    f.set_velocity(v);
                }
            }
            ServerOptimizer::Adaptive(a) => match state {
                Some(s) if s.strategy == a.strategy => a.state = Some(s),
                Some(s) => tracing::warn!(
                    stored = s.strategy.name(),
                    strategy = a.strategy.name(),
                    "the stored optimizer state is {}'s, the server now runs {}: starting {} from fresh moments",
                    s.strategy,
                    a.strategy,
                    a.strategy
                ),
                None => {}
            },
        }
    }
}

/// FedAdam, FedYogi or FedAdagrad with their hyper-parameters and moments.
///
/// `Debug` shows the hyper-parameters and the state's length only.
#[derive(Clone)]
pub(crate) struct Adaptive {
    strategy: Strategy,
    lr: f32,
    beta1: f32,
    beta2: f32,
    tau: f32,
    state: Option<OptimizerState>,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("strategy", &self.strategy)
            .field("lr", &self.lr)
            .field("beta1", &self.beta1)
            .field("beta2", &self.beta2)
            .field("tau", &self.tau)
            .field("state_len", &self.state.as_ref().map(|s| s.m.len()))
            .finish()
    }
}

/// One coordinate's step: the new `(m, v, x)`, in f64.
type Step = (f64, f64, f64);

impl Adaptive {
    /// Checks the hyper-parameters: `lr` and `tau` finite and positive,
    /// `beta1` and `beta2` in `[0, 1)`.
    pub(crate) fn new(
        strategy: Strategy,
        lr: f32,
        beta1: f32,
        beta2: f32,
        tau: f32,
    ) -> Result<Adaptive, ModelError> {
        let positive = |x: f32| x.is_finite() && x > 0.0;
        let checks = [
            ("server_lr", lr, positive(lr)),
            ("server_tau", tau, positive(tau)),
            ("server_beta1", beta1, (0.0..1.0).contains(&beta1)),
            ("server_beta2", beta2, (0.0..1.0).contains(&beta2)),
        ];
        if let Some(&(name, value, _)) = checks.iter().find(|c| !c.2) {
            return Err(ModelError::Hyper { name, value });
        }
        assert!(strategy.is_adaptive(), "{strategy} is not adaptive");
        Ok(Adaptive {
            strategy,
            lr,
            beta1,
            beta2,
            tau,
            state: None,
        })
    }

    /// One coordinate: moments `m`, `v`, weight `x`, update `d`.
    fn step(&self, m: f32, v: f32, x: f32, d: f32) -> Step {
        let (b1, b2, tau) = (
            f64::from(self.beta1),
            f64::from(self.beta2),
            f64::from(self.tau),
        );
        let (m, v, d) = (f64::from(m), f64::from(v), f64::from(d));
        let d2 = d * d;
        let m = b1 * m + (1.0 - b1) * d;
        let v = match self.strategy {
            Strategy::FedAdagrad => v + d2,
            // sign(0) = 0: a v equal to Δ² stays.
            Strategy::FedYogi => v - (1.0 - b2) * d2 * sign(v - d2),
            _ => b2 * v + (1.0 - b2) * d2,
        };
        let x = f64::from(x) + f64::from(self.lr) * m / (v.sqrt() + tau);
        (m, v, x)
    }

    /// Applies a round's mean update. A length mismatch, a non-finite
    /// update, or a step that would overflow a weight or a moment is an
    /// error and leaves the model and the moments untouched: every new
    /// value is computed and checked first, and written only then. Moments
    /// of another dimension (the model changed) are dropped with a warning.
    pub(crate) fn apply(&mut self, model: &mut Model, mean: &[f32]) -> Result<(), ModelError> {
        let dim = model.dim();
        if mean.len() != dim {
            return Err(ModelError::Length {
                expected: dim,
                got: mean.len(),
            });
        }
        if let Some(i) = mean.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(i));
        }
        if self.state.as_ref().is_some_and(|s| s.m.len() != dim) {
            tracing::warn!(
                dim,
                "the optimizer state has another dimension; restarting it at m = 0, v = tau^2"
            );
            self.state = None;
        }
        let tau2 = self.tau * self.tau;
        let (mut m, mut v, mut x) = (
            Vec::with_capacity(dim),
            Vec::with_capacity(dim),
            Vec::with_capacity(dim),
        );
        for (i, &d) in mean.iter().enumerate() {
            let (m0, v0) = match &self.state {
                Some(s) => (s.m[i], s.v[i]),
                None => (0.0, tau2),
            };
            let (mi, vi, xi) = self.step(m0, v0, model.params[i], d);
            let (mi, vi, xi) = (mi as f32, vi as f32, xi as f32);
            if !(mi.is_finite() && vi.is_finite() && xi.is_finite()) {
                return Err(ModelError::Overflow(i));
            }
            m.push(mi);
            v.push(vi);
            x.push(xi);
        }
        model.params = x;
        self.state = Some(OptimizerState {
            strategy: self.strategy,
            m,
            v,
        });
        Ok(())
    }
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings of `strategy` with η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-3.
    fn settings(strategy: Strategy) -> AggregationSettings {
        AggregationSettings {
            server_lr: 0.1,
            strategy: Some(strategy),
            ..AggregationSettings::default()
        }
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(g) - w).abs();
            assert!(err <= 2e-6 * w.abs().max(1e-3), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// Two rounds from x = (1, −0.5), Δ1 = (0.5, −0.25), Δ2 = (−0.25, 1),
    /// η = 0.1, β1 = 0.9, β2 = 0.99, τ = 1e-3, m₀ = 0, v₀ = τ² = 1e-6.
    /// Each expected value was worked out by hand (and checked in Python's
    /// f64), step by step:
    ///
    /// m1 = 0.1 Δ1 = (0.05, −0.025) for all three;
    /// m2 = 0.9 m1 + 0.1 Δ2 = (0.02, 0.0775).
    fn two_rounds(strategy: Strategy, v1: [f64; 2], x1: [f64; 2], v2: [f64; 2], x2: [f64; 2]) {
        let mut model = Model::new(Model::zeros_flat(2).tensors, vec![1.0, -0.5]).unwrap();
        let mut opt = ServerOptimizer::new(&settings(strategy)).unwrap();
        opt.apply(&mut model, &[0.5, -0.25]).unwrap();
        let s = opt.state().unwrap();
        close(&s.m, &[0.05, -0.025], "m1");
        close(&s.v, &v1, "v1");
        close(&model.params, &x1, "x1");
        opt.apply(&mut model, &[-0.25, 1.0]).unwrap();
        let s = opt.state().unwrap();
        assert_eq!(s.strategy, strategy);
        close(&s.m, &[0.02, 0.0775], "m2");
        close(&s.v, &v2, "v2");
        close(&model.params, &x2, "x2");
    }

    #[test]
    fn fedadam_one_and_two_steps_match_hand_computed_values() {
        // v1 = 0.99e-6 + 0.01 Δ1² = (0.00250099, 0.00062599)
        // x1 = x + 0.1 m1 / (√v1 + 1e-3)
        //    = (1 + 0.005/0.0510099, −0.5 − 0.0025/0.0260198)
        //    = (1.0980201901, −0.5960807060)
        // v2 = 0.99 v1 + 0.01 Δ2² = (0.0031009801, 0.0106197301)
        // x2 = x1 + 0.1 m2 / (√v2 + 1e-3) = (1.1333019937, −0.5215987697)
        two_rounds(
            Strategy::FedAdam,
            [0.00250099, 0.00062599],
            [1.0980201901209485, -0.5960807059529103],
            [0.0031009801, 0.0106197301],
            [1.1333019936980475, -0.5215987696500032],
        );
    }

    #[test]
    fn fedyogi_one_and_two_steps_match_hand_computed_values() {
        // Round 1: v0 = 1e-6 < Δ1², sign = −1: v1 = v0 + 0.01 Δ1²
        //    = (0.002501, 0.000626); x1 = (1.0980199980, −0.5960799680)
        // Round 2: coordinate 0: v1 = 0.002501 < Δ² = 0.0625, v2 = v1 +
        //    0.000625 = 0.003126; coordinate 1: v1 < 1, v2 = v1 + 0.01 =
        //    0.010626; x2 = (1.1331628095, −0.5216197979)
        two_rounds(
            Strategy::FedYogi,
            [0.002501, 0.000626],
            [1.0980199980004, -0.5960799680255744],
            [0.003126, 0.010626],
            [1.1331628095165456, -0.521619797945499],
        );
    }

    #[test]
    fn fedadagrad_one_and_two_steps_match_hand_computed_values() {
        // v1 = 1e-6 + Δ1² = (0.250001, 0.062501)
        // x1 = (1 + 0.005/(0.5000010 + 0.001), −0.5 − 0.0025/(0.2500020 + 0.001))
        //    = (1.0099800200, −0.5099600800)
        // v2 = v1 + Δ2² = (0.312501, 1.062501)
        // x2 = (1.0135513345, −0.5024487662)
        two_rounds(
            Strategy::FedAdagrad,
            [0.250001, 0.062501],
            [1.00998001999998, -0.50996007999968],
            [0.312501, 1.062501],
            [1.0135513344883091, -0.5024487662030348],
        );
    }

    /// Yogi's sign: where v is above Δ², v shrinks by (1 − β2) Δ².
    #[test]
    fn fedyogi_shrinks_v_where_it_exceeds_the_squared_update() {
        let mut model = Model::zeros_flat(1);
        let mut opt = ServerOptimizer::new(&settings(Strategy::FedYogi)).unwrap();
        // v0 = 1e-6, Δ = 1: v1 = 1e-6 + 0.01 = 0.010001.
        opt.apply(&mut model, &[1.0]).unwrap();
        // Δ = 0.01, Δ² = 1e-4 < v1: v2 = 0.010001 − 0.01 · 1e-4 = 0.01
        // (Adam's would be 0.99 · 0.010001 + 1e-6 = 0.00990199).
        opt.apply(&mut model, &[0.01]).unwrap();
        close(&opt.state().unwrap().v, &[0.01], "v2");
    }

    #[test]
    fn a_restored_state_continues_bit_for_bit() {
        let mut model = Model::zeros_flat(2);
        let mut a = ServerOptimizer::new(&settings(Strategy::FedAdam)).unwrap();
        a.apply(&mut model, &[0.5, -0.25]).unwrap();
        let mut b = ServerOptimizer::new(&settings(Strategy::FedAdam)).unwrap();
        b.restore(None, a.state().cloned());
        let mut m2 = model.clone();
        a.apply(&mut model, &[-0.25, 1.0]).unwrap();
        b.apply(&mut m2, &[-0.25, 1.0]).unwrap();
        assert_eq!(model, m2);
        assert_eq!(a.state(), b.state());
        // Another optimizer's moments are not taken up.
        let mut yogi = ServerOptimizer::new(&settings(Strategy::FedYogi)).unwrap();
        yogi.restore(None, a.state().cloned());
        assert_eq!(yogi.state(), None);
    }

    #[test]
    fn bad_updates_leave_model_and_moments_alone() {
        let mut model = Model::zeros_flat(2);
        let mut opt = ServerOptimizer::new(&AggregationSettings {
            server_lr: 1e38,
            server_tau: Some(1e-30),
            ..settings(Strategy::FedAdam)
        })
        .unwrap();
        opt.apply(&mut model, &[1.0, 1.0]).unwrap();
        let state = opt.state().cloned();
        assert_eq!(
            opt.apply(&mut model, &[1.0]),
            Err(ModelError::Length {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            opt.apply(&mut model, &[f32::NAN, 1.0]),
            Err(ModelError::NonFinite(0))
        );
        // Both weights are 1e38 now. The next step adds about 1.35e38 to
        // each: the first stays finite (and is computed first), the second,
        // set to f32::MAX, overflows.
        model.params[1] = f32::MAX;
        let before = model.clone();
        assert_eq!(
            opt.apply(&mut model, &[1.0, 1.0]),
            Err(ModelError::Overflow(1))
        );
        assert_eq!(model, before);
        assert_eq!(opt.state().cloned(), state);
    }

    #[test]
    fn moments_of_another_dimension_are_dropped() {
        let mut opt = ServerOptimizer::new(&settings(Strategy::FedAdagrad)).unwrap();
        opt.restore(
            None,
            Some(OptimizerState {
                strategy: Strategy::FedAdagrad,
                m: vec![1.0; 3],
                v: vec![1.0; 3],
            }),
        );
        let mut model = Model::zeros_flat(1);
        opt.apply(&mut model, &[0.5]).unwrap();
        // As from fresh moments: m = 0.05, v = 1e-6 + 0.25.
        close(&opt.state().unwrap().m, &[0.05], "m");
        close(&opt.state().unwrap().v, &[0.250001], "v");
    }

    #[test]
    fn fedavg_and_fedavgm_are_fedavgs_step() {
        let plain = AggregationSettings::default();
        let mut opt = ServerOptimizer::new(&plain).unwrap();
        let mut model = Model::zeros_flat(2);
        opt.apply(&mut model, &[2.0, -2.0]).unwrap();
        assert_eq!(model.params, [2.0, -2.0]);
        assert!(opt.state().is_none() && opt.velocity().is_none());
        let momentum = AggregationSettings {
            server_lr: 0.5,
            server_momentum: Some(0.5),
            ..plain
        };
        let mut opt = ServerOptimizer::new(&momentum).unwrap();
        opt.restore(Some(vec![3.25, 1.5]), None);
        let mut model = Model::new(Model::zeros_flat(2).tensors, vec![1.375, 2.25]).unwrap();
        opt.apply(&mut model, &[0.0, 0.0]).unwrap();
        // FedAvg's own test: v = 0.5 (3.25, 1.5), w += 0.5 v.
        assert_eq!(model.params, [1.375 + 0.8125, 2.25 + 0.375]);
    }

    #[test]
    fn hyperparameters_are_checked() {
        let bad = [
            ("server_tau", Strategy::FedAdam, 0.1, 0.9, 0.99, 0.0),
            ("server_beta1", Strategy::FedYogi, 0.1, 1.0, 0.99, 1e-3),
            ("server_beta2", Strategy::FedAdam, 0.1, 0.9, -0.1, 1e-3),
            ("server_lr", Strategy::FedAdagrad, f32::NAN, 0.9, 0.99, 1e-3),
        ];
        for (name, s, lr, b1, b2, tau) in bad {
            match Adaptive::new(s, lr, b1, b2, tau) {
                Err(ModelError::Hyper { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
