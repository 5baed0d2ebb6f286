//! The one backoff of the codebase: full-jitter exponential backoff between
//! attempts on the same target (PRODUCT §8 `retry.backoff_ms`).
//!
//! Full jitter (a uniform draw in `[0, ceiling]`) spreads the retries of many
//! clients that failed together, which plain or "equal" jitter does not.

use std::time::Duration;

/// The longest a single backoff may be, whatever the base and attempt.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before retry number `attempt` (0 = the first retry): uniform in
/// `[0, min(MAX_BACKOFF, base_ms × 2^attempt)]`.
///
/// ```
/// use backstop::failover::backoff::{backoff, MAX_BACKOFF};
/// let mut rng = fastrand::Rng::with_seed(7);
/// let d = backoff(1_000, 2, &mut rng);
/// assert!(d <= std::time::Duration::from_millis(4_000));
/// assert!(backoff(1_000, 40, &mut rng) <= MAX_BACKOFF);
/// ```
pub fn backoff(base_ms: u64, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
    Duration::from_millis(rng.u64(0..=ceiling_ms(base_ms, attempt)))
}

/// The upper bound of [`backoff`] for this attempt, in milliseconds.
pub fn ceiling_ms(base_ms: u64, attempt: u32) -> u64 {
    let cap = u64::try_from(MAX_BACKOFF.as_millis()).unwrap_or(u64::MAX);
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(ceiling_ms(1_000, 0), 1_000);
        assert_eq!(ceiling_ms(1_000, 1), 2_000);
        assert_eq!(ceiling_ms(1_000, 4), 16_000);
        assert_eq!(ceiling_ms(1_000, 5), 30_000);
        assert_eq!(ceiling_ms(1_000, 64), 30_000);
        assert_eq!(ceiling_ms(u64::MAX, 3), 30_000);
        assert_eq!(ceiling_ms(0, 10), 0);
    }

    #[test]
    fn draws_spread_over_the_whole_range() {
        let mut rng = fastrand::Rng::with_seed(1);
        let draws: Vec<u64> = (0..2_000)
            .map(|_| backoff(1_000, 0, &mut rng).as_millis() as u64)
            .collect();
        assert!(draws.iter().any(|&d| d < 100), "full jitter reaches near 0");
        assert!(draws.iter().any(|&d| d > 900), "and near the ceiling");
        assert!(draws.iter().all(|&d| d <= 1_000));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds(base in 0u64..100_000, attempt in 0u32..100, seed: u64) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let d = backoff(base, attempt, &mut rng);
            prop_assert!(d <= MAX_BACKOFF);
            prop_assert!(d.as_millis() as u64 <= ceiling_ms(base, attempt));
        }

        #[test]
        fn ceiling_is_monotone_in_attempt(base in 0u64..u64::MAX, attempt in 0u32..100) {
            prop_assert!(ceiling_ms(base, attempt) <= ceiling_ms(base, attempt + 1));
        }
    }
}
