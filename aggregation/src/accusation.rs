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
//! # The accusation step, and the reveal step that proves it
//!
//! A receiver that cannot open a bundle (the AEAD fails, or the plaintext is
//! not two shares evaluated at the receiver's point) does not refuse the
//! round. Instead of its masked input it sends an [`Accusation`] naming the
//! senders it accuses, with no key. The server checks that it names only
//! senders whose bundles it relayed to the accuser, and the accuser leaves
//! the round without its input (it holds too few shares to help unmask, and
//! masking with senders it cannot check would tie its input to them).
//!
//! In the semi-honest model the accusation is then proven in two steps:
//! 1. When the masked input stage closes (every client answered, or its
//!    deadline passed), and before the server tells anyone who survived or
//!    asks for any share, it fixes which accusers to ask for their key: in
//!    ascending client id, an accuser is asked only if the shares it holds,
//!    exposed together with those of every accuser already asked, keep each
//!    client within the threshold's exposure margin (below). The choice is
//!    made from the accusations alone, before any key is seen, so no key can
//!    change it, and an asked accuser counts as exposed whether or not it
//!    answers. Each asked accuser gets a
//!    [`RevealShareKeyRequest`](crate::messages::ServerBody::RevealShareKeyRequest)
//!    naming the senders it accused.
//! 2. The accuser answers with its per-round share-encryption secret `c_sk`
//!    ([`ShareKeyReveal`]) only if the round is semi-honest, it has not
//!    revealed before in this round, and the request names senders it
//!    accused (all or some, none other); anything else it refuses, naming
//!    what was wrong. The server
//!    - checks `c_sk` against the `c_pk` the accuser advertised (a key that
//!      does not match is the accuser's violation);
//!    - re-derives, for each accused sender, the key the receiver opens that
//!      sender's bundle with (X25519 with the sender's advertised `c_pk`,
//!      then HKDF over round, sender and receiver: the same key the receiver
//!      used, so a bundle replayed from another round or re-addressed does
//!      not open either) and tries to open the bundle it relayed;
//!    - if every accused bundle fails, evicts the senders (proven); if any
//!      opens into two well-formed shares, the accusation is false and the
//!      accuser is evicted instead.
//!
//! The reveal step has its own stage deadline; an asked accuser that does
//! not answer by then, like every accuser the margin left unasked, stays
//! unproven: nobody is evicted for its accusation. Then the round goes on
//! to the consistency check or the unmasking requests, with the survivor
//! floor and the reach of every needed secret checked again.
//!
//! A proven sender that had not sent its masked input is out of the round:
//! the round completes without its input, its leftover pairwise masks
//! removed like a dropout's (from the shares its other neighbours opened).
//! One whose masked input already arrived stays in the sum, unmasked from
//! the self-mask shares its other neighbours hold, as a dropout after
//! masking would.
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
//!   client: the finder's bound on corrupt neighbours), and the server asks
//!   only while, for every client, those colluders plus the asked accusers
//!   among its neighbours stay within what the threshold tolerates
//!   ([`crate::params::exposure_margin`]). A semi-honest server follows
//!   the protocol but keeps what it sees; since it never asks beyond the
//!   margin, what it sees never reaches t shares of an honest client's
//!   secret.
//!
//! # Why each accuser does not reveal at once
//!
//! The first form of this step had each accuser put its key into its
//! accusation. Each accuser then decides alone, and the server sees every
//! key before it can check the margin: one colluding client that seals
//! garbage for more honest neighbours than the margin makes them all hand
//! over their keys, and the server, semi-honest or not, holds t shares of
//! other clients' self-mask seeds and masking keys, enough to unmask their
//! inputs with no unmasking request at all (`aggregation/tests/accusations.rs`
//! plays that attack, and shows the two-step reveal stopping it). A client
//! still reveals at once only if a test turns that on
//! (`ClientSession::reveal_share_key_when_accusing`, hidden from the docs);
//! the server judges such a key on arrival and aborts the round
//! ([`crate::messages::AbortReason::Accusations`]) when it exceeds the
//! margin, which is too late to undo what it saw.
//!
//! # A hostile server: nobody reveals
//!
//! Where the server may deviate (the semi-malicious and malicious-server
//! models) no client reveals its key, and the server asks nobody. The
//! server relays the bundles, so it can corrupt one itself and make an
//! honest client accuse; and an accuser holds a share of *both* secrets of
//! each neighbour. A server that corrupts one bundle for each of t clients
//! and then asks them all would collect t shares of every other client's
//! self-mask seed and masking key, and unmask every input it holds; the
//! margin is the server's own check, and a hostile server would skip it.
//! There the accusation stays unproven: the server cannot tell whether the
//! sender or a relay lied, evicts nobody, and the round goes on without
//! the accuser. The key never leaves the client, so a server that corrupts
//! bundles gains no share by it (`aggregation/tests/accusations.rs` plays
//! that server). A reveal that is safe against such a server would have to
//! wait until a quorum has signed one bounded set of accusers (as the
//! survivor set is signed), so that no server could collect more reveals
//! than the margin; that is not built.
//!
//! # How much slack a round has
//!
//! The margin is what the threshold leaves above the colluders it was chosen
//! against. The parameter finder picks the smallest private threshold, so a
//! round on the finder's parameters may have little or no slack: in the
//! semi-honest model at `t = a + 1` no accuser can be asked (its accusation
//! stays unproven, the round goes on), and a deployment that wants garblers
//! proven and evicted should leave room (a threshold above the floor). In
//! the malicious-server model at the floor `t = ⌊(n + corrupt)/2⌋ + 1` the
//! margin is 0 or 1 (by the parity of `n + corrupt`), so reveals could
//! hardly be afforded there even if they were safe.
//!
//! The accusation travels as the accuser's MaskedInput-stage message (its
//! masked input could not be sent anyway), and the request and the key as
//! one extra exchange with the accusers only, between the masked inputs and
//! the first message that names the survivors.

use zeroize::Zeroizing;

use crate::ClientId;
use crate::config::ThreatModel;
use crate::keys::{KeyError, ShareKey, receiver_open_key};
use crate::shamir::{SHARE_BYTES, Share};

/// A receiver's claim that bundles sealed for it do not open: the senders
/// it accuses. Clients send it without a key and reveal the key only when
/// the server asks ([`ShareKeyReveal`]); the key field remains for the old
/// unasked form, which only tests turn on (see the module documentation).
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
