//! Load: 1,000 concurrent clients on loopback with d = 10,000 complete one
//! round with the SecAgg+ graph the parameter finder picks.
//!
//! Set `TESSERA_LOAD_SERVER=http://HOST:PORT` to aim the clients at a
//! separately started `tessera serve` (to measure the server process's own
//! peak memory, as the README reports); by default the server runs in this
//! process.
//!
//! For the larger figure (5,000 clients at d = 100,000, see
//! `scripts/load-figure.sh`) the scale comes from the environment and the
//! clients are split over several processes so each stays small:
//! `TESSERA_LOAD_CLIENTS` (the round's size, default 1,000),
//! `TESSERA_LOAD_DIM` (default 10,000) and `TESSERA_LOAD_PART=i/n` (this
//! process runs the clients `j` with `j % n == i`; default `0/1`). Parts
//! need an external server: one in-process server per part would make `n`
//! rounds.

use std::time::Instant;

use tessera_tests::{ServerOptions, TestServer, update};

/// The scale of one run, from the environment or the CI defaults.
struct Scale {
    clients: u32,
    dim: u32,
    part: u32,
    parts: u32,
}

impl Scale {
    fn from_env() -> Scale {
        let num = |name: &str, default: u32| -> u32 {
            std::env::var(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}"))
            })
        };
        let (part, parts) = std::env::var("TESSERA_LOAD_PART").map_or((0, 1), |v| {
            let parsed = v
                .split_once('/')
                .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
            match parsed {
                Some((i, n)) if i < n => (i, n),
                _ => panic!("TESSERA_LOAD_PART={v:?} is not i/n with i < n"),
            }
        });
        Scale {
            clients: num("TESSERA_LOAD_CLIENTS", 1000),
            dim: num("TESSERA_LOAD_DIM", 10_000),
            part,
            parts,
        }
    }

    /// The client indices this process runs.
    fn mine(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.clients).filter(|j| j % self.parts == self.part)
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_complete_a_secagg_plus_round() {
    let scale = Scale::from_env();
    let (clients, dim) = (scale.clients, scale.dim);
    let external = std::env::var("TESSERA_LOAD_SERVER").ok();
    assert!(
        scale.parts == 1 || external.is_some(),
        "TESSERA_LOAD_PART needs TESSERA_LOAD_SERVER"
    );
    let local = match &external {
        Some(_) => None,
        None => Some(
            TestServer::start(ServerOptions {
                dim,
                min_clients: clients,
                graph: "auto",
                stage_timeout: std::time::Duration::from_secs(120),
                ..ServerOptions::default()
            })
            .await,
        ),
    };
    let url = external
        .clone()
        .unwrap_or_else(|| local.as_ref().expect("local server").url.clone());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in scale.mine() {
        let client = tessera_client::Client::builder(url.clone())
            .round_timeout(std::time::Duration::from_secs(600))
            .build()
            .expect("client");
        let u = update(dim, u64::from(i));
        tasks.spawn(async move { (i, client.participate(&u).await) });
    }
    // Results in the order they come, so the first failing client fails
    // the test at once with its own error instead of leaving the others
    // to wait for a round that cannot start.
    let mut survivors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, outcome) = joined.expect("client task");
        match outcome {
            Ok(o) => survivors.push(o.survivors),
            Err(e) => panic!(
                "client {i} failed after {:?}: {e} ({e:?})",
                started.elapsed()
            ),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(survivors.iter().all(|&s| s == clients), "{survivors:?}");
    if let Some(ts) = local {
        let rounds = tessera_server::store::inspect(ts.data_dir())
            .unwrap()
            .rounds;
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].survivors, clients);
        ts.server.shutdown().await.unwrap();
    }
    println!(
        "load: {} of {clients} clients, d = {dim}: round in {seconds:.2} s (join to result); \
         peak RSS of this process {:.0} MiB{}",
        survivors.len(),
        peak_rss_mib().unwrap_or(f64::NAN),
        if external.is_some() {
            " (clients only)"
        } else {
            " (server and clients)"
        }
    );
}
