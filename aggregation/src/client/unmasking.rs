//! Stage 4, Unmasking (Bonawitz et al. round 4), client side.
//!
//! The server names, among the neighbours this client holds shares of, the
//! survivors (whose masked input arrived) and the dropped (who shared keys but
//! sent no masked input). The client reveals its share of each survivor's
//! self-mask seed `b` and of each dropped neighbour's masking key `s_sk`.
//!
//! This is where privacy is won or lost, so the client refuses a request that
//! - names a neighbour both as survivor and as dropped (both secrets of one
//!   client would unmask its input),
//! - names anyone it holds no shares of, or leaves out one it does,
//! - leaves this client out of the survivors,
//! - names fewer than t survivors among its share holders,
//! - differs from the set confirmed in the consistency check,
//! - in the malicious-server model, comes without a quorum of valid
//!   signatures over the survivor set this client signed,
//!
//! and it answers only one request per round: the state is consumed by the
//! answer.

use super::{Context, HeldShares, Violation, strictly_ascending};
use crate::ClientId;
use crate::graph::GraphKind;
use crate::identity::IdentitySignature;
use crate::messages::{ClientBody, ClientMessage, UnmaskResponse};

/// Waiting for the unmasking request.
pub(super) struct Unmasking {
    held: HeldShares,
    /// The survivor set confirmed in the consistency check, if the round has
    /// one.
    confirmed: Option<Confirmed>,
}

/// What a client confirmed in the consistency check.
pub(super) struct Confirmed {
    /// The survivors among this client's neighbours and itself: what the
    /// unmasking request must name.
    pub(super) around: Vec<ClientId>,
    /// Malicious-server model: the whole survivor set this client signed.
    pub(super) signed: Option<Vec<ClientId>>,
}

/// Checks a survivor list against the shares this client holds: sorted,
/// only known clients, this client included, at least t in all.
pub(super) fn check_survivors(
    ctx: &Context,
    held: &HeldShares,
    survivors: &[ClientId],
) -> Result<(), Violation> {
    if !strictly_ascending(survivors, |id| *id) {
        return Err(Violation::Unsorted("survivors"));
    }
    for id in survivors {
        if *id != ctx.id && held.position(*id).is_none() {
            return Err(Violation::NoSharesHeld(*id));
        }
    }
    if survivors.binary_search(&ctx.id).is_err() {
        return Err(Violation::SelfNotSurvivor);
    }
    // With the complete graph the list names every survivor, so the
    // round's survivor floor can be checked here. In a SecAgg+ round the
    // client sees its neighbourhood alone and the floor rests on the
    // server; the client checks that its surviving neighbours (the holders
    // of its own shares, not counting itself) can reach t.
    let (floor, have) = match ctx.config.graph {
        GraphKind::Complete => (ctx.config.survivor_floor(), survivors.len() as u32),
        GraphKind::Harary { .. } => (ctx.config.threshold, survivors.len() as u32 - 1),
    };
    if have < floor {
        return Err(Violation::BelowThreshold {
            have,
            threshold: floor,
        });
    }
    Ok(())
}

impl HeldShares {
    fn position(&self, id: ClientId) -> Option<usize> {
        self.from_neighbours
            .binary_search_by_key(&id, |(owner, _, _)| *owner)
            .ok()
    }
}

impl Unmasking {
    pub(super) fn new(held: HeldShares, confirmed: Option<Confirmed>) -> Self {
        Unmasking { held, confirmed }
    }

    pub(super) fn handle_request(
        self,
        ctx: &Context,
        survivors: Vec<ClientId>,
        dropped: Vec<ClientId>,
        signatures: Vec<(ClientId, IdentitySignature)>,
    ) -> Result<ClientMessage, Violation> {
        if !strictly_ascending(&dropped, |id| *id) {
            return Err(Violation::Unsorted("dropped"));
        }
        // Both lists are sorted: one merge pass finds a client named twice.
        let (mut i, mut j) = (0, 0);
        while i < survivors.len() && j < dropped.len() {
            match survivors[i].cmp(&dropped[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    return Err(Violation::SurvivorAndDropped(survivors[i]));
                }
            }
        }
        check_survivors(ctx, &self.held, &survivors)?;
        for id in &dropped {
            if *id == ctx.id {
                return Err(Violation::SelfNotSurvivor);
            }
            if self.held.position(*id).is_none() {
                return Err(Violation::NoSharesHeld(*id));
            }
        }
        // Every neighbour this client holds shares of must be accounted for:
        // the server cannot leave one out now and ask about it later.
        if let Some((missing, _, _)) = self.held.from_neighbours.iter().find(|(owner, _, _)| {
            survivors.binary_search(owner).is_err() && dropped.binary_search(owner).is_err()
        }) {
            return Err(Violation::Unaccounted(*missing));
        }
        if let Some(confirmed) = &self.confirmed
            && confirmed.around != survivors
        {
            return Err(Violation::InconsistentSurvivors);
        }
        if let (
            Some(identity),
            Some(Confirmed {
                signed: Some(signed),
                ..
            }),
        ) = (&ctx.identity, &self.confirmed)
        {
            // A quorum of the set's members must have signed exactly the set
            // this client signed; one bad signature means the server forged
            // or altered it, and the client reveals nothing.
            if !strictly_ascending(&signatures, |(id, _)| *id) {
                return Err(Violation::Unsorted("signatures"));
            }
            for (signer, signature) in &signatures {
                if signed.binary_search(signer).is_err() {
                    return Err(Violation::SignerNotSurvivor(*signer));
                }
                // Bound to this session's transcript: a quorum kept from
                // another session (even of the same round id) does not
                // verify.
                let valid = match (&ctx.transcript, identity.directory.get(*signer)) {
                    (Some(transcript), Some(key)) => {
                        key.verify_survivors(transcript, signed, signature)
                    }
                    _ => false,
                };
                if !valid {
                    return Err(Violation::BadSignature {
                        client: *signer,
                        what: "survivor-set",
                    });
                }
            }
            let need = ctx.config.signature_quorum();
            if (signatures.len() as u32) < need {
                return Err(Violation::TooFewSignatures {
                    have: signatures.len() as u32,
                    need,
                });
            }
        }

        let mut response = UnmaskResponse::default();
        // This client holds no share of its own self-mask seed: its
        // neighbours alone reveal those.
        for id in survivors.iter().filter(|id| **id != ctx.id) {
            let pos = self.held.position(*id).expect("checked above");
            response
                .self_mask_shares
                .push((*id, self.held.from_neighbours[pos].2.clone()));
        }
        for id in &dropped {
            let pos = self.held.position(*id).expect("checked above");
            response
                .masking_key_shares
                .push((*id, self.held.from_neighbours[pos].1.clone()));
        }
        // `self` (every share this client held) is dropped and zeroized here.
        Ok(ctx.message(ClientBody::Unmasking(response)))
    }
}
