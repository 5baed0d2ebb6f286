//! The one-line live progress on a terminal (nothing at all when stdout is not one).

use super::drive::Counters;
use super::scenario::fmt_clock;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the line is redrawn, in real time.
const EVERY: Duration = Duration::from_millis(80);

pub struct Progress {
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            last: None,
        }
    }

    /// Redraw, at most every [`EVERY`] of real time.
    pub fn tick(&mut self, sim_ms: u64, total_ms: u64, issued: u64, counters: &Counters) {
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let done = counters.done.load(Ordering::Relaxed);
        let ok = counters.ok.load(Ordering::Relaxed);
        let line = line(sim_ms, total_ms, issued, done, ok);
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
    }

    /// Clear the line before the report.
    pub fn finish(&mut self) {
        if self.enabled {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}

fn line(sim_ms: u64, total_ms: u64, issued: u64, done: u64, ok: u64) -> String {
    let availability = if done == 0 {
        "—".to_string()
    } else {
        format!("{:.1} %", 100.0 * ok as f64 / done as f64)
    };
    format!(
        "simulating {} / {} · {issued} requests sent, {done} done · availability {availability}",
        fmt_clock(sim_ms),
        fmt_clock(total_ms)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_line_says_where_the_run_is() {
        assert_eq!(
            super::line(1_380_000, 3_600_000, 139, 137, 137),
            "simulating 23:00 / 1:00:00 · 139 requests sent, 137 done · availability 100.0 %"
        );
        assert!(super::line(0, 1, 0, 0, 0).ends_with("availability —"));
    }
}
