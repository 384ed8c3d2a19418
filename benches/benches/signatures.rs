//! The malicious-server model's signatures: what a client pays to sign its
//! advert and the survivor set, and to check a neighbour's advert and the
//! quorum of survivor-set signatures in its unmasking request. The last one
//! grows with n (the quorum is a majority of the round), so it is measured
//! at n = 1,000: 501 signatures over a 1,000-id set.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tessera_aggregation::ClientId;
use tessera_aggregation::identity::IdentityKey;
use tessera_aggregation::keys::PublicKeys;

const N: u32 = 1000;
const QUORUM: usize = (N / 2 + 1) as usize;

fn bench_signatures(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0x51_9a);
    let keys = PublicKeys {
        c_pk: [1; 32],
        s_pk: [2; 32],
    };
    let identities: Vec<IdentityKey> = (0..QUORUM)
        .map(|_| IdentityKey::generate(&mut rng))
        .collect();
    let set: Vec<ClientId> = (0..N).map(ClientId).collect();
    // A session's digest (session or transcript hash): 32 public bytes.
    let digest = [7u8; 32];

    c.bench_function("sign an advert", |b| {
        b.iter(|| identities[0].sign_advert(black_box(&digest), ClientId(0), black_box(&keys)))
    });
    let advert = identities[0].sign_advert(&digest, ClientId(0), &keys);
    let public = identities[0].verifying_key();
    c.bench_function("verify an advert", |b| {
        b.iter(|| assert!(public.verify_advert(black_box(&digest), ClientId(0), &keys, &advert)))
    });
    c.bench_function("sign a survivor set of 1,000", |b| {
        b.iter(|| identities[0].sign_survivors(black_box(&digest), black_box(&set)))
    });
    let signed: Vec<_> = identities
        .iter()
        .map(|k| (k.verifying_key(), k.sign_survivors(&digest, &set)))
        .collect();
    let mut group = c.benchmark_group("quorum");
    group.sample_size(10);
    group.bench_function("verify 501 signatures over a 1,000-id set", |b| {
        b.iter(|| {
            for (key, signature) in &signed {
                assert!(key.verify_survivors(black_box(&digest), &set, signature));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_signatures);
criterion_main!(benches);
