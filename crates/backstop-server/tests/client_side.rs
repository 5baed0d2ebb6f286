//! The client side of the gateway: what a client's connection and request shape do
//! (a client that goes away mid-stream, encoded bodies, auth headers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An OpenAI-style upstream on a raw socket: it answers one request with the head of a
/// stream (a role chunk and the content `one`), then stays silent, and reports when the
/// gateway closes the connection.
async fn silent_after_first_token() -> (String, tokio::sync::oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = Vec::new();
        // The request: its head, then its body (content-length).
        loop {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before sending its request");
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if seen.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let chunk = |delta: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
            )
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{}{}",
            chunk(r#"{"role":"assistant","content":""}"#),
            chunk(r#"{"content":"one"}"#),
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        // Silent from now on: wait for the gateway to close its side.
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(());
    });
    (base, closed_rx)
}

/// A gateway whose chain is the silent upstream (first) and the Anthropic fake, and the
/// upstream's report of its connection closing.
async fn behind_a_silent_upstream(fakes: &Fakes) -> (Gateway, tokio::sync::oneshot::Receiver<()>) {
    let (silent, upstream_closed) = silent_after_first_token().await;
    let gw = Gateway::start(&format!(
        r#"{{
  server: {{ api_keys: ["$CLIENT_KEY"] }},
  providers: {{
    slow: {{ api: "openai", base_url: "{silent}", auth: [{{ profile: "main", key: "$OA_KEY" }}], models: ["gpt-4o"] }},
    an: {{ api: "anthropic", base_url: "{an}", auth: [{{ profile: "main", key: "$AN_KEY" }}], models: ["claude-sonnet-4-5"] }},
  }},
  agents: {{ defaults: {{ model: {{ primary: "slow/gpt-4o", fallbacks: ["an/claude-sonnet-4-5"] }} }} }},
  timeouts: {{ connect_ms: 1000, first_token_ms: 3000, idle_ms: 4000, request_ms: 20000 }},
}}"#,
        an = fakes.an.anthropic_base_url(),
    ))
    .await;
    (gw, upstream_closed)
}

/// Read a stream until its first content (`one`) has come.
async fn read_first_content(resp: &mut reqwest::Response) {
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"one\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("the first content in time")
            .unwrap()
            .expect("the stream goes on");
        got.extend_from_slice(&chunk);
    }
}

/// Nothing was rescued for a client that is gone, and nothing cools down.
async fn nothing_rescued_nothing_cooling(fakes: &Fakes, gw: &Gateway) {
    assert!(
        fakes.an.requests().is_empty(),
        "a rescue ran for a client that went away"
    );
    let cooling = send(gw.get("/v1/cooldowns")).await;
    assert_eq!(cooling.status, 200);
    assert_eq!(
        cooling.json()["cooldowns"],
        serde_json::json!([]),
        "a client that went away cooled down the provider"
    );
}

#[tokio::test]
async fn a_client_gone_mid_stream_closes_the_upstream_at_once_and_cools_nothing() {
    let fakes = Fakes::start();
    let (gw, upstream_closed) = behind_a_silent_upstream(&fakes).await;

    let mut resp = gw
        .openai(&openai_body("default", "hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    read_first_content(&mut resp).await;
    // The client goes away with the upstream still silent.
    drop(resp);

    // The upstream request is cancelled at once, not after `idle_ms` (4 s).
    tokio::time::timeout(Duration::from_millis(2000), upstream_closed)
        .await
        .expect("the gateway closed the upstream connection when the client left")
        .unwrap();
    // Nothing was rescued for a client that is gone, and nothing cools down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    nothing_rescued_nothing_cooling(&fakes, &gw).await;
}

/// The same over HTTP/2 (h2c): the client resets its stream and keeps its connection.
#[tokio::test]
async fn an_h2_client_resetting_its_stream_closes_the_upstream_at_once_and_cools_nothing() {
    let fakes = Fakes::start();
    let (gw, upstream_closed) = behind_a_silent_upstream(&fakes).await;

    client();
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&openai_body("default", "hi", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    read_first_content(&mut resp).await;
    // The client resets the stream (its connection stays) with the upstream still silent.
    drop(resp);

    tokio::time::timeout(Duration::from_millis(2000), upstream_closed)
        .await
        .expect("the gateway closed the upstream connection when the client reset its stream")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    nothing_rescued_nothing_cooling(&fakes, &gw).await;
    drop(h2);
}

#[tokio::test]
async fn a_compressed_body_is_415_in_the_clients_format() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    // A gzip stream (any bytes that are not JSON will do: the gateway must not read them as JSON).
    let gz: &[u8] = &[0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03];
    let got = send(
        gw.request(reqwest::Method::POST, "/v1/chat/completions")
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(gz.to_vec()),
    )
    .await;
    got.openai_error(415, "invalid_request_error", &["content-encoding", "gzip"]);
    let got = send(
        gw.request(reqwest::Method::POST, "/v1/messages")
            .header("x-api-key", CLIENT_KEY)
            .header("content-type", "application/json")
            .header("content-encoding", "br")
            .body(gz.to_vec()),
    )
    .await;
    got.anthropic_error(415, "invalid_request_error", &["content-encoding", "br"]);
    // `identity` is no encoding at all.
    let got = send(
        gw.openai(&openai_body("default", "hi", false))
            .header("content-encoding", "identity"),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(fakes.all_requests().len(), 1);
}

/// The Anthropic SDK's `client.beta.messages.create(..., betas=[…])` posts to
/// `/v1/messages?beta=true` with an `anthropic-beta` header: an Anthropic upstream must
/// get the header (it switches features on: a 1M context, new tool types …); an
/// OpenAI-style upstream never sees it.
#[tokio::test]
async fn anthropic_beta_reaches_anthropic_upstreams_only() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;
    let beta = "context-1m-2025-08-07,interleaved-thinking-2025-05-14";
    for stream in [false, true] {
        let got = send(
            gw.request(reqwest::Method::POST, "/v1/messages?beta=true")
                .header("x-api-key", CLIENT_KEY)
                .header("anthropic-version", "2023-06-01")
                .header("anthropic-beta", beta)
                .json(&anthropic_body("solo-claude", "hi", stream)),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
        let seen = fakes.an.requests();
        let last = seen.last().unwrap();
        assert_eq!(
            last.headers
                .iter()
                .find(|(k, _)| k == "anthropic-beta")
                .map(|(_, v)| v.as_str()),
            Some(beta),
            "the Anthropic upstream did not get the client's anthropic-beta: {:?}",
            last.headers
        );
    }
    // Served by an OpenAI-style model: no Anthropic header goes there.
    let got = send(
        gw.request(reqwest::Method::POST, "/v1/messages?beta=true")
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-beta", beta)
            .json(&anthropic_body("solo", "hi", false)),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let oa = fakes.oa.requests();
    assert_eq!(oa.len(), 1);
    assert!(!oa[0].headers.iter().any(|(k, _)| k == "anthropic-beta"));
}
