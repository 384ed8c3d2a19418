//! The fixed-point decoder and the bit packing a masked input arrives in:
//! arbitrary formats, packed bytes and sums. No panic; `unpack` accepts only
//! canonical bytes, and every value it returns fits the width.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tessera_aggregation::packing::{pack, unpack};
use tessera_dp::encoding::FixedPoint;

#[derive(Debug, Arbitrary)]
struct Input {
    clip_norm: f32,
    frac_bits: u8,
    bits: u8,
    contributors: u32,
    len: u16,
    packed: Vec<u8>,
    sum: Vec<u32>,
}

fuzz_target!(|input: Input| {
    if let Ok(values) = unpack(&input.packed, input.bits, usize::from(input.len)) {
        let mask = if input.bits >= 32 {
            u32::MAX
        } else {
            (1 << input.bits) - 1
        };
        assert!(values.iter().all(|v| *v <= mask));
        assert_eq!(pack(&values, input.bits), input.packed);
    }
    if let Ok(format) = FixedPoint::new(input.clip_norm, input.frac_bits, input.bits) {
        let decoded = format.decode_sum(&input.sum, input.contributors);
        let _ = decoded.mean();
    }
});
