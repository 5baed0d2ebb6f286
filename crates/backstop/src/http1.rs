//! HTTP/1.1 pieces shared by Backstop's own client (upstreams, `provider`) and server
//! (clients, `backstop-server`): the chunked transfer coding's decoder, and the reading
//! of the header values that frame a message, and a socket read that forgets a spent
//! read readiness.

use bytes::{Buf, BufMut, Bytes};
use std::io;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Chunk-size line extensions, at most (hostile input is cut off).
const MAX_CHUNK_EXT: usize = 16 * 1024;
/// Trailer bytes, at most.
const MAX_TRAILERS: usize = 64 * 1024;

/// `try_read_buf`, and after a short read (fewer bytes than `buf` had room for) the
/// socket's read readiness is forgotten, as tokio's own `poll_read` does: the next wait
/// for readability waits for the reactor's next event instead of returning at once for
/// a read that fails with `WouldBlock`. Sound with epoll's edge-triggered events: bytes
/// (or a close) coming after this read bring a new event, and one that came while it
/// read keeps the readiness (tokio compares the readiness's tick).
pub fn read_buf<B: BufMut>(stream: &TcpStream, buf: &mut B) -> io::Result<usize> {
    let mut got = None;
    let res = stream.try_io(Interest::READABLE, || {
        let room = buf.chunk_mut().len();
        let n = stream.try_read_buf(buf)?;
        if n > 0 && n < room {
            got = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (res, got) {
        (_, Some(n)) => Ok(n),
        (res, None) => res,
    }
}

/// A comma-separated header value (`Connection`) holds `token`, in any case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The last coding of a `Transfer-Encoding` value is `chunked`.
pub fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A chunked body's decoder (RFC 9112 §7.1) that takes its input in any pieces: chunk
/// extensions and trailers are read and dropped, sizes that overflow and endless
/// extensions or trailers are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder(Chunked);

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder(Chunked::Size {
            size: 0,
            digits: false,
        })
    }
}

impl ChunkedDecoder {
    /// Decode from the front of `buf` as far as it goes: the next data (a slice of
    /// `buf`, taken off it), `More` when the next byte has not come, `End` after the
    /// last chunk and its trailers (what follows stays in `buf`).
    pub fn decode(&mut self, buf: &mut Bytes) -> Result<Step, &'static str> {
        decode_chunked(&mut self.0, buf)
    }
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size {
        size: u64,
        digits: bool,
    },
    SizeLws {
        size: u64,
    },
    Extension {
        size: u64,
        len: usize,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    EndCr {
        trailers: usize,
    },
    Trailer {
        trailers: usize,
    },
    TrailerLf {
        trailers: usize,
    },
    EndLf,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next piece of the body (never empty).
    Data(Bytes),
    /// The next byte has not come.
    More,
    /// After the last chunk and its trailers.
    End,
}

/// Decode a chunked body from `buf` as far as it goes: the next data, `More` when the
/// next byte has not come, `End` after the last chunk and trailers.
fn decode_chunked(state: &mut Chunked, buf: &mut Bytes) -> Result<Step, &'static str> {
    loop {
        if let Chunked::Data(left) = state {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            *left -= n as u64;
            if *left == 0 {
                *state = Chunked::DataCr;
            }
            return Ok(Step::Data(buf.split_to(n)));
        }
        let Some(&b) = buf.first() else {
            return Ok(Step::More);
        };
        buf.advance(1);
        *state = match *state {
            Chunked::Size { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    let size = size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(d)))
                        .ok_or("invalid chunk size: overflow")?;
                    Chunked::Size { size, digits: true }
                }
                _ if !digits => return Err("invalid chunk size line: missing size digit"),
                b'\t' | b' ' => Chunked::SizeLws { size },
                b';' => Chunked::Extension { size, len: 0 },
                b'\r' => Chunked::SizeLf { size },
                _ => return Err("invalid chunk size line: invalid size"),
            },
            Chunked::SizeLws { size } => match b {
                b'\t' | b' ' => Chunked::SizeLws { size },
                b';' => Chunked::Extension { size, len: 0 },
                b'\r' => Chunked::SizeLf { size },
                _ => return Err("invalid chunk size linear white space"),
            },
            Chunked::Extension { size, len } => match b {
                b'\r' => Chunked::SizeLf { size },
                b'\n' => return Err("invalid chunk extension contains newline"),
                _ if len >= MAX_CHUNK_EXT => return Err("chunk extensions over limit"),
                _ => Chunked::Extension { size, len: len + 1 },
            },
            Chunked::SizeLf { size } => match b {
                b'\n' if size == 0 => Chunked::EndCr { trailers: 0 },
                b'\n' => Chunked::Data(size),
                _ => return Err("invalid chunk size LF"),
            },
            Chunked::DataCr => match b {
                b'\r' => Chunked::DataLf,
                _ => return Err("invalid chunk body CR"),
            },
            Chunked::DataLf => match b {
                b'\n' => Chunked::Size {
                    size: 0,
                    digits: false,
                },
                _ => return Err("invalid chunk body LF"),
            },
            Chunked::EndCr { trailers } => match b {
                b'\r' => Chunked::EndLf,
                _ => Chunked::Trailer {
                    trailers: trailers + 1,
                },
            },
            Chunked::Trailer { trailers } => match b {
                b'\r' => Chunked::TrailerLf { trailers },
                _ if trailers >= MAX_TRAILERS => return Err("chunk trailers over limit"),
                _ => Chunked::Trailer {
                    trailers: trailers + 1,
                },
            },
            Chunked::TrailerLf { trailers } => match b {
                b'\n' => Chunked::EndCr { trailers },
                _ => return Err("invalid trailer end LF"),
            },
            Chunked::EndLf => match b {
                b'\n' => return Ok(Step::End),
                _ => return Err("invalid chunk end LF"),
            },
            Chunked::Data(_) => *state,
        };
    }
}

#[cfg(test)]
mod tests;
