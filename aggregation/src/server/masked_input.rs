//! Stage 2, MaskedInputCollection, server side: relay the sealed bundles,
//! then add each masked input into one running sum as it arrives. Inputs are
//! never kept per client, so memory stays O(d + n k) however many clients
//! take part.

use super::consistency_check::ConsistencyCheck;
use super::unmasking::Unmasking;
use super::{ClientViolation, Progress, ThresholdMet};
use crate::ClientId;
use crate::config::RoundConfig;
use crate::graph::NeighbourGraph;
use crate::messages::{SealedBundle, ServerBody};
use crate::packing::unpack;

use super::Roster;

/// Relaying shares and summing masked inputs.
pub(super) struct MaskedInput {
    bundles: Vec<Option<Vec<SealedBundle>>>,
    sum: Vec<u32>,
}

impl MaskedInput {
    pub(super) fn new(bundles: Vec<Option<Vec<SealedBundle>>>, dim: u32) -> Self {
        MaskedInput {
            bundles,
            sum: vec![0; dim as usize],
        }
    }

    /// The bundles sealed for `receiver` by its neighbours that sent shares.
    pub(super) fn sealed_shares_for(
        &self,
        graph: &NeighbourGraph,
        roster: &Roster,
        receiver: ClientId,
    ) -> ServerBody {
        let mut relayed = Vec::new();
        for sender in graph.neighbours(receiver.0).into_iter().map(ClientId) {
            if !roster.reached(sender, Progress::Shared) {
                continue;
            }
            let Some(bundles) = &self.bundles[sender.index()] else {
                continue;
            };
            if let Ok(pos) = bundles.binary_search_by_key(&receiver, |b| b.peer) {
                relayed.push(SealedBundle {
                    peer: sender,
                    ciphertext: bundles[pos].ciphertext.clone(),
                });
            }
        }
        ServerBody::SealedShares(relayed)
    }

    pub(super) fn accept(
        &mut self,
        config: &RoundConfig,
        packed: &[u8],
    ) -> Result<(), ClientViolation> {
        let values = unpack(packed, config.bits, config.dim as usize)
            .map_err(|e| ClientViolation::MaskedInput(e.to_string()))?;
        for (acc, v) in self.sum.iter_mut().zip(&values) {
            *acc = acc.wrapping_add(*v);
        }
        Ok(())
    }

    pub(super) fn into_consistency_check(self, _met: ThresholdMet) -> ConsistencyCheck {
        ConsistencyCheck::new(self.sum)
    }

    pub(super) fn into_unmasking(self, _met: ThresholdMet, num_clients: u32) -> Unmasking {
        Unmasking::new(self.sum, num_clients)
    }
}
