//! The lobby: clients that joined and wait for the next round.
//!
//! A round opens once `min_clients` wait, with a cohort sampled uniformly
//! from those waiting ([`crate::cohort`]); the others, and clients that
//! arrive while a round runs, wait for a later one (one stream per client
//! per round, so nobody is added to a round that has started), kept alive
//! by a Lobby frame every `lobby_keepalive` ([`Lobby::keep_alive`]). An identity may wait or take part
//! once at a time: a second stream with the same credentials is refused.

use std::collections::HashSet;
use std::sync::Mutex;

use tessera_proto::v1::{self, ClientFrame, ServerFrame, server_frame};
use tokio::sync::{Notify, mpsc};
use tonic::{Status, Streaming};

/// The sending half of a client's response stream.
pub(crate) type FrameSender = mpsc::Sender<Result<ServerFrame, Status>>;

/// A client waiting for a round.
#[derive(Debug)]
pub(crate) struct Participant {
    /// Who authenticated (token name, certificate subject, or an anonymous
    /// name in insecure-dev mode). Never a secret.
    pub(crate) identity: String,
    /// Frames to the client.
    pub(crate) tx: FrameSender,
    /// Frames from the client, after its Join.
    pub(crate) inbound: Streaming<ClientFrame>,
    /// Malicious-server model: the enrolled identity the client joined
    /// with (its name is then `identity`, so one identity is in one round
    /// at most once).
    pub(crate) identity_key: Option<tessera_aggregation::identity::IdentityPublicKey>,
    /// Keeps the client's connection live (see `listener::activity`) while
    /// it waits here and then takes part in its round; `None` if the
    /// request has no tracked connection.
    pub(crate) live: Option<crate::listener::LiveGuard>,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: Vec<Participant>,
    /// Identities waiting or in the running round.
    busy: HashSet<String>,
    /// DP-FTRL: identities that took part in the current tree, refused
    /// until it ends ([`Lobby::set_ineligible`]).
    ineligible: HashSet<String>,
    /// The most rounds the current tree has left, told to those refused.
    tree_rounds_left: u64,
}

/// Why [`Lobby::join`] refused a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinRefused {
    /// The identity is already waiting or in a round.
    Busy(String),
    /// DP-FTRL: the identity took part in the current tree, which has at
    /// most this many rounds left.
    NotEligible { identity: String, rounds_left: u64 },
}

/// The status a client gets when it took part in the current DP-FTRL tree.
pub(crate) fn not_eligible_status(identity: &str, rounds_left: u64) -> Status {
    tessera_proto::status_with_detail(
        tonic::Code::Unavailable,
        format!(
            "{identity} already took part in the current DP-FTRL tree, and each client takes part at most once per tree: come back when it ends (in at most {rounds_left} rounds)"
        ),
        &v1::ErrorDetail {
            kind: v1::ErrorKind::NotEligible as i32,
            server_protocol_version: tessera_proto::PROTOCOL_VERSION,
            round_id: 0,
            expected: rounds_left,
        },
    )
}

/// The shared lobby.
#[derive(Debug, Default)]
pub(crate) struct Lobby {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Lobby {
    /// Adds a client and returns how many wait; refused if it is already
    /// waiting or in a round, or (DP-FTRL) took part in the current tree.
    pub(crate) fn join(&self, participant: Participant) -> Result<usize, JoinRefused> {
        let mut inner = self.inner.lock().expect("lobby lock");
        if inner.ineligible.contains(&participant.identity) {
            return Err(JoinRefused::NotEligible {
                identity: participant.identity,
                rounds_left: inner.tree_rounds_left,
            });
        }
        if !inner.busy.insert(participant.identity.clone()) {
            return Err(JoinRefused::Busy(participant.identity));
        }
        inner.waiting.push(participant);
        let waiting = inner.waiting.len();
        drop(inner);
        self.changed.notify_waiters();
        self.changed.notify_one();
        Ok(waiting)
    }

    /// Clients still connected, after forgetting those that hung up.
    pub(crate) fn waiting(&self) -> usize {
        let mut inner = self.inner.lock().expect("lobby lock");
        let Inner { waiting, busy, .. } = &mut *inner;
        waiting.retain(|p| {
            let open = !p.tx.is_closed();
            if !open {
                busy.remove(&p.identity);
            }
            open
        });
        waiting.len()
    }

    /// Waits until the lobby changes.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Connected clients that `eligible` admits to the next round's cohort.
    pub(crate) fn eligible(&self, eligible: &dyn Fn(&Participant) -> bool) -> usize {
        self.waiting();
        let inner = self.inner.lock().expect("lobby lock");
        inner.waiting.iter().filter(|p| eligible(p)).count()
    }

    /// Samples a round's cohort uniformly at random with `rng` from the
    /// connected clients that `eligible` admits: `size(eligible waiting)`
    /// of them ([`crate::cohort::sample_from`]). The others, and every
    /// ineligible client, stay waiting. Returns the cohort and how many
    /// eligible clients waited. The cohort's identities stay busy until
    /// [`Lobby::release`].
    pub(crate) fn sample<R: rand::Rng + ?Sized>(
        &self,
        size: impl FnOnce(usize) -> usize,
        eligible: &dyn Fn(&Participant) -> bool,
        rng: &mut R,
    ) -> (Vec<Participant>, usize) {
        self.waiting();
        let mut inner = self.inner.lock().expect("lobby lock");
        crate::cohort::sample_from(&mut inner.waiting, size, eligible, rng)
    }

    /// Sends every waiting client a Lobby frame (how many wait, and
    /// `min_clients`): the keep-alive that tells it, the proxies and the NAT
    /// between, that it is still waiting, so none of them time the stream
    /// out while rounds run without it. A client whose queue is half full
    /// is skipped: it has stopped reading, and the room is kept for its
    /// RoundStart. Returns how many were sent one.
    pub(crate) fn keep_alive(&self, min_clients: u32) -> usize {
        let waiting = self.waiting();
        let inner = self.inner.lock().expect("lobby lock");
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Lobby(v1::Lobby {
                waiting: waiting as u32,
                min_clients,
            })),
        };
        inner
            .waiting
            .iter()
            .filter(|p| p.tx.capacity() * 2 > p.tx.max_capacity())
            .filter(|p| p.tx.try_send(Ok(frame.clone())).is_ok())
            .count()
    }

    /// Returns clients taken by [`Lobby::sample`] when the round could not
    /// open after all; their identities are still busy.
    pub(crate) fn put_back(&self, participants: Vec<Participant>) {
        let mut inner = self.inner.lock().expect("lobby lock");
        let mut rest = std::mem::take(&mut inner.waiting);
        inner.waiting = participants;
        inner.waiting.append(&mut rest);
    }

    /// Frees identities after their round ended.
    pub(crate) fn release<'a>(&self, identities: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.inner.lock().expect("lobby lock");
        for id in identities {
            inner.busy.remove(id);
        }
    }

    /// DP-FTRL: the identities that took part in the current tree, which
    /// has at most `rounds_left` rounds left. They are refused at join
    /// from now on, and those waiting are sent away, with
    /// [`not_eligible_status`]: a client that cannot be sampled before
    /// the tree ends must not hold a slot of the connection cap that the
    /// clients the tree needs are waiting for (red-team finding,
    /// 2026-12-02). An empty set (a new tree, or no DP-FTRL) admits all.
    pub(crate) fn set_ineligible(&self, identities: HashSet<String>, rounds_left: u64) {
        let mut inner = self.inner.lock().expect("lobby lock");
        let Inner {
            waiting,
            busy,
            ineligible,
            tree_rounds_left,
        } = &mut *inner;
        waiting.retain(|p| {
            if !identities.contains(&p.identity) {
                return true;
            }
            let _ =
                p.tx.try_send(Err(not_eligible_status(&p.identity, rounds_left)));
            busy.remove(&p.identity);
            false
        });
        *ineligible = identities;
        *tree_rounds_left = rounds_left;
    }

    /// Refuses every waiting client with `status` (shutdown, budget spent).
    pub(crate) fn close_all(&self, status: &Status) {
        let mut inner = self.inner.lock().expect("lobby lock");
        for p in inner.waiting.drain(..) {
            let _ = p.tx.try_send(Err(status.clone()));
        }
        inner.busy.clear();
    }
}
