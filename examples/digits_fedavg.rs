//! Federated training of an MLP on the UCI digits with secure aggregation,
//! a dropout every round and distributed differential privacy: the logic
//! of `tessera demo` in one file, with public APIs only.
//!
//! ```text
//! cargo run --release -p tessera-examples --example digits_fedavg
//! ```
//!
//! For brevity the server runs without TLS or tokens (allowed on loopback
//! only); `tessera demo` adds both.

use std::sync::Arc;
use std::time::Duration;

use tessera_client::{Client, Stage};
use tessera_dp::accountant;
use tessera_server::ServerConfig;
use tessera_server::config::{
    DpMode, DpSettings, GraphChoice, NetworkSettings, RoundRules, ThresholdRule,
};
use tessera_server::model::{Model, TensorSpec};
use tessera_server::store::Store;
use tessera_train::data::{self, Partitioning};
use tessera_train::local::{self, Architecture, LocalTraining};
use tessera_train::model::ModelKind;

const CLIENTS: usize = 10;
const ROUNDS: u64 = 10;
const EPSILON: f64 = 8.0;
const DELTA: f64 = 1e-5;
const DROP_STAGES: [Stage; 4] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInput,
    Stage::Unmasking,
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. Data: the digits ship inside smartcore; each client gets a
    //    non-IID share (Dirichlet(0.5) over labels).
    let dataset = data::digits(1);
    let shares = data::partition(
        &dataset.train.labels,
        CLIENTS,
        Partitioning::Dirichlet { alpha: 0.5 },
        1,
    )?;
    let parts: Vec<_> = shares
        .iter()
        .map(|s| Arc::new(dataset.train.select(s)))
        .collect();

    // 2. The model, flattened into the server's initial global model.
    let arch = Architecture {
        kind: ModelKind::Mlp { hidden: 32 },
        height: 8,
        width: 8,
        classes: 10,
    };
    let tensors = tessera_client::burn::tensors(&arch.init(1));
    let specs = tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            shape: t.shape.clone(),
        })
        .collect();
    let model = Model::new(specs, tensors.into_iter().flat_map(|t| t.values).collect())?;
    let dir = tempfile::tempdir()?;
    let (data_dir, key_file) = (dir.path().join("data"), dir.path().join("state.key"));
    let (key, _) = tessera_server::store::StateKey::load_or_create(&key_file)?;
    Store::open(&data_dir, &key)?.init_model(&model)?;

    // 3. The server: clients add discrete Gaussian noise calibrated so that
    //    ROUNDS rounds spend EPSILON; any 9 of the 10 carry enough of it.
    let noise_multiplier = accountant::noise_multiplier(EPSILON, 1.0, ROUNDS, DELTA)?;
    let server = tessera_server::start(ServerConfig {
        data_dir,
        state_key: Some(key_file),
        rounds: Some(ROUNDS),
        network: NetworkSettings {
            listen: "127.0.0.1:0".parse()?,
            insecure_dev: true,
            ..Default::default()
        },
        round: RoundRules {
            min_clients: CLIENTS as u32,
            max_clients: CLIENTS as u32,
            join_window: Duration::ZERO,
            graph: GraphChoice::Complete,
            threshold: ThresholdRule::Count(CLIENTS as u32 - 1),
            clip_norm: 0.5,
            ..Default::default()
        },
        dp: DpSettings {
            mode: DpMode::Distributed,
            noise_multiplier,
            epsilon_budget: EPSILON,
            delta: DELTA,
            ..Default::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    let url = format!("http://{}", server.local_addr());
    let observer = Client::builder(url.clone()).build()?;

    // 4. Rounds: every client trains from the global model and sends
    //    `local - global`; one hangs up at some stage.
    for round in 1..=ROUNDS {
        let global = Arc::new(observer.latest_model().await?.flatten());
        let mut tasks = tokio::task::JoinSet::new();
        for (c, part) in parts.iter().enumerate() {
            let client = Client::builder(url.clone()).build()?;
            let (global, part) = (Arc::clone(&global), Arc::clone(part));
            let drop = (c as u64 == round % CLIENTS as u64)
                .then_some(DROP_STAGES[round as usize % DROP_STAGES.len()]);
            tasks.spawn(async move {
                let seed = round * 1000 + c as u64;
                let base = Arc::clone(&global);
                let (trained, _) = tokio::task::spawn_blocking(move || {
                    local::train(&arch, &base, &part, &LocalTraining::default(), seed)
                })
                .await?;
                let update: Vec<f32> = trained
                    .iter()
                    .zip(global.iter())
                    .map(|(l, g)| l - g)
                    .collect();
                match drop {
                    Some(stage) => client.participate_or_drop(&update, stage).await.map(|_| ()),
                    None => client.participate(&update).await.map(|_| ()),
                }
                .map_err(anyhow::Error::from)
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        // 5. The server published the noised average; evaluate it on the
        //    held-out split (only the trainer has it, not the protocol).
        let published = observer.latest_model().await?;
        let (accuracy, loss) = local::evaluate(&arch, &published.flatten(), &dataset.test);
        println!(
            "round {round:2}: model v{}, accuracy {accuracy:.3}, loss {loss:.3}, epsilon {:.2}",
            published.version, published.epsilon
        );
    }
    server.shutdown().await?;
    Ok(())
}
