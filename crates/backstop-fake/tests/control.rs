//! Scripting and inspection: the queue, the default, recorded requests, the
//! `/_fake/*` HTTP routes and the binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use backstop_fake::{FakeProvider, Step};
use common::*;
use serde_json::{Value, json};

fn openai_req(text: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
}

fn anthropic_req(text: &str) -> Value {
    json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": text}]})
}

async fn openai_text_of(base: &str, text: &str) -> String {
    let body: Value = post(&format!("{base}/v1/chat/completions"), openai_req(text))
        .await
        .json()
        .await
        .unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn anthropic_text_of(base: &str, text: &str) -> String {
    let body: Value = post(&format!("{base}/v1/messages"), anthropic_req(text))
        .await
        .json()
        .await
        .unwrap();
    body["content"][0]["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn queue_is_fifo_across_routes_then_default() {
    let fake = FakeProvider::start().unwrap();
    let base = fake.url();
    fake.push_many([Step::text("first"), Step::text("second")]);
    fake.push(Step::text("third"));
    assert_eq!(fake.pending(), 3);
    assert_eq!(anthropic_text_of(&base, "x").await, "first");
    assert_eq!(openai_text_of(&base, "x").await, "second");
    assert_eq!(anthropic_text_of(&base, "x").await, "third");
    assert_eq!(openai_text_of(&base, "ping").await, "echo: ping");
    fake.set_default(Step::text("fallback"));
    assert_eq!(openai_text_of(&base, "x").await, "fallback");
    assert_eq!(anthropic_text_of(&base, "x").await, "fallback");
}

#[tokio::test]
async fn requests_are_recorded_and_clear_resets() {
    let fake = FakeProvider::start().unwrap();
    fake.set_default(Step::text("d"));
    fake.push(Step::text("q"));
    client()
        .post(format!("{}/chat/completions", fake.openai_base_url()))
        .bearer_auth("sk-test")
        .header("x-custom", "1")
        .json(&openai_req("hello"))
        .send()
        .await
        .unwrap();
    client()
        .post(format!("{}/v1/messages", fake.anthropic_base_url()))
        .header("x-api-key", "sk-ant")
        .json(&anthropic_req("hi"))
        .send()
        .await
        .unwrap();
    let recorded = fake.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].header("authorization"), Some("Bearer sk-test"));
    assert_eq!(recorded[0].header("x-custom"), Some("1"));
    assert_eq!(recorded[0].body, openai_req("hello"));
    assert_eq!(recorded[1].path, "/v1/messages");
    assert_eq!(recorded[1].header("x-api-key"), Some("sk-ant"));
    assert_eq!(recorded[1].body["messages"][0]["content"], "hi");

    fake.push(Step::text("left over"));
    fake.clear();
    assert!(fake.requests().is_empty());
    assert_eq!(fake.pending(), 0);
    assert_eq!(openai_text_of(&fake.url(), "after").await, "echo: after");
}

#[tokio::test]
async fn recording_can_be_turned_off() {
    let fake = FakeProvider::start().unwrap();
    fake.set_recording(false);
    assert_eq!(openai_text_of(&fake.url(), "a").await, "echo: a");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn recording_can_be_turned_off_over_http() {
    let fake = FakeProvider::start().unwrap();
    let base = fake.url();
    let resp = post(&format!("{base}/_fake/recording"), json!({"on": false})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(openai_text_of(&base, "a").await, "echo: a");
    assert!(fake.requests().is_empty());
    let resp = post(&format!("{base}/_fake/recording"), json!({"on": "no"})).await;
    assert_eq!(resp.status(), 400);
    let resp = post(&format!("{base}/_fake/recording"), json!({"on": true})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(openai_text_of(&base, "b").await, "echo: b");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn http_control_routes() {
    let fake = FakeProvider::start().unwrap();
    let base = fake.url();

    let resp = post(
        &format!("{base}/_fake/script"),
        json!([
            {"type": "reply", "text": "scripted"},
            {"type": "error", "status": 529}
        ]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["pending"], 2);
    assert_eq!(fake.pending(), 2);

    let resp = post(
        &format!("{base}/_fake/default"),
        json!({"type": "reply", "text": "dflt"}),
    )
    .await;
    assert_eq!(resp.status(), 200);

    assert_eq!(anthropic_text_of(&base, "x").await, "scripted");
    let resp = post(&format!("{base}/v1/messages"), anthropic_req("x")).await;
    assert_eq!(resp.status(), 529);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["type"],
        "overloaded_error"
    );
    assert_eq!(openai_text_of(&base, "x").await, "dflt");

    let recorded: Value = client()
        .get(format!("{base}/_fake/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recorded = recorded.as_array().unwrap();
    assert_eq!(recorded.len(), 3, "control calls are not recorded");
    assert_eq!(recorded[0]["path"], "/v1/messages");
    assert_eq!(recorded[0]["body"]["model"], "claude");
    assert!(
        recorded[0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "content-type")
    );

    let resp = client()
        .post(format!("{base}/_fake/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(fake.requests().is_empty());
    assert_eq!(openai_text_of(&base, "y").await, "echo: y");
}

#[tokio::test]
async fn bad_scripts_are_rejected_with_the_reason() {
    let fake = FakeProvider::start().unwrap();
    let resp = post(
        &format!("{}/_fake/script", fake.url()),
        json!([{"type": "reply", "text": "ok"}, {"type": "replay"}]),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("replay"), "{body}");
    assert_eq!(fake.pending(), 0, "nothing queued from a bad script");

    let resp = client()
        .post(format!("{}/_fake/default", fake.url()))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let one = post(
        &format!("{}/_fake/script", fake.url()),
        json!({"type": "hang"}),
    )
    .await;
    assert_eq!(one.status(), 200, "a single step is accepted too");
    assert_eq!(fake.pending(), 1);
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let fake = FakeProvider::start().unwrap();
    let resp = client()
        .get(format!("{}/v1/models", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .get(format!("{}/v1/chat/completions", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "only POST");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn non_json_bodies_are_recorded_as_text() {
    let fake = FakeProvider::start().unwrap();
    let resp = client()
        .post(format!("{}/v1/chat/completions", fake.url()))
        .body("plain text")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.requests()[0].body, json!("plain text"));
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let result = std::thread::spawn(FakeProvider::start).join().unwrap();
    let err = result.unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_backstop-fake"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let result = async {
        post(
            &format!("{base}/_fake/script"),
            json!([{"type": "reply", "text": "from bin"}]),
        )
        .await;
        openai_text_of(&base, "x").await
    }
    .await;
    assert_eq!(result, "from bin");
}

/// Kills the child process this test started, even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop-fake"))
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}
