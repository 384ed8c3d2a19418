//! The smallest client an edge app writes with `tessera-client` (no ML
//! crate): fetch the global model, compute an update, take part in one
//! round. Run a server first, e.g.
//!
//! ```text
//! tessera serve --listen 127.0.0.1:7443 --data-dir /tmp/edge --dim 1000 --min-clients 3 --insecure-dev
//! cargo run -p tessera-examples --example edge_client -- http://127.0.0.1:7443   # in three shells
//! ```
//!
//! Against a real deployment set `TESSERA_CA` (the CA's PEM file) and
//! `TESSERA_TOKEN`, and use an `https://` URL. A token over plain `http://`
//! is sent only to a loopback address, and only with `TESSERA_INSECURE_DEV=1`.

use tessera_client::Client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7443".to_owned());
    let mut builder = Client::builder(url);
    if let Ok(ca) = std::env::var("TESSERA_CA") {
        builder = builder.tls_ca_pem(std::fs::read(ca)?);
    }
    if let Ok(token) = std::env::var("TESSERA_TOKEN") {
        builder = builder.token(token);
    }
    if std::env::var_os("TESSERA_INSECURE_DEV").is_some_and(|v| v == "1") {
        builder = builder.insecure_loopback();
    }
    let client = builder.build()?;

    let global = client.latest_model().await?;
    // The app's own training produces this; a small fixed step stands in.
    let update: Vec<f32> = (0..global.dim())
        .map(|i| if i % 2 == 0 { 0.01 } else { -0.01 })
        .collect();
    let outcome = client.participate(&update).await?;
    println!(
        "round {}: {} clients in the sum, model v{} published (started from v{}); clipped: {}",
        outcome.round_id, outcome.survivors, outcome.model_version, global.version, outcome.clipped
    );
    Ok(())
}
