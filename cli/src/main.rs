//! `tessera`, the one command users type.
//!
//! Its subcommands: `demo` is the main job (federated training of a burn
//! model by a real server and real clients over gRPC, with secure
//! aggregation, dropouts and differential privacy); `simulate` runs whole secure aggregation rounds in
//! process (every client and the server, through the same state machines a
//! deployment uses) and reports their cost; `params` asks the SecAgg+
//! parameter finder which neighbour graph and threshold a round of n clients
//! needs; `privacy` answers the privacy accountant's questions (epsilon,
//! noise multiplier, rounds); `serve`, `join` and `inspect` run and examine
//! a real server and clients over gRPC; `model get` downloads a published
//! model as safetensors; `migrate` seals a data directory an
//! older build wrote; `token` and `cert` make credentials.
//!
//! Exit codes: 0 on success (an aborted round is a normal outcome of the
//! protocol, not a failure of the command), 2 for bad flags or parameters
//! (clap's own convention), 1 for anything else (an IO error, a protocol
//! error between honest parties, a completed round whose sum is wrong).

mod args;
mod connect;
mod demo;
mod inspect;
mod join;
mod keys;
mod migrate;
mod model;
mod params;
mod privacy;
mod report;
mod serve;
mod simulate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An error in what the user asked for (exit code 2), as opposed to a failure
/// while doing it (exit code 1).
///
/// Clap reports malformed flags itself; this covers the checks that need
/// several flags at once or the library's verdict on them.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a [`UsageError`] from a function that returns
/// `anyhow::Result`.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// The command line, as clap parses it.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Secure aggregation for federated learning (SecAgg / SecAgg+)",
    long_about = "Tessera lets a server learn the sum of many clients' vectors and nothing \
        else, even when clients drop out mid-round: the protocol of Bonawitz et al. (CCS 2017) \
        with the sparse neighbour graphs of SecAgg+ (Bell et al., CCS 2020). `demo` is the main \
        job: a server and 20 clients train a model together over gRPC with secure aggregation, \
        dropouts and distributed differential privacy. This command also runs \
        whole rounds in process to measure their cost (`simulate`) and chooses the neighbour \
        graph and Shamir threshold for a round (`params`), and accounts for the differential \
        privacy a training job spends (`privacy`). `serve` runs the aggregation server for real \
        clients over gRPC, `join` is a command-line client, `model get` downloads a published \
        model, `inspect` reads a server's data directory, and `token` / `cert` make the credentials a server needs.",
    after_help = "Examples:\n  \
        tessera demo                                       # the main job: 20 clients train together, 30 rounds\n  \
        tessera simulate                                   # 100 clients, d = 100,000, 10% drop at masked-input\n  \
        tessera simulate --clients 1000 --rounds 5 --out results/\n  \
        tessera params --clients 1000 --dropout-rate 0.05 --corrupt-rate 0.05\n  \
        tessera privacy epsilon --noise-multiplier 1.1 --sampling-rate 0.01 --rounds 1000 --delta 1e-5\n  \
        tessera serve --listen 127.0.0.1:0 --data-dir /tmp/t --dim 1000 --min-clients 3 --insecure-dev\n  \
        tessera join --server http://127.0.0.1:PORT --random 1000 --rounds 2\n  \
        tessera model get --server http://127.0.0.1:PORT --out model.safetensors\n  \
        tessera inspect --data-dir /tmp/t"
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// The main job: federated training with secure aggregation and DP.
    #[command(about = demo::ABOUT, long_about = demo::LONG_ABOUT, after_help = demo::EXAMPLES)]
    Demo(Box<demo::DemoArgs>),
    /// Run secure aggregation rounds in process and report their cost.
    #[command(
        about = simulate::ABOUT,
        long_about = simulate::LONG_ABOUT,
        after_help = simulate::EXAMPLES
    )]
    Simulate(simulate::SimulateArgs),
    /// Choose the neighbour graph and threshold for a round.
    #[command(
        about = params::ABOUT,
        long_about = params::LONG_ABOUT,
        after_help = params::EXAMPLES
    )]
    Params(params::ParamsArgs),
    /// Account for differential privacy.
    #[command(
        about = privacy::ABOUT,
        long_about = privacy::LONG_ABOUT,
        after_help = privacy::EXAMPLES
    )]
    Privacy(privacy::PrivacyArgs),
    /// Run the aggregation server.
    #[command(about = serve::ABOUT, long_about = serve::LONG_ABOUT, after_help = serve::EXAMPLES)]
    Serve(Box<serve::ServeArgs>),
    /// Join rounds as a client.
    #[command(about = join::ABOUT, long_about = join::LONG_ABOUT, after_help = join::EXAMPLES)]
    Join(join::JoinArgs),
    /// Download published models.
    #[command(about = model::ABOUT, long_about = model::LONG_ABOUT, after_help = model::EXAMPLES)]
    Model(model::ModelArgs),
    /// Inspect a server's data directory.
    #[command(about = inspect::ABOUT, long_about = inspect::LONG_ABOUT, after_help = inspect::EXAMPLES)]
    Inspect(inspect::InspectArgs),
    /// Seal a data directory an older build wrote without MACs.
    #[command(about = migrate::ABOUT, long_about = migrate::LONG_ABOUT, after_help = migrate::EXAMPLES)]
    Migrate(migrate::MigrateArgs),
    /// Create a client token.
    #[command(about = keys::TOKEN_ABOUT, long_about = keys::TOKEN_LONG_ABOUT, after_help = keys::TOKEN_EXAMPLES)]
    Token(keys::TokenArgs),
    /// Write a self-signed TLS certificate.
    #[command(about = keys::CERT_ABOUT, long_about = keys::CERT_LONG_ABOUT, after_help = keys::CERT_EXAMPLES)]
    Cert(keys::CertArgs),
    /// Make a client identity for malicious-server rounds.
    #[command(about = keys::KEYGEN_ABOUT, long_about = keys::KEYGEN_LONG_ABOUT, after_help = keys::KEYGEN_EXAMPLES)]
    Keygen(keys::KeygenArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => exit_on_parse_error(&error),
    };
    let result = match cli.command {
        Command::Demo(args) => demo::run(*args),
        Command::Simulate(args) => simulate::run(args),
        Command::Params(args) => params::run(args),
        Command::Privacy(args) => privacy::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Join(args) => join::run(args),
        Command::Model(args) => model::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Token(args) => keys::run_token(args),
        Command::Cert(args) => keys::run_cert(args),
        Command::Keygen(args) => keys::run_keygen(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            if is_broken_pipe(&error) {
                // `tessera simulate --json | head -1`: the reader has all it
                // wanted; nothing went wrong.
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", render(&error));
            if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints clap's error (or help) and exits as clap does, adding the
/// environment variable a bad value came from: clap names only the flag,
/// which the operator did not type.
fn exit_on_parse_error(error: &clap::Error) -> ! {
    let _ = error.print();
    if let Some(var) = env_source(error) {
        eprintln!("note: the value came from the environment variable {var}");
    }
    std::process::exit(error.exit_code())
}

/// The environment variable that gave the value `error` refuses, if the
/// value came from one (the flag is not on the command line, its variable
/// is set).
fn env_source(error: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--min-clients <N>": the flag is the first word.
    let flag = arg.split_whitespace().next()?;
    if std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
        return None;
    }
    let command = Cli::command();
    command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .filter(|a| a.get_long().is_some_and(|long| format!("--{long}") == flag))
        .filter_map(|a| a.get_env())
        .find(|var| std::env::var_os(var).is_some())
        .map(|var| var.to_string_lossy().into_owned())
}

/// The error and its causes on one line, `outer: inner: ...`, each said
/// once.
///
/// Many library errors put their cause in their own message and also return
/// it as their source (`"TLS: {0}"` over a `#[from]`), so anyhow's `{:#}`
/// would print the same text two or three times; a cause whose text ends
/// the previous one's is already said.
fn render(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if previous.is_empty() || !previous.ends_with(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        previous = text;
    }
    line
}

/// True when the error is a write to a closed pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
