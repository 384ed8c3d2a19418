//! The SDK against test doubles of the aggregation server, over real gRPC on
//! loopback sockets: one real round with a real `ServerSession`, and each
//! way a server can refuse a client.

use std::time::{Duration, Instant};

use tessera_aggregation::ThreatModel;
use tessera_aggregation::identity::IdentityKey;
use tessera_aggregation::messages::AbortReason;
use tessera_aggregation::{ClientId, ClientMessage, RoundConfig, ServerEvent, ServerSession};
use tessera_client::{Client, ClientError, RetryPolicy};
use tessera_dp::encoding::FixedPoint;
use tessera_proto::v1::aggregator_server::{Aggregator, AggregatorServer};
use tessera_proto::v1::{self, client_frame, server_frame};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

const TOKEN: &str = "s3cret-token";

/// A server running on 127.0.0.1 until dropped.
struct Running {
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `service` on a fresh loopback port, over TLS when `tls` holds the
/// server's certificate and key (PEM).
async fn serve<S: Aggregator>(service: S, tls: Option<(String, String)>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = oneshot::channel::<()>();
    let mut builder = Server::builder();
    let scheme = if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
        "https"
    } else {
        "http"
    };
    let router = builder.add_service(AggregatorServer::new(service));
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = signal.await;
            })
            .await
            .unwrap();
    });
    Running {
        url: format!("{scheme}://{addr}"),
        shutdown: Some(shutdown),
    }
}

fn check_token<T>(request: &Request<T>) -> Result<(), Status> {
    let expected = format!("Bearer {TOKEN}");
    match request.metadata().get("authorization") {
        Some(value) if value.to_str().ok() == Some(expected.as_str()) => Ok(()),
        _ => Err(tessera_proto::status_with_detail(
            tonic::Code::Unauthenticated,
            "unknown client",
            &detail(v1::ErrorKind::Unauthenticated),
        )),
    }
}

fn detail(kind: v1::ErrorKind) -> v1::ErrorDetail {
    v1::ErrorDetail {
        kind: kind as i32,
        ..Default::default()
    }
}

fn test_model() -> v1::GetModelResponse {
    v1::GetModelResponse {
        version: 5,
        round: 4,
        epsilon: 0.75,
        delta: 1e-6,
        epsilon_against: String::new(),
        proximal_mu: 0.0,
        tensors: vec![
            // In name order, as servers send them (the SDK refuses
            // another order).
            v1::Tensor {
                name: "dense.bias".into(),
                shape: vec![2],
                values: vec![-1.0, -2.0],
            },
            v1::Tensor {
                name: "dense.weight".into(),
                shape: vec![2, 2],
                values: vec![1.0, 2.0, 3.0, 4.0],
            },
        ],
    }
}

type FrameStream = ReceiverStream<Result<v1::ServerFrame, Status>>;

async fn first_join(inbound: &mut Streaming<v1::ClientFrame>) -> Result<v1::Join, Status> {
    match inbound.message().await?.and_then(|f| f.frame) {
        Some(client_frame::Frame::Join(join)) => Ok(join),
        _ => Err(Status::invalid_argument("expected Join")),
    }
}

fn frame(frame: server_frame::Frame) -> Result<v1::ServerFrame, Status> {
    Ok(v1::ServerFrame { frame: Some(frame) })
}

// ---------------------------------------------------------------------------
// A real round.

/// Accepts joins and hands them to the round task.
struct RoundDouble {
    joins: mpsc::Sender<Joined>,
}

struct Joined {
    join: v1::Join,
    inbound: Streaming<v1::ClientFrame>,
    out: mpsc::Sender<Result<v1::ServerFrame, Status>>,
}

#[tonic::async_trait]
impl Aggregator for RoundDouble {
    type ParticipateStream = FrameStream;

    async fn participate(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        check_token(&request)?;
        let mut inbound = request.into_inner();
        let join = first_join(&mut inbound).await?;
        let (out, rx) = mpsc::channel(16);
        self.joins
            .send(Joined { join, inbound, out })
            .await
            .map_err(|_| Status::unavailable("round over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        _: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        Err(Status::unimplemented("not in this double"))
    }
}

/// Runs one round of `n` clients with a real `ServerSession`; returns the
/// decoded mean and the number of contributors.
async fn run_round(mut joins: mpsc::Receiver<Joined>, n: u32) -> (Vec<f32>, u32) {
    let mut clients: Vec<Joined> = Vec::new();
    while clients.len() < n as usize {
        let joined = joins.recv().await.unwrap();
        assert_eq!(
            joined.join.protocol_version,
            tessera_proto::PROTOCOL_VERSION
        );
        clients.push(joined);
        for c in &clients {
            let lobby = v1::Lobby {
                waiting: clients.len() as u32,
                min_clients: n,
            };
            let _ = c.out.send(frame(server_frame::Frame::Lobby(lobby))).await;
        }
    }
    let dim = clients[0].join.dim;
    let fp = FixedPoint::for_clients(n, 4.0, 16).unwrap();
    let mut config = RoundConfig::new(7, n, dim);
    config.bits = fp.bits;
    config.threshold = 3;
    config.stage_timeout = Duration::from_secs(5);
    let mut session = ServerSession::new(config.clone(), Instant::now()).unwrap();

    let (messages_tx, mut messages) = mpsc::channel::<(ClientId, Vec<u8>)>(64);
    let mut outs = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let start = v1::RoundStart {
            protocol_version: tessera_proto::PROTOCOL_VERSION,
            client_id: i as u32,
            config: Some((&config).into()),
            fixed_point: Some((&fp).into()),
            model_version: 4,
            distributed_dp: None,
            identities: Vec::new(),
            proximal_mu: 0.0,
            extras: None,
        };
        c.out
            .send(frame(server_frame::Frame::RoundStart(start)))
            .await
            .unwrap();
        outs.push(c.out);
        let (mut inbound, tx) = (c.inbound, messages_tx.clone());
        tokio::spawn(async move {
            while let Ok(Some(f)) = inbound.message().await {
                if let Some(client_frame::Frame::Message(bytes)) = f.frame {
                    let _ = tx.send((ClientId(i as u32), bytes)).await;
                }
            }
        });
    }

    loop {
        while let Some((to, message)) = session.poll_transmit() {
            let f = frame(server_frame::Frame::Message(message.encode()));
            let _ = outs[to.index()].send(f).await;
        }
        while let Some(event) = session.poll_event() {
            match event {
                ServerEvent::UnmaskingReady => {
                    session.unmask();
                }
                ServerEvent::Completed(output) => {
                    let survivors = output.contributors.len() as u32;
                    for out in &outs {
                        let result = v1::RoundResult {
                            round_id: 7,
                            outcome: v1::Outcome::Completed as i32,
                            survivors,
                            model_version: 5,
                            abort_reason: String::new(),
                            evicted: Vec::new(),
                        };
                        let _ = out.send(frame(server_frame::Frame::Result(result))).await;
                    }
                    return (fp.decode_sum(&output.sum, survivors).mean(), survivors);
                }
                ServerEvent::Aborted { reason, stage, .. } => {
                    panic!("the round aborted in {stage}: {reason}")
                }
                _ => {}
            }
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            Some((from, bytes)) = messages.recv() => {
                let message = ClientMessage::decode(&bytes).unwrap();
                session.handle_message(Instant::now(), from, message).unwrap();
            }
            () = tokio::time::sleep_until(deadline.unwrap().into()), if deadline.is_some() => {
                session.handle_timeout(Instant::now());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_complete_a_real_round() {
    let (joins_tx, joins_rx) = mpsc::channel(8);
    let server = serve(RoundDouble { joins: joins_tx }, None).await;
    let round = tokio::spawn(run_round(joins_rx, 4));

    let dim = 50;
    let updates: Vec<Vec<f32>> = (0..4)
        .map(|c| {
            (0..dim)
                .map(|i| ((c * 7 + i * 3) % 11) as f32 / 40.0 - 0.12)
                .collect()
        })
        .collect();
    let mut calls = Vec::new();
    for (c, update) in updates.iter().cloned().enumerate() {
        let client = Client::builder(server.url.clone())
            .token(TOKEN.into())
            .insecure_loopback()
            .round_timeout(Duration::from_secs(8))
            .rng_seed([c as u8; 32])
            .build()
            .unwrap();
        calls.push(tokio::spawn(
            async move { client.participate(&update).await },
        ));
    }
    let mut client_ids = Vec::new();
    for call in calls {
        let outcome = call.await.unwrap().expect("participate");
        assert_eq!(outcome.round_id, 7);
        assert_eq!(outcome.survivors, 4);
        assert_eq!(outcome.model_version, 5);
        assert!(!outcome.clipped, "norm {} is under 4", outcome.update_norm);
        assert!(outcome.update_norm > 0.0);
        // The round offered no distributed DP.
        assert!(!outcome.client_noise);
        client_ids.push(outcome.client_id);
    }
    client_ids.sort_unstable();
    assert_eq!(client_ids, [0, 1, 2, 3]);

    let (mean, survivors) = round.await.unwrap();
    assert_eq!(survivors, 4);
    assert_eq!(mean.len(), dim);
    // Each client's randomized rounding errs by under one step 2^-16, so
    // the mean does too.
    let step = 1.0 / 65536.0;
    for (i, m) in mean.iter().enumerate() {
        let expected = updates.iter().map(|u| u[i]).sum::<f32>() / 4.0;
        assert!(
            (m - expected).abs() <= step,
            "coordinate {i}: {m} vs {expected}"
        );
    }
}

// ---------------------------------------------------------------------------
// Refusals.

/// What the scripted double does with a Join.
#[derive(Clone)]
enum Script {
    /// Answers with this status (code, kind and detail fields).
    Refuse(tonic::Code, v1::ErrorDetail),
    /// Starts round 12 (client 2 of 3, stages of 50 ms), sends these frames,
    /// then holds the stream open until the client hangs up.
    StartThen(Vec<server_frame::Frame>),
    /// Keeps the client in the lobby.
    LobbyForever,
    /// Starts round 12 with these distributed DP parameters.
    StartWithDp(v1::DistributedDp),
}

impl Script {
    fn start_then_abort() -> Script {
        Script::StartThen(vec![server_frame::Frame::Result(v1::RoundResult {
            round_id: 12,
            outcome: v1::Outcome::Aborted as i32,
            survivors: 1,
            model_version: 0,
            abort_reason: "below-threshold".into(),
            evicted: Vec::new(),
        })])
    }
}

struct ScriptDouble {
    script: Script,
}

#[tonic::async_trait]
impl Aggregator for ScriptDouble {
    type ParticipateStream = FrameStream;

    async fn participate(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        check_token(&request)?;
        let mut inbound = request.into_inner();
        let join = first_join(&mut inbound).await?;
        let (out, rx) = mpsc::channel(8);
        match &self.script {
            Script::Refuse(code, detail) => {
                return Err(tessera_proto::status_with_detail(
                    *code,
                    "refused by the script",
                    detail,
                ));
            }
            Script::StartWithDp(dp) => {
                let mut config = RoundConfig::new(12, 3, join.dim);
                config.min_survivors = 3;
                let fp = FixedPoint::new(1.0, 16, 32).unwrap();
                let start = v1::RoundStart {
                    protocol_version: tessera_proto::PROTOCOL_VERSION,
                    client_id: 2,
                    config: Some((&config).into()),
                    fixed_point: Some((&fp).into()),
                    model_version: 1,
                    distributed_dp: Some(dp.clone()),
                    identities: Vec::new(),
                    proximal_mu: 0.0,
                    extras: None,
                };
                out.send(frame(server_frame::Frame::RoundStart(start)))
                    .await
                    .unwrap();
            }
            Script::StartThen(frames) => {
                let mut config = RoundConfig::new(12, 3, join.dim);
                config.min_survivors = 3;
                config.stage_timeout = Duration::from_millis(50);
                let fp = FixedPoint::new(1.0, 16, 32).unwrap();
                let start = v1::RoundStart {
                    protocol_version: tessera_proto::PROTOCOL_VERSION,
                    client_id: 2,
                    config: Some((&config).into()),
                    fixed_point: Some((&fp).into()),
                    model_version: 1,
                    distributed_dp: None,
                    identities: Vec::new(),
                    proximal_mu: 0.0,
                    extras: None,
                };
                out.send(frame(server_frame::Frame::RoundStart(start)))
                    .await
                    .unwrap();
                for f in frames {
                    out.send(frame(f.clone())).await.unwrap();
                }
            }
            Script::LobbyForever => {
                let lobby = v1::Lobby {
                    waiting: 1,
                    min_clients: 100,
                };
                out.send(frame(server_frame::Frame::Lobby(lobby)))
                    .await
                    .unwrap();
            }
        }
        // Read (and drop) the client's frames; the stream to the client
        // stays open until the client hangs up.
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(out);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        request: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        check_token(&request)?;
        match request.get_ref().version {
            0 | 5 => Ok(Response::new(test_model())),
            _ => Err(tessera_proto::status_with_detail(
                tonic::Code::NotFound,
                "no such version",
                &detail(v1::ErrorKind::NoSuchModel),
            )),
        }
    }
}

async fn scripted(script: Script) -> Running {
    serve(ScriptDouble { script }, None).await
}

fn client(url: &str) -> Client {
    Client::builder(url)
        .token(TOKEN.into())
        .insecure_loopback()
        .round_timeout(Duration::from_secs(5))
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_reported() {
    // A port that was just free: nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = Client::builder(url.clone())
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.participate(&[0.1, 0.2]).await.unwrap_err();
    let ClientError::Unreachable {
        url: err_url,
        attempts,
        message,
    } = &err
    else {
        panic!("expected Unreachable, got {err:?}");
    };
    assert_eq!(err_url, &url);
    assert_eq!(*attempts, 3);
    assert!(!message.is_empty());
    // Two backoffs of 10 ms between the three attempts.
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert!(err.to_string().contains("after 3 attempt"), "{err}");
    // Model downloads are retried the same way.
    let err = client.latest_model().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_auth_refused_and_never_shown() {
    let server = scripted(Script::start_then_abort()).await;
    let client = Client::builder(server.url.clone())
        .token("not-the-token".into())
        .insecure_loopback()
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    let err = client.participate(&[0.5; 4]).await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("not-the-token"));
    let err = client.latest_model().await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err:?}");
    // No token at all: refused the same way.
    let anonymous = Client::builder(server.url.clone()).build().unwrap();
    let err = anonymous.latest_model().await.unwrap_err();
    assert!(matches!(err, ClientError::AuthRefused { .. }), "{err:?}");
}

#[tokio::test]
async fn a_version_mismatch_names_both_versions() {
    let server = scripted(Script::Refuse(
        tonic::Code::FailedPrecondition,
        v1::ErrorDetail {
            kind: v1::ErrorKind::VersionMismatch as i32,
            server_protocol_version: 99,
            ..Default::default()
        },
    ))
    .await;
    let err = client(&server.url)
        .participate(&[0.5; 4])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::VersionMismatch {
            ours: tessera_proto::PROTOCOL_VERSION,
            server: 99
        }
    );
}

#[tokio::test]
async fn a_wrong_update_length_names_the_model_dimension() {
    let server = scripted(Script::Refuse(
        tonic::Code::InvalidArgument,
        v1::ErrorDetail {
            kind: v1::ErrorKind::WrongLength as i32,
            expected: 10,
            ..Default::default()
        },
    ))
    .await;
    let err = client(&server.url)
        .participate(&[0.5; 3])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::UpdateLength {
            expected: 10,
            got: 3
        }
    );
}

#[tokio::test]
async fn other_refusals_keep_their_kind_and_unavailable_is_typed() {
    let server = scripted(Script::Refuse(
        tonic::Code::AlreadyExists,
        detail(v1::ErrorKind::DuplicateClient),
    ))
    .await;
    let err = client(&server.url)
        .participate(&[0.5; 3])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                code: tonic::Code::AlreadyExists,
                kind: v1::ErrorKind::DuplicateClient,
                ..
            }
        ),
        "{err:?}"
    );
    let server = scripted(Script::Refuse(
        tonic::Code::Unavailable,
        detail(v1::ErrorKind::Unavailable),
    ))
    .await;
    let err = client(&server.url)
        .participate(&[0.5; 3])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ServerUnavailable(_)), "{err:?}");
}

#[tokio::test]
async fn an_aborted_round_reports_its_reason() {
    let server = scripted(Script::start_then_abort()).await;
    let err = client(&server.url)
        .participate(&[0.5; 6])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::RoundAborted {
            round_id: 12,
            reason: Some(AbortReason::BelowThreshold),
            evicted: Vec::new(),
        }
    );
}

#[tokio::test]
async fn a_non_finite_update_fails_before_connecting() {
    // Nothing listens here; a connection attempt would be Unreachable.
    let client = Client::builder("http://127.0.0.1:9").build().unwrap();
    assert_eq!(
        client.participate(&[0.0, 1.0, f32::INFINITY]).await,
        Err(ClientError::NonFiniteUpdate { index: 2 })
    );
    assert_eq!(
        client.participate(&[f32::NAN]).await,
        Err(ClientError::NonFiniteUpdate { index: 0 })
    );
}

#[tokio::test]
async fn latest_model_downloads_and_flattens() {
    let server = scripted(Script::start_then_abort()).await;
    let client = client(&server.url);
    let model = client.latest_model().await.unwrap();
    assert_eq!(model.version, 5);
    assert_eq!(model.round, 4);
    assert_eq!(model.epsilon, 0.75);
    assert_eq!(model.tensors[1].name, "dense.weight");
    assert_eq!(model.tensors[1].shape, [2, 2]);
    assert_eq!(model.flatten(), [-1.0, -2.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(model.dim(), 6);
    assert_eq!(client.model(5).await.unwrap(), model);
    assert_eq!(
        client.model(77).await.unwrap_err(),
        ClientError::NoSuchModel { version: 77 }
    );
}

#[tokio::test]
async fn tls_with_the_deployment_ca_and_a_failed_handshake() {
    let server_key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = server_key.cert.pem();
    let tls = (cert_pem.clone(), server_key.signing_key.serialize_pem());
    let server = serve(
        ScriptDouble {
            script: Script::start_then_abort(),
        },
        Some(tls),
    )
    .await;
    // Connecting by IP address: the certificate names "localhost".
    let trusted = Client::builder(server.url.clone())
        .tls_ca_pem(cert_pem.into_bytes())
        .tls_domain("localhost".into())
        .token(TOKEN.into())
        .insecure_loopback()
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    assert_eq!(trusted.latest_model().await.unwrap().version, 5);

    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let untrusting = Client::builder(server.url.clone())
        .tls_ca_pem(other_ca.cert.pem().into_bytes())
        .tls_domain("localhost".into())
        .token(TOKEN.into())
        .insecure_loopback()
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    let err = untrusting.latest_model().await.unwrap_err();
    assert!(
        matches!(err, ClientError::Unreachable { attempts: 1, .. }),
        "{err:?}"
    );
    // A plain-text client cannot talk to a TLS server either.
    let plain = client(&server.url.replace("https", "http"));
    assert!(plain.latest_model().await.is_err());
}

#[tokio::test]
async fn a_silent_server_times_the_round_out() {
    // Stages of 50 ms: the client gives up after 100 ms without a message.
    let server = scripted(Script::StartThen(vec![])).await;
    let started = Instant::now();
    let err = client(&server.url)
        .participate(&[0.5; 3])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::ServerSilent {
            round_id: 12,
            stage: "advertise-keys"
        }
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn the_round_timeout_bounds_the_lobby() {
    let server = scripted(Script::LobbyForever).await;
    let client = Client::builder(server.url.clone())
        .token(TOKEN.into())
        .insecure_loopback()
        .round_timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let err = client.participate(&[0.5; 3]).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::RoundTimeout {
            after: Duration::from_millis(150)
        }
    );
}

#[tokio::test]
async fn a_server_that_breaks_the_protocol_is_refused() {
    // Garbage where a protocol message belongs.
    let server = scripted(Script::StartThen(vec![server_frame::Frame::Message(
        vec![0xff; 7],
    )]))
    .await;
    let err = client(&server.url)
        .participate(&[0.5; 3])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::ServerMisbehaved {
                round_id: Some(12),
                ..
            }
        ),
        "{err:?}"
    );
    // A Lobby frame in the middle of the round.
    let server = scripted(Script::StartThen(vec![server_frame::Frame::Lobby(
        v1::Lobby::default(),
    )]))
    .await;
    let err = client(&server.url)
        .participate(&[0.5; 3])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Lobby frame during the round"),
        "{err}"
    );
}

#[tokio::test]
async fn distributed_dp_calibrated_for_colluders_noise_is_refused() {
    // Noise for 3 survivors in a round that goes on with 3, of which the
    // client assumes 1 colludes with the server (1/3 of 3 clients) and
    // knows its own noise: the server would see a sum carrying two honest
    // clients' noise, two thirds of the variance promised. The server
    // states no colluders; the client counts its own assumption.
    let dp = v1::DistributedDp {
        noise: "discrete-gaussian".into(),
        target_sigma: 65536.0,
        min_survivors: 3,
        norm_bound: 70000.0,
    };
    let server = scripted(Script::StartWithDp(dp.clone())).await;
    let suspicious = Client::builder(&server.url)
        .token(TOKEN.into())
        .insecure_loopback()
        .round_timeout(Duration::from_secs(5))
        .retry(RetryPolicy::NONE)
        .assume_corrupt(0.34)
        .build()
        .unwrap();
    let err = suspicious.participate(&[0.5; 8]).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::ServerMisbehaved { round_id: Some(12), problem }
            if problem.contains("calibrated for 3 honest survivors") && problem.contains("1 may collude")),
        "{err:?}"
    );
}

#[tokio::test]
async fn distributed_dp_parameters_the_samplers_cannot_honour_are_refused() {
    // A norm bound below C 2^f (rounding could never meet it), a noise the
    // client does not know, and a variance beyond the exact sampler: the
    // client refuses the round instead of looping or sending less noise.
    let good = v1::DistributedDp {
        noise: "discrete-gaussian".into(),
        target_sigma: 65536.0,
        min_survivors: 2,
        norm_bound: 70000.0,
    };
    for (dp, needle) in [
        (
            v1::DistributedDp {
                norm_bound: 100.0,
                ..good.clone()
            },
            "norm_bound",
        ),
        (
            v1::DistributedDp {
                noise: "laplace".into(),
                ..good.clone()
            },
            "laplace",
        ),
        (
            v1::DistributedDp {
                target_sigma: 1e30,
                ..good.clone()
            },
            "variance",
        ),
        // Noise for 4 survivors in a round that would go on with 3.
        (
            v1::DistributedDp {
                min_survivors: 4,
                ..good.clone()
            },
            "calibrated for 4 honest survivors",
        ),
    ] {
        let server = scripted(Script::StartWithDp(dp)).await;
        let err = client(&server.url)
            .participate(&[0.5; 8])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::ServerMisbehaved { round_id: Some(12), problem } if problem.contains(needle)),
            "{err:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The client's policy: a RoundStart outside it is refused before any key
// leaves the client.

/// Offers one RoundStart (with the Join's dimension) and reports how many
/// protocol messages the client sent before it hung up: its AdvertiseKeys
/// is the first.
struct OfferDouble {
    start: v1::RoundStart,
    sent: mpsc::Sender<usize>,
}

#[tonic::async_trait]
impl Aggregator for OfferDouble {
    type ParticipateStream = FrameStream;

    async fn participate(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        check_token(&request)?;
        let mut inbound = request.into_inner();
        let join = first_join(&mut inbound).await?;
        let mut start = self.start.clone();
        // A round with extras sums the update and then the extras.
        let extras = start.extras.as_ref().map_or(0, |e| {
            tessera_dp::extras::ExtrasLayout::try_from(e).map_or(0, |l| l.len() as u32)
        });
        if let Some(config) = &mut start.config {
            config.dim = join.dim + extras;
        }
        let (out, rx) = mpsc::channel(8);
        out.send(frame(server_frame::Frame::RoundStart(start)))
            .await
            .unwrap();
        let sent = self.sent.clone();
        tokio::spawn(async move {
            let mut messages = 0;
            while let Ok(Some(f)) = inbound.message().await {
                if let Some(client_frame::Frame::Message(_)) = f.frame {
                    messages += 1;
                }
            }
            let _ = sent.send(messages).await;
            drop(out);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_model(
        &self,
        _: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::GetModelResponse>, Status> {
        Err(Status::unimplemented("not in this double"))
    }
}

/// A RoundStart for round 12 with `config` (stages of 50 ms, so a client
/// that accepts the round gives up soon after sending its advert).
fn offer_of(mut config: RoundConfig, dp: Option<v1::DistributedDp>) -> v1::RoundStart {
    config.round_id = 12;
    config.stage_timeout = Duration::from_millis(50);
    let fp = FixedPoint::new(1.0, 16, 32).unwrap();
    v1::RoundStart {
        protocol_version: tessera_proto::PROTOCOL_VERSION,
        client_id: 0,
        config: Some((&config).into()),
        fixed_point: Some((&fp).into()),
        model_version: 1,
        distributed_dp: dp,
        identities: Vec::new(),
        proximal_mu: 0.0,
        extras: None,
    }
}

/// Runs one call of a client (made by `setup` from a builder) against a
/// server offering `start`: the call's error and the protocol messages the
/// client sent.
async fn offer(
    start: v1::RoundStart,
    setup: impl FnOnce(tessera_client::ClientBuilder) -> tessera_client::ClientBuilder,
) -> (ClientError, usize) {
    let (sent_tx, mut sent) = mpsc::channel(1);
    let server = serve(
        OfferDouble {
            start,
            sent: sent_tx,
        },
        None,
    )
    .await;
    let client = setup(
        Client::builder(server.url.clone())
            .token(TOKEN.into())
            .insecure_loopback()
            .round_timeout(Duration::from_secs(5))
            .retry(RetryPolicy::NONE),
    )
    .build()
    .unwrap();
    let err = client.participate(&[0.1; 8]).await.unwrap_err();
    drop(client);
    let messages = tokio::time::timeout(Duration::from_secs(5), sent.recv())
        .await
        .expect("the double saw the client hang up")
        .expect("a count");
    (err, messages)
}

/// Asserts a refusal by `rule` whose message contains every `needle`, with
/// no protocol message sent.
fn assert_refused(
    (err, messages): (ClientError, usize),
    rule: tessera_client::PolicyRule,
    needles: &[&str],
) {
    assert!(
        matches!(&err, ClientError::PolicyRefused { round_id: 12, rule: r, .. } if *r == rule),
        "expected a {rule} refusal, got {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(rule.name()), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert_eq!(
        messages, 0,
        "the client sent a protocol message (its advert)"
    );
}

/// A round as `tessera serve` offers it: its survivor floor is at least
/// the minimum aggregate, 3.
fn round_of(n: u32, threshold: u32) -> RoundConfig {
    let mut config = RoundConfig::new(12, n, 8);
    config.threshold = threshold;
    config.min_survivors = config.min_survivors.max(3);
    config
}

fn dp_params() -> v1::DistributedDp {
    // Per client: std 65536 / sqrt(2) = 46341 over sensitivity 70000, a
    // per-client noise multiplier of 0.662.
    v1::DistributedDp {
        noise: "discrete-gaussian".into(),
        target_sigma: 65536.0,
        min_survivors: 2,
        norm_bound: 70000.0,
    }
}

fn identity(
    seed: u64,
) -> (
    IdentityKey,
    Vec<tessera_aggregation::identity::IdentityPublicKey>,
) {
    use rand::SeedableRng;
    let key = IdentityKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let public = key.verifying_key();
    (key, vec![public])
}

#[tokio::test]
async fn the_default_policy_accepts_a_normal_round_and_sends_its_advert() {
    // The control for every refusal below: the same double, a round as
    // `tessera serve` opens it for three clients, and the client sends its
    // AdvertiseKeys (then gives up on the silent double).
    let (err, messages) = offer(offer_of(round_of(3, 2), None), |b| b).await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1);
    // And a DP round above the required noise.
    let (err, messages) = offer(offer_of(round_of(3, 2), Some(dp_params())), |b| {
        b.require_dp(0.6)
    })
    .await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1);
}

#[tokio::test]
async fn a_round_of_u32_max_clients_is_refused_without_allocating_for_it() {
    // Today's client would build a neighbour graph of 2^32 clients and
    // abort; the policy bounds n first.
    let started = Instant::now();
    let result = offer(offer_of(round_of(u32::MAX, 3), None), |b| b).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::MaxClients,
        &["4294967295 clients", "at most 100000"],
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The bound is the policy's.
    let result = offer(offer_of(round_of(11, 6), None), |b| {
        b.clients_per_round(3, 10)
    })
    .await;
    assert_refused(
        result,
        tessera_client::PolicyRule::MaxClients,
        &["11 clients", "at most 10"],
    );
}

#[tokio::test]
async fn a_round_of_two_clients_is_refused() {
    let result = offer(offer_of(round_of(2, 2), None), |b| b).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::MinClients,
        &["2 clients", "at least 3"],
    );
}

#[tokio::test]
async fn a_weaker_threat_model_than_the_policy_is_refused() {
    let result = offer(offer_of(round_of(3, 2), None), |b| {
        b.min_threat_model(ThreatModel::SemiMalicious)
    })
    .await;
    assert_refused(
        result,
        tessera_client::PolicyRule::ThreatModel,
        &["semi-honest", "at least semi-malicious"],
    );
    // A client with an identity insists on malicious-server by default.
    let (key, trusted) = identity(1);
    let result = offer(offer_of(round_of(3, 2), None), |b| {
        b.identity(key).trusted_identities(trusted)
    })
    .await;
    assert_refused(
        result,
        tessera_client::PolicyRule::ThreatModel,
        &["at least malicious-server"],
    );
}

#[tokio::test]
async fn a_sparse_graph_in_the_malicious_server_model_is_refused() {
    // Ten enrolled clients on a Harary graph of degree 4, with every
    // identity on the client's allow-list: all the round lacks is the
    // complete graph.
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let keys: Vec<IdentityKey> = (0..10).map(|_| IdentityKey::generate(&mut rng)).collect();
    let trusted: Vec<_> = keys.iter().map(IdentityKey::verifying_key).collect();
    let mut config = round_of(10, 4);
    config.threat_model = ThreatModel::MaliciousServer;
    config.graph = tessera_aggregation::graph::GraphKind::Harary { k: 4 };
    let mut start = offer_of(config, None);
    start.identities = trusted.iter().map(|k| k.to_bytes().to_vec()).collect();
    let key = keys[0].clone();
    let result = offer(start, |b| b.identity(key).trusted_identities(trusted)).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::Graph,
        &["harary(k=4)", "complete graph"],
    );
}

#[tokio::test]
async fn a_threshold_below_the_clients_own_floor_is_refused_whatever_corrupt_the_server_states() {
    // 100 clients, threshold 3, and the server says nobody colludes: the
    // client assumes 5 (5%) and needs t >= 6.
    let mut config = round_of(100, 3);
    config.corrupt = 0;
    let result = offer(offer_of(config, None), |b| b).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::Threshold,
        &["threshold 3 for 100 clients", "5 corrupt", "at least 6"],
    );
    // A client that assumes a fifth colludes refuses a threshold the
    // default accepts.
    let result = offer(offer_of(round_of(100, 6), None), |b| b.assume_corrupt(0.2)).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::Threshold,
        &["20 corrupt", "at least 21"],
    );
}

#[tokio::test]
async fn a_survivor_floor_below_the_policy_is_refused() {
    // A server (older, or configured around the minimum aggregate) whose
    // published sum may hold 2 inputs: from it, each contributor would
    // recover the other's. The default policy refuses it.
    let mut two = round_of(3, 2);
    two.min_survivors = 0;
    let result = offer(offer_of(two.clone(), None), |b| b).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::SurvivorFloor,
        &["as few as 2 inputs", "at least 3"],
    );
    let result = offer(offer_of(round_of(5, 3), None), |b| {
        b.policy(tessera_client::Policy {
            min_survivors: 4,
            ..tessera_client::Policy::default()
        })
    })
    .await;
    assert_refused(
        result,
        tessera_client::PolicyRule::SurvivorFloor,
        &["as few as 3 inputs", "at least 4"],
    );
}

#[tokio::test]
async fn a_round_without_distributed_dp_is_refused_when_the_policy_requires_it() {
    let result = offer(offer_of(round_of(3, 2), None), |b| b.require_dp(0.0)).await;
    assert_refused(
        result,
        tessera_client::PolicyRule::RequireDp,
        &["without distributed DP"],
    );
}

#[tokio::test]
async fn too_little_client_noise_is_refused() {
    let result = offer(offer_of(round_of(3, 2), Some(dp_params())), |b| {
        b.require_dp(1.0)
    })
    .await;
    assert_refused(
        result,
        tessera_client::PolicyRule::MinNoiseMultiplier,
        &["noise multiplier is 0.6620", "at least 1"],
    );
}

// ---------------------------------------------------------------------------
// Red-team cases: a lying server states numbers that each look plausible but
// do not fit together (a ring narrower than the fixed point's, a survivor
// floor above the round's size, DP parameters that make no noise). The
// client refuses every one before it sends its first protocol message.

/// Round 12 of 5 clients with threshold 3 (the default policy accepts it),
/// fixed point clip 1, 16 fraction bits, a 32-bit ring.
fn lying_start(
    tweak: impl FnOnce(&mut RoundConfig),
    fixed_point: FixedPoint,
    dp: Option<v1::DistributedDp>,
) -> v1::RoundStart {
    let mut config = RoundConfig::new(12, 5, 8);
    config.threshold = 3;
    config.stage_timeout = Duration::from_millis(50);
    tweak(&mut config);
    v1::RoundStart {
        protocol_version: tessera_proto::PROTOCOL_VERSION,
        client_id: 0,
        config: Some((&config).into()),
        fixed_point: Some((&fixed_point).into()),
        model_version: 1,
        distributed_dp: dp,
        identities: Vec::new(),
        proximal_mu: 0.0,
        extras: None,
    }
}

fn fp32() -> FixedPoint {
    FixedPoint::new(1.0, 16, 32).unwrap()
}

/// The refusal is the server's misbehaviour, names `needle`, and came
/// before any protocol message.
fn assert_misbehaved((err, messages): (ClientError, usize), needle: &str) {
    assert!(
        matches!(&err, ClientError::ServerMisbehaved { round_id: Some(12), problem } if problem.contains(needle)),
        "expected a refusal naming {needle:?}, got {err:?}"
    );
    assert_eq!(messages, 0, "the client sent its advert");
}

#[tokio::test]
async fn the_control_round_is_accepted() {
    let (err, messages) = offer(lying_start(|_| {}, fp32(), None), |b| b).await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1, "the client advertised its keys");
}

#[tokio::test]
async fn a_ring_narrower_than_the_fixed_point_is_refused() {
    // The round says 20 bits, the fixed point 32: a client encoding for 32
    // bits into a 20-bit ring would wrap silently.
    assert_misbehaved(
        offer(lying_start(|c| c.bits = 20, fp32(), None), |b| b).await,
        "the fixed-point format has 32 bits, the round 20",
    );
}

#[tokio::test]
async fn a_survivor_floor_above_the_round_size_is_refused() {
    // min_survivors above n passes the policy's survivor-floor rule (it is
    // a large floor) but describes a round that can never publish.
    assert_misbehaved(
        offer(lying_start(|c| c.min_survivors = 6, fp32(), None), |b| b).await,
        "min_survivors",
    );
    // A stated corrupt count of every client raises the policy's
    // threshold floor above anything the round could set.
    let (err, messages) = offer(
        lying_start(
            |c| {
                c.corrupt = 5;
                c.threshold = 4;
            },
            fp32(),
            None,
        ),
        |b| b,
    )
    .await;
    assert!(
        matches!(
            err,
            ClientError::PolicyRefused {
                rule: tessera_client::PolicyRule::Threshold,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(messages, 0);
}

#[tokio::test]
async fn dp_parameters_that_make_no_noise_are_refused() {
    let good = v1::DistributedDp {
        noise: "skellam".into(),
        target_sigma: 65536.0,
        min_survivors: 2,
        norm_bound: 70000.0,
    };
    for (dp, needle) in [
        // No survivor carries the noise: the variance per client would be
        // a division by zero.
        (
            v1::DistributedDp {
                min_survivors: 0,
                ..good.clone()
            },
            "distributed_dp",
        ),
        // NaN and zero noise.
        (
            v1::DistributedDp {
                target_sigma: f64::NAN,
                ..good.clone()
            },
            "distributed_dp",
        ),
        (
            v1::DistributedDp {
                target_sigma: 0.0,
                ..good.clone()
            },
            "distributed_dp",
        ),
        // An infinite norm bound would make any noise look small, a NaN
        // one any noise look large.
        (
            v1::DistributedDp {
                norm_bound: f64::NAN,
                ..good.clone()
            },
            "norm_bound",
        ),
        (
            v1::DistributedDp {
                norm_bound: f64::INFINITY,
                ..good.clone()
            },
            "norm_bound",
        ),
    ] {
        assert_misbehaved(
            offer(lying_start(|_| {}, fp32(), Some(dp)), |b| b).await,
            needle,
        );
    }
}

/// A server (or anything between) that sends a negative or non-finite
/// FedProx mu is refused before the client sends anything: a negative mu
/// would push the client's training away from the global model.
#[tokio::test]
async fn a_negative_or_non_finite_proximal_mu_is_refused_before_the_advert() {
    for mu in [-0.1, f64::NAN, f64::INFINITY] {
        let mut start = offer_of(round_of(3, 2), None);
        start.proximal_mu = mu;
        let (err, messages) = offer(start, |b| b).await;
        assert!(
            matches!(&err, ClientError::ServerMisbehaved { round_id: Some(12), problem } if problem.contains("proximal_mu")),
            "{mu}: {err:?}"
        );
        assert_eq!(messages, 0, "{mu}: the client sent its advert");
    }
    // The control: mu 0.5 is a normal round.
    let mut start = offer_of(round_of(3, 2), None);
    start.proximal_mu = 0.5;
    let (err, messages) = offer(start, |b| b).await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1);
}

/// Red team (issue 15): a round whose sum carries extras (here adaptive
/// clipping's indicator bit) with the fixed-point clip norm `fp_clip` and
/// distributed DP `dp`.
fn offer_with_extras(scale: f32, fp_clip: f32, dp: Option<v1::DistributedDp>) -> v1::RoundStart {
    let mut start = offer_of(round_of(3, 2), dp);
    start.extras = Some(v1::RoundExtras {
        clip_norm: 1.0,
        scale,
        clip_indicator: true,
        ..Default::default()
    });
    start.fixed_point = Some((&FixedPoint::new(fp_clip, 16, 32).unwrap()).into());
    start
}

#[tokio::test]
async fn redteam_extras_whose_bound_exceeds_the_fixed_point_clip_norm_are_refused() {
    // A lying server asks for the indicator bit (Δ = sqrt(1 + 0.25²) C =
    // 1.0308) but keeps the fixed point (and so the noise and the
    // ledger's sensitivity) at C = 1: the extras would leave the sum
    // under-noised. The client refuses before sending anything.
    let (err, messages) = offer(offer_with_extras(0.25, 1.0, None), |b| b).await;
    assert!(
        matches!(&err, ClientError::ServerMisbehaved { problem, .. } if problem.contains("below the bound")),
        "{err:?}"
    );
    assert_eq!(messages, 0, "no advert before the refusal");
    // Control: at Δ the same round is accepted.
    let (err, messages) = offer(offer_with_extras(0.25, 1.031, None), |b| b).await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1);
}

#[tokio::test]
async fn redteam_extras_cannot_widen_the_sensitivity_past_the_clients_noise_policy() {
    // Control: Δ = 1.0308 <= 1.031; norm bound 70000 >= 1.031 · 2^16; per
    // client z = 46341 / 70000 = 0.662 >= 0.6.
    let (err, messages) = offer(offer_with_extras(0.25, 1.031, Some(dp_params())), |b| {
        b.require_dp(0.6)
    })
    .await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1);
    // κ = 16 makes Δ = sqrt(257) = 16.03: the server widens the fixed
    // point to match but keeps the old norm bound, which conditional
    // rounding could not honour: refused.
    let (err, messages) = offer(offer_with_extras(16.0, 16.04, Some(dp_params())), |b| {
        b.require_dp(0.6)
    })
    .await;
    assert!(
        matches!(&err, ClientError::ServerMisbehaved { problem, .. } if problem.contains("norm_bound")),
        "{err:?}"
    );
    assert_eq!(messages, 0);
    // With a norm bound that covers Δ, the same noise is a far smaller
    // multiplier, and the client's policy sees it.
    let mut wide = dp_params();
    wide.norm_bound = 1.1e6;
    let (err, messages) = offer(offer_with_extras(16.0, 16.04, Some(wide)), |b| {
        b.require_dp(0.6)
    })
    .await;
    assert!(
        matches!(&err, ClientError::PolicyRefused { rule, .. } if *rule == tessera_client::PolicyRule::MinNoiseMultiplier),
        "{err:?}"
    );
    assert_eq!(messages, 0);
}
