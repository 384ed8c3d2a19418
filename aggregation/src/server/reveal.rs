//! The reveal step, server side: between the close of MaskedInput and the
//! first message that tells anyone who survived, the server asks a bounded
//! set of accusers for their share-encryption secrets and judges their
//! accusations with them ([`crate::accusation`]).
//!
//! Who is asked is fixed before any request goes out, from the accusations
//! alone: accusers in ascending id, each one asked only if the shares it
//! holds, exposed together with those of every accuser already asked (and
//! any key revealed before), keep each client within the threshold's
//! exposure margin. No key the server sees can change that choice, and an
//! accuser that does not answer stays counted as exposed.

use super::masked_input::MaskedInput;
use crate::ClientId;

/// Whether an asked accuser has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// Not yet.
    Waiting,
    /// Its key arrived and was judged.
    Answered,
    /// Its stream ended without an answer.
    Gone,
}

/// One accuser the server asks for its key.
#[derive(Debug)]
pub(super) struct Asked {
    /// Who.
    pub(super) accuser: ClientId,
    /// The senders it accused: what the request names.
    pub(super) senders: Vec<ClientId>,
    /// Whether it answered.
    pub(super) answer: Answer,
}

/// The masked-input stage's data, kept while the asked accusers answer.
pub(super) struct RevealShareKeys {
    pub(super) masked: MaskedInput,
    /// The accusers asked, ascending.
    pub(super) asked: Vec<Asked>,
}

impl RevealShareKeys {
    pub(super) fn new(masked: MaskedInput, asked: Vec<Asked>) -> Self {
        RevealShareKeys { masked, asked }
    }

    /// The asked accuser `id`, if it was asked.
    pub(super) fn asked_mut(&mut self, id: ClientId) -> Option<&mut Asked> {
        let pos = self.asked.binary_search_by_key(&id, |a| a.accuser).ok()?;
        Some(&mut self.asked[pos])
    }
}
