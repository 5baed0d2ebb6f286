//! `backstop probe` finds a dead fallback before the outage that needs it: every target and
//! profile of every chain gets one tiny real request; exit 0 all ok, 1 some failed but every
//! chain still has a working target, 2 a chain has none.
#![allow(clippy::unwrap_used)]

use backstop_fake::{FakeProvider, Step};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_backstop");

fn config(dir: &Path, oa: &str, an: &str, solo: bool) -> PathBuf {
    let agents = if solo {
        r#"list: [{ id: "solo", model: { primary: "an/m2", fallbacks: [] } }],"#
    } else {
        ""
    };
    let text = format!(
        r#"{{
          providers: {{
            oa: {{ api: "openai", base_url: "{oa}", auth: [{{ profile: "a", key: "k-aaaaaaaaaaaaaaaaaaaa" }}, {{ profile: "b", key: "k-bbbbbbbbbbbbbbbbbbbb" }}] }},
            an: {{ api: "anthropic", base_url: "{an}", auth: [{{ profile: "x", key: "k-xxxxxxxxxxxxxxxxxxxx" }}] }},
          }},
          agents: {{ defaults: {{ model: {{ primary: "oa/m1", fallbacks: ["an/m2"] }} }}, {agents} }},
          timeouts: {{ first_token_ms: 2000, request_ms: 5000 }},
          state: {{ dir: "{}" }},
        }}"#,
        dir.join("state").display()
    );
    let path = dir.join("backstop.json5");
    std::fs::write(&path, text).unwrap();
    path
}

fn probe(config: &Path, json: bool) -> (i32, String) {
    let mut args = vec!["probe", "--config", config.to_str().unwrap()];
    if json {
        args.push("--json");
    }
    let out = Command::new(BIN).args(&args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_finds_a_dead_fallback_and_exits_with_what_it_means() {
    let oa = FakeProvider::start().unwrap();
    let an = FakeProvider::start().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "backstop-probe-{}-{}",
        std::process::id(),
        fastrand_u32()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(&dir, &oa.openai_base_url(), &an.anthropic_base_url(), false);

    // Everything answers.
    let (code, text) = probe(&cfg, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("oa/m1") && text.contains("an/m2"), "{text}");
    assert_eq!(oa.requests().len(), 2, "one probe per key");
    assert_eq!(an.requests().len(), 1);
    let body = &an.requests()[0].body;
    assert_eq!(body["max_tokens"], 1, "a tiny request: {body}");

    // The fallback's key is revoked: found now, not during the outage that needs it.
    an.set_default(Step::error_kind(401, "authentication_error"));
    let (code, text) = probe(&cfg, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL auth [401]"), "{text}");
    assert!(text.contains("chain default: ok via 1 of 2"), "{text}");
    let (code, json) = probe(&cfg, true);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&json).unwrap();
    let dead: Vec<&Value> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .collect();
    assert_eq!(dead.len(), 1, "{v}");
    assert_eq!(dead[0]["target"], "an/m2");
    assert_eq!(dead[0]["profile"], "x");
    assert_eq!(dead[0]["reason"], "auth");

    // A chain whose only target is dead: exit 2, and it says which.
    let cfg = config(&dir, &oa.openai_base_url(), &an.anthropic_base_url(), true);
    let (code, text) = probe(&cfg, false);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("chain solo: NO WORKING TARGET"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
