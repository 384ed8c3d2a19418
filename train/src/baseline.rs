//! The baselines the demo is judged against, from the same data, model and
//! local training code:
//!
//! - [`plain_fedavg`]: FedAvg in one process, no masking, no DP, no
//!   network. The same clients drop out at the same rounds (those that
//!   would have hung up before their masked input was in are left out of
//!   the average), so the only differences from the demo are secure
//!   aggregation's fixed point and the DP noise.
//! - [`central`]: one model trained on the union of the clients' data, as
//!   many passes over it as the federated clients made in all rounds.

use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tessera_aggregation::Stage;
use tessera_dp::mechanism::clip_l2;

use crate::experiment::{Experiment, ExperimentError};
use crate::local::{self, LocalTraining};

/// One round of [`plain_fedavg`].
#[derive(Clone, Debug, PartialEq)]
pub struct BaselineRound {
    /// The round, from 1.
    pub round: u64,
    /// Clients whose updates are in the average: those the demo would have
    /// counted (every client but those that drop before Unmasking).
    pub survivors: u32,
    /// Clients the dropout plan drops this round.
    pub dropped: u32,
    /// Accuracy of the global model after the round on the held-out split.
    pub accuracy: f32,
    /// Mean cross-entropy there.
    pub loss: f32,
    /// Wall time of the round in this process, local training included.
    pub seconds: f64,
}

/// Accuracy and loss on the held-out split after each round of plain
/// FedAvg, with the survivors and dropouts the demo would have;
/// `progress` hears each round as it ends.
pub fn plain_fedavg(
    cfg: &Experiment,
    mut progress: impl FnMut(&BaselineRound),
) -> Result<Vec<BaselineRound>, ExperimentError> {
    let (dataset, arch) = cfg.prepare()?;
    let shares = cfg.client_shares(&dataset)?;
    let mut global = tessera_client::burn::flatten(&arch.init(cfg.seed));
    let partitions: Vec<_> = shares.iter().map(|s| dataset.train.select(s)).collect();
    let beta = f64::from(cfg.server_momentum.unwrap_or(0.0));
    let mut velocity = vec![0f64; global.len()];
    let mut rows = Vec::new();
    for round in 1..=cfg.rounds {
        let started = Instant::now();
        let plan = cfg.dropout_plan(round);
        let mut sum = vec![0f64; global.len()];
        let mut counted = 0u32;
        for (c, examples) in partitions.iter().enumerate() {
            if plan[c].is_some_and(|stage| stage != Stage::Unmasking) {
                continue;
            }
            let seed = cfg.client_seed(round, c);
            let mut update = local::update(&arch, &global, examples, &cfg.local, seed);
            clip_l2(&mut update, cfg.clip_norm);
            for (s, u) in sum.iter_mut().zip(&update) {
                *s += f64::from(*u);
            }
            counted += 1;
        }
        for ((g, s), v) in global.iter_mut().zip(&sum).zip(&mut velocity) {
            *v = beta * *v + s / f64::from(counted.max(1));
            *g = (f64::from(*g) + f64::from(cfg.server_lr) * *v) as f32;
        }
        let (accuracy, loss) = local::evaluate(&arch, &global, &dataset.test);
        let row = BaselineRound {
            round,
            survivors: counted,
            dropped: plan.iter().filter(|d| d.is_some()).count() as u32,
            accuracy,
            loss,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Accuracy and loss on the held-out split of the model trained centrally
/// on all training examples for `rounds x local epochs` epochs (the passes
/// the federated clients made over their data in all), with the same
/// optimizer, batch size and learning rate: the last row of
/// [`central_rounds`].
pub fn central(cfg: &Experiment) -> Result<(f32, f32), ExperimentError> {
    let rows = central_rounds(cfg, |_| {})?;
    let last = rows.last().expect("an experiment has at least one round");
    Ok((last.accuracy, last.loss))
}

/// The central baseline round by round: one model trained on all the
/// training examples, `local epochs` passes per round (as many as a
/// federated client makes over its own data), evaluated on the held-out
/// split after each round so it plots against the federated runs.
/// `progress` hears each round as it ends.
pub fn central_rounds(
    cfg: &Experiment,
    mut progress: impl FnMut(&BaselineRound),
) -> Result<Vec<BaselineRound>, ExperimentError> {
    let (dataset, arch) = cfg.prepare()?;
    let mut order: Vec<usize> = (0..dataset.train.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
    let train = dataset.train.select(&order);
    let mut params = tessera_client::burn::flatten(&arch.init(cfg.seed));
    // One model trained from the initial one: no global model to stay
    // near, so no FedProx term.
    let local = LocalTraining {
        proximal_mu: 0.0,
        ..cfg.local
    };
    let mut rows = Vec::new();
    for round in 1..=cfg.rounds {
        let started = Instant::now();
        // Each round's passes shuffle with their own seed, as a client's do.
        (params, _) = local::train(&arch, &params, &train, &local, cfg.client_seed(round, 0));
        let (accuracy, loss) = local::evaluate(&arch, &params, &dataset.test);
        let row = BaselineRound {
            round,
            survivors: 1,
            dropped: 0,
            accuracy,
            loss,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}
