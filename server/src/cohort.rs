//! Who takes part in a round: the cohort, sampled uniformly at random from
//! the clients waiting in the lobby with the server's CSPRNG.
//!
//! Taking the oldest waiting clients (as the lobby did before) lets the
//! order of arrival decide who trains, round after round; sampling makes
//! every waiting client equally likely to be chosen, whatever its place in
//! the queue, and leaves the others waiting (with keep-alives) for a later
//! round.
//!
//! How many are chosen ([`CohortRule::size`]) combines the cohort setting
//! with the round's size rules, `min_clients <= cohort <= max_clients`:
//!
//! - neither `cohort_size` nor `cohort_fraction` ([`CohortRule::All`]):
//!   every eligible waiting client, up to `max_clients` (sampled when more
//!   wait);
//! - `cohort_size = K` ([`CohortRule::Size`]): `K` of them, or all of them
//!   while fewer than `K` wait (`min_clients <= K <= max_clients`, checked
//!   at start);
//! - `cohort_fraction = F` ([`CohortRule::Fraction`]): `ceil(F × waiting)`,
//!   raised to `min_clients` and capped at `max_clients`.
//!
//! A round opens once `min_clients` eligible clients wait, so every rule
//! above gives at least `min_clients`.
//!
//! This is not privacy amplification by sampling: the server picks the
//! cohort and knows who is in it, so the ledger charges every round at
//! sampling rate 1.
//!
//! Eligibility is a predicate the scheduler passes in (DP-FTRL's
//! at-most-once-per-tree rule): an ineligible client is never sampled, is
//! not counted as waiting for these rules, and stays in the lobby.

use std::fmt;

use rand::Rng;

/// How many of the waiting clients a round takes; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CohortRule {
    /// Every eligible waiting client, up to `max_clients`.
    All,
    /// A fixed number.
    Size(u32),
    /// A fraction of those waiting, in (0, 1].
    Fraction(f64),
}

impl CohortRule {
    /// The cohort's size when `waiting` eligible clients wait: see the
    /// module docs. Never more than `waiting`.
    pub(crate) fn size(self, waiting: usize, min_clients: u32, max_clients: u32) -> usize {
        let (min, max) = (min_clients as usize, max_clients as usize);
        let wanted = match self {
            CohortRule::All => max,
            CohortRule::Size(k) => k as usize,
            CohortRule::Fraction(f) => fraction_of(f, waiting).clamp(min, max),
        };
        wanted.min(waiting)
    }
}

/// `ceil(f × n)`. A fraction is given in decimal (0.3), which a binary
/// double holds a hair off, so `0.3 × 10` is `3.0000000000000004`: a
/// product within a relative 1e-9 of an integer is that integer.
fn fraction_of(f: f64, n: usize) -> usize {
    let exact = f * n as f64;
    let nearest = exact.round();
    if (exact - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest as usize
    } else {
        exact.ceil() as usize
    }
}

/// As the round record and the logs name it: `all`, `size:K`,
/// `fraction:F`.
impl fmt::Display for CohortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CohortRule::All => f.write_str("all"),
            CohortRule::Size(k) => write!(f, "size:{k}"),
            CohortRule::Fraction(x) => write!(f, "fraction:{x}"),
        }
    }
}

/// Moves a uniformly random `size(eligible)`-subset of the eligible items
/// of `pool` out of it (every subset of that size equally likely, drawn
/// with `rng`); the rest, and every ineligible item, stay in `pool` in
/// their order. Returns the chosen items (in pool order) and how many were
/// eligible.
pub(crate) fn sample_from<T, R: Rng + ?Sized>(
    pool: &mut Vec<T>,
    size: impl FnOnce(usize) -> usize,
    eligible: &dyn Fn(&T) -> bool,
    rng: &mut R,
) -> (Vec<T>, usize) {
    let positions: Vec<usize> = (0..pool.len()).filter(|&i| eligible(&pool[i])).collect();
    let k = size(positions.len()).min(positions.len());
    let mut chosen = vec![false; pool.len()];
    for j in rand::seq::index::sample(rng, positions.len(), k) {
        chosen[positions[j]] = true;
    }
    let (mut taken, mut kept) = (Vec::with_capacity(k), Vec::with_capacity(pool.len() - k));
    for (item, chosen) in pool.drain(..).zip(chosen) {
        if chosen {
            taken.push(item);
        } else {
            kept.push(item);
        }
    }
    *pool = kept;
    (taken, positions.len())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// The 0.999 quantile of the chi-square distribution with 19 degrees
    /// of freedom (tables; scipy.stats.chi2.ppf(0.999, 19) = 43.8202).
    const CHI2_19_999: f64 = 43.8202;

    const WAITING: usize = 20;
    const COHORT: usize = 5;
    const DRAWS: usize = 20_000;

    /// How often each of `WAITING` clients (0 the oldest) is chosen over
    /// `DRAWS` cohorts of `COHORT` drawn by `sampler` from a fresh lobby.
    fn selection_counts(mut sampler: impl FnMut(&mut Vec<usize>) -> Vec<usize>) -> Vec<u64> {
        let mut counts = vec![0u64; WAITING];
        for _ in 0..DRAWS {
            let mut pool: Vec<usize> = (0..WAITING).collect();
            let taken = sampler(&mut pool);
            assert_eq!(taken.len(), COHORT);
            assert_eq!(pool.len(), WAITING - COHORT, "the others stay");
            for client in taken {
                counts[client] += 1;
            }
        }
        counts
    }

    /// Pearson's statistic for per-client selection counts, corrected for
    /// drawing `k` of `n` without replacement. Each draw chooses client i
    /// with p = k/n; its indicator has variance p(1-p) and covariance
    /// -p(1-p)/(n-1) with any other's (the k always add up), so the counts'
    /// deviations have covariance D p(1-p) n/(n-1) (I - J/n), and
    /// `sum (O-E)^2 / (D p (1-p)) × (n-1)/n` is chi-square with n-1 degrees
    /// of freedom for a uniform sampler. (Without the correction the plain
    /// Pearson sum is a (1-p) n/(n-1) multiple of it: a test that rarely
    /// fails, with less power.)
    fn chi_square(counts: &[u64]) -> f64 {
        let n = counts.len() as f64;
        let p = COHORT as f64 / n;
        let expected = DRAWS as f64 * p;
        let pearson: f64 = counts
            .iter()
            .map(|&o| (o as f64 - expected).powi(2) / (expected * (1.0 - p)))
            .sum();
        pearson * (n - 1.0) / n
    }

    fn uniform(rng: &mut StdRng) -> impl FnMut(&mut Vec<usize>) -> Vec<usize> + '_ {
        move |pool| sample_from(pool, |_| COHORT, &|_| true, rng).0
    }

    #[test]
    fn the_cohort_is_uniform_by_a_chi_square_test() {
        let mut rng = StdRng::seed_from_u64(15);
        let counts = selection_counts(uniform(&mut rng));
        let stat = chi_square(&counts);
        assert!(
            stat < CHI2_19_999,
            "chi-square {stat:.2} >= {CHI2_19_999} over counts {counts:?}"
        );
    }

    /// The test has power: the lobby's old rule (the oldest first) fails
    /// it, and so does a sampler that is uniform 95% of the time and takes
    /// the oldest otherwise.
    #[test]
    fn a_biased_sampler_fails_the_same_chi_square_test() {
        let oldest = |pool: &mut Vec<usize>| pool.drain(..COHORT).collect::<Vec<_>>();
        let stat = chi_square(&selection_counts(oldest));
        assert!(stat > CHI2_19_999, "oldest-first passed: {stat:.2}");

        let mut rng = StdRng::seed_from_u64(15);
        let mut coin = StdRng::seed_from_u64(16);
        let mostly_uniform = |pool: &mut Vec<usize>| {
            if rand::RngExt::random_bool(&mut coin, 0.05) {
                pool.drain(..COHORT).collect()
            } else {
                sample_from(pool, |_| COHORT, &|_| true, &mut rng).0
            }
        };
        let stat = chi_square(&selection_counts(mostly_uniform));
        assert!(stat > CHI2_19_999, "5% oldest-first passed: {stat:.2}");
    }

    #[test]
    fn ineligible_clients_are_never_sampled_and_stay_waiting_in_order() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let mut pool: Vec<usize> = (0..10).collect();
            let odd = |c: &usize| c % 2 == 1;
            let (taken, eligible) = sample_from(&mut pool, |w| w, &odd, &mut rng);
            assert_eq!(eligible, 5);
            assert_eq!(taken, [1, 3, 5, 7, 9]);
            assert_eq!(pool, [0, 2, 4, 6, 8]);

            let mut pool: Vec<usize> = (0..10).collect();
            let (taken, _) = sample_from(&mut pool, |_| 2, &odd, &mut rng);
            assert!(taken.iter().all(odd), "{taken:?}");
            assert_eq!(pool.len(), 8);
            assert!(pool.windows(2).all(|w| w[0] < w[1]), "order kept: {pool:?}");
        }
    }

    #[test]
    fn every_eligible_client_can_be_chosen_and_the_size_is_what_the_rule_says() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut seen = [false; 12];
        for _ in 0..500 {
            let mut pool: Vec<usize> = (0..12).collect();
            let (taken, waiting) = sample_from(
                &mut pool,
                |w| CohortRule::Fraction(0.25).size(w, 3, 100),
                &|_| true,
                &mut rng,
            );
            assert_eq!((taken.len(), waiting), (3, 12));
            taken.iter().for_each(|&c| seen[c] = true);
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }

    #[test]
    fn cohort_fraction_rounds_up_within_min_and_max() {
        let f = |x: f64, waiting: usize| CohortRule::Fraction(x).size(waiting, 3, 8);
        // Exact products that a double holds a hair above the integer.
        assert_eq!(f(0.3, 10), 3);
        assert_eq!(f(0.7, 10), 7);
        assert_eq!(f(0.1, 30), 3);
        // Rounded up.
        assert_eq!(f(0.25, 14), 4);
        assert_eq!(f(0.5, 7), 4);
        assert_eq!(f(0.31, 10), 4);
        // Raised to min_clients, capped at max_clients.
        assert_eq!(f(0.01, 20), 3);
        assert_eq!(f(0.9, 20), 8);
        assert_eq!(f(1.0, 5), 5);
        // Never more than wait.
        assert_eq!(CohortRule::Fraction(0.1).size(2, 3, 8), 2);
    }

    #[test]
    fn cohort_size_and_all_take_what_waits_up_to_their_bound() {
        assert_eq!(CohortRule::Size(5).size(20, 3, 10), 5);
        assert_eq!(CohortRule::Size(5).size(4, 3, 10), 4);
        assert_eq!(CohortRule::All.size(20, 3, 10), 10);
        assert_eq!(CohortRule::All.size(7, 3, 10), 7);
        assert_eq!(CohortRule::Size(4).to_string(), "size:4");
        assert_eq!(CohortRule::Fraction(0.25).to_string(), "fraction:0.25");
        assert_eq!(CohortRule::All.to_string(), "all");
    }
}
