//! Who is where in a round: each client's progress through the stages,
//! whether it is still in the round, and what it advertised. The stage
//! states read it to decide whom to relay to, whom to ask for shares and
//! which secrets the sum needs.

use crate::config::RoundConfig;
use crate::identity::IdentitySignature;
use crate::keys::PublicKeys;
use crate::{ClientId, Stage};

/// How far a client got in the round: the last stage whose message the
/// server accepted from it. The order is the protocol's: a client at one
/// step has completed every earlier one, so the clients at or past a step
/// are the paper's nested sets U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 (Bonawitz et al.), and
/// "at least [`Progress::Masked`]" means "its masked input is in the sum".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Progress {
    /// In the round; nothing accepted yet.
    Joined,
    /// Public keys advertised (AdvertiseKeys done).
    Advertised,
    /// Share bundles sent (ShareKeys done).
    Shared,
    /// Masked input added into the running sum (MaskedInput done).
    Masked,
    /// Survivor set confirmed (ConsistencyCheck done).
    Confirmed,
    /// Shares revealed: the client's part of the round is done.
    Answered,
}

impl Progress {
    /// What a client must have completed to take part in `stage`: answering
    /// the unmasking request is asked of the clients that confirmed the
    /// survivor set when the round has a consistency check, of the clients
    /// whose masked input arrived otherwise.
    pub(super) fn to_enter(stage: Stage, config: &RoundConfig) -> Progress {
        match stage {
            Stage::AdvertiseKeys => Progress::Joined,
            Stage::ShareKeys => Progress::Advertised,
            Stage::MaskedInput => Progress::Shared,
            Stage::ConsistencyCheck => Progress::Masked,
            Stage::Unmasking if config.has_consistency_check() => Progress::Confirmed,
            Stage::Unmasking => Progress::Masked,
        }
    }

    /// What a client has completed once the server accepted its `stage`
    /// message.
    pub(super) fn after(stage: Stage) -> Progress {
        match stage {
            Stage::AdvertiseKeys => Progress::Advertised,
            Stage::ShareKeys => Progress::Shared,
            Stage::MaskedInput => Progress::Masked,
            Stage::ConsistencyCheck => Progress::Confirmed,
            Stage::Unmasking => Progress::Answered,
        }
    }
}

/// One client's standing in the round: how far it got, and whether it is
/// still in it.
///
/// Eviction keeps the progress: what an evicted client sent before stays
/// part of the round (its advert in its neighbours' key lists and the
/// transcript, its bundles in the relayed shares, its masked input in the
/// sum, to be unmasked with its neighbours' shares), exactly as for a client
/// that dropped out silently. It is only expected, and sent, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Still in the round.
    Active(Progress),
    /// Dropped from the round (its connection closed, or it broke the
    /// protocol) after completing this much.
    Evicted(Progress),
}

/// Each client's standing and the keys it advertised. Shared by all stage
/// states.
#[derive(Debug)]
pub(super) struct Roster {
    standing: Vec<Standing>,
    pub(super) keys: Vec<Option<PublicKeys>>,
    /// Every public key advertised in the round (c_pk and s_pk alike) and
    /// who advertised it: no key may serve two clients or two purposes.
    pub(super) advertised: std::collections::HashMap<[u8; 32], ClientId>,
    /// Malicious-server model: each client's advert signature, relayed
    /// with its keys.
    pub(super) advert_signatures: Vec<Option<IdentitySignature>>,
    /// Malicious-server model: each client's signature over the survivor
    /// set, relayed in the unmasking requests.
    pub(super) survivor_signatures: Vec<Option<IdentitySignature>>,
}

impl Roster {
    pub(super) fn new(n: usize) -> Self {
        Roster {
            standing: vec![Standing::Active(Progress::Joined); n],
            keys: vec![None; n],
            advertised: std::collections::HashMap::with_capacity(2 * n),
            advert_signatures: vec![None; n],
            survivor_signatures: vec![None; n],
        }
    }

    /// How far `id` got, evicted since or not.
    pub(super) fn progress(&self, id: ClientId) -> Progress {
        match self.standing[id.index()] {
            Standing::Active(progress) | Standing::Evicted(progress) => progress,
        }
    }

    /// Whether `id` completed `step`, evicted since or not.
    pub(super) fn reached(&self, id: ClientId, step: Progress) -> bool {
        self.progress(id) >= step
    }

    /// How far `id` got, if it is still in the round.
    pub(super) fn active(&self, id: ClientId) -> Option<Progress> {
        match self.standing[id.index()] {
            Standing::Active(progress) => Some(progress),
            Standing::Evicted(_) => None,
        }
    }

    /// Every client with how far it got, evicted or not, ascending.
    pub(super) fn clients(&self) -> impl Iterator<Item = (ClientId, Progress)> + '_ {
        (0..self.standing.len() as u32)
            .map(ClientId)
            .map(|id| (id, self.progress(id)))
    }

    /// Clients still in the round that completed `step`.
    pub(super) fn count_active(&self, step: Progress) -> u32 {
        self.standing
            .iter()
            .filter(|s| matches!(s, Standing::Active(p) if *p >= step))
            .count() as u32
    }

    /// Clients evicted after completing exactly `step`.
    pub(super) fn count_evicted_at(&self, step: Progress) -> u32 {
        self.standing
            .iter()
            .filter(|s| **s == Standing::Evicted(step))
            .count() as u32
    }

    /// Records that `id` completed `step`.
    pub(super) fn advance(&mut self, id: ClientId, step: Progress) {
        self.standing[id.index()] = Standing::Active(step);
    }

    /// Drops `id` from the round; returns how far it got, or `None` if it
    /// was already evicted.
    pub(super) fn evict(&mut self, id: ClientId) -> Option<Progress> {
        let progress = self.active(id)?;
        self.standing[id.index()] = Standing::Evicted(progress);
        Some(progress)
    }
}
