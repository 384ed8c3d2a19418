//! Red-team tests of the client's checks of a RoundStart: a lying server
//! states numbers that each look plausible but do not fit together (a ring
//! narrower than the fixed point's, a survivor floor above the round's
//! size, DP parameters that make no noise). The client refuses every one
//! before it sends its first protocol message.

use std::time::Duration;

use tessera_aggregation::RoundConfig;
use tessera_aggregation::encoding::FixedPoint;
use tessera_client::{Client, ClientError, RetryPolicy};
use tessera_proto::v1::aggregator_server::{Aggregator, AggregatorServer};
use tessera_proto::v1::{self, client_frame, server_frame};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

type FrameStream = ReceiverStream<Result<v1::ServerFrame, Status>>;

/// Offers one RoundStart (with the Join's dimension) and reports how many
/// protocol messages the client sent before it hung up.
struct Offer {
    start: v1::RoundStart,
    sent: mpsc::Sender<usize>,
}

#[tonic::async_trait]
impl Aggregator for Offer {
    type ParticipateStream = FrameStream;

    async fn participate(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let mut inbound = request.into_inner();
        let join = match inbound.message().await? {
            Some(v1::ClientFrame {
                frame: Some(client_frame::Frame::Join(join)),
            }) => join,
            _ => return Err(Status::invalid_argument("expected a Join")),
        };
        let mut start = self.start.clone();
        if let Some(config) = &mut start.config {
            config.dim = join.dim;
        }
        let (out, rx) = mpsc::channel(8);
        out.send(Ok(v1::ServerFrame {
            frame: Some(server_frame::Frame::RoundStart(start)),
        }))
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

/// Serves one offer, runs one default client against it: the client's
/// error and the protocol messages it sent.
async fn offer(start: v1::RoundStart) -> (ClientError, usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sent_tx, mut sent) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(AggregatorServer::new(Offer {
                start,
                sent: sent_tx,
            }))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let client = Client::builder(url)
        .round_timeout(Duration::from_secs(5))
        .retry(RetryPolicy::NONE)
        .build()
        .unwrap();
    let err = client.participate(&[0.1; 8]).await.unwrap_err();
    drop(client);
    let messages = tokio::time::timeout(Duration::from_secs(5), sent.recv())
        .await
        .expect("the double saw the client hang up")
        .expect("a count");
    let _ = stop.send(());
    (err, messages)
}

/// Round 12 of 5 clients with threshold 3 (the default policy accepts it),
/// fixed point clip 1, 16 fraction bits, a 32-bit ring.
fn start(
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
    let (err, messages) = offer(start(|_| {}, fp32(), None)).await;
    assert!(matches!(err, ClientError::ServerSilent { .. }), "{err:?}");
    assert_eq!(messages, 1, "the client advertised its keys");
}

#[tokio::test]
async fn a_ring_narrower_than_the_fixed_point_is_refused() {
    // The round says 20 bits, the fixed point 32: a client encoding for 32
    // bits into a 20-bit ring would wrap silently.
    assert_misbehaved(
        offer(start(|c| c.bits = 20, fp32(), None)).await,
        "the fixed-point format has 32 bits, the round 20",
    );
}

#[tokio::test]
async fn a_survivor_floor_above_the_round_size_is_refused() {
    // min_survivors above n passes the policy's survivor-floor rule (it is
    // a large floor) but describes a round that can never publish.
    assert_misbehaved(
        offer(start(|c| c.min_survivors = 6, fp32(), None)).await,
        "min_survivors",
    );
    // A stated corrupt count of every client raises the policy's
    // threshold floor above anything the round could set.
    let (err, messages) = offer(start(
        |c| {
            c.corrupt = 5;
            c.threshold = 4;
        },
        fp32(),
        None,
    ))
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
        assert_misbehaved(offer(start(|_| {}, fp32(), Some(dp))).await, needle);
    }
}
