//! The flags of `tessera demo` and their help text, and how they become a
//! [`DemoConfig`]; every default is the demo's.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tessera_train::data::{FASHION_MNIST_DIR, Partitioning};
use tessera_train::experiment::{DatasetChoice, Experiment, Holdout};
use tessera_train::local::{LocalTraining, Optimizer};
use tessera_train::model::ModelKind;

use tessera_server::config::Strategy;

use super::{DemoConfig, DpMode};
use crate::args::ThreatArg;

pub(crate) const ABOUT: &str =
    "Train a model federatedly: real server, real clients, secure aggregation, DP";
pub(crate) const LONG_ABOUT: &str = "Starts a Tessera server on 127.0.0.1 (a random port, TLS \
    with a generated self-signed certificate, one bearer token per client) and runs clients \
    as concurrent tasks over real gRPC. Each round every client fetches the global model, \
    trains it locally on its own partition of the data (non-IID by default) and sends \
    `local - global` through secure aggregation (SecAgg masking; the server sees only the \
    sum); a fraction of the clients drop out at random stages. With distributed DP (the \
    default) each client adds its share of discrete Gaussian noise before masking, calibrated \
    so the target epsilon is reached after the planned rounds; the server's ledger stops the \
    job before the budget would be passed. After each round the published model is evaluated \
    on a held-out split. Prints a table (round, survivors/dropped, accuracy, loss, epsilon, \
    round time, bytes per client) and writes to --out: the data directory with every \
    published model (data/models/*.safetensors), rounds.csv, and rounds.svg (accuracy and \
    epsilon per round). --out is replaced on each run, and refused if it holds files the \
    demo did not write. With --dp off, each round's published model is checked against the \
    plain FedAvg of the updates the survivors sent. --baseline runs the same training without \
    the server: plain FedAvg (no masking, no DP) or one centrally trained model.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera demo                                  # 400 clients, 20 rounds, 10% dropout, distributed DP at epsilon 8\n  \
    tessera demo --clients 50 --rounds 10 --dropout 0.2 --dp central\n  \
    tessera demo --dp off --iid                   # secure aggregation only\n  \
    tessera demo --baseline plain-fedavg          # the same training, no masking, no DP\n  \
    tessera demo --strategy fedadam --server-lr 0.01 --weighting --federated-eval\n  \
    tessera demo --dataset fashion-mnist --clients 50 --rounds 50   # needs Debian's dataset-fashion-mnist";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModelArg {
    Mlp,
    Cnn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum DatasetArg {
    Digits,
    FashionMnist,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HoldoutArg {
    /// The dataset's test split: what the README reports.
    Test,
    /// A fifth of the training split, held out from training: for
    /// choosing settings without looking at the test split.
    Validation,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum BaselineArg {
    /// FedAvg in one process: no server, no masking, no DP.
    PlainFedavg,
    /// One model trained on all the clients' data.
    Central,
}

/// Flags of `tessera demo`; every default is the demo's.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Clients in every round.
    #[arg(long, default_value_t = 400, value_name = "N")]
    clients: usize,
    /// Rounds of FedAvg (fewer if the privacy budget runs out first).
    #[arg(long, default_value_t = 20, value_name = "R")]
    rounds: u64,
    /// Fraction of clients that drop out each round, at random stages.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    dropout: f64,
    /// Differential privacy: distributed (clients add discrete Gaussian
    /// noise; holds against the server), central (the server adds exact
    /// discrete Gaussian noise) or ftrl (DP-FTRL: the server adds
    /// tree-structured noise to the prefix sums; clients take part once
    /// per tree of --ftrl-epoch-rounds rounds) — both against the model's
    /// consumers only — or off.
    #[arg(long, value_enum, default_value_t = DpMode::Distributed)]
    dp: DpMode,
    /// Adaptive clipping (Andrew et al. 2021): the clip norm starts at
    /// --clip-norm and follows the median update norm, estimated from the
    /// clients' clipped-indicator bits inside the secure sum (noised by the
    /// clients under distributed DP, and charged).
    #[arg(long)]
    adaptive_clip: bool,
    /// --dp ftrl: rounds per tree (epoch); the clients are dealt into this
    /// many cohorts per epoch, one per round, so each takes part once per
    /// tree.
    #[arg(long, default_value_t = 4, value_name = "S")]
    ftrl_epoch_rounds: u64,
    /// Target epsilon after --rounds rounds.
    #[arg(long, default_value_t = 8.0, value_name = "EPS")]
    epsilon: f64,
    /// Delta of the (epsilon, delta) guarantee.
    #[arg(long, default_value_t = 1e-5, value_name = "DELTA")]
    delta: f64,
    /// DP noise multiplier (default: the one that spends --epsilon in
    /// --rounds rounds); the server still stops at --epsilon.
    #[arg(long, value_name = "Z")]
    noise_multiplier: Option<f64>,
    /// Model: a two-layer perceptron or a small CNN.
    #[arg(long, value_enum, default_value_t = ModelArg::Mlp)]
    model: ModelArg,
    /// Hidden units of the MLP.
    #[arg(long, default_value_t = 32, value_name = "H")]
    hidden: usize,
    /// Dataset: the UCI digits embedded in the binary, or Fashion-MNIST
    /// from Debian's dataset-fashion-mnist package.
    #[arg(long, value_enum, default_value_t = DatasetArg::Digits)]
    pub(super) dataset: DatasetArg,
    /// Where the Fashion-MNIST idx.gz files are.
    #[arg(long, default_value = FASHION_MNIST_DIR, value_name = "DIR")]
    pub(super) fashion_mnist_dir: PathBuf,
    /// Non-IID split: Dirichlet(alpha) over labels per client (smaller is
    /// more skewed).
    #[arg(
        long,
        default_value_t = 0.5,
        value_name = "ALPHA",
        conflicts_with = "iid"
    )]
    alpha: f64,
    /// IID split instead of Dirichlet.
    #[arg(long)]
    iid: bool,
    /// Local epochs per round.
    #[arg(long, default_value_t = 5, value_name = "E")]
    local_epochs: usize,
    /// Local batch size.
    #[arg(long, default_value_t = 16, value_name = "B")]
    batch_size: usize,
    /// Local learning rate.
    #[arg(long, default_value_t = 0.3, value_name = "LR")]
    lr: f64,
    /// Local optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    /// L2 clip norm of each client's update.
    #[arg(long, default_value_t = 1.0, value_name = "C")]
    clip_norm: f32,
    /// FedAvg server learning rate.
    #[arg(long, default_value_t = 1.0, value_name = "LR")]
    server_lr: f32,
    /// FedAvgM server momentum in [0, 1); 0 is plain FedAvg. Momentum
    /// averages the noisy rounds: chosen on the validation split. Used by
    /// FedAvgM (and DP-FTRL's momentum) only.
    #[arg(long, default_value_t = 0.9, value_name = "BETA")]
    server_momentum: f32,
    /// Server optimizer (default: fedavgm with --server-momentum above 0,
    /// else fedavg). fedadam, fedyogi and fedadagrad (Reddi et al. 2021)
    /// take steps of about --server-lr per coordinate: give them a small
    /// one, e.g. --server-lr 0.01. Not with --dp ftrl.
    #[arg(long, value_enum, value_name = "STRATEGY")]
    strategy: Option<Strategy>,
    /// FedProx: clients add (mu/2) ||w - w_global||^2 to their local loss;
    /// the server sends mu with the model. 0 is plain local training.
    #[arg(long, default_value_t = 0.0, value_name = "MU")]
    proximal_mu: f64,
    /// Weighted averaging by example count: each client sends its number
    /// of training examples inside the secure sum (noised and charged under
    /// DP); a client's weight is min(n, N) / N with N the median client's
    /// count. Not with --dp ftrl.
    #[arg(long)]
    weighting: bool,
    /// Federated evaluation: each client keeps a fifth of its examples out
    /// of training, evaluates each round's base model on them and sends the
    /// counts through the secure sum (noised and charged under DP); the
    /// table and rounds.csv show the federated accuracy. Not with --dp ftrl.
    #[arg(long)]
    federated_eval: bool,
    /// Seed of the data split, initial model, local training and dropouts
    /// (the protocol's keys, masks and noise always come from the OS).
    #[arg(long, default_value_t = 1, value_name = "SEED")]
    seed: u64,
    /// The held-out split every published model is evaluated on: the test
    /// split, or a validation split carved from the training data (the
    /// clients then train on the other four fifths) for choosing settings.
    #[arg(long, value_enum, default_value_t = HoldoutArg::Test, value_name = "SPLIT")]
    holdout: HoldoutArg,
    /// Output directory.
    #[arg(long, default_value = "tessera-out", value_name = "DIR")]
    out: PathBuf,
    /// Run a baseline instead of the demo (no server).
    #[arg(
        long,
        value_enum,
        value_name = "WHICH",
        conflicts_with_all = ["strategy", "weighting", "federated_eval"]
    )]
    pub(super) baseline: Option<BaselineArg>,
    /// Measure accuracy against privacy: run the demo at epsilon 1, 2, 4,
    /// 8 and 16 for each private mechanism, once without DP and once as
    /// the central baseline, with the other flags as given; writes
    /// sweep.csv, sweep.svg and runs/NAME/ (each run's files) into --out.
    /// Takes many demo runs' time.
    #[arg(long, conflicts_with_all = [
        "baseline", "dp", "epsilon", "noise_multiplier", "strategy", "weighting", "federated_eval"
    ])]
    pub(super) sweep: bool,
    /// Threat model of the rounds; malicious-server gives every client an
    /// enrolled Ed25519 identity (OUT/enrolled.txt) to sign its keys and the
    /// survivor set with.
    #[arg(long, value_enum, default_value_t = ThreatArg::SemiHonest)]
    threat_model: ThreatArg,
}

impl DemoArgs {
    /// The job these flags ask for.
    pub(super) fn config(&self) -> DemoConfig {
        DemoConfig {
            training: self.experiment(),
            dp: self.dp,
            epsilon: self.epsilon,
            delta: self.delta,
            noise_multiplier: self.noise_multiplier,
            out: self.out.clone(),
            threat_model: self.threat_model.into(),
            ftrl_epoch_rounds: self.ftrl_epoch_rounds,
            adaptive_clip: self.adaptive_clip,
            strategy: self.strategy,
            weighting: self.weighting,
            federated_eval: self.federated_eval,
        }
    }

    /// The training settings among the flags.
    fn experiment(&self) -> Experiment {
        Experiment {
            clients: self.clients,
            rounds: self.rounds,
            dropout: self.dropout,
            model: match self.model {
                ModelArg::Mlp => ModelKind::Mlp {
                    hidden: self.hidden,
                },
                ModelArg::Cnn => ModelKind::Cnn,
            },
            dataset: match self.dataset {
                DatasetArg::Digits => DatasetChoice::Digits,
                DatasetArg::FashionMnist => {
                    DatasetChoice::FashionMnist(self.fashion_mnist_dir.clone())
                }
            },
            partitioning: if self.iid {
                Partitioning::Iid
            } else {
                Partitioning::Dirichlet { alpha: self.alpha }
            },
            local: LocalTraining {
                epochs: self.local_epochs,
                batch_size: self.batch_size,
                lr: self.lr,
                optimizer: match self.optimizer {
                    OptimizerArg::Sgd => Optimizer::Sgd,
                    OptimizerArg::Adam => Optimizer::Adam,
                },
                proximal_mu: self.proximal_mu,
            },
            clip_norm: self.clip_norm,
            server_lr: self.server_lr,
            server_momentum: (self.server_momentum != 0.0).then_some(self.server_momentum),
            seed: self.seed,
            holdout: match self.holdout {
                HoldoutArg::Test => Holdout::Test,
                HoldoutArg::Validation => Holdout::Validation,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `tessera demo`'s flags alone.
    #[derive(Debug, Parser)]
    struct Demo {
        #[command(flatten)]
        args: DemoArgs,
    }

    #[test]
    fn no_flags_is_the_documented_default_job() {
        let parsed = Demo::try_parse_from(["demo"]).unwrap();
        assert_eq!(parsed.args.config(), DemoConfig::default());
    }

    #[test]
    fn strategy_weighting_and_evaluation_reach_the_job_and_not_the_baselines() {
        let parsed = Demo::try_parse_from([
            "demo",
            "--strategy",
            "fedyogi",
            "--weighting",
            "--federated-eval",
            "--proximal-mu",
            "0.01",
        ])
        .unwrap();
        let cfg = parsed.args.config();
        assert_eq!(cfg.strategy, Some(Strategy::FedYogi));
        assert!(cfg.weighting && cfg.federated_eval);
        assert_eq!(cfg.training.local.proximal_mu, 0.01);
        // A baseline or a sweep would silently drop them: refused instead.
        for flag in ["--weighting", "--federated-eval"] {
            assert!(Demo::try_parse_from(["demo", "--baseline", "central", flag]).is_err());
            assert!(Demo::try_parse_from(["demo", "--sweep", flag]).is_err());
        }
    }

    #[test]
    fn a_zero_momentum_is_plain_fedavg() {
        let parsed = Demo::try_parse_from(["demo", "--server-momentum", "0"]).unwrap();
        assert_eq!(parsed.args.config().training.server_momentum, None);
    }
}
