//! FedAvg's server step over the flat parameter vector of a [`Model`].
//!
//! A round's unmasked average update is applied with a server learning
//! rate, optionally through server momentum (FedAvgM, Hsu, Qi and Brown
//! 2019), which smooths the noisy average of a few clients' updates.

use crate::model::{Model, ModelError};

/// FedAvg's server step: turns a round's average client update into the
/// next global model.
///
/// `Debug` shows the hyperparameters and the velocity's length only.
#[derive(Clone)]
pub(crate) struct FedAvg {
    /// Server learning rate: 1 applies the average update as is.
    pub(crate) server_lr: f32,
    /// Server momentum in `[0, 1)`, if any.
    pub(crate) momentum: Option<f32>,
    velocity: Option<Vec<f32>>,
}

impl std::fmt::Debug for FedAvg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FedAvg")
            .field("server_lr", &self.server_lr)
            .field("momentum", &self.momentum)
            .field("velocity_len", &self.velocity.as_ref().map(Vec::len))
            .finish()
    }
}

impl FedAvg {
    /// Checks the hyperparameters: `server_lr` finite and positive,
    /// `momentum` in `[0, 1)` (at 1 the velocity never decays).
    pub(crate) fn new(server_lr: f32, momentum: Option<f32>) -> Result<FedAvg, ModelError> {
        if !(server_lr.is_finite() && server_lr > 0.0) {
            return Err(ModelError::Hyper {
                name: "server_lr",
                value: server_lr,
            });
        }
        if let Some(m) = momentum
            && !(0.0..1.0).contains(&m)
        {
            return Err(ModelError::Hyper {
                name: "server_momentum",
                value: m,
            });
        }
        Ok(FedAvg {
            server_lr,
            momentum,
            velocity: None,
        })
    }

    /// The momentum buffer, so the store can persist it with each model.
    pub(crate) fn velocity(&self) -> Option<&[f32]> {
        self.velocity.as_deref()
    }

    /// Restores a persisted momentum buffer after a restart. A buffer whose
    /// length does not match the model is dropped at the next
    /// [`apply`](Self::apply) (momentum restarts from zero, with a warning).
    pub(crate) fn set_velocity(&mut self, velocity: Vec<f32>) {
        self.velocity = Some(velocity);
    }

    /// Applies a round's average update: `w += lr * u`, or with momentum
    /// beta `v = beta v + u; w += lr * v` (FedAvgM).
    ///
    /// A length mismatch, a non-finite update, or a step that would
    /// overflow a weight to infinity is an error and leaves the model and
    /// the velocity untouched: the new values are checked in a first pass
    /// and written in a second.
    pub(crate) fn apply(
        &mut self,
        model: &mut Model,
        mean_update: &[f32],
    ) -> Result<(), ModelError> {
        let dim = model.dim();
        if mean_update.len() != dim {
            return Err(ModelError::Length {
                expected: dim,
                got: mean_update.len(),
            });
        }
        if let Some(i) = mean_update.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(i));
        }
        let lr = self.server_lr;
        let Some(beta) = self.momentum else {
            let w = &mut model.params;
            if let Some(i) = (0..dim).find(|&i| !(w[i] + lr * mean_update[i]).is_finite()) {
                return Err(ModelError::Overflow(i));
            }
            for (w, &u) in w.iter_mut().zip(mean_update) {
                *w += lr * u;
            }
            return Ok(());
        };
        if self.velocity.as_ref().is_some_and(|v| v.len() != dim) {
            tracing::warn!(
                dim,
                "momentum buffer has another dimension; restarting it at zero"
            );
            self.velocity = None;
        }
        let v = self.velocity.get_or_insert_with(|| vec![0.0; dim]);
        let w = &mut model.params;
        if let Some(i) = (0..dim).find(|&i| {
            let vi = beta * v[i] + mean_update[i];
            !(vi.is_finite() && (w[i] + lr * vi).is_finite())
        }) {
            return Err(ModelError::Overflow(i));
        }
        for ((v, &u), w) in v.iter_mut().zip(mean_update).zip(w.iter_mut()) {
            *v = beta * *v + u;
            *w += lr * *v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorSpec;

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn plain_fedavg_adds_the_scaled_average() {
        let mut model = Model::new(vec![spec("w", &[3])], vec![1.0, 2.0, 3.0]).unwrap();
        let mut f = FedAvg::new(0.5, None).unwrap();
        f.apply(&mut model, &[2.0, -2.0, 0.0]).unwrap();
        assert_eq!(model.params, vec![2.0, 1.0, 3.0]);
        assert_eq!(f.velocity(), None, "no momentum, no buffer");
    }

    #[test]
    fn momentum_over_three_steps_matches_hand_computed_values() {
        // lr = 0.5, beta = 0.5 (exact in binary), updates u1..u3:
        // v1 = (1, 2)       w1 = (0.5, 1)
        // v2 = (-1.5, 1)    w2 = (-0.25, 1.5)
        // v3 = (3.25, 1.5)  w3 = (1.375, 2.25)
        // Plain FedAvg would end at (1.5, 1.5).
        let mut model = Model::zeros_flat(2);
        let mut f = FedAvg::new(0.5, Some(0.5)).unwrap();
        let updates = [[1.0, 2.0], [-2.0, 0.0], [4.0, 1.0]];
        let expected = [[0.5, 1.0], [-0.25, 1.5], [1.375, 2.25]];
        for (u, w) in updates.iter().zip(expected) {
            f.apply(&mut model, u).unwrap();
            assert_eq!(model.params, w);
        }
        assert_eq!(f.velocity(), Some(&[3.25f32, 1.5][..]));

        // A restored buffer continues where it left off.
        let mut g = FedAvg::new(0.5, Some(0.5)).unwrap();
        g.set_velocity(vec![3.25, 1.5]);
        let mut m2 = model.clone();
        f.apply(&mut model, &[0.0, 0.0]).unwrap();
        g.apply(&mut m2, &[0.0, 0.0]).unwrap();
        assert_eq!(model, m2);
        assert_eq!(model.params, vec![1.375 + 0.8125, 2.25 + 0.375]);
    }

    #[test]
    fn bad_updates_leave_model_and_velocity_alone() {
        let mut model = Model::zeros_flat(2);
        let mut f = FedAvg::new(2.0, Some(0.5)).unwrap();
        f.apply(&mut model, &[1.0, 1.0]).unwrap();
        let (before, velocity) = (model.clone(), f.velocity().unwrap().to_vec());
        assert_eq!(
            f.apply(&mut model, &[1.0]),
            Err(ModelError::Length {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            f.apply(&mut model, &[1.0, f32::NAN]),
            Err(ModelError::NonFinite(1))
        );
        // Finite input whose step (2 * f32::MAX) overflows the second weight.
        assert_eq!(
            f.apply(&mut model, &[0.0, f32::MAX]),
            Err(ModelError::Overflow(1))
        );
        assert_eq!(model, before);
        assert_eq!(f.velocity().unwrap(), velocity.as_slice());

        let mut plain = FedAvg::new(2.0, None).unwrap();
        assert_eq!(
            plain.apply(&mut model, &[f32::MAX, 0.0]),
            Err(ModelError::Overflow(0))
        );
        assert_eq!(model, before);
    }

    #[test]
    fn hyperparameters_are_checked() {
        assert!(FedAvg::new(0.0, None).is_err());
        assert!(FedAvg::new(f32::INFINITY, None).is_err());
        assert!(FedAvg::new(1.0, Some(1.0)).is_err());
        assert!(FedAvg::new(1.0, Some(-0.1)).is_err());
        assert!(FedAvg::new(1.0, Some(0.0)).is_ok());
    }
}
