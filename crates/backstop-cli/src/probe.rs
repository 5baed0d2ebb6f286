//! `backstop probe`: a tiny real request to every target and profile of every chain.

use anyhow::{Context, Result};
use backstop::config::Config;
use backstop::failover::Engine;
use backstop::probe::{ProbeReport, probe_all};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub fn run(config: Config, json: bool, concurrency: usize, timeout: Duration) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let engine = Arc::new(Engine::new(Arc::new(config)).map_err(anyhow::Error::msg)?);
    let progress = std::io::stderr().is_terminal();
    let report = runtime.block_on(probe_all(
        engine,
        concurrency,
        timeout,
        move |done, total| {
            if progress {
                let mut e = std::io::stderr();
                let _ = write!(e, "\rprobing {done}/{total}…");
                if done == total {
                    let _ = write!(e, "\r\x1b[2K");
                }
                let _ = e.flush();
            }
        },
    ));
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", table(&report));
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// The human report: one line per target × profile, then one per chain.
pub fn table(report: &ProbeReport) -> String {
    let mut rows: Vec<[String; 4]> = vec![[
        "TARGET".into(),
        "PROFILE".into(),
        "RESULT".into(),
        "LATENCY".into(),
    ]];
    for r in &report.results {
        let result = if r.ok {
            "ok".to_string()
        } else {
            let status = r.status.map(|s| format!(" [{s}]")).unwrap_or_default();
            format!(
                "FAIL {}{status}: {}",
                r.reason.as_deref().unwrap_or("unknown"),
                r.message.as_deref().unwrap_or("")
            )
        };
        rows.push([
            r.target.clone(),
            r.profile.clone(),
            result,
            format!("{} ms", r.latency_ms),
        ]);
    }
    let widths: Vec<usize> = (0..3)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out.push('\n');
    for c in &report.chains {
        if c.working.is_empty() {
            out.push_str(&format!(
                "chain {}: NO WORKING TARGET ({})\n",
                c.agent,
                c.targets.join(" → ")
            ));
        } else {
            out.push_str(&format!(
                "chain {}: ok via {} of {} target(s) ({})\n",
                c.agent,
                c.working.len(),
                c.targets.len(),
                c.working.join(", ")
            ));
        }
    }
    out
}
