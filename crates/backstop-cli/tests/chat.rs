//! `backstop chat`: a terminal chat on a session. With no gateway running it starts one
//! in-process on the config; it shows the one-line fallback notice, keeps the
//! conversation, pins the session's model with `/model`, shows `/status`, and `/new`
//! starts another session.
#![allow(clippy::unwrap_used)]

use backstop_fake::{FakeProvider, Step};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_backstop");

fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chat(config: &Path, extra: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(["chat", "--config", config.to_str().unwrap()])
        .args(extra)
        .env("BACKSTOP_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_shows_the_fallback_keeps_the_conversation_and_pins_the_session() {
    let primary = FakeProvider::start().unwrap();
    let fallback = FakeProvider::start().unwrap();
    let dir = std::env::temp_dir().join(format!("backstop-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("backstop.json5");
    std::fs::write(
        &config,
        format!(
            r#"{{
              server: {{ listen: "127.0.0.1:{}" }},
              providers: {{
                oa: {{ api: "openai", base_url: "{}", auth: [{{ profile: "a", key: "k-aaaaaaaaaaaaaaaaaaaa" }}], models: ["gpt-4o"] }},
                an: {{ api: "anthropic", base_url: "{}", auth: [{{ profile: "x", key: "k-xxxxxxxxxxxxxxxxxxxx" }}], models: ["claude-sonnet-4-5"] }},
              }},
              agents: {{ defaults: {{ model: {{ primary: "oa/gpt-4o", fallbacks: ["an/claude-sonnet-4-5"] }} }} }},
              state: {{ dir: "{}" }},
            }}"#,
            unused_port(),
            primary.openai_base_url(),
            fallback.anthropic_base_url(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    primary.push(Step::error_kind(429, "rate_limit_exceeded"));
    fallback.push(Step::text("Hello from the fallback."));
    fallback.push(Step::text("Still here."));

    let (ok, out, err) = chat(
        &config,
        &["--session", "t-1"],
        "hello\n/status\nagain\n/model an/claude-sonnet-4-5\n/model\n/model auto\n/bogus\n/new\n/quit\nnever sent\n",
    );
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("running one in this process"), "{err}");
    assert!(
        out.starts_with("# session t-1 · model default · http://127.0.0.1:"),
        "{out}"
    );
    // The fallback: its one-line notice before the reply, and who answered.
    let lines: Vec<&str> = out.lines().collect();
    let notice = lines
        .iter()
        .position(|l| l.starts_with("⚠ switched to an/claude-sonnet-4-5"))
        .unwrap_or_else(|| panic!("no notice:\n{out}"));
    assert!(lines[notice].contains("rate limited"), "{out}");
    assert_eq!(lines[notice + 1], "Hello from the fallback.", "{out}");
    assert_eq!(lines[notice + 2], "# (an/claude-sonnet-4-5)", "{out}");
    // /status: the gateway's tables and the session's automatic pin.
    assert!(out.contains("CHAIN") && out.contains("oa:a"), "{out}");
    assert!(
        out.contains("# session t-1: model an/claude-sonnet-4-5 (auto)"),
        "{out}"
    );
    // The second message carried the conversation.
    assert!(out.contains("Still here."), "{out}");
    let second = &fallback.requests()[1];
    let roles: Vec<&str> = second.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    // /model pins, shows and drops.
    assert!(
        out.contains("# pinned: an/claude-sonnet-4-5 for session t-1"),
        "{out}"
    );
    assert!(
        out.contains("# session t-1: model an/claude-sonnet-4-5 (user)"),
        "{out}"
    );
    assert!(out.contains("# model pin dropped"), "{out}");
    assert!(out.contains("unknown command /bogus"), "{out}");
    let new = lines
        .iter()
        .find(|l| l.starts_with("# new session chat-"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_ne!(*new, "# new session t-1");
    // Nothing after /quit was sent.
    assert_eq!(fallback.requests().len(), 2);
    assert_eq!(primary.requests().len(), 1);

    // An explicit --url that nothing answers is an error, not a silent in-process gateway.
    let dead = format!("http://127.0.0.1:{}", unused_port());
    let (ok, _, err) = chat(&config, &["--url", &dead], "hello\n");
    assert!(!ok && err.contains("no gateway answers"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
