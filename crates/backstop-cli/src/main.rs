//! The `backstop` command: run the gateway, check a config, see and clear cooldowns.
//!
//! Exit codes: 0 success; 1 the config is invalid, the gateway could not run, or the
//! thing asked for failed; 2 bad command-line usage. `probe`: 0 every target answered,
//! 1 some failed but every chain has a working target, 2 a chain has none.
#![forbid(unsafe_code)]

/// `println!` for command output, through [`write_stdout`]: a closed stdout
/// (`backstop status --json | head -1`) ends the process quietly instead of panicking.
macro_rules! outln {
    () => {
        $crate::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` for command output, through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*), false)
    };
}

mod chat;
mod cooldowns;
mod gateway;
mod offline;
mod probe;
mod simulate;
mod status;

use anyhow::{Context, Result};
use backstop::config::{self, ConfigOrigin, ProcessEnv};
use backstop::state::Scope;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc instead of glibc's malloc: cheaper small allocations on the request path.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Send a tiny real request to every target and profile of every chain and report
    /// which would fail (exit 0 all ok, 1 some failed, 2 a chain has no working target).
    Probe {
        /// Config file (same lookup as `serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Probes in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Per-probe timeout in milliseconds.
        #[arg(long, default_value_t = 20_000)]
        timeout_ms: u64,
    },
    /// Validate a config and print it with every secret redacted.
    Check {
        /// Config file (same lookup as `serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// See and clear cooldowns: through the running gateway, else in the state dir.
    Cooldowns {
        #[command(subcommand)]
        action: CooldownsAction,
    },
    /// Every provider, profile and model with its state (from the state dir).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: At,
    },
    /// A terminal chat on a session, through the running gateway (else one started here):
    /// /model, /status, /new, and the one-line fallback notices.
    Chat(chat::Args),
    /// Fire drill: run the configured chain through an incident (outage, 429 storm, …)
    /// against local fake providers, on simulated time, and report what clients saw.
    Simulate(simulate::Args),
}

#[derive(Subcommand, Debug)]
enum CooldownsAction {
    /// Every scope cooling down, disabled or half-open.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: At,
    },
    /// Clear one scope (provider:profile, provider:profile/model or provider/model), or --all.
    Clear {
        #[arg(required_unless_present = "all", value_name = "SCOPE")]
        scope: Option<Scope>,
        /// Clear every cooldown.
        #[arg(long, conflicts_with = "scope")]
        all: bool,
        #[command(flatten)]
        at: At,
    },
}

/// Where the state is: a gateway at `--url`, else the config's `state.dir`.
#[derive(Args, Debug)]
struct At {
    /// Config file (same lookup as `serve`): gives server.listen, server.api_keys, state.dir.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The gateway to ask. Default: http://<server.listen>. When nothing answers there,
    /// the state dir is read and written directly.
    #[arg(long)]
    url: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BACKSTOP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal (not in files, pipes or journald), and
    // never with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        // One flat object a line: the event's fields beside timestamp, level, target and
        // message, as log pipelines expect (no field is named like those four).
        LogFormat::Json => builder.json().flatten_event(true).init(),
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
        Command::Probe {
            config,
            json,
            concurrency,
            timeout_ms,
        } => load(config).and_then(|c| {
            probe::run(
                c,
                json,
                concurrency,
                std::time::Duration::from_millis(timeout_ms),
            )
        }),
        Command::Cooldowns { action } => match action {
            CooldownsAction::List { json, at } => {
                target(&at).and_then(|t| cooldowns::list(&t, json))
            }
            CooldownsAction::Clear { scope, all, at } => target(&at).and_then(|t| {
                let what = match scope {
                    Some(s) if !all => cooldowns::Clear::One(s),
                    _ => cooldowns::Clear::All,
                };
                cooldowns::clear(&t, &what)
            }),
        },
        Command::Status { json, at } => target(&at).and_then(|t| status::status(&t, json)),
        Command::Simulate(args) => simulate::run(args),
        Command::Chat(args) => chat::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Write command output to stdout. When the reader has gone (`EPIPE`, e.g. `| head`)
/// the process exits 0 at once, as a SIGPIPE-killed tool would stop quietly; any
/// other write error exits 1 with a message. `println!` would panic on both.
fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("backstop: failed writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn target(at: &At) -> Result<gateway::Target> {
    gateway::target(at.config.as_deref(), at.url.as_deref())
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
    outln!("# config: {}", describe_origin(&config.origin));
    outln!("{}", serde_json::to_string_pretty(&config.redacted_json())?);
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

/// The gateway's runtime: one thread per core; on a single core (a container limited to
/// one CPU, or a process pinned to one) the single-threaded scheduler, which does the
/// same work without the multi-threaded one's wake-ups and synchronisation.
fn runtime_for_cores() -> Result<tokio::runtime::Runtime> {
    runtime_for(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

fn runtime_for(cores: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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
    let runtime = runtime_for_cores()?;
    runtime.block_on(async move {
        let listener = backstop_server::bind(addr).await?;
        let local = listener.local_addr()?;
        tracing::info!(
            "backstop listening on http://{local} (config: {})",
            describe_origin(&config.origin)
        );
        // Tests and scripts read this line to learn the port. A closed stdout does not
        // stop the gateway.
        {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "listening on http://{local}");
        }
        let watch = match &config.origin {
            ConfigOrigin::File(p) => Some(p.clone()),
            ConfigOrigin::Environment => None,
        };
        let state =
            Arc::new(backstop_server::AppState::new(Arc::new(config)).map_err(anyhow::Error::msg)?);
        // Reload from the same place: the file it came from, else the environment. A new
        // config that drops `server.api_keys` while the gateway listens beyond loopback is
        // refused like it would be at start.
        let again = watch.clone();
        let loader: backstop_server::reload::Loader = Arc::new(move || {
            let config = config::load(again.as_deref(), &ProcessEnv).map_err(|e| e.to_string())?;
            backstop_server::check_exposure(&config, local, allow_unauthenticated)
                .map_err(|e| e.to_string())?;
            Ok(config)
        });
        backstop_server::reload::spawn(
            state.clone(),
            loader,
            watch,
            std::time::Duration::from_secs(2),
        );
        backstop_server::serve_state(state, listener, shutdown_signal()).await?;
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

#[cfg(test)]
mod tests {
    use super::runtime_for;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_core_gets_the_single_threaded_runtime() {
        let flavor = |cores| runtime_for(cores).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
    }
}
