//! Stage 1, ShareKeys, server side: collect each client's sealed share
//! bundles. The server cannot open them; it checks that a client sealed
//! exactly one bundle of the right size for each neighbour that advertised
//! keys, and keeps them to relay at the stage's end.

use super::masked_input::MaskedInput;
use super::{ClientViolation, Roster, ThresholdMet, advertise_keys};
use crate::ClientId;
use crate::graph::NeighbourGraph;
use crate::keys::TAG_LEN;
use crate::messages::SealedBundle;
use crate::shamir::SHARE_BYTES;

/// Length of a sealed bundle: two shares and the AEAD tag.
pub(super) const BUNDLE_LEN: usize = 2 * SHARE_BYTES + TAG_LEN;

/// Collecting share bundles.
pub(super) struct ShareKeys {
    /// Bundles by sender, each list ascending by receiver.
    bundles: Vec<Option<Vec<SealedBundle>>>,
}

impl ShareKeys {
    pub(super) fn new(_met: ThresholdMet, num_clients: u32) -> Self {
        ShareKeys {
            bundles: vec![None; num_clients as usize],
        }
    }

    pub(super) fn accept(
        &mut self,
        graph: &NeighbourGraph,
        roster: &Roster,
        from: ClientId,
        bundles: Vec<SealedBundle>,
    ) -> Result<(), ClientViolation> {
        let mut expected = advertise_keys::advertised_neighbours(graph, roster, from);
        for bundle in &bundles {
            match expected.next() {
                Some(receiver) if receiver == bundle.peer => {}
                Some(receiver) => {
                    return Err(ClientViolation::Bundles(format!(
                        "expected a bundle for {receiver}, found one for {}",
                        bundle.peer
                    )));
                }
                None => {
                    return Err(ClientViolation::Bundles(format!(
                        "unexpected bundle for {}",
                        bundle.peer
                    )));
                }
            }
            if bundle.ciphertext.len() != BUNDLE_LEN {
                return Err(ClientViolation::Bundles(format!(
                    "the bundle for {} is {} bytes, expected {BUNDLE_LEN}",
                    bundle.peer,
                    bundle.ciphertext.len()
                )));
            }
        }
        if let Some(missing) = expected.next() {
            return Err(ClientViolation::Bundles(format!("no bundle for {missing}")));
        }
        self.bundles[from.index()] = Some(bundles);
        Ok(())
    }

    pub(super) fn into_masked_input(self, _met: ThresholdMet, dim: u32) -> MaskedInput {
        MaskedInput::new(self.bundles, dim)
    }
}
