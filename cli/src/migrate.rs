//! `tessera migrate`: seals a data directory an older build wrote without
//! MACs, offline (`tessera serve` never does, not even with a state key it
//! just generated), and says what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tessera_server::ServerConfig;
use tessera_server::store::{StateKey, Store};

pub(crate) const ABOUT: &str =
    "Seal a data directory written without MACs (by an older build) under the state key";
pub(crate) const LONG_ABOUT: &str = "Opens a `tessera serve` data directory with the server stopped \
    and authenticates what an older build wrote without MACs: the privacy ledger, the manifest and \
    the round records are tagged with HMAC-SHA256 under the state key, as found. The sealing is \
    recorded, never silent: the ledger gets a `sealed` change and the audit log a `migrated` event \
    naming each file; what the files held before cannot be vouched for. A directory that is already \
    authenticated is verified and left as it is; one with some records authenticated and others not \
    (MACs removed) is refused as tampered. The state key is the one `tessera serve` uses: \
    --state-key, else state.key beside --tls-key, else DIR.state-key beside the data directory; it \
    is generated (mode 0600) if missing. `tessera serve` never does this by itself, not even with a \
    state key it generated at that start (the key may have been deleted by whoever edited the \
    directory): it refuses a directory with unsealed records and points here.";
pub(crate) const EXAMPLES: &str = "Examples:\n  \
    tessera migrate --data-dir /var/lib/tessera --tls-key /etc/tessera/key.pem\n  \
    tessera migrate --data-dir tessera-data --state-key /etc/tessera/state.key";

/// Flags of `tessera migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The server's data directory (the server must be stopped).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The state key file (generated if missing).
    #[arg(long, value_name = "PATH")]
    state_key: Option<PathBuf>,
    /// The server's TLS key, to find the state key beside it.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
}

/// The state key file `tessera serve` would use with these paths.
pub(crate) fn key_path(
    data_dir: &std::path::Path,
    state_key: Option<PathBuf>,
    tls_key: Option<PathBuf>,
) -> PathBuf {
    let mut config = ServerConfig {
        data_dir: data_dir.to_owned(),
        state_key,
        ..ServerConfig::default()
    };
    config.network.tls_key = tls_key;
    config.state_key_path()
}

pub(crate) fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    if !args.data_dir.is_dir() {
        crate::usage!("{} is not a directory", args.data_dir.display());
    }
    let path = key_path(&args.data_dir, args.state_key, args.tls_key);
    let (key, created) =
        StateKey::load_or_create(&path).with_context(|| "loading the state key".to_owned())?;
    if created {
        println!(
            "generated a new state key at {} (keep it, apart from the data directory)",
            path.display()
        );
    }
    let (_store, migration) = Store::migrate(&args.data_dir, &key)
        .with_context(|| format!("migrating {}", args.data_dir.display()))?;
    if migration.sealed.is_empty() {
        println!(
            "{}: already authenticated under {} (every MAC verified); nothing to do",
            args.data_dir.display(),
            path.display()
        );
    } else {
        println!(
            "{}: sealed {} file(s) as found under {} (recorded in the ledger and the audit log):",
            args.data_dir.display(),
            migration.sealed.len(),
            path.display()
        );
        for what in &migration.sealed {
            println!("  {what}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
