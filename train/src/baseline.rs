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

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tessera_dp::mechanism::clip_l2;

use crate::demo::{self, DemoConfig, DemoError, RoundRow};
use crate::local::{self, LocalTraining};

/// Accuracy and loss on the held-out split after each round of plain
/// FedAvg; `survivors`, `dropped` and `epsilon` are filled as the demo
/// would (epsilon 0), bytes and seconds measure the in-process run.
pub fn plain_fedavg(
    cfg: &DemoConfig,
    mut progress: impl FnMut(&RoundRow),
) -> Result<Vec<RoundRow>, DemoError> {
    let (dataset, arch) = demo::prepare(cfg)?;
    let shares = demo::client_shares(cfg, &dataset)?;
    let mut global = tessera_client::burn::flatten(&arch.init(cfg.seed));
    let partitions: Vec<_> = shares.iter().map(|s| dataset.train.select(s)).collect();
    let beta = f64::from(cfg.server_momentum.unwrap_or(0.0));
    let mut velocity = vec![0f64; global.len()];
    let mut rows = Vec::new();
    for round in 1..=cfg.rounds {
        let started = std::time::Instant::now();
        let plan = demo::dropout_plan(cfg, round);
        let mut sum = vec![0f64; global.len()];
        let mut counted = 0u32;
        for (c, examples) in partitions.iter().enumerate() {
            if plan[c].is_some_and(|stage| stage != tessera_aggregation::Stage::Unmasking) {
                continue;
            }
            let (trained, _) = local::train(
                &arch,
                &global,
                examples,
                &cfg.local,
                demo::client_seed(cfg, round, c),
            );
            let mut update: Vec<f32> = trained.iter().zip(&global).map(|(l, g)| l - g).collect();
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
        let row = RoundRow {
            round,
            survivors: counted,
            dropped: plan.iter().filter(|d| d.is_some()).count() as u32,
            completed: true,
            accuracy,
            loss,
            epsilon: 0.0,
            seconds: started.elapsed().as_secs_f64(),
            bytes_per_client: 0,
            bytes_received: 0,
            max_error_vs_plain: None,
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Accuracy and loss on the held-out split of the model trained centrally
/// on all training examples for `rounds x local epochs` epochs (the passes
/// the federated clients made over their data in all), with the same
/// optimizer, batch size and learning rate.
pub fn central(cfg: &DemoConfig) -> Result<(f32, f32), DemoError> {
    let (dataset, arch) = demo::prepare(cfg)?;
    let mut order: Vec<usize> = (0..dataset.train.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(cfg.seed));
    let train = dataset.train.select(&order);
    let epochs = cfg.local.epochs * cfg.rounds as usize;
    let training = LocalTraining {
        epochs,
        ..cfg.local
    };
    let init = tessera_client::burn::flatten(&arch.init(cfg.seed));
    let (params, _) = local::train(&arch, &init, &train, &training, cfg.seed);
    Ok(local::evaluate(&arch, &params, &dataset.test))
}
