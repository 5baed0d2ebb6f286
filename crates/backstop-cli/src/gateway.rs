//! Where `cooldowns` and `status` find the state: a running gateway at `--url`
//! (default: `http://<server.listen>`), else the state dir.

use anyhow::{Context, Result, anyhow};
use backstop::config::{self, Config, ProcessEnv};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the state commands need from the config.
pub struct Target {
    /// The gateway's base URL, without a trailing slash.
    pub url: String,
    /// `server.api_keys[0]`, sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    pub state_dir: PathBuf,
    /// The loaded config, when there was one.
    pub config: Option<Config>,
}

/// Load the config for a state command. An explicit `--config` must be valid; without one,
/// a config that cannot be built (e.g. no provider key is set) falls back to the defaults:
/// `$BACKSTOP_STATE_DIR` or `~/.backstop`, and `127.0.0.1:8787`.
pub fn target(config_path: Option<&Path>, url: Option<&str>) -> Result<Target> {
    let config = match config::load(config_path, &ProcessEnv) {
        Ok(c) => Some(c),
        Err(e) if config_path.is_some() => return Err(anyhow!("invalid config:\n{e}")),
        Err(_) => None,
    };
    let (listen, api_key, state_dir) = match &config {
        Some(c) => (
            c.server.listen,
            c.server.api_keys.first().map(|k| k.expose().to_owned()),
            c.state.dir.clone(),
        ),
        None => (
            "127.0.0.1:8787".parse().context("default listen address")?,
            None,
            default_state_dir(),
        ),
    };
    let url = match url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let mut addr = listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    Ok(Target {
        url,
        api_key,
        state_dir,
        config,
    })
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("BACKSTOP_STATE_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::home_dir()
            .map(|h| h.join(".backstop"))
            .unwrap_or_else(|| PathBuf::from(".backstop")),
    }
}

/// A gateway's answer.
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Call the gateway. `Ok(None)` when nothing answers at the URL (connection refused or
/// timed out connecting): the caller then uses the state dir.
pub fn call(target: &Target, method: reqwest::Method, path: &str) -> Result<Option<Reply>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        let mut req = client.request(method, format!("{}{path}", target.url));
        if let Some(k) = &target.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Ok(None),
            Err(e) => return Err(anyhow!("gateway at {}: {e}", target.url)),
        };
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("gateway at {}", target.url))?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok(Some(Reply { status, body }))
    })
}

/// The message of an error reply in OpenAI's shape, else the status.
pub fn error_message(reply: &Reply) -> String {
    message_of(reply.status, &reply.body)
}

/// The message of an error body in OpenAI's shape, else the status.
pub fn message_of(status: u16, body: &serde_json::Value) -> String {
    body["error"]["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {status}"), str::to_owned)
}

/// "in 4m 12s", "now", "3s ago".
pub fn in_how_long(until_ms: u64, now_ms: u64) -> String {
    if until_ms <= now_ms {
        return "now".into();
    }
    let s = (until_ms - now_ms).div_ceil(1000);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    let text = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    };
    format!("in {text}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_well() {
        use super::in_how_long;
        assert_eq!(in_how_long(1_000, 2_000), "now");
        assert_eq!(in_how_long(2_500, 1_000), "in 2s");
        assert_eq!(in_how_long(253_000, 1_000), "in 4m 12s");
        assert_eq!(in_how_long(7_201_000, 1_000), "in 2h 0m");
        assert_eq!(in_how_long(90_000_000, 0), "in 1d 1h");
    }
}
