//! `backstop-fake --listen 127.0.0.1:0`: serve a scripted fake provider until
//! killed. Prints `listening on http://ADDR` once ready.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use backstop_fake::FakeProvider;

const USAGE: &str = "usage: backstop-fake [--listen ADDR]   (default 127.0.0.1:0)";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" => args.next().ok_or("--listen needs an address")?,
            s if s.starts_with("--listen=") => s["--listen=".len()..].to_string(),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        listen = value
            .parse()
            .map_err(|e| format!("--listen {value:?}: {e} (expected e.g. 127.0.0.1:0)"))?;
    }
    Ok(listen)
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let fake = match FakeProvider::start_on(addr) {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("backstop-fake: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "listening on {}", fake.url())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    // Serve until killed (or interrupted).
    let _ = tokio::signal::ctrl_c().await;
    drop(fake);
    ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<SocketAddr, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn args() {
        assert_eq!(parse(&[]).unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(
            parse(&["--listen", "127.0.0.1:9000"]).unwrap().to_string(),
            "127.0.0.1:9000"
        );
        assert_eq!(
            parse(&["--listen=0.0.0.0:1"]).unwrap().to_string(),
            "0.0.0.0:1"
        );
        assert!(parse(&["--listen"]).unwrap_err().contains("needs"));
        assert!(parse(&["--listen", "nope"]).unwrap_err().contains("nope"));
        assert!(parse(&["--port"]).unwrap_err().contains("unknown"));
    }
}
