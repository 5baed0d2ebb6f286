//! Simulated time: a single-threaded tokio runtime on a paused clock that jumps
//! from one timer to the next, and a [`Clock`] that reads that same clock.
//!
//! # Why paused tokio time
//!
//! Everything in the engine that waits — connect, time-to-first-token and idle
//! timeouts, the request deadline, backoff sleeps, `Retry-After` waits — waits on
//! tokio timers, and so do the fake providers' latencies (`first_token_delay_ms`,
//! `chunk_delay_ms`). On a paused clock all of them are virtual: when nothing is
//! runnable, tokio moves the clock straight to the next timer. A 15-second first
//! token timeout, a 5-second backoff or an hour of request arrivals cost no real
//! time, and the engine's real timeouts are applied to the simulated latencies
//! exactly, in the right order, every run the same.
//!
//! # The catch, and how it is handled
//!
//! Tokio auto-advances the clock whenever the runtime parks with nothing to do,
//! and here real loopback I/O (an HTTP exchange with a fake) is in flight. The
//! park first polls I/O without blocking, and in tokio 1.54 a task that this poll
//! wakes (its data is already in the kernel) marks the time driver woken, which
//! cancels the jump (`unpark_self` in the current-thread scheduler); loopback TCP
//! delivers data before `send` returns, so an answer on its way is read before a
//! timeout can fire (the `loopback_io_is_not_overtaken_by_timers` test holds this).
//! As a margin against delivery that lags a little (network soft interrupts
//! deferred on a loaded host), an `on_thread_park` hook vetoes [`VETOES`] parks
//! in a row — each becomes one more zero-timeout I/O poll, with no clock change —
//! before one park may move the clock. That costs microseconds per timer event.
//!
//! Cooldowns, the retry budget and health read time through the engine's
//! [`Clock`]; [`SimClock`] maps the paused tokio clock onto epoch milliseconds, so
//! a cooldown and a backoff see the same time.

use backstop::clock::Clock;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// Parks vetoed in a row before the clock may jump to the next timer.
pub const VETOES: u32 = 8;

/// The epoch-ms value of simulated time zero: 2026-01-01T00:00:00Z.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// Shared between the park hook and the dummy task.
#[derive(Default)]
struct Veto {
    waker: Mutex<Option<Waker>>,
    in_a_row: AtomicU32,
}

impl Veto {
    fn on_park(&self) {
        if self.in_a_row.fetch_add(1, Ordering::Relaxed) < VETOES {
            let waker = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(w) = waker {
                w.wake();
            }
        } else {
            self.in_a_row.store(0, Ordering::Relaxed);
        }
    }
}

/// A task that does nothing but be woken by the park hook.
struct Dummy(Arc<Veto>);

impl Future for Dummy {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.0.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A runtime on simulated time.
pub struct SimRuntime {
    runtime: tokio::runtime::Runtime,
    veto: Arc<Veto>,
}

impl SimRuntime {
    pub fn new() -> std::io::Result<Self> {
        let veto = Arc::new(Veto::default());
        let hook = veto.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .on_thread_park(move || hook.on_park())
            .build()?;
        Ok(SimRuntime { runtime, veto })
    }

    /// Run `future` to completion on simulated time.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let veto = self.veto.clone();
        self.runtime.block_on(async move {
            let dummy = tokio::spawn(Dummy(veto));
            let out = future.await;
            dummy.abort();
            out
        })
    }
}

/// The engine's clock on simulated time: [`SIM_EPOCH_MS`] at the simulation's start,
/// moving with the paused tokio clock. Read it only inside the [`SimRuntime`].
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start: Instant,
}

impl SimClock {
    /// Simulated time zero is now.
    pub fn start() -> Self {
        SimClock {
            start: Instant::now(),
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// Simulated milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        backstop::clock::duration_ms(self.elapsed())
    }

    /// The tokio instant at `ms` simulated milliseconds after the start.
    pub fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        SIM_EPOCH_MS + self.elapsed_ms()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn an_hour_of_timers_takes_no_real_time() {
        let rt = SimRuntime::new().unwrap();
        let real = std::time::Instant::now();
        let (sim, clock_ms) = rt.block_on(async {
            let clock = SimClock::start();
            for _ in 0..360 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            (clock.elapsed(), clock.now_ms())
        });
        assert_eq!(sim, Duration::from_secs(3600));
        assert_eq!(clock_ms, SIM_EPOCH_MS + 3_600_000);
        assert!(
            real.elapsed() < Duration::from_secs(2),
            "{:?}",
            real.elapsed()
        );
    }

    /// Loopback I/O in flight must not let a pending timeout fire: a ping-pong over
    /// TCP under a 1-second timeout finishes in (almost) no simulated time.
    #[test]
    fn loopback_io_is_not_overtaken_by_timers() {
        let rt = SimRuntime::new().unwrap();
        let took = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
            // In a task of its own, as simulated requests are: a wake-up of the
            // `block_on` future itself would stop the clock anyway.
            tokio::spawn(async move {
                let clock = SimClock::start();
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                for i in 0..200u8 {
                    let echoed = tokio::time::timeout(Duration::from_secs(1), async {
                        c.write_all(&[i]).await.unwrap();
                        let mut b = [0u8; 1];
                        c.read_exact(&mut b).await.unwrap();
                        b[0]
                    })
                    .await
                    .expect("a timeout fired while loopback I/O was in flight");
                    assert_eq!(echoed, i);
                }
                clock.elapsed()
            })
            .await
            .unwrap()
        });
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
}
