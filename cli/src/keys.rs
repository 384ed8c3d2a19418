//! `tessera token` and `tessera cert`: the credentials an operator hands
//! out. A token is printed once and only its SHA-256 goes into the tokens
//! file; a self-signed certificate lets a small deployment or a demo run TLS
//! without a CA.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rand::SeedableRng;
use tessera_aggregation::identity::Enrolled;
use tessera_server::{auth, tls};

pub(crate) const TOKEN_ABOUT: &str =
    "Create a client's bearer token and add its hash to a tokens file";
pub(crate) const TOKEN_LONG_ABOUT: &str = "Generates a random bearer token for client NAME, \
    appends `NAME sha256:HASH` to the tokens file (created with mode 0600 if missing) and \
    prints the token once on stdout. The server stores and compares only hashes; give the \
    token to the client (tessera join --token-file). With --expires-in the line ends with \
    `expires=YYYY-MM-DDTHH:MM:SSZ` (UTC) and the server refuses the token from then on. A \
    running server reads the file again on SIGHUP: delete a client's line and send SIGHUP to \
    revoke its token without a restart.";
pub(crate) const TOKEN_EXAMPLES: &str = "Example:\n  \
    tessera token --tokens-file tokens.txt hospital-7 > hospital-7.token\n  \
    tessera token --tokens-file tokens.txt --expires-in 30d contractor-2 > contractor-2.token";

/// Flags of `tessera token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The tokens file the server reads (--tokens-file of `tessera serve`).
    #[arg(long, value_name = "FILE")]
    tokens_file: PathBuf,
    /// The token expires this long from now: a number and a unit, s, m,
    /// h, d or w (e.g. 90m, 12h, 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires_in: Option<std::time::Duration>,
    /// The client's name: 1-64 characters of A-Z a-z 0-9 . _ -
    #[arg(value_name = "NAME")]
    name: String,
}

/// `--expires-in`: a positive whole number and one unit.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "'{text}' is not a duration: expected a number and a unit, s, m, h, d or w (e.g. 30d)"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(unit) {
        Some(0) => Err(format!("'{text}': a token must not expire at once")),
        Some(secs) if secs <= 100 * 365 * 86_400 => Ok(std::time::Duration::from_secs(secs)),
        _ => Err(format!("'{text}' is more than 100 years")),
    }
}

pub(crate) fn run_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let mut rng = rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .context("OS randomness unavailable")?;
    let token = auth::generate_token(&mut rng);
    let expires = args
        .expires_in
        .map(|after| auth::Expiry::after(std::time::SystemTime::now(), after));
    if let Err(e) = auth::append_token_expiring(&args.tokens_file, &args.name, &token, expires) {
        crate::usage!("{e}");
    }
    println!("{}", token.expose());
    let until = expires.map_or(String::new(), |at| format!(", valid until {at}"));
    eprintln!(
        "added {}{until} to {}; the token above is shown only now",
        args.name,
        args.tokens_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) const CERT_ABOUT: &str = "Write a self-signed TLS certificate and key for the server";
pub(crate) const CERT_LONG_ABOUT: &str = "Writes cert.pem and key.pem (mode 0600) into --out for \
    the given host names, for `tessera serve --tls-cert --tls-key`. Clients verify the server \
    with the same cert.pem (`tessera join --ca-cert`). For production, use a certificate from \
    your CA.";
pub(crate) const CERT_EXAMPLES: &str = "Example:\n  \
    tessera cert --out tls/ --host localhost --host agg.internal";

/// Flags of `tessera cert`.
#[derive(Debug, Args)]
pub(crate) struct CertArgs {
    /// Directory to write cert.pem and key.pem into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Host names (or IP addresses) the certificate is valid for.
    #[arg(long = "host", value_name = "HOST", default_value = "localhost")]
    hosts: Vec<String>,
}

pub(crate) fn run_cert(args: CertArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let files =
        tls::write_self_signed(&args.out, &args.hosts).context("writing the certificate")?;
    println!("{}", files.cert.display());
    println!("{}", files.key.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) const KEYGEN_ABOUT: &str =
    "Make a client's Ed25519 identity for malicious-server rounds and print its enrolment line";
pub(crate) const KEYGEN_LONG_ABOUT: &str = "Writes a new Ed25519 signing key to --out (mode 0600; \
    refuses to overwrite) and prints the client's enrolment line `NAME ed25519:HEX` on stdout. \
    The operator appends that line to the allow-list (tessera serve --identities-file) and \
    hands the same allow-list, which holds public keys only, to every client (tessera join \
    --trusted-identities). In a malicious-server round each client signs its keys and the \
    survivor set with this identity and checks every other client's signatures against the \
    allow-list.";
pub(crate) const KEYGEN_EXAMPLES: &str = "Example:\n  \
    tessera keygen --out hospital-7.key hospital-7 >> enrolled.txt";

/// Flags of `tessera keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the secret key (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The client's name in the allow-list: 1-64 printable ASCII characters.
    #[arg(value_name = "NAME")]
    name: String,
}

pub(crate) fn run_keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    if args.name.is_empty()
        || args.name.len() > 64
        || !args.name.chars().all(|c| c.is_ascii_graphic())
    {
        crate::usage!("the name must be 1 to 64 printable ASCII characters without spaces");
    }
    if args.name.contains('#') {
        // The allow-list would read the printed line as (or with) a comment.
        crate::usage!("the name cannot contain `#`: the allow-list starts comments with it");
    }
    let mut rng = rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
        .context("OS randomness unavailable")?;
    let key = tessera_aggregation::identity::IdentityKey::generate(&mut rng);
    // Created, never replaced (so not an atomic rename over an older key):
    // `create_new` refuses an existing file in the same system call.
    let mut file = match tessera_server::files::private_options()
        .write(true)
        .create_new(true)
        .open(&args.out)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            crate::usage!(
                "{} already exists: a key file is never overwritten",
                args.out.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", args.out.display())),
    };
    file.write_all(key.to_key_file().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let line = Enrolled {
        name: args.name.clone(),
        key: key.verifying_key(),
    };
    println!("{line}");
    eprintln!(
        "wrote the secret key to {}; enrol the line above on the server (--identities-file)",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_one_unit_and_refuse_the_rest() {
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        for bad in [
            "",
            "d",
            "10",
            "1.5h",
            "10y",
            "-1d",
            "0s",
            "1d2h",
            "99999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
