//! `tessera serve`: runs the aggregation server until interrupted (or for
//! `--rounds` rounds).
//!
//! Its first line on stdout is `listening on ADDR`, with the real port when
//! `--listen` asked for port 0, so scripts and tests can start it and read
//! where to connect. Logs go to stderr (`RUST_LOG` or `--log` sets the level).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tessera_server::ServerConfig;
use tessera_server::config::{DpMode, GraphChoice, ThresholdRule};

use crate::args::{PrgArg, ThreatArg};
use crate::usage;

pub(crate) const ABOUT: &str = "Run the aggregation server (gRPC) for real clients";
pub(crate) const LONG_ABOUT: &str = "Runs the Tessera aggregation server: clients dial in over \
    gRPC, wait until --min-clients are there, run one secure aggregation round, and the server \
    publishes the FedAvg-updated global model to --data-dir; then the next round opens. \
    Settings come from --config FILE (TOML, keys as the flags with underscores) and are \
    overridden by flags. TLS and client authentication are required unless --insecure-dev is \
    given, which is refused on a non-loopback address. The first line on stdout is \
    `listening on ADDR`.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera serve --listen 127.0.0.1:0 --data-dir /tmp/t --dim 1000 --min-clients 3 --insecure-dev\n  \
    tessera serve --config server.toml\n  \
    tessera serve --listen 0.0.0.0:7443 --data-dir /var/lib/tessera --dim 10000 \\\n      \
    --tls-cert cert.pem --tls-key key.pem --tokens-file tokens.txt --min-clients 100";

/// Flags of `tessera serve`; each overrides the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory of the durable state (models, round records, ledger).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Model dimension (required for a new data directory).
    #[arg(long, value_name = "D")]
    dim: Option<u32>,
    /// Clients to wait for before a round opens (at least 3).
    #[arg(long, value_name = "N")]
    min_clients: Option<u32>,
    /// Most clients in one round.
    #[arg(long, value_name = "N")]
    max_clients: Option<u32>,
    /// After --min-clients wait, keep the lobby open this long for more.
    #[arg(long, value_name = "MS")]
    join_window_ms: Option<u64>,
    /// Neighbour graph: complete, harary:K, or auto (SecAgg+ finder); the
    /// malicious-server threat model runs on the complete graph only.
    #[arg(long, value_name = "GRAPH")]
    graph: Option<GraphChoice>,
    /// Shamir threshold rule: majority (of a client's share holders, its
    /// neighbours; raised to the threat model's floor), a fraction such as
    /// 0.66, or a count; an explicit rule below the floor is refused.
    #[arg(long, value_name = "RULE")]
    threshold: Option<ThresholdRule>,
    /// Floor on every stage's survivors above the threshold (a fraction of
    /// the round's clients or a count); distributed DP is calibrated for it.
    #[arg(long, value_name = "RULE")]
    min_survivors: Option<ThresholdRule>,
    /// Expected dropout fraction (for --graph auto) [default: 0.1].
    #[arg(long, value_name = "RATE")]
    dropout_rate: Option<f64>,
    /// Fraction of clients that may collude with the server: the finder's
    /// input for --graph auto, and the count every threshold must hold
    /// against [default: 0.05].
    #[arg(long, value_name = "RATE")]
    corrupt_rate: Option<f64>,
    /// Threat model every round runs under.
    #[arg(long, value_enum)]
    threat_model: Option<ThreatArg>,
    /// Mask PRG.
    #[arg(long, value_enum)]
    prg: Option<PrgArg>,
    /// Ring width in bits (default: the smallest that cannot wrap; a smaller
    /// one is refused with the smallest safe value).
    #[arg(long, value_name = "BITS")]
    bits: Option<u8>,
    /// Fixed-point scale: values are multiplied by 2^F.
    #[arg(long, value_name = "F")]
    frac_bits: Option<u8>,
    /// L2 norm clients clip their updates to.
    #[arg(long, value_name = "C")]
    clip_norm: Option<f32>,
    /// Deadline of each stage, in milliseconds.
    #[arg(long, value_name = "MS")]
    stage_timeout_ms: Option<u64>,
    /// FedAvg server learning rate.
    #[arg(long, value_name = "LR")]
    server_lr: Option<f32>,
    /// FedAvgM server momentum in [0, 1).
    #[arg(long, value_name = "BETA")]
    server_momentum: Option<f32>,
    /// Differential privacy: off, central (the server adds Gaussian noise)
    /// or distributed (clients add integer noise; the server never sees an
    /// un-noised sum).
    #[arg(long, value_name = "MODE")]
    dp: Option<DpMode>,
    /// Distributed DP noise: discrete-gaussian (default) or skellam.
    #[arg(long, value_enum)]
    dp_noise: Option<NoiseArg>,
    /// DP noise multiplier z: noise std over the sensitivity (central: z *
    /// clip norm; distributed: carried by any --min-survivors survivors).
    #[arg(long, value_name = "Z")]
    noise_multiplier: Option<f64>,
    /// Total epsilon the server may spend.
    #[arg(long, value_name = "EPS")]
    epsilon_budget: Option<f64>,
    /// Delta of the (epsilon, delta) guarantee.
    #[arg(long, value_name = "DELTA")]
    delta: Option<f64>,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA for client certificates (mTLS).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Bearer tokens file (`NAME sha256:HEX` lines; see `tessera token`).
    #[arg(long, value_name = "FILE")]
    tokens_file: Option<PathBuf>,
    /// Allow-list of enrolled client identities (`NAME ed25519:HEX` lines;
    /// see `tessera keygen`): required with --threat-model malicious-server.
    #[arg(long, value_name = "FILE")]
    identities_file: Option<PathBuf>,
    /// No TLS and no authentication, loopback only: for local experiments.
    #[arg(long)]
    insecure_dev: bool,
    /// Serve Prometheus metrics on this address (/metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Stop after this many rounds.
    #[arg(long, value_name = "R")]
    rounds: Option<u64>,
    /// Log filter (e.g. info, debug, tessera_server=debug); default info, or RUST_LOG.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// `--dp-noise` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum NoiseArg {
    DiscreteGaussian,
    Skellam,
}

impl From<NoiseArg> for tessera_dp::mechanism::NoiseKind {
    fn from(n: NoiseArg) -> Self {
        match n {
            NoiseArg::DiscreteGaussian => Self::DiscreteGaussian,
            NoiseArg::Skellam => Self::Skellam,
        }
    }
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(path) => match ServerConfig::from_file(path) {
                Ok(c) => c,
                Err(e) => usage!("{e}"),
            },
            None => ServerConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        set!(
            listen,
            data_dir,
            min_clients,
            max_clients,
            graph,
            threshold,
            dropout_rate,
            corrupt_rate,
            frac_bits,
            clip_norm,
            server_lr,
            dp,
            noise_multiplier,
            epsilon_budget,
            delta
        );
        if self.dim.is_some() {
            c.dim = self.dim;
        }
        if let Some(ms) = self.join_window_ms {
            c.join_window = Duration::from_millis(ms);
        }
        if let Some(ms) = self.stage_timeout_ms {
            c.stage_timeout = Duration::from_millis(ms);
        }
        if let Some(t) = self.threat_model {
            c.threat_model = t.into();
        }
        if self.min_survivors.is_some() {
            c.min_survivors = self.min_survivors;
        }
        if let Some(n) = self.dp_noise {
            c.dp_noise = n.into();
        }
        if let Some(p) = self.prg {
            c.prg = p.into();
        }
        if self.bits.is_some() {
            c.bits = self.bits;
        }
        if self.server_momentum.is_some() {
            c.server_momentum = self.server_momentum;
        }
        for (dst, src) in [
            (&mut c.tls_cert, self.tls_cert),
            (&mut c.tls_key, self.tls_key),
            (&mut c.tls_client_ca, self.tls_client_ca),
            (&mut c.tokens_file, self.tokens_file),
            (&mut c.identities_file, self.identities_file),
        ] {
            if src.is_some() {
                *dst = src;
            }
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.rounds.is_some() {
            c.rounds = self.rounds;
        }
        c.insecure_dev |= self.insecure_dev;
        if let Err(e) = c.validate() {
            usage!("{e}");
        }
        Ok(c)
    }
}

/// Sets up logging to stderr.
pub(crate) fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour codes only for a terminal: a log file or journal gets
        // plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log.as_deref());
    let config = args.into_config()?;
    if config.insecure_dev {
        eprintln!(
            "WARNING: --insecure-dev: no TLS and no client authentication on {}. \
             For local experiments only.",
            config.listen
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = match tessera_server::start(config).await {
            Ok(server) => server,
            // A setting refused once the data directory is open (checked at
            // the stored model's dimension) is a usage error too.
            Err(tessera_server::ServeError::Config(e)) => usage!("{e}"),
            Err(e) => return Err(anyhow::Error::new(e).context("starting the server")),
        };
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}", server.local_addr())?;
            out.flush()?;
        }
        tokio::select! {
            result = server_wait(server) => result,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: shutting down");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn server_wait(server: tessera_server::RunningServer) -> anyhow::Result<ExitCode> {
    server.wait().await.context("server stopped")?;
    Ok(ExitCode::SUCCESS)
}
