//! The messages of a round and their canonical byte encoding.
//!
//! Clients only ever talk to the server (Bonawitz et al. route everything
//! through it), so there are two message families: [`ClientMessage`] and
//! [`ServerMessage`]. Each carries the round id, so a message replayed from
//! another round is refused before it is looked at.
//!
//! The encoding is hand-rolled rather than a serde format because it must be
//! canonical (one byte string per message): fixed-width little-endian
//! integers, `u32` length prefixes, id lists strictly ascending. The decoder
//! rejects trailing bytes, wrong lengths, unknown tags and unsorted or
//! duplicated ids, and never allocates more than the input could hold.
//!
//! ```text
//! message  = version:u8 (=2) round_id:u64 tag:u8 body
//! ```
//!
//! Version 2 added the identity signatures of the malicious-server model
//! (an optional signature is a flag byte, 0 or 1, then 64 bytes).

use crate::ClientId;
use crate::accusation::{Accusation, ShareKeyReveal};
use crate::identity::{IdentitySignature, SIGNATURE_BYTES};
use crate::keys::PublicKeys;
use crate::shamir::{SHARE_BYTES, Share};

/// Version byte at the start of every encoded message.
///
/// 3: signatures over the session and transcript hashes, and no share of a
/// client's own secrets in share bundles or unmasking responses.
///
/// 4: accusations carry no key; the server asks for one
/// (`RevealShareKeyRequest`, `ShareKeyReveal`). Raised so that version-3
/// clients, which put their share key in the accusation at once, cannot
/// join: their keys would reach the server before it could bound how many
/// it sees ([`crate::accusation`]).
pub const WIRE_VERSION: u8 = 4;

/// A message from a client to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// The round this message belongs to.
    pub round_id: u64,
    /// What the client says.
    pub body: ClientBody,
}

/// What a client sends at each stage.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientBody {
    /// Stage 0, AdvertiseKeys: the client's two public keys (signed in the
    /// malicious-server model).
    AdvertiseKeys(Advert),
    /// Stage 1, ShareKeys: one sealed share bundle per live neighbour,
    /// `peer` = the receiver, ascending.
    ShareKeys(Vec<SealedBundle>),
    /// Stage 2, MaskedInputCollection: the masked vector packed at the
    /// round's `bits`.
    MaskedInput(Vec<u8>),
    /// Stage 2, instead of the masked input: a receiver that cannot open the
    /// bundles of some senders accuses them, with its share-encryption
    /// secret as the proof where it may reveal it ([`crate::accusation`]).
    /// The accuser's input is not in the round.
    ///
    /// ```text
    /// accusation = tag:u8 (=0x06) has_key:u8 (0|1) [c_sk:32] accused:ids
    /// ```
    Accusation(Accusation),
    /// Stage 2, after the accusation, only when the server asked for it
    /// ([`ServerBody::RevealShareKeyRequest`]): the accuser's
    /// share-encryption secret, the proof the server judges its accusation
    /// with ([`crate::accusation`]).
    ///
    /// ```text
    /// share_key_reveal = tag:u8 (=0x07) c_sk:32
    /// ```
    ShareKeyReveal(ShareKeyReveal),
    /// Stage 3, ConsistencyCheck: the client confirms the survivor set it was
    /// sent; in the malicious-server model with its signature over the set.
    ConsistencyCheck(Option<IdentitySignature>),
    /// Stage 4, Unmasking: the shares the server asked for.
    Unmasking(UnmaskResponse),
}

impl ClientBody {
    /// The stage this message belongs to.
    pub fn stage(&self) -> crate::Stage {
        match self {
            ClientBody::AdvertiseKeys(_) => crate::Stage::AdvertiseKeys,
            ClientBody::ShareKeys(_) => crate::Stage::ShareKeys,
            ClientBody::MaskedInput(_)
            | ClientBody::Accusation(_)
            | ClientBody::ShareKeyReveal(_) => crate::Stage::MaskedInput,
            ClientBody::ConsistencyCheck(_) => crate::Stage::ConsistencyCheck,
            ClientBody::Unmasking(_) => crate::Stage::Unmasking,
        }
    }
}

/// A message from the server to one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerMessage {
    /// The round this message belongs to.
    pub round_id: u64,
    /// What the server says.
    pub body: ServerBody,
}

/// What the server sends a client at the end of each stage.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerBody {
    /// End of AdvertiseKeys: the adverts of the client's neighbours that
    /// advertised, ascending by id, with their signatures when signed.
    NeighbourKeys(Vec<(ClientId, Advert)>),
    /// End of ShareKeys: the bundles the client's neighbours sealed for it,
    /// `peer` = the sender, ascending.
    SealedShares(Vec<SealedBundle>),
    /// ConsistencyCheck: the survivors among the client's neighbours and
    /// itself (semi-malicious model), or the round's whole survivor set,
    /// which every client signs (malicious-server model).
    ConsistencyCheck {
        /// Clients whose masked input reached the server.
        survivors: Vec<ClientId>,
    },
    /// Unmasking: which neighbours survived (send the self-mask share) and
    /// which dropped after sharing keys (send the masking-key share).
    UnmaskRequest {
        /// Neighbours (and the client) whose masked input arrived.
        survivors: Vec<ClientId>,
        /// Neighbours that shared keys but sent no masked input.
        dropped: Vec<ClientId>,
        /// Malicious-server model: the signatures over the survivor set
        /// the client signed, ascending by signer (empty otherwise).
        signatures: Vec<(ClientId, IdentitySignature)>,
    },
    /// After MaskedInput, before anyone learns who survived (semi-honest
    /// rounds only): asks an accuser for its share-encryption secret, to
    /// judge its accusation of `senders` ([`crate::accusation`]). Sent to at
    /// most as many accusers as the threshold's exposure margin affords.
    ///
    /// ```text
    /// reveal_share_key_request = tag:u8 (=0x87) senders:ids
    /// ```
    RevealShareKeyRequest {
        /// The accused senders whose bundles the server will try to open
        /// with the key: all or some of those the accuser named.
        senders: Vec<ClientId>,
    },
    /// The round is over without a result.
    Aborted(AbortReason),
}

impl ServerBody {
    /// The message's name, as errors and logs show it.
    pub fn name(&self) -> &'static str {
        match self {
            ServerBody::NeighbourKeys(_) => "NeighbourKeys",
            ServerBody::SealedShares(_) => "SealedShares",
            ServerBody::ConsistencyCheck { .. } => "ConsistencyCheck",
            ServerBody::UnmaskRequest { .. } => "UnmaskRequest",
            ServerBody::RevealShareKeyRequest { .. } => "RevealShareKeyRequest",
            ServerBody::Aborted(_) => "Aborted",
        }
    }
}

/// A client's advertisement: its two public keys and, in the
/// malicious-server model, its identity's signature over (session hash, client
/// id, keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// `c_pk` and `s_pk`.
    pub keys: PublicKeys,
    /// The signature, when the round is signed.
    pub signature: Option<IdentitySignature>,
}

impl From<PublicKeys> for Advert {
    fn from(keys: PublicKeys) -> Self {
        Advert {
            keys,
            signature: None,
        }
    }
}

/// A Shamir share bundle sealed with ChaCha20-Poly1305 for one receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBundle {
    /// The other end: the receiver in a client's ShareKeys message, the
    /// sender in the server's SealedShares message.
    pub peer: ClientId,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// A survivor's answer to the unmasking request.
#[derive(Clone, Debug, Default)]
pub struct UnmaskResponse {
    /// Shares of the self-mask seed `b` of surviving neighbours, ascending by
    /// owner.
    pub self_mask_shares: Vec<(ClientId, Share)>,
    /// Shares of the masking secret key `s_sk` of dropped neighbours,
    /// ascending by owner.
    pub masking_key_shares: Vec<(ClientId, Share)>,
}

impl PartialEq for UnmaskResponse {
    /// Compares the shares in constant time: they are secret material.
    fn eq(&self, other: &Self) -> bool {
        fn same(a: &[(ClientId, Share)], b: &[(ClientId, Share)]) -> bool {
            use subtle::ConstantTimeEq;
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .fold(subtle::Choice::from(1), |acc, ((ia, sa), (ib, sb))| {
                        acc & subtle::Choice::from((ia == ib) as u8)
                            & sa.to_bytes().ct_eq(sb.to_bytes().as_slice())
                    })
                    .into()
        }
        same(&self.self_mask_shares, &other.self_mask_shares)
            && same(&self.masking_key_shares, &other.masking_key_shares)
    }
}

impl Eq for UnmaskResponse {}

/// Why a round ended without a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AbortReason {
    /// Fewer clients survived a stage than the round's survivor floor
    /// ([`RoundConfig::survivor_floor`](crate::config::RoundConfig::survivor_floor):
    /// the threshold, raised to the fewest inputs a published sum may hold).
    BelowThreshold,
    /// Some client's secret could not be rebuilt from the shares that
    /// arrived.
    SharesMissing,
    /// Too many clients misbehaved for the round to go on.
    Misbehaviour,
    /// Accusers revealed the shares they held ([`crate::accusation`]) past
    /// the margin the threshold leaves above the assumed colluders: going
    /// on could put t shares of someone's secret in the server's hands.
    Accusations,
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbortReason::BelowThreshold => {
                "fewer clients survived a stage than the round's survivor floor (its threshold and minimum aggregate size): the aggregate would be smaller than the minimum"
            }
            AbortReason::SharesMissing => "too few shares arrived to rebuild a needed secret",
            AbortReason::Misbehaviour => "too many clients misbehaved",
            AbortReason::Accusations => {
                "too many clients revealed their share keys to prove a neighbour sent bad share bundles: the exposed shares would exceed what the threshold tolerates"
            }
        })
    }
}

/// Why bytes are not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended early.
    #[error("message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Where decoding stopped.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// Bytes after the end of the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// Another wire version.
    #[error("unsupported wire version {0} (this build speaks version {WIRE_VERSION})")]
    Version(u8),
    /// An unknown message or enum tag.
    #[error("unknown tag {tag} for {what}")]
    Tag {
        /// What was being decoded.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// Ids not strictly ascending (unsorted or duplicated).
    #[error("ids in {0} are not strictly ascending")]
    Unsorted(&'static str),
    /// A malformed share.
    #[error("malformed share: {0}")]
    Share(String),
}

// Tags of the message bodies; distinct between the two families so a message
// sent the wrong way is refused.
const TAG_ADVERTISE_KEYS: u8 = 0x01;
const TAG_SHARE_KEYS: u8 = 0x02;
const TAG_MASKED_INPUT: u8 = 0x03;
const TAG_CONSISTENCY: u8 = 0x04;
const TAG_UNMASKING: u8 = 0x05;
const TAG_ACCUSATION: u8 = 0x06;
const TAG_SHARE_KEY_REVEAL: u8 = 0x07;
const TAG_NEIGHBOUR_KEYS: u8 = 0x81;
const TAG_SEALED_SHARES: u8 = 0x82;
const TAG_CONSISTENCY_CHECK: u8 = 0x84;
const TAG_UNMASK_REQUEST: u8 = 0x85;
const TAG_ABORTED: u8 = 0x86;
const TAG_REVEAL_SHARE_KEY_REQUEST: u8 = 0x87;

impl ClientMessage {
    /// The canonical encoding.
    ///
    /// An unmasking response's encoding holds plaintext shares: it is sized
    /// once (no reallocation leaves copies behind) and handed to the
    /// transport, which encrypts it (TLS) and owns it from there.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(self.round_id, self.encoded_hint());
        match &self.body {
            ClientBody::AdvertiseKeys(advert) => {
                w.u8(TAG_ADVERTISE_KEYS);
                w.advert(advert);
            }
            ClientBody::ShareKeys(bundles) => {
                w.u8(TAG_SHARE_KEYS);
                w.bundles(bundles);
            }
            ClientBody::MaskedInput(packed) => {
                w.u8(TAG_MASKED_INPUT);
                w.var_bytes(packed);
            }
            ClientBody::ConsistencyCheck(signature) => {
                w.u8(TAG_CONSISTENCY);
                w.signature(signature.as_ref());
            }
            ClientBody::Accusation(accusation) => {
                w.u8(TAG_ACCUSATION);
                match &accusation.share_secret {
                    None => w.u8(0),
                    Some(secret) => {
                        w.u8(1);
                        w.0.extend_from_slice(&secret[..]);
                    }
                }
                w.ids(&accusation.accused);
            }
            ClientBody::ShareKeyReveal(reveal) => {
                w.u8(TAG_SHARE_KEY_REVEAL);
                w.bytes32(&reveal.share_secret);
            }
            ClientBody::Unmasking(response) => {
                w.u8(TAG_UNMASKING);
                w.shares(&response.self_mask_shares);
                w.shares(&response.masking_key_shares);
            }
        }
        w.0
    }

    /// Decodes a canonical encoding; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let round_id = r.header()?;
        let body = match r.u8()? {
            TAG_ADVERTISE_KEYS => ClientBody::AdvertiseKeys(r.advert()?),
            TAG_SHARE_KEYS => ClientBody::ShareKeys(r.bundles("ShareKeys")?),
            TAG_MASKED_INPUT => ClientBody::MaskedInput(r.var_bytes()?.to_vec()),
            TAG_CONSISTENCY => ClientBody::ConsistencyCheck(r.signature()?),
            TAG_ACCUSATION => ClientBody::Accusation(Accusation {
                share_secret: match r.u8()? {
                    0 => None,
                    1 => Some(zeroize::Zeroizing::new(r.bytes32()?)),
                    tag => {
                        return Err(DecodeError::Tag {
                            what: "share key flag",
                            tag,
                        });
                    }
                },
                accused: r.ids("accused")?,
            }),
            TAG_SHARE_KEY_REVEAL => ClientBody::ShareKeyReveal(ShareKeyReveal {
                share_secret: zeroize::Zeroizing::new(r.bytes32()?),
            }),
            TAG_UNMASKING => ClientBody::Unmasking(UnmaskResponse {
                self_mask_shares: r.shares("self-mask shares")?,
                masking_key_shares: r.shares("masking-key shares")?,
            }),
            tag => {
                return Err(DecodeError::Tag {
                    what: "client message",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(ClientMessage { round_id, body })
    }

    fn encoded_hint(&self) -> usize {
        match &self.body {
            ClientBody::MaskedInput(p) => p.len() + 4,
            ClientBody::ShareKeys(b) => b.len() * 120,
            // Exact room for every share, so the buffer never reallocates
            // and leaves no copy of plaintext shares in freed memory.
            ClientBody::Unmasking(r) => {
                64 + (r.self_mask_shares.len() + r.masking_key_shares.len())
                    * (4 + crate::shamir::SHARE_BYTES)
            }
            _ => 128,
        }
    }
}

impl ServerMessage {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(self.round_id, 128);
        match &self.body {
            ServerBody::NeighbourKeys(keys) => {
                w.u8(TAG_NEIGHBOUR_KEYS);
                w.u32(keys.len() as u32);
                for (id, advert) in keys {
                    w.u32(id.0);
                    w.advert(advert);
                }
            }
            ServerBody::SealedShares(bundles) => {
                w.u8(TAG_SEALED_SHARES);
                w.bundles(bundles);
            }
            ServerBody::ConsistencyCheck { survivors } => {
                w.u8(TAG_CONSISTENCY_CHECK);
                w.ids(survivors);
            }
            ServerBody::UnmaskRequest {
                survivors,
                dropped,
                signatures,
            } => {
                w.u8(TAG_UNMASK_REQUEST);
                w.ids(survivors);
                w.ids(dropped);
                w.u32(signatures.len() as u32);
                for (id, signature) in signatures {
                    w.u32(id.0);
                    w.0.extend_from_slice(&signature.0);
                }
            }
            ServerBody::RevealShareKeyRequest { senders } => {
                w.u8(TAG_REVEAL_SHARE_KEY_REQUEST);
                w.ids(senders);
            }
            ServerBody::Aborted(reason) => {
                w.u8(TAG_ABORTED);
                w.u8(match reason {
                    AbortReason::BelowThreshold => 1,
                    AbortReason::SharesMissing => 2,
                    AbortReason::Misbehaviour => 3,
                    AbortReason::Accusations => 4,
                });
            }
        }
        w.0
    }

    /// Decodes a canonical encoding; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let round_id = r.header()?;
        let body = match r.u8()? {
            TAG_NEIGHBOUR_KEYS => {
                ServerBody::NeighbourKeys(
                    r.sorted("NeighbourKeys", 4 + 65, |r, id| Ok((id, r.advert()?)))?,
                )
            }
            TAG_SEALED_SHARES => ServerBody::SealedShares(r.bundles("SealedShares")?),
            TAG_CONSISTENCY_CHECK => ServerBody::ConsistencyCheck {
                survivors: r.ids("survivors")?,
            },
            TAG_UNMASK_REQUEST => ServerBody::UnmaskRequest {
                survivors: r.ids("survivors")?,
                dropped: r.ids("dropped")?,
                signatures: r.signatures("signatures")?,
            },
            TAG_REVEAL_SHARE_KEY_REQUEST => ServerBody::RevealShareKeyRequest {
                senders: r.ids("senders")?,
            },
            TAG_ABORTED => ServerBody::Aborted(match r.u8()? {
                1 => AbortReason::BelowThreshold,
                2 => AbortReason::SharesMissing,
                3 => AbortReason::Misbehaviour,
                4 => AbortReason::Accusations,
                tag => {
                    return Err(DecodeError::Tag {
                        what: "abort reason",
                        tag,
                    });
                }
            }),
            tag => {
                return Err(DecodeError::Tag {
                    what: "server message",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(ServerMessage { round_id, body })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn with_header(round_id: u64, hint: usize) -> Self {
        let mut w = Writer(Vec::with_capacity(hint + 10));
        w.u8(WIRE_VERSION);
        w.0.extend_from_slice(&round_id.to_le_bytes());
        w
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes32(&mut self, v: &[u8; 32]) {
        self.0.extend_from_slice(v);
    }
    fn var_bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).expect("message field over 4 GiB"));
        self.0.extend_from_slice(v);
    }
    fn advert(&mut self, advert: &Advert) {
        self.bytes32(&advert.keys.c_pk);
        self.bytes32(&advert.keys.s_pk);
        self.signature(advert.signature.as_ref());
    }
    fn signature(&mut self, signature: Option<&IdentitySignature>) {
        match signature {
            None => self.u8(0),
            Some(signature) => {
                self.u8(1);
                self.0.extend_from_slice(&signature.0);
            }
        }
    }
    fn ids(&mut self, ids: &[ClientId]) {
        self.u32(ids.len() as u32);
        for id in ids {
            self.u32(id.0);
        }
    }
    fn bundles(&mut self, bundles: &[SealedBundle]) {
        self.u32(bundles.len() as u32);
        for b in bundles {
            self.u32(b.peer.0);
            self.var_bytes(&b.ciphertext);
        }
    }
    fn shares(&mut self, shares: &[(ClientId, Share)]) {
        self.u32(shares.len() as u32);
        for (owner, share) in shares {
            self.u32(owner.0);
            self.0.extend_from_slice(share.to_bytes().as_slice());
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.bytes.len() - self.offset;
        if rest < n {
            return Err(DecodeError::Truncated {
                offset: self.offset,
                needed: n - rest,
            });
        }
        let out = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(out)
    }

    fn header(&mut self) -> Result<u64, DecodeError> {
        let version = self.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn bytes32(&mut self) -> Result<[u8; 32], DecodeError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    fn var_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A list length, checked against what the remaining bytes could hold so
    /// a forged count cannot make us allocate.
    fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let rest = self.bytes.len() - self.offset;
        if count.saturating_mul(min_item_len) > rest {
            return Err(DecodeError::Truncated {
                offset: self.offset,
                needed: count * min_item_len - rest,
            });
        }
        Ok(count)
    }

    fn advert(&mut self) -> Result<Advert, DecodeError> {
        Ok(Advert {
            keys: PublicKeys {
                c_pk: self.bytes32()?,
                s_pk: self.bytes32()?,
            },
            signature: self.signature()?,
        })
    }

    fn signature(&mut self) -> Result<Option<IdentitySignature>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(IdentitySignature(
                self.take(SIGNATURE_BYTES)?.try_into().expect("64 bytes"),
            ))),
            tag => Err(DecodeError::Tag {
                what: "signature flag",
                tag,
            }),
        }
    }

    /// A list of entries that each start with a client id, ids strictly
    /// ascending: a count (each entry taking at least `min_entry_len`
    /// bytes), then each entry's id and what `rest` reads after it. Every id
    /// list of the format is one of these, so each refuses an unsorted or
    /// duplicated id the same way, before reading the rest of the entry.
    fn sorted<T>(
        &mut self,
        what: &'static str,
        min_entry_len: usize,
        mut rest: impl FnMut(&mut Self, ClientId) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.count(min_entry_len)?;
        let mut out = Vec::with_capacity(count);
        let mut last: Option<ClientId> = None;
        for _ in 0..count {
            let id = ClientId(self.u32()?);
            if last.is_some_and(|last| last >= id) {
                return Err(DecodeError::Unsorted(what));
            }
            last = Some(id);
            out.push(rest(self, id)?);
        }
        Ok(out)
    }

    fn signatures(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<(ClientId, IdentitySignature)>, DecodeError> {
        self.sorted(what, 4 + SIGNATURE_BYTES, |r, id| {
            let signature =
                IdentitySignature(r.take(SIGNATURE_BYTES)?.try_into().expect("64 bytes"));
            Ok((id, signature))
        })
    }

    fn ids(&mut self, what: &'static str) -> Result<Vec<ClientId>, DecodeError> {
        self.sorted(what, 4, |_, id| Ok(id))
    }

    fn bundles(&mut self, what: &'static str) -> Result<Vec<SealedBundle>, DecodeError> {
        self.sorted(what, 8, |r, peer| {
            let ciphertext = r.var_bytes()?.to_vec();
            Ok(SealedBundle { peer, ciphertext })
        })
    }

    fn shares(&mut self, what: &'static str) -> Result<Vec<(ClientId, Share)>, DecodeError> {
        self.sorted(what, 4 + SHARE_BYTES, |r, owner| {
            let share = Share::from_bytes(r.take(SHARE_BYTES)?)
                .map_err(|e| DecodeError::Share(e.to_string()))?;
            Ok((owner, share))
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.offset {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(x: u32, seed: u64) -> Share {
        let mut bytes = [0u8; SHARE_BYTES];
        bytes[..4].copy_from_slice(&x.to_le_bytes());
        for i in 0..(SHARE_BYTES - 4) / 8 {
            let v = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(i as u64)
                >> 4;
            bytes[4 + 8 * i..12 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        Share::from_bytes(&bytes).expect("values below 2^60 are field elements")
    }

    fn client_messages() -> Vec<ClientMessage> {
        let keys = PublicKeys {
            c_pk: [1; 32],
            s_pk: [2; 32],
        };
        [
            ClientBody::AdvertiseKeys(keys.into()),
            ClientBody::AdvertiseKeys(Advert {
                keys,
                signature: Some(IdentitySignature([7; 64])),
            }),
            ClientBody::ShareKeys(vec![
                SealedBundle {
                    peer: ClientId(1),
                    ciphertext: vec![5; 104],
                },
                SealedBundle {
                    peer: ClientId(4),
                    ciphertext: vec![6; 104],
                },
            ]),
            ClientBody::MaskedInput(vec![9, 8, 7]),
            ClientBody::Accusation(Accusation {
                share_secret: Some(zeroize::Zeroizing::new([0x42; 32])),
                accused: vec![ClientId(2), ClientId(7)],
            }),
            ClientBody::Accusation(Accusation {
                share_secret: None,
                accused: vec![ClientId(3)],
            }),
            ClientBody::ShareKeyReveal(ShareKeyReveal {
                share_secret: zeroize::Zeroizing::new([0x24; 32]),
            }),
            ClientBody::ConsistencyCheck(None),
            ClientBody::ConsistencyCheck(Some(IdentitySignature([8; 64]))),
            ClientBody::Unmasking(UnmaskResponse {
                self_mask_shares: vec![(ClientId(0), share(3, 1)), (ClientId(2), share(3, 2))],
                masking_key_shares: vec![(ClientId(5), share(3, 3))],
            }),
        ]
        .into_iter()
        .map(|body| ClientMessage { round_id: 77, body })
        .collect()
    }

    fn server_messages() -> Vec<ServerMessage> {
        [
            ServerBody::NeighbourKeys(vec![
                (
                    ClientId(3),
                    PublicKeys {
                        c_pk: [3; 32],
                        s_pk: [4; 32],
                    }
                    .into(),
                ),
                (
                    ClientId(6),
                    Advert {
                        keys: PublicKeys {
                            c_pk: [5; 32],
                            s_pk: [6; 32],
                        },
                        signature: Some(IdentitySignature([9; 64])),
                    },
                ),
            ]),
            ServerBody::SealedShares(vec![SealedBundle {
                peer: ClientId(2),
                ciphertext: vec![1, 2, 3],
            }]),
            ServerBody::ConsistencyCheck {
                survivors: vec![ClientId(0), ClientId(9)],
            },
            ServerBody::RevealShareKeyRequest {
                senders: vec![ClientId(4), ClientId(8)],
            },
            ServerBody::UnmaskRequest {
                survivors: vec![ClientId(1)],
                dropped: vec![ClientId(0), ClientId(2)],
                signatures: vec![],
            },
            ServerBody::UnmaskRequest {
                survivors: vec![ClientId(1), ClientId(3)],
                dropped: vec![],
                signatures: vec![
                    (ClientId(1), IdentitySignature([1; 64])),
                    (ClientId(3), IdentitySignature([3; 64])),
                ],
            },
            ServerBody::Aborted(AbortReason::SharesMissing),
            ServerBody::Aborted(AbortReason::Accusations),
        ]
        .into_iter()
        .map(|body| ServerMessage { round_id: 5, body })
        .collect()
    }

    #[test]
    fn every_message_round_trips() {
        for m in client_messages() {
            assert_eq!(ClientMessage::decode(&m.encode()).unwrap(), m);
        }
        for m in server_messages() {
            assert_eq!(ServerMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn advertise_keys_layout_byte_by_byte() {
        let m = ClientMessage {
            round_id: 0x0102_0304_0506_0708,
            body: ClientBody::AdvertiseKeys(
                PublicKeys {
                    c_pk: [0xaa; 32],
                    s_pk: [0xbb; 32],
                }
                .into(),
            ),
        };
        let mut expected = vec![WIRE_VERSION]; // version
        expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]); // round id, LE
        expected.push(0x01); // tag: AdvertiseKeys
        expected.extend_from_slice(&[0xaa; 32]); // c_pk
        expected.extend_from_slice(&[0xbb; 32]); // s_pk
        expected.push(0); // no signature
        assert_eq!(m.encode(), expected);
    }

    #[test]
    fn unmask_request_layout_byte_by_byte() {
        let m = ServerMessage {
            round_id: 1,
            body: ServerBody::UnmaskRequest {
                survivors: vec![ClientId(2)],
                dropped: vec![],
                signatures: vec![(ClientId(2), IdentitySignature([0xcc; 64]))],
            },
        };
        let mut expected = vec![
            WIRE_VERSION, // version
            1,
            0,
            0,
            0,
            0,
            0,
            0,
            0,    // round id
            0x85, // tag: UnmaskRequest
            1,
            0,
            0,
            0, // one survivor
            2,
            0,
            0,
            0, // client 2
            0,
            0,
            0,
            0, // no dropped clients
            1,
            0,
            0,
            0, // one signature
            2,
            0,
            0,
            0, // by client 2
        ];
        expected.extend_from_slice(&[0xcc; 64]);
        assert_eq!(m.encode(), expected);
    }

    #[test]
    fn every_truncation_and_every_extension_is_rejected() {
        for m in client_messages() {
            let bytes = m.encode();
            for len in 0..bytes.len() {
                assert!(
                    ClientMessage::decode(&bytes[..len]).is_err(),
                    "{m:?} cut at {len}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                ClientMessage::decode(&longer),
                Err(DecodeError::TrailingBytes(1))
            );
        }
        for m in server_messages() {
            let bytes = m.encode();
            for len in 0..bytes.len() {
                assert!(
                    ServerMessage::decode(&bytes[..len]).is_err(),
                    "{m:?} cut at {len}"
                );
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0, 0]);
            assert_eq!(
                ServerMessage::decode(&longer),
                Err(DecodeError::TrailingBytes(2))
            );
        }
    }

    #[test]
    fn non_canonical_forms_are_rejected() {
        // Wrong version.
        let mut bytes = client_messages()[0].encode();
        bytes[0] = 1;
        assert_eq!(ClientMessage::decode(&bytes), Err(DecodeError::Version(1)));
        // A server message is not a client message.
        let bytes = server_messages()[0].encode();
        assert!(matches!(
            ClientMessage::decode(&bytes),
            Err(DecodeError::Tag { .. })
        ));
        // Unsorted or duplicated ids.
        for survivors in [
            vec![ClientId(2), ClientId(1)],
            vec![ClientId(1), ClientId(1)],
        ] {
            let m = ServerMessage {
                round_id: 1,
                body: ServerBody::ConsistencyCheck { survivors },
            };
            assert_eq!(
                ServerMessage::decode(&m.encode()),
                Err(DecodeError::Unsorted("survivors"))
            );
        }
        // A share value outside the field.
        let m = client_messages().pop().expect("the unmasking response");
        let mut bytes = m.encode();
        let first_value = 1 + 8 + 1 + 4 + 4 + 4;
        bytes[first_value..first_value + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            ClientMessage::decode(&bytes),
            Err(DecodeError::Share(_))
        ));
    }

    #[test]
    fn every_id_list_refuses_unsorted_or_repeated_ids_by_its_name() {
        let advert = Advert::from(PublicKeys {
            c_pk: [1; 32],
            s_pk: [2; 32],
        });
        let bundle = |peer| SealedBundle {
            peer,
            ciphertext: vec![5; 8],
        };
        let signature = IdentitySignature([7; 64]);
        for [a, b] in [[2, 1], [1, 1]].map(|ids| ids.map(ClientId)) {
            let request = |dropped, signatures| ServerBody::UnmaskRequest {
                survivors: vec![ClientId(0)],
                dropped,
                signatures,
            };
            for (body, what) in [
                (
                    ServerBody::NeighbourKeys(vec![(a, advert.clone()), (b, advert.clone())]),
                    "NeighbourKeys",
                ),
                (
                    ServerBody::SealedShares(vec![bundle(a), bundle(b)]),
                    "SealedShares",
                ),
                (request(vec![a, b], Vec::new()), "dropped"),
                (
                    ServerBody::RevealShareKeyRequest {
                        senders: vec![a, b],
                    },
                    "senders",
                ),
                (
                    request(Vec::new(), vec![(a, signature), (b, signature)]),
                    "signatures",
                ),
            ] {
                let m = ServerMessage { round_id: 1, body };
                assert_eq!(
                    ServerMessage::decode(&m.encode()),
                    Err(DecodeError::Unsorted(what))
                );
            }
            let pair = vec![(a, share(3, 1)), (b, share(3, 2))];
            for (body, what) in [
                (
                    ClientBody::ShareKeys(vec![bundle(a), bundle(b)]),
                    "ShareKeys",
                ),
                (
                    ClientBody::Unmasking(UnmaskResponse {
                        self_mask_shares: pair.clone(),
                        masking_key_shares: Vec::new(),
                    }),
                    "self-mask shares",
                ),
                (
                    ClientBody::Unmasking(UnmaskResponse {
                        self_mask_shares: Vec::new(),
                        masking_key_shares: pair,
                    }),
                    "masking-key shares",
                ),
            ] {
                let m = ClientMessage { round_id: 1, body };
                assert_eq!(
                    ClientMessage::decode(&m.encode()),
                    Err(DecodeError::Unsorted(what))
                );
            }
        }
    }

    #[test]
    fn a_signature_flag_other_than_0_or_1_is_refused() {
        let m = ClientMessage {
            round_id: 3,
            body: ClientBody::ConsistencyCheck(None),
        };
        let mut bytes = m.encode();
        *bytes.last_mut().unwrap() = 2;
        assert_eq!(
            ClientMessage::decode(&bytes),
            Err(DecodeError::Tag {
                what: "signature flag",
                tag: 2
            })
        );
    }

    #[test]
    fn a_forged_count_does_not_allocate() {
        let mut bytes = vec![WIRE_VERSION];
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.push(0x85);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            ServerMessage::decode(&bytes),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
