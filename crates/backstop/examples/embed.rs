//! Backstop as a library: the failover engine inside your own program, no gateway.
//!
//! ```sh
//! cargo run -p backstop --example embed
//! ```
//!
//! It starts two local fake providers (no network, no keys), rate-limits the primary,
//! and sends one OpenAI-shaped request through the chain: the fallback answers, and the
//! primary's key cools down in the engine's state store.
#![allow(clippy::print_stdout)]

use backstop::config::{self, ConfigOrigin, Format, MapEnv};
use backstop::failover::{Answer, Call, Engine};
use backstop::{WireFormat, render, wire};
use backstop_fake::{FakeProvider, Step};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two providers: OpenAI-shaped primary, Anthropic-shaped fallback (local fakes).
    let primary = FakeProvider::start()?;
    let fallback = FakeProvider::start()?;
    primary.push(Step::error_kind(429, "rate_limit_exceeded"));
    fallback.push(Step::text("Hello from the fallback."));

    // The same configuration a gateway reads (JSON5 here; YAML/TOML work too). State is
    // kept in memory when no `state.dir` is usable; `Engine::with_state` takes a store.
    let text = format!(
        r#"{{
          providers: {{
            openai: {{ api: "openai", base_url: "{}", auth: [{{ profile: "work", key: "$OPENAI_KEY" }}] }},
            anthropic: {{ api: "anthropic", base_url: "{}", auth: [{{ profile: "main", key: "$ANTHROPIC_KEY" }}] }},
          }},
          agents: {{ defaults: {{ model: {{ primary: "openai/gpt-4o", fallbacks: ["anthropic/claude-sonnet-4-5"] }} }} }},
          state: {{ dir: "{}" }},
        }}"#,
        primary.openai_base_url(),
        fallback.anthropic_base_url(),
        std::env::temp_dir()
            .join("backstop-embed-example")
            .display(),
    );
    let env = MapEnv::new()
        .with("OPENAI_KEY", "sk-example-openai")
        .with("ANTHROPIC_KEY", "sk-ant-example");
    let config = config::from_str(&text, Format::Json5, ConfigOrigin::Environment, &env)
        .map_err(|e| e.to_string())?;
    let engine = Engine::new(Arc::new(config))?;

    // One client request, as an OpenAI SDK would send it.
    let body = serde_json::json!({
        "model": "default",
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    let call = Call {
        request_id: "example-1".into(),
        ingress: WireFormat::OpenAi,
        request: Arc::new(wire::openai::decode_request(&body)?),
        route: engine.config.resolve("default", None)?,
        raw: Arc::new(body.into()),
        session: None,
        translate: false,
        anthropic_beta: None,
    };

    match engine.execute(&call).await {
        Ok(success) => {
            println!(
                "answered by {} after {} attempt(s){}",
                success.target.model,
                success.attempts(),
                success
                    .fallback_notice()
                    .map(|(_, notice)| format!(" — {notice}"))
                    .unwrap_or_default()
            );
            if let Answer::Complete { body, response } = &success.answer {
                let openai_body = render::complete_body(
                    WireFormat::OpenAi,
                    success.upstream_format,
                    body,
                    response,
                );
                println!("{}", String::from_utf8_lossy(&openai_body));
            }
        }
        Err(failure) => println!("every target failed: {failure:?}"),
    }
    for (scope, breaker) in engine.cooldowns.snapshot() {
        println!(
            "cooling: {scope} until {:?} ({:?})",
            breaker.until_ms, breaker.reason
        );
    }
    Ok(())
}
