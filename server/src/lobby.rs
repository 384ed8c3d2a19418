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
    /// Who authenticated (token name, certificate digest, or an anonymous
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
}

#[derive(Debug, Default)]
struct Inner {
    waiting: Vec<Participant>,
    /// Identities waiting or in the running round.
    busy: HashSet<String>,
}

/// The shared lobby.
#[derive(Debug, Default)]
pub(crate) struct Lobby {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Lobby {
    /// Adds a client and returns how many wait; `Err` with the identity if
    /// it is already waiting or in a round.
    pub(crate) fn join(&self, participant: Participant) -> Result<usize, String> {
        let mut inner = self.inner.lock().expect("lobby lock");
        if !inner.busy.insert(participant.identity.clone()) {
            return Err(participant.identity);
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
        let Inner { waiting, busy } = &mut *inner;
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

    /// Refuses every waiting client with `status` (shutdown, budget spent).
    pub(crate) fn close_all(&self, status: &Status) {
        let mut inner = self.inner.lock().expect("lobby lock");
        for p in inner.waiting.drain(..) {
            let _ = p.tx.try_send(Err(status.clone()));
        }
        inner.busy.clear();
    }
}
