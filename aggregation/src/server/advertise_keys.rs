//! Stage 0, AdvertiseKeys, server side: record each client's public keys,
//! then send every client the keys of its neighbours that advertised.
//!
//! The lists are a function of how far clients got (never of timing or
//! evictions after the stage), so the list a client receives and the list its
//! ShareKeys message is checked against always agree.
//!
//! In the malicious-server model each advert's signature is relayed with it
//! (the clients verify it); a server with the identity directory also checks
//! it on arrival, so one client with a bad signature is dropped here instead
//! of making all its neighbours refuse the round.

use super::{LEVEL_ADVERTISED, Roster};
use crate::ClientId;
use crate::config::RoundConfig;
use crate::graph::NeighbourGraph;
use crate::identity::IdentityDirectory;
use crate::messages::{Advert, ServerBody};

use super::ClientViolation;

pub(super) fn accept(
    config: &RoundConfig,
    directory: Option<&IdentityDirectory>,
    roster: &mut Roster,
    from: ClientId,
    advert: Advert,
) -> Result<(), ClientViolation> {
    if config.is_signed() {
        let Some(signature) = &advert.signature else {
            return Err(ClientViolation::Signature("the advert is not signed"));
        };
        if let Some(directory) = directory {
            let valid = directory.get(from).is_some_and(|key| {
                key.verify_advert(config.round_id, from, &advert.keys, signature)
            });
            if !valid {
                return Err(ClientViolation::Signature(
                    "the advert signature does not verify under the client's identity",
                ));
            }
        }
    }
    roster.keys[from.index()] = Some(advert.keys);
    roster.advert_signatures[from.index()] = advert.signature;
    Ok(())
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
        .filter(|v| roster.reached(*v, LEVEL_ADVERTISED))
}

pub(super) fn neighbour_keys(graph: &NeighbourGraph, roster: &Roster, id: ClientId) -> ServerBody {
    ServerBody::NeighbourKeys(
        advertised_neighbours(graph, roster, id)
            .map(|v| {
                (
                    v,
                    Advert {
                        keys: roster.keys[v.index()].expect("advertised clients have keys"),
                        signature: roster.advert_signatures[v.index()],
                    },
                )
            })
            .collect(),
    )
}
