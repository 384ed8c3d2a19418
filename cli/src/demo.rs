//! `tessera demo`: the main job. A server and its clients train a model
//! together over real gRPC on loopback, with secure aggregation, dropouts
//! and differential privacy, and report every round (see
//! `tessera_train::demo` for what runs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_aggregation::graph::GraphKind;
use tessera_aggregation::params::ThreatModel;

use crate::args::ThreatArg;
use tessera_train::data::{FASHION_MNIST_DIR, Partitioning};
use tessera_train::demo::{self, DatasetChoice, DemoConfig, DemoEvent, DpChoice, RoundRow};
use tessera_train::local::{LocalTraining, Optimizer};
use tessera_train::model::ModelKind;
use tessera_train::{baseline, report};

use crate::usage;

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
    tessera demo                                  # 20 clients, 30 rounds, 10% dropout, distributed DP at epsilon 8\n  \
    tessera demo --clients 50 --rounds 10 --dropout 0.2 --dp central\n  \
    tessera demo --dp off --iid                   # secure aggregation only\n  \
    tessera demo --baseline plain-fedavg          # the same training, no masking, no DP\n  \
    tessera demo --dataset fashion-mnist --clients 50 --rounds 50   # needs Debian's dataset-fashion-mnist";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DpArg {
    Off,
    Central,
    Distributed,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModelArg {
    Mlp,
    Cnn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    Digits,
    FashionMnist,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BaselineArg {
    /// FedAvg in one process: no server, no masking, no DP.
    PlainFedavg,
    /// One model trained on all the clients' data.
    Central,
}

/// Flags of `tessera demo`; every default is the demo's.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Clients in every round.
    #[arg(long, default_value_t = 20, value_name = "N")]
    clients: usize,
    /// Rounds of FedAvg (fewer if the privacy budget runs out first).
    #[arg(long, default_value_t = 30, value_name = "R")]
    rounds: u64,
    /// Fraction of clients that drop out each round, at random stages.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    dropout: f64,
    /// Differential privacy: distributed (clients add discrete Gaussian
    /// noise), central (the server adds Gaussian noise) or off.
    #[arg(long, value_enum, default_value_t = DpArg::Distributed)]
    dp: DpArg,
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
    dataset: DatasetArg,
    /// Where the Fashion-MNIST idx.gz files are.
    #[arg(long, default_value = FASHION_MNIST_DIR, value_name = "DIR")]
    fashion_mnist_dir: PathBuf,
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
    #[arg(long, default_value_t = 0.1, value_name = "LR")]
    lr: f64,
    /// Local optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    /// L2 clip norm of each client's update.
    #[arg(long, default_value_t = 0.5, value_name = "C")]
    clip_norm: f32,
    /// FedAvg server learning rate.
    #[arg(long, default_value_t = 1.0, value_name = "LR")]
    server_lr: f32,
    /// FedAvgM server momentum in [0, 1) (default: none).
    #[arg(long, value_name = "BETA")]
    server_momentum: Option<f32>,
    /// Seed of the data split, initial model, local training and dropouts
    /// (the protocol's keys, masks and noise always come from the OS).
    #[arg(long, default_value_t = 1, value_name = "SEED")]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "tessera-out", value_name = "DIR")]
    out: PathBuf,
    /// Run a baseline instead of the demo (no server).
    #[arg(long, value_enum, value_name = "WHICH")]
    baseline: Option<BaselineArg>,
    /// Threat model of the rounds; malicious-server gives every client an
    /// enrolled Ed25519 identity (OUT/enrolled.txt) to sign its keys and the
    /// survivor set with.
    #[arg(long, value_enum, default_value_t = ThreatArg::SemiHonest)]
    threat_model: ThreatArg,
}

impl DemoArgs {
    fn config(&self) -> DemoConfig {
        DemoConfig {
            clients: self.clients,
            rounds: self.rounds,
            dropout: self.dropout,
            dp: match self.dp {
                DpArg::Off => DpChoice::Off,
                DpArg::Central => DpChoice::Central,
                DpArg::Distributed => DpChoice::Distributed,
            },
            epsilon: self.epsilon,
            delta: self.delta,
            noise_multiplier: self.noise_multiplier,
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
            },
            clip_norm: self.clip_norm,
            server_lr: self.server_lr,
            server_momentum: self.server_momentum,
            seed: self.seed,
            out: self.out.clone(),
            threat_model: self.threat_model.into(),
        }
    }
}

const HEADER: &str =
    "round  survivors/dropped  accuracy    loss  epsilon  seconds  bytes/client  check";

fn table_row(r: &RoundRow) -> String {
    let who = if r.completed {
        format!("{}/{}", r.survivors, r.dropped)
    } else {
        format!("aborted/{}", r.dropped)
    };
    let check = r
        .max_error_vs_plain
        .map_or("-".to_owned(), |e| format!("{e:.1e}"));
    format!(
        "{:>5}  {:>17}  {:>8.4}  {:>6.3}  {:>7.3}  {:>7.2}  {:>12}  {check}",
        r.round, who, r.accuracy, r.loss, r.epsilon, r.seconds, r.bytes_per_client
    )
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid progress template")
        .progress_chars("=> ")
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config();
    if let Some(which) = args.baseline {
        return run_baseline(&cfg, which);
    }
    if args.dataset == DatasetArg::FashionMnist && !args.fashion_mnist_dir.is_dir() {
        usage!(
            "{} does not exist: install Debian's dataset-fashion-mnist package \
             (apt-get install dataset-fashion-mnist) or pass --fashion-mnist-dir",
            args.fashion_mnist_dir.display()
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let multi = MultiProgress::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
    let rounds_bar = multi.add(ProgressBar::new(cfg.rounds));
    rounds_bar.set_style(bar_style(
        "rounds  [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
    ));
    let clients_bar = multi.add(ProgressBar::new(cfg.clients as u64));
    clients_bar.set_style(bar_style("clients [{bar:30}] {pos}/{len} {msg}"));
    let started = Instant::now();
    let mut current_round = 0;
    let dp = cfg.dp;
    let result = runtime.block_on(demo::run(&cfg, |event| match event {
        DemoEvent::Started {
            url,
            dim,
            noise_multiplier,
            graph,
            threshold,
            min_survivors,
            accuracy,
        } => {
            let privacy = match dp {
                DpChoice::Off => "no DP".to_owned(),
                DpChoice::Central => format!(
                    "central DP, noise multiplier {noise_multiplier:.3} for epsilon {} at delta {}",
                    cfg.epsilon, cfg.delta
                ),
                DpChoice::Distributed => format!(
                    "distributed DP (discrete Gaussian), noise multiplier {noise_multiplier:.3} for epsilon {} at delta {}",
                    cfg.epsilon, cfg.delta
                ),
            };
            let graph = match graph {
                GraphKind::Complete => "complete graph".to_owned(),
                GraphKind::Harary { k } => format!("SecAgg+ Harary graph, {k} neighbours"),
            };
            multi.suspend(|| println!(
                "server at {url} (TLS, {} tokens); model {} with {dim} parameters\n\
                 masking: {graph}, Shamir threshold {threshold}, rounds need {min_survivors} of {} survivors\n\
                 {privacy}; initial accuracy {accuracy:.4}",
                cfg.clients, cfg.model, cfg.clients
            ));
            if cfg.threat_model != ThreatModel::SemiHonest {
                multi.suspend(|| println!(
                    "threat model: {}{}",
                    cfg.threat_model,
                    if cfg.threat_model == ThreatModel::MaliciousServer {
                        " (adverts and survivor sets signed with the identities in enrolled.txt)"
                    } else {
                        ""
                    }
                ));
            }
            multi.suspend(|| println!("{HEADER}"));
        }
        DemoEvent::ClientDone { round } => {
            if *round != current_round {
                current_round = *round;
                clients_bar.reset();
                clients_bar.set_message(format!("round {round}"));
            }
            clients_bar.inc(1);
        }
        DemoEvent::Round(row) => {
            multi.suspend(|| println!("{}", table_row(row)));
            rounds_bar.inc(1);
        }
    }));
    clients_bar.finish_and_clear();
    rounds_bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(demo::DemoError::Config(why)) => usage!("{why}"),
        Err(e) => return Err(anyhow::Error::new(e).context("the demo failed")),
    };

    let csv = cfg.out.join("rounds.csv");
    report::write_csv(&csv, &report.rows).with_context(|| format!("writing {}", csv.display()))?;
    let svg = cfg.out.join("rounds.svg");
    let title = format!(
        "{} clients, {} dropout, {}: accuracy and epsilon per round",
        cfg.clients,
        cfg.dropout,
        match cfg.dp {
            DpChoice::Off => "no DP".to_owned(),
            DpChoice::Central => format!("central DP eps {}", cfg.epsilon),
            DpChoice::Distributed => format!("distributed DP eps {}", cfg.epsilon),
        }
    );
    report::write_svg(&svg, &report.rows, report.initial_accuracy, &title)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", svg.display()))?;
    if let Some(why) = &report.stopped_early {
        println!("stopped after {} rounds: {why}", report.rows.len());
    }
    let last = report.rows.last();
    println!(
        "{} rounds in {:.1} s; final accuracy {:.4} (initial {:.4}); epsilon spent {:.3}",
        report.rows.len(),
        started.elapsed().as_secs_f64(),
        last.map_or(report.initial_accuracy, |r| r.accuracy),
        report.initial_accuracy,
        last.map_or(0.0, |r| r.epsilon),
    );
    println!(
        "wrote {} (published models, ledger), {}, {}",
        report.data_dir.display(),
        csv.display(),
        svg.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_baseline(cfg: &DemoConfig, which: BaselineArg) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    match which {
        BaselineArg::PlainFedavg => {
            println!(
                "plain FedAvg baseline: {} clients, {} rounds, same split, model and dropouts; no masking, no DP",
                cfg.clients, cfg.rounds
            );
            println!("{HEADER}");
            let rows = match baseline::plain_fedavg(cfg, |row| println!("{}", table_row(row))) {
                Ok(rows) => rows,
                Err(demo::DemoError::Config(why)) => usage!("{why}"),
                Err(e) => return Err(anyhow::Error::new(e).context("the baseline failed")),
            };
            let last = rows.last().map_or(f32::NAN, |r| r.accuracy);
            println!(
                "final accuracy {last:.4} after {} rounds in {:.1} s",
                rows.len(),
                started.elapsed().as_secs_f64()
            );
        }
        BaselineArg::Central => {
            let (accuracy, loss) = match baseline::central(cfg) {
                Ok(result) => result,
                Err(demo::DemoError::Config(why)) => usage!("{why}"),
                Err(e) => return Err(anyhow::Error::new(e).context("the baseline failed")),
            };
            println!(
                "central baseline: one model on all training data, {} epochs: accuracy {accuracy:.4}, loss {loss:.4} ({:.1} s)",
                cfg.local.epochs * cfg.rounds as usize,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
