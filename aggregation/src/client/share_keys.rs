//! Stage 1, ShareKeys (Bonawitz et al. round 1), receiving side.
//!
//! The server relays the bundles that live neighbours sealed for this client.
//! The client opens each one (the associated data binds round, sender and
//! receiver, so a bundle replayed from another round or re-addressed by the
//! server fails) and keeps the two shares it holds of each sender. The senders
//! are exactly the neighbours it will mask with: a neighbour whose bundle did
//! not arrive is treated as dropped before masking, on both sides.
//!
//! A bundle that arrives but does not open (or does not hold two shares at
//! this client's point) is not the server's fault as far as the client can
//! tell: only the sender and this client can seal or open it. The client
//! does not refuse the round over it; it accuses the senders instead and
//! sends no masked input. The accusation carries no key; in the semi-honest
//! model the client keeps its share-encryption secret, to reveal it if the
//! server asks (the secret opens the bundles it sealed too, so its own
//! secrets are exposed); where the server may deviate the secret is dropped
//! here and never revealed ([`crate::accusation`]).
//! Lists the server controls (order, senders, how many) are still checked
//! and refused as before.

use zeroize::Zeroizing;

use super::masked_input::MaskedInput;
use super::{Context, HeldShares, Violation, strictly_ascending};
use crate::ClientId;
use crate::accusation::{Accusation, open_bundle, reveals_share_key};
use crate::keys::ShareKey;
use crate::mask::MaskSeed;
use crate::messages::SealedBundle;

/// Shares sent; waiting for the neighbours' sealed bundles.
pub(super) struct ShareKeys {
    self_mask_secret: Zeroizing<[u8; 32]>,
    /// This round's `c_sk`, revealed only to accuse a sender.
    share_secret: Zeroizing<[u8; 32]>,
    /// The key to open each live neighbour's bundle, ascending.
    open_keys: Vec<(ClientId, ShareKey)>,
    /// Pairwise mask seeds with every live neighbour, parallel to
    /// `open_keys`.
    pairwise: Vec<(ClientId, MaskSeed)>,
}

impl ShareKeys {
    pub(super) fn new(
        self_mask_secret: Zeroizing<[u8; 32]>,
        share_secret: Zeroizing<[u8; 32]>,
        open_keys: Vec<(ClientId, ShareKey)>,
        pairwise: Vec<(ClientId, MaskSeed)>,
    ) -> Self {
        ShareKeys {
            self_mask_secret,
            share_secret,
            open_keys,
            pairwise,
        }
    }

    pub(super) fn handle_sealed_shares(
        self,
        ctx: &Context,
        bundles: Vec<SealedBundle>,
    ) -> Result<Opened, Violation> {
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
        let mut accused = Vec::new();
        for bundle in &bundles {
            let sender = bundle.peer;
            let Ok(pos) = self.open_keys.binary_search_by_key(&sender, |(id, _)| *id) else {
                return Err(if sender == ctx.id {
                    Violation::ListsSelf
                } else {
                    Violation::UnknownSender(sender)
                });
            };
            let (masking_key_share, self_mask_share) =
                match open_bundle(&self.open_keys[pos].1, &bundle.ciphertext, ctx.id) {
                    Ok(shares) => shares,
                    Err(_) => {
                        accused.push(sender);
                        continue;
                    }
                };
            from_neighbours.push((sender, masking_key_share, self_mask_share));
            // open_keys and pairwise are parallel lists.
            partners.push((sender, self.pairwise[pos].1.clone()));
        }
        if !accused.is_empty() {
            // Everything else this state holds is dropped (zeroized) here.
            // The key is kept for the server's request where the model lets
            // a client reveal it, and dropped otherwise.
            let may_reveal = reveals_share_key(ctx.config.threat_model);
            let (share_secret, kept) = match (may_reveal, ctx.reveal_unasked) {
                (false, _) => (None, None),
                (true, false) => (None, Some(self.share_secret)),
                (true, true) => (Some(self.share_secret), None),
            };
            return Ok(Opened::Accuse(
                Accusation {
                    share_secret,
                    accused,
                },
                kept,
            ));
        }
        Ok(Opened::All(MaskedInput::new(
            self.self_mask_secret,
            partners,
            HeldShares { from_neighbours },
        )))
    }
}

/// What the client does once the relayed bundles are in.
pub(super) enum Opened {
    /// Every bundle held this client's shares: on to masking.
    All(MaskedInput),
    /// Some did not: accuse their senders, and take no further part in the
    /// round but answering the server's request for the key, if it asks
    /// (the key kept for it, where the threat model allows a reveal).
    Accuse(Accusation, Option<Zeroizing<[u8; 32]>>),
}
