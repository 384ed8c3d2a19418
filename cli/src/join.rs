//! `tessera join`: a command-line client. It joins `--rounds` rounds of a
//! running `tessera serve`, each with the update from `--update FILE.npy`
//! or a random one of `--random D` values, and prints one line per round.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tessera_aggregation::identity::{IdentityKey, parse_allow_list};

use anyhow::Context;
use clap::Args;
use rand::{RngExt, SeedableRng};
use tessera_client::{
    ClientError, DEFAULT_ASSUME_CORRUPT, DEFAULT_MAX_CLIENTS, DEFAULT_MIN_CLIENTS,
    DEFAULT_MIN_SURVIVORS, Policy, RetryPolicy,
};

use crate::args::{ThreatArg, parse_rate};
use crate::connect::ConnectionArgs;
use crate::usage;

pub(crate) const ABOUT: &str = "Join rounds of a running server as a client";
pub(crate) const LONG_ABOUT: &str = "Connects to a Tessera server, joins the next round with an \
    update vector and runs it to the end, --rounds times. The update comes from a NumPy .npy \
    file (float32 or float64, any shape, flattened in C order) or is random (--random D, \
    uniform in [-0.5, 0.5)/sqrt(D) per coordinate so its norm stays below 1). Prints one line \
    per round (or JSON with --json). Before any key leaves it, the client checks each round \
    against its own policy (the round policy flags: threat model, assumed colluders, clients, \
    threshold, survivors, DP noise) and refuses a round outside it with an error naming the \
    rule. Exit code 0 when every round completed, 1 otherwise, 2 for invalid flags.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera join --server http://127.0.0.1:7443 --random 1000 --rounds 3\n  \
    tessera join --server https://agg.example.org:7443 --ca-cert ca.pem --token-file my.token --update grad.npy\n  \
    tessera join --server https://agg.example.org:7443 --ca-cert ca.pem --token-file my.token --update grad.npy --model-out global.safetensors";

/// Printed when `--update` is sent in several rounds without
/// `--require-dp`.
const RESEND_WARNING: &str = "warning: --rounds sends the same --update in every round, and without DP \
    (--require-dp) anyone who sees two published models from rounds whose clients differ only by \
    this one can recover the update by subtracting them";

/// Flags of `tessera join`.
#[derive(Debug, Args)]
pub(crate) struct JoinArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The update, as a NumPy .npy file.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "random",
        required_unless_present = "random"
    )]
    update: Option<PathBuf>,
    /// A random update of D values.
    #[arg(long, value_name = "D")]
    random: Option<u32>,
    /// Rounds to join, one after the other.
    #[arg(long, default_value_t = 1, value_name = "R")]
    rounds: u32,
    /// Seed for --random (default: fresh randomness).
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// Longest wait for one round, lobby included, in seconds; each
    /// keep-alive the server sends while the client waits in its lobby
    /// restarts it.
    #[arg(long, default_value_t = 600, value_name = "S")]
    round_timeout: u64,
    /// Print one JSON object per round.
    #[arg(long)]
    json: bool,
    /// Before each round, fetch the latest published model (the one this
    /// round trains from) and write it to PATH as safetensors (float32
    /// tensors with the server's names and shapes), replacing the file
    /// atomically each round.
    #[arg(long, value_name = "PATH")]
    model_out: Option<PathBuf>,
    /// This client's identity key (from `tessera keygen`), for servers that
    /// run the malicious-server threat model.
    #[arg(long, value_name = "FILE", requires = "trusted_identities")]
    identity: Option<PathBuf>,
    /// The allow-list of enrolled identities (`NAME ed25519:HEX` lines, the
    /// server's --identities-file) to check the round's other clients
    /// against.
    #[arg(long, value_name = "FILE", requires = "identity")]
    trusted_identities: Option<PathBuf>,
    /// The weakest threat model to take part in (default:
    /// semi-honest, or malicious-server with --identity). A round below it
    /// is refused before any key leaves this client.
    #[arg(long, value_enum, value_name = "MODEL", help_heading = "Round policy")]
    min_threat_model: Option<ThreatArg>,
    /// The fraction of every round's clients assumed to collude
    /// with the server, whatever the server states; a round's threshold
    /// must hold against floor(RATE * n) colluders.
    #[arg(long, value_name = "RATE", value_parser = parse_rate,
          default_value_t = DEFAULT_ASSUME_CORRUPT, help_heading = "Round policy")]
    assume_corrupt: f64,
    /// The fewest clients a round may have (at least 3).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_CLIENTS, help_heading = "Round policy")]
    min_clients: u32,
    /// The most clients a round may have (bounds what this client
    /// allocates for its peers).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS, help_heading = "Round policy")]
    max_clients: u32,
    /// The fewest inputs a published sum containing this client's input
    /// may hold, as the round's survivor floor states it (at least 3).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_SURVIVORS, help_heading = "Round policy")]
    min_survivors: u32,
    /// Take part only in rounds with distributed DP (each client
    /// adds noise before masking, so it holds against the server).
    #[arg(long, help_heading = "Round policy")]
    require_dp: bool,
    /// With --require-dp: the smallest per-client noise multiplier,
    /// i.e. the std of the noise this client adds over the L2 sensitivity
    /// of its clipped, scaled, rounded update (the round's norm bound).
    /// Default 0: any positive noise.
    #[arg(
        long,
        value_name = "Z",
        requires = "require_dp",
        help_heading = "Round policy"
    )]
    min_noise_multiplier: Option<f64>,
}

/// Reads a little-endian float32/float64 .npy file (format 1.0-3.0, C order).
///
/// Written here rather than pulled from a crate: the client needs one
/// dtype family of one layout, which is a 40-line header parse.
pub(crate) fn read_npy(path: &Path) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{} is not a supported .npy file: {why}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order; save it with np.ascontiguousarray"));
    }
    let data = &bytes[start + header_len..];
    let values: Vec<f32> = if header.contains("'<f4'") {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    } else if header.contains("'<f8'") {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()
    } else {
        return Err(bad(
            "dtype must be little-endian float32 ('<f4') or float64 ('<f8')",
        ));
    };
    if values.is_empty() {
        return Err(bad("no values"));
    }
    Ok(values)
}

fn random_update(dim: u32, rng: &mut impl RngExt) -> Vec<f32> {
    let scale = 1.0 / (dim as f32).sqrt();
    (0..dim)
        .map(|_| (rng.random::<f32>() - 0.5) * scale)
        .collect()
}

pub(crate) fn run(args: JoinArgs) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 {
        usage!("--rounds must be at least 1");
    }
    if args.random == Some(0) {
        usage!("--random must be at least 1");
    }
    let fixed_update = match &args.update {
        Some(path) => Some(read_npy(path)?),
        None => None,
    };
    if fixed_update.is_some() && args.rounds > 1 && !args.require_dp {
        // Two published models whose rounds' cohorts differ by this client
        // alone differ by its update: a minimum aggregate size cannot stop
        // that, only noise can.
        eprintln!("{RESEND_WARNING}");
    }
    let mut builder = args
        .connection
        .builder()?
        .round_timeout(Duration::from_secs(args.round_timeout))
        .retry(RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        });
    if let (Some(key_file), Some(list)) = (&args.identity, &args.trusted_identities) {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(key_file)
                .with_context(|| format!("reading {}", key_file.display()))?,
        );
        let key = match IdentityKey::from_key_file(&text) {
            Ok(key) => key,
            Err(e) => usage!("{}: {e}", key_file.display()),
        };
        let text =
            std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
        let trusted = match parse_allow_list(&text) {
            Ok(list) => list.into_iter().map(|e| e.key).collect(),
            Err(e) => usage!("{}: {e}", list.display()),
        };
        builder = builder.identity(key).trusted_identities(trusted);
    }
    builder = builder.policy(Policy {
        threat_model: args.min_threat_model.map(Into::into),
        assume_corrupt: args.assume_corrupt,
        min_clients: args.min_clients,
        max_clients: args.max_clients,
        min_survivors: args.min_survivors,
        require_dp: args.require_dp,
        min_noise_multiplier: args.min_noise_multiplier.unwrap_or(0.0),
    });
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => usage!("{e}"),
    };
    let mut rng = match args.seed {
        Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
        None => rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
            .context("OS randomness unavailable")?,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut failed = 0u32;
    for round in 1..=args.rounds {
        let update = match (&fixed_update, args.random) {
            (Some(u), _) => u.clone(),
            (None, Some(d)) => random_update(d, &mut rng),
            (None, None) => unreachable!("clap requires --update or --random"),
        };
        if let Some(path) = &args.model_out {
            let model = runtime
                .block_on(client.latest_model())
                .with_context(|| format!("fetching the model for round attempt {round}"))?;
            crate::model::write_safetensors(path, &model)?;
        }
        match participate_when_eligible(&runtime, &client, &update, round, args.json) {
            Ok(outcome) => {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "attempt": round,
                            "round": outcome.round_id,
                            "outcome": "completed",
                            "client_id": outcome.client_id,
                            "survivors": outcome.survivors,
                            "model_version": outcome.model_version,
                            "clipped": outcome.clipped,
                        })
                    );
                } else {
                    println!(
                        "round {}: completed as client {} with {} survivors; model version {} published{}",
                        outcome.round_id,
                        outcome.client_id,
                        outcome.survivors,
                        outcome.model_version,
                        if outcome.clipped {
                            " (update clipped)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Err(e @ (ClientError::RoundAborted { .. } | ClientError::RoundNotStored { .. })) => {
                failed += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"attempt": round, "outcome": "aborted", "error": e.to_string()})
                    );
                } else {
                    println!("attempt {round}: {e}");
                }
            }
            Err(e) => {
                // Unreachable, refused credentials, version mismatch, wrong
                // length: another attempt would fail the same way.
                return Err(anyhow::Error::new(e).context(format!("joining round attempt {round}")));
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Joins a round, waiting out a DP-FTRL tree this client already took part
/// in: the server turns it away until the tree ends (each client takes
/// part at most once per tree), which is not a failure, so the attempt is
/// retried every few seconds without counting against `--rounds`.
fn participate_when_eligible(
    runtime: &tokio::runtime::Runtime,
    client: &tessera_client::Client,
    update: &[f32],
    attempt: u32,
    json: bool,
) -> Result<tessera_client::RoundOutcome, ClientError> {
    let mut wait = Duration::from_secs(1);
    let mut told = false;
    loop {
        match runtime.block_on(client.participate(update)) {
            Err(ClientError::NotEligible { rounds_left, .. }) => {
                if !told {
                    told = true;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"attempt": attempt, "outcome": "waiting", "reason": "already in the current DP-FTRL tree", "rounds_left": rounds_left})
                        );
                    } else {
                        println!(
                            "attempt {attempt}: waiting: this client already took part in the current DP-FTRL tree (at most {rounds_left} rounds left)"
                        );
                    }
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}
