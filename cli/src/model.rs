//! `tessera model get`: downloads a published model from a running server
//! and writes it as safetensors, the format `tessera serve --initial-model`
//! reads, PyTorch's `safetensors.torch.load_file` and NumPy's
//! `safetensors.numpy.load_file` open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use safetensors::tensor::{Dtype, TensorView};
use tessera_client::GlobalModel;

use crate::connect::ConnectionArgs;
use crate::usage;

pub(crate) const ABOUT: &str = "Download published models from a running server";
pub(crate) const LONG_ABOUT: &str = "Works with the models a running Tessera server publishes: \
    `get` downloads one (the latest, or a version) as a safetensors file with the server's \
    tensor names and shapes.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera model get --server https://agg.example.org:7443 --ca-cert ca.pem --token-file my.token --out model.safetensors";

const GET_ABOUT: &str = "Download a published model as safetensors";
const GET_LONG_ABOUT: &str = "Downloads a published model from a running server (the latest, \
    or --version N) and writes it to --out as safetensors: float32 tensors with the names and \
    shapes the server's initial model had, and metadata version, round, epsilon and delta. \
    The file is replaced atomically (written beside it, then renamed), so a reader never \
    sees half a model. Connects with the same flags as `tessera join`.";
const GET_EXAMPLES: &str = "Examples:\n  \
    tessera model get --server https://agg.example.org:7443 --ca-cert ca.pem --token-file my.token --out model.safetensors\n  \
    tessera model get --server http://127.0.0.1:7443 --version 3 --out v3.safetensors";

/// Flags of `tessera model`.
#[derive(Debug, Args)]
pub(crate) struct ModelArgs {
    /// What to do with the server's models.
    #[command(subcommand)]
    command: ModelCommand,
}

/// The subcommands of `tessera model`.
#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Download a published model.
    #[command(about = GET_ABOUT, long_about = GET_LONG_ABOUT, after_help = GET_EXAMPLES)]
    Get(GetArgs),
}

/// Flags of `tessera model get`.
#[derive(Debug, Args)]
struct GetArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The version to download (from 1, the initial model); default: the
    /// latest.
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// Where to write the model (safetensors); replaced atomically.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

pub(crate) fn run(args: ModelArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ModelCommand::Get(args) => get(args),
    }
}

fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    if args.version == Some(0) {
        usage!("--version counts from 1 (the initial model); leave it out for the latest");
    }
    let client = match args.connection.builder()?.build() {
        Ok(c) => c,
        Err(e) => usage!("{e}"),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let what = match args.version {
        Some(v) => format!("model version {v}"),
        None => "the latest model".to_owned(),
    };
    let model = runtime
        .block_on(client.model(args.version.unwrap_or(0)))
        .with_context(|| format!("downloading {what} from {}", args.connection.server))?;
    write_safetensors(&args.out, &model)?;
    println!(
        "model version {} (round {}, epsilon {}) written to {}: {} tensors, {} values",
        model.version,
        model.round,
        model.epsilon,
        args.out.display(),
        model.tensors.len(),
        model.dim()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `model` to `path` as safetensors (float32 tensors, the server's
/// names and shapes; metadata version, round, epsilon, delta), atomically:
/// a temporary file beside it, fsynced, renamed over it.
pub(crate) fn write_safetensors(path: &Path, model: &GlobalModel) -> anyhow::Result<()> {
    let bytes: Vec<Vec<u8>> = model
        .tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = model
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| TensorView::new(Dtype::F32, t.shape.clone(), b).map(|v| (t.name.as_str(), v)))
        .collect::<Result<Vec<_>, _>>()
        .context("the server's model has a tensor whose shape does not match its values")?;
    let metadata = HashMap::from([
        ("version".to_owned(), model.version.to_string()),
        ("round".to_owned(), model.round.to_string()),
        ("epsilon".to_owned(), model.epsilon.to_string()),
        ("delta".to_owned(), model.delta.to_string()),
        (
            "epsilon_against".to_owned(),
            model.epsilon_against.map_or("", |a| a.name()).to_owned(),
        ),
    ]);
    let encoded = safetensors::serialize(views, Some(metadata))
        .context("encoding the model as safetensors")?;
    tessera_server::files::write_atomic(path, &encoded)
        .with_context(|| format!("writing the model to {}", path.display()))
}
