//! Hot reload: a changed config file is swapped in whole, breaker state carries over, and a
//! bad file is rejected whole while the old config keeps serving.
#![allow(clippy::unwrap_used)]

use backstop::clock::SystemClock;
use backstop::config::{self, MapEnv};
use backstop::failover::Reason;
use backstop::state::MemoryStore;
use backstop_server::AppState;
use backstop_server::reload::{self, Loader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write(path: &PathBuf, agents: &str, extra: &str) {
    let text = format!(
        r#"{{
          providers: {{ oa: {{ api: "openai", base_url: "http://127.0.0.1:9/v1", auth: [{{ profile: "a", key: "k-aaaaaaaaaaaaaaaa" }}], models: ["m1"] }} }},
          agents: {{ defaults: {{ model: {{ primary: "oa/m1", fallbacks: [] }} }}, list: [{agents}] }},
          {extra}
        }}"#
    );
    // Written beside and renamed over, as an editor saves: the gateway's poll never
    // reads a half-written file (it would reject it and the test could see that).
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn models(url: &str) -> Vec<String> {
    let v: serde_json::Value = reqwest::get(format!("{url}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_good_file_is_swapped_in_and_a_bad_one_is_rejected_whole() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!(
        "backstop-reload-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("backstop.json5");
    write(&path, "", "");
    let env = MapEnv::new();
    let first = config::load(Some(&path), &env).unwrap();
    let state = Arc::new(
        AppState::with_state(
            Arc::new(first),
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let listener = backstop_server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(backstop_server::serve_state(
        state.clone(),
        listener,
        std::future::pending(),
    ));
    let p = path.clone();
    let loader: Loader =
        Arc::new(move || config::load(Some(&p), &MapEnv::new()).map_err(|e| e.to_string()));
    reload::spawn(
        state.clone(),
        loader.clone(),
        Some(path.clone()),
        Duration::from_millis(50),
    );
    assert_eq!(models(&url).await, ["default", "oa/m1"]);
    // A key cooling down before the reload…
    state
        .engine()
        .cooldowns
        .on_failure("oa", "a", "m1", Reason::RateLimit, None);

    // A good new file is picked up by the watcher.
    write(&path, r#"{ id: "extra", model: { primary: "oa/m1" } }"#, "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !models(&url).await.contains(&"extra".to_string()) {
        assert!(Instant::now() < deadline, "the new config never went live");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // …is still cooling after it: breaker state of targets that still exist is kept.
    assert!(
        state
            .engine()
            .cooldowns
            .usable_at("oa", "a", "m1")
            .is_some()
    );

    // A bad file is rejected whole: the old config keeps serving.
    write(
        &path,
        r#"{ id: "broken", model: { primary: "nope/m1" } }"#,
        "retyr: {},",
    );
    assert!(!reload::reload_now(&state, &loader, "test"));
    let ids = models(&url).await;
    assert!(ids.contains(&"extra".to_string()), "{ids:?}");
    assert!(!ids.contains(&"broken".to_string()), "{ids:?}");
    assert!(
        state
            .engine()
            .cooldowns
            .usable_at("oa", "a", "m1")
            .is_some()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
