//! `backstop simulate` end to end: the real binary, a known config, seeded scenarios.
//!
//! The config: primary `openai/gpt-4o` with two keys (`a`, `b`), fallback
//! `anthropic/claude-sonnet-4-5` with one; default retry, timeouts and ladders
//! (transient cooldowns 30 s doubling to 5 min). Keys are `$VARS` that are not set:
//! simulate runs them as dummies against its fakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

const CONFIG: &str = r#"{
  providers: {
    openai: { auth: [{ profile: "a", key: "$SIMTEST_OPENAI_A" },
                     { profile: "b", key: "$SIMTEST_OPENAI_B" }] },
    anthropic: { auth: [{ key: "$SIMTEST_ANTHROPIC" }] },
  },
  agents: { defaults: { model: { primary: "openai/gpt-4o",
                                 fallbacks: ["anthropic/claude-sonnet-4-5"] } } },
}"#;

const MIN: u64 = 60_000;

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("simulate-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(name: &str) -> PathBuf {
    let p = dir(name).join("backstop.json5");
    std::fs::write(&p, CONFIG).unwrap();
    p
}

fn run(name: &str, args: &[&str]) -> Output {
    let cfg = config(name);
    Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("simulate")
        .args(args)
        .arg("--config")
        .arg(&cfg)
        .env_remove("BACKSTOP_LOG")
        .env_remove("BACKSTOP_CONFIG")
        .env_remove("SIMTEST_OPENAI_A")
        .env_remove("SIMTEST_OPENAI_B")
        .env_remove("SIMTEST_ANTHROPIC")
        .output()
        .unwrap()
}

fn report(name: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(name, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn key<'a>(r: &'a Value, profile: &str) -> &'a Value {
    r["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["profile"] == profile)
        .unwrap()
}

#[test]
fn outage_backstop_keeps_answering_while_a_direct_client_fails() {
    // One request every 30 s over an hour; the primary's provider is down 20:00–40:00.
    let r = report("outage", &["outage", "--requests", "120", "--seed", "7"]);
    assert_eq!(r["scenario"]["name"], "outage");
    assert_eq!(f(&r["availability"]["backstop"]["ratio"]), 1.0, "{r:#}");
    let direct = f(&r["availability"]["direct"]["ratio"]);
    assert!((0.6..0.7).contains(&direct), "direct client saw {direct}");
    // Two keys × retry.max_attempts 2, then the fallback: never more than 5 attempts,
    // but for resets on pooled connections: a request that meets one is sent once more
    // on a new connection (an idle close crossing it looks the same), and the provider
    // sees both. So at most 2 × 2 × 2 + 1.
    assert!(u(&r["attempts"]["max"]) <= 9, "{:#}", r["attempts"]);
    assert!(
        u(&r["attempts"]["max"]) >= 3,
        "the outage was noticed: {:#}",
        r["attempts"]
    );
    // Once the primary's keys are cooling, requests go straight to the fallback; when their
    // windows end, one request probes each key once (a failed probe is not retried) and
    // then takes the fallback: 3 attempts.
    assert!(f(&r["attempts"]["mean"]) < 1.5, "{:#}", r["attempts"]);
    assert!(u(&r["attempts"]["p95"]) <= 3, "{:#}", r["attempts"]);
    // During the outage the fallback served everything; before it, the primary.
    let phases = r["phases"].as_array().unwrap();
    assert_eq!(phases[0]["served"]["openai/gpt-4o"], phases[0]["requests"]);
    assert_eq!(
        phases[1]["served"]["anthropic/claude-sonnet-4-5"],
        phases[1]["requests"]
    );
    assert_eq!(f(&phases[1]["direct"]["ratio"]), 0.0);
    // Traffic returns to the primary within the transient ladder's cap (5 min, no
    // jitter at the top rung) plus one request interval.
    let rec = &r["recovery"];
    assert_eq!(u(&rec["incident_end_ms"]), 40 * MIN);
    assert_eq!(rec["primary_displaced"], true);
    let after = u(&rec["after_ms"]);
    assert!(after <= 5 * MIN + 30_000, "recovered after {after} ms");
    // … and stays there: the last quarter of an hour is all primary.
    let tail = r["timeline"].as_array().unwrap().iter().rev().take(3);
    for s in tail {
        assert_eq!(s["served"]["openai/gpt-4o"], s["requests"], "{s:#}");
    }
    assert!(u(&r["fallbacks"]["total"]) >= 40, "{:#}", r["fallbacks"]);
    assert!(
        r["notes"][0]
            .as_str()
            .unwrap()
            .contains("SIMTEST_ANTHROPIC")
    );
}

#[test]
fn rate_limit_storm_rotates_keys() {
    let r = report("storm", &["rate-limit-storm", "--requests", "120"]);
    assert!(
        f(&r["availability"]["backstop"]["ratio"]) >= 0.99,
        "{:#}",
        r["availability"]
    );
    assert!(f(&r["availability"]["direct"]["ratio"]) < 0.85);
    assert!(
        u(&r["key_rotations"]) > 0,
        "a 429 on one key was answered on the other"
    );
    assert!(u(&r["failed_attempts"]["by_reason"]["rate_limit"]) > 0);
    for profile in ["a", "b"] {
        let k = key(&r, profile);
        let limited: u64 = k["outcomes"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(o, _)| o.starts_with("429"))
            .map(|(_, n)| u(n))
            .sum();
        assert!(limited > 0, "key {profile} was rate limited: {k:#}");
        assert!(u(&k["served"]) > 0, "key {profile} served too: {k:#}");
    }
    // Retry-After (5 s) waits are simulated: real time stays small.
    assert!(u(&r["latency_ms"]["backstop"]["max"]) >= 5_000);
}

#[test]
fn billing_exhausted_disables_one_key_for_the_rest_of_the_run() {
    let r = report("billing", &["billing-exhausted", "--requests", "120"]);
    assert_eq!(f(&r["availability"]["backstop"]["ratio"]), 1.0);
    // The direct client uses the first key: after a quarter of the run it gets nothing.
    assert_eq!(f(&r["availability"]["direct"]["ratio"]), 0.25);
    let a = key(&r, "a");
    assert_eq!(a["state_at_end"], "disabled", "{a:#}");
    assert_eq!(a["reason_at_end"], "billing");
    // Exactly one billing answer: after it the key was never tried again.
    assert_eq!(a["outcomes"]["billing"], 1, "{a:#}");
    assert_eq!(u(&a["attempts"]), u(&a["outcomes"]["ok"]) + 1);
    assert!(u(&a["last_attempt_ms"]) <= 16 * MIN, "{a:#}");
    // Billing's ladder starts at 5 h: still disabled long after the run.
    assert!(u(&a["usable_in_ms"]) > 4 * 60 * MIN);
    let b = key(&r, "b");
    assert_eq!(b["state_at_end"], "ok");
    assert!(u(&b["last_served_ms"]) >= 59 * MIN);
    // The same model kept serving, on the other key: no fallback was needed.
    assert_eq!(r["fallbacks"]["total"], 0);
    assert_eq!(r["failed_attempts"]["by_reason"]["billing"], 1);
}

#[test]
fn slow_first_token_fails_over_on_the_configured_timeout() {
    let r = report("slow", &["slow-first-token", "--requests", "60"]);
    assert_eq!(f(&r["availability"]["backstop"]["ratio"]), 1.0);
    // A direct client has no first-token timeout: slow, but answered.
    assert_eq!(f(&r["availability"]["direct"]["ratio"]), 1.0);
    assert!(u(&r["latency_ms"]["direct"]["max"]) >= 20_000);
    assert!(u(&r["failed_attempts"]["by_reason"]["timeout"]) > 0);
    // The slowest Backstop answer waited out timeouts.first_token_ms (15 s) at least once.
    assert!(u(&r["latency_ms"]["backstop"]["max"]) >= 15_000);
}

#[test]
fn stream_cuts_are_rescued() {
    let r = report("cuts", &["stream-cuts", "--requests", "120"]);
    assert_eq!(
        f(&r["availability"]["backstop"]["ratio"]),
        1.0,
        "{:#}",
        r["availability"]
    );
    assert!(u(&r["stream_rescues"]) > 0);
    assert!(f(&r["availability"]["direct"]["ratio"]) < 1.0);
}

/// Found by the drill: after a brownout the primary stays "degraded" for good —
/// health's latency rule compares a fast average with a baseline that only new
/// attempts can move, and once degraded the primary gets no attempts.
#[test]
fn brownout_traffic_returns_to_the_primary() {
    let r = report("brownout", &["brownout", "--requests", "120"]);
    assert_eq!(f(&r["availability"]["backstop"]["ratio"]), 1.0);
    assert!(r["recovery"]["after_ms"].is_u64(), "{:#}", r["recovery"]);
}

#[test]
fn json_has_the_documented_shape_and_a_seed_makes_runs_identical() {
    let args = [
        "flapping",
        "--requests",
        "40",
        "--duration",
        "20m",
        "--seed",
        "3",
    ];
    let mut one = report("shape1", &args);
    let mut two = report("shape2", &args);
    for key in [
        "scenario",
        "chain",
        "real_time_ms",
        "availability",
        "attempts",
        "latency_ms",
        "recovery",
        "timeline",
        "phases",
        "fallbacks",
        "failed_attempts",
        "key_rotations",
        "stream_rescues",
        "keys",
        "notes",
    ] {
        assert!(one.get(key).is_some(), "missing {key}");
    }
    assert_eq!(u(&one["scenario"]["duration_ms"]), 20 * MIN);
    assert_eq!(u(&one["scenario"]["requests"]), 40);
    assert_eq!(u(&one["scenario"]["seed"]), 3);
    assert_eq!(
        one["chain"]["targets"],
        serde_json::json!(["openai/gpt-4o", "anthropic/claude-sonnet-4-5"])
    );
    let slice = &one["timeline"][0];
    for key in [
        "start_ms",
        "end_ms",
        "phase",
        "requests",
        "availability",
        "direct",
        "served",
        "failed",
        "attempts_mean",
    ] {
        assert!(slice.get(key).is_some(), "timeline slice lacks {key}");
    }
    let requests: u64 = one["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| u(&s["requests"]))
        .sum();
    assert_eq!(requests, 40);
    for k in [
        "provider",
        "profile",
        "attempts",
        "outcomes",
        "served",
        "state_at_end",
    ] {
        assert!(one["keys"][0].get(k).is_some(), "keys[0] lacks {k}");
    }
    // Only the real time may differ between two runs with the same seed.
    for r in [&mut one, &mut two] {
        r.as_object_mut().unwrap().remove("real_time_ms");
        r["chain"].as_object_mut().unwrap().remove("config");
    }
    assert_eq!(one, two);
}

#[test]
fn a_scenario_file_runs() {
    let file = dir("file").join("drill.json5");
    std::fs::write(
        &file,
        r#"{
          name: "key a dies",
          duration: "10m",
          requests: 30,
          stream_share: 0,
          phases: [
            { name: "calm", duration: "2m" },
            { name: "a revoked", weight: 1, providers: {
                openai: { keys: ["a"], mix: [ { step: { type: "error", status: 401, kind: "invalid_api_key" } } ] },
            } },
          ],
        }"#,
    )
    .unwrap();
    let r = report("file", &["--scenario-file", file.to_str().unwrap()]);
    assert_eq!(r["scenario"]["name"], "key a dies");
    assert_eq!(u(&r["scenario"]["duration_ms"]), 10 * MIN);
    assert_eq!(u(&r["scenario"]["phases"][1]["start_ms"]), 2 * MIN);
    assert_eq!(f(&r["availability"]["backstop"]["ratio"]), 1.0);
    let a = key(&r, "a");
    assert!(u(&a["outcomes"]["401 invalid_api_key"]) >= 1, "{a:#}");
    assert_eq!(a["state_at_end"], "cooldown", "{a:#}");
    assert_eq!(a["reason_at_end"], "auth");
}

#[test]
fn a_bad_scenario_file_names_the_key_path() {
    let file = dir("bad").join("drill.json5");
    std::fs::write(
        &file,
        r#"{ phases: [ { name: "x", providers: { primary: { mix: [ { step: { type: "eror" } } ] } } } ] }"#,
    )
    .unwrap();
    let out = run("bad", &["--scenario-file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("phases[0].providers.primary.mix[0].step"),
        "{err}"
    );
    assert!(err.contains("eror"), "{err}");
    assert!(out.stdout.is_empty());

    std::fs::write(
        &file,
        r#"{ phases: [ { name: "x", providers: { opnai: {} } } ] }"#,
    )
    .unwrap();
    let out = run("bad", &["--scenario-file", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("phases[0].providers.opnai"), "{err}");
    assert!(err.contains("did you mean \"openai\""), "{err}");
}

#[test]
fn text_report_when_piped_has_no_progress_line() {
    let out = run("text", &["outage", "--requests", "30", "--duration", "15m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Fire drill: outage"), "{text}");
    assert!(
        !text.contains('\r') && !text.contains("simulating"),
        "{text}"
    );
    for needle in [
        "Availability",
        "direct client",
        "Attempts per request",
        "Recovery",
        "Timeline",
        "Keys",
        "openai:a",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
}

#[test]
fn unknown_scenarios_list_the_built_ins_and_min_availability_gates() {
    let out = run("unknown", &["meteor"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scenario \"meteor\""), "{err}");
    assert!(err.contains("rate-limit-storm"), "{err}");
    // The direct client would fail; Backstop does not, so a 99.9 % gate passes…
    let out = run(
        "gate",
        &[
            "outage",
            "--requests",
            "30",
            "--min-availability",
            "99.9",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …and an impossible one fails.
    let out = run(
        "gate",
        &[
            "outage",
            "--requests",
            "30",
            "--min-availability",
            "100.1",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("below --min-availability"));
}
