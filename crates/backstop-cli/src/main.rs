//! The `backstop` command: run the gateway, check a config.
//!
//! Exit codes: 0 success; 1 the config is invalid or the gateway could not run;
//! 2 bad command-line usage.
#![forbid(unsafe_code)]

mod simulate;

use anyhow::{Context, Result};
use backstop::config::{self, ConfigOrigin, ProcessEnv};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Backstop keeps AI agents answering when model providers fail.
///
/// Point an OpenAI or Anthropic SDK at `backstop serve` (base_url
/// http://127.0.0.1:8787/v1 or http://127.0.0.1:8787): on 429s, 5xx, timeouts,
/// stalls, exhausted credit or rejected keys it rotates keys and falls back
/// along the configured model chain.
#[derive(Parser, Debug)]
#[command(name = "backstop", version, about, long_about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "BACKSTOP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (JSON5, YAML or TOML). Default: $BACKSTOP_CONFIG, ./backstop.json5,
        /// ~/.backstop/backstop.json5, else built from OPENAI_API_KEY, ANTHROPIC_API_KEY, ….
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding server.listen (e.g. 127.0.0.1:8787; port 0 picks one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Allow listening beyond loopback without server.api_keys.
        #[arg(long)]
        allow_unauthenticated: bool,
    },
    /// Validate a config and print it with every secret redacted.
    Check {
        /// Config file (same lookup as `serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Fire drill: run the configured chain through an incident (outage, 429 storm, …)
    /// against local fake providers, on simulated time, and report what clients saw.
    Simulate(simulate::Args),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BACKSTOP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            allow_unauthenticated,
        } => serve(config, listen, allow_unauthenticated),
        Command::Check { config } => check(config),
        Command::Simulate(args) => simulate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<config::Config> {
    config::load(path.as_deref(), &ProcessEnv).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))
}

fn describe_origin(origin: &ConfigOrigin) -> String {
    match origin {
        ConfigOrigin::File(p) => p.display().to_string(),
        ConfigOrigin::Environment => {
            "built from environment variables (no config file found)".into()
        }
    }
}

fn check(path: Option<PathBuf>) -> Result<ExitCode> {
    let config = load(path)?;
    println!("# config: {}", describe_origin(&config.origin));
    println!("{}", serde_json::to_string_pretty(&config.redacted_json())?);
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "ok: {} provider(s), {} chain(s), {} warning(s)",
        config.providers.len(),
        config.agents.len() + 1,
        config.warnings.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn serve(
    path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    allow_unauthenticated: bool,
) -> Result<ExitCode> {
    let config = load(path)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let addr = listen.unwrap_or(config.server.listen);
    backstop_server::check_exposure(&config, addr, allow_unauthenticated)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = backstop_server::bind(addr).await?;
        let local = listener.local_addr()?;
        tracing::info!(
            "backstop listening on http://{local} (config: {})",
            describe_origin(&config.origin)
        );
        // Tests and scripts read this line to learn the port.
        println!("listening on http://{local}");
        backstop_server::serve(Arc::new(config), listener, shutdown_signal()).await?;
        tracing::info!("backstop stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
