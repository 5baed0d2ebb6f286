//! Two gateways sharing state through one real Redis (`state.redis_url`): a key
//! rate-limited through gateway A is skipped by gateway B, and a session pinned through A
//! is served as pinned by B.
//!
//! Starts its own `redis-server` on a free loopback port; without it on PATH the
//! test FAILS saying so (CI installs it). Skip it with `cargo test -- --skip redis_`.
#![allow(clippy::unwrap_used)]

use backstop::config::{ConfigOrigin, Format, MapEnv, from_str};
use backstop_fake::{FakeHandle, FakeProvider, RedisServer, Step};
use backstop_server::{AppState, bind, serve_state};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn redis_server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

async fn gateway(config: &str) -> (String, Arc<AppState>) {
    let config = from_str(
        config,
        Format::Json5,
        ConfigOrigin::Environment,
        &MapEnv::new(),
    )
    .unwrap();
    let state = Arc::new(AppState::new(Arc::new(config)).unwrap());
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve_state(
        state.clone(),
        listener,
        std::future::pending::<()>(),
    ));
    (url, state)
}

/// One provider on `fake` with keys `a` then `b`, state shared through `redis`.
fn two_keys_on_redis(fake: &FakeHandle, redis: &RedisServer) -> String {
    format!(
        r#"{{
          providers: {{ fake: {{ api: "openai", base_url: "{}",
                                auth: [{{ profile: "a", key: "sk-a" }}, {{ profile: "b", key: "sk-b" }}],
                                models: ["gpt-4o"] }} }},
          auth: {{ order: {{ fake: ["a", "b"] }} }},
          agents: {{ defaults: {{ model: {{ primary: "fake/gpt-4o", fallbacks: [] }} }} }},
          state: {{ redis_url: "{}" }},
        }}"#,
        fake.openai_base_url(),
        redis.url()
    )
}

async fn chat(client: &reqwest::Client, base: &str) -> reqwest::Response {
    client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_key_rate_limited_through_one_gateway_is_skipped_by_the_other() {
    let redis = redis_server();
    let fake = FakeProvider::start().unwrap();
    let config = two_keys_on_redis(&fake, &redis);
    let (a, _) = gateway(&config).await;
    let (b, b_state) = gateway(&config).await;
    // reqwest uses rustls: the engine installed its crypto provider above.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // Through A: key "a" is rate limited, "b" answers.
    fake.push(Step::error(429));
    let resp = chat(&client, &a).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backstop-attempts"], "2");
    let keys: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_owned())
        .collect();
    assert_eq!(keys, ["Bearer sk-a", "Bearer sk-b"]);

    // B learns of the cooldown without ever calling key "a"…
    let start = Instant::now();
    loop {
        let list: Value = client
            .get(format!("{b}/v1/cooldowns"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list["cooldowns"]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["scope"] == "fake:a/gpt-4o"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "gateway B never saw the cooldown: {list}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("cooldown visible on gateway B after {:?}", start.elapsed());
    assert_eq!(b_state.engine().cooldowns.snapshot().len(), 1);

    // … and skips it: its first and only attempt goes to key "b".
    fake.clear();
    let resp = chat(&client, &b).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backstop-attempts"], "1");
    let keys: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_owned())
        .collect();
    assert_eq!(keys, ["Bearer sk-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_session_pinned_through_one_gateway_is_honoured_by_the_other() {
    let redis = redis_server();
    let fake = FakeProvider::start().unwrap();
    let config = two_keys_on_redis(&fake, &redis);
    let (a, _) = gateway(&config).await;
    let (b, _) = gateway(&config).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // The user pins profile "b" for session chat-7 through gateway A …
    let put = client
        .put(format!("{a}/v1/sessions/chat-7"))
        .json(&json!({"profile": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    // … gateway B reports it …
    let start = Instant::now();
    loop {
        let got = client
            .get(format!("{b}/v1/sessions/chat-7"))
            .send()
            .await
            .unwrap();
        if got.status() == 200 {
            let view: Value = got.json().await.unwrap();
            assert_eq!(view["profile_override"], "b", "{view}");
            assert_eq!(view["profile_override_source"], "user", "{view}");
            break;
        }
        assert_eq!(got.status(), 404);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "gateway B never saw the session"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("session visible on gateway B after {:?}", start.elapsed());

    // … and serves the session on the pinned key, though "a" comes first in auth.order.
    let resp = client
        .post(format!("{b}/v1/chat/completions"))
        .header("x-backstop-session", "chat-7")
        .json(&json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let keys: Vec<_> = fake
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or("").to_owned())
        .collect();
    assert_eq!(keys, ["Bearer sk-b"]);

    // A reset through B (user pins stay) and a request without the session on A
    // still start at "a": the pin belongs to the session only.
    let reset = client
        .delete(format!("{b}/v1/sessions/chat-7"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    let kept: Value = client
        .get(format!("{a}/v1/sessions/chat-7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kept["profile_override"], "b", "{kept}");
    fake.clear();
    let resp = chat(&client, &a).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        fake.requests()[0].header("authorization"),
        Some("Bearer sk-a")
    );

    // /status and /metrics say where state lives and whether Redis is reachable …
    let status = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/status"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let doc = status(b.clone()).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    for store in ["cooldowns", "sessions"] {
        assert_eq!(doc["state"][store]["kind"], "redis", "{doc}");
        assert_eq!(doc["state"][store]["connected"], true, "{doc}");
        assert_eq!(doc["state"][store]["location"], url.as_str(), "{doc}");
    }
    assert_eq!(doc["state"]["sessions"]["count"], 1, "{doc}");
    // … and when Redis goes away, say so while B keeps serving the session as pinned.
    drop(redis);
    let start = Instant::now();
    loop {
        let doc = status(b.clone()).await;
        if doc["state"]["cooldowns"]["connected"] == false
            && doc["state"]["sessions"]["connected"] == false
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "B never noticed Redis was gone: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = client
        .get(format!("{b}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("backstop_state_store_up{store=\"cooldowns\",kind=\"redis\"} 0\n")
            && metrics.contains("backstop_state_store_up{store=\"sessions\",kind=\"redis\"} 0\n"),
        "{metrics}"
    );
    fake.clear();
    let resp = client
        .post(format!("{b}/v1/chat/completions"))
        .header("x-backstop-session", "chat-7")
        .json(&json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        fake.requests()[0].header("authorization"),
        Some("Bearer sk-b")
    );
}
