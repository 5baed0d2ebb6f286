#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use axum::routing::{get, post};
use proptest::prelude::*;
use tokio::io::AsyncReadExt;

// ---- chunked bodies ----

/// Encode `chunks` as a chunked body, with an extension on every other size line and
/// `trailers` after the last chunk.
fn encode_chunked(chunks: &[Vec<u8>], ext: bool, trailers: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
        out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
        if ext && i % 2 == 0 {
            out.extend_from_slice(b" ;name=\"va;l\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for t in trailers {
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Decode `pieces` one after the other: the body, and the bytes used in all.
fn decode_pieces(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ()> {
    let mut d = ChunkedDecoder::default();
    let mut out = BytesMut::new();
    let mut used = 0;
    let mut pending = Vec::new();
    for p in pieces {
        pending.extend_from_slice(p);
        let n = d.decode(&pending, &mut out, usize::MAX - 1)?;
        used += n;
        pending.drain(..n);
    }
    Ok((out.to_vec(), used, d.done()))
}

#[test]
fn chunked_decodes_a_simple_body_and_leaves_what_follows() {
    let mut wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
    let len = wire.len();
    wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let (body, used, done) = decode_pieces(&[&wire]).unwrap();
    assert_eq!(body, b"hello world");
    assert_eq!(used, len);
    assert!(done);
}

#[test]
fn chunked_refuses_malformed_bodies() {
    for bad in [
        &b"x\r\nhello\r\n0\r\n\r\n"[..],
        b"\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5;ext\nhello\r\n",
        b"11111111111111111\r\n",
        b"5 x\r\nhello\r\n",
        b"0\r\n\rX",
    ] {
        assert!(
            decode_pieces(&[bad]).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn chunked_stops_past_the_limit() {
    let wire = encode_chunked(&[vec![b'a'; 100], vec![b'b'; 100]], false, &[]);
    let mut d = ChunkedDecoder::default();
    let mut out = BytesMut::new();
    let used = d.decode(&wire, &mut out, 50).unwrap();
    assert!(out.len() > 50);
    assert!(!d.done());
    assert!(used < wire.len());
}

proptest! {
    #[test]
    fn chunked_decodes_the_same_split_at_every_byte(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        ext in any::<bool>(),
        trailer in any::<bool>(),
    ) {
        let trailers: &[&str] = if trailer { &["x-t: 1", "y: two words"] } else { &[] };
        let wire = encode_chunked(&chunks, ext, trailers);
        let want: Vec<u8> = chunks.concat();
        for at in 0..=wire.len() {
            let (got, used, done) = decode_pieces(&[&wire[..at], &wire[at..]]).unwrap();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(used, wire.len());
            prop_assert!(done);
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let (got, _, done) = decode_pieces(&bytes).unwrap();
        prop_assert_eq!(&got, &want);
        prop_assert!(done);
    }
}

// ---- heads ----

fn head_of(text: &str) -> Result<Option<(Head, usize)>, HeadError> {
    parse_head(text.as_bytes())
}

#[test]
fn heads_parse_with_hypers_rules() {
    let (h, len) = head_of("POST /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap()
        .unwrap();
    assert_eq!(len, 55);
    assert_eq!(h.body, BodyKind::Length(5));
    assert!(h.keep_alive);
    assert_eq!(h.request.uri().path(), "/v1/x");
    assert_eq!(h.request.headers()["host"], "a");

    let (h, _) = head_of("GET http://example.com/health HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.request.uri().path(), "/health");
    assert_eq!(h.request.uri().host(), Some("example.com"));

    let (h, _) = head_of("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive);
    assert_eq!(h.request.version(), Version::HTTP_10);
    let (h, _) = head_of("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.keep_alive);
    let (h, _) = head_of("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.keep_alive);

    // Chunked wins over Content-Length, and the connection closes after.
    let (h, _) =
        head_of("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(h.body, BodyKind::Chunked);
    assert!(!h.keep_alive);
    assert!(!h.request.headers().contains_key("content-length"));

    let (h, _) = head_of("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.expect_continue);

    assert!(head_of("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
}

#[test]
fn bad_heads_are_refused() {
    for bad in [
        "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "G@T / HTTP/1.1\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
    ] {
        assert_eq!(
            head_of(bad).err(),
            Some(HeadError::Malformed),
            "{bad:?} is malformed"
        );
    }
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    assert_eq!(
        head_of(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(),
        Some(HeadError::TooLarge)
    );
    let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
    assert_eq!(head_of(&long).err(), Some(HeadError::TooLarge));
    let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(head_of(&long).err(), Some(HeadError::TooLarge));
}

// ---- response heads ----

fn encoded(
    status: u16,
    headers: &[(&str, &str)],
    body: BodyLength,
    facts: ReqFacts,
) -> (String, Framing, bool) {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let mut dst = Vec::new();
    let (f, last) = encode_head(
        &mut dst,
        StatusCode::from_u16(status).unwrap(),
        &mut map,
        body,
        facts,
    );
    let text = String::from_utf8(dst).unwrap();
    // The date is the only moving part.
    let at = text.find("date: ").expect("a date");
    assert_eq!(text[at + 6..].len(), date::LEN + 4, "{text}");
    (format!("{}date: D\r\n\r\n", &text[..at]), f, last)
}

const KEEP: ReqFacts = ReqFacts {
    head: false,
    http10: false,
    keep_alive: true,
};

#[test]
fn response_heads_are_hypers() {
    let (t, f, last) = encoded(
        200,
        &[
            ("content-type", "application/json"),
            ("content-length", "2"),
        ],
        BodyLength::Known(2),
        KEEP,
    );
    assert_eq!(
        t,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: D\r\n\r\n"
    );
    assert_eq!((f, last), (Framing::Length(2), false));

    let (t, f, _) = encoded(
        200,
        &[("content-type", "text/event-stream")],
        BodyLength::Unknown,
        KEEP,
    );
    assert_eq!(
        t,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\ndate: D\r\n\r\n"
    );
    assert_eq!(f, Framing::Chunked);

    let (t, f, last) = encoded(
        404,
        &[("x-a", "1"), ("x-a", "2")],
        BodyLength::Known(5),
        ReqFacts {
            keep_alive: false,
            ..KEEP
        },
    );
    assert_eq!(
        t,
        "HTTP/1.1 404 Not Found\r\nx-a: 1\r\nx-a: 2\r\nconnection: close\r\ncontent-length: 5\r\ndate: D\r\n\r\n"
    );
    assert_eq!((f, last), (Framing::Length(5), true));

    // HEAD: the length is told, no body is sent.
    let (t, f, _) = encoded(
        200,
        &[("content-length", "7")],
        BodyLength::Empty,
        ReqFacts { head: true, ..KEEP },
    );
    assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ndate: D\r\n\r\n");
    assert_eq!(f, Framing::Length(0));

    // An empty body: a zero length.
    let (t, _, _) = encoded(204, &[], BodyLength::Empty, KEEP);
    assert_eq!(t, "HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n");
    let (t, _, _) = encoded(200, &[], BodyLength::Empty, KEEP);
    assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: D\r\n\r\n");

    // HTTP/1.0: no chunks; keep-alive only when asked.
    let ten = ReqFacts {
        http10: true,
        keep_alive: false,
        ..KEEP
    };
    let (t, f, last) = encoded(200, &[], BodyLength::Unknown, ten);
    assert_eq!(t, "HTTP/1.0 200 OK\r\ndate: D\r\n\r\n");
    assert_eq!((f, last), (Framing::Close, true));
    let (t, f, last) = encoded(
        200,
        &[],
        BodyLength::Known(3),
        ReqFacts {
            keep_alive: true,
            ..ten
        },
    );
    assert_eq!(
        t,
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 3\r\ndate: D\r\n\r\n"
    );
    assert_eq!((f, last), (Framing::Length(3), false));
}

#[test]
fn chunk_size_lines_are_hex() {
    let mut b = [0u8; 18];
    assert_eq!(chunk_size_line(0, &mut b), b"0\r\n");
    assert_eq!(chunk_size_line(255, &mut b), b"FF\r\n");
    assert_eq!(chunk_size_line(0x1234, &mut b), b"1234\r\n");
}

// ---- over a socket ----

struct DropFlag(Option<tokio::sync::oneshot::Sender<()>>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

type Dropped = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>;

async fn start(dropped: Dropped) -> (String, tokio::sync::oneshot::Sender<()>) {
    let router = Router::new()
        .route("/hello", get(|| async { "hi" }))
        .route(
            "/echo",
            post(|body: Body| async move {
                match axum::body::to_bytes(body, 100).await {
                    Ok(b) => Response::new(Body::from(b)),
                    Err(_) => {
                        let mut r = Response::new(Body::from("too large"));
                        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                        r
                    }
                }
            }),
        )
        .route(
            "/stream",
            get(move || {
                let flag = DropFlag(dropped.lock().unwrap().take());
                async move {
                    let s = futures_util::stream::unfold((0, flag), |(i, flag)| async move {
                        if i > 0 {
                            std::future::pending::<()>().await;
                        }
                        Some((
                            Ok::<_, io::Error>(Bytes::from("data: one\n\n")),
                            (i + 1, flag),
                        ))
                    });
                    Body::from_stream(s)
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shared = Shared {
        router,
        direct: None,
        max_body: Arc::new(|| 100),
    };
    tokio::spawn(serve(listener, shared, async move {
        let _ = stop_rx.await;
    }));
    (addr.to_string(), stop_tx)
}

async fn read_until(sock: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    let wait = async {
        while !String::from_utf8_lossy(buf).contains(needle) {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("an answer in time");
}

async fn read_to_end(sock: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf))
        .await
        .expect("the end in time")
        .unwrap();
    String::from_utf8(buf).unwrap()
}

fn no_flag() -> Dropped {
    Arc::new(std::sync::Mutex::new(None))
}

#[tokio::test]
async fn expect_continue_head_http10_and_pipelining() {
    let (addr, _stop) = start(no_flag()).await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sock.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    read_until(&mut sock, &mut buf, "\r\n\r\n").await;
    assert_eq!(buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    sock.write_all(b"hello").await.unwrap();
    buf.clear();
    read_until(&mut sock, &mut buf, "hello").await;
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 5\r\n"), "{text}");

    // HEAD: the head only, then the connection goes on (pipelined GET in the same write).
    sock.write_all(b"HEAD /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut sock).await;
    let second = text
        .find("HTTP/1.1 200 OK\r\n")
        .and_then(|i| text[i + 1..].find("HTTP/1.1 200 OK\r\n"));
    assert!(second.is_some(), "two answers: {text}");
    assert!(text.contains("content-length: 2\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhi"), "{text}");
    assert_eq!(text.matches("hi").count(), 1, "HEAD got no body: {text}");
    assert!(text.contains("connection: close\r\n"), "{text}");

    // HTTP/1.0: answered in 1.0 and closed.
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"GET /hello HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut sock).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.ends_with("hi"), "{text}");

    // A chunked body is decoded.
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut sock).await;
    assert!(text.ends_with("\r\n\r\nabcde"), "{text}");
}

#[tokio::test]
async fn bad_and_oversize_requests() {
    let (addr, _stop) = start(no_flag()).await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut sock).await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");

    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
    sock.write_all(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let text = read_to_end(&mut sock).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");

    // Over the body limit: the handler's own answer, then the connection closes.
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let chunk = format!("3c\r\n{}\r\n", "x".repeat(60));
    sock.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            chunk.repeat(5)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let text = read_to_end(&mut sock).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut sock).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.ends_with("too large"), "{text}");
}

#[tokio::test]
async fn a_client_gone_mid_stream_drops_the_body_at_once() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (addr, _stop) = start(Arc::new(std::sync::Mutex::new(Some(tx)))).await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut sock, &mut buf, "data: one\n\n\r\n").await;
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.contains("\r\nB\r\ndata: one\n\n\r\n"), "{text}");
    drop(sock);
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the body was dropped when the client left")
        .unwrap();
}

#[tokio::test]
async fn h2c_prior_knowledge_still_works() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (addr, _stop) = start(no_flag()).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "hi");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let router = Router::new().route("/hello", get(|| async { "hi" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shared = Shared {
        router,
        direct: None,
        max_body: Arc::new(|| 100),
    };
    let server = tokio::spawn(serve(listener, shared, async move {
        let _ = stop_rx.await;
    }));
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut sock, &mut buf, "hi").await;
    stop_tx.send(()).unwrap();
    // The idle keep-alive connection is closed, and the server returns.
    let rest = read_to_end(&mut sock).await;
    assert_eq!(rest, "");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stopped")
        .unwrap();
}

/// The common names' shortcut gives what `HeaderName::from_bytes` gives, for any case
/// and for names one byte away from them.
#[test]
fn header_names_as_from_bytes() {
    let known = [
        "host",
        "accept",
        "x-api-key",
        "user-agent",
        "connection",
        "content-type",
        "authorization",
        "content-length",
        "accept-encoding",
        "anthropic-version",
        "transfer-encoding",
        "expect",
        "x-backstop-session",
    ];
    let check = |name: &[u8]| {
        let ours = header_name(name);
        let theirs = HeaderName::from_bytes(name).ok();
        assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(name));
        if let (Some(a), Some(b)) = (ours, theirs) {
            assert_eq!(a.as_str(), b.as_str());
        }
    };
    let mut rng = fastrand::Rng::with_seed(5);
    for name in known {
        for _ in 0..200 {
            let mut b: Vec<u8> = name
                .bytes()
                .map(|c| {
                    if rng.bool() {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            check(&b);
            let i = rng.usize(0..b.len());
            match rng.u8(0..3) {
                0 => b[i] = rng.u8(..),
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, rng.u8(..)),
            }
            check(&b);
        }
    }
    check(b"");
    check("h\u{e9}st".as_bytes());
}

proptest! {
    /// The word-at-a-time comparison of names is `eq_ignore_ascii_case`, on any bytes.
    #[test]
    fn token_is_as_eq_ignore_ascii_case(
        name in proptest::collection::vec(prop_oneof![
            Just(b'-'), Just(b'\r'), Just(b'\r' | 0x80), Just(b'-' | 0x80), Just(b'@'), Just(b'`'),
            b'a'..=b'z', b'A'..=b'Z', any::<u8>(),
        ], 0..20),
        known in "[a-z-]{0,20}",
    ) {
        let known = known.as_bytes();
        prop_assert_eq!(token_is(&name, known), name.eq_ignore_ascii_case(known));
        // The same length, mostly the same bytes.
        let mut near: Vec<u8> = known.to_vec();
        for (i, b) in name.iter().enumerate().take(near.len()) {
            if b % 3 == 0 {
                near[i] = *b;
            } else if b % 3 == 1 {
                near[i] = near[i].to_ascii_uppercase();
            }
        }
        prop_assert_eq!(token_is(&near, known), near.eq_ignore_ascii_case(known));
    }
}

/// The chat routes' targets, parsed once, are what parsing them gives.
#[test]
fn chat_uris_are_parsed_ones() {
    for path in ["/v1/chat/completions", "/chat/completions", "/v1/messages"] {
        let ours = chat_uri(path).unwrap();
        let theirs = Uri::from_maybe_shared(Bytes::from(path)).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(ours.to_string(), theirs.to_string());
        assert_eq!(ours.path_and_query(), theirs.path_and_query());
        assert_eq!(ours.query(), None);
    }
    for other in [
        "/v1/messages?x=1",
        "/V1/messages",
        "/v1/chat/completions/",
        "*",
    ] {
        assert!(chat_uri(other).is_none());
    }
}
