//! Stage 3, ConsistencyCheck, server side: each survivor is told the
//! survivor set and confirms it. Only clients that confirm are asked for
//! shares.
//!
//! Semi-malicious model: the set is the survivors around each client,
//! confirmed without a signature. Malicious-server model: the set is the
//! round's whole survivor set, every client signs it (bound to the
//! session's transcript hash), and the server relays
//! the signatures in the unmasking requests; a client reveals shares only
//! against a quorum of them ([`crate::config::RoundConfig::signature_quorum`]).

use super::unmasking::Unmasking;
use super::{ClientViolation, Progress, Roster, ThresholdMet};
use crate::ClientId;
use crate::config::RoundConfig;
use crate::identity::{IdentityDirectory, IdentitySignature, SessionDigest};

/// Collecting confirmations; the running sum waits.
pub(super) struct ConsistencyCheck {
    sum: Vec<u32>,
}

impl ConsistencyCheck {
    pub(super) fn new(sum: Vec<u32>) -> Self {
        ConsistencyCheck { sum }
    }

    pub(super) fn into_unmasking(self, _met: ThresholdMet, num_clients: u32) -> Unmasking {
        Unmasking::new(self.sum, num_clients)
    }
}

/// Checks and records a client's confirmation.
pub(super) fn accept(
    config: &RoundConfig,
    directory: Option<(&IdentityDirectory, &SessionDigest)>,
    survivor_set: &[ClientId],
    roster: &mut Roster,
    from: ClientId,
    signature: Option<IdentitySignature>,
) -> Result<(), ClientViolation> {
    if !config.is_signed() {
        return Ok(());
    }
    let Some(signature) = signature else {
        return Err(ClientViolation::Signature(
            "the survivor-set confirmation is not signed",
        ));
    };
    if let Some((directory, transcript)) = directory {
        let valid = directory
            .get(from)
            .is_some_and(|key| key.verify_survivors(transcript, survivor_set, &signature));
        if !valid {
            return Err(ClientViolation::Signature(
                "the survivor-set signature does not verify under the client's identity",
            ));
        }
    }
    roster.survivor_signatures[from.index()] = Some(signature);
    Ok(())
}

/// The survivor-set signatures of every client that confirmed, ascending.
pub(super) fn signatures(roster: &Roster) -> Vec<(ClientId, IdentitySignature)> {
    roster
        .clients()
        .filter(|(_, progress)| *progress >= Progress::Confirmed)
        .filter_map(|(id, _)| roster.survivor_signatures[id.index()].map(|s| (id, s)))
        .collect()
}
