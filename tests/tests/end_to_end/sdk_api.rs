//! The SDK's app-facing conveniences against a real server: progress
//! reports in a real round, the blocking client, and updates as named
//! `ndarray` arrays.

use std::sync::{Arc, Mutex};

use tessera_aggregation::Stage;
use tessera_client::ndarray::{ArrayD, IxDyn};
use tessera_client::{Progress, RoundOutcome};
use tessera_tests::{ServerOptions, TestServer, mean, update};

/// The largest error FedAvg over fixed point adds per coordinate (see
/// rounds.rs).
const FIXED_POINT_ERROR: f32 = 1.0 / 65536.0 + 1e-6;

type Reports = Arc<Mutex<Vec<Progress>>>;

/// Checks one client's reports against its round: lobby reports, then
/// the round's start, then each stage once, in protocol order, ending in
/// unmasking.
fn assert_in_order(reports: &[Progress], outcome: &RoundOutcome, clients: u32) {
    let started = reports
        .iter()
        .position(|p| matches!(p, Progress::RoundStarted { .. }))
        .unwrap_or_else(|| panic!("no RoundStarted in {reports:?}"));
    assert!(
        started >= 1,
        "no lobby report before the round: {reports:?}"
    );
    for lobby in &reports[..started] {
        assert!(
            matches!(lobby, Progress::Lobby { waiting, min_clients } if *waiting >= 1 && *min_clients == clients),
            "{reports:?}"
        );
    }
    assert_eq!(
        reports[started],
        Progress::RoundStarted {
            round_id: outcome.round_id,
            client_id: outcome.client_id,
            clients,
        }
    );
    let stages: Vec<Stage> = reports[started + 1..]
        .iter()
        .map(|p| match p {
            Progress::Stage { round_id, stage } if *round_id == outcome.round_id => *stage,
            other => panic!("after the start only this round's stages: {other:?} in {reports:?}"),
        })
        .collect();
    assert_eq!(
        stages,
        [
            Stage::AdvertiseKeys,
            Stage::ShareKeys,
            Stage::MaskedInput,
            Stage::Unmasking
        ],
        "{reports:?}"
    );
}

fn recorder() -> (Reports, impl Fn(Progress) + Send + Sync + 'static) {
    let reports: Reports = Arc::default();
    let sink = reports.clone();
    (reports, move |p| sink.lock().unwrap().push(p))
}

/// Three clients in one round: an async one, a blocking one with a flat
/// update and a blocking one with named arrays, each reporting progress.
/// The published model is the mean of the three updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_blocking_clients_report_progress_in_order_through_a_real_round() {
    let dim = 64;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 3,
        tls_tokens: Some(3),
        ..ServerOptions::default()
    })
    .await;
    let updates: Vec<Vec<f32>> = (0..3).map(|i| update(dim, 40 + i)).collect();
    let (async_reports, on_async) = recorder();
    let (flat_reports, on_flat) = recorder();
    let (named_reports, on_named) = recorder();

    let async_client = ts
        .client_builder(Some(0))
        .on_progress(on_async)
        .build()
        .unwrap();
    let flat_client = ts
        .client_builder(Some(1))
        .on_progress(on_flat)
        .build_blocking()
        .unwrap();
    let named_client = ts
        .client_builder(Some(2))
        .on_progress(on_named)
        .build_blocking()
        .unwrap();
    // Blocking clients run on threads of their own, outside the runtime.
    let flat_update = updates[1].clone();
    let flat = std::thread::spawn(move || flat_client.participate(&flat_update));
    let named_update = ArrayD::from_shape_vec(IxDyn(&[dim as usize]), updates[2].clone()).unwrap();
    let named = std::thread::spawn(move || {
        // The server started from --dim names its one tensor "params".
        let model = named_client.latest_model()?;
        assert_eq!(model.tensors[0].name, "params");
        named_client.participate_named([("params", named_update.view())])
    });
    let async_outcome = async_client.participate(&updates[0]).await.unwrap();
    let flat_outcome = tokio::task::spawn_blocking(move || flat.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    let named_outcome = tokio::task::spawn_blocking(move || named.join().unwrap())
        .await
        .unwrap()
        .unwrap();

    for (reports, outcome) in [
        (&async_reports, &async_outcome),
        (&flat_reports, &flat_outcome),
        (&named_reports, &named_outcome),
    ] {
        assert_eq!(outcome.survivors, 3);
        assert_in_order(&reports.lock().unwrap(), outcome, 3);
    }
    let model = async_client.latest_model().await.unwrap();
    assert_eq!(model.version, async_outcome.model_version);
    let arrays = model.to_arrays().unwrap();
    let published = arrays["params"].as_slice().unwrap();
    let expected = mean(&updates);
    let diff = published
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= FIXED_POINT_ERROR, "differs from FedAvg by {diff}");
}

/// A named update that does not fit the server's model is refused before
/// the client joins a round, naming the tensor; the client stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_update_that_does_not_fit_is_refused_before_joining() {
    let ts = TestServer::start(ServerOptions {
        dim: 8,
        min_clients: 3,
        ..ServerOptions::default()
    })
    .await;
    let (reports, on_progress) = recorder();
    let client = ts
        .client_builder(None)
        .on_progress(on_progress)
        .build()
        .unwrap();
    let short = ArrayD::from_elem(IxDyn(&[7]), 0.1f32);
    let err = client
        .participate_named([("params", short.view())])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("'params' has shape [7], the model's is [8]"),
        "{err}"
    );
    let err = client
        .participate_named([("fc1.weight", short.view())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no tensor 'params'"), "{err}");
    // Nothing joined: no progress was reported.
    assert!(reports.lock().unwrap().is_empty());
    assert_eq!(client.latest_model().await.unwrap().dim(), 8);
}

/// A progress callback that panics (an app's display bug) ends only its
/// own client's call: the panic comes back to the thread that called the
/// blocking client (as a panic in any Rust callback does), the server sees
/// that client drop out and the round goes on without it, and the client,
/// its runtime included, serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_progress_callback_ends_only_its_own_call() {
    let dim = 8;
    let ts = TestServer::start(ServerOptions {
        dim,
        min_clients: 4,
        stage_timeout: std::time::Duration::from_secs(3),
        ..ServerOptions::default()
    })
    .await;
    let panicky = ts
        .client_builder(None)
        .on_progress(|p| {
            if matches!(p, Progress::RoundStarted { .. }) {
                panic!("the app's progress bar broke");
            }
        })
        .build_blocking()
        .unwrap();
    let doomed = update(dim, 9);
    let panicked = std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            panicky.participate(&doomed)
        }));
        (panicky, result.is_err())
    });
    let updates: Vec<Vec<f32>> = (0..3).map(|i| update(dim, 50 + i)).collect();
    let mut rounds = tokio::task::JoinSet::new();
    for u in updates.clone() {
        let client = ts.client_builder(None).build().unwrap();
        rounds.spawn(async move { client.participate(&u).await });
    }
    let outcomes: Vec<RoundOutcome> = rounds
        .join_all()
        .await
        .into_iter()
        .map(|r| r.expect("the others' round completes"))
        .collect();
    assert!(outcomes.iter().all(|o| o.survivors == 3), "{outcomes:?}");
    let (panicky, did_panic) = tokio::task::spawn_blocking(move || panicked.join().unwrap())
        .await
        .unwrap();
    assert!(did_panic, "the callback's panic reaches its caller");
    // The client and its runtime still work: it sees the model the others
    // published, their mean.
    let version = outcomes[0].model_version;
    let fetch = std::thread::spawn(move || panicky.latest_model());
    let model = tokio::task::spawn_blocking(move || fetch.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(model.version, version);
    let expected = mean(&updates);
    for (got, want) in model.flatten().iter().zip(&expected) {
        assert!((got - want).abs() <= FIXED_POINT_ERROR, "{got} vs {want}");
    }
}
