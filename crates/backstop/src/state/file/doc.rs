//! `auth-state.json` as a document: read leniently, rewritten in place.
//!
//! The file keeps the shape OpenClaw users know and adds one section of its own:
//!
//! ```json
//! {
//!   "version": 1,
//!   "order": { "openai": ["work", "home"] },
//!   "lastGood": { "openai": "work" },
//!   "usageStats": {
//!     "openai:work": {
//!       "lastUsed": 1736160000000,
//!       "cooldownUntil": 1736160600000, "cooldownReason": "rate_limit", "cooldownModel": "gpt-4o",
//!       "errorCount": 2, "failureCounts": { "rate_limit": 2 }, "lastFailureAt": 1736160000000
//!     },
//!     "openai:home": { "disabledUntil": 1736178000000, "disabledReason": "billing" }
//!   },
//!   "backstop": {
//!     "scopes": {
//!       "openai:work/gpt-4o": { "state": "open", "reason": "rate_limit", "until_ms": 1736160600000,
//!         "consecutive": 1, "error_count": 2, "failure_counts": { "rate_limit": 2 },
//!         "last_failure_ms": 1736160000000, "changed_at": 1736160000000 }
//!     }
//!   }
//! }
//! ```
//!
//! `backstop.scopes` holds every breaker exactly (several model scopes per profile,
//! provider × model scopes, the ladder rung) and is authoritative when present; the
//! `usageStats` fields are derived from it on every write. A file without it (written by
//! OpenClaw) is understood from the `usageStats` fields. Every field is read on its own:
//! a wrong type is a warning naming its key path, and the rest is still read. Fields this
//! version does not know are kept on rewrite.

use super::merge::Record;
use crate::failover::Reason;
use crate::state::{BreakerSnapshot, BreakerState, Scope};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The version this code writes.
pub const VERSION: u64 = 1;

/// `usageStats` fields derived from the breakers (cleared and rewritten on every write).
const DERIVED: [&str; 9] = [
    "lastUsed",
    "cooldownUntil",
    "cooldownReason",
    "cooldownModel",
    "disabledUntil",
    "disabledReason",
    "errorCount",
    "failureCounts",
    "lastFailureAt",
];

/// Fields of a `backstop.scopes` record this version understands.
const RECORD_FIELDS: [&str; 9] = [
    "state",
    "reason",
    "until_ms",
    "consecutive",
    "error_count",
    "failure_counts",
    "last_failure_ms",
    "changed_at",
    "reset_at",
];

/// `(provider, profile)` → epoch ms of its last use.
pub type Usage = BTreeMap<(String, String), u64>;

/// What a file said, as far as it was valid.
#[derive(Debug, Clone, Default)]
pub struct Doc {
    /// The whole document as read, unknown fields included.
    pub raw: Map<String, Value>,
    pub scopes: BTreeMap<Scope, Record>,
    pub usage: Usage,
    /// One line per field that could not be read, naming its key path.
    pub warnings: Vec<String>,
}

/// Parse a file's text. `Err` only when it is not a JSON object at all (a corrupt file);
/// anything else is read as far as it is valid.
pub fn parse(text: &str) -> Result<Doc, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(raw) = value else {
        return Err("the top level is not a JSON object".into());
    };
    let mut r = Reader::default();
    match raw.get("version") {
        None => {}
        Some(v) => match v.as_u64() {
            Some(n) if n > VERSION => r.warn(
                "version",
                format!(
                    "{n} is newer than this Backstop understands ({VERSION}); reading what it knows"
                ),
            ),
            Some(_) => {}
            None => r.warn("version", "expected a number"),
        },
    }
    let mut doc = Doc::default();
    let usage_stats = r.object(raw.get("usageStats"), "usageStats");
    let scopes = raw
        .get("backstop")
        .and_then(|b| r.object(Some(b), "backstop"))
        .and_then(|b| r.object(b.get("scopes"), "backstop.scopes"));
    if let Some(stats) = usage_stats {
        for (key, entry) in stats {
            let path = format!("usageStats[{key:?}]");
            let Some((provider, profile)) = split_profile(key) else {
                r.warn(&path, "expected a \"provider:profile\" key");
                continue;
            };
            let Some(entry) = r.object(Some(entry), &path) else {
                continue;
            };
            if let Some(t) = r.u64(entry, "lastUsed", &path) {
                doc.usage.insert((provider.into(), profile.into()), t);
            }
            if scopes.is_none() {
                rebuild_from_usage(&mut r, &mut doc.scopes, provider, profile, entry, &path);
            }
        }
    }
    if let Some(scopes) = scopes {
        for (key, rec) in scopes {
            let path = format!("backstop.scopes[{key:?}]");
            let scope: Scope = match key.parse() {
                Ok(s) => s,
                Err(e) => {
                    r.warn(&path, e);
                    continue;
                }
            };
            let Some(rec) = r.object(Some(rec), &path) else {
                continue;
            };
            doc.scopes.insert(scope, read_record(&mut r, rec, &path));
        }
    }
    doc.warnings = r.warnings;
    doc.raw = raw;
    Ok(doc)
}

fn split_profile(key: &str) -> Option<(&str, &str)> {
    let (provider, profile) = key.split_once(':')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/') && !s.contains(':');
    (ok(provider) && ok(profile)).then_some((provider, profile))
}

/// Breakers from OpenClaw's fields: `disabledUntil` → the whole profile (billing unless
/// said otherwise); `cooldownUntil` → the profile × `cooldownModel` when one is named,
/// else the whole profile; the counters go to the first of them (or to the profile).
fn rebuild_from_usage(
    r: &mut Reader,
    out: &mut BTreeMap<Scope, Record>,
    provider: &str,
    profile: &str,
    entry: &Map<String, Value>,
    path: &str,
) {
    let error_count = r.u32(entry, "errorCount", path).unwrap_or(0);
    let had_errors = error_count > 0;
    let failure_counts = r.counts(entry.get("failureCounts"), &format!("{path}.failureCounts"));
    let last_failure_ms = r.u64(entry, "lastFailureAt", path);
    let changed_at = last_failure_ms.unwrap_or(0);
    let mut counters = Some((error_count, failure_counts, last_failure_ms));
    type Counters = Option<(u32, BTreeMap<Reason, u32>, Option<u64>)>;
    let add = |out: &mut BTreeMap<Scope, Record>,
               counters: &mut Counters,
               scope: Scope,
               reason: Reason,
               until: Option<u64>| {
        let (error_count, failure_counts, last_failure_ms) = counters.take().unwrap_or_default();
        let snap = BreakerSnapshot {
            state: BreakerState::Closed,
            reason: until.map(|_| reason),
            until_ms: until,
            consecutive: u32::from(until.is_some()),
            error_count,
            failure_counts,
            last_failure_ms,
            probe_until_ms: None,
        };
        out.insert(scope, Record::new(Some(snap), changed_at));
    };
    if let Some(until) = r.u64(entry, "disabledUntil", path) {
        let reason = r
            .reason(entry, "disabledReason", path)
            .unwrap_or(Reason::Billing);
        add(
            out,
            &mut counters,
            Scope::profile(provider, profile),
            reason,
            Some(until),
        );
    }
    if let Some(until) = r.u64(entry, "cooldownUntil", path) {
        let reason = r
            .reason(entry, "cooldownReason", path)
            .unwrap_or(Reason::RateLimit);
        let scope = match r.string(entry, "cooldownModel", path) {
            Some(model) if !model.is_empty() => Scope::profile_model(provider, profile, model),
            _ => Scope::profile(provider, profile),
        };
        // A profile both disabled and cooling down keeps the longer window.
        let longer = out
            .get(&scope)
            .and_then(|rec| rec.breaker.as_ref())
            .and_then(|b| b.until_ms)
            .is_none_or(|old| until > old);
        if longer {
            add(out, &mut counters, scope, reason, Some(until));
        }
    }
    if had_errors && counters.is_some() {
        // Counters with no cooldown of their own (unless a cooldown already took them).
        add(
            out,
            &mut counters,
            Scope::profile(provider, profile),
            Reason::Unknown,
            None,
        );
    }
}

fn read_record(r: &mut Reader, rec: &Map<String, Value>, path: &str) -> Record {
    let reason = r.reason(rec, "reason", path);
    let snap = BreakerSnapshot {
        state: BreakerState::Closed,
        reason,
        until_ms: r.u64(rec, "until_ms", path),
        consecutive: r.u32(rec, "consecutive", path).unwrap_or(0),
        error_count: r.u32(rec, "error_count", path).unwrap_or(0),
        failure_counts: r.counts(rec.get("failure_counts"), &format!("{path}.failure_counts")),
        last_failure_ms: r.u64(rec, "last_failure_ms", path),
        probe_until_ms: None,
    };
    let mut out = Record::new(
        Some(snap).filter(|s| !is_pristine(s)),
        r.u64(rec, "changed_at", path).unwrap_or(0),
    );
    out.reset_at = r.u64(rec, "reset_at", path);
    out.extra = rec
        .iter()
        .filter(|(k, _)| !RECORD_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out
}

/// Closed with no counters: nothing worth keeping.
pub fn is_pristine(s: &BreakerSnapshot) -> bool {
    s.until_ms.is_none()
        && s.error_count == 0
        && s.consecutive == 0
        && s.failure_counts.is_empty()
        && s.last_failure_ms.is_none()
}

/// Reads typed fields, collecting a warning per wrong one.
#[derive(Default)]
struct Reader {
    warnings: Vec<String>,
}

impl Reader {
    fn warn(&mut self, path: &str, why: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {why}"));
    }

    fn object<'a>(&mut self, v: Option<&'a Value>, path: &str) -> Option<&'a Map<String, Value>> {
        match v? {
            Value::Object(m) => Some(m),
            Value::Null => None,
            _ => {
                self.warn(path, "expected an object");
                None
            }
        }
    }

    fn u64(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<u64> {
        match m.get(key)? {
            Value::Null => None,
            v => match v.as_u64().or_else(|| {
                // JavaScript may write 1.7e12: accept whole, non-negative floats.
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                    .map(|f| f as u64)
            }) {
                Some(n) => Some(n),
                None => {
                    self.warn(&format!("{path}.{key}"), "expected a number");
                    None
                }
            },
        }
    }

    fn u32(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<u32> {
        self.u64(m, key, path)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn string<'a>(&mut self, m: &'a Map<String, Value>, key: &str, path: &str) -> Option<&'a str> {
        match m.get(key)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            _ => {
                self.warn(&format!("{path}.{key}"), "expected a string");
                None
            }
        }
    }

    fn reason(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<Reason> {
        let s = self.string(m, key, path)?;
        match parse_reason(s) {
            Some(r) => Some(r),
            None => {
                self.warn(&format!("{path}.{key}"), format!("unknown reason {s:?}"));
                None
            }
        }
    }

    fn counts(&mut self, v: Option<&Value>, path: &str) -> BTreeMap<Reason, u32> {
        let mut out = BTreeMap::new();
        let Some(m) = self.object(v, path) else {
            return out;
        };
        for (k, _) in m {
            let kpath = format!("{path}[{k:?}]");
            let Some(reason) = parse_reason(k) else {
                self.warn(&kpath, "unknown reason");
                continue;
            };
            let Some(n) = self.u32(m, k, path) else {
                continue;
            };
            if n > 0 {
                out.insert(reason, n);
            }
        }
        out
    }
}

fn parse_reason(s: &str) -> Option<Reason> {
    serde_json::from_value(Value::String(s.to_owned())).ok()
}

/// The document to write: `base` (the file as last read, unknown fields kept) with the
/// known parts replaced by `scopes` and `usage`.
pub fn render(
    base: &Map<String, Value>,
    scopes: &BTreeMap<Scope, Record>,
    usage: &Usage,
    now_ms: u64,
) -> Map<String, Value> {
    let mut doc = Map::new();
    // Known sections first in a fresh file; an existing file keeps its key order.
    let version = base
        .get("version")
        .and_then(Value::as_u64)
        .filter(|v| *v > VERSION)
        .unwrap_or(VERSION);
    doc.insert("version".into(), json!(version));
    for (k, v) in base {
        if k != "version" {
            doc.insert(k.clone(), v.clone());
        }
    }

    // lastGood: per provider, the profile used last.
    let mut last_good: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for ((provider, profile), &t) in usage {
        let e = last_good.entry(provider).or_insert((profile, t));
        if t > e.1 {
            *e = (profile, t);
        }
    }
    with_object(&mut doc, "lastGood", |lg| {
        for (provider, (profile, _)) in last_good {
            lg.insert(provider.into(), json!(profile));
        }
    });

    // usageStats: derived fields per provider:profile.
    let mut derived: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for ((provider, profile), &t) in usage {
        derived
            .entry(format!("{provider}:{profile}"))
            .or_default()
            .insert("lastUsed".into(), json!(t));
    }
    let mut by_profile: BTreeMap<String, Vec<(&Scope, &BreakerSnapshot)>> = BTreeMap::new();
    for (scope, rec) in scopes {
        if let (Some(b), Some(profile)) = (&rec.breaker, scope.profile_name()) {
            by_profile
                .entry(format!("{}:{profile}", scope.provider()))
                .or_default()
                .push((scope, b));
        }
    }
    for (key, list) in by_profile {
        derive_entry(derived.entry(key).or_default(), &list);
    }
    with_object(&mut doc, "usageStats", |stats| {
        for entry in stats.values_mut() {
            if let Value::Object(m) = entry {
                m.retain(|k, _| !DERIVED.contains(&k.as_str()));
            }
        }
        for (key, fields) in derived {
            match stats.get_mut(&key) {
                Some(Value::Object(m)) => m.extend(fields),
                _ => {
                    stats.insert(key, Value::Object(fields));
                }
            }
        }
        stats.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()));
    });

    // backstop.scopes: every breaker, exactly.
    let out: Map<String, Value> = scopes
        .iter()
        .map(|(scope, rec)| (scope.to_string(), Value::Object(record_json(rec, now_ms))))
        .collect();
    with_object(&mut doc, "backstop", |section| {
        section.insert("scopes".into(), Value::Object(out));
    });
    doc
}

/// Run `f` on `doc[key]` as an object, replacing whatever else was there.
fn with_object(doc: &mut Map<String, Value>, key: &str, f: impl FnOnce(&mut Map<String, Value>)) {
    let slot = doc
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(m) = slot {
        f(m);
    }
}

/// OpenClaw's fields for one profile from its breakers (profile and profile × model scopes).
fn derive_entry(m: &mut Map<String, Value>, list: &[(&Scope, &BreakerSnapshot)]) {
    let disabling = |r: Option<Reason>| matches!(r, Some(Reason::Billing | Reason::AuthPermanent));
    let mut error_count = 0u32;
    let mut counts: BTreeMap<Reason, u32> = BTreeMap::new();
    let mut last_failure: Option<u64> = None;
    let mut disabled: Option<(u64, Reason)> = None;
    let mut cooldown: Option<(u64, Reason, Option<&str>)> = None;
    for (scope, b) in list {
        error_count = error_count.saturating_add(b.error_count);
        for (r, n) in &b.failure_counts {
            let c = counts.entry(*r).or_insert(0);
            *c = c.saturating_add(*n);
        }
        last_failure = last_failure.max(b.last_failure_ms);
        let (Some(until), Some(reason)) = (b.until_ms, b.reason) else {
            continue;
        };
        if scope.model().is_none() && disabling(Some(reason)) {
            if disabled.is_none_or(|(u, _)| until > u) {
                disabled = Some((until, reason));
            }
        } else if cooldown.is_none_or(|(u, _, _)| until > u) {
            cooldown = Some((until, reason, scope.model()));
        }
    }
    if let Some((until, reason, model)) = cooldown {
        m.insert("cooldownUntil".into(), json!(until));
        m.insert("cooldownReason".into(), json!(reason.as_str()));
        if let Some(model) = model {
            m.insert("cooldownModel".into(), json!(model));
        }
    }
    if let Some((until, reason)) = disabled {
        m.insert("disabledUntil".into(), json!(until));
        m.insert("disabledReason".into(), json!(reason.as_str()));
    }
    if error_count > 0 {
        m.insert("errorCount".into(), json!(error_count));
    }
    if !counts.is_empty() {
        let fc: Map<String, Value> = counts
            .into_iter()
            .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
            .collect();
        m.insert("failureCounts".into(), Value::Object(fc));
    }
    if let Some(t) = last_failure {
        m.insert("lastFailureAt".into(), json!(t));
    }
}

fn record_json(rec: &Record, now_ms: u64) -> Map<String, Value> {
    let mut m = Map::new();
    match &rec.breaker {
        Some(b) => {
            let state = match b.until_ms {
                None => BreakerState::Closed,
                Some(u) if now_ms < u => BreakerState::Open,
                Some(_) => BreakerState::HalfOpen,
            };
            m.insert("state".into(), json!(state.as_str()));
            if let Some(r) = b.reason {
                m.insert("reason".into(), json!(r.as_str()));
            }
            if let Some(u) = b.until_ms {
                m.insert("until_ms".into(), json!(u));
            }
            m.insert("consecutive".into(), json!(b.consecutive));
            m.insert("error_count".into(), json!(b.error_count));
            let fc: Map<String, Value> = b
                .failure_counts
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
                .collect();
            m.insert("failure_counts".into(), Value::Object(fc));
            if let Some(t) = b.last_failure_ms {
                m.insert("last_failure_ms".into(), json!(t));
            }
        }
        None => {
            m.insert("state".into(), json!("closed"));
        }
    }
    m.insert("changed_at".into(), json!(rec.changed_at));
    if let Some(t) = rec.reset_at {
        m.insert("reset_at".into(), json!(t));
    }
    for (k, v) in &rec.extra {
        m.entry(k.clone()).or_insert_with(|| v.clone());
    }
    m
}
