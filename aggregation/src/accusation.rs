//! Share-bundle accusations: how a round survives a client that seals
//! garbage for its neighbours.
//!
//! # The problem
//!
//! In ShareKeys every client seals its two Shamir shares for each neighbour
//! under a key only that neighbour (and the sender) can derive, and the
//! server relays the sealed bundles. The server cannot tell a good bundle
//! from garbage; only the receiver can. A receiver that simply refused the
//! round on a bundle that does not open would let one bad client abort the
//! round for all its neighbours.
//!
//! # The accusation step
//!
//! A receiver that cannot open a bundle (the AEAD fails, or the plaintext is
//! not two shares evaluated at the receiver's point) does not refuse the
//! round. Instead of its masked input it sends an [`Accusation`]: the senders
//! it accuses and its per-round share-encryption secret `c_sk`. The server
//! - checks `c_sk` against the `c_pk` the accuser advertised (signed by the
//!   accuser's identity in the malicious-server model, relayed otherwise);
//! - re-derives, for each accused sender, the key the receiver opens that
//!   sender's bundle with (X25519 with the sender's advertised `c_pk`, then
//!   HKDF over round, sender and receiver: the same key the receiver used,
//!   so a bundle replayed from another round or re-addressed does not open
//!   either) and tries to open the bundle it relayed;
//! - if every accused bundle fails, evicts the senders (proven); if any
//!   opens into two well-formed shares, the accusation is false and the
//!   accuser is evicted instead.
//!
//! A proven sender that had not yet sent its masked input is out of the
//! round: the round completes without its input, its leftover pairwise
//! masks removed like a dropout's (from the shares its other neighbours
//! opened). One whose masked input already arrived stays in the sum,
//! unmasked from the self-mask shares its other neighbours hold, as a
//! dropout after masking would.
//!
//! # What the reveal costs, and who pays
//!
//! `c_sk` opens every bundle sealed for the accuser, and every bundle it
//! sealed (both directions of a pair derive from one key agreement). So:
//! - the accuser's own secrets are exposed: it sends no masked input (its
//!   update never leaves it), and it is treated as dropped after sharing;
//! - the shares it holds of its neighbours' secrets are exposed, exactly as
//!   if it were a corrupt client colluding with the server. The accuser
//!   therefore counts as corrupt for the round's threshold margin: the
//!   threshold was chosen private against `corrupt` colluders (around each
//!   client: the finder's bound on corrupt neighbours), and the round goes
//!   on only while, for every client, those colluders plus the accusers
//!   among its neighbours stay within what the threshold tolerates
//!   ([`crate::params::exposure_margin`]). Beyond that the server aborts
//!   ([`crate::messages::AbortReason::Accusations`]) before anyone is told
//!   who survived, so before any share is revealed for unmasking. Every
//!   revealed key counts, false accusations included.
//!
//! # A hostile server: who reveals
//!
//! The server relays the bundles, so it can corrupt one itself and make an
//! honest client reveal `c_sk`; and an accuser holds a share of *both*
//! secrets of each neighbour. A server that corrupts one bundle for each of
//! t clients would collect t shares of every other client's self-mask seed
//! and masking key, and unmask every input it holds, with no unmasking
//! request at all. The margin above is the server's check; a hostile server
//! does not abort. Nor is the margin safe in the semi-honest model: each
//! accuser decides alone, so the server sees a key before it can check the
//! margin, and one colluding client that seals garbage for many honest
//! neighbours makes them hand over more keys than the margin tolerates (a
//! semi-honest server follows the protocol but keeps what it sees). So
//! by default no client reveals its key: revealing is an opt-in of the
//! client session, in semi-honest rounds only ([`reveals_share_key`]), that
//! exists to test the judging described above; the safe form needs the
//! server to ask at most margin-many accusers for their keys, a step not
//! built yet:
//! - In every model the accusation names the senders but carries no key. The accuser still
//!   leaves the round without its input (it holds too few shares to help
//!   unmask, and masking with senders it cannot check would tie its input
//!   to them), and the round goes on without it; the server records the
//!   accusation as unproven and evicts nobody, since it cannot tell whether
//!   the sender or a relay lied. The key never leaves the client, so a
//!   server that corrupts bundles gains no share by it
//!   (`aggregation/tests/accusations.rs` plays that server). A reveal that
//!   is safe against such a server would have to wait until a quorum has
//!   signed one bounded set of accusers (as the survivor set is signed), so
//!   that no server could collect more reveals than the margin.
//!
//! # How much slack a round has
//!
//! The margin is what the threshold leaves above the colluders it was chosen
//! against. The parameter finder picks the smallest private threshold, so a
//! round on the finder's parameters has little or no slack: in the
//! semi-honest model at `t = a + 1` a single revealed key aborts the round
//! (cleanly, before any unmasking), and a deployment that expects hostile
//! clients should leave room (a threshold above the floor). In the
//! malicious-server model at the floor `t = ⌊(n + corrupt)/2⌋ + 1` the
//! margin is 0 or 1 (by the parity of `n + corrupt`), so reveals could
//! hardly be afforded there even if they were safe.
//!
//! The accusation travels as the accuser's MaskedInput-stage message (its
//! masked input could not be sent anyway): no extra round trip, and the
//! server settles it while the stage is open, before it tells anyone who
//! survived.

use zeroize::Zeroizing;

use crate::ClientId;
use crate::config::ThreatModel;
use crate::keys::{KeyError, ShareKey, receiver_open_key};
use crate::shamir::{SHARE_BYTES, Share};

/// A receiver's claim that bundles sealed for it do not open: the senders
/// it accuses and, where it may reveal it ([`reveals_share_key`]), its
/// share-encryption secret for the round as the proof.
#[derive(Clone)]
pub struct Accusation {
    /// The accuser's `c_sk` for this round, or `None` for an unproven
    /// claim. Exposed by the accusation (the server learns it); kept
    /// zeroizing so no copy outlives its use here.
    pub share_secret: Option<Zeroizing<[u8; 32]>>,
    /// The senders whose bundles did not open, ascending.
    pub accused: Vec<ClientId>,
}

impl std::fmt::Debug for Accusation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accusation")
            .field("share_secret", &"..")
            .field("accused", &self.accused)
            .finish()
    }
}

impl PartialEq for Accusation {
    /// Compares the revealed key in constant time.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        let same_secret = match (&self.share_secret, &other.share_secret) {
            (Some(a), Some(b)) => bool::from(a.ct_eq(&**b)),
            (None, None) => true,
            _ => false,
        };
        same_secret && self.accused == other.accused
    }
}

impl Eq for Accusation {}

/// An accuser's answer to the server's [`RevealShareKeyRequest`]: its
/// share-encryption secret `c_sk` for the round, the proof of its
/// accusation ([`crate::messages::ClientBody::ShareKeyReveal`]).
///
/// [`RevealShareKeyRequest`]: crate::messages::ServerBody::RevealShareKeyRequest
#[derive(Clone)]
pub struct ShareKeyReveal {
    /// The accuser's `c_sk`; zeroizing, so no copy outlives its use.
    pub share_secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ShareKeyReveal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareKeyReveal(..)")
    }
}

impl PartialEq for ShareKeyReveal {
    /// Compares the key in constant time.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.share_secret.ct_eq(&*other.share_secret))
    }
}

impl Eq for ShareKeyReveal {}

/// Whether a client may reveal its share-encryption secret under `model`,
/// and only when the server asks for it: in the semi-honest model alone.
/// Where the server may deviate it could corrupt relayed bundles itself to
/// make honest clients accuse, then ask them all; the module documentation
/// says why no client reveals there.
pub fn reveals_share_key(model: ThreatModel) -> bool {
    model == ThreatModel::SemiHonest
}

/// Opens the bundle `sender` sealed for `receiver` with the receiver's
/// revealed share-encryption secret and the sender's advertised `c_pk`, as
/// the server does to judge an accusation (and as anyone holding the
/// relayed bundle and the adverts can, to check the verdict).
pub fn open_revealed(
    receiver_c_sk: &[u8; 32],
    sender_c_pk: &[u8; 32],
    round_id: u64,
    sender: ClientId,
    receiver: ClientId,
    ciphertext: &[u8],
) -> Result<(Share, Share), BadBundle> {
    let key = receiver_open_key(receiver_c_sk, sender_c_pk, round_id, sender, receiver)
        .map_err(|_| BadBundle::Decrypt)?;
    open_bundle(&key, ciphertext, receiver)
}

/// Why a bundle does not hold the receiver's two shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadBundle {
    /// The AEAD refused it: garbage, or sealed for another round, sender or
    /// receiver.
    #[error("it does not decrypt under the pair key")]
    Decrypt,
    /// It decrypts, but not to two shares evaluated at the receiver's point.
    #[error("it decrypts to something other than two shares at the receiver's point")]
    Content,
}

/// Opens a bundle with `key` and checks that it holds two shares (of the
/// sender's masking key and of its self-mask seed) at `receiver`'s point.
/// The receiver and the server checking an accusation use this one test.
pub(crate) fn open_bundle(
    key: &ShareKey,
    ciphertext: &[u8],
    receiver: ClientId,
) -> Result<(Share, Share), BadBundle> {
    let plaintext = key.open(ciphertext).map_err(|e| match e {
        KeyError::Decrypt | KeyError::NonContributory => BadBundle::Decrypt,
    })?;
    if plaintext.len() != 2 * SHARE_BYTES {
        return Err(BadBundle::Content);
    }
    let masking_key_share =
        Share::from_bytes(&plaintext[..SHARE_BYTES]).map_err(|_| BadBundle::Content)?;
    let self_mask_share =
        Share::from_bytes(&plaintext[SHARE_BYTES..]).map_err(|_| BadBundle::Content)?;
    // Both shares must be evaluated at the receiver's point; anything else
    // means the sender (or a forger) is not following the protocol.
    if masking_key_share.x() != receiver.share_x() || self_mask_share.x() != receiver.share_x() {
        return Err(BadBundle::Content);
    }
    Ok((masking_key_share, self_mask_share))
}
