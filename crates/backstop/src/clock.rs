//! The one source of wall-clock time for breakers, budgets and state.
//!
//! Everything that decides by time (cooldowns, probe leases, the retry budget,
//! least-recently-used profile order) reads it through a [`Clock`], so tests run
//! on a [`ManualClock`] and never sleep. Times are epoch milliseconds because
//! that is what `auth-state.json` stores and what several gateway instances can
//! share through Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The real wall clock.
///
/// ```
/// use backstop::clock::{Clock, SystemClock};
/// assert!(SystemClock.now_ms() > 1_600_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken host; 0 keeps every cooldown in the future.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(duration_ms)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to, for tests.
///
/// ```
/// use backstop::clock::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now_ms: AtomicU64::new(start_ms),
        }
    }

    /// Jump to `now_ms` (backwards too, to test clock skew).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Move forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = duration_ms(by);
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now_ms(), 5);
        clock.advance(Duration::from_millis(10));
        assert_eq!(clock.now_ms(), 15);
        clock.set(3);
        assert_eq!(clock.now_ms(), 3);
        clock.set(u64::MAX - 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    #[test]
    fn clocks_are_usable_as_trait_objects() {
        let clocks: Vec<Arc<dyn Clock>> =
            vec![Arc::new(SystemClock), Arc::new(ManualClock::new(7))];
        assert!(clocks[0].now_ms() > 1_600_000_000_000);
        assert_eq!(clocks[1].now_ms(), 7);
    }

    #[test]
    fn duration_ms_saturates() {
        assert_eq!(duration_ms(Duration::from_millis(1_500)), 1_500);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }
}
