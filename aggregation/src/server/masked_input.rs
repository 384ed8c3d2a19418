//! Stage 2, MaskedInputCollection, server side: relay the sealed bundles,
//! then add each masked input into one running sum as it arrives. Inputs are
//! never kept per client, so memory stays O(d + n k) however many clients
//! take part.
//!
//! A client that could not open some relayed bundles sends an accusation
//! instead of its masked input. The stage keeps the accusations
//! ([`MaskedInput::record_accusation`]) for the reveal step that follows it
//! (`reveal`), and [`MaskedInput::judge`] re-derives an accuser's open keys
//! from its revealed share key and tries the relayed bundles itself
//! ([`crate::accusation`]).

use super::consistency_check::ConsistencyCheck;
use super::unmasking::Unmasking;
use super::{ClientViolation, Progress, ThresholdMet};
use crate::ClientId;
use crate::accusation::{Accusation, BadBundle, open_revealed};
use crate::config::RoundConfig;
use crate::graph::NeighbourGraph;
use crate::keys::public_of_bytes;
use crate::messages::{SealedBundle, ServerBody};
use crate::packing::unpack;
use subtle::ConstantTimeEq;

use super::Roster;

/// An accusation judged: whether the accuser's held shares are now exposed,
/// and the verdict.
pub(super) struct Judgement {
    /// The revealed key matches the accuser's advert: every share it holds
    /// can be opened.
    pub(super) exposed: bool,
    /// The verdict, or what the accuser did wrong.
    pub(super) verdict: Result<Verdict, ClientViolation>,
}

/// What an accusation established.
pub(super) enum Verdict {
    /// Every accused bundle fails under the revealed key: the senders, with
    /// what is wrong with each bundle.
    Proven(Vec<(ClientId, BadBundle)>),
    /// No key came with it: nobody can be judged.
    Unproven,
}

/// Relaying shares and summing masked inputs.
pub(super) struct MaskedInput {
    bundles: Vec<Option<Vec<SealedBundle>>>,
    sum: Vec<u32>,
    /// Keyless accusations that a share key may still prove, with the
    /// senders each accuser named, in arrival order.
    accusations: Vec<(ClientId, Vec<ClientId>)>,
}

impl MaskedInput {
    pub(super) fn new(bundles: Vec<Option<Vec<SealedBundle>>>, dim: u32) -> Self {
        MaskedInput {
            bundles,
            sum: vec![0; dim as usize],
            accusations: Vec::new(),
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

    /// Judges `from`'s accusation: whether its revealed key is the one it
    /// advertised (then the shares it holds are exposed, whatever the
    /// verdict), and either the accused senders with what is wrong with
    /// each bundle, or the accuser's violation.
    pub(super) fn judge(
        &self,
        config: &RoundConfig,
        graph: &NeighbourGraph,
        roster: &Roster,
        from: ClientId,
        accusation: &Accusation,
    ) -> Judgement {
        let advertised = roster.keys[from.index()].expect("sharers advertised keys");
        // A revealed key that matches the advert exposes every share the
        // accuser holds, whatever else is wrong with the accusation.
        // (Compared in constant time like every key comparison, though a
        // key that does not match is nobody's secret.)
        let share_secret = accusation.share_secret.as_ref().map(|secret| {
            let matches = public_of_bytes(secret).ct_eq(&advertised.c_pk);
            (secret, bool::from(matches))
        });
        let exposed = share_secret.is_some_and(|(_, matches)| matches);
        let verdict = self
            .check_accused(graph, roster, from, accusation)
            .and_then(|()| match share_secret {
                // A claim without its proof: nobody can be judged.
                None => Ok(Verdict::Unproven),
                Some((_, false)) => Err(ClientViolation::Accusation(
                    "the revealed share key is not the one behind the advertised c_pk".into(),
                )),
                Some((secret, true)) => self
                    .try_bundles(config, roster, from, &accusation.accused, secret)
                    .map(Verdict::Proven),
            });
        Judgement { exposed, verdict }
    }

    /// Keeps `from`'s keyless accusation of `accused` for the reveal step.
    pub(super) fn record_accusation(&mut self, from: ClientId, accused: Vec<ClientId>) {
        self.accusations.push((from, accused));
    }

    /// The keyless accusations recorded, ascending by accuser.
    pub(super) fn take_accusations(&mut self) -> Vec<(ClientId, Vec<ClientId>)> {
        let mut accusations = std::mem::take(&mut self.accusations);
        accusations.sort_by_key(|(accuser, _)| *accuser);
        accusations
    }

    /// Checks that the accusation names someone, and only senders whose
    /// bundle for `from` this server relayed.
    fn check_accused(
        &self,
        graph: &NeighbourGraph,
        roster: &Roster,
        from: ClientId,
        accusation: &Accusation,
    ) -> Result<(), ClientViolation> {
        if accusation.accused.is_empty() {
            return Err(ClientViolation::Accusation("accuses nobody".into()));
        }
        for &sender in &accusation.accused {
            let relayed = graph.is_neighbour(from.0, sender.0)
                && roster.reached(sender, Progress::Shared)
                && self.relayed(sender, from).is_some();
            if !relayed {
                return Err(ClientViolation::Accusation(format!(
                    "{sender} sealed no bundle that was relayed to the accuser"
                )));
            }
        }
        Ok(())
    }

    /// The bundle `sender` sealed for `receiver`, if it shared keys.
    fn relayed(&self, sender: ClientId, receiver: ClientId) -> Option<&SealedBundle> {
        let bundles = self.bundles[sender.index()].as_ref()?;
        let pos = bundles.binary_search_by_key(&receiver, |b| b.peer).ok()?;
        Some(&bundles[pos])
    }

    /// Opens each accused sender's bundle for `from` with the key `from`
    /// revealed.
    fn try_bundles(
        &self,
        config: &RoundConfig,
        roster: &Roster,
        from: ClientId,
        accused: &[ClientId],
        share_secret: &[u8; 32],
    ) -> Result<Vec<(ClientId, BadBundle)>, ClientViolation> {
        let mut proven = Vec::with_capacity(accused.len());
        for &sender in accused {
            let bundle = self.relayed(sender, from).expect("check_accused found it");
            let sender_c_pk = roster.keys[sender.index()]
                .expect("sharers advertised keys")
                .c_pk;
            let problem = match open_revealed(
                share_secret,
                &sender_c_pk,
                config.round_id,
                sender,
                from,
                &bundle.ciphertext,
            ) {
                Ok(_) => return Err(ClientViolation::FalseAccusation { accused: sender }),
                Err(problem) => problem,
            };
            proven.push((sender, problem));
        }
        Ok(proven)
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
