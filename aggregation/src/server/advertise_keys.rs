//! Stage 0, AdvertiseKeys, server side: record each client's public keys,
//! then send every client the keys of its neighbours that advertised.
//!
//! The lists are a function of how far clients got (never of timing or
//! evictions after the stage), so the list a client receives and the list its
//! ShareKeys message is checked against always agree.
//!
//! Before it is stored, an advert's keys are checked (the clients check them
//! too, but a client that finds a bad key can only refuse the round, which
//! would let one bad advert cost every neighbour its round): `c_pk` and
//! `s_pk` must differ, neither may be a low-order point
//! ([`crate::keys::is_low_order`]: one of the seven encodings of the
//! small-order points, top bit ignored, checked against a scalar
//! multiplication in the tests), and neither may repeat a key of another client's advert in the
//! round (the first advert keeps it). A client whose advert fails is dropped
//! with an error that names the problem; the round goes on.
//!
//! In the malicious-server model each advert's signature is relayed with it
//! (the clients verify it); a server with the identity directory also checks
//! it on arrival, so one client with a bad signature is dropped here instead
//! of making all its neighbours refuse the round.

use super::{Progress, Roster};
use crate::ClientId;
use crate::config::RoundConfig;
use crate::graph::NeighbourGraph;
use crate::identity::{IdentityDirectory, SessionDigest, transcript_hash};
use crate::keys::{PublicKeys, is_low_order};
use crate::messages::{Advert, ServerBody};

use super::{AdvertProblem, ClientViolation};

pub(super) fn accept(
    config: &RoundConfig,
    directory: Option<(&IdentityDirectory, &SessionDigest)>,
    roster: &mut Roster,
    from: ClientId,
    advert: Advert,
) -> Result<(), ClientViolation> {
    if config.is_signed() {
        let Some(signature) = &advert.signature else {
            return Err(ClientViolation::Signature("the advert is not signed"));
        };
        if let Some((directory, session)) = directory {
            let valid = directory
                .get(from)
                .is_some_and(|key| key.verify_advert(session, from, &advert.keys, signature));
            if !valid {
                return Err(ClientViolation::Signature(
                    "the advert signature does not verify under the client's identity",
                ));
            }
        }
    }
    check_keys(roster, &advert.keys).map_err(ClientViolation::BadAdvert)?;
    roster.advertised.insert(advert.keys.c_pk, from);
    roster.advertised.insert(advert.keys.s_pk, from);
    roster.keys[from.index()] = Some(advert.keys);
    roster.advert_signatures[from.index()] = advert.signature;
    Ok(())
}

/// The checks on an advert's keys, against each other and against every
/// key advertised before in the round.
fn check_keys(roster: &Roster, keys: &PublicKeys) -> Result<(), AdvertProblem> {
    if keys.c_pk == keys.s_pk {
        return Err(AdvertProblem::SameKeys);
    }
    for (name, key) in [("c_pk", &keys.c_pk), ("s_pk", &keys.s_pk)] {
        if is_low_order(key) {
            return Err(AdvertProblem::LowOrder(name));
        }
        if let Some(other) = roster.advertised.get(key) {
            return Err(AdvertProblem::Duplicate {
                key: name,
                other: *other,
            });
        }
    }
    Ok(())
}

/// The session's transcript hash: every advert that will be relayed (the
/// clients that advertised, in slot order), as each client computes it from
/// its NeighbourKeys and its own advert on the complete graph.
pub(super) fn transcript(
    config: &RoundConfig,
    directory: &IdentityDirectory,
    roster: &Roster,
) -> SessionDigest {
    let adverts: Vec<(ClientId, Advert)> = (0..config.num_clients)
        .map(ClientId)
        .filter(|id| roster.reached(*id, Progress::Advertised))
        .map(|id| (id, advert_of(roster, id)))
        .collect();
    transcript_hash(config, directory, adverts.iter().map(|(id, a)| (*id, a)))
}

fn advert_of(roster: &Roster, id: ClientId) -> Advert {
    Advert {
        keys: roster.keys[id.index()].expect("advertised clients have keys"),
        signature: roster.advert_signatures[id.index()],
    }
}

/// The neighbours of `id` that advertised keys.
pub(super) fn advertised_neighbours(
    graph: &NeighbourGraph,
    roster: &Roster,
    id: ClientId,
) -> impl Iterator<Item = ClientId> {
    graph
        .neighbours(id.0)
        .into_iter()
        .map(ClientId)
        .filter(|v| roster.reached(*v, Progress::Advertised))
}

pub(super) fn neighbour_keys(graph: &NeighbourGraph, roster: &Roster, id: ClientId) -> ServerBody {
    ServerBody::NeighbourKeys(
        advertised_neighbours(graph, roster, id)
            .map(|v| (v, advert_of(roster, v)))
            .collect(),
    )
}
