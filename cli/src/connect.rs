//! The flags that say how to reach a server and prove who this client is,
//! shared by every command that talks to one (`tessera join`, `tessera
//! model get`), so they are defined, documented and checked once.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tessera_client::{Client, ClientBuilder};

/// How to reach the server: its URL, TLS trust, client certificate and
/// bearer token.
#[derive(Debug, Args)]
pub(crate) struct ConnectionArgs {
    /// Server URL: http://HOST:PORT (insecure-dev servers) or https://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub(crate) server: String,
    /// Bearer token (prefer --token-file: command lines are visible to other users).
    #[arg(long, value_name = "T", conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow --token/--token-file over a plain http:// URL to a server on
    /// this machine (a loopback host: 127.0.0.0/8, ::1, localhost), for a
    /// local experiment against `tessera serve --insecure-dev`. Without it a
    /// token is sent over https only.
    #[arg(long)]
    insecure_dev: bool,
    /// CA certificate (PEM) to verify an https server with.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mTLS (its --tls-client-ca).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Server name to verify in its certificate (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    tls_domain: Option<String>,
}

impl ConnectionArgs {
    /// A client builder for the server, with these credentials; files that
    /// cannot be read are errors naming them.
    pub(crate) fn builder(&self) -> anyhow::Result<ClientBuilder> {
        let mut builder = Client::builder(self.server.clone());
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if let Some(token) = token {
            builder = builder.token(token);
        }
        if self.insecure_dev {
            builder = builder.insecure_loopback();
        }
        if let Some(ca) = &self.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            builder = builder.tls_ca_pem(pem);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            let cert_pem = std::fs::read(cert)
                .with_context(|| format!("reading the client certificate {}", cert.display()))?;
            let key_pem = std::fs::read(key)
                .with_context(|| format!("reading the client key {}", key.display()))?;
            builder = builder.tls_identity(cert_pem, key_pem);
        }
        if let Some(domain) = &self.tls_domain {
            builder = builder.tls_domain(domain.clone());
        }
        Ok(builder)
    }
}
