//! The retry budget (PRODUCT §3.4): retries and failovers together may be at
//! most a fraction of recent traffic plus a small floor, so a provider incident
//! cannot turn every request into several.
//!
//! Every request [`deposits`](RetryBudget::deposit) once; every attempt beyond a
//! request's first (a same-target retry or a failover to another target) must
//! [`withdraw`](RetryBudget::try_withdraw) first. Over any window the budget
//! allows at most `ratio × requests + min_per_sec × window_secs` withdrawals.
//! The window slides in ten buckets; the floor is a reserve for the whole window,
//! so it can be spent in a burst (as tower's `TpsBudget` does).

use crate::clock::duration_ms;
use crate::config::RetryConfig;
use crate::sync::lock;
use std::sync::Mutex;
use std::time::Duration;

/// The window the budget remembers by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// `now_ms / bucket_ms` of the slice this bucket counts.
    epoch: u64,
    deposits: u64,
    withdrawals: u64,
}

/// A sliding-window retry budget. Cheap: one short lock, no allocation.
///
/// ```
/// use backstop::failover::budget::RetryBudget;
/// use std::time::Duration;
/// let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
/// for _ in 0..10 {
///     budget.deposit(0);
/// }
/// assert!(budget.try_withdraw(0));
/// assert!(budget.try_withdraw(0));
/// assert!(!budget.try_withdraw(0)); // 20 % of 10 requests
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Withdrawals always allowed per window (`min_per_sec × window`).
    reserve: f64,
    bucket_ms: u64,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

impl RetryBudget {
    /// `ratio`: retries allowed per request (0.2 = 20 %; NaN or negative = 0);
    /// `min_per_sec`: retries per second always allowed; `window`: how far back
    /// "recent" reaches (rounded to a multiple of ten milliseconds, at least 10 ms).
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        let bucket_ms = (duration_ms(window) / BUCKETS as u64).max(1);
        let window_secs = (bucket_ms * BUCKETS as u64) as f64 / 1000.0;
        RetryBudget {
            ratio,
            reserve: f64::from(min_per_sec) * window_secs,
            bucket_ms,
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    /// The budget of `retry.budget_ratio` and `retry.budget_min_per_sec` over [`DEFAULT_WINDOW`].
    pub fn from_config(retry: &RetryConfig) -> Self {
        Self::new(retry.budget_ratio, retry.budget_min_per_sec, DEFAULT_WINDOW)
    }

    /// Count one request (its first attempt). Call it for every request.
    pub fn deposit(&self, now_ms: u64) {
        self.with_current(now_ms, |b| b.deposits += 1);
    }

    /// Take one retry (or failover) from the budget; false when it is spent.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        let epoch = now_ms / self.bucket_ms;
        let mut buckets = self.lock();
        let (deposits, withdrawals) = live_totals(&buckets, epoch);
        if withdrawals as f64 + 1.0 > self.ratio * deposits as f64 + self.reserve {
            return false;
        }
        current(&mut buckets, epoch).withdrawals += 1;
        true
    }

    /// Withdrawals still allowed right now (for status and metrics).
    pub fn remaining(&self, now_ms: u64) -> u64 {
        let (deposits, withdrawals) = live_totals(&self.lock(), now_ms / self.bucket_ms);
        let allowed = (self.ratio * deposits as f64 + self.reserve).floor();
        (allowed - withdrawals as f64).max(0.0) as u64
    }

    fn with_current(&self, now_ms: u64, f: impl FnOnce(&mut Bucket)) {
        let mut buckets = self.lock();
        f(current(&mut buckets, now_ms / self.bucket_ms));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Bucket; BUCKETS]> {
        // The counters stay consistent even if a holder panicked: every update is one `+= 1`.
        lock(&self.buckets)
    }
}

/// The bucket for `epoch`, reset if it last counted an older (or, after the clock went back, newer) slice.
fn current(buckets: &mut [Bucket; BUCKETS], epoch: u64) -> &mut Bucket {
    let b = &mut buckets[(epoch % BUCKETS as u64) as usize];
    if b.epoch != epoch {
        *b = Bucket {
            epoch,
            ..Bucket::default()
        };
    }
    b
}

/// (deposits, withdrawals) over the buckets inside the window ending at `epoch`.
fn live_totals(buckets: &[Bucket; BUCKETS], epoch: u64) -> (u64, u64) {
    buckets
        .iter()
        .filter(|b| b.epoch <= epoch && epoch - b.epoch < BUCKETS as u64)
        .fold((0, 0), |(d, w), b| (d + b.deposits, w + b.withdrawals))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000;

    #[test]
    fn floor_alone_allows_min_per_sec_times_window() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        let allowed = (0..1_000).filter(|_| budget.try_withdraw(0)).count();
        assert_eq!(allowed, 100);
        assert_eq!(budget.remaining(0), 0);
    }

    #[test]
    fn ratio_alone_allows_a_fraction_of_requests() {
        let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        assert!(!budget.try_withdraw(0), "no traffic, no floor: no retries");
        for _ in 0..50 {
            budget.deposit(0);
        }
        assert_eq!(budget.remaining(0), 10);
        let allowed = (0..100).filter(|_| budget.try_withdraw(0)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn spent_budget_refills_as_the_window_slides() {
        let budget = RetryBudget::new(0.0, 1, Duration::from_secs(10));
        assert_eq!((0..20).filter(|_| budget.try_withdraw(0)).count(), 10);
        assert!(!budget.try_withdraw(9 * SEC + 999));
        // The bucket that holds the withdrawals leaves the window after 10 s.
        assert!(budget.try_withdraw(10 * SEC));
    }

    #[test]
    fn old_deposits_stop_counting() {
        let budget = RetryBudget::new(1.0, 0, Duration::from_secs(10));
        for _ in 0..5 {
            budget.deposit(0);
        }
        assert_eq!(budget.remaining(9 * SEC), 5);
        assert_eq!(budget.remaining(10 * SEC), 0);
        assert!(!budget.try_withdraw(10 * SEC));
    }

    #[test]
    fn clock_going_back_does_not_mint_budget() {
        let budget = RetryBudget::new(0.0, 1, Duration::from_secs(10));
        assert_eq!(
            (0..20).filter(|_| budget.try_withdraw(100 * SEC)).count(),
            10
        );
        // An earlier time sees none of the later buckets, so the floor is available again,
        // but only once: the stale slot is reset and then counted.
        assert_eq!(
            (0..20).filter(|_| budget.try_withdraw(95 * SEC)).count(),
            10
        );
    }

    #[test]
    fn bad_parameters_are_tamed() {
        let budget = RetryBudget::new(f64::NAN, 0, Duration::ZERO);
        budget.deposit(0);
        assert!(!budget.try_withdraw(0));
        let budget = RetryBudget::new(-1.0, 0, Duration::from_secs(1));
        budget.deposit(0);
        assert!(!budget.try_withdraw(0));
        let budget = RetryBudget::from_config(&RetryConfig::default());
        assert_eq!(budget.remaining(0), 100);
    }

    /// 100 requests a second for a minute, every attempt failing, each request trying up to
    /// three more attempts: the retries in any 10 s window never exceed 20 % of its 1 000
    /// requests plus the 100-retry floor, and steady state reaches that bound.
    #[test]
    fn a_failure_storm_is_held_to_ratio_plus_floor() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        let mut per_second = vec![0u64; 60];
        for (s, granted) in per_second.iter_mut().enumerate() {
            for r in 0..100u64 {
                let now = s as u64 * SEC + r * 10;
                budget.deposit(now);
                for _ in 0..3 {
                    if !budget.try_withdraw(now) {
                        break;
                    }
                    *granted += 1;
                }
            }
        }
        let bound = 0.2 * 1_000.0 + 10.0 * 10.0;
        for start in 0..=50 {
            let in_window: u64 = per_second[start..start + 10].iter().sum();
            assert!(
                in_window as f64 <= bound,
                "window at {start}s allowed {in_window}"
            );
            if start >= 10 {
                assert!(
                    in_window as f64 >= bound - 3.0,
                    "window at {start}s allowed only {in_window}"
                );
            }
        }
        let total: u64 = per_second.iter().sum();
        let requests = 6_000.0;
        assert!((total as f64) < 0.2 * requests + 10.0 * 60.0 + 100.0);
        assert!((total as f64) > 0.2 * requests + 10.0 * 60.0 - 100.0);
        // Three retries per request were asked for; a small fraction was granted.
        assert!(total < 18_000 / 5);
    }

    #[test]
    fn concurrent_withdrawals_never_overspend() {
        let budget = RetryBudget::new(0.0, 5, Duration::from_secs(10));
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if budget.try_withdraw(0) {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 50);
    }
}
