//! `backstop simulate`: a fire drill for a config.
//!
//! Runs the user's real chain — their providers, keys (as dummies), retry rules,
//! timeouts, cooldown ladders and budgets — through a scenario, with every provider
//! replaced by its own local fake ([`world`]), on simulated time ([`vtime`]) so an
//! hour of incident takes seconds, then reports what clients saw ([`report`]).
//!
//! - [`scenario`]: built-in scenarios and the scenario file format;
//! - [`world`]: the config rewritten onto fakes, and what each fake answers;
//! - [`drive`]: the traffic;
//! - [`report`]: the figures, as text or JSON;
//! - [`progress`]: the live line on a terminal.

mod drive;
mod progress;
mod report;
mod scenario;
mod vtime;
mod world;

use anyhow::{Context, Result, anyhow};
use backstop::failover::Engine;
use backstop::state::MemoryStore;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Run the configured chain through an incident against fake providers.
#[derive(clap::Args, Debug)]
#[command(after_help = after_help())]
pub struct Args {
    /// A built-in scenario (see --list), unless --scenario-file is given.
    #[arg(required_unless_present_any = ["scenario_file", "list"])]
    scenario: Option<String>,
    /// A scenario file (JSON5; format in the README, "Fire drill").
    #[arg(long, value_name = "PATH", conflicts_with = "scenario")]
    scenario_file: Option<PathBuf>,
    /// Config file (same lookup as `serve`). Keys are never used: dummies go to local fakes.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The chain to drill: an agent id, `default`, or a model as a client would name it.
    #[arg(long, default_value = "default")]
    agent: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Seed for every random draw: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of requests over the run (evenly spaced). Default 360, or the file's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    requests: Option<u64>,
    /// Simulated length of the run (`1h`, `30m`, `90s`). Default 1h, or the file's.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    duration: Option<u64>,
    /// Exit with status 1 when Backstop's availability is below this percentage.
    #[arg(long, value_name = "PERCENT")]
    min_availability: Option<f64>,
    /// List the built-in scenarios.
    #[arg(long)]
    list: bool,
}

fn after_help() -> String {
    let mut s = String::from("Built-in scenarios:\n");
    for (name, about) in scenario::BUILTINS {
        s.push_str(&format!("  {name:<18} {about}\n"));
    }
    s
}

fn parse_duration_arg(s: &str) -> Result<u64, String> {
    match scenario::parse_duration(s)? {
        0 => Err("the duration must be above 0".into()),
        ms => Ok(ms),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.list {
        out!("{}", after_help());
        return Ok(ExitCode::SUCCESS);
    }
    let (config, notes) = world::load_config(args.config.as_deref()).map_err(|e| anyhow!(e))?;
    let route = config
        .resolve(&args.agent, None)
        .map_err(|e| anyhow!("--agent {}: {e}", args.agent))?;
    let spec = match (&args.scenario, &args.scenario_file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read scenario file {}", path.display()))?;
            scenario::parse(&text).map_err(|e| anyhow!("scenario file {}: {e}", path.display()))?
        }
        (Some(name), None) => {
            scenario::builtin(name, config.timeouts.first_token_ms).ok_or_else(|| {
                anyhow!(
                    "unknown scenario \"{name}\"; built-in: {} (or --scenario-file PATH)",
                    scenario::builtin_names()
                )
            })?
        }
        (None, None) => return Err(anyhow!("name a scenario or give --scenario-file")),
    };
    let overrides = scenario::Overrides {
        duration_ms: args.duration,
        requests: args.requests,
    };
    let scenario =
        spec.bind(&config, &route, overrides)
            .map_err(|e| match &args.scenario_file {
                Some(p) => anyhow!("scenario file {}: {e}", p.display()),
                None => anyhow!(e),
            })?;
    let seed = args.seed;
    let model = args.agent.clone();
    let progress = progress::Progress::new(!args.json && std::io::stdout().is_terminal());
    let real = std::time::Instant::now();
    let runtime = vtime::SimRuntime::new().context("cannot start the simulation runtime")?;
    let simulate = || {
        runtime.block_on(async move {
            let mut progress = progress;
            let clock = vtime::SimClock::start();
            let mut config = config;
            let world = world::World::start(scenario, seed, clock, &mut config)
                .context("cannot start the fake providers")?;
            let engine = Engine::with_state(
                Arc::new(config),
                Arc::new(MemoryStore::new()),
                Arc::new(clock),
            )
            .map_err(|e| anyhow!(e))?
            .with_seed(seed);
            let engine = Arc::new(engine);
            let records = drive::run(engine.clone(), world.clone(), model, &mut progress).await;
            progress.finish();
            let report = report::Report::build(
                &records,
                report::Inputs {
                    scenario: &world.scenario,
                    seed,
                    config: &engine.config,
                    route: &route,
                    engine: &engine,
                    attempts: world.all_attempts(),
                    real_time_ms: backstop::clock::duration_ms(real.elapsed()),
                    notes,
                },
            );
            world.stop();
            Ok::<_, anyhow::Error>(report)
        })
    };
    // The engine logs every failover decision; a drill makes thousands. They stay
    // quiet unless BACKSTOP_LOG asks for them.
    let report = if std::env::var_os("BACKSTOP_LOG").is_some() {
        simulate()?
    } else {
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), simulate)?
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", report.render());
    }
    if let Some(min) = args.min_availability
        && 100.0 * report.availability.backstop.ratio < min
    {
        eprintln!(
            "backstop: availability {:.1} % is below --min-availability {min} %",
            100.0 * report.availability.backstop.ratio
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
