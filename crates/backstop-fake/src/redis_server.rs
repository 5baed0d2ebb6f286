//! [`RedisServer`]: a throwaway `redis-server` on a loopback port, for the tests of
//! the Redis state and session stores (every crate's tests start their own).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on `127.0.0.1:<port>` without persistence, killed on drop.
///
/// ```no_run
/// let redis = backstop_fake::RedisServer::start().unwrap();
/// assert!(redis.url().starts_with("redis://127.0.0.1:"));
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// The loopback port it listens on.
    pub port: u16,
}

impl RedisServer {
    /// Start one on a free port and wait (up to 10 s) until it listens. The error says
    /// what to install when `redis-server` is not on PATH.
    pub fn start() -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(port)
    }

    /// Start one on `port` (e.g. again, after [`RedisServer::kill`]).
    pub fn start_on(port: u16) -> io::Result<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot run redis-server ({e}). The Redis tests need it on PATH \
                         (Debian: apt-get install redis-server; .ci/run installs it). \
                         To run the other tests without Redis: cargo test -- --skip redis_"
                    ),
                )
            })?;
        let mut server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                return Err(io::Error::other(format!(
                    "redis-server exited at start on port {port}: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "redis-server did not listen on {port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it now (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port, empty (no persistence).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        *self = Self::start_on(self.port)?;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
