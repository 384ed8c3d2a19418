//! The lobby: clients that joined and wait for the next round.
//!
//! A round opens once `min_clients` wait; clients that arrive while a round
//! runs wait for the next one (one stream per client per round, so nobody is
//! added to a round that has started). An identity may wait or take part
//! once at a time: a second stream with the same credentials is refused.

use std::collections::HashSet;
use std::sync::Mutex;

use tessera_proto::v1::{ClientFrame, ServerFrame};
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

    /// Takes up to `max` connected clients, oldest first, for a round.
    /// Their identities stay busy until [`Lobby::release`].
    pub(crate) fn take(&self, max: usize) -> Vec<Participant> {
        self.waiting();
        let mut inner = self.inner.lock().expect("lobby lock");
        let n = inner.waiting.len().min(max);
        inner.waiting.drain(..n).collect()
    }

    /// Connected clients whose identity is not in `excluded`: those a
    /// round may take (DP-FTRL excludes who already took part in the
    /// current tree; they keep waiting).
    pub(crate) fn waiting_eligible(&self, excluded: &HashSet<String>) -> usize {
        if excluded.is_empty() {
            return self.waiting();
        }
        self.waiting();
        let inner = self.inner.lock().expect("lobby lock");
        inner
            .waiting
            .iter()
            .filter(|p| !excluded.contains(&p.identity))
            .count()
    }

    /// [`Lobby::take`] of the clients whose identity is not in `excluded`,
    /// oldest first; the excluded keep their place in the lobby.
    pub(crate) fn take_eligible(&self, max: usize, excluded: &HashSet<String>) -> Vec<Participant> {
        if excluded.is_empty() {
            return self.take(max);
        }
        self.waiting();
        let mut inner = self.inner.lock().expect("lobby lock");
        let (mut taken, mut kept) = (Vec::new(), Vec::new());
        for p in inner.waiting.drain(..) {
            if taken.len() < max && !excluded.contains(&p.identity) {
                taken.push(p);
            } else {
                kept.push(p);
            }
        }
        inner.waiting = kept;
        taken
    }

    /// Returns clients taken by [`Lobby::take`] when the round could not
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
