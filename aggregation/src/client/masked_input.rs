//! Stage 2, MaskedInputCollection (Bonawitz et al. round 2).
//!
//! The client sends `y = x + PRG(b) + Σ_v ±PRG(s_uv) mod 2^bits` over the
//! neighbours `v` that sealed shares for it, with `+` when `u < v` and `-`
//! otherwise, so every pair's masks cancel in the sum. The masking secret key
//! the self-mask seed are no longer needed once `y` is computed: they are
//! dropped (and zeroized) here, and only the shares the client holds go on.

use zeroize::Zeroizing;

use super::consistency_check::ConsistencyCheck;
use super::unmasking::Unmasking;
use super::{Context, HeldShares};
use crate::ClientId;
use crate::keys::self_mask_seed;
use crate::mask::{MaskSeed, MaskSign, apply_masks};
use crate::messages::{ClientBody, ClientMessage};
use crate::packing::pack;

/// Shares received; waiting for (or holding) the input to mask.
pub(super) struct MaskedInput {
    self_mask_secret: Zeroizing<[u8; 32]>,
    /// Neighbours to mask with and their pairwise seeds, ascending.
    partners: Vec<(ClientId, MaskSeed)>,
    held: HeldShares,
}

/// Where a client goes after sending its masked input.
pub(super) enum Next {
    ConsistencyCheck(ConsistencyCheck),
    Unmasking(Unmasking),
}

impl MaskedInput {
    pub(super) fn new(
        self_mask_secret: Zeroizing<[u8; 32]>,
        partners: Vec<(ClientId, MaskSeed)>,
        held: HeldShares,
    ) -> Self {
        MaskedInput {
            self_mask_secret,
            partners,
            held,
        }
    }

    /// Masks the input and packs it for the wire.
    pub(super) fn mask(self, ctx: &Context, mut input: Vec<u32>) -> (Next, ClientMessage) {
        let config = &ctx.config;
        let mut seeds: Vec<(MaskSeed, MaskSign)> = Vec::with_capacity(self.partners.len() + 1);
        seeds.push((
            self_mask_seed(&self.self_mask_secret, config.round_id, ctx.id),
            MaskSign::Add,
        ));
        for (partner, seed) in self.partners {
            let sign = if ctx.id < partner {
                MaskSign::Add
            } else {
                MaskSign::Subtract
            };
            seeds.push((seed, sign));
        }
        let refs: Vec<(&MaskSeed, MaskSign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
        apply_masks(config.prg, &refs, config.bits, &mut input);
        let packed = pack(&input, config.bits);
        let message = ctx.message(ClientBody::MaskedInput(packed));
        let next = if config.has_consistency_check() {
            Next::ConsistencyCheck(ConsistencyCheck::new(self.held))
        } else {
            Next::Unmasking(Unmasking::new(self.held, None))
        };
        (next, message)
    }
}
