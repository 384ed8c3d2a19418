//! Stage 0, AdvertiseKeys (Bonawitz et al. round 0), and the client's half of
//! stage 1, ShareKeys.
//!
//! The client generates two X25519 key pairs and a self-mask seed `b`, sends
//! the public keys, and waits for the server to relay its neighbours' keys.
//! With those it Shamir-shares `s_sk` and `b` among its live neighbours
//! (threshold t) and seals each neighbour's shares under a key agreed with
//! that neighbour's `c_pk`, so the server that routes them learns nothing.
//!
//! The client keeps no share of its own secrets: the holders are exactly its
//! neighbours. A share kept by the owner would be revealed when the owner is
//! told it survived, giving a server that lies about dropouts one honest
//! holder more than the threshold bound `2t > k + a` counts (issue 11: with
//! the finder's k = 4, t = 3 and one corrupt neighbour, the victim's own
//! share, one neighbour's and the colluder's rebuilt `b` while the other two
//! neighbours and the colluder rebuilt `s_sk`).
//!
//! In the malicious-server model the advert is signed with the client's
//! long-term identity over (the session hash of the round configuration and
//! the identity roster, client id, keys), and every relayed neighbour advert
//! must carry a valid signature by the identity in that neighbour's slot: a
//! server substituting keys, or replaying an advert from another round, is
//! refused before any share is sealed. The checked adverts and the client's
//! own then make the session's transcript hash, which every survivor-set
//! signature of the session binds ([`crate::identity::transcript_hash`]).

use chacha20::ChaCha20Rng;
use rand_core::Rng;
use zeroize::Zeroizing;

use super::share_keys::ShareKeys;
use super::{Context, Violation, strictly_ascending};
use crate::ClientId;
use crate::identity::{SessionDigest, transcript_hash};
use crate::keys::{ClientKeys, PublicKeys, ShareKey, pairwise_mask_seed};
use crate::mask::MaskSeed;
use crate::messages::{Advert, ClientBody, ClientMessage, SealedBundle};
use crate::shamir;

/// The bundles sealed for the neighbours, and the keys to open theirs.
type SealedShares = (Vec<SealedBundle>, Vec<(ClientId, ShareKey)>);

/// Waiting for the neighbours' public keys.
pub(super) struct AdvertiseKeys {
    keys: ClientKeys,
    self_mask_secret: Zeroizing<[u8; 32]>,
    /// The advert this client sent: part of the session's transcript.
    own_advert: Advert,
}

impl AdvertiseKeys {
    pub(super) fn start(ctx: &Context, rng: &mut ChaCha20Rng) -> (Self, ClientMessage) {
        let keys = ClientKeys::generate(rng);
        let mut self_mask_secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut self_mask_secret[..]);
        let public = keys.public();
        let signature = match (&ctx.identity, &ctx.session) {
            (Some(identity), Some(session)) => {
                Some(identity.key.sign_advert(session, ctx.id, &public))
            }
            _ => None,
        };
        let own_advert = Advert {
            keys: public,
            signature,
        };
        let advert = ctx.message(ClientBody::AdvertiseKeys(own_advert.clone()));
        (
            AdvertiseKeys {
                keys,
                self_mask_secret,
                own_advert,
            },
            advert,
        )
    }

    /// Checks the relayed keys, shares the secrets and seals the shares.
    /// In a signed round also returns the session's transcript hash.
    pub(super) fn handle_neighbour_keys(
        self,
        ctx: &Context,
        adverts: Vec<(ClientId, Advert)>,
        rng: &mut ChaCha20Rng,
    ) -> Result<(ShareKeys, ClientMessage, Option<SessionDigest>), Violation> {
        if !strictly_ascending(&adverts, |(id, _)| *id) {
            return Err(Violation::Unsorted("NeighbourKeys"));
        }
        let transcript = self.verify_adverts(ctx, &adverts)?;
        let neighbour_keys: Vec<_> = adverts
            .into_iter()
            .map(|(id, advert)| (id, advert.keys))
            .collect();
        self.check_neighbour_keys(ctx, &neighbour_keys)?;
        let (bundles, open_keys) = self.seal_shares(ctx, &neighbour_keys, rng)?;
        let pairwise = self.pairwise_seeds(ctx, &neighbour_keys)?;
        let message = ctx.message(ClientBody::ShareKeys(bundles));
        // Every use of the secret keys is done: `self.keys` is dropped (and
        // zeroized) here, before any bundle reaches a neighbour.
        // Except the share-encryption secret, kept (zeroizing) in case a
        // neighbour's bundle does not open and this client must prove it.
        let next = ShareKeys::new(
            self.self_mask_secret,
            self.keys.share_secret_bytes(),
            open_keys,
            pairwise,
        );
        Ok((next, message, transcript))
    }

    /// In a signed round: checks every relayed advert's signature by the
    /// identity in its slot, and returns the session's transcript hash.
    fn verify_adverts(
        &self,
        ctx: &Context,
        adverts: &[(ClientId, Advert)],
    ) -> Result<Option<SessionDigest>, Violation> {
        let (Some(identity), Some(session)) = (&ctx.identity, &ctx.session) else {
            return Ok(None);
        };
        for (id, advert) in adverts {
            let valid = match (&advert.signature, identity.directory.get(*id)) {
                (Some(signature), Some(signer)) => {
                    signer.verify_advert(session, *id, &advert.keys, signature)
                }
                _ => false,
            };
            if !valid {
                return Err(Violation::BadSignature {
                    client: *id,
                    what: "advert",
                });
            }
        }
        // Every advert of the session, this client's own (with this
        // session's fresh keys) in its slot.
        let own_pos = adverts.partition_point(|(id, _)| *id < ctx.id);
        let session_adverts = adverts[..own_pos]
            .iter()
            .map(|(id, advert)| (*id, advert))
            .chain([(ctx.id, &self.own_advert)])
            .chain(adverts[own_pos..].iter().map(|(id, advert)| (*id, advert)));
        Ok(Some(transcript_hash(
            &ctx.config,
            &identity.directory,
            session_adverts,
        )))
    }

    /// Checks the neighbours' keys: no advert for this client, only
    /// neighbours, every key distinct, and at least t holders.
    fn check_neighbour_keys(
        &self,
        ctx: &Context,
        neighbour_keys: &[(ClientId, PublicKeys)],
    ) -> Result<(), Violation> {
        let own = self.keys.public();
        for (id, keys) in neighbour_keys {
            if *id == ctx.id {
                return Err(Violation::ListsSelf);
            }
            if !ctx.is_neighbour(*id) {
                return Err(Violation::NotANeighbour(*id));
            }
            // Bonawitz et al. require all advertised keys to differ: a server
            // replaying one client's keys as another's would otherwise get
            // two clients' shares sealed under keys it chose.
            if keys.c_pk == keys.s_pk || keys.c_pk == own.c_pk || keys.s_pk == own.s_pk {
                return Err(Violation::DuplicateKey(*id));
            }
        }
        let mut all_keys: Vec<[u8; 32]> = neighbour_keys
            .iter()
            .flat_map(|(_, k)| [k.c_pk, k.s_pk])
            .collect();
        all_keys.sort_unstable();
        if let Some(w) = all_keys.windows(2).find(|w| w[0] == w[1]) {
            let dup = neighbour_keys
                .iter()
                .find(|(_, k)| k.c_pk == w[0] || k.s_pk == w[0])
                .map_or(ctx.id, |(id, _)| *id);
            return Err(Violation::DuplicateKey(dup));
        }
        let holders = neighbour_keys.len() as u32;
        if holders < ctx.config.threshold {
            return Err(Violation::BelowThreshold {
                have: holders,
                threshold: ctx.config.threshold,
            });
        }
        Ok(())
    }

    /// Shamir-shares `s_sk` and `b` among the neighbours and seals each
    /// neighbour's two shares under the key agreed with its `c_pk`; returns
    /// the sealed bundles and the keys to open the neighbours' bundles with.
    fn seal_shares(
        &self,
        ctx: &Context,
        neighbour_keys: &[(ClientId, PublicKeys)],
        rng: &mut ChaCha20Rng,
    ) -> Result<SealedShares, Violation> {
        // Share holders: exactly the live neighbours, ascending, so the share
        // for holder i is at index i of the split. This client is not one.
        let xs: Vec<u32> = neighbour_keys.iter().map(|(id, _)| id.share_x()).collect();
        let t = ctx.config.threshold as usize;
        let masking_key_shares = shamir::split(&self.keys.masking_secret_bytes(), t, &xs, rng)
            .expect("threshold and holders were validated");
        let self_mask_shares = shamir::split(&self.self_mask_secret, t, &xs, rng)
            .expect("threshold and holders were validated");

        let mut bundles = Vec::with_capacity(neighbour_keys.len());
        let mut open_keys = Vec::with_capacity(neighbour_keys.len());
        let mut plaintext = Zeroizing::new(Vec::with_capacity(2 * shamir::SHARE_BYTES));
        for (i, (id, their_keys)) in neighbour_keys.iter().enumerate() {
            let (seal_key, open_key) = self
                .keys
                .share_keys_with(&their_keys.c_pk, ctx.config.round_id, ctx.id, *id)
                .map_err(|source| Violation::BadKey {
                    client: *id,
                    source,
                })?;
            plaintext.clear();
            plaintext.extend_from_slice(masking_key_shares[i].to_bytes().as_slice());
            plaintext.extend_from_slice(self_mask_shares[i].to_bytes().as_slice());
            bundles.push(SealedBundle {
                peer: *id,
                ciphertext: seal_key.seal(&plaintext),
            });
            open_keys.push((*id, open_key));
        }
        Ok((bundles, open_keys))
    }

    /// The pairwise mask seeds with the neighbours. They are derived now,
    /// while the keys are checked, so a low-order s_pk is refused before any
    /// share leaves this client.
    fn pairwise_seeds(
        &self,
        ctx: &Context,
        neighbour_keys: &[(ClientId, PublicKeys)],
    ) -> Result<Vec<(ClientId, MaskSeed)>, Violation> {
        let mut pairwise = Vec::with_capacity(neighbour_keys.len());
        for (id, their_keys) in neighbour_keys {
            let seed = pairwise_mask_seed(
                self.keys.masking_secret(),
                &their_keys.s_pk,
                ctx.config.round_id,
                ctx.id,
                *id,
            )
            .map_err(|source| Violation::BadKey {
                client: *id,
                source,
            })?;
            pairwise.push((*id, seed));
        }
        Ok(pairwise)
    }
}
