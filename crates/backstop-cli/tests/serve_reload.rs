//! `backstop serve` and hot reload: a reload may not open a gateway that listens beyond
//! loopback (PRODUCT §6: listening beyond loopback without keys is refused unless
//! explicitly allowed).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_backstop");

fn config_text(state: &Path, api_keys: &str, extra: &str) -> String {
    format!(
        r#"{{ server: {{ listen: "0.0.0.0:0", {api_keys} {extra} }},
             providers: {{ ollama: {{ models: ["llama3.2"] }} }},
             state: {{ dir: "{}" }} }}"#,
        state.display()
    )
}

struct Gateway {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
}

impl Gateway {
    fn start(config: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("BACKSTOP_STATE_DIR")
            .env("BACKSTOP_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let url = line.strip_prefix("listening on http://").unwrap();
        let port = url.rsplit_once(':').unwrap().1;
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Gateway {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        }
    }

    /// Status of `GET path` with an optional bearer key.
    fn get(&self, path: &str, key: Option<&str>) -> u16 {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Wait for a log line containing `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replace a file the running gateway watches as an editor saving it would (write a new
/// file, rename it over the old): its mtime poll must never read a half-written file,
/// which it would reject as a config with no providers (and the test would read that
/// rejection for the one it waits for).
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "backstop-serve-{tag}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn a_reload_that_drops_the_client_keys_of_an_exposed_gateway_is_rejected() {
    let dir = temp_dir("exposed");
    let state = dir.join("state");
    let config = dir.join("backstop.json5");
    let key = "sk-client-test-key-0001";
    std::fs::write(
        &config,
        config_text(&state, r#"api_keys: ["$TEST_CLIENT_KEY"],"#, ""),
    )
    .unwrap();
    let gw = Gateway::start(&config, &[("TEST_CLIENT_KEY", key)]);
    assert_eq!(gw.get("/v1/models", None), 401);
    assert_eq!(gw.get("/v1/models", Some(key)), 200);

    // The new file is valid on its own, but without keys the 0.0.0.0 listener is open.
    replace_file(&config, &config_text(&state, "", ""));
    gw.hup();
    let line = gw.wait_log("config reload rejected");
    assert!(line.contains("without client keys"), "{line}");
    assert_eq!(gw.get("/v1/models", None), 401);
    assert_eq!(gw.get("/v1/models", Some(key)), 200);

    // Explicitly allowed in the new file: accepted.
    replace_file(
        &config,
        &config_text(&state, "", "allow_unauthenticated: true,"),
    );
    gw.hup();
    gw.wait_log("config reloaded");
    assert_eq!(gw.get("/v1/models", None), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn human_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = temp_dir("plain");
    let state = dir.join("state");
    let config = dir.join("backstop.json5");
    let key = "sk-client-test-key-0002";
    std::fs::write(
        &config,
        config_text(&state, r#"api_keys: ["$TEST_CLIENT_KEY"],"#, ""),
    )
    .unwrap();
    let gw = Gateway::start(
        &config,
        &[("TEST_CLIENT_KEY", key), ("BACKSTOP_LOG_FORMAT", "human")],
    );
    let line = gw.wait_log("backstop listening on");
    assert!(
        !line.contains('\u{1b}'),
        "escape codes in a piped log: {line:?}"
    );
    assert!(line.contains("INFO"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
