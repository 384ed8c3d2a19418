//! The end-to-end test harness: a real `tessera-server` on 127.0.0.1 and
//! clients over real gRPC sockets.
//!
//! Honest clients are the real SDK ([`tessera_client::Client`]). A
//! [`ScriptedClient`] drives a real [`ClientSession`] over the same wire
//! protocol but can misbehave on cue: hang up before a stage (a dropout),
//! send garbage, replay, send for the wrong round or stage, truncate its
//! vector or a share ciphertext, or send an oversized frame. Tests use it
//! to show what the server does to the one bad client and that the round
//! goes on for the others.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tessera_aggregation::ThreatModel;
use tessera_aggregation::accusation::ShareKeyReveal;
use tessera_aggregation::identity::{IdentityKey, IdentityPublicKey};
use tessera_aggregation::messages::{ClientBody, ClientMessage, ServerMessage};
use tessera_aggregation::packing::packed_len;
use tessera_aggregation::{ClientId, ClientSession, RoundConfig, Stage};
use tessera_dp::encoding::FixedPoint;
use tessera_proto::v1::aggregator_client::AggregatorClient;
use tessera_proto::v1::{self, client_frame, server_frame};
use tessera_proto::{PROTOCOL_VERSION, error_detail};
use tessera_server::config::{NetworkSettings, RoundRules};
use tessera_server::files::{Disk, FaultPlan};
use tessera_server::{RunningServer, ServerConfig, auth, tls};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// A server under test with its credentials.
#[derive(Debug)]
pub struct TestServer {
    /// The running server.
    pub server: RunningServer,
    /// `http://` or `https://` URL of the server.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its state key's file (beside the TLS key, or beside the data
    /// directory in insecure-dev mode).
    pub state_key: PathBuf,
    /// The CA certificate clients trust (TLS servers).
    pub ca_pem: Option<Vec<u8>>,
    /// Client tokens, by index (servers with a tokens file).
    pub tokens: Vec<String>,
    /// Enrolled identities, by index (malicious-server servers).
    pub identities: Vec<IdentityKey>,
    /// The allow-list's public keys, the clients' trust anchor.
    pub trusted: Vec<IdentityPublicKey>,
    _dir: tempfile::TempDir,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Model dimension.
    pub dim: u32,
    /// Clients per round.
    pub min_clients: u32,
    /// TLS with a fresh self-signed certificate, and this many tokens.
    pub tls_tokens: Option<usize>,
    /// Stage deadline.
    pub stage_timeout: Duration,
    /// Rounds before the server stops by itself.
    pub rounds: Option<u64>,
    /// Graph rule (`complete`, `harary:K`, `auto`).
    pub graph: &'static str,
    /// Malicious-server threat model with this many enrolled identities.
    pub identities: Option<usize>,
    /// Any other setting, applied last (DP mode, threshold, ...).
    pub tweak: fn(&mut ServerConfig),
    /// Faults the data directory's disk injects (a full, read-only or
    /// failing disk); `None` is the real file system.
    pub faults: Option<FaultPlan>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            dim: 100,
            min_clients: 5,
            tls_tokens: None,
            stage_timeout: Duration::from_secs(10),
            rounds: None,
            graph: "complete",
            identities: None,
            tweak: |_| {},
            faults: None,
        }
    }
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 in a fresh temporary data directory.
    pub async fn start(options: ServerOptions) -> TestServer {
        // Server and client logs, for a failing test: `RUST_LOG=info cargo
        // test ... -- --nocapture`. Silent unless RUST_LOG is set.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let mut config = ServerConfig {
            data_dir: data_dir.clone(),
            dim: Some(options.dim),
            rounds: options.rounds,
            network: NetworkSettings {
                listen: "127.0.0.1:0".parse().expect("addr"),
                ..Default::default()
            },
            round: RoundRules {
                min_clients: options.min_clients,
                max_clients: options.min_clients,
                join_window: Duration::from_millis(0),
                graph: options.graph.parse().expect("graph"),
                stage_timeout: options.stage_timeout,
                ..Default::default()
            },
            ..ServerConfig::default()
        };
        let mut tokens = Vec::new();
        let mut ca_pem = None;
        match options.tls_tokens {
            None => config.network.insecure_dev = true,
            Some(count) => {
                let files =
                    tls::write_self_signed(dir.path(), &["localhost".to_owned()]).expect("cert");
                ca_pem = Some(std::fs::read(&files.cert).expect("read cert"));
                config.network.tls_cert = Some(files.cert);
                config.network.tls_key = Some(files.key);
                let tokens_file = dir.path().join("tokens.txt");
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                for i in 0..count {
                    let token = auth::generate_token(&mut rng);
                    auth::append_token(&tokens_file, &format!("client-{i}"), &token)
                        .expect("append token");
                    tokens.push(token.expose().to_owned());
                }
                config.network.tokens_file = Some(tokens_file);
            }
        }
        let mut identities = Vec::new();
        if let Some(count) = options.identities {
            let mut rng = rand::rngs::StdRng::seed_from_u64(17);
            let mut list = String::from("# enrolled identities\n");
            for i in 0..count {
                let key = IdentityKey::generate(&mut rng);
                list.push_str(&format!("device-{i} ed25519:{}\n", key.verifying_key()));
                identities.push(key);
            }
            let path = dir.path().join("enrolled.txt");
            std::fs::write(&path, list).expect("write allow-list");
            config.round.threat_model = ThreatModel::MaliciousServer;
            config.network.identities_file = Some(path);
        }
        let trusted = identities.iter().map(|k| k.verifying_key()).collect();
        (options.tweak)(&mut config);
        let disk = options.faults.map_or_else(Disk::real, Disk::with_faults);
        let state_key = config.state_key_path();
        let server = tessera_server::start_with_disk(config, disk)
            .await
            .expect("server starts");
        let port = server.local_addr().port();
        let url = if ca_pem.is_some() {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        };
        TestServer {
            server,
            url,
            data_dir,
            state_key,
            ca_pem,
            tokens,
            identities,
            trusted,
            _dir: dir,
        }
    }

    /// Stops the server and starts `config` on the same data directory and
    /// state key (insecure-dev servers only), as an operator's restart.
    pub async fn restart(self, mut config: ServerConfig) -> TestServer {
        assert!(self.ca_pem.is_none(), "restart is for insecure-dev servers");
        self.server.shutdown().await.expect("server stops");
        config.data_dir = self.data_dir.clone();
        config.state_key = Some(self.state_key.clone());
        config.network.insecure_dev = true;
        config.network.listen = "127.0.0.1:0".parse().expect("addr");
        let server = tessera_server::start(config)
            .await
            .expect("server restarts");
        TestServer {
            url: format!("http://127.0.0.1:{}", server.local_addr().port()),
            server,
            data_dir: self.data_dir,
            state_key: self.state_key,
            ca_pem: None,
            tokens: self.tokens,
            identities: self.identities,
            trusted: self.trusted,
            _dir: self._dir,
        }
    }

    /// The audit log's events (verified under the state key).
    pub fn audit(&self) -> Vec<tessera_server::store::AuditEvent> {
        let key = tessera_server::store::StateKey::load(&self.state_key).expect("state key");
        let (records, _) =
            tessera_server::store::read_audit(&self.data_dir, Some(&key)).expect("audit log");
        records.into_iter().map(|r| r.event).collect()
    }

    /// An SDK client; `token` indexes [`TestServer::tokens`].
    pub fn client(&self, token: Option<usize>) -> tessera_client::Client {
        self.client_builder(token).build().expect("client builds")
    }

    /// The builder [`TestServer::client`] finishes, for a test that adds
    /// settings (a progress callback) or builds a blocking client.
    pub fn client_builder(&self, token: Option<usize>) -> tessera_client::ClientBuilder {
        let mut builder = tessera_client::Client::builder(self.url.clone())
            .round_timeout(Duration::from_secs(120));
        if let Some(ca) = &self.ca_pem {
            builder = builder.tls_ca_pem(ca.clone());
        }
        if let Some(i) = token {
            builder = builder.token(self.tokens[i].clone());
        }
        builder
    }

    /// An SDK client with enrolled identity `identity` that trusts the
    /// server's allow-list.
    pub fn client_with_identity(
        &self,
        token: Option<usize>,
        identity: IdentityKey,
    ) -> tessera_client::Client {
        let mut builder = tessera_client::Client::builder(self.url.clone())
            .round_timeout(Duration::from_secs(120))
            .identity(identity)
            .trusted_identities(self.trusted.clone());
        if let Some(ca) = &self.ca_pem {
            builder = builder.tls_ca_pem(ca.clone());
        }
        if let Some(i) = token {
            builder = builder.token(self.tokens[i].clone());
        }
        builder.build().expect("client builds")
    }

    /// A raw gRPC channel for scripted clients.
    pub async fn channel(&self) -> Channel {
        let mut endpoint = Endpoint::from_shared(self.url.clone()).expect("url");
        if let Some(ca) = &self.ca_pem {
            endpoint = endpoint
                .tls_config(tls::client_tls_config(ca, "localhost", None))
                .expect("tls");
        }
        endpoint.connect().await.expect("connect")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// How a scripted client misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Behaves.
    None,
    /// Hangs up (drops the stream) instead of sending its message for this
    /// stage.
    DieBefore(Stage),
    /// Sends random bytes instead of its AdvertiseKeys message.
    Garbage,
    /// Joins with the previous protocol version, 3, whose clients put
    /// their share key in an accusation unasked (refused since version 4).
    WrongVersion,
    /// Sends its AdvertiseKeys message with the next round's id.
    WrongRound,
    /// Sends a masked input during AdvertiseKeys.
    WrongStage,
    /// Sends its AdvertiseKeys message again during ShareKeys.
    Replay,
    /// Sends a masked input one value short.
    ShortVector,
    /// Sends a ShareKeys message with one ciphertext cut short.
    BadShareCiphertext,
    /// Sends a frame larger than the server accepts.
    Oversized,
    /// Connects without credentials.
    NoToken,
    /// Advertises its s_pk as its c_pk too.
    SameKeysAdvert,
    /// Seals garbage (of the right length) in place of the share bundles
    /// for its first `n` receivers; only they can tell.
    GarbleBundles(usize),
    /// Sends its masked input, then `n` share keys nobody asked for (the
    /// first evicts it; the rest come from a client already out).
    FloodShareKeys(usize),
}

/// How a scripted client's participation ended.
#[derive(Debug)]
pub struct ScriptedOutcome {
    /// The status the server ended the stream with, if any.
    pub status: Option<tonic::Status>,
    /// The kind in the status's ErrorDetail, if any.
    pub kind: Option<v1::ErrorKind>,
    /// The round's result, if the server sent one.
    pub result: Option<v1::RoundResult>,
}

/// A client that runs the real client state machine over raw gRPC and
/// misbehaves as told.
#[derive(Debug)]
pub struct ScriptedClient {
    /// The fault to inject.
    pub fault: Fault,
    /// Bearer token, if the server wants one.
    pub token: Option<String>,
    /// The update.
    pub update: Vec<f32>,
    /// Seed of the client's randomness.
    pub seed: u64,
    /// Told when the server has accepted the Join (the first frame back).
    pub joined: Option<tokio::sync::oneshot::Sender<()>>,
    /// The whole vector to encode in the round's fixed point instead of
    /// `update` (whose length the Join names): for rounds with extras, a
    /// client that writes its own extras, bypassing the SDK's bounds.
    pub raw_vector: Option<Vec<f32>>,
}

fn stage_of(body: &ClientBody) -> Stage {
    match body {
        ClientBody::AdvertiseKeys(_) => Stage::AdvertiseKeys,
        ClientBody::ShareKeys(_) => Stage::ShareKeys,
        ClientBody::MaskedInput(_) => Stage::MaskedInput,
        ClientBody::ConsistencyCheck(_) => Stage::ConsistencyCheck,
        _ => Stage::Unmasking,
    }
}

fn frame(bytes: Vec<u8>) -> v1::ClientFrame {
    v1::ClientFrame {
        frame: Some(client_frame::Frame::Message(bytes)),
    }
}

impl ScriptedClient {
    /// An honest scripted client.
    pub fn new(update: Vec<f32>, seed: u64) -> Self {
        ScriptedClient {
            fault: Fault::None,
            token: None,
            update,
            seed,
            joined: None,
            raw_vector: None,
        }
    }

    /// Runs until the server ends the stream (or the fault hangs up).
    pub async fn run(mut self, channel: Channel) -> ScriptedOutcome {
        let (tx, rx) = mpsc::channel::<v1::ClientFrame>(16);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.token
            && self.fault != Fault::NoToken
        {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        let version = if self.fault == Fault::WrongVersion {
            PROTOCOL_VERSION - 1
        } else {
            PROTOCOL_VERSION
        };
        tx.send(v1::ClientFrame {
            frame: Some(client_frame::Frame::Join(v1::Join {
                protocol_version: version,
                dim: self.update.len() as u32,
                identity_key: Vec::new(),
            })),
        })
        .await
        .expect("queue join");
        let mut client = AggregatorClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let ended = |status: tonic::Status| ScriptedOutcome {
            kind: error_detail(&status).map(|d| d.kind()),
            status: Some(status),
            result: None,
        };
        let mut inbound = match client.participate(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return ended(status),
        };
        if let Some(joined) = self.joined.take() {
            let _ = joined.send(());
        }
        let mut rng = chacha20::ChaCha20Rng::seed_from_u64(self.seed);
        let mut session: Option<ClientSession> = None;
        let mut config: Option<RoundConfig> = None;
        let mut sent_advertise: Option<Vec<u8>> = None;
        loop {
            if let Some(s) = session.as_mut() {
                while let Some(message) = s.poll_transmit() {
                    let stage = stage_of(&message.body);
                    let cfg = config.as_ref().expect("config with session");
                    if self.fault == Fault::DieBefore(stage) {
                        return ScriptedOutcome {
                            status: None,
                            kind: None,
                            result: None,
                        };
                    }
                    let bytes = message.encode();
                    let out: Vec<Vec<u8>> = match (self.fault, stage) {
                        (Fault::Garbage, Stage::AdvertiseKeys) => {
                            vec![b"\x07not a protocol message at all".to_vec()]
                        }
                        (Fault::WrongRound, Stage::AdvertiseKeys) => {
                            let mut m = ClientMessage::decode(&bytes).expect("own message");
                            m.round_id += 1;
                            vec![m.encode()]
                        }
                        (Fault::WrongStage, Stage::AdvertiseKeys) => vec![
                            ClientMessage {
                                round_id: cfg.round_id,
                                body: ClientBody::MaskedInput(vec![
                                    0;
                                    packed_len(
                                        cfg.dim as usize,
                                        cfg.bits
                                    )
                                ]),
                            }
                            .encode(),
                        ],
                        (Fault::Replay, Stage::ShareKeys) => {
                            vec![sent_advertise.clone().expect("advertised before")]
                        }
                        (Fault::ShortVector, Stage::MaskedInput) => {
                            let short = packed_len(cfg.dim as usize - 1, cfg.bits);
                            vec![
                                ClientMessage {
                                    round_id: cfg.round_id,
                                    body: ClientBody::MaskedInput(vec![0; short]),
                                }
                                .encode(),
                            ]
                        }
                        (Fault::BadShareCiphertext, Stage::ShareKeys) => {
                            let mut m = ClientMessage::decode(&bytes).expect("own message");
                            if let ClientBody::ShareKeys(bundles) = &mut m.body {
                                bundles[0].ciphertext.truncate(10);
                            }
                            vec![m.encode()]
                        }
                        (Fault::Oversized, Stage::AdvertiseKeys) => vec![vec![0u8; 64 << 20]],
                        (Fault::SameKeysAdvert, Stage::AdvertiseKeys) => {
                            let mut m = ClientMessage::decode(&bytes).expect("own message");
                            if let ClientBody::AdvertiseKeys(advert) = &mut m.body {
                                advert.keys.c_pk = advert.keys.s_pk;
                            }
                            vec![m.encode()]
                        }
                        (Fault::GarbleBundles(n), Stage::ShareKeys) => {
                            let mut m = ClientMessage::decode(&bytes).expect("own message");
                            if let ClientBody::ShareKeys(bundles) = &mut m.body {
                                for bundle in bundles.iter_mut().take(n) {
                                    bundle.ciphertext.iter_mut().for_each(|b| *b ^= 0xa5);
                                }
                            }
                            vec![m.encode()]
                        }
                        (Fault::FloodShareKeys(n), Stage::MaskedInput) => {
                            let unasked = ClientMessage {
                                round_id: cfg.round_id,
                                body: ClientBody::ShareKeyReveal(ShareKeyReveal {
                                    share_secret: zeroize::Zeroizing::new([0x42; 32]),
                                }),
                            };
                            std::iter::once(bytes.clone())
                                .chain(std::iter::repeat_n(unasked.encode(), n))
                                .collect()
                        }
                        _ => vec![bytes.clone()],
                    };
                    if stage == Stage::AdvertiseKeys {
                        sent_advertise = Some(bytes);
                    }
                    for b in out {
                        if tx.send(frame(b)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let deadline = session.as_ref().and_then(ClientSession::poll_timeout);
            let next = tokio::select! {
                next = inbound.message() => next,
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(s) = session.as_mut() {
                        s.handle_timeout(Instant::now());
                    }
                    continue;
                }
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    return ScriptedOutcome {
                        status: None,
                        kind: None,
                        result: None,
                    };
                }
                Err(status) => return ended(status),
            };
            match frame.frame {
                Some(server_frame::Frame::Lobby(_)) | None => {}
                Some(server_frame::Frame::JoinChallenge(_)) => {
                    panic!("a scripted client names no identity: no Join challenge is due")
                }
                Some(server_frame::Frame::RoundStart(start)) => {
                    let cfg = RoundConfig::try_from(start.config.as_ref().expect("config"))
                        .expect("valid config");
                    let fp = FixedPoint::try_from(start.fixed_point.as_ref().expect("fixed point"))
                        .expect("valid fixed point");
                    let mut s = ClientSession::new(
                        cfg.clone(),
                        ClientId(start.client_id),
                        Instant::now(),
                        &mut rng,
                    )
                    .expect("session");
                    let vector = self.raw_vector.as_deref().unwrap_or(&self.update);
                    let encoded = fp.encode(vector, &mut rng).expect("encode");
                    s.submit_input(encoded.values).expect("input");
                    session = Some(s);
                    config = Some(cfg);
                }
                Some(server_frame::Frame::Message(bytes)) => {
                    let message = ServerMessage::decode(&bytes).expect("server message decodes");
                    if let Some(s) = session.as_mut() {
                        let _ = s.handle_message(Instant::now(), message);
                    }
                }
                Some(server_frame::Frame::Result(result)) => {
                    return ScriptedOutcome {
                        status: None,
                        kind: None,
                        result: Some(result),
                    };
                }
            }
        }
    }
}

/// A random update of norm below 1 (so it is never clipped), reproducible
/// from `seed`.
pub fn update(dim: u32, seed: u64) -> Vec<f32> {
    use rand::RngExt;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scale = 1.0 / (dim as f32).sqrt();
    (0..dim)
        .map(|_| (rng.random::<f32>() - 0.5) * scale)
        .collect()
}

/// The plain average of some updates.
pub fn mean(updates: &[Vec<f32>]) -> Vec<f32> {
    let n = updates.len() as f64;
    (0..updates[0].len())
        .map(|i| (updates.iter().map(|u| f64::from(u[i])).sum::<f64>() / n) as f32)
        .collect()
}

/// A one-connection TCP relay in front of `server`, for tests that must see
/// the moment the server closes a connection: a client dials the returned
/// port; the returned task ends, with the time, when the server closes the
/// relayed connection (its side of the copy ends), and the relay then closes
/// the client's side too. It takes no other connection, so a tonic channel
/// cannot quietly reconnect behind the test's back.
pub async fn relay(server: std::net::SocketAddr) -> (u16, tokio::task::JoinHandle<Instant>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let closed = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        drop(listener);
        let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = upstream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        });
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        Instant::now()
    });
    (port, closed)
}

/// A TLS endpoint for `ts` (started with TLS) through the [`relay`] on
/// `port`, trusting the test server's certificate.
pub fn endpoint_via(ts: &TestServer, port: u16) -> Endpoint {
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls::client_tls_config(
            ts.ca_pem.as_ref().expect("a TLS test server"),
            "localhost",
            None,
        ))
        .unwrap()
}

/// A raw GetModel of `version` with the bearer `token` on `channel` (a
/// channel the test keeps, unlike the SDK's connection per call).
pub async fn get_model_with(
    channel: &Channel,
    token: &str,
    version: u64,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(v1::GetModelRequest { version });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    AggregatorClient::new(channel.clone())
        .get_model(request)
        .await
        .map(|_| ())
}

/// What the server sent after an identity proof (or the wait for it timing
/// out): see [`join_and_prove_after`].
pub type AfterProof =
    Result<Result<Option<v1::ServerFrame>, tonic::Status>, tokio::time::error::Elapsed>;

/// Client 0 of `ts` (a malicious-server test server with tokens and
/// identities) joins over `channel` with its token and enrolled identity,
/// waits `delay` after the server's challenge (a slow prover: a hardware
/// key, a user prompt), sends its proof, and returns what the server sends
/// next within `wait` (the lobby, if the connection survived).
pub async fn join_and_prove_after(
    ts: &TestServer,
    channel: Channel,
    dim: u32,
    delay: Duration,
    wait: Duration,
) -> AfterProof {
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::ClientFrame {
        frame: Some(client_frame::Frame::Join(v1::Join {
            protocol_version: PROTOCOL_VERSION,
            dim,
            identity_key: ts.trusted[0].to_bytes().to_vec(),
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", ts.tokens[0]).parse().unwrap(),
    );
    let mut inbound = AggregatorClient::new(channel)
        .participate(request)
        .await
        .expect("the challenged Join is answered")
        .into_inner();
    let challenge = match inbound.message().await.expect("a frame").expect("a frame") {
        v1::ServerFrame {
            frame: Some(server_frame::Frame::JoinChallenge(c)),
        } => c,
        other => panic!("expected a challenge: {other:?}"),
    };
    tokio::time::sleep(delay).await;
    let bytes = challenge.challenge.as_slice().try_into().unwrap();
    let proof = ts.identities[0].sign_join(bytes, &challenge.principal);
    let _ = tx
        .send(v1::ClientFrame {
            frame: Some(client_frame::Frame::JoinProof(v1::JoinProof {
                signature: proof.0.to_vec(),
            })),
        })
        .await;
    tokio::time::timeout(wait, inbound.message()).await
}

/// The opening of a gRPC call written by hand, for attacks below tonic: the
/// HTTP/2 preface, empty SETTINGS, and the HEADERS frame of a call to
/// `path` (stream 1, without END_STREAM, no credentials). The request
/// message (its DATA frame) never follows, so the server's handler is
/// never called.
pub fn unanswered_call(path: &str) -> Vec<u8> {
    // HPACK "literal without indexing, new name" (RFC 7541, section
    // 6.2.2), short names and values only.
    fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path, a literal with the static table's name
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    literal(&mut block, "content-type", "application/grpc");
    literal(&mut block, "te", "trailers");
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = block.len();
    // HEADERS, END_HEADERS, stream 1.
    bytes.extend_from_slice(&[0, 0, len as u8, 0x1, 0x4, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    bytes
}
