use super::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HEAD: &[u8] = b"POST /v1/x HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n";

#[test]
fn content_length_values() {
    assert_eq!(parse_content_length(b"12"), Some(12));
    assert_eq!(parse_content_length(b"7, 7"), Some(7));
    assert_eq!(parse_content_length(b"7, 8"), None);
    assert_eq!(parse_content_length(b"-1"), None);
    assert_eq!(parse_content_length(b""), None);
    assert_eq!(parse_content_length(b"99999999999999999999"), None);
}

/// Read one request (head and `content-length` body); false when the connection closed.
async fn read_request(sock: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + len {
                return true;
            }
        }
    }
}

/// A server answering each request with the next of `replies` (a reply ending in
/// `None` closes its connection after it is written). Counts the connections it took.
async fn server(replies: Vec<(Vec<u8>, bool)>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
    let counted = Arc::clone(&conns);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let replies = Arc::clone(&replies);
            tokio::spawn(async move {
                while read_request(&mut sock).await {
                    let next = replies.lock().unwrap().pop_front();
                    let Some((reply, close)) = next else { return };
                    sock.write_all(&reply).await.unwrap();
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

fn uri(addr: SocketAddr) -> Uri {
    format!("http://{addr}/v1/x").parse().unwrap()
}

async fn send(client: &Client, addr: SocketAddr) -> Result<Response, TransportError> {
    client.send(&uri(addr), HEAD, b"{}", true, || true).await
}

async fn body(resp: &mut Response) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    while let Some(c) = resp.chunk().await? {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

fn idle(client: &Client) -> usize {
    client.pool.idle.lock().unwrap().conns.len()
}

#[tokio::test]
async fn content_length_body_and_reuse() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nContent-Type: text/plain\r\nx-a: 2\r\ncontent-type: x/y\r\n\r\nhello".to_vec();
    let (addr, conns) = server(vec![(ok.clone(), false), (ok, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    for _ in 0..2 {
        let mut resp = send(&client, addr).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.content_type(), Some(&b"text/plain"[..]));
        assert_eq!(resp.headers().get("x-a").unwrap(), "1");
        assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(resp.headers().len(), 5);
        resp.forget_head();
        assert!(resp.headers().is_empty());
        assert_eq!(resp.content_type(), None);
        assert_eq!(body(&mut resp).await.unwrap(), b"hello");
        assert_eq!(idle(&client), 1);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "the connection was reused");
}

#[tokio::test]
async fn chunked_body_in_pieces_and_reuse() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        for _ in 0..2 {
            read_request(&mut sock).await;
            for piece in [
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r"[..],
                b"\nhello\r\n6;e=1\r\n world\r",
                b"\n0\r\ntrailer: x\r\n",
                b"\r\n",
            ] {
                sock.write_all(piece).await.unwrap();
                sock.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        listener.accept().now_or_never_ok()
    });
    let client = Client::new(Duration::from_secs(5));
    for _ in 0..2 {
        let mut resp = send(&client, addr).await.unwrap();
        assert_eq!(body(&mut resp).await.unwrap(), b"hello world");
        assert_eq!(idle(&client), 1);
    }
    assert!(!server.await.unwrap(), "a second connection was opened");
}

/// A listener's pending connection, if any, without waiting.
trait NowOrNever {
    fn now_or_never_ok(self) -> bool;
}
impl<F: std::future::Future> NowOrNever for F {
    fn now_or_never_ok(self) -> bool {
        futures_util::FutureExt::now_or_never(self).is_some()
    }
}

#[tokio::test]
async fn close_delimited_body_is_not_reused() {
    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec();
    let (addr, _) = server(vec![(reply, true)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), b"until the end");
    assert_eq!(idle(&client), 0);
}

#[tokio::test]
async fn interim_100_is_skipped_and_204_has_no_body() {
    let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nx: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec();
    let (addr, _) = server(vec![(reply, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().is_empty());
    assert_eq!(idle(&client), 1, "an empty body ends at once");
    assert_eq!(resp.chunk().await.unwrap(), None);
}

#[tokio::test]
async fn connection_close_is_not_reused() {
    let ok =
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let (addr, conns) = server(vec![(ok.clone(), true), (ok, true)]).await;
    let client = Client::new(Duration::from_secs(5));
    for _ in 0..2 {
        let mut resp = send(&client, addr).await.unwrap();
        assert_eq!(body(&mut resp).await.unwrap(), b"ok");
        assert_eq!(idle(&client), 0);
    }
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http_1_0_is_not_reused() {
    let ok = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let (addr, _) = server(vec![(ok, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), b"ok");
    assert_eq!(idle(&client), 0);
}

#[tokio::test]
async fn dropped_mid_body_is_not_reused() {
    let part = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf".to_vec();
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    let (addr, conns) = server(vec![(part, false), (ok, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(resp.chunk().await.unwrap().as_deref(), Some(&b"half"[..]));
    drop(resp);
    assert_eq!(idle(&client), 0);
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), b"ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_server_is_resent_once() {
    // The first connection answers once, then closes as the second request arrives
    // (an idle close crossing it); the second connection answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_request(&mut first).await;
        first
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        read_request(&mut first).await;
        drop(first);
        let (mut second, _) = listener.accept().await.unwrap();
        read_request(&mut second).await;
        second
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew")
            .await
            .unwrap();
        let _ = second.read(&mut [0u8; 1]).await;
    });
    let client = Client::new(Duration::from_secs(5));
    let mut first = send(&client, addr).await.unwrap();
    assert_eq!(body(&mut first).await.unwrap(), b"ok");
    drop(first);
    let mut asked = 0;
    let mut resp = client
        .send(&uri(addr), HEAD, b"{}", true, || {
            asked += 1;
            true
        })
        .await
        .unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), b"new");
    assert_eq!(asked, 1);
    drop(client);
    drop(resp);
    server.await.unwrap();
}

#[tokio::test]
async fn an_idle_connection_found_closed_is_not_used() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    // Answers, keeps the connection alive, then the server closes it (no `connection:
    // close`): the pool sees the close before sending on it.
    let (addr, conns) = server(vec![(ok.clone(), true), (ok, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), b"ok");
    assert_eq!(idle(&client), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut asked = false;
    let mut resp = client
        .send(&uri(addr), HEAD, b"{}", true, || {
            asked = true;
            true
        })
        .await
        .unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), b"ok");
    assert!(!asked, "no request went out on the closed connection");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_head_too_large_is_an_error() {
    let mut reply = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    reply.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
    let (addr, _) = server(vec![(reply, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let err = send(&client, addr).await.unwrap_err();
    assert_eq!(
        err,
        TransportError::Reset("message head is too large".into())
    );
}

#[tokio::test]
async fn too_many_headers_is_an_error() {
    let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        reply.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
    }
    reply.extend_from_slice(b"content-length: 0\r\n\r\n");
    let (addr, _) = server(vec![(reply, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let err = send(&client, addr).await.unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");

    // Just under the limit is fine (past the first, small, header array).
    let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..MAX_HEADERS - 1 {
        reply.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
    }
    reply.extend_from_slice(b"content-length: 0\r\n\r\n");
    let (addr, _) = server(vec![(reply, false)]).await;
    let resp = send(&client, addr).await.unwrap();
    assert_eq!(resp.headers().len(), MAX_HEADERS);
}

#[tokio::test]
async fn a_chunk_size_overflow_is_a_reset() {
    let reply =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\n".to_vec();
    let (addr, _) = server(vec![(reply, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    let err = resp.chunk().await.unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
    assert_eq!(resp.chunk().await.unwrap(), None);
    assert_eq!(idle(&client), 0);
}

#[tokio::test]
async fn a_bad_head_is_a_reset() {
    for reply in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        let (addr, _) = server(vec![(reply.to_vec(), false)]).await;
        let client = Client::new(Duration::from_secs(5));
        let err = send(&client, addr).await.unwrap_err();
        assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
    }
}

#[tokio::test]
async fn a_large_body_arrives_whole() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut reply =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes();
    reply.extend_from_slice(&big);
    let (addr, _) = server(vec![(reply, false)]).await;
    let client = Client::new(Duration::from_secs(5));
    let mut resp = send(&client, addr).await.unwrap();
    assert_eq!(body(&mut resp).await.unwrap(), big);
    assert_eq!(idle(&client), 1);
}

#[tokio::test]
async fn pool_drops_old_idle_connections() {
    let pool = Pool::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (_server_side, _) = listener.accept().await.unwrap();
    let Some(old) = Instant::now().checked_sub(IDLE_TIMEOUT + Duration::from_secs(1)) else {
        return;
    };
    pool.idle
        .lock()
        .unwrap()
        .conns
        .push_back(Idle { stream, since: old });
    assert!(pool.checkout().is_none());
    assert!(pool.idle.lock().unwrap().conns.is_empty());
}

/// Two idle connections to a server holding them open: the pool gets both.
async fn two_idle(pool: &Arc<Pool>) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        servers.push(listener.accept().await.unwrap().0);
        pool.checkin(stream);
    }
    let b = servers.pop().unwrap();
    (servers.pop().unwrap(), b)
}

fn sweeping(pool: &Pool) -> (usize, bool) {
    let set = pool.idle.lock().unwrap();
    (set.conns.len(), set.sweeping)
}

#[tokio::test(start_paused = true)]
async fn the_sweep_closes_what_the_server_closed_without_waiting_for_a_request() {
    let pool = Arc::new(Pool::default());
    let (first, _second) = two_idle(&pool).await;
    assert_eq!(sweeping(&pool), (2, true));
    // Nothing changed: a sweep keeps both.
    tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
    assert_eq!(sweeping(&pool), (2, true));
    // The server closes one: the next sweep closes it on our side too, unasked.
    drop(first);
    tokio::time::sleep(SWEEP_EVERY).await;
    assert_eq!(sweeping(&pool), (1, true));
}

#[tokio::test(start_paused = true)]
async fn the_sweep_closes_old_connections_and_ends_with_the_last() {
    let pool = Arc::new(Pool::default());
    let (_a, _b) = two_idle(&pool).await;
    // Open but idle past IDLE_TIMEOUT: closed by a sweep, and the sweep ends.
    tokio::time::sleep(IDLE_TIMEOUT + SWEEP_EVERY).await;
    assert_eq!(sweeping(&pool), (0, false));
    // A later check-in starts a sweep again.
    let (_c, _d) = two_idle(&pool).await;
    assert_eq!(sweeping(&pool), (2, true));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_pool_ends_its_sweep() {
    let pool = Arc::new(Pool::default());
    let (_a, _b) = two_idle(&pool).await;
    let weak = Arc::downgrade(&pool);
    drop(pool);
    assert!(
        weak.upgrade().is_none(),
        "the sweep holds no strong reference"
    );
    tokio::time::sleep(SWEEP_EVERY * 2).await;
}
