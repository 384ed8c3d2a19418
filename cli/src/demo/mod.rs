//! `tessera demo`: the main job. A real Tessera server and many real
//! clients over gRPC on loopback train one model together with secure
//! aggregation, dropouts and differential privacy.
//!
//! One call of [`run_job`]:
//! 1. loads the dataset and deals its training split to the clients
//!    (non-IID by default) as the [`Experiment`] says, builds the initial
//!    model and writes it into a fresh data directory ([`output`]);
//! 2. starts `tessera-server` on 127.0.0.1 with a generated self-signed
//!    TLS certificate and one bearer token per client, with the noise
//!    multiplier that reaches the target epsilon after the planned rounds
//!    ([`federation`]);
//! 3. each round, every client fetches the global model over gRPC, trains
//!    locally and takes part with `local - global`; a chosen fraction hangs
//!    up at random stages (real dropouts, as the server sees them)
//!    ([`rounds`]);
//! 4. after each round the published model is evaluated on the held-out
//!    split, and a [`RoundRow`] reports it.
//!
//! The server's ledger stops the job before the privacy budget would be
//! passed. With DP off, each round is also checked: the published model
//! must equal the plain FedAvg of the very updates the survivors sent,
//! within fixed-point error ([`RoundRow::max_error_vs_plain`]).
//!
//! The command line around the job (flags, progress bars, the table, the
//! `--baseline` runs) is in [`args`] and [`command`]; the files it writes
//! are [`crate::report`]'s.

mod args;
mod command;
mod federation;
mod output;
mod rounds;
mod sweep;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use tessera_aggregation::ThreatModel;
use tessera_aggregation::graph::GraphKind;
use tessera_client::ClientError;
use tessera_dp::accountant;
use tessera_server::config::{DpMode, Strategy};
use tessera_train::data;
use tessera_train::experiment::{Experiment, ExperimentError};

pub(crate) use args::{ABOUT, DemoArgs, EXAMPLES, LONG_ABOUT};
pub(crate) use command::run;
pub(crate) use rounds::run_job;
pub(crate) use sweep::SweepPoint;

/// Everything the demo can vary; [`Default`] is `tessera demo` with no
/// flags.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DemoConfig {
    /// What is trained, on which data, by how many clients, for how many
    /// rounds (fewer if the privacy budget runs out first).
    pub(crate) training: Experiment,
    /// DP mode.
    pub(crate) dp: DpMode,
    /// Target epsilon after `rounds` rounds (DP on).
    pub(crate) epsilon: f64,
    /// The delta of the guarantee.
    pub(crate) delta: f64,
    /// The DP noise multiplier; `None` calibrates it so that `rounds`
    /// rounds spend exactly `epsilon` ([`calibrate`]).
    pub(crate) noise_multiplier: Option<f64>,
    /// Where the data directory, TLS files and tokens go.
    pub(crate) out: PathBuf,
    /// Semi-honest (default), semi-malicious, or malicious-server: the
    /// clients then sign their keys and the survivor set with enrolled
    /// identities (`enrolled.txt` in `out`).
    pub(crate) threat_model: ThreatModel,
    /// `--dp ftrl`: rounds per tree (epoch). Each client takes part once
    /// per epoch: the clients are dealt into this many cohorts, a seeded
    /// deal per epoch, one cohort per round.
    pub(crate) ftrl_epoch_rounds: u64,
    /// Adaptive clipping (Andrew et al. 2021): the clip norm starts at the
    /// training's `clip_norm` and follows the median update norm, from
    /// clients' clipped-indicator bits summed (and, under distributed DP,
    /// noised by the clients) inside the secure sum.
    pub(crate) adaptive_clip: bool,
    /// The server optimizer; `None` is FedAvgM with the training's
    /// `server_momentum`, or FedAvg without one.
    pub(crate) strategy: Option<Strategy>,
    /// Weighted averaging by example count: each client sends its number
    /// of training examples with its update, inside the secure sum (noised
    /// and charged under DP).
    pub(crate) weighting: bool,
    /// Federated evaluation: each client keeps a fifth of its examples out
    /// of training, evaluates each round's base model on them and sends the
    /// counts through the secure sum (noised and charged under DP).
    pub(crate) federated_eval: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            training: Experiment::default(),
            dp: DpMode::Distributed,
            epsilon: 8.0,
            delta: 1e-5,
            noise_multiplier: None,
            out: PathBuf::from("tessera-out"),
            threat_model: ThreatModel::SemiHonest,
            ftrl_epoch_rounds: 4,
            adaptive_clip: false,
            strategy: None,
            weighting: false,
            federated_eval: false,
        }
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// The dataset could not be loaded or partitioned.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The output directory cannot be used.
    #[error("{path}: {problem}")]
    Output {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The server failed to start or stopped with an error.
    #[error("server: {0}")]
    Server(#[from] tessera_server::ServeError),
    /// A client failed in a way the demo did not plan.
    #[error("client {client}: {error}")]
    Client {
        /// Its index.
        client: usize,
        /// The SDK's error.
        error: ClientError,
    },
}

impl From<ExperimentError> for DemoError {
    fn from(error: ExperimentError) -> Self {
        match error {
            ExperimentError::Config(why) => DemoError::Config(why),
            ExperimentError::Data(e) => DemoError::Data(e),
            other => DemoError::Config(other.to_string()),
        }
    }
}

/// One round of the demo, as the table, `rounds.csv` and the plot show it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RoundRow {
    /// The round, from 1.
    pub(crate) round: u64,
    /// Clients whose updates are in the published average (0 if aborted).
    pub(crate) survivors: u32,
    /// Clients that hung up during the round. One that hung up at
    /// Unmasking had its masked input in already, so it counts among the
    /// survivors too.
    pub(crate) dropped: u32,
    /// Clients the plan kept in whose connection broke (or whose server
    /// went silent) during the round: real dropouts, which the server
    /// handled as such. Counted in `dropped` too.
    pub(crate) lost: u32,
    /// Whether the server published a model.
    pub(crate) completed: bool,
    /// Accuracy of the global model after the round on the held-out split.
    pub(crate) accuracy: f32,
    /// Mean cross-entropy there.
    pub(crate) loss: f32,
    /// Epsilon spent so far (the server's ledger), 0 without DP.
    pub(crate) epsilon: f64,
    /// Wall time from fetching the model to the last client's result,
    /// local training included.
    pub(crate) seconds: f64,
    /// Mean frame bytes a surviving client sent in the round (upload).
    pub(crate) bytes_per_client: u64,
    /// Mean frame bytes a surviving client received.
    pub(crate) bytes_received: u64,
    /// With DP off: the largest difference, over all parameters, between
    /// the published model and `global + server_lr * mean(clipped
    /// updates of the survivors)` computed in plain `f64` (with server
    /// momentum beta, plus beta times the previous round's step; with
    /// weighting, the weighted mean). Not checked for the adaptive
    /// strategies, whose step divides by moments the demo does not track
    /// (`tests/tests/end_to_end/strategies.rs` checks FedAdam's step by hand).
    pub(crate) max_error_vs_plain: Option<f32>,
    /// With federated evaluation: the accuracy of the round's base model
    /// on the counted clients' own held-out examples, as the server's
    /// round record has it (from noisy counts under DP); `None` when off
    /// or when the noisy count of examples fell below one.
    pub(crate) federated_accuracy: Option<f64>,
}

/// The federation as the job starts, for the opening lines of a display.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Started {
    /// The server's `https://` address.
    pub(crate) url: String,
    /// Model parameters.
    pub(crate) dim: usize,
    /// The DP noise multiplier in use (0 without DP).
    pub(crate) noise_multiplier: f64,
    /// The neighbour graph the SecAgg+ finder chose.
    pub(crate) graph: GraphKind,
    /// Its Shamir threshold, per neighbourhood.
    pub(crate) threshold: u32,
    /// The fewest survivors a round goes on with.
    pub(crate) min_survivors: u32,
    /// Accuracy of the initial model.
    pub(crate) accuracy: f32,
    /// The expected L2 norm of the DP noise in the averaged update the
    /// server applies (0 without DP): [`expected_noise_norm`].
    pub(crate) expected_noise_norm: f64,
}

/// What happened while the demo ran, for progress displays.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum DemoEvent {
    /// The server listens; the clients are about to start.
    Started(Started),
    /// A client finished its part of round `round`.
    ClientDone {
        /// The round.
        round: u64,
    },
    /// A round ended.
    Round(RoundRow),
}

/// The outcome of the whole job.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DemoReport {
    /// Per round.
    pub(crate) rows: Vec<RoundRow>,
    /// Accuracy of the initial model.
    pub(crate) initial_accuracy: f32,
    /// The DP noise multiplier used (0 without DP).
    pub(crate) noise_multiplier: f64,
    /// The neighbour graph.
    pub(crate) graph: GraphKind,
    /// The Shamir threshold, per neighbourhood.
    pub(crate) threshold: u32,
    /// The fewest survivors a round accepts; distributed DP is calibrated
    /// for it.
    pub(crate) min_survivors: u32,
    /// Model parameters.
    pub(crate) dim: usize,
    /// Why the job stopped before `rounds`, if it did.
    pub(crate) stopped_early: Option<String>,
    /// The data directory with the published models and the ledger.
    pub(crate) data_dir: PathBuf,
}

impl DemoConfig {
    /// Checks every setting, in the order of the flags: the federation's
    /// shape, the privacy budget, then local training. [`run`] and the
    /// baselines call it first.
    pub(crate) fn check(&self) -> Result<(), DemoError> {
        self.training.check_federation()?;
        self.check_privacy()?;
        self.training.check_local_training()?;
        Ok(())
    }

    /// Checks the server optimizer, then epsilon (with DP on) and delta.
    fn check_privacy(&self) -> Result<(), DemoError> {
        self.check_strategy()?;
        let extras = [
            (self.adaptive_clip, "--adaptive-clip"),
            (self.weighting, "--weighting"),
            (self.federated_eval, "--federated-eval"),
        ];
        if let Some((_, flag)) = extras.iter().find(|(on, _)| *on && self.dp == DpMode::Ftrl) {
            return Err(DemoError::Config(format!(
                "{flag} is not available with --dp ftrl yet (its tree holds the model's coordinates only)"
            )));
        }
        if self.dp == DpMode::Ftrl && (self.ftrl_epoch_rounds == 0 || self.cohort_size() < 3) {
            return Err(DemoError::Config(format!(
                "--dp ftrl deals --clients {} into --ftrl-epoch-rounds {} cohorts, one per round: each needs at least 3 clients",
                self.training.clients, self.ftrl_epoch_rounds
            )));
        }
        if self.dp != DpMode::Off && !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(DemoError::Config(format!(
                "--epsilon {} must be positive",
                self.epsilon
            )));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(DemoError::Config(format!(
                "--delta {} must be in (0, 1)",
                self.delta
            )));
        }
        Ok(())
    }

    /// Checks that the strategy and the momentum agree, and that DP-FTRL,
    /// which has its own server update, is not given another.
    fn check_strategy(&self) -> Result<(), DemoError> {
        let mu = self.training.local.proximal_mu;
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(DemoError::Config(format!(
                "--proximal-mu {mu} must be 0 or more"
            )));
        }
        let momentum = self.training.server_momentum;
        match self.strategy {
            Some(s) if self.dp == DpMode::Ftrl => Err(DemoError::Config(format!(
                "--strategy {s} cannot be combined with --dp ftrl: DP-FTRL is its own server update (its momentum is --server-momentum)"
            ))),
            Some(Strategy::FedAvgM) if momentum.is_none() => Err(DemoError::Config(
                "--strategy fedavgm needs a --server-momentum above 0".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The server optimizer that runs (DP-FTRL's own update aside), by the
    /// server's own rule: the chosen one, else FedAvgM with a momentum,
    /// else FedAvg.
    pub(crate) fn effective_strategy(&self) -> Strategy {
        tessera_server::config::AggregationSettings {
            strategy: self.strategy,
            server_momentum: self.training.server_momentum,
            ..Default::default()
        }
        .effective_strategy()
    }

    /// Clients in each round: all of them, or with `--dp ftrl` one cohort
    /// of the epoch's deal ([`DemoConfig::cohort_of`]).
    pub(crate) fn cohort_size(&self) -> usize {
        match self.dp {
            DpMode::Ftrl => self.training.clients / self.ftrl_epoch_rounds.max(1) as usize,
            _ => self.training.clients,
        }
    }

    /// Which clients take part in `round` (from 1): every client, or with
    /// `--dp ftrl` the cohort the epoch's seeded deal gives this round, so
    /// that each client is in at most one round per tree (the server
    /// enforces it by token; the demo does not rely on that).
    pub(crate) fn cohort_of(&self, round: u64) -> Vec<usize> {
        let n = self.training.clients;
        if self.dp != DpMode::Ftrl {
            return (0..n).collect();
        }
        let s = self.ftrl_epoch_rounds.max(1);
        let (epoch, slot) = ((round - 1) / s, ((round - 1) % s) as usize);
        let mut deal: Vec<usize> = (0..n).collect();
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        deal.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            self.training.seed ^ (epoch << 40) ^ 0x6674_726c,
        ));
        let k = self.cohort_size();
        let mut cohort = deal[slot * k..(slot + 1) * k].to_vec();
        cohort.sort_unstable();
        cohort
    }

    /// The fewest survivors a round goes on with: every client that does
    /// not drop, so a round with the planned dropouts completes while
    /// distributed DP is calibrated for as many survivors as there will
    /// be; never below a majority of the clients. (The SecAgg+ graph's own
    /// Shamir threshold is per neighbourhood and much lower.)
    pub(crate) fn min_survivors(&self) -> u32 {
        let clients = self.cohort_size();
        let majority = clients / 2 + 1;
        (clients - self.dropouts_per_round()).max(majority) as u32
    }

    /// Which of `round`'s cohort drop out, and before which stage, indexed
    /// by client: the experiment's seeded plan over the cohort.
    pub(crate) fn dropout_plan(&self, round: u64) -> Vec<Option<tessera_aggregation::Stage>> {
        let cohort = self.cohort_of(round);
        let over_cohort = tessera_train::experiment::Experiment {
            clients: cohort.len(),
            ..self.training.clone()
        }
        .dropout_plan(round);
        let mut plan = vec![None; self.training.clients];
        for (slot, &c) in cohort.iter().enumerate() {
            plan[c] = over_cohort[slot];
        }
        plan
    }

    /// Clients that drop out of each round: the dropout fraction of the
    /// round's cohort.
    pub(crate) fn dropouts_per_round(&self) -> usize {
        (self.training.dropout * self.cohort_size() as f64).round() as usize
    }
}

/// The expected L2 norm of the DP noise in a round's averaged update:
/// `sqrt(dim)` times the noise std per coordinate of the mean over the
/// `survivors` clients expected in a round.
///
/// Central DP adds std `z C` to the sum. Distributed DP has each client
/// add variance `(z C)^2 / (min_survivors - corrupt)`, so that the honest
/// survivors alone reach the target (colluders know their own noise); the
/// whole sum then carries `survivors` times that. Either way the mean
/// divides by `survivors`. Rounding and the discrete noise's own
/// variance are left out: this is for a warning, not an accountant.
pub(crate) fn expected_noise_norm(
    dp: DpMode,
    noise_multiplier: f64,
    clip_norm: f64,
    dim: usize,
    survivors: u32,
    min_survivors: u32,
    corrupt: u32,
) -> f64 {
    let sigma = noise_multiplier * clip_norm;
    let survivors = f64::from(survivors.max(1));
    let sum_std = match dp {
        DpMode::Off => return 0.0,
        // DP-FTRL: one tree node's noise, a lower bound (a round's step
        // differs from the last by the noise of a few nodes).
        DpMode::Central | DpMode::Ftrl => sigma,
        DpMode::Distributed => {
            let honest = f64::from(min_survivors.saturating_sub(corrupt).max(1));
            sigma * (survivors / honest).sqrt()
        }
    };
    sum_std / survivors * (dim as f64).sqrt()
}

/// The noise multiplier of the job: the configured one, or the one that
/// spends exactly the budget over `rounds` rounds of the mechanism the
/// server will account (no subsampling: every client takes part in every
/// round).
pub(crate) fn calibrate(cfg: &DemoConfig) -> Result<f64, DemoError> {
    if cfg.dp == DpMode::Off {
        return Ok(0.0);
    }
    if let Some(z) = cfg.noise_multiplier {
        return if z.is_finite() && z > 0.0 {
            Ok(z)
        } else {
            Err(DemoError::Config(format!(
                "--noise-multiplier {z} must be positive"
            )))
        };
    }
    let z = if cfg.dp == DpMode::Ftrl {
        // Trees of S rounds, the last one possibly partial: the noise that
        // spends the budget over the rounds as the ledger charges them.
        let s = cfg.ftrl_epoch_rounds;
        let epochs = cfg.training.rounds.div_ceil(s);
        accountant::tree_noise_multiplier(cfg.epsilon, s, epochs, cfg.delta)
    } else {
        accountant::noise_multiplier(cfg.epsilon, 1.0, cfg.training.rounds, cfg.delta)
    };
    z.map_err(|e| DemoError::Config(format!("cannot reach epsilon {}: {e}", cfg.epsilon)))
}
