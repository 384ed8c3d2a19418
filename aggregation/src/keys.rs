//! Key agreement and key derivation: where every seed and share key of a
//! round comes from.
//!
//! In AdvertiseKeys each client publishes two X25519 public keys (Bonawitz et
//! al., section 4, round 0):
//! - `c_pk`, whose Diffie-Hellman with a neighbour's `c_pk` gives the keys
//!   that encrypt Shamir shares sent through the server (ShareKeys);
//! - `s_pk`, whose Diffie-Hellman with a neighbour's `s_pk` gives the seed of
//!   their pairwise mask (MaskedInputCollection). Its secret `s_sk` is
//!   Shamir-shared so the server can rebuild a dropped client's pairwise
//!   masks.
//!
//! Every derivation goes through HKDF-SHA256 with an info string that names
//! its purpose, the protocol version, the round and the pair, so no key is
//! ever used for two things, in two rounds or by two pairs.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ClientId;
use crate::mask::MaskSeed;

const PAIRWISE_MASK_INFO: &[u8] = b"tessera/v1/pairwise-mask";
const SELF_MASK_INFO: &[u8] = b"tessera/v1/self-mask";
const SHARE_KEY_INFO: &[u8] = b"tessera/v1/share-encryption";
const SHARE_AAD: &[u8] = b"tessera/v1/shares";

/// Length of a sealed share bundle's authentication tag.
pub const TAG_LEN: usize = 16;

/// The two X25519 public keys a client advertises for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicKeys {
    /// Encryption key agreement: seals Shamir shares for a neighbour.
    pub c_pk: [u8; 32],
    /// Masking key agreement: seeds pairwise masks.
    pub s_pk: [u8; 32],
}

/// A client's secret keys for one round. `Debug` hides them; both secrets
/// zeroize themselves on drop (x25519-dalek's `zeroize` feature).
pub struct ClientKeys {
    c_sk: StaticSecret,
    s_sk: StaticSecret,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKeys(..)")
    }
}

impl ClientKeys {
    /// Fresh key pairs for one round.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        ClientKeys {
            c_sk: StaticSecret::random_from_rng(rng),
            s_sk: StaticSecret::random_from_rng(rng),
        }
    }

    /// The public halves, to advertise.
    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            c_pk: PublicKey::from(&self.c_sk).to_bytes(),
            s_pk: PublicKey::from(&self.s_sk).to_bytes(),
        }
    }

    /// The share-encryption secret key's bytes: revealed only in an
    /// accusation ([`crate::accusation`]), to prove that a bundle sealed for
    /// this client does not open.
    pub(crate) fn share_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.c_sk.to_bytes())
    }

    /// The masking secret key's bytes, to Shamir-share among neighbours.
    pub(crate) fn masking_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.s_sk.to_bytes())
    }

    /// The masking secret key.
    pub(crate) fn masking_secret(&self) -> &StaticSecret {
        &self.s_sk
    }

    /// The key that seals shares from `sender` to `receiver` (one of them is
    /// this client), agreed with the other party's `c_pk`. Tests use it to
    /// build keys for the wrong round, sender or receiver.
    #[cfg(test)]
    pub(crate) fn share_key(
        &self,
        their_c_pk: &[u8; 32],
        round_id: u64,
        sender: ClientId,
        receiver: ClientId,
    ) -> Result<ShareKey, KeyError> {
        let shared = self.share_agreement(their_c_pk)?;
        Ok(ShareKey::derive(&shared, round_id, sender, receiver))
    }

    /// Both share keys between this client (`me`) and a neighbour from one
    /// key agreement: (to seal what `me` sends, to open what it receives).
    pub(crate) fn share_keys_with(
        &self,
        their_c_pk: &[u8; 32],
        round_id: u64,
        me: ClientId,
        them: ClientId,
    ) -> Result<(ShareKey, ShareKey), KeyError> {
        let shared = self.share_agreement(their_c_pk)?;
        Ok((
            ShareKey::derive(&shared, round_id, me, them),
            ShareKey::derive(&shared, round_id, them, me),
        ))
    }

    fn share_agreement(&self, their_c_pk: &[u8; 32]) -> Result<SharedSecret, KeyError> {
        let shared = self.c_sk.diffie_hellman(&PublicKey::from(*their_c_pk));
        if !shared.was_contributory() {
            return Err(KeyError::NonContributory);
        }
        Ok(shared)
    }
}

/// The key that opens the bundle `sender` sealed for `receiver`, derived
/// from the receiver's share-encryption secret `c_sk` (revealed in an
/// accusation, or kept by the receiver) and the sender's advertised `c_pk`.
/// It is the key the receiver itself opens with: the server re-derives it
/// to check an accusation.
pub(crate) fn receiver_open_key(
    receiver_c_sk: &[u8; 32],
    sender_c_pk: &[u8; 32],
    round_id: u64,
    sender: ClientId,
    receiver: ClientId,
) -> Result<ShareKey, KeyError> {
    let secret = StaticSecret::from(*receiver_c_sk);
    let shared = secret.diffie_hellman(&PublicKey::from(*sender_c_pk));
    if !shared.was_contributory() {
        return Err(KeyError::NonContributory);
    }
    Ok(ShareKey::derive(&shared, round_id, sender, receiver))
}

/// The X25519 public key of a secret given as bytes (the secret is clamped
/// as X25519 does).
pub(crate) fn public_of_bytes(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// Whether `public` is a low-order X25519 point (the all-zero key among
/// them), for which a key agreement yields a value the peer did not
/// contribute to.
///
/// How: X25519 ignores the top bit of a public key and reads the rest as a
/// u-coordinate that may exceed p = 2^255 - 19. The points of order 1, 2, 4
/// and 8 (on the curve and its twist, both of which X25519 accepts) have
/// the five u-coordinates 0, 1, p - 1 and the two order-8 ones, and only 0
/// and 1 have a second encoding below 2^255 (p and p + 1): the seven
/// encodings of [`SMALL_ORDER_ENCODINGS`], libsodium's list. With the top
/// bit cleared, a key is low-order exactly when it is one of them.
///
/// Why a table and not one scalar multiplication by a clamped scalar
/// (which gives the identity for exactly these points): the server checks
/// both keys of every advert in the round's driver, one after another, and
/// the multiplication cost 59 us per key, 1.3 s per round at 10,000
/// clients (`cargo bench -p tessera-benches --bench adverts`). The tests
/// keep the multiplication as the oracle the table must agree with.
pub fn is_low_order(public: &[u8; 32]) -> bool {
    let mut u = *public;
    u[31] &= 0x7f;
    // Public values: no need for a constant-time comparison.
    SMALL_ORDER_ENCODINGS.contains(&u)
}

/// The encodings (top bit clear) of the X25519 points of small order:
/// 0, 1, the two u-coordinates of order 8, p - 1, p and p + 1
/// (little-endian, as on the wire).
pub const SMALL_ORDER_ENCODINGS: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Why a key agreement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The peer's public key is a low-order point: the shared secret would be
    /// predictable.
    #[error("a public key is a low-order point (non-contributory key agreement)")]
    NonContributory,
    /// Authentication failed: wrong key, round, sender, receiver, or tampering.
    #[error("share bundle failed to decrypt (wrong round, sender, receiver or tampered)")]
    Decrypt,
}

/// The pairwise mask seed `s_uv` from X25519(s_sk_u, s_pk_v) and HKDF, with
/// the round and the (unordered) pair in the info. Both ends compute the same
/// seed; the server computes it for a dropped client from its rebuilt `s_sk`.
pub fn pairwise_mask_seed(
    s_sk: &StaticSecret,
    their_s_pk: &[u8; 32],
    round_id: u64,
    a: ClientId,
    b: ClientId,
) -> Result<MaskSeed, KeyError> {
    let shared = s_sk.diffie_hellman(&PublicKey::from(*their_s_pk));
    if !shared.was_contributory() {
        return Err(KeyError::NonContributory);
    }
    let (lo, hi) = if a.0 < b.0 { (a, b) } else { (b, a) };
    let mut info = Vec::with_capacity(PAIRWISE_MASK_INFO.len() + 16);
    info.extend_from_slice(PAIRWISE_MASK_INFO);
    info.extend_from_slice(&round_id.to_le_bytes());
    info.extend_from_slice(&lo.0.to_le_bytes());
    info.extend_from_slice(&hi.0.to_le_bytes());
    let mut seed = Zeroizing::new([0u8; 32]);
    hkdf_expand(shared.as_bytes(), &info, &mut seed[..]);
    Ok(MaskSeed::from_bytes(*seed))
}

/// The self-mask seed from a client's 32-byte secret `b`. `b` itself is what
/// gets Shamir-shared; the PRG seed is derived so it is domain-separated from
/// every other use of 32 random bytes.
pub fn self_mask_seed(b: &[u8; 32], round_id: u64, owner: ClientId) -> MaskSeed {
    let mut info = Vec::with_capacity(SELF_MASK_INFO.len() + 12);
    info.extend_from_slice(SELF_MASK_INFO);
    info.extend_from_slice(&round_id.to_le_bytes());
    info.extend_from_slice(&owner.0.to_le_bytes());
    let mut seed = Zeroizing::new([0u8; 32]);
    hkdf_expand(b, &info, &mut seed[..]);
    MaskSeed::from_bytes(*seed)
}

/// The public key of a masking secret rebuilt from shares, to check it
/// against what its owner advertised.
pub(crate) fn public_of(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

fn hkdf_expand(ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(None, ikm)
        .expand(info, out)
        .expect("HKDF-SHA256 output of 32 bytes is always valid");
}

/// A ChaCha20-Poly1305 key for the one share bundle `sender` sends
/// `receiver` in one round. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct ShareKey {
    key: [u8; 32],
    #[zeroize(skip)]
    round_id: u64,
    #[zeroize(skip)]
    sender: ClientId,
    #[zeroize(skip)]
    receiver: ClientId,
}

impl std::fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareKey(..)")
    }
}

impl ShareKey {
    fn derive(shared: &SharedSecret, round_id: u64, sender: ClientId, receiver: ClientId) -> Self {
        // The direction is part of the info, so the keys for u -> v and
        // v -> u differ and each key seals exactly one message: a fixed nonce
        // is then safe.
        let mut info = Vec::with_capacity(SHARE_KEY_INFO.len() + 16);
        info.extend_from_slice(SHARE_KEY_INFO);
        info.extend_from_slice(&round_id.to_le_bytes());
        info.extend_from_slice(&sender.0.to_le_bytes());
        info.extend_from_slice(&receiver.0.to_le_bytes());
        let mut key = [0u8; 32];
        hkdf_expand(shared.as_bytes(), &info, &mut key);
        ShareKey {
            key,
            round_id,
            sender,
            receiver,
        }
    }

    fn aad(&self) -> [u8; SHARE_AAD.len() + 16] {
        // The associated data binds round, sender and receiver, so a bundle
        // replayed into another round or re-addressed by the server fails.
        let mut aad = [0u8; SHARE_AAD.len() + 16];
        aad[..SHARE_AAD.len()].copy_from_slice(SHARE_AAD);
        let rest = &mut aad[SHARE_AAD.len()..];
        rest[..8].copy_from_slice(&self.round_id.to_le_bytes());
        rest[8..12].copy_from_slice(&self.sender.0.to_le_bytes());
        rest[12..16].copy_from_slice(&self.receiver.0.to_le_bytes());
        aad
    }

    pub(crate) fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.key));
        let aad = self.aad();
        cipher
            .encrypt(
                &Nonce::default(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a short bundle cannot fail")
    }

    pub(crate) fn open(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let cipher = ChaCha20Poly1305::new(&Key::from(self.key));
        let aad = self.aad();
        cipher
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u8) -> ChaCha20Rng {
        ChaCha20Rng::from_seed([seed; 32])
    }

    #[test]
    fn pairwise_seeds_agree_and_depend_on_round_and_pair() {
        let mut r = rng(1);
        let (u, v) = (ClientKeys::generate(&mut r), ClientKeys::generate(&mut r));
        let (iu, iv) = (ClientId(3), ClientId(9));
        let at_u = pairwise_mask_seed(u.masking_secret(), &v.public().s_pk, 5, iu, iv).unwrap();
        let at_v = pairwise_mask_seed(v.masking_secret(), &u.public().s_pk, 5, iv, iu).unwrap();
        assert_eq!(at_u.as_bytes(), at_v.as_bytes());
        let other_round =
            pairwise_mask_seed(u.masking_secret(), &v.public().s_pk, 6, iu, iv).unwrap();
        assert_ne!(at_u.as_bytes(), other_round.as_bytes());
        let other_pair =
            pairwise_mask_seed(u.masking_secret(), &v.public().s_pk, 5, iu, ClientId(10)).unwrap();
        assert_ne!(at_u.as_bytes(), other_pair.as_bytes());
    }

    #[test]
    fn rebuilt_masking_secret_gives_the_same_seed() {
        let mut r = rng(2);
        let (u, v) = (ClientKeys::generate(&mut r), ClientKeys::generate(&mut r));
        let rebuilt = StaticSecret::from(*u.masking_secret_bytes());
        assert_eq!(public_of(&rebuilt), u.public().s_pk);
        let a = pairwise_mask_seed(&rebuilt, &v.public().s_pk, 1, ClientId(0), ClientId(1));
        let b = pairwise_mask_seed(
            u.masking_secret(),
            &v.public().s_pk,
            1,
            ClientId(0),
            ClientId(1),
        );
        assert_eq!(a.unwrap().as_bytes(), b.unwrap().as_bytes());
    }

    #[test]
    fn low_order_public_key_is_refused() {
        let u = ClientKeys::generate(&mut rng(3));
        // The identity point (all zero u-coordinate) is of low order.
        assert_eq!(
            pairwise_mask_seed(u.masking_secret(), &[0; 32], 1, ClientId(0), ClientId(1))
                .unwrap_err(),
            KeyError::NonContributory
        );
        assert_eq!(
            u.share_key(&[0; 32], 1, ClientId(0), ClientId(1))
                .unwrap_err(),
            KeyError::NonContributory
        );
    }

    #[test]
    fn share_bundle_opens_only_for_its_round_sender_and_receiver() {
        let mut r = rng(4);
        let (u, v) = (ClientKeys::generate(&mut r), ClientKeys::generate(&mut r));
        let (iu, iv) = (ClientId(1), ClientId(2));
        let sealed = u
            .share_key(&v.public().c_pk, 10, iu, iv)
            .unwrap()
            .seal(b"share bytes");
        let opened = v
            .share_key(&u.public().c_pk, 10, iu, iv)
            .unwrap()
            .open(&sealed)
            .unwrap();
        assert_eq!(&opened[..], b"share bytes");

        for (round, sender, receiver) in [
            (11, iu, iv),
            (10, iv, iu),
            (10, iu, ClientId(3)),
            (10, ClientId(0), iv),
        ] {
            let key = v
                .share_key(&u.public().c_pk, round, sender, receiver)
                .unwrap();
            assert_eq!(
                key.open(&sealed).unwrap_err(),
                KeyError::Decrypt,
                "round {round} {sender:?}->{receiver:?}"
            );
        }
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        let key = v.share_key(&u.public().c_pk, 10, iu, iv).unwrap();
        assert_eq!(key.open(&tampered).unwrap_err(), KeyError::Decrypt);
        // A third client cannot open it either.
        let w = ClientKeys::generate(&mut r);
        let key = w.share_key(&u.public().c_pk, 10, iu, iv).unwrap();
        assert_eq!(key.open(&sealed).unwrap_err(), KeyError::Decrypt);
    }

    #[test]
    fn one_agreement_gives_both_directions() {
        let mut r = rng(6);
        let (u, v) = (ClientKeys::generate(&mut r), ClientKeys::generate(&mut r));
        let (iu, iv) = (ClientId(1), ClientId(2));
        let (u_seal, u_open) = u.share_keys_with(&v.public().c_pk, 3, iu, iv).unwrap();
        let (v_seal, v_open) = v.share_keys_with(&u.public().c_pk, 3, iv, iu).unwrap();
        assert_eq!(&v_open.open(&u_seal.seal(b"to v")).unwrap()[..], b"to v");
        assert_eq!(&u_open.open(&v_seal.seal(b"to u")).unwrap()[..], b"to u");
        // The two directions use different keys.
        assert!(u_open.open(&u_seal.seal(b"x")).is_err());
    }

    #[test]
    fn every_small_order_encoding_is_low_order_and_real_keys_are_not() {
        // The u-coordinates of the points of order 1, 2, 4 and 8 on
        // Curve25519 (the list of Bernstein's "Curve25519: new
        // Diffie-Hellman speed records" and libsodium's blocklist), and
        // their non-canonical encodings (u + p, top bit set).
        let mut small = vec![
            [0u8; 32],
            {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            },
            hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            // p - 1, p, p + 1
            hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        ];
        let with_top_bit: Vec<[u8; 32]> = small
            .iter()
            .map(|k| {
                let mut k = *k;
                k[31] |= 0x80;
                k
            })
            .collect();
        small.extend(with_top_bit);
        for key in &small {
            assert!(is_low_order(key), "{}", hex::encode(key));
            assert!(low_order_by_multiplication(key), "{}", hex::encode(key));
        }
        let mut r = rng(9);
        for _ in 0..64 {
            let keys = ClientKeys::generate(&mut r).public();
            assert!(!is_low_order(&keys.c_pk));
            assert!(!is_low_order(&keys.s_pk));
        }
    }

    /// The oracle: a clamped scalar is a multiple of the cofactor 8, so
    /// multiplying by it sends exactly the small-order points to the
    /// identity (a non-contributory result).
    fn low_order_by_multiplication(public: &[u8; 32]) -> bool {
        let probe = StaticSecret::from([0x5a; 32]);
        !probe
            .diffie_hellman(&PublicKey::from(*public))
            .was_contributory()
    }

    #[test]
    fn the_table_agrees_with_the_multiplication_near_every_entry_and_on_random_keys() {
        let mut r = rng(10);
        let mut candidates: Vec<[u8; 32]> = Vec::new();
        for entry in SMALL_ORDER_ENCODINGS {
            for top in [0u8, 0x80] {
                // The entry itself and every one-bit change of it.
                let mut key = entry;
                key[31] |= top;
                candidates.push(key);
                for bit in 0..255 {
                    let mut near = key;
                    near[bit / 8] ^= 1 << (bit % 8);
                    candidates.push(near);
                }
            }
        }
        for _ in 0..2000 {
            let mut key = [0u8; 32];
            rand_core::Rng::fill_bytes(&mut r, &mut key);
            candidates.push(key);
        }
        for key in &candidates {
            assert_eq!(
                is_low_order(key),
                low_order_by_multiplication(key),
                "{}",
                hex::encode(key)
            );
        }
    }

    fn hex32(digits: &str) -> [u8; 32] {
        hex::decode(digits).unwrap().try_into().unwrap()
    }

    #[test]
    fn the_receivers_revealed_secret_rederives_its_open_key() {
        let mut r = rng(10);
        let (u, v) = (ClientKeys::generate(&mut r), ClientKeys::generate(&mut r));
        let (iu, iv) = (ClientId(1), ClientId(2));
        let (seal, _) = u.share_keys_with(&v.public().c_pk, 7, iu, iv).unwrap();
        let sealed = seal.seal(b"shares");
        let key = receiver_open_key(&v.share_secret_bytes(), &u.public().c_pk, 7, iu, iv).unwrap();
        assert_eq!(&key.open(&sealed).unwrap()[..], b"shares");
        assert_eq!(public_of_bytes(&v.share_secret_bytes()), v.public().c_pk);
        // Bound to round, sender and receiver like the receiver's own key.
        for (round, sender, receiver) in [(8, iu, iv), (7, iv, iu), (7, ClientId(3), iv)] {
            let key = receiver_open_key(
                &v.share_secret_bytes(),
                &u.public().c_pk,
                round,
                sender,
                receiver,
            )
            .unwrap();
            assert_eq!(key.open(&sealed).unwrap_err(), KeyError::Decrypt);
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let keys = ClientKeys::generate(&mut rng(5));
        assert_eq!(format!("{keys:?}"), "ClientKeys(..)");
    }
}
