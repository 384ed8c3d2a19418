//! Stage 0, AdvertiseKeys, server side: record each client's public keys,
//! then send every client the keys of its neighbours that advertised.
//!
//! The lists are a function of how far clients got (never of timing or
//! evictions after the stage), so the list a client receives and the list its
//! ShareKeys message is checked against always agree.

use super::{LEVEL_ADVERTISED, Roster};
use crate::ClientId;
use crate::graph::NeighbourGraph;
use crate::keys::PublicKeys;
use crate::messages::ServerBody;

pub(super) fn accept(roster: &mut Roster, from: ClientId, keys: PublicKeys) {
    roster.keys[from.index()] = Some(keys);
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
                    roster.keys[v.index()].expect("advertised clients have keys"),
                )
            })
            .collect(),
    )
}
