//! Stage 3, ConsistencyCheck (Bonawitz et al. round 3, semi-malicious model).
//!
//! Before revealing any share, the client learns which of its neighbours the
//! server counts as survivors and confirms that set. The unmasking request
//! must then name exactly this set, so the server cannot tell this client one
//! dropout story at the check and another when asking for shares. Signing the
//! set with long-term identity keys, which stops the server from telling
//! different clients different stories, is the malicious-server work that
//! builds on this stage.

use super::unmasking::Unmasking;
use super::{Context, HeldShares, Violation};
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
        super::unmasking::check_survivors(ctx, &self.held, &survivors)?;
        let message = ctx.message(ClientBody::ConsistencyCheck);
        Ok((Unmasking::new(self.held, Some(survivors)), message))
    }
}
