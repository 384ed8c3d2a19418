//! Long-term client identities for the malicious-server threat model.
//!
//! Against a server that deviates from the protocol, Bonawitz et al. (CCS
//! 2017, section 6.3 and the active-adversary protocol of figure 4) give
//! every client a long-term signing key registered in a PKI. Two things are
//! signed:
//!
//! - **the advertised keys** (label, [`session_hash`] of the round
//!   configuration and the identity roster, client id, `c_pk`, `s_pk`): a
//!   server that substitutes its own X25519 keys for a client's (to open the
//!   share bundles sealed for it, or to know its pairwise masks) produces
//!   an advertisement no honest neighbour accepts; a signature from a round
//!   with another configuration or roster does not verify in this one;
//! - **the survivor set** of the consistency check (label,
//!   [`transcript_hash`] of the session, the ids): every honest client
//!   signs exactly one set per session and reveals shares only when a
//!   quorum of the set's members signed that very set in this very session.
//!   Two different sets cannot both gather a quorum (see
//!   [`crate::config::RoundConfig::signature_quorum`]), so a server cannot
//!   tell some clients that `v` survived (and collect shares of its
//!   self-mask seed) while telling others that `v` dropped (and collect
//!   shares of its masking key): both secrets together would unmask `v`'s
//!   input.
//!
//! The server picks round ids and clients remember none, so a round id
//! alone does not name a session: a server could run round R honestly,
//! keep the quorum's signatures over the full survivor set, open a second
//! session with the same id R and show the victim the old quorum while the
//! others sign the set without it. The transcript hash closes this: it
//! covers the round configuration, the identity roster and every signed
//! advert of the session in slot order, and on the complete graph (the
//! only graph of the malicious-server model) every client sees every
//! advert, its own included. Each session's adverts carry fresh X25519
//! keys, so no signature from another session verifies.
//!
//! The PKI is the [`IdentityDirectory`]: for each client slot of the round,
//! the verifying key of the identity in it. Clients must obtain the keys
//! they trust from outside the server (the operator's allow-list of enrolled
//! keys is public and can be shipped with the app); a directory that only
//! the server vouched for would let it sign for clients it invented.
//!
//! Signatures are Ed25519 (`ed25519-dalek`), verified with `verify_strict`
//! (no small-order keys, no malleable signatures). Every signed payload
//! starts with a domain-separation label so a signature over one kind of
//! payload never verifies as another.

use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::ClientId;
use crate::config::RoundConfig;
use crate::keys::PublicKeys;
use crate::messages::Advert;

/// Bytes of an encoded Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Bytes of an encoded Ed25519 verifying (public) key.
pub const VERIFYING_KEY_BYTES: usize = 32;

const KEY_FILE_PREFIX: &str = "ed25519-secret:";
const ADVERT_LABEL: &[u8] = b"tessera/v2/advertise-keys";
const SURVIVORS_LABEL: &[u8] = b"tessera/v2/survivor-set";
const SESSION_LABEL: &[u8] = b"tessera/v2/session";
const TRANSCRIPT_LABEL: &[u8] = b"tessera/v2/transcript";

/// A SHA-256 digest that names a round's setting ([`session_hash`]) or one
/// session of it ([`transcript_hash`]). Public, not secret.
pub type SessionDigest = [u8; 32];

/// An Ed25519 signature as sent on the wire. Not secret; equality is plain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentitySignature(pub [u8; SIGNATURE_BYTES]);

impl std::fmt::Debug for IdentitySignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentitySignature({}..)", hex::encode(&self.0[..2]))
    }
}

/// A client's long-term signing key. Zeroized on drop (by `ed25519-dalek`);
/// never printed.
#[derive(Clone)]
pub struct IdentityKey(SigningKey);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IdentityKey")
            .field(&hex::encode(self.verifying_key_bytes()))
            .finish()
    }
}

impl IdentityKey {
    /// A fresh identity from a CSPRNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        IdentityKey(SigningKey::generate(rng))
    }

    /// The identity with this 32-byte secret seed (as stored in a key file).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        IdentityKey(SigningKey::from_bytes(secret))
    }

    /// The 32-byte secret seed, for storing in a key file. The caller must
    /// zeroize it.
    pub fn to_secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The key file text: `ed25519-secret:` and 64 hex digits, a newline.
    /// Secret: write it with owner-only permissions.
    pub fn to_key_file(&self) -> zeroize::Zeroizing<String> {
        let secret = self.to_secret_bytes();
        let mut digits = zeroize::Zeroizing::new([0u8; 64]);
        hex::encode_to_slice(secret.as_ref(), digits.as_mut()).expect("64 digits for 32 bytes");
        let mut text = zeroize::Zeroizing::new(String::with_capacity(16 + 64 + 1));
        text.push_str(KEY_FILE_PREFIX);
        text.push_str(std::str::from_utf8(digits.as_ref()).expect("hex digits are ASCII"));
        text.push('\n');
        text
    }

    /// Reads [`IdentityKey::to_key_file`]'s format. The error never quotes
    /// the text.
    pub fn from_key_file(text: &str) -> Result<Self, BadIdentityKey> {
        let digits = text
            .trim()
            .strip_prefix(KEY_FILE_PREFIX)
            .ok_or(BadIdentityKey("a key file starts with `ed25519-secret:`"))?;
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, secret.as_mut())
            .map_err(|_| BadIdentityKey("expected 64 hex digits after `ed25519-secret:`"))?;
        Ok(Self::from_secret_bytes(&secret))
    }

    /// The public half, which the operator enrols.
    pub fn verifying_key(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.0.verifying_key())
    }

    fn verifying_key_bytes(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs this client's advertisement for a round whose
    /// [`session_hash`] is `session`.
    pub fn sign_advert(
        &self,
        session: &SessionDigest,
        client: ClientId,
        keys: &PublicKeys,
    ) -> IdentitySignature {
        IdentitySignature(
            self.0
                .sign(&advert_payload(session, client, keys))
                .to_bytes(),
        )
    }

    /// Signs the survivor set of the consistency check of the session whose
    /// [`transcript_hash`] is `transcript`.
    pub fn sign_survivors(
        &self,
        transcript: &SessionDigest,
        survivors: &[ClientId],
    ) -> IdentitySignature {
        IdentitySignature(
            self.0
                .sign(&survivors_payload(transcript, survivors))
                .to_bytes(),
        )
    }
}

/// A client's enrolled public identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublicKey(VerifyingKey);

impl std::fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl std::fmt::Display for IdentityPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

/// Bytes that are not an Ed25519 public key, or a hex string that is not 32
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 public key: {0}")]
pub struct BadIdentityKey(&'static str);

impl IdentityPublicKey {
    /// Parses a 32-byte compressed Edwards point.
    pub fn from_bytes(bytes: &[u8; VERIFYING_KEY_BYTES]) -> Result<Self, BadIdentityKey> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| BadIdentityKey("not a point"))?;
        // A small-order key would let anyone "sign" for it.
        if key.is_weak() {
            return Err(BadIdentityKey("small-order point"));
        }
        Ok(IdentityPublicKey(key))
    }

    /// Parses 64 hex digits, as `tessera keygen` prints them.
    pub fn from_hex(digits: &str) -> Result<Self, BadIdentityKey> {
        let mut bytes = [0u8; VERIFYING_KEY_BYTES];
        hex::decode_to_slice(digits.trim(), &mut bytes)
            .map_err(|_| BadIdentityKey("expected 64 hex digits"))?;
        Self::from_bytes(&bytes)
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; VERIFYING_KEY_BYTES] {
        self.0.to_bytes()
    }

    /// Whether `signature` is this identity's signature over `client`'s
    /// advertisement in a round whose [`session_hash`] is `session`.
    pub fn verify_advert(
        &self,
        session: &SessionDigest,
        client: ClientId,
        keys: &PublicKeys,
        signature: &IdentitySignature,
    ) -> bool {
        self.verify(&advert_payload(session, client, keys), signature)
    }

    /// Whether `signature` is this identity's signature over the survivor
    /// set `survivors` of the session whose [`transcript_hash`] is
    /// `transcript`.
    pub fn verify_survivors(
        &self,
        transcript: &SessionDigest,
        survivors: &[ClientId],
        signature: &IdentitySignature,
    ) -> bool {
        self.verify(&survivors_payload(transcript, survivors), signature)
    }

    fn verify(&self, payload: &[u8], signature: &IdentitySignature) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0.verify_strict(payload, &signature).is_ok()
    }
}

/// The verifying key of the identity in each client slot of a round: the
/// PKI of the malicious-server model. Slot `i` is [`ClientId`]`(i)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityDirectory {
    keys: Vec<IdentityPublicKey>,
}

/// A directory that cannot serve a round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// One identity in two slots would let one client sign for two.
    #[error("the identity in slot {0} also holds another slot")]
    DuplicateIdentity(ClientId),
    /// The directory does not have one key per client of the round.
    #[error("the directory has {got} identities, the round has {expected} clients")]
    Size {
        /// Clients in the round.
        expected: u32,
        /// Keys in the directory.
        got: usize,
    },
    /// A client's own key is not the one in its slot.
    #[error("this client's identity is not the one in slot {0}")]
    NotOwnSlot(ClientId),
}

impl IdentityDirectory {
    /// A directory with `keys[i]` in slot `i`; refuses an identity in two
    /// slots.
    pub fn new(keys: Vec<IdentityPublicKey>) -> Result<Self, DirectoryError> {
        let mut sorted: Vec<([u8; 32], usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_bytes(), i))
            .collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(DirectoryError::DuplicateIdentity(ClientId(
                w[0].1.max(w[1].1) as u32,
            )));
        }
        Ok(IdentityDirectory { keys })
    }

    /// The key in `slot`, if the directory has one.
    pub fn get(&self, slot: ClientId) -> Option<&IdentityPublicKey> {
        self.keys.get(slot.index())
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True for a directory with no slots.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, slot by slot.
    pub fn keys(&self) -> &[IdentityPublicKey] {
        &self.keys
    }

    pub(crate) fn check_size(&self, n: u32) -> Result<(), DirectoryError> {
        if self.keys.len() != n as usize {
            return Err(DirectoryError::Size {
                expected: n,
                got: self.keys.len(),
            });
        }
        Ok(())
    }
}

/// What a client brings to a malicious-server round: its own signing key
/// and the directory it trusts.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    /// This client's long-term signing key.
    pub key: IdentityKey,
    /// The verifying keys of every slot of the round, from a source the
    /// client trusts (not the server alone).
    pub directory: Arc<IdentityDirectory>,
}

/// One enrolled identity of an allow-list file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The operator's name for the client.
    pub name: String,
    /// Its public identity.
    pub key: IdentityPublicKey,
}

/// A line of an allow-list that is not `NAME ed25519:HEX`, or a key or name
/// listed twice. The line's text is not quoted (it is public, but a pasted
/// secret key must not be echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow-list line {line}: {reason}")]
pub struct AllowListError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for Enrolled {
    /// The allow-list line, `NAME ed25519:HEX` without a newline: what
    /// `tessera keygen` prints and [`parse_allow_list`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ed25519:{}", self.name, self.key)
    }
}

/// Parses an allow-list of enrolled identities, the operator's PKI: one
/// client per line, `NAME ed25519:HEX` (64 hex digits, as `tessera keygen`
/// prints), with blank lines and comments as [`credential_lines`] reads
/// them. The file holds public keys only, so the operator can hand it to
/// every client as their trust anchor.
///
/// ```
/// use tessera_aggregation::identity::parse_allow_list;
/// let key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
/// let text = format!("# name  key\nalice ed25519:{key}  # laptop\n");
/// let enrolled = parse_allow_list(&text)?;
/// assert_eq!(enrolled[0].name, "alice");
/// assert!(parse_allow_list("bob 1234").is_err());
/// // A `#` glued to a field is not a comment: the line is refused.
/// let glued = parse_allow_list(&format!("alice ed25519:{key}# laptop")).unwrap_err();
/// assert_eq!(glued.line, 1);
/// # Ok::<(), tessera_aggregation::identity::AllowListError>(())
/// ```
pub fn parse_allow_list(text: &str) -> Result<Vec<Enrolled>, AllowListError> {
    let mut enrolled: Vec<Enrolled> = Vec::new();
    for entry in credential_lines(text) {
        let CredentialLine { line, name, value } = entry.map_err(|e| AllowListError {
            line: e.line,
            reason: e.reason("expected `NAME ed25519:HEX`"),
        })?;
        let bad = |reason| AllowListError { line, reason };
        if name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(bad("a name is 1 to 64 printable ASCII characters"));
        }
        let hex = value
            .strip_prefix("ed25519:")
            .ok_or(bad("the key must start with `ed25519:`"))?;
        let key = IdentityPublicKey::from_hex(hex)
            .map_err(|_| bad("not an Ed25519 public key (64 hex digits)"))?;
        if enrolled.iter().any(|e| e.name == name) {
            return Err(bad("this name is already enrolled"));
        }
        if enrolled.iter().any(|e| e.key == key) {
            return Err(bad("this key is already enrolled under another name"));
        }
        enrolled.push(Enrolled {
            name: name.to_owned(),
            key,
        });
    }
    Ok(enrolled)
}

/// One entry of a credentials file: a name and the credential bound to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialLine<'a> {
    /// 1-based line number.
    pub line: usize,
    /// The first field.
    pub name: &'a str,
    /// The second field.
    pub value: &'a str,
}

/// A line of a credentials file refused before its fields mean anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialLineError {
    /// 1-based line number.
    pub line: usize,
    /// Whether a `#` sits inside a field (otherwise the line does not
    /// have two fields).
    pub misplaced_hash: bool,
}

/// What [`CredentialLineError`] says about a `#` inside a field.
pub const MISPLACED_HASH: &str = "`#` starts a comment only at the start of a line or after a space; \
     names and keys cannot contain `#` (put a space before a trailing comment)";

impl CredentialLineError {
    /// Why the line is refused: [`MISPLACED_HASH`], or `fields` (the
    /// file's own wording of its two fields) when the count is wrong.
    pub fn reason(&self, fields: &'static str) -> &'static str {
        if self.misplaced_hash {
            MISPLACED_HASH
        } else {
            fields
        }
    }
}

/// Reads a credentials file, the shape shared by the allow-list of
/// enrolled identities ([`parse_allow_list`]: `NAME ed25519:HEX`) and the
/// server's tokens file (`NAME sha256:HEX`): one entry per line, two
/// fields separated by whitespace.
///
/// **The comment rule.** A comment starts at a `#` that begins a line
/// (after optional whitespace) or follows whitespace, and runs to the end
/// of the line; blank and comment-only lines are skipped. Any other `#`,
/// glued to a field (`alice ed25519:HEX#laptop`, `al#ice ...`), refuses
/// the line: no field may contain `#`, so a comment never silently
/// shortens a name or key. This is the strictest rule that reads every
/// file the project writes: `tessera token`'s tokens file, `tessera
/// keygen`'s lines, the demo's `enrolled.txt`, and allow-lists with a
/// comment after the key.
///
/// Yields each entry, or the first bad line's error (the caller stops
/// there); errors give the line number only, never the line's text, which
/// may be a pasted secret.
///
/// ```
/// use tessera_aggregation::identity::credential_lines;
/// let text = "# who  what\n\nalice sha256:00  # laptop\n";
/// let entries: Vec<_> = credential_lines(text).collect::<Result<_, _>>().unwrap();
/// assert_eq!((entries[0].line, entries[0].name, entries[0].value), (3, "alice", "sha256:00"));
/// let err = credential_lines("alice sha256:00#laptop").next().unwrap().unwrap_err();
/// assert!(err.misplaced_hash && err.line == 1);
/// ```
pub fn credential_lines(
    text: &str,
) -> impl Iterator<Item = Result<CredentialLine<'_>, CredentialLineError>> {
    credential_lines_with_option(text).map(|entry| match entry? {
        (line, None) => Ok(line),
        (line, Some(_)) => Err(CredentialLineError {
            line: line.line,
            misplaced_hash: false,
        }),
    })
}

/// Reads a credentials file whose lines may carry one optional third
/// field after the two of [`credential_lines`] (the tokens file's
/// `expires=...`), under the same comment rule; the caller gives the third
/// field its meaning.
///
/// ```
/// use tessera_aggregation::identity::credential_lines_with_option;
/// let text = "alice sha256:00 expires=2030-01-01T00:00:00Z  # laptop\nbob sha256:11\n";
/// let entries: Vec<_> = credential_lines_with_option(text).collect::<Result<_, _>>().unwrap();
/// assert_eq!(entries[0].1, Some("expires=2030-01-01T00:00:00Z"));
/// assert_eq!((entries[1].0.name, entries[1].1), ("bob", None));
/// assert!(credential_lines_with_option("a b c d").next().unwrap().is_err());
/// ```
pub fn credential_lines_with_option(
    text: &str,
) -> impl Iterator<Item = Result<(CredentialLine<'_>, Option<&str>), CredentialLineError>> {
    text.lines().enumerate().filter_map(|(index, raw)| {
        let line = index + 1;
        let content = strip_comment(raw).trim();
        if content.is_empty() {
            return None;
        }
        let error = |misplaced_hash| CredentialLineError {
            line,
            misplaced_hash,
        };
        if content.contains('#') {
            return Some(Err(error(true)));
        }
        let mut fields = content.split_whitespace();
        Some(
            match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(name), Some(value), option, None) => {
                    Ok((CredentialLine { line, name, value }, option))
                }
                _ => Err(error(false)),
            },
        )
    })
}

/// `raw` up to its comment, if any: a `#` at the start or after
/// whitespace.
fn strip_comment(raw: &str) -> &str {
    let mut previous = None;
    for (i, c) in raw.char_indices() {
        if c == '#' && previous.is_none_or(char::is_whitespace) {
            return &raw[..i];
        }
        previous = Some(c);
    }
    raw
}

/// The digest every advert of a round signs: SHA-256 over a label, the
/// round configuration ([`RoundConfig::canonical_bytes`], which holds the
/// round id) and the identity roster (the directory's keys, slot by slot).
/// An advert signed for another configuration or roster does not verify.
pub fn session_hash(config: &RoundConfig, directory: &IdentityDirectory) -> SessionDigest {
    let mut h = Sha256::new();
    h.update(SESSION_LABEL);
    absorb_setting(&mut h, config, directory);
    h.finalize().into()
}

/// The digest every survivor-set signature of a session signs: SHA-256 over
/// a label, the round configuration, the identity roster and every signed
/// advert of the session in slot order (client id, `c_pk`, `s_pk`,
/// signature). On the complete graph every client receives every other
/// advert and adds its own, so all honest clients of one session compute
/// the same digest, and no two sessions share one (each advert carries
/// fresh keys).
///
/// `adverts` must be in ascending client order; an advert without a
/// signature (refused in signed rounds before this is computed) counts as
/// 64 zero bytes.
pub fn transcript_hash<'a>(
    config: &RoundConfig,
    directory: &IdentityDirectory,
    adverts: impl IntoIterator<Item = (ClientId, &'a Advert)>,
) -> SessionDigest {
    let mut h = Sha256::new();
    h.update(TRANSCRIPT_LABEL);
    absorb_setting(&mut h, config, directory);
    for (id, advert) in adverts {
        h.update(id.0.to_le_bytes());
        h.update(advert.keys.c_pk);
        h.update(advert.keys.s_pk);
        h.update(advert.signature.map_or([0; SIGNATURE_BYTES], |s| s.0));
    }
    h.finalize().into()
}

fn absorb_setting(h: &mut Sha256, config: &RoundConfig, directory: &IdentityDirectory) {
    let config = config.canonical_bytes();
    h.update((config.len() as u32).to_le_bytes());
    h.update(&config);
    h.update((directory.len() as u32).to_le_bytes());
    for key in directory.keys() {
        h.update(key.to_bytes());
    }
}

fn advert_payload(session: &SessionDigest, client: ClientId, keys: &PublicKeys) -> Vec<u8> {
    let mut payload = Vec::with_capacity(ADVERT_LABEL.len() + 32 + 4 + 64);
    payload.extend_from_slice(ADVERT_LABEL);
    payload.extend_from_slice(session);
    payload.extend_from_slice(&client.0.to_le_bytes());
    payload.extend_from_slice(&keys.c_pk);
    payload.extend_from_slice(&keys.s_pk);
    payload
}

fn survivors_payload(transcript: &SessionDigest, survivors: &[ClientId]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(SURVIVORS_LABEL.len() + 36 + 4 * survivors.len());
    payload.extend_from_slice(SURVIVORS_LABEL);
    payload.extend_from_slice(transcript);
    payload.extend_from_slice(&(survivors.len() as u32).to_le_bytes());
    for id in survivors {
        payload.extend_from_slice(&id.0.to_le_bytes());
    }
    payload
}

// ---------------------------------------------------------------------------
// Proof of possession at Join.
//
// In the malicious-server model the server admits only enrolled identities
// and keys its lobby by them. A Join that merely names an enrolled public key
// proves nothing: any token holder could name every enrolled key and squat
// its slot. So the server sends each connection a fresh random challenge and
// the client signs (label, challenge, its own public key, the authenticated
// principal the server names for the connection) before it enters the lobby.
// The label keeps a join proof from verifying as an advert or survivor-set
// signature (and the reverse); the fresh challenge keeps a proof made on one
// connection from verifying on another.

/// Bytes of the server's random challenge in a Join's proof of possession.
pub const JOIN_CHALLENGE_BYTES: usize = 32;

const JOIN_LABEL: &[u8] = b"tessera/v2/join";

impl IdentityKey {
    /// Signs the server's Join challenge: proves that the client that names
    /// this identity in its Join holds its secret key. `principal` is the
    /// name the server gave the connection's credentials (as the challenge
    /// frame states it).
    pub fn sign_join(
        &self,
        challenge: &[u8; JOIN_CHALLENGE_BYTES],
        principal: &str,
    ) -> IdentitySignature {
        let payload = join_payload(challenge, &self.verifying_key_bytes(), principal);
        IdentitySignature(self.0.sign(&payload).to_bytes())
    }
}

impl IdentityPublicKey {
    /// Whether `signature` proves possession of this identity for the Join
    /// that received `challenge` under `principal` (see
    /// [`IdentityKey::sign_join`]). Strict verification: no malleable
    /// signature, no small-order key.
    pub fn verify_join(
        &self,
        challenge: &[u8; JOIN_CHALLENGE_BYTES],
        principal: &str,
        signature: &IdentitySignature,
    ) -> bool {
        self.verify(
            &join_payload(challenge, &self.to_bytes(), principal),
            signature,
        )
    }
}

fn join_payload(
    challenge: &[u8; JOIN_CHALLENGE_BYTES],
    key: &[u8; VERIFYING_KEY_BYTES],
    principal: &str,
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(
        JOIN_LABEL.len() + JOIN_CHALLENGE_BYTES + VERIFYING_KEY_BYTES + 4 + principal.len(),
    );
    payload.extend_from_slice(JOIN_LABEL);
    payload.extend_from_slice(challenge);
    payload.extend_from_slice(key);
    // Length-prefixed: the principal is the payload's only variable field.
    payload.extend_from_slice(&(principal.len() as u32).to_le_bytes());
    payload.extend_from_slice(principal.as_bytes());
    payload
}

#[cfg(test)]
mod join_proof_tests {
    use super::*;
    use rand_core::SeedableRng;

    fn key(seed: u8) -> IdentityKey {
        IdentityKey::generate(&mut chacha20::ChaCha20Rng::from_seed([seed; 32]))
    }

    #[test]
    fn a_join_proof_binds_challenge_key_and_principal() {
        let alice = key(1);
        let public = alice.verifying_key();
        let challenge = [7u8; JOIN_CHALLENGE_BYTES];
        let sig = alice.sign_join(&challenge, "client-0");
        assert!(public.verify_join(&challenge, "client-0", &sig));
        // Another connection's challenge: a replayed proof fails.
        assert!(!public.verify_join(&[8; JOIN_CHALLENGE_BYTES], "client-0", &sig));
        // Another principal.
        assert!(!public.verify_join(&challenge, "client-1", &sig));
        // Someone else's key cannot prove alice's identity.
        let mallory = key(2).sign_join(&challenge, "client-0");
        assert!(!public.verify_join(&challenge, "client-0", &mallory));
        // A join proof is no advert signature, and no advert signature is a
        // join proof.
        let keys = PublicKeys {
            c_pk: [7; 32],
            s_pk: [7; 32],
        };
        assert!(!public.verify_advert(&[0; 32], ClientId(0), &keys, &sig));
        let advert = alice.sign_advert(&[0; 32], ClientId(0), &keys);
        assert!(!public.verify_join(&challenge, "client-0", &advert));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn key(seed: u8) -> IdentityKey {
        IdentityKey::generate(&mut chacha20::ChaCha20Rng::from_seed([seed; 32]))
    }

    fn directory(n: u8) -> IdentityDirectory {
        IdentityDirectory::new((1..=n).map(|i| key(i).verifying_key()).collect()).unwrap()
    }

    #[test]
    fn the_session_hash_covers_every_field_and_the_roster() {
        let mut config = RoundConfig::new(7, 3, 4);
        config.threat_model = crate::config::ThreatModel::MaliciousServer;
        let roster = directory(3);
        let base = session_hash(&config, &roster);
        let mut other = config.clone();
        other.round_id = 8;
        assert_ne!(session_hash(&other, &roster), base, "round id");
        let mut other = config.clone();
        other.corrupt = 1;
        assert_ne!(session_hash(&other, &roster), base, "corrupt");
        let mut other = config.clone();
        other.graph_seed[31] = 1;
        assert_ne!(session_hash(&other, &roster), base, "graph seed");
        let swapped = IdentityDirectory::new(vec![
            key(2).verifying_key(),
            key(1).verifying_key(),
            key(3).verifying_key(),
        ])
        .unwrap();
        assert_ne!(session_hash(&config, &swapped), base, "roster order");
        // The transcript differs from the session hash and depends on every
        // advert byte.
        let advert = Advert {
            keys: PublicKeys {
                c_pk: [1; 32],
                s_pk: [2; 32],
            },
            signature: Some(IdentitySignature([3; 64])),
        };
        let t = transcript_hash(&config, &roster, [(ClientId(0), &advert)]);
        assert_ne!(t, base);
        let mut fresh = advert.clone();
        fresh.keys.c_pk[0] ^= 1;
        assert_ne!(
            transcript_hash(&config, &roster, [(ClientId(0), &fresh)]),
            t
        );
        assert_ne!(
            transcript_hash(&config, &roster, [(ClientId(1), &advert)]),
            t
        );
    }

    #[test]
    fn an_advert_signature_binds_session_client_and_both_keys() {
        let id = key(1);
        let keys = PublicKeys {
            c_pk: [1; 32],
            s_pk: [2; 32],
        };
        let (seven, eight) = ([7; 32], [8; 32]);
        let sig = id.sign_advert(&seven, ClientId(3), &keys);
        let public = id.verifying_key();
        assert!(public.verify_advert(&seven, ClientId(3), &keys, &sig));
        assert!(
            !public.verify_advert(&eight, ClientId(3), &keys, &sig),
            "session"
        );
        assert!(
            !public.verify_advert(&seven, ClientId(4), &keys, &sig),
            "client"
        );
        let swapped = PublicKeys {
            c_pk: keys.s_pk,
            s_pk: keys.c_pk,
        };
        assert!(
            !public.verify_advert(&seven, ClientId(3), &swapped, &sig),
            "keys"
        );
        assert!(
            !key(2)
                .verifying_key()
                .verify_advert(&seven, ClientId(3), &keys, &sig),
            "signer"
        );
    }

    #[test]
    fn a_survivor_signature_binds_the_exact_set() {
        let id = key(1);
        let set = [ClientId(0), ClientId(2), ClientId(5)];
        let (nine, ten) = ([9; 32], [10; 32]);
        let sig = id.sign_survivors(&nine, &set);
        let public = id.verifying_key();
        assert!(public.verify_survivors(&nine, &set, &sig));
        assert!(!public.verify_survivors(&nine, &set[..2], &sig));
        assert!(!public.verify_survivors(&ten, &set, &sig));
        // A survivor-set signature is not an advert signature, even over
        // bytes that could line up.
        let keys = PublicKeys {
            c_pk: [0; 32],
            s_pk: [0; 32],
        };
        assert!(!public.verify_advert(&nine, ClientId(3), &keys, &sig));
    }

    #[test]
    fn hex_round_trips_and_bad_keys_are_refused() {
        let public = key(3).verifying_key();
        assert_eq!(IdentityPublicKey::from_hex(&public.to_string()), Ok(public));
        assert!(IdentityPublicKey::from_hex("00").is_err());
        assert!(IdentityPublicKey::from_hex(&"zz".repeat(32)).is_err());
        // The identity point is small-order: refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(IdentityPublicKey::from_bytes(&identity).is_err());
    }

    #[test]
    fn a_directory_refuses_one_identity_in_two_slots() {
        let (a, b) = (key(1).verifying_key(), key(2).verifying_key());
        assert!(IdentityDirectory::new(vec![a, b]).is_ok());
        assert_eq!(
            IdentityDirectory::new(vec![a, b, a]),
            Err(DirectoryError::DuplicateIdentity(ClientId(2)))
        );
    }

    #[test]
    fn allow_lists_parse_and_refuse_duplicates() {
        let (a, b) = (key(1).verifying_key(), key(2).verifying_key());
        let text = format!("# enrolled\nalice ed25519:{a}\n\nbob ed25519:{b}  # phone\n");
        let list = parse_allow_list(&text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].name.as_str(), list[1].key), ("bob", b));
        let twice = format!("alice ed25519:{a}\ncarol ed25519:{a}\n");
        assert_eq!(parse_allow_list(&twice).unwrap_err().line, 2);
        let same_name = format!("alice ed25519:{a}\nalice ed25519:{b}\n");
        assert_eq!(parse_allow_list(&same_name).unwrap_err().line, 2);
        assert!(parse_allow_list(&format!("alice {a}")).is_err());
        assert!(parse_allow_list("alice ed25519:00").is_err());
    }

    #[test]
    fn credential_files_follow_one_comment_rule() {
        let a = key(1).verifying_key();
        // Comments at the start of a line (indented or not) and after
        // whitespace; fields separated by any whitespace.
        let accepted = [
            format!("# enrolled\n  # indented\n\t#tab\nalice ed25519:{a}\n"),
            format!("alice ed25519:{a} # laptop\n"),
            format!("alice\ted25519:{a}\t#laptop\n"),
            format!("alice ed25519:{a} #\n"),
        ];
        for text in &accepted {
            let list = parse_allow_list(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                (list.len(), list[0].name.as_str()),
                (1, "alice"),
                "{text:?}"
            );
        }
        // A `#` glued to a field is refused, naming the line and saying what
        // to change (under the old allow-list rule the first two parsed as
        // `alice` with the key, the third as a one-field line).
        let refused = [
            (format!("# ok\nalice ed25519:{a}#laptop\n"), 2),
            (format!("\n\nalice# ed25519:{a}\n"), 3),
            (format!("al#ice ed25519:{a}\n"), 1),
        ];
        for (text, line) in &refused {
            let err = parse_allow_list(text).unwrap_err();
            assert_eq!((err.line, err.reason), (*line, MISPLACED_HASH), "{text:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("line {line}")) && msg.contains("put a space before"),
                "{msg}"
            );
        }
        // The field count keeps the file's own wording.
        let err = parse_allow_list(&format!("alice ed25519:{a} extra\n")).unwrap_err();
        assert_eq!(err.reason, "expected `NAME ed25519:HEX`");
    }

    /// The allow-lists the project writes: `tessera keygen`'s line (the
    /// `Display` of [`Enrolled`]), the demo's `enrolled.txt` (one such line
    /// per client) and the test harness's (a comment line first).
    #[test]
    fn every_allow_list_the_project_writes_parses() {
        let enrolled: Vec<Enrolled> = (0..3)
            .map(|i| Enrolled {
                name: format!("client-{i}"),
                key: key(i + 1).verifying_key(),
            })
            .collect();
        let lines: String = enrolled.iter().map(|e| format!("{e}\n")).collect();
        assert_eq!(
            enrolled[0].to_string(),
            format!("client-0 ed25519:{}", key(1).verifying_key())
        );
        for text in [
            format!("{}\n", enrolled[0]),
            lines.clone(),
            format!("# enrolled identities\n{lines}"),
        ] {
            let parsed = parse_allow_list(&text).unwrap();
            assert_eq!(parsed[..], enrolled[..parsed.len()], "{text:?}");
        }
    }

    #[test]
    fn the_secret_seed_round_trips() {
        let id = key(4);
        let again = IdentityKey::from_secret_bytes(&id.to_secret_bytes());
        assert_eq!(again.verifying_key(), id.verifying_key());
        let file = id.to_key_file();
        let again = IdentityKey::from_key_file(&file).unwrap();
        assert_eq!(again.verifying_key(), id.verifying_key());
        let err = IdentityKey::from_key_file(&file[..40]).unwrap_err();
        assert!(!err.to_string().contains(&file[15..40]), "no secret echoed");
        assert!(IdentityKey::from_key_file(&file.replace("ed25519-secret:", "")).is_err());
    }
}
