//! Stage 1, ShareKeys (Bonawitz et al. round 1), receiving side.
//!
//! The server relays the bundles that live neighbours sealed for this client.
//! The client opens each one (the associated data binds round, sender and
//! receiver, so a bundle replayed from another round or re-addressed by the
//! server fails) and keeps the two shares it holds of each sender. The senders
//! are exactly the neighbours it will mask with: a neighbour whose bundle did
//! not arrive is treated as dropped before masking, on both sides.

use zeroize::Zeroizing;

use super::masked_input::MaskedInput;
use super::{Context, HeldShares, Violation, strictly_ascending};
use crate::ClientId;
use crate::keys::ShareKey;
use crate::mask::MaskSeed;
use crate::messages::SealedBundle;
use crate::shamir::{SHARE_BYTES, Share};

/// Shares sent; waiting for the neighbours' sealed bundles.
pub(super) struct ShareKeys {
    self_mask_secret: Zeroizing<[u8; 32]>,
    /// The key to open each live neighbour's bundle, ascending.
    open_keys: Vec<(ClientId, ShareKey)>,
    /// Pairwise mask seeds with every live neighbour, parallel to
    /// `open_keys`.
    pairwise: Vec<(ClientId, MaskSeed)>,
}

impl ShareKeys {
    pub(super) fn new(
        self_mask_secret: Zeroizing<[u8; 32]>,
        open_keys: Vec<(ClientId, ShareKey)>,
        pairwise: Vec<(ClientId, MaskSeed)>,
    ) -> Self {
        ShareKeys {
            self_mask_secret,
            open_keys,
            pairwise,
        }
    }

    pub(super) fn handle_sealed_shares(
        self,
        ctx: &Context,
        bundles: Vec<SealedBundle>,
    ) -> Result<MaskedInput, Violation> {
        if !strictly_ascending(&bundles, |b| b.peer) {
            return Err(Violation::Unsorted("SealedShares"));
        }
        // The senders are the holders of this client's shares' counterparts:
        // with fewer than t of them some neighbour's secrets cannot be
        // rebuilt from this neighbourhood, and the round cannot complete.
        let holders = bundles.len() as u32;
        if holders < ctx.config.threshold {
            return Err(Violation::BelowThreshold {
                have: holders,
                threshold: ctx.config.threshold,
            });
        }
        let mut from_neighbours = Vec::with_capacity(bundles.len());
        let mut partners = Vec::with_capacity(bundles.len());
        for bundle in &bundles {
            let sender = bundle.peer;
            let Ok(pos) = self.open_keys.binary_search_by_key(&sender, |(id, _)| *id) else {
                return Err(if sender == ctx.id {
                    Violation::ListsSelf
                } else {
                    Violation::UnknownSender(sender)
                });
            };
            let plaintext = self.open_keys[pos]
                .1
                .open(&bundle.ciphertext)
                .map_err(|_| Violation::BadBundle(sender))?;
            if plaintext.len() != 2 * SHARE_BYTES {
                return Err(Violation::BadBundle(sender));
            }
            let masking_key_share = Share::from_bytes(&plaintext[..SHARE_BYTES])
                .map_err(|_| Violation::BadBundle(sender))?;
            let self_mask_share = Share::from_bytes(&plaintext[SHARE_BYTES..])
                .map_err(|_| Violation::BadBundle(sender))?;
            // Both shares must be evaluated at this client's point; anything
            // else means the sender (or a forger) is not following the
            // protocol.
            if masking_key_share.x() != ctx.id.share_x() || self_mask_share.x() != ctx.id.share_x()
            {
                return Err(Violation::BadBundle(sender));
            }
            from_neighbours.push((sender, masking_key_share, self_mask_share));
            // open_keys and pairwise are parallel lists.
            partners.push((sender, self.pairwise[pos].1.clone()));
        }
        Ok(MaskedInput::new(
            self.self_mask_secret,
            partners,
            HeldShares { from_neighbours },
        ))
    }
}
