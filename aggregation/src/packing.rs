//! The bit packing of masked vectors for the wire.
//!
//! Clients send their masked input `y = x + masks mod 2^bits` in the
//! MaskedInputCollection stage. Masked vectors are uniformly random in
//! `Z_{2^bits}`, so they do not compress: [`pack`] stores exactly `bits` bits
//! per element on the wire and [`unpack`] reads them back, rejecting anything
//! that is not the one canonical encoding.
//!
//! ```
//! use tessera_aggregation::packing::{pack, packed_len, unpack};
//!
//! // Five 7-bit elements take 35 bits, so 5 bytes.
//! let wire = pack(&[1, 2, 3, 4, 5], 7);
//! assert_eq!(wire.len(), packed_len(5, 7));
//! assert_eq!(unpack(&wire, 7, 5)?, vec![1, 2, 3, 4, 5]);
//! # Ok::<(), tessera_aggregation::packing::PackingError>(())
//! ```

/// The widest ring supported: masked vectors are stored as `u32` with
/// wrapping arithmetic, so `2^32` is the largest modulus that is free.
pub const MAX_BITS: u8 = 32;

/// Why a packed vector (or the width it claims) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackingError {
    /// `bits` is outside `1..=32`.
    #[error("bits must be in 1..=32 (values are u32), got {bits}")]
    InvalidBits {
        /// The rejected width.
        bits: u8,
    },
    /// A packed vector has the wrong number of bytes for its length.
    #[error("packed vector has {actual} bytes, expected {expected}")]
    WrongLength {
        /// `packed_len(len, bits)`.
        expected: usize,
        /// The bytes received.
        actual: usize,
    },
    /// The claimed vector length is so large its packed size overflows.
    #[error("a vector of {len} elements is too long to pack")]
    LengthOverflow {
        /// The claimed number of elements.
        len: usize,
    },
    /// The unused high bits of a packed vector's last byte are not zero.
    #[error("nonzero padding bits in the last byte of a packed vector")]
    NonZeroPadding,
}

/// Calls `$f::<B>($args)` for the runtime `bits`, so every width gets its own
/// copy of the group loop with constant shifts (fully unrolled by the
/// compiler: about twice the speed of a loop over a runtime width).
macro_rules! with_const_bits {
    ($bits:expr, $f:ident $args:tt) => {
        with_const_bits!(@arms $bits, $f $args;
            1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16
            17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
    };
    (@arms $bits:expr, $f:ident $args:tt; $($b:literal)*) => {
        match $bits {
            $($b => $f::<$b> $args,)*
            _ => unreachable!("bits checked to be in 1..=32"),
        }
    };
}

/// The number of bytes [`pack`] produces for `len` elements of `bits` bits:
/// `ceil(len * bits / 8)`.
///
/// # Panics
/// If `bits` is not in `1..=32`, or the result overflows `usize` (impossible
/// for the length of a slice of `u32` in memory).
pub fn packed_len(len: usize, bits: u8) -> usize {
    assert_pack_bits(bits);
    checked_packed_len(len, bits).expect("packed length overflows usize")
}

/// Packs ring elements at `bits` bits each for the wire.
///
/// Little-endian bit order: element `i` occupies bits `i*bits ..
/// (i+1)*bits` of the output read as one little-endian integer, and the
/// unused high bits of the last byte are zero. The output has exactly
/// [`packed_len`]`(values.len(), bits)` bytes. Elements must be below
/// `2^bits` (debug builds assert it); release builds mask them.
///
/// ```
/// use tessera_aggregation::packing::{pack, unpack};
///
/// // 1 = 01, 2 = 10, 3 = 11, from the low bits up: 0b00_11_10_01.
/// assert_eq!(pack(&[1, 2, 3], 2), vec![0b0011_1001]);
/// assert_eq!(unpack(&[0b0011_1001], 2, 3).unwrap(), vec![1, 2, 3]);
/// // The padding bits must be zero, so each vector has one encoding.
/// assert!(unpack(&[0b0111_1001], 2, 3).is_err());
/// ```
///
/// # Panics
/// If `bits` is not in `1..=32`.
pub fn pack(values: &[u32], bits: u8) -> Vec<u8> {
    assert_pack_bits(bits);
    let mask = value_mask(bits);
    debug_assert!(
        values.iter().all(|&v| v <= mask),
        "pack: an element does not fit {bits} bits"
    );
    let mut out = vec![0u8; packed_len(values.len(), bits)];
    match bits {
        32 => {
            for (dst, v) in out.chunks_exact_mut(4).zip(values) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
        16 => {
            for (dst, &v) in out.chunks_exact_mut(2).zip(values) {
                dst.copy_from_slice(&(v as u16).to_le_bytes());
            }
        }
        8 => {
            for (dst, &v) in out.iter_mut().zip(values) {
                *dst = v as u8;
            }
        }
        _ => with_const_bits!(bits, pack_generic(values, &mut out)),
    }
    out
}

/// Reads `len` elements of `bits` bits packed by [`pack`].
///
/// Rejects a byte count other than [`packed_len`]`(len, bits)` and nonzero
/// padding bits, so every vector has exactly one accepted encoding (a
/// malleable encoding would let two different messages carry one vector).
/// Every returned element is below `2^bits`.
pub fn unpack(bytes: &[u8], bits: u8, len: usize) -> Result<Vec<u32>, PackingError> {
    if !(1..=MAX_BITS).contains(&bits) {
        return Err(PackingError::InvalidBits { bits });
    }
    let expected = checked_packed_len(len, bits).ok_or(PackingError::LengthOverflow { len })?;
    if bytes.len() != expected {
        return Err(PackingError::WrongLength {
            expected,
            actual: bytes.len(),
        });
    }
    // Bits of the last byte that hold data; the rest is padding.
    let used = (len % 8) * usize::from(bits) % 8;
    if used != 0 && bytes[expected - 1] >> used != 0 {
        return Err(PackingError::NonZeroPadding);
    }
    let values = match bits {
        32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        16 => bytes
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        8 => bytes.iter().map(|&b| u32::from(b)).collect(),
        _ => with_const_bits!(bits, unpack_generic(bytes, len)),
    };
    Ok(values)
}

/// Packs whole groups of 8 elements (exactly `B` bytes each), then the tail
/// as a zero-padded group.
fn pack_generic<const B: usize>(values: &[u32], out: &mut [u8]) {
    let groups = values.len() / 8;
    let (head, tail) = values.split_at(groups * 8);
    let (out_head, out_tail) = out.split_at_mut(groups * B);
    for (group, dst) in head.chunks_exact(8).zip(out_head.chunks_exact_mut(B)) {
        pack_group::<B>(group.try_into().expect("8"), dst.try_into().expect("B"));
    }
    if !tail.is_empty() {
        // The zero elements past the end become the zero padding bits, and
        // the output is a prefix of the full group's.
        let mut group = [0u32; 8];
        group[..tail.len()].copy_from_slice(tail);
        let mut buf = [0u8; B];
        pack_group::<B>(&group, &mut buf);
        out_tail.copy_from_slice(&buf[..out_tail.len()]);
    }
}

/// 8 elements of `B` bits into `B` bytes, through a 64-bit accumulator that
/// is flushed 32 bits at a time.
#[inline(always)]
fn pack_group<const B: usize>(group: &[u32; 8], dst: &mut [u8; B]) {
    let mask = value_mask(B as u8);
    let mut acc = 0u64;
    let mut filled = 0usize;
    let mut pos = 0usize;
    for &v in group {
        acc |= u64::from(v & mask) << filled;
        filled += B;
        if filled >= 32 {
            dst[pos..pos + 4].copy_from_slice(&(acc as u32).to_le_bytes());
            pos += 4;
            acc >>= 32;
            filled -= 32;
        }
    }
    // 8 B bits is a whole number of bytes, so `filled` is a multiple of 8.
    let rest = filled / 8;
    dst[pos..pos + rest].copy_from_slice(&acc.to_le_bytes()[..rest]);
}

/// The inverse of [`pack_generic`]; the caller has checked the length.
fn unpack_generic<const B: usize>(bytes: &[u8], len: usize) -> Vec<u32> {
    let mut out = vec![0u32; len];
    let groups = len / 8;
    let (head, tail) = out.split_at_mut(groups * 8);
    let (in_head, in_tail) = bytes.split_at(groups * B);
    for (src, group) in in_head.chunks_exact(B).zip(head.chunks_exact_mut(8)) {
        unpack_group::<B>(src.try_into().expect("B"), group.try_into().expect("8"));
    }
    if !tail.is_empty() {
        let mut buf = [0u8; B];
        buf[..in_tail.len()].copy_from_slice(in_tail);
        let mut group = [0u32; 8];
        unpack_group::<B>(&buf, &mut group);
        let n = tail.len();
        tail.copy_from_slice(&group[..n]);
    }
    out
}

/// `B` bytes into 8 elements of `B` bits.
#[inline(always)]
fn unpack_group<const B: usize>(src: &[u8; B], group: &mut [u32; 8]) {
    let mask = value_mask(B as u8);
    let mut acc = 0u64;
    let mut filled = 0usize;
    let mut pos = 0usize;
    for v in group.iter_mut() {
        if filled < B {
            // A whole word unless fewer than 4 of the group's bytes remain.
            let mut w = [0u8; 4];
            let n = (B - pos).min(4);
            w[..n].copy_from_slice(&src[pos..pos + n]);
            acc |= u64::from(u32::from_le_bytes(w)) << filled;
            filled += 32;
            pos += 4;
        }
        *v = (acc as u32) & mask;
        acc >>= B;
        filled -= B;
    }
}

fn checked_packed_len(len: usize, bits: u8) -> Option<usize> {
    let b = usize::from(bits);
    // Split so that no intermediate overflows before the result does.
    (len / 8)
        .checked_mul(b)?
        .checked_add((len % 8 * b).div_ceil(8))
}

fn assert_pack_bits(bits: u8) {
    assert!(
        (1..=MAX_BITS).contains(&bits),
        "bits must be in 1..=32, got {bits}"
    );
}

/// `2^bits - 1` for `bits` in `1..=32`: the mask that reduces a `u32`
/// modulo `2^bits` (wrapping `u32` arithmetic is then arithmetic mod
/// `2^bits`, since `2^bits` divides `2^32`).
pub fn value_mask(bits: u8) -> u32 {
    u32::MAX >> (32 - u32::from(bits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bit-at-a-time reference packer, independent of the fast one.
    fn pack_reference(values: &[u32], bits: u8) -> Vec<u8> {
        let total = values.len() * usize::from(bits);
        let mut out = vec![0u8; total.div_ceil(8)];
        for (i, &v) in values.iter().enumerate() {
            for b in 0..usize::from(bits) {
                if (v >> b) & 1 == 1 {
                    let pos = i * usize::from(bits) + b;
                    out[pos / 8] |= 1 << (pos % 8);
                }
            }
        }
        out
    }

    #[test]
    fn pack_hand_examples() {
        assert_eq!(pack(&[1, 2, 3], 2), vec![0b0011_1001]);
        // 0x1FF in 9 bits: eight ones, then a one in bit 8.
        assert_eq!(pack(&[0x1FF], 9), vec![0xFF, 0x01]);
        // 5 (101) then 2 (010) in 3 bits: 0b010_101.
        assert_eq!(pack(&[5, 2], 3), vec![0b0001_0101]);
        assert_eq!(pack(&[0x1234_5678], 32), vec![0x78, 0x56, 0x34, 0x12]);
        assert_eq!(pack(&[0xABCD, 0x0102], 16), vec![0xCD, 0xAB, 0x02, 0x01]);
        assert_eq!(pack(&[7, 200], 8), vec![7, 200]);
        assert_eq!(pack(&[], 13), Vec::<u8>::new());
        assert_eq!(packed_len(3, 2), 1);
        assert_eq!(packed_len(1_000_000, 27), 3_375_000);
        assert_eq!(packed_len(9, 7), 8); // 63 bits
        assert_eq!(packed_len(usize::MAX, 8), usize::MAX);
        assert_eq!(checked_packed_len(usize::MAX, 9), None);
    }

    #[test]
    fn unpack_rejects_noncanonical_input() {
        let packed = pack(&[1, 2, 3, 4, 5], 7); // 35 bits -> 5 bytes
        assert_eq!(packed.len(), 5);
        assert_eq!(unpack(&packed, 7, 5), Ok(vec![1, 2, 3, 4, 5]));
        assert_eq!(
            unpack(&packed[..4], 7, 5),
            Err(PackingError::WrongLength {
                expected: 5,
                actual: 4
            })
        );
        let mut longer = packed.clone();
        longer.push(0);
        assert!(matches!(
            unpack(&longer, 7, 5),
            Err(PackingError::WrongLength { .. })
        ));
        // Bits 35..40 are padding: setting any of them is rejected.
        for bit in 3..8 {
            let mut bad = packed.clone();
            bad[4] |= 1 << bit;
            assert_eq!(unpack(&bad, 7, 5), Err(PackingError::NonZeroPadding));
        }
        // Bit 34 is data.
        let mut ok = packed.clone();
        ok[4] |= 1 << 2;
        assert!(unpack(&ok, 7, 5).is_ok());
        assert_eq!(
            unpack(&[], 0, 0),
            Err(PackingError::InvalidBits { bits: 0 })
        );
        assert_eq!(
            unpack(&[], 33, 0),
            Err(PackingError::InvalidBits { bits: 33 })
        );
        assert_eq!(
            unpack(&[0; 4], 9, usize::MAX),
            Err(PackingError::LengthOverflow { len: usize::MAX })
        );
        assert_eq!(unpack(&[], 5, 0), Ok(vec![]));
    }

    #[test]
    #[should_panic(expected = "bits must be in 1..=32")]
    fn pack_panics_on_bad_bits() {
        let _ = pack(&[0], 0);
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(
            bits in 1u8..=32,
            raw in prop::collection::vec(any::<u32>(), 0..100),
        ) {
            let values: Vec<u32> = raw.iter().map(|&v| v & value_mask(bits)).collect();
            let packed = pack(&values, bits);
            prop_assert_eq!(packed.len(), packed_len(values.len(), bits));
            prop_assert_eq!(packed.len(), (values.len() * usize::from(bits)).div_ceil(8));
            prop_assert_eq!(&packed, &pack_reference(&values, bits));
            prop_assert_eq!(unpack(&packed, bits, values.len()).unwrap(), values);
        }

        /// Any byte string of the right length unpacks iff its padding is
        /// zero, and then re-packs to itself.
        #[test]
        fn unpack_accepts_exactly_canonical_bytes(
            bits in 1u8..=32,
            len in 0usize..40,
            bytes in prop::collection::vec(any::<u8>(), 160),
        ) {
            let bytes = &bytes[..packed_len(len, bits)];
            let used = len * usize::from(bits) % 8;
            let padding_zero = used == 0 || bytes[bytes.len() - 1] >> used == 0;
            match unpack(bytes, bits, len) {
                Ok(values) => {
                    prop_assert!(padding_zero);
                    prop_assert!(values.iter().all(|&v| v <= value_mask(bits)));
                    prop_assert_eq!(pack(&values, bits), bytes.to_vec());
                }
                Err(e) => {
                    prop_assert!(!padding_zero);
                    prop_assert_eq!(e, PackingError::NonZeroPadding);
                }
            }
        }
    }
}
