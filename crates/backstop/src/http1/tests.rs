use super::*;
use proptest::prelude::*;

/// Decode a chunked body fed in `pieces`, as a reader does over reads.
fn decode_pieces(pieces: &[&[u8]]) -> Result<(Vec<u8>, usize), &'static str> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = Bytes::new();
    let mut out = Vec::new();
    for piece in pieces {
        let mut joined = buf.to_vec();
        joined.extend_from_slice(piece);
        buf = Bytes::from(joined);
        loop {
            match decoder.decode(&mut buf)? {
                Step::Data(d) => {
                    assert!(!d.is_empty());
                    out.extend_from_slice(&d);
                }
                Step::More => break,
                Step::End => return Ok((out, buf.len())),
            }
        }
    }
    Err("unfinished")
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let body = b"5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nexpires: never\r\nx: y\r\n\r\n";
    assert_eq!(decode_pieces(&[body]), Ok((b"hello world".to_vec(), 0)));
    // Upper-case hex, no trailers, bytes after the end left alone.
    assert_eq!(
        decode_pieces(&[b"A\r\n0123456789\r\n0\r\n\r\nNEXT"]),
        Ok((b"0123456789".to_vec(), 4))
    );
}

#[test]
fn chunked_errors() {
    for bad in [
        &b"\r\n"[..],             // no size
        b"g\r\n",                 // not hex
        b"5\nhello\r\n0\r\n\r\n", // bare LF after the size
        b"5\r\nhelloX\r\n",       // no CRLF after the data
        b"1;a\nb\r\n",            // newline in an extension
        b"0\r\n\r\r",             // bad end
        b"10000000000000000\r\n", // 2^64: overflows
        b"fffffffffffffffff\r\n", // overflows
    ] {
        assert!(
            decode_pieces(&[bad]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Endless extensions and trailers are cut off.
    let mut ext = b"1;".to_vec();
    ext.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT + 10));
    assert_eq!(decode_pieces(&[&ext]), Err("chunk extensions over limit"));
    let mut trailers = b"0\r\n".to_vec();
    trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 10));
    assert_eq!(
        decode_pieces(&[&trailers]),
        Err("chunk trailers over limit")
    );
}

/// A chunked encoding of `parts` (each a chunk), with optional extensions and trailers.
fn encode(parts: &[Vec<u8>], ext: bool, trailers: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        out.extend_from_slice(format!("{:x}", p.len()).as_bytes());
        if ext {
            out.extend_from_slice(b" ;a=\"b\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if trailers {
        out.extend_from_slice(b"t: 1\r\nu: \r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

proptest! {
    /// Split into two reads at every byte boundary, and into many random reads: the
    /// same body comes out.
    #[test]
    fn chunked_split_anywhere(
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        ext in any::<bool>(),
        trailers in any::<bool>(),
        cuts in proptest::collection::vec(0usize..200, 0..8),
    ) {
        let wire = encode(&parts, ext, trailers);
        let whole: Vec<u8> = parts.concat();
        for at in 0..=wire.len() {
            let (a, b) = wire.split_at(at);
            prop_assert_eq!(decode_pieces(&[a, b]), Ok((whole.clone(), 0)));
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in cuts {
            pieces.push(&wire[from..c]);
            from = c;
        }
        pieces.push(&wire[from..]);
        prop_assert_eq!(decode_pieces(&pieces), Ok((whole, 0)));
    }
}

#[test]
fn tokens_and_the_last_coding() {
    assert!(has_token(b"keep-alive, Close", b"close"));
    assert!(has_token(b" close\t", b"close"));
    assert!(!has_token(b"closed, keep-alive", b"close"));
    assert!(!has_token(b"", b"close"));
    assert!(is_chunked(b"gzip, Chunked"));
    assert!(is_chunked(b"chunked"));
    assert!(!is_chunked(b"chunked, gzip"));
    assert!(!is_chunked(b""));
}

/// A short read forgets the read readiness (no read that would fail comes next); bytes
/// or a close that come later bring it back, a full read keeps it.
#[tokio::test]
async fn a_short_read_forgets_the_read_readiness() {
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (ours, _) = listener.accept().await.unwrap();
    let ready = |s: &tokio::net::TcpStream| {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(s.poll_read_ready(&mut cx), Poll::Ready(Ok(())))
    };
    peer.write_all(b"hello").await.unwrap();
    ours.readable().await.unwrap();
    let mut buf = bytes::BytesMut::with_capacity(64);
    assert_eq!(read_buf(&ours, &mut buf).unwrap(), 5);
    assert!(!ready(&ours), "a short read clears the readiness");
    // A read that fills the buffer keeps it: more may be waiting.
    peer.write_all(b"0123456789").await.unwrap();
    ours.readable().await.unwrap();
    let mut small = [0u8; 4];
    assert_eq!(read_buf(&ours, &mut &mut small[..]).unwrap(), 4);
    assert!(ready(&ours));
    let mut rest = bytes::BytesMut::with_capacity(64);
    assert_eq!(read_buf(&ours, &mut rest).unwrap(), 6);
    assert_eq!(&rest[..], b"456789");
    assert!(!ready(&ours));
    // Nothing to read: WouldBlock, as try_read_buf.
    let err = read_buf(&ours, &mut rest).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    // A close comes as readiness again, then a read of 0.
    drop(peer);
    ours.readable().await.unwrap();
    assert_eq!(read_buf(&ours, &mut rest).unwrap(), 0);
}
