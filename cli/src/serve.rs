//! `tessera serve`: runs the aggregation server until interrupted (or for
//! `--rounds` rounds).
//!
//! Its first line on stdout is `listening on ADDR`, with the real port when
//! `--listen` asked for port 0, so scripts and tests can start it and read
//! where to connect. Logs go to stderr (`RUST_LOG` or `--log` sets the level).
//!
//! Signals (handlers are in place before the first line is printed):
//!
//! - `SIGHUP` reloads the tokens file: removed clients are refused from
//!   their next request on; a file that does not load keeps the tokens in
//!   force, and the log says why.
//! - `SIGTERM` or Ctrl-C drains: no new client is admitted, the round in
//!   flight runs to its end (each stage within its deadline), then the
//!   server logs `stopped` and exits 0. A second one ends the round in
//!   flight at once (its clients are told the server is going away).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap::builder::{EnumValueParser, TypedValueParser};
use tessera_aggregation::ThreatModel;
use tessera_aggregation::mask::Prg;
use tessera_server::ServerConfig;
use tessera_server::config::ServerOverrides;

use crate::args::{PrgArg, ThreatArg};
use crate::usage;

pub(crate) const ABOUT: &str = "Run the aggregation server (gRPC) for real clients";
pub(crate) const LONG_ABOUT: &str = "Runs the Tessera aggregation server: clients dial in over \
    gRPC, wait until --min-clients are there, run one secure aggregation round, and the server \
    publishes the FedAvg-updated global model to --data-dir; then the next round opens. \
    A new data directory starts from --initial-model (a safetensors file of float32 tensors, \
    whose names and shapes every published model keeps; the flat update vector is the tensors \
    in name order, each row-major) or from zeros of --dim. \
    Settings come from --config FILE (TOML, keys as the flags with underscores), are \
    overridden by environment variables (TESSERA_ and the flag's name in capitals with \
    underscores: --min-clients is TESSERA_MIN_CLIENTS; none for --insecure-dev, \
    --raise-budget and --recompute-delta, which only a flag can give), and those by flags. \
    TLS and client authentication are required unless --insecure-dev is \
    given, which is refused on a non-loopback address. The first line on stdout is \
    `listening on ADDR`. SIGHUP reloads the tokens file; SIGTERM or Ctrl-C drains (no new \
    clients, the round in flight finishes, exit 0), a second one stops at once.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera serve --listen 127.0.0.1:0 --data-dir /tmp/t --dim 1000 --min-clients 3 --insecure-dev\n  \
    tessera serve --config server.toml\n  \
    tessera serve --listen 127.0.0.1:0 --data-dir /tmp/t --initial-model model.safetensors --min-clients 3 --insecure-dev\n  \
    tessera serve --listen 0.0.0.0:7443 --data-dir /var/lib/tessera --dim 10000 \\\n      \
    --tls-cert cert.pem --tls-key key.pem --tokens-file tokens.txt --min-clients 100";

/// Flags of `tessera serve`: the server's settings, each overriding the
/// config file, between `--config` and `--log`.
#[derive(Debug, Args)]
// The threat model and the PRG take the names (and list the help) every
// subcommand gives them.
#[command(
    mut_arg("threat_model", |arg| arg.value_parser(
        EnumValueParser::<ThreatArg>::new().map(ThreatModel::from)
    )),
    mut_arg("prg", |arg| arg.value_parser(EnumValueParser::<PrgArg>::new().map(Prg::from))),
)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (keys as the flags, with underscores); see
    /// docs/server.toml.
    #[arg(
        long,
        value_name = "FILE",
        env = "TESSERA_CONFIG",
        hide_env_values = true
    )]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServerOverrides,
    /// Log filter (e.g. info, debug, tessera_server=debug); default info, or RUST_LOG.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

impl ServeArgs {
    /// The configuration: defaults, then the file, then the flags; a file
    /// that cannot be read or a configuration that does not validate is a
    /// usage error.
    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            Some(path) => match ServerOverrides::from_file(path) {
                Ok(file) => file,
                Err(e) => usage!("{e}"),
            },
            None => ServerOverrides::default(),
        };
        let config = ServerConfig::from_overrides(self.settings.or(file));
        if let Err(e) = config.validate() {
            usage!("{e}");
        }
        let from_env = settings_from_environment();
        if !from_env.is_empty() {
            // A variable left in an image or a service unit beats the
            // reviewed configuration file (the tokens file, the threat
            // model, DP): say which, so the override is in the log.
            tracing::info!(
                "settings from the environment (over --config, under flags): {}",
                from_env.join(", ")
            );
        }
        Ok(config)
    }
}

/// The `TESSERA_*` variables that gave a setting (or `--config`): set, and
/// their flag not on the command line. Names only: values stay out of the
/// log, as `--help` hides them.
fn settings_from_environment() -> Vec<&'static str> {
    let argv: Vec<String> = std::env::args().collect();
    let given = |key: &str| {
        let flag = format!("--{}", key.replace('_', "-"));
        argv.iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    };
    std::iter::once(("config", Some("TESSERA_CONFIG")))
        .chain(ServerOverrides::ENV_VARS.iter().copied())
        .filter_map(|(key, var)| {
            let var = var?;
            (std::env::var_os(var).is_some() && !given(key)).then_some(var)
        })
        .collect()
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
    let insecure = config.network.insecure_dev;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = match tessera_server::start(config).await {
            Ok(server) => server,
            // A setting refused once the data directory is open (checked at
            // the stored model's dimension) is a usage error too.
            Err(tessera_server::ServeError::Config(e)) => usage!("{e}"),
            // So is an --initial-model file the server cannot train.
            Err(e @ tessera_server::ServeError::InitialModel(_)) => usage!("{e}"),
            Err(e) => return Err(anyhow::Error::new(e).context("starting the server")),
        };
        if insecure {
            // After the bind, so `--listen HOST:0` names the real port.
            eprintln!(
                "WARNING: --insecure-dev: no TLS and no client authentication on {}. \
                 For local experiments only.",
                server.local_addr()
            );
        }
        let signals = Signals::install().context("installing the signal handlers")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}", server.local_addr())?;
            out.flush()?;
        }
        let handler = tokio::spawn(signals.run(server.control()));
        let result = server.wait().await;
        handler.abort();
        result.context("server stopped")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// A signal `tessera serve` answers (none off unix but Ctrl-C).
#[cfg(unix)]
type Sig = tokio::signal::unix::Signal;
#[cfg(not(unix))]
struct Sig;

async fn recv(sig: &mut Sig) {
    #[cfg(unix)]
    sig.recv().await;
    #[cfg(not(unix))]
    {
        let _ = sig;
        std::future::pending::<()>().await;
    }
}

/// The signals `tessera serve` answers; see the module docs.
struct Signals {
    hangup: Sig,
    terminate: Sig,
}

impl Signals {
    /// Registers the handlers (inside the runtime), so a signal sent once
    /// the address is printed is never lost or fatal.
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                hangup: signal(SignalKind::hangup())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {
            hangup: Sig,
            terminate: Sig,
        })
    }

    /// Answers signals until the server stops (the caller aborts this).
    async fn run(self, control: tessera_server::ServerControl) {
        let Signals {
            mut hangup,
            mut terminate,
        } = self;
        let mut draining = false;
        loop {
            let what = tokio::select! {
                () = recv(&mut hangup) => {
                    // Logged by the server, outcome and reason alike.
                    let _ = control.reload_tokens();
                    continue;
                }
                () = recv(&mut terminate) => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "interrupt",
            };
            if draining {
                tracing::warn!("{what} again: ending the round in flight now");
                control.abort();
            } else {
                tracing::info!(
                    "{what}: shutting down once the round in flight ends (send it again to stop at once)"
                );
                control.drain();
                draining = true;
            }
        }
    }
}

#[cfg(test)]
mod extras_flag_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// The extras' switches: bare to switch on, `=false` to switch off
    /// what a file switched on (the command line wins over the file).
    #[test]
    fn extras_switches_parse_bare_and_with_a_value() {
        let w = Wrapper::try_parse_from([
            "serve",
            "--adaptive-clip",
            "--weighting=false",
            "--federated-eval=true",
            "--clip-target-quantile",
            "0.7",
        ])
        .expect("flags parse");
        let s = &w.args.settings;
        assert_eq!(s.adaptive_clip, Some(true));
        assert_eq!(s.weighting, Some(false));
        assert_eq!(s.federated_eval, Some(true));
        assert_eq!(s.clip_target_quantile, Some(0.7));
        assert!(Wrapper::try_parse_from(["serve", "--adaptive-clip=maybe"]).is_err());
    }
}
