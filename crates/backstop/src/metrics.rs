//! Prometheus metrics (text exposition format 0.0.4), PRODUCT §8:
//!
//! - `backstop_requests_total{ingress,status}`
//! - `backstop_attempts_total{provider,model,outcome}` (outcome = `ok` or a reason)
//! - `backstop_failovers_total{from,to,reason}`
//! - `backstop_breaker_state{provider,profile,model,state}` (1 for the current state; written at scrape time)
//! - histograms `backstop_upstream_latency_seconds{provider,model}`,
//!   `backstop_time_to_first_token_seconds{provider,model}`, `backstop_overhead_seconds{ingress}`
//!
//! Labels are low-cardinality by construction: formats, providers, models, profiles,
//! reasons, statuses — never a request id or a key. A small hand-written registry:
//! one mutex per family, held for a map update only.

use crate::sync::lock;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram buckets in seconds: from 100 µs (gateway overhead) to 2 min (long generations).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// One family's series, sorted by their label values (in the family's label order). A
/// lookup borrows the caller's strings: only a series seen for the first time allocates.
#[derive(Debug)]
struct Series<V> {
    names: &'static [&'static str],
    rows: Mutex<Vec<(Box<[String]>, V)>>,
}

impl<V: Default> Series<V> {
    const fn new(names: &'static [&'static str]) -> Self {
        Self {
            names,
            rows: Mutex::new(Vec::new()),
        }
    }

    fn update(&self, values: &[&str], f: impl FnOnce(&mut V)) {
        let mut rows = lock(&self.rows);
        let found = rows.binary_search_by(|(key, _)| {
            key.iter().map(String::as_str).cmp(values.iter().copied())
        });
        let i = found.unwrap_or_else(|i| {
            let key = values.iter().map(|v| (*v).to_owned()).collect();
            rows.insert(i, (key, V::default()));
            i
        });
        f(&mut rows[i].1);
    }

    fn labels(&self, values: &[String], le: Option<&str>) -> String {
        fmt_labels(
            self.names
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str)),
            le,
        )
    }
}

type Counter = Series<u64>;

impl Counter {
    fn inc(&self, values: &[&str]) {
        self.update(values, |n| *n += 1);
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let rows = lock(&self.rows);
        for (values, n) in rows.iter() {
            let _ = writeln!(out, "{name}{} {n}", self.labels(values, None));
        }
    }
}

#[derive(Debug, Default, Clone)]
struct HistogramData {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

type Histogram = Series<HistogramData>;

impl Histogram {
    fn observe(&self, values: &[&str], d: Duration) {
        let secs = d.as_secs_f64();
        self.update(values, |h| {
            if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
                h.counts[i] += 1;
            }
            h.sum += secs;
            h.count += 1;
        });
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let rows = lock(&self.rows);
        for (values, h) in rows.iter() {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let le = format!("{b}");
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    self.labels(values, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                self.labels(values, Some("+Inf")),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", self.labels(values, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", self.labels(values, None), h.count);
        }
    }
}

/// Escape a label value per the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_labels<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    le: Option<&str>,
) -> String {
    let mut s = String::from("{");
    for (k, v) in labels {
        if s.len() > 1 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    if let Some(le) = le {
        if s.len() > 1 {
            s.push(',');
        }
        let _ = write!(s, "le=\"{le}\"");
    }
    if s.len() == 1 {
        return String::new();
    }
    s.push('}');
    s
}

/// Every metric Backstop keeps.
#[derive(Debug)]
pub struct Metrics {
    requests: Counter,
    attempts: Counter,
    failovers: Counter,
    upstream_latency: Histogram,
    ttft: Histogram,
    overhead: Histogram,
}

/// One breaker's state for the `backstop_breaker_state` gauge.
pub struct BreakerGauge<'a> {
    pub provider: &'a str,
    pub profile: &'a str,
    pub model: &'a str,
    pub state: &'a str,
}

/// The states `backstop_breaker_state` reports, one series each (1 for the current one).
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        const PROVIDER_MODEL: &[&str] = &["provider", "model"];
        Self {
            requests: Counter::new(&["ingress", "status"]),
            attempts: Counter::new(&["provider", "model", "outcome"]),
            failovers: Counter::new(&["from", "to", "reason"]),
            upstream_latency: Histogram::new(PROVIDER_MODEL),
            ttft: Histogram::new(PROVIDER_MODEL),
            overhead: Histogram::new(&["ingress"]),
        }
    }

    pub fn request(&self, ingress: &str, status: u16) {
        // Every status a response can carry has its text ready; anything else is formatted.
        match http::StatusCode::from_u16(status) {
            Ok(code) => self.requests.inc(&[ingress, code.as_str()]),
            Err(_) => self.requests.inc(&[ingress, &status.to_string()]),
        }
    }

    pub fn attempt(&self, provider: &str, model: &str, outcome: &str, latency: Duration) {
        self.attempts.inc(&[provider, model, outcome]);
        self.upstream_latency.observe(&[provider, model], latency);
    }

    pub fn time_to_first_token(&self, provider: &str, model: &str, d: Duration) {
        self.ttft.observe(&[provider, model], d);
    }

    pub fn failover(&self, from: &str, to: &str, reason: &str) {
        self.failovers.inc(&[from, to, reason]);
    }

    pub fn overhead(&self, ingress: &str, d: Duration) {
        self.overhead.observe(&[ingress], d);
    }

    /// The exposition text, with breaker gauges computed by the caller at scrape time.
    pub fn render(&self, breakers: &[BreakerGauge<'_>]) -> String {
        let mut out = String::with_capacity(8192);
        self.requests.write(
            &mut out,
            "backstop_requests_total",
            "Client requests by ingress format and status.",
        );
        self.attempts.write(
            &mut out,
            "backstop_attempts_total",
            "Upstream attempts by provider, model and outcome (ok or a failure reason).",
        );
        self.failovers.write(
            &mut out,
            "backstop_failovers_total",
            "Answers served by a model other than the chain's first, by from, to and reason.",
        );
        let _ = writeln!(
            out,
            "# HELP backstop_breaker_state Cooldown breaker state per provider, profile and model (1 = current).\n# TYPE backstop_breaker_state gauge"
        );
        for b in breakers {
            for state in BREAKER_STATES {
                let labels = [
                    ("provider", b.provider),
                    ("profile", b.profile),
                    ("model", b.model),
                    ("state", state),
                ];
                let _ = writeln!(
                    out,
                    "backstop_breaker_state{} {}",
                    fmt_labels(labels, None),
                    u8::from(state == b.state)
                );
            }
        }
        self.upstream_latency.write(
            &mut out,
            "backstop_upstream_latency_seconds",
            "Upstream attempt latency (to the full answer, or to the commit point of a stream).",
        );
        self.ttft.write(
            &mut out,
            "backstop_time_to_first_token_seconds",
            "Time to the first content of a streamed answer.",
        );
        self.overhead.write(
            &mut out,
            "backstop_overhead_seconds",
            "Time spent in the gateway itself (request time minus upstream time).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_counted_apart_and_listed_in_label_order() {
        let m = Metrics::new();
        for (p, model, outcome) in [
            ("b", "m", "ok"),
            ("a", "z", "ok"),
            ("a", "m", "timeout"),
            ("b", "m", "ok"),
            ("a", "m", "ok"),
            ("a", "m", "timeout"),
        ] {
            m.attempt(p, model, outcome, Duration::from_millis(1));
        }
        m.request("anthropic", 529);
        m.request("anthropic", 99);
        let text = m.render(&[]);
        let attempts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("backstop_attempts_total{"))
            .collect();
        assert_eq!(
            attempts,
            [
                "backstop_attempts_total{provider=\"a\",model=\"m\",outcome=\"ok\"} 1",
                "backstop_attempts_total{provider=\"a\",model=\"m\",outcome=\"timeout\"} 2",
                "backstop_attempts_total{provider=\"a\",model=\"z\",outcome=\"ok\"} 1",
                "backstop_attempts_total{provider=\"b\",model=\"m\",outcome=\"ok\"} 2",
            ]
        );
        assert!(
            text.contains(
                "backstop_upstream_latency_seconds_count{provider=\"a\",model=\"m\"} 3\n"
            )
        );
        assert!(text.contains("backstop_requests_total{ingress=\"anthropic\",status=\"529\"} 1\n"));
        assert!(text.contains("backstop_requests_total{ingress=\"anthropic\",status=\"99\"} 1\n"));
    }

    #[test]
    fn exposition_format() {
        let m = Metrics::new();
        m.request("openai", 200);
        m.request("openai", 200);
        m.attempt("an", "claude\"x", "rate_limit", Duration::from_millis(3));
        m.failover("an/claude", "oa/gpt-4o", "rate_limit");
        let text = m.render(&[BreakerGauge {
            provider: "an",
            profile: "main",
            model: "claude",
            state: "open",
        }]);
        assert!(text.contains("backstop_requests_total{ingress=\"openai\",status=\"200\"} 2\n"));
        assert!(text.contains(
            "backstop_attempts_total{provider=\"an\",model=\"claude\\\"x\",outcome=\"rate_limit\"} 1\n"
        ));
        assert!(text.contains(
            "backstop_failovers_total{from=\"an/claude\",to=\"oa/gpt-4o\",reason=\"rate_limit\"} 1\n"
        ));
        assert!(text.contains(
            "backstop_breaker_state{provider=\"an\",profile=\"main\",model=\"claude\",state=\"open\"} 1\n"
        ));
        assert!(text.contains(
            "backstop_breaker_state{provider=\"an\",profile=\"main\",model=\"claude\",state=\"closed\"} 0\n"
        ));
        assert!(text.contains("backstop_upstream_latency_seconds_bucket{provider=\"an\",model=\"claude\\\"x\",le=\"0.005\"} 1\n"));
        assert!(text.contains("backstop_upstream_latency_seconds_bucket{provider=\"an\",model=\"claude\\\"x\",le=\"0.0025\"} 0\n"));
        assert!(text.contains(
            "backstop_upstream_latency_seconds_count{provider=\"an\",model=\"claude\\\"x\"} 1\n"
        ));
        assert!(text.contains("# TYPE backstop_time_to_first_token_seconds histogram"));
    }
}
