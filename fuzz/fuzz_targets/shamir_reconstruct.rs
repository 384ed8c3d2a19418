//! Shamir reconstruction with adversarial shares: arbitrary share bytes
//! (x-coordinates, duplicates, out-of-field values) never panic, and any t
//! genuine shares still rebuild the secret when the others are garbage.
#![no_main]

use chacha20::ChaCha20Rng;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng;
use tessera_aggregation::shamir::{self, LagrangeBasis, Share};

#[derive(Debug, Arbitrary)]
struct Input {
    raw_shares: Vec<Vec<u8>>,
    xs: Vec<u32>,
    secret: [u8; 32],
    threshold: u8,
    holders: u8,
    seed: [u8; 32],
}

fuzz_target!(|input: Input| {
    let parsed: Vec<Share> = input
        .raw_shares
        .iter()
        .filter_map(|b| Share::from_bytes(b).ok())
        .collect();
    let refs: Vec<&Share> = parsed.iter().collect();
    let _ = shamir::reconstruct(&refs);
    if let Ok(basis) = LagrangeBasis::new(&input.xs) {
        let _ = basis.reconstruct(&refs);
    }

    // Genuine shares survive adversarial company.
    let holders = u32::from(input.holders % 12) + 2;
    let t = (usize::from(input.threshold) % holders as usize).max(2);
    let xs: Vec<u32> = (1..=holders).collect();
    let mut rng = ChaCha20Rng::from_seed(input.seed);
    if let Ok(shares) = shamir::split(&input.secret, t, &xs, &mut rng) {
        let genuine: Vec<&Share> = shares.iter().take(t).collect();
        assert_eq!(shamir::reconstruct(&genuine).unwrap(), input.secret);
    }
});
