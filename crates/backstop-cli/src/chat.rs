//! `backstop chat`: a terminal chat on one session (PRODUCT §5), through the running
//! gateway — or, when none answers, through one started in this process on the same
//! config — so what it shows is exactly what an agent on that session gets: the
//! failover, the session's pins and the one-line fallback notices.
//!
//! Commands: `/model [provider/model | auto]` shows or pins the session's model
//! (`auto` drops the pin), `/status` shows the chains, keys and the session's pins,
//! `/new` starts a new session, `/help`, `/quit`. Anything else is sent as a message.

use crate::gateway::{self, Target, message_of};
use anyhow::{Context, Result, anyhow, bail};
use backstop::sse::SseParser;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `backstop chat` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Config file (same lookup as `serve`): gives server.listen and server.api_keys, and
    /// the chains when no gateway is running.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The gateway to talk to. Default: http://<server.listen>; when nothing answers there,
    /// a gateway is started in this process on the config.
    #[arg(long)]
    url: Option<String>,
    /// The model to ask for: an agent id, `default`, or `provider/model`.
    #[arg(long, default_value = "default")]
    model: String,
    /// The session id (default: a new one).
    #[arg(long)]
    session: Option<String>,
}

const HELP: &str = "commands: /model [provider/model | auto]  show or pin this session's model \
                    (auto drops the pin) · /status  chains, keys and this session · /new  a new \
                    session · /quit";

struct Chat {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
    model: String,
    session: String,
    history: Vec<Value>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let target = gateway::target(args.config.as_deref(), args.url.as_deref())?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .context("cannot build the HTTP client")?;
    let base = runtime.block_on(find_gateway(&client, &target, args.url.is_some()))?;
    let mut chat = Chat {
        client,
        base,
        api_key: target.api_key.clone(),
        model: args.model,
        session: args.session.unwrap_or_else(new_session_id),
        history: Vec::new(),
    };
    outln!(
        "# session {} · model {} · {}",
        chat.session,
        chat.model,
        chat.base
    );
    outln!("# {HELP}");
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            out!("you> ");
            let _ = std::io::stdout().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (command, arg) = match line.split_once(char::is_whitespace) {
            Some((c, a)) => (c, a.trim()),
            None => (line, ""),
        };
        let outcome = match command {
            "/quit" | "/exit" => break,
            "/help" => {
                outln!("{HELP}");
                Ok(())
            }
            "/new" => {
                chat.session = new_session_id();
                chat.history.clear();
                outln!("# new session {}", chat.session);
                Ok(())
            }
            "/model" => runtime.block_on(chat.model_command(arg)),
            "/status" => runtime.block_on(chat.status()),
            c if c.starts_with('/') => {
                outln!("unknown command {c}; {HELP}");
                Ok(())
            }
            _ => runtime.block_on(chat.send(line)),
        };
        if let Err(e) = outcome {
            outln!("error: {e:#}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The gateway's base URL: the running one, else (unless `--url` named one) one started
/// here on the config.
async fn find_gateway(client: &reqwest::Client, target: &Target, explicit: bool) -> Result<String> {
    match client.get(format!("{}/health", target.url)).send().await {
        Ok(_) => return Ok(target.url.clone()),
        Err(e) if explicit || !e.is_connect() => {
            bail!("no gateway answers at {}: {e}", target.url)
        }
        Err(_) => {}
    }
    let config = target.config.clone().ok_or_else(|| {
        anyhow!(
            "no gateway at {} and no usable config to start one",
            target.url
        )
    })?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let listener = backstop_server::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let local = listener.local_addr()?;
    let state =
        Arc::new(backstop_server::AppState::new(Arc::new(config)).map_err(anyhow::Error::msg)?);
    tokio::spawn(backstop_server::serve_state(
        state,
        listener,
        std::future::pending::<()>(),
    ));
    eprintln!(
        "# no gateway at {}: running one in this process (same config and state dir)",
        target.url
    );
    Ok(format!("http://{local}"))
}

fn new_session_id() -> String {
    format!("chat-{:016x}", fastrand::u64(..))
}

impl Chat {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("x-backstop-session", &self.session);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        req
    }

    /// Send a message (with the conversation so far) and print the streamed reply.
    async fn send(&mut self, text: &str) -> Result<()> {
        let mut messages = self.history.clone();
        messages.push(json!({"role": "user", "content": text}));
        let resp = self
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&json!({"model": self.model, "messages": messages, "stream": true}))
            .send()
            .await
            .context("sending the message")?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("{}", message_of(status, &body));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(notice) = header("x-backstop-fallback-notice") {
            outln!("⚠ {notice}");
        }
        let served_by = header("x-backstop-model");
        let mut parser = SseParser::new();
        let mut reply = String::new();
        let mut out = std::io::stdout();
        let mut body = resp.bytes_stream();
        let mut failed = None;
        'read: while let Some(chunk) = body.next().await {
            let chunk = chunk.context("reading the reply")?;
            for event in parser.push(&chunk) {
                if event.data == "[DONE]" {
                    break 'read;
                }
                let Ok(v) = serde_json::from_str::<Value>(&event.data_text()) else {
                    continue;
                };
                if v.get("error").is_some() {
                    failed = Some(message_of(200, &v));
                    break 'read;
                }
                if let Some(delta) = v["choices"][0]["delta"]["content"].as_str() {
                    reply.push_str(delta);
                    let _ = write!(out, "{delta}");
                    let _ = out.flush();
                }
            }
        }
        outln!();
        if let Some(e) = failed {
            bail!("{e}");
        }
        if let Some(model) = served_by {
            outln!("# ({model})");
        }
        self.history = messages;
        self.history
            .push(json!({"role": "assistant", "content": reply}));
        Ok(())
    }

    /// `/model`: show the session's pin, or pin one (`auto` drops it).
    async fn model_command(&mut self, arg: &str) -> Result<()> {
        let path = format!("/v1/sessions/{}", self.session);
        if arg.is_empty() {
            return self.show_session().await;
        }
        let model = if matches!(arg, "auto" | "none" | "default") {
            Value::Null
        } else {
            Value::String(arg.to_owned())
        };
        let resp = self
            .request(reqwest::Method::PUT, &path)
            .json(&json!({ "model": model }))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            bail!("{}", message_of(status, &body));
        }
        match body["provider_override"].as_str() {
            Some(p) => outln!(
                "# pinned: {p}/{} for session {}",
                body["model_override"].as_str().unwrap_or("?"),
                self.session
            ),
            None => outln!("# model pin dropped: the chain decides again"),
        }
        Ok(())
    }

    async fn show_session(&self) -> Result<()> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/sessions/{}", self.session),
            )
            .send()
            .await?;
        if resp.status().as_u16() == 404 {
            outln!("# session {}: no pins (the chain decides)", self.session);
            return Ok(());
        }
        let s: Value = resp.json().await?;
        let pin = |value: &Value, source: &Value| match value.as_str() {
            Some(v) => format!("{v} ({})", source.as_str().unwrap_or("auto")),
            None => "-".to_owned(),
        };
        let model = match (
            s["provider_override"].as_str(),
            s["model_override"].as_str(),
        ) {
            (Some(p), Some(m)) => format!(
                "{p}/{m} ({})",
                s["model_override_source"].as_str().unwrap_or("auto")
            ),
            _ => "-".to_owned(),
        };
        outln!(
            "# session {}: model {model} · key {} · notice {}",
            self.session,
            pin(&s["profile_override"], &s["profile_override_source"]),
            s["fallback_notice"].as_str().unwrap_or("-")
        );
        Ok(())
    }

    /// `/status`: the gateway's chains and keys, then this session.
    async fn status(&self) -> Result<()> {
        let resp = self.request(reqwest::Method::GET, "/status").send().await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != 200 {
            bail!("{}", message_of(status, &body));
        }
        crate::status::print_gateway_status(&self.base, &body);
        outln!();
        self.show_session().await
    }
}
