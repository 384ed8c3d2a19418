//! Stage 4, Unmasking, server side (Bonawitz et al. round 4).
//!
//! Survivors reveal shares of the self-mask seed `b` of every survivor around
//! them and of the masking key `s_sk` of every neighbour that shared keys but
//! sent no masked input. With t shares of each, the server rebuilds
//! - each survivor's `b`, and subtracts its self-mask `PRG(b)`;
//! - each dropped client's `s_sk`, checks it against the `s_pk` the client
//!   advertised, and removes the pairwise masks its surviving neighbours added
//!   for it (`-PRG(s_uv)` for `u < d`, `+PRG(s_uv)` otherwise).
//!
//! What remains is the sum of the survivors' inputs mod 2^bits. The Lagrange
//! coefficients are computed once per set of share holders and reused for
//! every secret that set holds; reconstruction, key agreement and mask
//! expansion run on rayon.

use std::collections::HashMap;

use rayon::prelude::*;
use x25519_dalek::StaticSecret;
use zeroize::Zeroize;

use super::{ClientViolation, Progress, Roster, ThresholdMet, unmask_request_for};
use crate::ClientId;
use crate::config::RoundConfig;
use crate::graph::NeighbourGraph;
use crate::keys::{pairwise_mask_seed, public_of, self_mask_seed};
use crate::mask::{MaskSeed, MaskSign, apply_masks_parallel};
use crate::messages::{AbortReason, UnmaskResponse};
use crate::shamir::{LagrangeBasis, Share};

/// The result of a completed round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundOutput {
    /// The sum of the contributors' inputs, mod 2^bits.
    pub sum: Vec<u32>,
    /// Clients whose inputs are in the sum, ascending.
    pub contributors: Vec<ClientId>,
    /// Clients that shared keys but whose input is not in the sum (their
    /// leftover pairwise masks were removed), ascending.
    pub dropped_after_sharing: Vec<ClientId>,
}

/// Collecting shares.
pub(super) struct Unmasking {
    sum: Vec<u32>,
    /// Revealed shares of each survivor's self-mask seed, by owner.
    self_mask_shares: Vec<Vec<Share>>,
    /// Revealed shares of each dropped client's masking key, by owner.
    masking_key_shares: Vec<Vec<Share>>,
}

/// Every needed secret has at least t shares: ready for
/// [`super::ServerSession::unmask`].
pub(super) struct UnmaskingReady {
    inner: Unmasking,
}

impl Drop for Unmasking {
    fn drop(&mut self) {
        // The masked sum is no secret on its own, but an aborted round must
        // leave nothing behind that a later bug could unmask.
        self.sum.zeroize();
    }
}

impl Unmasking {
    pub(super) fn new(sum: Vec<u32>, num_clients: u32) -> Self {
        let n = num_clients as usize;
        Unmasking {
            sum,
            self_mask_shares: vec![Vec::new(); n],
            masking_key_shares: vec![Vec::new(); n],
        }
    }

    pub(super) fn accept(
        &mut self,
        graph: &NeighbourGraph,
        roster: &Roster,
        from: ClientId,
        response: UnmaskResponse,
    ) -> Result<(), ClientViolation> {
        let (mut survivors, dropped) = unmask_request_for(graph, roster, from);
        // The request names the responder among the survivors, but it holds
        // no share of its own secrets.
        survivors.retain(|id| *id != from);
        check_owners("self-mask", &survivors, &response.self_mask_shares, from)?;
        check_owners("masking-key", &dropped, &response.masking_key_shares, from)?;
        for (owner, share) in response.self_mask_shares {
            self.self_mask_shares[owner.index()].push(share);
        }
        for (owner, share) in response.masking_key_shares {
            self.masking_key_shares[owner.index()].push(share);
        }
        Ok(())
    }

    /// Checks that t shares arrived for every secret the sum needs.
    pub(super) fn into_ready(
        self,
        _met: ThresholdMet,
        graph: &NeighbourGraph,
        roster: &Roster,
        threshold: u32,
    ) -> Result<UnmaskingReady, AbortReason> {
        let t = threshold as usize;
        for (id, progress) in roster.clients() {
            let i = id.index();
            let enough = if progress >= Progress::Masked {
                self.self_mask_shares[i].len() >= t
            } else if progress == Progress::Shared && has_surviving_neighbour(graph, roster, id) {
                self.masking_key_shares[i].len() >= t
            } else {
                true
            };
            if !enough {
                return Err(AbortReason::SharesMissing);
            }
        }
        Ok(UnmaskingReady { inner: self })
    }
}

/// Whether every secret the sum needs has at least `threshold` holders among
/// the clients still in the round that completed `responders`: the holders
/// of a client's secrets are exactly its neighbours (it holds no share of its
/// own).
pub(super) fn feasible(
    graph: &NeighbourGraph,
    roster: &Roster,
    responders: Progress,
    threshold: u32,
) -> bool {
    let responds = |v: u32| roster.active(ClientId(v)).is_some_and(|p| p >= responders);
    roster.clients().all(|(id, progress)| {
        let holders = || {
            graph
                .neighbours(id.0)
                .into_iter()
                .filter(|v| responds(*v))
                .count() as u32
        };
        // A survivor's self-mask seed and a dropped sharer's masking key
        // (if some survivor masked with it) both need t responding holders.
        let needed = progress >= Progress::Masked
            || (progress == Progress::Shared && has_surviving_neighbour(graph, roster, id));
        !needed || holders() >= threshold
    })
}

/// Whether every client that sent its shares (and was not evicted) has at
/// least `threshold` neighbours that did too: the holders of its secrets,
/// and the senders of the bundles it will receive.
pub(super) fn every_sharer_has_holders(
    graph: &NeighbourGraph,
    roster: &Roster,
    threshold: u32,
) -> bool {
    let shared = |v: u32| {
        roster
            .active(ClientId(v))
            .is_some_and(|p| p >= Progress::Shared)
    };
    roster
        .clients()
        .filter(|(id, _)| shared(id.0))
        .all(|(id, _)| {
            graph
                .neighbours(id.0)
                .into_iter()
                .filter(|v| shared(*v))
                .count() as u32
                >= threshold
        })
}

/// Whether some neighbour of `id` masked its input (evicted since or not),
/// so the sum holds a pairwise mask agreed with `id`.
fn has_surviving_neighbour(graph: &NeighbourGraph, roster: &Roster, id: ClientId) -> bool {
    graph
        .neighbours(id.0)
        .into_iter()
        .any(|v| roster.reached(ClientId(v), Progress::Masked))
}

fn check_owners(
    what: &str,
    expected: &[ClientId],
    got: &[(ClientId, Share)],
    from: ClientId,
) -> Result<(), ClientViolation> {
    if got.len() != expected.len() || got.iter().zip(expected).any(|((owner, _), e)| owner != e) {
        return Err(ClientViolation::Response(format!(
            "{what} shares for {} clients do not match the {} requested",
            got.len(),
            expected.len()
        )));
    }
    if let Some((owner, _)) = got.iter().find(|(_, share)| share.x() != from.share_x()) {
        return Err(ClientViolation::Response(format!(
            "the {what} share of {owner} is not evaluated at the sender's point"
        )));
    }
    Ok(())
}

/// A rebuilt secret, ready to remove masks with.
enum Rebuilt {
    /// A survivor's self-mask seed.
    SelfMask(MaskSeed),
    /// A dropped client's masking key.
    MaskingKey(ClientId, StaticSecret),
}

/// One secret to rebuild: whose, which, and the t shares used.
struct Job<'a> {
    owner: ClientId,
    masking_key: bool,
    shares: Vec<&'a Share>,
    basis: usize,
}

/// The secrets to rebuild, each with its t shares and Lagrange basis, and
/// the clients whose input is in the sum or not.
struct RebuildPlan<'a> {
    /// One basis per distinct set of share holders.
    bases: Vec<LagrangeBasis>,
    jobs: Vec<Job<'a>>,
    contributors: Vec<ClientId>,
    dropped: Vec<ClientId>,
}

impl UnmaskingReady {
    pub(super) fn unmask(
        mut self,
        config: &RoundConfig,
        graph: &NeighbourGraph,
        roster: &Roster,
    ) -> Result<RoundOutput, AbortReason> {
        let t = config.threshold as usize;
        self.inner.sort_shares();
        let RebuildPlan {
            bases,
            jobs,
            contributors,
            dropped,
        } = plan_rebuild(&self.inner, graph, roster, t)?;
        let rebuilt = rebuild_secrets(&jobs, &bases, config, roster)?;
        drop(jobs);
        let mut sum = std::mem::take(&mut self.inner.sum);
        remove_masks(&rebuilt, config, graph, roster, &mut sum)?;
        Ok(RoundOutput {
            sum,
            contributors,
            dropped_after_sharing: dropped,
        })
    }
}

impl Unmasking {
    /// Sorts each secret's shares, lowest x first, so clients with the same
    /// holders share one Lagrange basis.
    fn sort_shares(&mut self) {
        for shares in self
            .self_mask_shares
            .iter_mut()
            .chain(self.masking_key_shares.iter_mut())
        {
            shares.sort_unstable_by_key(|s| s.x());
        }
    }
}

/// Picks t shares per secret the sum needs (each survivor's self-mask seed,
/// each dropped sharer's masking key if some survivor masked with it), with
/// one Lagrange basis per set of holders.
fn plan_rebuild<'a>(
    inner: &'a Unmasking,
    graph: &NeighbourGraph,
    roster: &Roster,
    t: usize,
) -> Result<RebuildPlan<'a>, AbortReason> {
    let mut contributors = Vec::new();
    let mut dropped = Vec::new();
    let mut bases: Vec<LagrangeBasis> = Vec::new();
    let mut basis_index: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for (owner, progress) in roster.clients() {
        let i = owner.index();
        let (masking_key, shares) = if progress >= Progress::Masked {
            contributors.push(owner);
            (false, &inner.self_mask_shares[i])
        } else if progress == Progress::Shared {
            dropped.push(owner);
            if !has_surviving_neighbour(graph, roster, owner) {
                continue;
            }
            (true, &inner.masking_key_shares[i])
        } else {
            continue;
        };
        let chosen: Vec<&Share> = shares.iter().take(t).collect();
        let xs: Vec<u32> = chosen.iter().map(|s| s.x()).collect();
        let basis = match basis_index.get(&xs) {
            Some(&b) => b,
            None => {
                let basis = LagrangeBasis::new(&xs).map_err(|_| AbortReason::Misbehaviour)?;
                bases.push(basis);
                basis_index.insert(xs, bases.len() - 1);
                bases.len() - 1
            }
        };
        jobs.push(Job {
            owner,
            masking_key,
            shares: chosen,
            basis,
        });
    }
    Ok(RebuildPlan {
        bases,
        jobs,
        contributors,
        dropped,
    })
}

/// Rebuilds every secret, in parallel. Self-mask seeds are ready at once;
/// masking keys still need one key agreement per surviving neighbour.
fn rebuild_secrets(
    jobs: &[Job<'_>],
    bases: &[LagrangeBasis],
    config: &RoundConfig,
    roster: &Roster,
) -> Result<Vec<Rebuilt>, AbortReason> {
    jobs.par_iter()
        .map(|job| rebuild_secret(job, &bases[job.basis], config, roster))
        .collect::<Result<_, AbortReason>>()
}

/// Rebuilds one secret from its t shares; a masking key must match the
/// public key its owner advertised.
fn rebuild_secret(
    job: &Job<'_>,
    basis: &LagrangeBasis,
    config: &RoundConfig,
    roster: &Roster,
) -> Result<Rebuilt, AbortReason> {
    let mut secret = basis
        .reconstruct(&job.shares)
        .map_err(|_| AbortReason::Misbehaviour)?;
    let rebuilt = if job.masking_key {
        let s_sk = StaticSecret::from(secret);
        let advertised = roster.keys[job.owner.index()].expect("sharers advertised keys");
        // A wrong share would rebuild a different key; the
        // advertised public key catches it before it corrupts
        // the sum.
        if public_of(&s_sk) != advertised.s_pk {
            secret.zeroize();
            return Err(AbortReason::Misbehaviour);
        }
        Rebuilt::MaskingKey(job.owner, s_sk)
    } else {
        Rebuilt::SelfMask(self_mask_seed(&secret, config.round_id, job.owner))
    };
    secret.zeroize();
    Ok(rebuilt)
}

/// Removes from `sum` every survivor's self-mask and the pairwise masks the
/// survivors added for each dropped sharer.
fn remove_masks(
    rebuilt: &[Rebuilt],
    config: &RoundConfig,
    graph: &NeighbourGraph,
    roster: &Roster,
    sum: &mut [u32],
) -> Result<(), AbortReason> {
    let pairs = dropped_pairs(rebuilt, graph, roster);
    let self_masks: Vec<(&MaskSeed, MaskSign)> = rebuilt
        .iter()
        .filter_map(|r| match r {
            Rebuilt::SelfMask(seed) => Some((seed, MaskSign::Subtract)),
            Rebuilt::MaskingKey(..) => None,
        })
        .collect();

    // Expand the self-masks while the pairwise seeds are agreed: the two
    // share the pool, so neither waits for the other to finish.
    let (_, pairwise) = rayon::join(
        || apply_masks_parallel(config.prg, &self_masks, config.bits, sum),
        || {
            pairs
                .par_iter()
                .map(|(s_sk, dropped, u)| pairwise_mask(s_sk, *dropped, *u, config, roster))
                .collect::<Result<Vec<_>, AbortReason>>()
        },
    );
    let pairwise = pairwise?;
    let refs: Vec<(&MaskSeed, MaskSign)> =
        pairwise.iter().map(|(seed, sign)| (seed, *sign)).collect();
    apply_masks_parallel(config.prg, &refs, config.bits, sum);
    Ok(())
}

/// One task per (dropped client, surviving neighbour) pair, so the key
/// agreements spread evenly over the pool.
fn dropped_pairs<'a>(
    rebuilt: &'a [Rebuilt],
    graph: &NeighbourGraph,
    roster: &Roster,
) -> Vec<(&'a StaticSecret, ClientId, ClientId)> {
    rebuilt
        .iter()
        .filter_map(|r| match r {
            Rebuilt::MaskingKey(owner, s_sk) => Some((owner, s_sk)),
            Rebuilt::SelfMask(_) => None,
        })
        .flat_map(|(owner, s_sk)| {
            graph
                .neighbours(owner.0)
                .into_iter()
                .map(ClientId)
                .filter(|u| roster.reached(*u, Progress::Masked))
                .map(move |u| (s_sk, *owner, u))
        })
        .collect()
}

/// The pairwise mask survivor `u` added for `dropped`, and the sign that
/// takes it away.
fn pairwise_mask(
    s_sk: &StaticSecret,
    dropped: ClientId,
    u: ClientId,
    config: &RoundConfig,
    roster: &Roster,
) -> Result<(MaskSeed, MaskSign), AbortReason> {
    let s_pk = roster.keys[u.index()]
        .expect("survivors advertised keys")
        .s_pk;
    let seed = pairwise_mask_seed(s_sk, &s_pk, config.round_id, dropped, u)
        .map_err(|_| AbortReason::Misbehaviour)?;
    // u added +PRG(s_ud) when u < d: take it away.
    let sign = if u < dropped {
        MaskSign::Subtract
    } else {
        MaskSign::Add
    };
    Ok((seed, sign))
}
