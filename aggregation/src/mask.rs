//! Mask expansion: the hot loop of secure aggregation.
//!
//! In the MaskedInputCollection stage of Bonawitz et al. (CCS 2017) a client
//! `u` sends
//!
//! ```text
//! y_u = x_u + PRG(b_u) + Σ_{v neighbour of u} ±PRG(s_uv)   (mod 2^bits)
//! ```
//!
//! with `+` when `u < v`, so that every pairwise mask cancels in the sum of
//! two surviving neighbours. In the Unmasking stage the server rebuilds the
//! self-mask seed `b_u` of every survivor and the pairwise seeds `s_uv`
//! that a dropped client `v` shared with survivors, and subtracts (or adds
//! back) those masks from the running sum. Both sides therefore expand
//! seeds into `d`-word masks; a client does `k + 1` expansions of its whole
//! vector and the server up to hundreds, so this file decides how fast a
//! round can go.
//!
//! # The keystream, bit for bit
//!
//! A [`MaskSeed`] is 32 bytes out of HKDF. The [`Prg`] named in the round
//! configuration turns it into a keystream:
//!
//! - [`Prg::Aes128Ctr`]: AES-128 in CTR mode, key = `seed[0..16]`, initial
//!   counter block = `seed[16..32]`, incremented as one 128-bit big-endian
//!   integer (NIST SP 800-38A, appendix B.1 with `m = 128`; `ctr::Ctr128BE`).
//! - [`Prg::ChaCha20`]: ChaCha20 of RFC 8439, key = `seed`, 96-bit nonce = 0,
//!   initial block counter = 0.
//!
//! Word `i` of the mask is `u32::from_le_bytes(keystream[4i..4i + 4])`,
//! reduced mod `2^bits`. A power-of-two modulus needs no rejection
//! sampling: the low `bits` bits of a uniform `u32` are uniform. The
//! definition is the same for every function here ([`apply_mask`],
//! [`apply_masks`], [`apply_masks_parallel`], [`fill_keystream`]) and is
//! pinned by published test vectors in the tests below; changing it breaks
//! interoperability between clients and servers of different versions.
//!
//! # Why the arithmetic is done in `u32`
//!
//! `2^bits` divides `2^32`, so adding and subtracting with wrapping `u32`
//! arithmetic and reducing once at the end gives the same result as reducing
//! after every operation. The loops below never mask per add.
//!
//! # Performance
//!
//! The output is walked once, in blocks of 15 KiB that stay in L1. For each
//! block, every seed's cipher (one state per seed, kept for the whole call)
//! generates 1 KiB of keystream at a time into a stack buffer that is added
//! straight into the block; no mask is ever expanded into a full-length
//! temporary. The add runs inside the cipher backend's closure, so it is
//! compiled with the backend's instruction set (AVX2 for ChaCha20) without
//! `RUSTFLAGS` or `unsafe`.
//!
//! So masking costs little more than generating the keystream alone, while
//! expanding each mask into a full-length buffer and adding it would cost a
//! second pass over memory per seed; `cargo bench -p tessera-benches --bench
//! masking` prints the ratio on the machine at hand.
//!
//! `aes` 0.9 picks its AES-NI code at run time. Its faster VAES code is used
//! only when the build enables the `vaes` target feature
//! (`RUSTFLAGS="-C target-cpu=native"`), because `cpufeatures` 0.3 reports
//! VAES at run time only with AVX-512 register state.

use core::fmt;
use core::str::FromStr;

use core::marker::PhantomData;

use aes::Aes128;
use chacha20::ChaCha20;
use ctr::Ctr128BE;
use ctr::cipher::array::{Array, ArraySize};
use ctr::cipher::typenum::Unsigned;
use ctr::cipher::{
    Block, BlockSizeUser, KeyIvInit, ParBlocks, StreamCipher, StreamCipherBackend,
    StreamCipherClosure, StreamCipherCore, StreamCipherSeekCore,
};
use rayon::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Which stream cipher expands mask seeds.
///
/// It is part of the round configuration because every client and the
/// server must expand the same seed into the same mask, or pairwise masks
/// would not cancel. AES-128-CTR is the default because AES instructions make
/// it the fastest on servers and desktops; ChaCha20 is for devices without
/// them.
///
/// ```
/// # use tessera_aggregation::mask::Prg;
/// assert_eq!("aes".parse::<Prg>(), Ok(Prg::Aes128Ctr));
/// assert_eq!("chacha20".parse::<Prg>(), Ok(Prg::ChaCha20));
/// assert!("rc4".parse::<Prg>().is_err());
/// assert_eq!(Prg::default().to_string(), "aes");
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Prg {
    /// AES-128 in CTR mode with a 128-bit big-endian counter (serialized as
    /// `"aes128-ctr"`).
    #[default]
    #[serde(alias = "aes")]
    Aes128Ctr,
    /// ChaCha20 of RFC 8439 (serialized as `"chacha20"`; kebab-case alone
    /// would spell it `"cha-cha20"`).
    #[serde(rename = "chacha20")]
    ChaCha20,
}

impl Prg {
    /// Every PRG, for benches and configuration help texts.
    pub const ALL: [Prg; 2] = [Prg::Aes128Ctr, Prg::ChaCha20];

    /// The short name that [`Display`](fmt::Display) prints and
    /// [`FromStr`] accepts.
    pub const fn name(self) -> &'static str {
        match self {
            Prg::Aes128Ctr => "aes",
            Prg::ChaCha20 => "chacha20",
        }
    }
}

impl fmt::Display for Prg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Prg {
    type Err = ParsePrgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aes" | "aes128-ctr" => Ok(Prg::Aes128Ctr),
            "chacha20" => Ok(Prg::ChaCha20),
            _ => Err(ParsePrgError { name: s.to_owned() }),
        }
    }
}

/// A PRG name that [`Prg::from_str`] does not know.
///
/// It carries the rejected name so a command line or configuration file can
/// say what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown mask PRG {name:?}: expected \"aes\", \"aes128-ctr\" or \"chacha20\"")]
#[non_exhaustive]
pub struct ParsePrgError {
    /// The name that was given.
    pub name: String,
}

/// A 32-byte seed that expands into one mask.
///
/// Seeds are the secrets of the protocol: the self-mask seed `b_u`, and the
/// pairwise seeds `s_uv` derived with X25519 + HKDF by the key-agreement
/// code. Anyone who holds a seed can remove its mask, so the seed is zeroized
/// on drop and its `Debug` prints nothing of it.
///
/// ```
/// # use tessera_aggregation::mask::MaskSeed;
/// let seed = MaskSeed::from_bytes([7; 32]);
/// assert_eq!(format!("{seed:?}"), "MaskSeed(..)");
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MaskSeed([u8; 32]);

impl MaskSeed {
    /// Wraps 32 bytes of key material (an HKDF output) as a seed.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The seed's bytes, for Shamir sharing the self-mask seed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MaskSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskSeed(..)")
    }
}

/// Whether a mask is added to or subtracted from a vector.
///
/// A client adds its self-mask, adds `PRG(s_uv)` for neighbours `v > u` and
/// subtracts it for `v < u`; the server applies the opposite signs when it
/// removes masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskSign {
    /// `out += mask`.
    Add,
    /// `out -= mask`.
    Subtract,
}

/// Words of output processed per block: for each block, every seed's
/// keystream is generated and added while the block stays in L1.
///
/// 15,360 bytes is a multiple of every parallel batch of the cipher backends
/// (AES-NI 8 x 16 B, VAES256 30 x 16 B, VAES512 64 x 16 B, ChaCha20 SIMD up to
/// 16 x 64 B), so no block ends in a one-cipher-block-at-a-time tail, and it
/// leaves half of a 32 KiB L1 for the scratch and the cipher states.
/// 960 to 7,680 words measured equally fast on the project machine.
const BLOCK_WORDS: usize = 3840;

/// Bytes of keystream generated ahead of each add: whole batches of the
/// cipher backend (AES-NI: 8 batches of 8 blocks; VAES256: 2 of 30;
/// ChaCha20-AVX2: 4 of 4), then one vectorised pass adds them into the
/// output. Measured with 41 seeds (AES, ChaCha20 time over keystream alone):
/// 256 B 1.20/1.01, 1 KiB 1.17/0.99, 2 to 8 KiB 1.18/1.03. Adding each
/// AES-NI batch as it comes out was 1.56: the 32-word add loop stays scalar
/// amid the AES round keys.
const SCRATCH_BYTES: usize = 1024;

/// Parallel chunks start at multiples of this many words (1,920 bytes, a
/// multiple of both cipher block sizes and of the AES-NI and VAES256
/// batches), so every task starts on a cipher block boundary.
const PAR_ALIGN_WORDS: usize = 480;

/// Smallest chunk of the output that [`apply_masks_parallel`] gives to one
/// task. Below this, starting one cipher per seed per chunk costs more than
/// the parallelism wins.
const MIN_PAR_CHUNK_WORDS: usize = BLOCK_WORDS;

/// Tasks per rayon thread that [`apply_masks_parallel`] aims for, so that
/// work stealing can even out chunks that finish at different times (a
/// busy core, a short last chunk).
const PAR_TASKS_PER_THREAD: usize = 4;

/// AES-128-CTR below the buffering wrapper [`Ctr128BE`]: the masking kernel
/// drives the block-level core itself.
type AesCtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;
/// ChaCha20 (RFC 8439) below the buffering wrapper [`ChaCha20`].
type ChaCha20Core = chacha20::ChaChaCore<chacha20::R20, chacha20::variants::Ietf>;

/// AES-128-CTR's key and initial counter block: the two halves of the seed.
fn aes_key_iv(seed: &MaskSeed) -> (&[u8; 16], &[u8; 16]) {
    let (halves, _) = seed.0.as_chunks::<16>();
    (&halves[0], &halves[1])
}

/// ChaCha20's nonce: fixed, since every seed is used for one mask only.
const CHACHA20_NONCE: [u8; 12] = [0; 12];

/// A cipher core started from a seed as the module doc defines. The kernel
/// is generic over it so each PRG gets its own monomorphic loop and the
/// cipher states of all seeds sit unboxed in one `Vec`.
trait MaskCore: StreamCipherCore + StreamCipherSeekCore {
    fn from_seed(seed: &MaskSeed) -> Self;
}

impl MaskCore for AesCtrCore {
    fn from_seed(seed: &MaskSeed) -> Self {
        let (key, iv) = aes_key_iv(seed);
        Self::new(key.into(), iv.into())
    }
}

impl MaskCore for ChaCha20Core {
    fn from_seed(seed: &MaskSeed) -> Self {
        Self::new((&seed.0).into(), (&CHACHA20_NONCE).into())
    }
}

/// `out ±= the next 4 * out.len() keystream bytes`, run inside the cipher
/// backend.
///
/// `call` is inlined into the backend's `#[target_feature]` function
/// (`StreamCipherCore::process_with_backend`), so the add loop is compiled
/// with the backend's instruction set (AVX2 for ChaCha20 on an AVX2 CPU)
/// without `RUSTFLAGS` or `unsafe`, and the keystream is added while it is
/// still in L1.
struct AddKeystream<'a, BS, const SUBTRACT: bool> {
    out: &'a mut [u32],
    /// Keystream scratch; the kernel wipes it at the end.
    scratch: &'a mut [u8; SCRATCH_BYTES],
    block_size: PhantomData<BS>,
}

impl<BS: ArraySize, const SUBTRACT: bool> BlockSizeUser for AddKeystream<'_, BS, SUBTRACT> {
    type BlockSize = BS;
}

impl<BS: ArraySize, const SUBTRACT: bool> StreamCipherClosure for AddKeystream<'_, BS, SUBTRACT> {
    #[inline(always)]
    fn call<B: StreamCipherBackend<BlockSize = BS>>(self, backend: &mut B) {
        let par_words = B::ParBlocksSize::USIZE * BS::USIZE / 4;
        let max_batches = SCRATCH_BYTES / (4 * par_words);
        let mut rest = &mut *self.out;
        while max_batches > 0 && rest.len() >= par_words {
            let n = max_batches.min(rest.len() / par_words);
            let (words, tail) = rest.split_at_mut(n * par_words);
            let ks = &mut self.scratch[..4 * words.len()];
            let (blocks, _) = Array::<u8, BS>::slice_as_chunks_mut(ks);
            let (batches, _) = ParBlocks::<B>::slice_as_chunks_mut(blocks);
            for batch in batches {
                backend.gen_par_ks_blocks(batch);
            }
            add_keystream::<SUBTRACT>(words, ks);
            rest = tail;
        }
        // The end of the vector, or a backend whose batch outgrew the
        // scratch: one cipher block at a time. A partial last block is fine,
        // nothing reads this keystream after it.
        let (blocks, _) = Array::<u8, BS>::slice_as_chunks_mut(&mut self.scratch[..]);
        let block: &mut Block<B> = &mut blocks[0];
        for words in rest.chunks_mut(BS::USIZE / 4) {
            backend.gen_ks_block(block);
            add_keystream::<SUBTRACT>(words, &block[..4 * words.len()]);
        }
    }
}

/// Whether AES-128-CTR runs on the CPU's AES instructions (AES-NI or VAES
/// on x86, the ARMv8 crypto extension on aarch64), detected at run time.
///
/// Without them [`Prg::Aes128Ctr`] falls back to the `aes` crate's
/// constant-time software AES, which measured more than ten times slower than
/// [`Prg::ChaCha20`] (0.18 against 2.1 GB/s on the project machine). A
/// server can log this at startup; a deployment whose clients lack AES
/// instructions should configure ChaCha20 for its rounds.
pub fn aes_hardware_accelerated() -> bool {
    aes::hardware_accelerated()
}

/// Panics unless `bits` names a modulus this module supports.
fn check_bits(bits: u8) {
    assert!(
        (1..=32).contains(&bits),
        "mask modulus 2^{bits} is not supported: bits must be in 1..=32"
    );
}

/// `out[i] ±= word i of ks`, where `ks` holds `4 * out.len()` keystream bytes.
#[inline(always)]
fn add_keystream<const SUBTRACT: bool>(out: &mut [u32], ks: &[u8]) {
    let (words, _) = ks.as_chunks::<4>();
    debug_assert_eq!(words.len(), out.len());
    for (o, w) in out.iter_mut().zip(words) {
        let w = u32::from_le_bytes(*w);
        *o = if SUBTRACT {
            o.wrapping_sub(w)
        } else {
            o.wrapping_add(w)
        };
    }
}

/// Reduces every word mod `2^bits`.
#[inline]
fn reduce(bits: u8, out: &mut [u32]) {
    if bits < 32 {
        let m = (1u32 << bits) - 1;
        out.iter_mut().for_each(|x| *x &= m);
    }
}

/// The single-threaded kernel: applies every mask to `out`, which holds words
/// `first_word..first_word + out.len()` of the full vector, and reduces it.
/// `first_word` must be a multiple of 16 (a ChaCha20 block).
fn apply_masks_at(
    prg: Prg,
    masks: &[(&MaskSeed, MaskSign)],
    bits: u8,
    first_word: u64,
    out: &mut [u32],
) {
    match prg {
        Prg::Aes128Ctr => kernel::<AesCtrCore>(masks, bits, first_word, out),
        Prg::ChaCha20 => kernel::<ChaCha20Core>(masks, bits, first_word, out),
    }
}

/// [`apply_masks_at`] for one cipher.
///
/// The loop runs block-outer: one cipher state per seed, and for each
/// block of the output every seed's keystream for that block is generated
/// and added while the block stays in L1. Seed-outer (one seed at a time
/// over the whole output, which then streams through L2/L3 once per seed)
/// measured slower: with 41 seeds and d = 10^6, 1.30x against 1.21x of the
/// keystream time for AES, 1.13x against 1.06x for ChaCha20; with 990 seeds
/// and d = 10^5 (the output fits L2) the two were within 2%.
fn kernel<C: MaskCore>(
    masks: &[(&MaskSeed, MaskSign)],
    bits: u8,
    first_word: u64,
    out: &mut [u32],
) {
    if out.is_empty() {
        return;
    }
    let block_bytes = C::BlockSize::U64;
    let first_byte = first_word * 4;
    assert!(
        first_byte.is_multiple_of(block_bytes),
        "mask chunks must start on a cipher block boundary"
    );
    let blocks_needed = (4 * out.len() as u64).div_ceil(block_bytes);
    let mut cores: Vec<(C, MaskSign)> = masks
        .iter()
        .map(|&(seed, sign)| {
            let mut core = C::from_seed(seed);
            let Ok(pos) = C::Counter::try_from(first_byte / block_bytes) else {
                panic!("vector too long for one seed's keystream");
            };
            core.set_block_pos(pos);
            // The core API does not check for counter wrap-around; a wrapped
            // keystream would repeat a mask, so refuse (ChaCha20: 256 GiB).
            if let Some(remaining) = core.remaining_blocks() {
                assert!(
                    blocks_needed <= remaining as u64,
                    "vector too long for one seed's keystream"
                );
            }
            (core, sign)
        })
        .collect();
    let mut scratch = [0u8; SCRATCH_BYTES];
    for block in out.chunks_mut(BLOCK_WORDS) {
        for (core, sign) in &mut cores {
            match sign {
                MaskSign::Add => core.process_with_backend(AddKeystream::<C::BlockSize, false> {
                    out: block,
                    scratch: &mut scratch,
                    block_size: PhantomData,
                }),
                MaskSign::Subtract => {
                    core.process_with_backend(AddKeystream::<C::BlockSize, true> {
                        out: block,
                        scratch: &mut scratch,
                        block_size: PhantomData,
                    })
                }
            }
        }
        reduce(bits, block);
    }
    // The scratch holds the end of the last mask. ChaCha20 states wipe
    // themselves on drop; AES round keys do only with the `aes/zeroize`
    // feature.
    scratch.zeroize();
}

/// Adds (or subtracts) the mask of one seed into `out`, leaving every word
/// reduced mod `2^bits`.
///
/// This is [`apply_masks`] with one mask; use that one when there are
/// several, so the output is walked once.
///
/// # Panics
/// If `bits` is not in `1..=32`, or (ChaCha20 only) if `out` is longer than
/// the 256 GiB keystream of one seed.
///
/// ```
/// # use tessera_aggregation::mask::{apply_mask, MaskSeed, MaskSign, Prg};
/// let seed = MaskSeed::from_bytes([1; 32]);
/// let mut v = vec![5u32, 6, 7];
/// apply_mask(Prg::Aes128Ctr, &seed, MaskSign::Add, 16, &mut v);
/// assert!(v.iter().all(|&x| x < 1 << 16));
/// apply_mask(Prg::Aes128Ctr, &seed, MaskSign::Subtract, 16, &mut v);
/// assert_eq!(v, [5, 6, 7]);
/// ```
pub fn apply_mask(prg: Prg, seed: &MaskSeed, sign: MaskSign, bits: u8, out: &mut [u32]) {
    apply_masks(prg, &[(seed, sign)], bits, out);
}

/// Applies many masks to one vector on the calling thread, leaving every
/// word reduced mod `2^bits`.
///
/// This is the client's masking step (`k + 1` masks) and, through
/// [`apply_masks_parallel`], the server's unmasking step. The output is
/// walked once in L1-sized blocks, with one cipher state per seed.
///
/// # Panics
/// As [`apply_mask`].
///
/// ```
/// # use tessera_aggregation::mask::{apply_masks, MaskSeed, MaskSign, Prg};
/// let (b, s) = (MaskSeed::from_bytes([1; 32]), MaskSeed::from_bytes([2; 32]));
/// let mut v = vec![0u32; 1000];
/// apply_masks(Prg::ChaCha20, &[(&b, MaskSign::Add), (&s, MaskSign::Add)], 20, &mut v);
/// apply_masks(Prg::ChaCha20, &[(&s, MaskSign::Subtract), (&b, MaskSign::Subtract)], 20, &mut v);
/// assert!(v.iter().all(|&x| x == 0));
/// ```
pub fn apply_masks(prg: Prg, masks: &[(&MaskSeed, MaskSign)], bits: u8, out: &mut [u32]) {
    check_bits(bits);
    apply_masks_at(prg, masks, bits, 0, out);
}

/// [`apply_masks`] on the rayon thread pool, with bit-identical results.
///
/// The output is split into disjoint chunks aligned to the kernel's block;
/// each task starts every seed's keystream at its chunk's offset, so
/// threads never share an accumulator. Meant for the server's unmasking
/// (hundreds of seeds); a client may use it too. Run it from a blocking
/// pool, never on an async executor.
///
/// # Panics
/// As [`apply_mask`].
pub fn apply_masks_parallel(prg: Prg, masks: &[(&MaskSeed, MaskSign)], bits: u8, out: &mut [u32]) {
    check_bits(bits);
    let tasks = rayon::current_num_threads() * PAR_TASKS_PER_THREAD;
    let chunk_words = out
        .len()
        .div_ceil(tasks)
        .next_multiple_of(PAR_ALIGN_WORDS)
        .max(MIN_PAR_CHUNK_WORDS);
    out.par_chunks_mut(chunk_words)
        .enumerate()
        .for_each(|(i, chunk)| {
            let first_word = (i as u64) * (chunk_words as u64);
            apply_masks_at(prg, masks, bits, first_word, chunk);
        });
}

/// Writes the first `out.len()` bytes of `seed`'s keystream into `out`.
///
/// The benches use it as the floor that masking is compared against; tests
/// use it to check the keystream against published vectors.
///
/// # Panics
/// ChaCha20 only: if `out` is longer than 256 GiB.
pub fn fill_keystream(prg: Prg, seed: &MaskSeed, out: &mut [u8]) {
    // The buffering wrappers rather than the kernel's cores: an
    // independent path that the tests compare the kernel against.
    match prg {
        Prg::Aes128Ctr => {
            let (key, iv) = aes_key_iv(seed);
            Ctr128BE::<Aes128>::new(key.into(), iv.into()).write_keystream(out);
        }
        Prg::ChaCha20 => {
            ChaCha20::new((&seed.0).into(), (&CHACHA20_NONCE).into()).write_keystream(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde::de::IntoDeserializer;

    const BITS: [u8; 5] = [1, 8, 17, 31, 32];
    /// Lengths that are not multiples of any block size, plus one that spans
    /// several parallel chunks.
    const LENGTHS: [usize; 6] = [0, 1, 3, 1023, 70_001, 100_003];

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        hex::decode(digits).unwrap()
    }

    fn seed(i: u8) -> MaskSeed {
        MaskSeed::from_bytes(core::array::from_fn(|j| i.wrapping_mul(31) ^ j as u8))
    }

    /// `out + Σ ±mask` computed the slow, obvious way: whole keystream first,
    /// reduction after every single operation.
    fn reference(prg: Prg, masks: &[(&MaskSeed, MaskSign)], bits: u8, out: &[u32]) -> Vec<u32> {
        let m = if bits == 32 {
            u32::MAX
        } else {
            (1 << bits) - 1
        };
        let mut v: Vec<u32> = out.iter().map(|x| x & m).collect();
        let mut ks = vec![0u8; 4 * out.len()];
        for &(seed, sign) in masks {
            fill_keystream(prg, seed, &mut ks);
            for (x, w) in v.iter_mut().zip(ks.chunks_exact(4)) {
                let w = u32::from_le_bytes(w.try_into().unwrap()) & m;
                *x = match sign {
                    MaskSign::Add => x.wrapping_add(w) & m,
                    MaskSign::Subtract => x.wrapping_sub(w) & m,
                };
            }
        }
        v
    }

    #[test]
    fn chacha20_keystream_is_rfc8439s() {
        // RFC 8439, appendix A.1, test vectors #1 and #2: all-zero key,
        // all-zero nonce, block counter 0 then 1; the keystream is the
        // serialized block.
        let want = hex(
            "76 b8 e0 ad a0 f1 3d 90 40 5d 6a e5 53 86 bd 28 bd d2 19 b8 a0 8d ed 1a a8 36 ef cc 8b 77 0d c7
             da 41 59 7c 51 57 48 8d 77 24 e0 3f b8 d8 4a 37 6a 43 b8 f4 15 18 a1 1c c3 87 b6 69 b2 ee 65 86
             9f 07 e7 be 55 51 38 7a 98 ba 97 7c 73 2d 08 0d cb 0f 29 a0 48 e3 65 69 12 c6 53 3e 32 ee 7a ed
             29 b7 21 76 9c e6 4e 43 d5 71 33 b0 74 d8 39 d5 31 ed 1f 28 51 0a fb 45 ac e1 0a 1f 4b 79 4d 6f",
        );
        let seed = MaskSeed::from_bytes([0; 32]);
        let mut ks = vec![0u8; want.len()];
        fill_keystream(Prg::ChaCha20, &seed, &mut ks);
        assert_eq!(ks, want);

        // Word order: word i is the little-endian u32 at bytes [4i, 4i + 4).
        let mut v = vec![0u32; want.len() / 4];
        apply_mask(Prg::ChaCha20, &seed, MaskSign::Add, 32, &mut v);
        assert_eq!(v[0], 0xade0_b876);
        for (i, w) in v.iter().enumerate() {
            assert_eq!(
                *w,
                u32::from_le_bytes(want[4 * i..4 * i + 4].try_into().unwrap())
            );
        }
    }

    #[test]
    fn aes128_ctr_keystream_is_sp800_38a_f51s() {
        // NIST SP 800-38A (2001), appendix F.5.1, CTR-AES128.Encrypt: key
        // 2b7e...4f3c, initial counter block f0f1...feff. The keystream is
        // ciphertext XOR plaintext; block #2 (counter ...fdff00) checks that
        // the counter carries as one big-endian integer.
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let init_ctr = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let plaintext = hex(
            "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
             30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
        );
        let ciphertext = hex(
            "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff
             5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee",
        );
        let want: Vec<u8> = plaintext
            .iter()
            .zip(&ciphertext)
            .map(|(p, c)| p ^ c)
            .collect();
        // The same vector lists block #1's output block directly.
        assert_eq!(want[..16], hex("ec8cdf7398607cb0f2d21675ea9ea1e4")[..]);

        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&key);
        bytes[16..].copy_from_slice(&init_ctr);
        let seed = MaskSeed::from_bytes(bytes);
        let mut ks = vec![0u8; want.len()];
        fill_keystream(Prg::Aes128Ctr, &seed, &mut ks);
        assert_eq!(ks, want);

        let mut v = vec![0u32; want.len() / 4];
        apply_mask(Prg::Aes128Ctr, &seed, MaskSign::Add, 32, &mut v);
        assert_eq!(v[0], 0x73df_8cec);
        for (i, w) in v.iter().enumerate() {
            assert_eq!(
                *w,
                u32::from_le_bytes(want[4 * i..4 * i + 4].try_into().unwrap())
            );
        }
    }

    #[test]
    fn every_path_matches_the_reference_at_every_modulus() {
        let seeds: Vec<MaskSeed> = (0..5).map(seed).collect();
        let masks: Vec<(&MaskSeed, MaskSign)> = seeds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s,
                    if i % 2 == 0 {
                        MaskSign::Add
                    } else {
                        MaskSign::Subtract
                    },
                )
            })
            .collect();
        for prg in Prg::ALL {
            for bits in BITS {
                for len in LENGTHS {
                    // Unreduced input: the functions must reduce it too.
                    let input: Vec<u32> = (0..len as u32)
                        .map(|i| i.wrapping_mul(0x9e37_79b9))
                        .collect();
                    let want = reference(prg, &masks, bits, &input);

                    let mut one = input.clone();
                    apply_masks(prg, &masks, bits, &mut one);
                    assert_eq!(one, want, "{prg} bits={bits} len={len}");

                    let mut par = input.clone();
                    apply_masks_parallel(prg, &masks, bits, &mut par);
                    assert_eq!(par, want, "{prg} bits={bits} len={len}");

                    let mut each = input.clone();
                    for &(s, sign) in &masks {
                        apply_mask(prg, s, sign, bits, &mut each);
                    }
                    assert_eq!(each, want, "{prg} bits={bits} len={len}");
                    assert!(bits == 32 || want.iter().all(|&x| x < 1 << bits));
                }
            }
        }
    }

    #[test]
    fn the_two_prgs_and_different_seeds_give_different_masks() {
        let mut masks = Vec::new();
        for prg in Prg::ALL {
            for i in 0..2 {
                let mut v = vec![0u32; 64];
                apply_mask(prg, &seed(i), MaskSign::Add, 32, &mut v);
                masks.push(v);
            }
        }
        for i in 0..masks.len() {
            for j in 0..i {
                assert_ne!(masks[i], masks[j]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "bits must be in 1..=32")]
    fn zero_bits_is_rejected() {
        apply_masks(Prg::Aes128Ctr, &[], 0, &mut [1, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "bits must be in 1..=32")]
    fn more_than_32_bits_is_rejected() {
        apply_masks_parallel(Prg::ChaCha20, &[], 33, &mut [1, 2, 3]);
    }

    #[test]
    fn no_masks_only_reduces() {
        let mut v = vec![u32::MAX, 5, 1 << 20];
        apply_masks(Prg::Aes128Ctr, &[], 8, &mut v);
        assert_eq!(v, [255, 5, 0]);
    }

    #[test]
    fn prg_names_round_trip() {
        for prg in Prg::ALL {
            assert_eq!(prg.to_string().parse::<Prg>(), Ok(prg));
        }
        assert_eq!("aes128-ctr".parse::<Prg>(), Ok(Prg::Aes128Ctr));
        let err = "ChaCha20".parse::<Prg>().unwrap_err();
        assert_eq!(err.name, "ChaCha20");
        assert!(err.to_string().contains("chacha20"));
        assert!("".parse::<Prg>().is_err());
        assert_eq!(Prg::default(), Prg::Aes128Ctr);
    }

    #[test]
    fn prg_serde_names_are_the_config_names() {
        fn de(s: &str) -> Result<Prg, serde::de::value::Error> {
            Prg::deserialize(s.into_deserializer())
        }
        assert_eq!(de("aes128-ctr"), Ok(Prg::Aes128Ctr));
        assert_eq!(de("aes"), Ok(Prg::Aes128Ctr));
        assert_eq!(de("chacha20"), Ok(Prg::ChaCha20));
        assert!(de("cha-cha20").is_err());
        assert!(de("Aes128Ctr").is_err());
    }

    #[test]
    fn seed_debug_hides_the_bytes() {
        let s = MaskSeed::from_bytes([0xab; 32]);
        assert_eq!(format!("{s:?}"), "MaskSeed(..)");
        assert_eq!(format!("{:?}", s.clone()), "MaskSeed(..)");
        assert_eq!(s.as_bytes(), &[0xab; 32]);
    }

    fn prg() -> impl Strategy<Value = Prg> {
        prop_oneof![Just(Prg::Aes128Ctr), Just(Prg::ChaCha20)]
    }

    fn bits() -> impl Strategy<Value = u8> {
        prop_oneof![proptest::sample::select(BITS.to_vec()), 1u8..=32]
    }

    fn len() -> impl Strategy<Value = usize> {
        prop_oneof![proptest::sample::select(LENGTHS.to_vec()), 0usize..20_000]
    }

    fn sign() -> impl Strategy<Value = MaskSign> {
        prop_oneof![Just(MaskSign::Add), Just(MaskSign::Subtract)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn masks_cancel(
            prg in prg(),
            bits in bits(),
            len in len(),
            seed in any::<[u8; 32]>(),
            input_seed in any::<u32>(),
        ) {
            let m = if bits == 32 { u32::MAX } else { (1 << bits) - 1 };
            let input: Vec<u32> = (0..len as u32).map(|i| (i ^ input_seed).wrapping_mul(0x2c1b_3c6d) & m).collect();
            let seed = MaskSeed::from_bytes(seed);
            let mut v = input.clone();
            apply_mask(prg, &seed, MaskSign::Add, bits, &mut v);
            prop_assert!(v.iter().all(|&x| x & !m == 0));
            // A mask of a long vector must change it (a zero mask would pass
            // the cancellation check trivially).
            prop_assert!(len < 64 || v != input);
            apply_masks_parallel(prg, &[(&seed, MaskSign::Subtract)], bits, &mut v);
            prop_assert_eq!(v, input);
        }

        #[test]
        fn all_paths_agree(
            prg in prg(),
            bits in bits(),
            len in len(),
            seeds in proptest::collection::vec((any::<[u8; 32]>(), sign()), 0..12),
        ) {
            let seeds: Vec<(MaskSeed, MaskSign)> =
                seeds.into_iter().map(|(s, sign)| (MaskSeed::from_bytes(s), sign)).collect();
            let masks: Vec<(&MaskSeed, MaskSign)> = seeds.iter().map(|(s, sign)| (s, *sign)).collect();
            // Reduced input: with no seeds, repeated `apply_mask` makes no
            // call that could reduce it.
            let m = if bits == 32 { u32::MAX } else { (1 << bits) - 1 };
            let input: Vec<u32> = (0..len as u32).map(|i| i.wrapping_mul(0x0808_8405) & m).collect();

            let mut one = input.clone();
            apply_masks(prg, &masks, bits, &mut one);
            let mut par = input.clone();
            apply_masks_parallel(prg, &masks, bits, &mut par);
            let mut each = input.clone();
            for &(s, sign) in &masks {
                apply_mask(prg, s, sign, bits, &mut each);
            }
            prop_assert_eq!(&one, &par);
            prop_assert_eq!(&one, &each);
        }

        /// Starting the keystream in the middle (what each parallel task
        /// does) continues exactly where the whole-vector pass would be, at
        /// any 64-byte boundary, not only at the parallel chunk size.
        #[test]
        fn a_chunk_at_any_offset_matches_the_whole(
            prg in prg(),
            bits in bits(),
            len in 1usize..40_000,
            split in any::<proptest::sample::Index>(),
            seed in any::<[u8; 32]>(),
        ) {
            let seed = MaskSeed::from_bytes(seed);
            let masks = [(&seed, MaskSign::Add)];
            let mut whole = vec![0u32; len];
            apply_masks(prg, &masks, bits, &mut whole);
            let split = split.index(len) / 16 * 16;
            let mut tail = vec![0u32; len - split];
            apply_masks_at(prg, &masks, bits, split as u64, &mut tail);
            prop_assert_eq!(&whole[split..], &tail[..]);
        }
    }
}
