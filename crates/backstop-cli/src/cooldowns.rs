//! `backstop cooldowns list|clear`: through a running gateway's `/v1/cooldowns`, else
//! straight in the state dir (`auth-state.json`, under its lock) or, with
//! `state.redis_url`, in Redis.

use crate::gateway::{self, Target};
use anyhow::{Result, anyhow};
use backstop::clock::{Clock, SystemClock};
use backstop::state::{BreakerState, Scope};
use serde_json::{Value, json};
use std::process::ExitCode;

/// Every cooldown (open or half-open), and where they came from.
fn collect(target: &Target) -> Result<(Vec<Value>, String)> {
    if let Some(reply) = gateway::call(target, reqwest::Method::GET, "/v1/cooldowns")? {
        if reply.status != 200 {
            return Err(anyhow!(
                "gateway at {}: {}",
                target.url,
                gateway::error_message(&reply)
            ));
        }
        let items = reply.body["cooldowns"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        return Ok((items, format!("gateway {}", target.url)));
    }
    let (view, source) = crate::offline::read(target)?;
    let items = view
        .scopes
        .iter()
        .filter(|(_, s)| s.state != BreakerState::Closed)
        .map(|(scope, s)| backstop::state::cooldown_json(scope, s))
        .collect();
    Ok((items, source))
}

pub fn list(target: &Target, as_json: bool) -> Result<ExitCode> {
    let (items, source) = collect(target)?;
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "source": source, "cooldowns": items }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("# from {source}");
    if items.is_empty() {
        outln!("no cooldowns");
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemClock.now_ms();
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or("-").to_owned();
            [
                s("scope"),
                s("state"),
                s("reason"),
                s("until"),
                i["until_ms"]
                    .as_u64()
                    .map_or_else(|| "-".into(), |u| gateway::in_how_long(u, now)),
                i["error_count"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    print_table(
        &["SCOPE", "STATE", "REASON", "UNTIL", "IN", "ERRORS"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn print_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) {
    let mut widths = head.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// What to clear.
pub enum Clear {
    One(Scope),
    All,
}

pub fn clear(target: &Target, what: &Clear) -> Result<ExitCode> {
    let path = match what {
        Clear::One(s) => format!("/v1/cooldowns/{s}"),
        Clear::All => "/v1/cooldowns".into(),
    };
    if let Some(reply) = gateway::call(target, reqwest::Method::DELETE, &path)? {
        return match (reply.status, what) {
            (204 | 200, Clear::One(s)) => {
                outln!("cleared {s} (gateway {})", target.url);
                Ok(ExitCode::SUCCESS)
            }
            (204 | 200, Clear::All) => {
                outln!("cleared every cooldown (gateway {})", target.url);
                Ok(ExitCode::SUCCESS)
            }
            (404, Clear::One(s)) => {
                eprintln!("backstop: no cooldown for {s}");
                Ok(ExitCode::FAILURE)
            }
            _ => Err(anyhow!(
                "gateway at {}: {}",
                target.url,
                gateway::error_message(&reply)
            )),
        };
    }
    crate::offline::change(target, |store, source| match what {
        Clear::One(s) => {
            if backstop::state::clear_covered(store, s, SystemClock.now_ms()) {
                outln!("cleared {s} ({source})");
                ExitCode::SUCCESS
            } else {
                eprintln!("backstop: no cooldown for {s}");
                ExitCode::FAILURE
            }
        }
        Clear::All => {
            let n = store.snapshot(SystemClock.now_ms()).len();
            store.clear_all();
            outln!("cleared {n} cooldown(s) ({source})");
            ExitCode::SUCCESS
        }
    })
}
