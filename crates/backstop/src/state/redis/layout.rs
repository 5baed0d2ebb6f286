//! How state is laid out in Redis: key names, a breaker's hash, the ladder handed
//! to the failure script, and the URL as logs may show it.

use super::{BreakerSnapshot, Penalty, Scope};
use crate::clock::duration_ms;
use crate::failover::Reason;
use crate::failover::breaker::BreakerState;

/// Key names under the prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn breaker(&self, scope: &Scope) -> String {
        format!("{}breaker:{scope}", self.prefix)
    }
    pub(super) fn probe(&self, scope: &Scope) -> String {
        format!("{}probe:{scope}", self.prefix)
    }
    pub(super) fn closed(&self, scope: &Scope) -> String {
        format!("{}closed:{scope}", self.prefix)
    }
    pub(super) fn cleared(&self) -> String {
        format!("{}cleared", self.prefix)
    }
    pub(super) fn used(&self) -> String {
        format!("{}used", self.prefix)
    }
    pub(super) fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
    pub(super) fn instance(&self, id: &str) -> String {
        format!("{}instance:{id}", self.prefix)
    }
    /// The scope of a `breaker:` key.
    pub(super) fn scope_of(&self, key: &str) -> Option<Scope> {
        key.strip_prefix(&self.prefix)?
            .strip_prefix("breaker:")?
            .parse()
            .ok()
    }
}

/// The cooldown of every rung of `penalty`'s ladder, up to where it stops growing (the
/// last one applies to every higher rung), so Redis can climb the same ladder.
pub(super) fn rungs(penalty: &Penalty) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for n in 1..=64 {
        let ms = duration_ms(penalty.cooldown(n));
        if out.last() == Some(&ms) {
            break;
        }
        out.push(ms);
    }
    out
}

/// A breaker from its Redis hash (`HGETALL` as field, value pairs); `None` when empty.
pub(super) fn parse_breaker(fields: &[String], now_ms: u64) -> Option<BreakerSnapshot> {
    let mut snap = BreakerSnapshot::default();
    let mut any = false;
    for pair in fields.chunks_exact(2) {
        let (field, value) = (pair[0].as_str(), pair[1].as_str());
        any = true;
        match field {
            "until" => snap.until_ms = value.parse().ok(),
            "reason" => snap.reason = parse_reason(value),
            "consecutive" => snap.consecutive = value.parse().unwrap_or(0),
            "errors" => snap.error_count = value.parse().unwrap_or(0),
            "last_failure" => snap.last_failure_ms = value.parse().ok(),
            _ => {
                if let (Some(reason), Ok(n)) = (
                    field.strip_prefix("c:").and_then(parse_reason),
                    value.parse::<u32>(),
                ) {
                    snap.failure_counts.insert(reason, n);
                }
            }
        }
    }
    if !any {
        return None;
    }
    snap.state = match snap.until_ms {
        None => BreakerState::Closed,
        Some(until) if now_ms < until => BreakerState::Open,
        Some(_) => BreakerState::HalfOpen,
    };
    Some(snap)
}

fn parse_reason(s: &str) -> Option<Reason> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

/// `url` with any password replaced by `****` (`redis://:****@host:6379`).
///
/// ```
/// use backstop::state::redis::redact_url;
/// assert_eq!(redact_url("redis://:hunter2@cache:6379/0"), "redis://:****@cache:6379/0");
/// assert_eq!(redact_url("redis://app:hunter2@cache"), "redis://app:****@cache");
/// assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        // A lone userinfo may be a password (`redis://secret@host`): mask it all.
        None => "****".to_owned(),
    };
    format!("{scheme}://{user}{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ladder;
    use crate::failover::breaker::Breaker;
    use std::time::Duration;

    fn penalty(retry_after: Option<Duration>) -> Penalty {
        Penalty {
            reason: Reason::RateLimit,
            ladder: Ladder {
                base_ms: 30_000,
                cap_ms: 300_000,
            },
            retry_after,
            max_retry_after: Duration::from_secs(3_600),
            jitter: 0.0,
            failure_window_ms: 86_400_000,
            probe_interval_ms: 0,
        }
    }

    #[test]
    fn rungs_climb_to_the_cap_then_stop() {
        assert_eq!(
            rungs(&penalty(None)),
            [30_000, 60_000, 120_000, 240_000, 300_000]
        );
        assert_eq!(rungs(&penalty(Some(Duration::from_secs(7)))), [7_000]);
    }

    #[test]
    fn breaker_hashes_parse_back() {
        let mut b = Breaker::default();
        b.on_failure(&penalty(None), 1_000);
        let snap = b.snapshot(2_000);
        let fields: Vec<String> = [
            ("until", "31000"),
            ("reason", "rate_limit"),
            ("consecutive", "1"),
            ("errors", "1"),
            ("last_failure", "1000"),
            ("c:rate_limit", "1"),
            ("c:nonsense", "4"),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect();
        assert_eq!(parse_breaker(&fields, 2_000), Some(snap));
        assert_eq!(parse_breaker(&[], 2_000), None);
        let half = parse_breaker(&fields, 31_000).map(|s| s.state);
        assert_eq!(half, Some(BreakerState::HalfOpen));
    }

    #[test]
    fn keys_round_trip_scopes() {
        let keys = Keys {
            prefix: "backstop:".into(),
        };
        let scope = Scope::profile_model("ollama", "local", "llama3:8b");
        let key = keys.breaker(&scope);
        assert_eq!(key, "backstop:breaker:ollama:local/llama3:8b");
        assert_eq!(keys.scope_of(&key), Some(scope));
        assert_eq!(keys.scope_of("backstop:probe:openai:work"), None);
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact_url("redis://secret@h:1"), "redis://****@h:1");
        assert_eq!(
            redact_url("rediss://u:p@ss@h/2?x=1"),
            "rediss://u:****@h/2?x=1"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
