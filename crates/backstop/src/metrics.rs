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
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram buckets in seconds: from 100 µs (gateway overhead) to 2 min (long generations).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Counter {
    values: Mutex<BTreeMap<Labels, u64>>,
}

impl Counter {
    fn inc(&self, labels: Labels) {
        let mut v = lock(&self.values);
        *v.entry(labels).or_insert(0) += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let v = lock(&self.values);
        for (labels, n) in v.iter() {
            let _ = writeln!(out, "{name}{} {n}", fmt_labels(labels, None));
        }
    }
}

#[derive(Debug, Default, Clone)]
struct HistogramData {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Histogram {
    values: Mutex<BTreeMap<Labels, HistogramData>>,
}

impl Histogram {
    fn observe(&self, labels: Labels, d: Duration) {
        let secs = d.as_secs_f64();
        let mut v = lock(&self.values);
        let h = v.entry(labels).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.counts[i] += 1;
        }
        h.sum += secs;
        h.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let v = lock(&self.values);
        for (labels, h) in v.iter() {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let le = format!("{b}");
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {cumulative}",
                    fmt_labels(labels, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{} {}",
                fmt_labels(labels, Some("+Inf")),
                h.count
            );
            let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
        }
    }
}

/// Escape a label value per the exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    if let Some(le) = le {
        if !labels.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "le=\"{le}\"");
    }
    s.push('}');
    s
}

/// Every metric Backstop keeps.
#[derive(Debug, Default)]
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

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self, ingress: &str, status: u16) {
        self.requests.inc(vec![
            ("ingress", ingress.to_string()),
            ("status", status.to_string()),
        ]);
    }

    pub fn attempt(&self, provider: &str, model: &str, outcome: &str, latency: Duration) {
        self.attempts.inc(vec![
            ("provider", provider.to_string()),
            ("model", model.to_string()),
            ("outcome", outcome.to_string()),
        ]);
        self.upstream_latency.observe(
            vec![
                ("provider", provider.to_string()),
                ("model", model.to_string()),
            ],
            latency,
        );
    }

    pub fn time_to_first_token(&self, provider: &str, model: &str, d: Duration) {
        self.ttft.observe(
            vec![
                ("provider", provider.to_string()),
                ("model", model.to_string()),
            ],
            d,
        );
    }

    pub fn failover(&self, from: &str, to: &str, reason: &str) {
        self.failovers.inc(vec![
            ("from", from.to_string()),
            ("to", to.to_string()),
            ("reason", reason.to_string()),
        ]);
    }

    pub fn overhead(&self, ingress: &str, d: Duration) {
        self.overhead
            .observe(vec![("ingress", ingress.to_string())], d);
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
                let labels: Labels = vec![
                    ("provider", b.provider.to_string()),
                    ("profile", b.profile.to_string()),
                    ("model", b.model.to_string()),
                    ("state", state.to_string()),
                ];
                let _ = writeln!(
                    out,
                    "backstop_breaker_state{} {}",
                    fmt_labels(&labels, None),
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
