//! Stage 3, ConsistencyCheck (Bonawitz et al. round 3), client side.
//!
//! Before revealing any share, the client learns which clients the server
//! counts as survivors and confirms that set. The unmasking request must
//! then name exactly this set (as far as this client's neighbourhood goes),
//! so the server cannot tell this client one dropout story at the check and
//! another when asking for shares.
//!
//! - Semi-malicious model: the set is the survivors among the client's
//!   neighbours and itself, confirmed without a signature.
//! - Malicious-server model: the set is the round's whole survivor set and
//!   the client signs (the session's transcript hash, set) with its
//!   long-term identity. It will
//!   reveal shares only against a quorum of valid signatures over this very
//!   set ([`crate::config::RoundConfig::signature_quorum`]), which stops a
//!   server from telling different clients different stories: an honest
//!   client signs one set per round, and two sets cannot both reach the
//!   quorum.

use super::unmasking::{Confirmed, Unmasking};
use super::{Context, HeldShares, Violation, strictly_ascending};
use crate::ClientId;
use crate::messages::{ClientBody, ClientMessage};

/// Masked input sent; waiting for the survivor set.
pub(super) struct ConsistencyCheck {
    held: HeldShares,
}

impl ConsistencyCheck {
    pub(super) fn new(held: HeldShares) -> Self {
        ConsistencyCheck { held }
    }

    pub(super) fn handle_survivors(
        self,
        ctx: &Context,
        survivors: Vec<ClientId>,
    ) -> Result<(Unmasking, ClientMessage), Violation> {
        let Some(identity) = &ctx.identity else {
            super::unmasking::check_survivors(ctx, &self.held, &survivors)?;
            let message = ctx.message(ClientBody::ConsistencyCheck(None));
            let confirmed = Confirmed {
                around: survivors,
                signed: None,
            };
            return Ok((Unmasking::new(self.held, Some(confirmed)), message));
        };
        // The whole round's survivor set: sorted, inside the round, with
        // this client, large enough for a quorum to sign it.
        if !strictly_ascending(&survivors, |id| *id) {
            return Err(Violation::Unsorted("survivors"));
        }
        if let Some(stranger) = survivors.iter().find(|id| !ctx.config.contains(**id)) {
            return Err(Violation::UnknownSurvivor(*stranger));
        }
        let quorum = ctx.config.signature_quorum();
        if (survivors.len() as u32) < quorum {
            return Err(Violation::BelowThreshold {
                have: survivors.len() as u32,
                threshold: quorum,
            });
        }
        let around: Vec<ClientId> = survivors
            .iter()
            .copied()
            .filter(|id| *id == ctx.id || ctx.is_neighbour(*id))
            .collect();
        super::unmasking::check_survivors(ctx, &self.held, &around)?;
        let transcript = ctx
            .transcript
            .as_ref()
            .expect("a signed round has its transcript once adverts are checked");
        let signature = identity.key.sign_survivors(transcript, &survivors);
        let message = ctx.message(ClientBody::ConsistencyCheck(Some(signature)));
        let confirmed = Confirmed {
            around,
            signed: Some(survivors),
        };
        Ok((Unmasking::new(self.held, Some(confirmed)), message))
    }
}
