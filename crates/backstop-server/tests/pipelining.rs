//! HTTP/1.1 pipelining (RFC 9112 §9.3.2): several requests written at once on one
//! connection are all answered, in order, by the gateway and by the fake provider.
//! The client keeps its sending side open: a client that half-closes it with a request
//! in flight is taken as gone (hyper's default, README "Using it"), so a pipelining
//! probe that sends FIN after its requests loses the last answer by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse one complete response (content-length or chunked) from the front of `buf`:
/// the response and the bytes it took, or `None` while it is incomplete.
fn parse_one(buf: &[u8]) -> Option<(Response, usize)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).expect("the head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "not a status line: {status_line:?}"
    );
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut at = head_end + 4;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size_text = std::str::from_utf8(&buf[at..line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|e| panic!("bad chunk size {size_text:?}: {e}"));
            at = line_end + 2;
            if size == 0 {
                // No trailers expected: the empty line ends the message.
                if buf.len() < at + 2 {
                    return None;
                }
                assert_eq!(&buf[at..at + 2], b"\r\n", "trailers after the last chunk");
                at += 2;
                break;
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else {
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("a response without length: {head}"));
        if buf.len() < at + len {
            return None;
        }
        body.extend_from_slice(&buf[at..at + len]);
        at += len;
    }
    Some((
        Response {
            status,
            headers,
            body,
        },
        at,
    ))
}

/// Write `requests` in one write on one connection (write side kept open, as a
/// pipelining client does) and read until `requests.len()` complete responses arrived.
async fn pipelined(base: &str, requests: &[Vec<u8>]) -> Vec<Response> {
    let addr = base.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(&requests.concat()).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read_all = async {
        while out.len() < requests.len() {
            while let Some((resp, used)) = parse_one(&buf) {
                out.push(resp);
                buf.drain(..used);
            }
            if out.len() == requests.len() {
                break;
            }
            let n = sock.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .unwrap_or_else(|_| panic!("responses did not come in time"));
    assert_eq!(
        out.len(),
        requests.len(),
        "pipelined requests answered: {out:?}; left over: {:?}",
        String::from_utf8_lossy(&buf)
    );
    out
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn post_chat(text: &str, key: Option<&str>) -> Vec<u8> {
    let body = serde_json::to_vec(&openai_body("gpt-4o", text, false)).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

const TEXTS: [&str; 3] = ["first", "second", "third"];

/// Three chat answers, in the order asked (the fake echoes the user's text).
fn assert_chat_answers_in_order(got: &[Response]) {
    for (resp, text) in got.iter().zip(TEXTS) {
        assert_eq!(resp.status, 200, "{resp:?}");
        let v = resp.json();
        assert_eq!(
            openai_answer_text(&v),
            format!("echo: {text}"),
            "answers out of order: {got:?}"
        );
    }
}

#[tokio::test]
async fn the_gateway_answers_pipelined_requests_in_order() {
    let fakes = Fakes::start();
    let gw = Gateway::start(&fakes.standard_config()).await;

    let got = pipelined(&gw.base, &[get("/health"), get("/health"), get("/health")]).await;
    let mut ids = Vec::new();
    for resp in &got {
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json(), serde_json::json!({"status": "ok"}));
        ids.push(resp.header("x-backstop-request-id").unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct requests answered: {ids:?}");

    let requests: Vec<Vec<u8>> = TEXTS
        .iter()
        .map(|t| post_chat(t, Some(CLIENT_KEY)))
        .collect();
    let got = pipelined(&gw.base, &requests).await;
    assert_chat_answers_in_order(&got);
    assert_eq!(fakes.oa.requests().len(), 3);
}

#[tokio::test]
async fn the_fake_answers_pipelined_requests_in_order() {
    let fakes = Fakes::start();
    let base = fakes.oa.url();
    let requests: Vec<Vec<u8>> = TEXTS.iter().map(|t| post_chat(t, Some(OA_KEY))).collect();
    let got = pipelined(&base, &requests).await;
    assert_chat_answers_in_order(&got);
    let got = pipelined(
        &base,
        &[
            get("/_fake/requests"),
            get("/_fake/requests"),
            get("/_fake/requests"),
        ],
    )
    .await;
    for resp in &got {
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json().as_array().map(Vec::len), Some(3));
    }
}
