//! `backstop status`: every provider, profile and model with its state — from the running
//! gateway's `/status` when one answers at `--url` (latency, error rates, chains and the
//! last failovers too), else read from the state dir.

use crate::cooldowns::print_table;
use crate::gateway::{self, Target};
use anyhow::Result;
use backstop::clock::{Clock, SystemClock, rfc3339};
use backstop::failover::Reason;
use backstop::state::{BreakerSnapshot, BreakerState, Scope};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// `ok | cooldown | disabled | half_open`, as `/status` spells them.
fn state_of(scope: &Scope, s: Option<&BreakerSnapshot>) -> &'static str {
    match s.map(|s| (s.state, s.reason)) {
        None | Some((BreakerState::Closed, _)) => "ok",
        Some((BreakerState::HalfOpen, _)) => "half_open",
        Some((BreakerState::Open, Some(Reason::Billing | Reason::AuthPermanent)))
            if scope.model().is_none() =>
        {
            "disabled"
        }
        Some((BreakerState::Open, _)) => "cooldown",
    }
}

fn entry(id: &str, scope: &Scope, s: Option<&BreakerSnapshot>) -> Value {
    json!({
        "id": id,
        "state": state_of(scope, s),
        "reason": s.and_then(|s| s.reason).filter(|_| s.is_some_and(|s| s.state != BreakerState::Closed)).map(|r| r.as_str()),
        "until": s.and_then(|s| s.until_ms).map(rfc3339),
        "until_ms": s.and_then(|s| s.until_ms),
        "error_count": s.map_or(0, |s| s.error_count),
    })
}

/// provider → (profiles → models, provider-wide models), from the config and the state.
#[derive(Default)]
struct Tree {
    profiles: BTreeMap<String, Vec<String>>,
    models: Vec<String>,
}

fn push(list: &mut Vec<String>, s: &str) {
    if !list.iter().any(|x| x == s) {
        list.push(s.to_owned());
    }
}

pub fn status(target: &Target, as_json: bool) -> Result<ExitCode> {
    if let Some(reply) = gateway::call(target, reqwest::Method::GET, "/status")? {
        if reply.status != 200 {
            anyhow::bail!(
                "gateway at {}: {}",
                target.url,
                gateway::error_message(&reply)
            );
        }
        if as_json {
            outln!("{}", serde_json::to_string_pretty(&reply.body)?);
        } else {
            print_gateway_status(&target.url, &reply.body);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now_ms();
    let (view, source) = crate::offline::read(target)?;
    let breakers: BTreeMap<&Scope, &BreakerSnapshot> =
        view.scopes.iter().map(|(s, b)| (s, b)).collect();
    let mut order: Vec<String> = Vec::new();
    let mut trees: BTreeMap<String, Tree> = BTreeMap::new();
    if let Some(c) = &target.config {
        for p in &c.providers {
            push(&mut order, &p.id);
            let t = trees.entry(p.id.clone()).or_default();
            for m in &p.models {
                push(&mut t.models, &m.id);
            }
            for prof in &p.profiles {
                t.profiles.entry(prof.name.clone()).or_default();
            }
        }
    }
    for (scope, _) in &view.scopes {
        push(&mut order, scope.provider());
        let t = trees.entry(scope.provider().to_owned()).or_default();
        if let Some(m) = scope.model() {
            push(&mut t.models, m);
        }
        if let Some(prof) = scope.profile_name() {
            let models = t.profiles.entry(prof.to_owned()).or_default();
            if let Some(m) = scope.model() {
                push(models, m);
            }
        }
    }
    let used: BTreeMap<(&str, &str), u64> = view
        .usage
        .iter()
        .map(|(p, q, t)| ((p.as_str(), q.as_str()), *t))
        .collect();
    let mut providers = Vec::new();
    for pid in &order {
        let Some(t) = trees.get(pid) else { continue };
        let profiles: Vec<Value> = t
            .profiles
            .iter()
            .map(|(prof, models)| {
                let scope = Scope::profile(pid, prof);
                let mut e = entry(prof, &scope, breakers.get(&scope).copied());
                e["last_used"] = json!(
                    used.get(&(pid.as_str(), prof.as_str()))
                        .map(|t| rfc3339(*t))
                );
                e["models"] = models
                    .iter()
                    .map(|m| {
                        let s = Scope::profile_model(pid, prof, m);
                        entry(m, &s, breakers.get(&s).copied())
                    })
                    .collect();
                e
            })
            .collect();
        let models: Vec<Value> = t
            .models
            .iter()
            .map(|m| {
                let s = Scope::provider_model(pid, m);
                entry(m, &s, breakers.get(&s).copied())
            })
            .collect();
        providers.push(json!({ "id": pid, "profiles": profiles, "models": models }));
    }
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "source": source, "providers": providers }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("# from {source}");
    if providers.is_empty() {
        outln!("no providers configured and no state recorded");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<[String; 5]> = Vec::new();
    let row = |name: String, e: &Value| -> [String; 5] {
        let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
        let until = e["until_ms"]
            .as_u64()
            .filter(|_| e["state"] != "ok")
            .map_or_else(
                || "-".to_owned(),
                |u| format!("{} ({})", rfc3339(u), gateway::in_how_long(u, now)),
            );
        [
            name,
            s("state"),
            s("reason"),
            until,
            e["error_count"].as_u64().unwrap_or(0).to_string(),
        ]
    };
    for p in &providers {
        let pid = p["id"].as_str().unwrap_or("?");
        rows.push([
            pid.to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for prof in p["profiles"].as_array().into_iter().flatten() {
            rows.push(row(
                format!("  profile {}", prof["id"].as_str().unwrap_or("?")),
                prof,
            ));
            for m in prof["models"].as_array().into_iter().flatten() {
                if m["state"] != "ok" || m["error_count"].as_u64().unwrap_or(0) > 0 {
                    rows.push(row(format!("    {}", m["id"].as_str().unwrap_or("?")), m));
                }
            }
        }
        for m in p["models"].as_array().into_iter().flatten() {
            rows.push(row(
                format!("  model {}", m["id"].as_str().unwrap_or("?")),
                m,
            ));
        }
    }
    print_table(
        &[
            "PROVIDER / PROFILE / MODEL",
            "STATE",
            "REASON",
            "UNTIL",
            "ERRORS",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// A running gateway's `/status` as tables: keys, models, chains, last failovers.
pub fn print_gateway_status(url: &str, v: &Value) {
    eprintln!("# from the gateway at {url}");
    let text = |x: &Value| x.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let num = |x: &Value, digits: usize| {
        x.as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.digits$}"))
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    for p in v["providers"].as_array().into_iter().flatten() {
        let pid = text(&p["id"]);
        for a in p["profiles"].as_array().into_iter().flatten() {
            rows.push([
                format!("{pid}:{}", text(&a["id"])),
                text(&a["state"]),
                text(&a["reason"]),
                text(&a["until"]),
                a["error_count"].as_u64().unwrap_or(0).to_string(),
                text(&a["last_used"]),
            ]);
        }
    }
    print_table(
        &["KEY", "STATE", "REASON", "UNTIL", "ERRORS", "LAST USED"],
        &rows,
    );
    outln!();
    let mut rows: Vec<[String; 6]> = Vec::new();
    for p in v["providers"].as_array().into_iter().flatten() {
        let pid = text(&p["id"]);
        for m in p["models"].as_array().into_iter().flatten() {
            rows.push([
                format!("{pid}/{}", text(&m["id"])),
                text(&m["state"]),
                text(&m["reason"]),
                format!(
                    "{} / {}",
                    num(&m["latency_ms"]["p50"], 0),
                    num(&m["latency_ms"]["p95"], 0)
                ),
                m["error_rate"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |r| format!("{:.0} %", r * 100.0)),
                text(&m["until"]),
            ]);
        }
    }
    print_table(
        &[
            "MODEL",
            "STATE",
            "REASON",
            "P50 / P95 MS",
            "ERRORS",
            "UNTIL",
        ],
        &rows,
    );
    outln!();
    let mut rows: Vec<[String; 3]> = Vec::new();
    for c in v["chains"].as_array().into_iter().flatten() {
        let targets: Vec<String> = c["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(&text)
            .collect();
        rows.push([text(&c["agent"]), text(&c["active"]), targets.join(" → ")]);
    }
    print_table(&["CHAIN", "ACTIVE", "TARGETS"], &rows);
    let stores: Vec<[String; 4]> = ["cooldowns", "sessions"]
        .into_iter()
        .filter(|name| v["state"][name].is_object())
        .map(|name| {
            let s = &v["state"][name];
            let backend = if s["connected"].as_bool().unwrap_or(true) {
                "reachable"
            } else {
                "UNREACHABLE (local view)"
            };
            [
                name.to_owned(),
                text(&s["kind"]),
                text(&s["location"]),
                backend.to_owned(),
            ]
        })
        .collect();
    if !stores.is_empty() {
        outln!();
        print_table(&["STATE", "KIND", "WHERE", "BACKEND"], &stores);
    }
    let events: Vec<&Value> = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
        .collect();
    if !events.is_empty() {
        outln!();
        let rows: Vec<[String; 4]> = events
            .iter()
            .map(|e| {
                [
                    text(&e["at"]),
                    text(&e["from"]),
                    text(&e["to"]),
                    text(&e["reason"]),
                ]
            })
            .collect();
        print_table(&["AT", "FROM", "TO", "REASON"], &rows);
    }
}
