//! What the Redis tests share: a throwaway `redis-server` and polling helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// A throwaway `redis-server` (from `backstop-fake`), panicking with what to install
/// when it cannot start.
pub struct RedisServer(backstop_fake::RedisServer);

impl RedisServer {
    pub fn start() -> Self {
        RedisServer(backstop_fake::RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
    }
    pub fn start_on(port: u16) -> Self {
        RedisServer(backstop_fake::RedisServer::start_on(port).unwrap_or_else(|e| panic!("{e}")))
    }
    pub fn url(&self) -> String {
        self.0.url()
    }
    pub fn kill(&mut self) {
        self.0.kill();
    }
    /// Start again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.0.restart().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Poll `check` (every millisecond) until it holds; how long it took, or `None` after `limit`.
pub async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
