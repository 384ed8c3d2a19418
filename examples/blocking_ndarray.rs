//! A client without an async runtime that keeps its model as named
//! `ndarray` arrays: `tessera_client::blocking` with the SDK's `ndarray`
//! feature. It downloads the global model as arrays, computes an update
//! per tensor, shows its progress (lobby, round, stages) and joins one
//! round. Run a server first, e.g.
//!
//! ```text
//! tessera serve --listen 127.0.0.1:7443 --data-dir /tmp/edge --dim 1000 --min-clients 3 --insecure-dev
//! cargo run -p tessera-examples --example blocking_ndarray -- http://127.0.0.1:7443   # in three shells
//! ```
//!
//! Against a real deployment use an `https://` URL with `TESSERA_TOKEN`,
//! and `TESSERA_CA` (the deployment CA's PEM file) or, for a server with a
//! publicly signed certificate, `TESSERA_SYSTEM_ROOTS=1` (the operating
//! system's trusted roots). A token over plain `http://` is sent only to a
//! loopback address, and only with `TESSERA_INSECURE_DEV=1`.

use std::collections::BTreeMap;

use tessera_client::ndarray::ArrayD;
use tessera_client::{Progress, blocking};

fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7443".to_owned());
    let mut builder = blocking::Client::builder(url).on_progress(show);
    if let Ok(ca) = std::env::var("TESSERA_CA") {
        builder = builder.tls_ca_pem(std::fs::read(ca)?);
    }
    if std::env::var_os("TESSERA_SYSTEM_ROOTS").is_some_and(|v| v == "1") {
        builder = builder.tls_system_roots();
    }
    if let Ok(token) = std::env::var("TESSERA_TOKEN") {
        builder = builder.token(token);
    }
    if std::env::var_os("TESSERA_INSECURE_DEV").is_some_and(|v| v == "1") {
        builder = builder.insecure_loopback();
    }
    let client = builder.build_blocking()?;

    let global = client.latest_model()?;
    let arrays = global.to_arrays()?;
    for (name, array) in &arrays {
        println!("model v{}: {name} {:?}", global.version, array.shape());
    }
    // The app's own training produces this; a small step per tensor
    // stands in, shaped as the model's tensors are.
    let update: BTreeMap<&String, ArrayD<f32>> = arrays
        .iter()
        .map(|(name, weights)| (name, weights.mapv(|w| 0.01 - 0.001 * w)))
        .collect();
    // Matched to the model by name and shape, whatever the order.
    let outcome = client.participate_named(update.iter().map(|(name, a)| (name, a.view())))?;
    println!(
        "round {}: {} clients in the sum, model v{} published; clipped: {}",
        outcome.round_id, outcome.survivors, outcome.model_version, outcome.clipped
    );
    Ok(())
}

/// Progress reports, as an app would show them.
fn show(progress: Progress) {
    match progress {
        Progress::Lobby {
            waiting,
            min_clients,
        } => println!("waiting in the lobby: {waiting} of {min_clients} clients"),
        Progress::RoundStarted {
            round_id, clients, ..
        } => println!("round {round_id} started with {clients} clients"),
        Progress::Stage { round_id, stage } => println!("round {round_id}: {}", stage.name()),
        // Reports a later SDK adds.
        other => println!("{other:?}"),
    }
}
