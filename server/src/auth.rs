//! Client authentication by bearer token: the check that keeps an unknown
//! client out of a round.
//!
//! The operator keeps a tokens file, one client per line:
//!
//! ```text
//! # name      SHA-256 of the client's token
//! alice       sha256:3b2c…(64 hex digits)   # laptop
//! bob         sha256:9f01…   expires=2026-07-01T00:00:00Z
//! ```
//!
//! A line may end with `expires=YYYY-MM-DDTHH:MM:SSZ` (UTC; `tessera token
//! --expires-in` writes it): from that second on the server refuses the
//! token with `UNAUTHENTICATED` and a message saying it expired (never the
//! token). Lines without it never expire, so files written before expiries
//! existed read as they did.
//!
//! The server reads the file at start and again on each
//! [`TokenFile::reload`] (`tessera serve` calls it on `SIGHUP`): a client
//! removed from the file is refused from then on, and a file that does not
//! load keeps the tokens in force, so a typo never locks every client out.
//!
//! Comments follow the one rule of every credentials file (the tokens file
//! and the allow-list of enrolled identities alike,
//! [`tessera_aggregation::identity::credential_lines`]): a `#` at the start
//! of a line or after whitespace starts a comment; a `#` glued to a field is
//! refused.
//!
//! The file never holds a token, only its SHA-256, so reading it (or a backup
//! of it) does not let anyone join a round. A plain, fast hash is enough here:
//! tokens made by [`generate_token`] carry 256 random bits, so there is nothing
//! to brute-force that a slow password hash would protect.
//!
//! A client sends its token in the gRPC `authorization: Bearer <token>`
//! metadata ([`bearer_from_metadata`]); the server hashes it and compares the
//! hash with every entry in constant time ([`TokenStore::authenticate`]), so
//! the time a refusal takes tells an attacker nothing about which entry, or
//! which prefix, came close.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};
use tessera_aggregation::identity::{CredentialLine, credential_lines_with_option};
use zeroize::Zeroizing;

/// Prefix of every token made by [`generate_token`], so a leaked token is easy
/// to recognise (and to grep for) in logs and repositories.
pub const TOKEN_PREFIX: &str = "tsr_";

/// Prefix of a hash in the tokens file, naming the algorithm so the format can
/// change later without guessing.
const HASH_PREFIX: &str = "sha256:";

/// Longest client name accepted, so names stay readable in logs and metrics.
const MAX_NAME_LEN: usize = 64;

/// Why a tokens file, a token or an `authorization` header was refused.
///
/// No variant ever carries a token or the text of a tokens-file line: an
/// operator who pasted a raw token instead of its hash must not see it echoed
/// into a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The tokens file could not be read or written.
    #[error("tokens file {}: {source}", path.display())]
    Io {
        /// The tokens file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A line of the tokens file is not `NAME sha256:HEX`.
    #[error("tokens file {}, line {line}: {reason}", path.display())]
    BadLine {
        /// The tokens file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, without quoting the line.
        reason: &'static str,
    },
    /// Two lines of the tokens file name the same client.
    #[error("tokens file {}, line {line}: client `{name}` is already defined on line {first_line}", path.display())]
    DuplicateName {
        /// The tokens file.
        path: PathBuf,
        /// 1-based line number of the second definition.
        line: usize,
        /// 1-based line number of the first definition.
        first_line: usize,
        /// The repeated client name.
        name: String,
    },
    /// Two lines of the tokens file hold the same hash, i.e. two clients share
    /// one token and could not be told apart.
    #[error("tokens file {}, line {line}: same token hash as line {first_line}; every client needs its own token", path.display())]
    DuplicateHash {
        /// The tokens file.
        path: PathBuf,
        /// 1-based line number of the second use.
        line: usize,
        /// 1-based line number of the first use.
        first_line: usize,
    },
    /// A client name is empty, too long, or uses characters outside
    /// `[A-Za-z0-9._-]`.
    #[error("invalid client name: expected 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    InvalidName,
    /// A client name given to [`TokenStore::from_entries`] or [`append_token`]
    /// is already taken.
    #[error("client `{name}` already has a token")]
    DuplicateClient {
        /// The repeated client name.
        name: String,
    },
    /// A token hash given to [`TokenStore::from_entries`] or [`append_token`]
    /// already belongs to another client.
    #[error("token for client `{name}` is already in use by another client")]
    DuplicateToken {
        /// The client whose token collided.
        name: String,
    },
    /// The request carries no `authorization` metadata.
    #[error("missing `authorization` metadata: expected `Bearer <token>`")]
    MissingBearer,
    /// The `authorization` metadata is not `Bearer <token>`.
    #[error("malformed `authorization` metadata: expected `Bearer <token>`")]
    MalformedBearer,
}

/// The authenticated name of a client: the NAME from its tokens-file line.
///
/// Only [`TokenStore::authenticate`] and [`ClientName::new`] make one, so
/// holding a `ClientName` means the name is well formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientName(String);

impl ClientName {
    /// Checks a client name (1-64 characters of `[A-Za-z0-9._-]`), so names
    /// are safe to print in logs, metrics labels and file names.
    ///
    /// ```
    /// use tessera_server::auth::ClientName;
    /// assert_eq!(ClientName::new("edge-07").unwrap().as_str(), "edge-07");
    /// assert!(ClientName::new("no spaces").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<Self, AuthError> {
        let name = name.into();
        if is_valid_name(&name) {
            Ok(Self(name))
        } else {
            Err(AuthError::InvalidName)
        }
    }

    /// The client's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A bearer token: the secret a client presents to join rounds.
///
/// The text is wiped from memory when the `Token` is dropped, and `Debug`
/// prints `Token(<redacted>)`; only [`Token::expose`] reveals it, to send it
/// or to show it once to the operator.
pub struct Token(Zeroizing<String>);

impl Token {
    /// Wraps a token read from a client's configuration, so it gets the same
    /// redaction and wiping as a freshly generated one.
    pub fn from_secret(secret: String) -> Self {
        Self(Zeroizing::new(secret))
    }

    /// The token's text. Call it only where the secret must leave the
    /// process: the request metadata, or the one-time display to an operator.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash of this token, as stored in the tokens file.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of_str(self.expose())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Makes a new token: [`TOKEN_PREFIX`] followed by 32 random bytes in lower
/// case hex (68 characters).
///
/// The caller passes the RNG so tests can be reproducible; production code
/// passes an OS-seeded generator.
///
/// ```
/// use rand::SeedableRng as _;
/// use tessera_server::auth::generate_token;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// let token = generate_token(&mut rng);
/// assert!(token.expose().starts_with("tsr_"));
/// assert_eq!(format!("{token:?}"), "Token(<redacted>)");
/// ```
pub fn generate_token<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Token {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(bytes.as_mut());
    // Reserve the exact length up front: a reallocation would leave an
    // unwiped copy of the partial secret behind.
    let mut digits = Zeroizing::new([0u8; 64]);
    hex::encode_to_slice(bytes.as_ref(), digits.as_mut()).expect("64 digits for 32 bytes");
    let mut text = Zeroizing::new(String::with_capacity(TOKEN_PREFIX.len() + 64));
    text.push_str(TOKEN_PREFIX);
    text.push_str(std::str::from_utf8(digits.as_ref()).expect("hex digits are ASCII"));
    Token(text)
}

/// The SHA-256 of a token: what the tokens file stores in its place.
///
/// `Display` gives the file form `sha256:<64 hex digits>`; `Debug` shows only
/// the first 8 hex digits, enough to tell entries apart in a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of_str(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the file form `sha256:<64 hex digits>` (either case).
    pub fn parse(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.strip_prefix(HASH_PREFIX)?, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HASH_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({HASH_PREFIX}{}…)", hex::encode(&self.0[..4]))
    }
}

struct Entry {
    client: ClientName,
    hash: TokenHash,
    expires: Option<Expiry>,
}

/// The option that gives a tokens-file line its expiry.
const EXPIRES: &str = "expires=";

/// When a token stops being accepted: a UTC second, written in the tokens
/// file as `expires=YYYY-MM-DDTHH:MM:SSZ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Expiry(u64);

impl Expiry {
    /// The expiry `after` from `now` (rounded down to the second).
    pub fn after(now: SystemTime, after: Duration) -> Self {
        let at = now.checked_add(after).unwrap_or(now);
        Expiry(
            at.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    /// Whether a token with this expiry is refused at `now`.
    pub fn has_passed(&self, now: SystemTime) -> bool {
        now.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() >= self.0)
            .unwrap_or(false)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SSZ` (the one form the file holds).
    ///
    /// ```
    /// use tessera_server::auth::Expiry;
    /// let e = Expiry::parse("2030-01-02T03:04:05Z").unwrap();
    /// assert_eq!(e.to_string(), "2030-01-02T03:04:05Z");
    /// assert!(Expiry::parse("2030-02-30T00:00:00Z").is_none());
    /// ```
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() != 20
            || [b[4], b[7], b[10], b[13], b[16], b[19]] != [b'-', b'-', b'T', b':', b':', b'Z']
        {
            return None;
        }
        let num = |range: std::ops::Range<usize>| -> Option<u64> {
            let digits = text.get(range)?;
            digits
                .bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| digits.parse().ok())?
        };
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1970..=9999).contains(&year)
            || !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Some(Expiry(days * 86_400 + hour * 3600 + minute * 60 + second))
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.0 / 86_400);
        let secs = self.0 % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date from 1970 on (proleptic Gregorian).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let before_year: u64 = (1970..year)
        .map(|y| if is_leap(y) { 366 } else { 365 })
        .sum();
    let before_month: u64 = (1..month).map(|m| days_in_month(year, m)).sum();
    before_year + before_month + day - 1
}

/// The date `days` after 1970-01-01.
fn civil_from_days(mut days: u64) -> (u64, u64, u64) {
    let mut year = 1970;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let mut month = 1;
    while days >= days_in_month(year, month) {
        days -= days_in_month(year, month);
        month += 1;
    }
    (year, month, days + 1)
}

/// Why a presented token was refused. The messages never hold the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefused {
    /// No client holds this token (or it was removed from the file).
    #[error("the bearer token is not valid")]
    Unknown,
    /// The token's line in the tokens file has an expiry that has passed.
    #[error("the bearer token expired at {0}; ask the server's operator for a new one")]
    Expired(Expiry),
}

/// The clients allowed to join rounds, each with the hash of its token.
///
/// `Debug` lists the client names only.
pub struct TokenStore {
    entries: Vec<Entry>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("clients", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenStore {
    /// Reads the operator's tokens file (`NAME sha256:HEX [expires=YYYY-MM-DDTHH:MM:SSZ]` per line; blank
    /// lines and `#` comments as [`credential_lines`](tessera_aggregation::identity::credential_lines) reads them: at the start
    /// of a line or after whitespace, never glued to a field). Refuses the
    /// whole file on the first bad line, naming the file and line, and refuses
    /// duplicate names or hashes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let bad = |line: usize, reason: &'static str| AuthError::BadLine {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let mut entries = Vec::new();
        let mut name_lines: HashMap<String, usize> = HashMap::new();
        let mut hash_lines: HashMap<TokenHash, usize> = HashMap::new();
        for entry in credential_lines_with_option(text) {
            let (
                CredentialLine {
                    line,
                    name,
                    value: hash,
                },
                option,
            ) = entry.map_err(|e| {
                bad(
                    e.line,
                    e.reason(
                        "expected two fields: NAME sha256:HEX, optionally followed by expires=YYYY-MM-DDTHH:MM:SSZ",
                    ),
                )
            })?;
            let expires = match option {
                None => None,
                Some(option) => Some(
                    option
                        .strip_prefix(EXPIRES)
                        .and_then(Expiry::parse)
                        .ok_or_else(|| {
                            bad(
                                line,
                                "expected two fields, NAME sha256:HEX, and after them only expires=YYYY-MM-DDTHH:MM:SSZ (a UTC time)",
                            )
                        })?,
                ),
            };
            let client = ClientName::new(name).map_err(|_| {
                bad(
                    line,
                    "invalid client name: expected 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
                )
            })?;
            if hash.starts_with(TOKEN_PREFIX) {
                return Err(bad(
                    line,
                    "this looks like a raw token; the file must hold its hash (sha256:HEX), never the token",
                ));
            }
            let hash = TokenHash::parse(hash).ok_or_else(|| {
                bad(
                    line,
                    "expected the hash as sha256: followed by 64 hex digits",
                )
            })?;
            if let Some(&first_line) = name_lines.get(client.as_str()) {
                return Err(AuthError::DuplicateName {
                    path: path.to_path_buf(),
                    line,
                    first_line,
                    name: client.0,
                });
            }
            if let Some(&first_line) = hash_lines.get(&hash) {
                return Err(AuthError::DuplicateHash {
                    path: path.to_path_buf(),
                    line,
                    first_line,
                });
            }
            name_lines.insert(client.0.clone(), line);
            hash_lines.insert(hash, line);
            entries.push(Entry {
                client,
                hash,
                expires,
            });
        }
        Ok(Self { entries })
    }

    /// Builds a store from names and hashes without a file, for tests and for
    /// embedding; refuses invalid or duplicate names and duplicate hashes.
    pub fn from_entries<I, N>(entries: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = (N, TokenHash)>,
        N: Into<String>,
    {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut store = Self {
            entries: Vec::new(),
        };
        for (name, hash) in entries {
            let client = ClientName::new(name)?;
            if !names.insert(client.0.clone()) {
                return Err(AuthError::DuplicateClient { name: client.0 });
            }
            if !hashes.insert(hash) {
                return Err(AuthError::DuplicateToken { name: client.0 });
            }
            store.entries.push(Entry {
                client,
                hash,
                expires: None,
            });
        }
        Ok(store)
    }

    fn check_new(&self, client: &ClientName, hash: &TokenHash) -> Result<(), AuthError> {
        if self.entries.iter().any(|e| e.client == *client) {
            return Err(AuthError::DuplicateClient {
                name: client.0.clone(),
            });
        }
        if self.entries.iter().any(|e| e.hash == *hash) {
            return Err(AuthError::DuplicateToken {
                name: client.0.clone(),
            });
        }
        Ok(())
    }

    /// Returns the client a presented token belongs to, or `None`.
    ///
    /// The presented token is hashed and compared with every entry's hash in
    /// constant time, with no early exit, so neither the position of the
    /// matching entry nor how much of a wrong token matched shows in the
    /// time taken. (Hashing first also means the attacker never controls the
    /// bytes being compared.)
    pub fn authenticate(&self, presented: &str) -> Option<ClientName> {
        self.find(presented).map(|e| e.client.clone())
    }

    /// The client a presented token belongs to, if it has not expired at
    /// `now`: what the server checks on every request. Compares as
    /// [`TokenStore::authenticate`] does.
    pub fn check(&self, presented: &str, now: SystemTime) -> Result<ClientName, TokenRefused> {
        let entry = self.find(presented).ok_or(TokenRefused::Unknown)?;
        match entry.expires {
            Some(at) if at.has_passed(now) => Err(TokenRefused::Expired(at)),
            _ => Ok(entry.client.clone()),
        }
    }

    /// When a client's token expires, if its line says.
    pub fn expiry(&self, name: &str) -> Option<Expiry> {
        self.entries
            .iter()
            .find(|e| e.client.as_str() == name)
            .and_then(|e| e.expires)
    }

    fn find(&self, presented: &str) -> Option<&Entry> {
        if presented.is_empty() {
            return None;
        }
        let hash = TokenHash::of_str(presented);
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in self.entries.iter().enumerate() {
            let equal = entry.hash.0.ct_eq(&hash.0);
            index = u64::conditional_select(&index, &(i as u64), equal);
            found |= equal;
        }
        if bool::from(found) {
            let index = usize::try_from(index).ok()?;
            self.entries.get(index)
        } else {
            None
        }
    }

    /// The names of all known clients, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.client.as_str())
    }

    /// Whether a client of this name is known.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.client.as_str() == name)
    }

    /// Number of known clients.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no client is known (every token would be refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The tokens file as a running server holds it: the tokens in force,
/// replaced as a whole by [`TokenFile::reload`].
///
/// A request checks against one consistent set (an `Arc` of the store taken
/// under a short read lock), so a reload never shows a half-read file.
pub struct TokenFile {
    path: PathBuf,
    current: RwLock<Arc<TokenStore>>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("tokens", &self.current())
            .finish()
    }
}

/// What a [`TokenFile::reload`] changed, by client name (never a token).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenReload {
    /// Clients in the new file and not in the old.
    pub added: Vec<String>,
    /// Clients in the old file and not in the new: refused from now on.
    pub removed: Vec<String>,
    /// Clients in both whose token or expiry changed.
    pub changed: Vec<String>,
    /// Clients in force after the reload.
    pub clients: usize,
}

impl TokenFile {
    /// Reads the tokens file ([`TokenStore::load`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref().to_path_buf();
        let store = TokenStore::load(&path)?;
        Ok(TokenFile {
            path,
            current: RwLock::new(Arc::new(store)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<TokenStore> {
        // A poisoned lock still holds a whole store: it is only ever
        // replaced, never edited in place.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the file again and puts its tokens in force, or keeps the old
    /// ones and returns why the new file was refused (the error names the
    /// file and line, never a token).
    pub fn reload(&self) -> Result<TokenReload, AuthError> {
        let new = TokenStore::load(&self.path)?;
        let old = self.current();
        let summary = TokenReload {
            added: new
                .names()
                .filter(|n| !old.contains(n))
                .map(str::to_owned)
                .collect(),
            removed: old
                .names()
                .filter(|n| !new.contains(n))
                .map(str::to_owned)
                .collect(),
            changed: new
                .entries
                .iter()
                .filter(|e| {
                    old.entries.iter().any(|o| {
                        o.client == e.client && (o.hash != e.hash || o.expires != e.expires)
                    })
                })
                .map(|e| e.client.to_string())
                .collect(),
            clients: new.len(),
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(summary)
    }
}

/// The tokens-file line for a client: `NAME sha256:HEX\n`. The token itself is
/// not in it.
///
/// ```
/// use rand::SeedableRng as _;
/// use tessera_server::auth::{generate_token, token_line};
/// let token = generate_token(&mut rand::rngs::StdRng::seed_from_u64(1));
/// let line = token_line("alice", &token).unwrap();
/// assert!(line.starts_with("alice sha256:") && !line.contains(token.expose()));
/// assert!(token_line("bad name", &token).is_err());
/// ```
pub fn token_line(name: &str, token: &Token) -> Result<String, AuthError> {
    token_line_expiring(name, token, None)
}

/// The tokens-file line for a client whose token expires at `expires`:
/// `NAME sha256:HEX expires=YYYY-MM-DDTHH:MM:SSZ\n` (as [`token_line`]
/// without one).
pub fn token_line_expiring(
    name: &str,
    token: &Token,
    expires: Option<Expiry>,
) -> Result<String, AuthError> {
    let client = ClientName::new(name)?;
    Ok(match expires {
        None => format!("{client} {}\n", token.hash()),
        Some(at) => format!("{client} {} {EXPIRES}{at}\n", token.hash()),
    })
}

/// Adds a client to the tokens file, creating the file (mode 0600 on unix) if
/// it does not exist. Refuses a name or token already in the file, and refuses
/// to append to a file that does not parse, so a typo is caught at once.
///
/// Meant for the operator's command line tool; it does not lock the file
/// against concurrent writers.
pub fn append_token(path: impl AsRef<Path>, name: &str, token: &Token) -> Result<(), AuthError> {
    append_token_expiring(path, name, token, None)
}

/// [`append_token`], with the token expiring at `expires` if given.
pub fn append_token_expiring(
    path: impl AsRef<Path>,
    name: &str,
    token: &Token,
    expires: Option<Expiry>,
) -> Result<(), AuthError> {
    let path = path.as_ref();
    let io_err = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let line = token_line_expiring(name, token, expires)?;
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(e)),
    };
    let needs_newline = match &existing {
        Some(text) => {
            let store = TokenStore::parse(text, path)?;
            store.check_new(&ClientName::new(name)?, &token.hash())?;
            !text.is_empty() && !text.ends_with('\n')
        }
        None => false,
    };
    // An append, not an atomic rewrite: the file keeps its owner, group
    // and mode (the operator may share it with the server's user), and a
    // torn last line is refused by the next load or append, never misread.
    let mut file = crate::files::private_options()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err)?;
    let mut out = String::with_capacity(line.len() + 1);
    if needs_newline {
        out.push('\n');
    }
    out.push_str(&line);
    file.write_all(out.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Extracts the token from gRPC `authorization: Bearer <token>` metadata.
/// The scheme is matched case-insensitively; the token must be one non-empty
/// word. A request with several `authorization` entries is refused as
/// malformed rather than guessing which one counts.
pub fn bearer_from_metadata(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    let mut values = metadata.get_all("authorization").iter();
    let value = values.next().ok_or(AuthError::MissingBearer)?;
    if values.next().is_some() {
        return Err(AuthError::MalformedBearer);
    }
    let text = value.to_str().map_err(|_| AuthError::MalformedBearer)?;
    let (scheme, rest) = text
        .trim()
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or(AuthError::MalformedBearer)?;
    let token = rest.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains(|c: char| c.is_ascii_whitespace())
    {
        return Err(AuthError::MalformedBearer);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;
    use tonic::metadata::{MetadataMap, MetadataValue};

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x7e55e4a)
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-auth-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn parse(text: &str) -> Result<TokenStore, AuthError> {
        TokenStore::parse(text, Path::new("tokens.txt"))
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let a = TokenHash::of_str("tsr_a");
        let b = TokenHash::of_str("tsr_b");
        let text = format!(
            "# operators' tokens\n\n  alice   {a}  \n\t# indented comment\nbob.edge_2-x {}\n",
            b.to_string().to_uppercase().replace("SHA256:", "sha256:")
        );
        let store = parse(&text).unwrap();
        assert_eq!(store.names().collect::<Vec<_>>(), ["alice", "bob.edge_2-x"]);
        assert_eq!(
            store.authenticate("tsr_b").unwrap().as_str(),
            "bob.edge_2-x"
        );
        assert_eq!(store.len(), 2);
        assert!(store.contains("alice") && !store.contains("carol"));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let good = TokenHash::of_str("x");
        let cases = [
            (format!("alice {good}\nbob\n"), 2, "two fields"),
            (format!("\n\nalice {good} extra\n"), 3, "two fields"),
            (format!("bad!name {good}\n"), 1, "invalid client name"),
            (
                format!("{} {good}\n", "n".repeat(65)),
                1,
                "invalid client name",
            ),
            ("alice sha256:abc\n".to_owned(), 1, "64 hex digits"),
            (
                format!("alice md5:{}\n", "0".repeat(64)),
                1,
                "64 hex digits",
            ),
            (
                format!("alice sha256:{}\n", "g".repeat(64)),
                1,
                "64 hex digits",
            ),
            ("# c\nalice tsr_deadbeef\n".to_owned(), 2, "raw token"),
        ];
        for (text, line, reason) in cases {
            let err = parse(&text).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, AuthError::BadLine { line: l, .. } if l == line),
                "{text:?}: {msg}"
            );
            assert!(
                msg.contains("tokens.txt") && msg.contains(&format!("line {line}")),
                "{msg}"
            );
            assert!(msg.contains(reason), "{msg}");
        }
        // A pasted raw token is never echoed back.
        let msg = parse("alice tsr_supersecret\n").unwrap_err().to_string();
        assert!(!msg.contains("supersecret"), "{msg}");
    }

    /// The one comment rule of credentials files
    /// ([`tessera_aggregation::identity::credential_lines`]).
    #[test]
    fn comments_start_a_line_or_follow_whitespace() {
        let (a, b) = (TokenHash::of_str("a"), TokenHash::of_str("b"));
        let store = parse(&format!("alice {a} # laptop\n  # x\nbob\t{b}\t#phone\n")).unwrap();
        assert_eq!(store.names().collect::<Vec<_>>(), ["alice", "bob"]);
        for (text, line) in [
            (format!("alice {a}#laptop\n"), 1),
            (format!("# c\nal#ice {a}\n"), 2),
        ] {
            let err = parse(&text).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, AuthError::BadLine { line: l, reason, .. }
                    if l == line && reason == tessera_aggregation::identity::MISPLACED_HASH),
                "{text:?}: {msg}"
            );
            assert!(msg.contains(&format!("tokens.txt, line {line}")), "{msg}");
        }
    }

    /// What `tessera token` (and the demo, and the test harness) write:
    /// [`token_line`]s appended to a file, which may start with comments.
    #[test]
    fn every_tokens_file_the_project_writes_parses() {
        let mut rng = rng();
        let tokens: Vec<Token> = (0..3).map(|_| generate_token(&mut rng)).collect();
        let mut text = String::from("# operators' tokens\n");
        for (i, token) in tokens.iter().enumerate() {
            text.push_str(&token_line(&format!("client-{i}"), token).unwrap());
        }
        let store = parse(&text).unwrap();
        for (i, token) in tokens.iter().enumerate() {
            let who = store.authenticate(token.expose()).unwrap();
            assert_eq!(who.as_str(), format!("client-{i}"));
        }
    }

    #[test]
    fn duplicate_names_and_hashes_are_refused() {
        let a = TokenHash::of_str("a");
        let b = TokenHash::of_str("b");
        let err = parse(&format!("alice {a}\n# x\nalice {b}\n")).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::DuplicateName {
                    line: 3,
                    first_line: 1,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse(&format!("alice {a}\nbob {a}\n")).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::DuplicateHash {
                    line: 2,
                    first_line: 1,
                    ..
                }
            ),
            "{err}"
        );

        assert!(matches!(
            TokenStore::from_entries([("alice", a), ("alice", b)]),
            Err(AuthError::DuplicateClient { .. })
        ));
        assert!(matches!(
            TokenStore::from_entries([("alice", a), ("bob", a)]),
            Err(AuthError::DuplicateToken { .. })
        ));
        assert!(matches!(
            TokenStore::from_entries([("", a)]),
            Err(AuthError::InvalidName)
        ));
    }

    #[test]
    fn authenticate_right_wrong_and_empty_tokens() {
        let mut rng = rng();
        let alice = generate_token(&mut rng);
        let bob = generate_token(&mut rng);
        let store =
            TokenStore::from_entries([("alice", alice.hash()), ("bob", bob.hash())]).unwrap();
        assert_eq!(
            store.authenticate(alice.expose()).unwrap().to_string(),
            "alice"
        );
        assert_eq!(store.authenticate(bob.expose()).unwrap().as_str(), "bob");
        assert_eq!(store.authenticate(""), None);
        assert_eq!(store.authenticate("tsr_"), None);
        assert_eq!(store.authenticate(&format!("{} ", alice.expose())), None);
        let empty = TokenStore::from_entries(Vec::<(String, TokenHash)>::new()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.authenticate(alice.expose()), None);
    }

    #[test]
    fn wrong_token_sharing_a_long_prefix_fails() {
        let token = generate_token(&mut rng());
        let store = TokenStore::from_entries([("alice", token.hash())]).unwrap();
        let secret = token.expose();
        // Every single-character change, including the last, is refused:
        // the comparison covers the whole token, not a prefix.
        let last = secret.len() - 1;
        let flipped = if secret.ends_with('0') { '1' } else { '0' };
        let near_miss = format!("{}{flipped}", &secret[..last]);
        assert_eq!(store.authenticate(&near_miss), None);
        assert_eq!(store.authenticate(&secret[..last]), None);
        assert_eq!(store.authenticate(&format!("{secret}0")), None);
        assert!(store.authenticate(secret).is_some());
    }

    #[test]
    fn generated_tokens_differ_and_authenticate_after_append_and_load() {
        let dir = scratch_dir("append");
        let path = dir.join("tokens");
        let mut rng = rng();
        let tokens: Vec<Token> = (0..3).map(|_| generate_token(&mut rng)).collect();
        assert_ne!(tokens[0].expose(), tokens[1].expose());
        assert_ne!(tokens[1].expose(), tokens[2].expose());
        for t in &tokens {
            assert!(t.expose().starts_with(TOKEN_PREFIX));
            assert_eq!(t.expose().len(), TOKEN_PREFIX.len() + 64);
        }
        append_token(&path, "alice", &tokens[0]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // An operator's hand edit without a final newline is tolerated.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("# added by hand");
        fs::write(&path, text).unwrap();
        append_token(&path, "bob", &tokens[1]).unwrap();

        let dup = append_token(&path, "alice", &tokens[2]).unwrap_err();
        assert!(matches!(dup, AuthError::DuplicateClient { .. }), "{dup}");
        let reused = append_token(&path, "carol", &tokens[1]).unwrap_err();
        assert!(
            matches!(reused, AuthError::DuplicateToken { .. }),
            "{reused}"
        );

        let store = TokenStore::load(&path).unwrap();
        assert_eq!(
            store.authenticate(tokens[0].expose()).unwrap().as_str(),
            "alice"
        );
        assert_eq!(
            store.authenticate(tokens[1].expose()).unwrap().as_str(),
            "bob"
        );
        assert_eq!(store.authenticate(tokens[2].expose()), None);
        let text = fs::read_to_string(&path).unwrap();
        for t in &tokens {
            assert!(!text.contains(t.expose()), "the file must not hold a token");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_of_missing_file_names_it() {
        let err = TokenStore::load("/nonexistent/tessera/tokens").unwrap_err();
        assert!(matches!(err, AuthError::Io { .. }));
        assert!(
            err.to_string().contains("/nonexistent/tessera/tokens"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let token = generate_token(&mut rng());
        let hash = token.hash();
        let store = TokenStore::from_entries([("alice", hash)]).unwrap();
        let full_hex = hash.to_string();
        let hex = full_hex.strip_prefix(HASH_PREFIX).unwrap();
        for text in [
            format!("{store:?}"),
            format!("{hash:?}"),
            format!("{token:?}"),
        ] {
            assert!(!text.contains(hex), "{text}");
            assert!(!text.contains(token.expose()), "{text}");
        }
        assert_eq!(format!("{store:?}"), r#"TokenStore { clients: ["alice"] }"#);
        assert_eq!(TokenHash::parse(&full_hex), Some(hash));
    }

    #[test]
    fn bearer_parsing() {
        fn with(values: &[&'static str]) -> MetadataMap {
            let mut md = MetadataMap::new();
            for v in values {
                md.append("authorization", MetadataValue::from_static(v));
            }
            md
        }
        assert_eq!(
            bearer_from_metadata(&with(&["Bearer tsr_abc"])).unwrap(),
            "tsr_abc"
        );
        assert_eq!(
            bearer_from_metadata(&with(&["bearer   tsr_abc "])).unwrap(),
            "tsr_abc"
        );
        assert_eq!(
            bearer_from_metadata(&with(&["BEARER\ttsr_abc"])).unwrap(),
            "tsr_abc"
        );
        assert!(matches!(
            bearer_from_metadata(&MetadataMap::new()),
            Err(AuthError::MissingBearer)
        ));
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic tsr_abc",
            "tsr_abc",
            "Bearer a b",
            "Bearertsr_abc",
        ] {
            assert!(
                matches!(
                    bearer_from_metadata(&with(&[bad])),
                    Err(AuthError::MalformedBearer)
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            bearer_from_metadata(&with(&["Bearer a", "Bearer b"])),
            Err(AuthError::MalformedBearer)
        ));
    }
}
