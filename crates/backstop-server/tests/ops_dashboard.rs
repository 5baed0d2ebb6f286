//! The HTML dashboard (`GET /status` with `Accept: text/html`): its headers and CSP,
//! its escaping, and how it renders in headless Chromium during a scripted outage —
//! a cooled-down key with its reason, and a hostile provider error shown as text.
//!
//! The browser test needs `chromium` on PATH (`.ci/run` installs it); set
//! `BACKSTOP_SKIP_BROWSER_TESTS=1` to skip it on a machine without one.
#![allow(clippy::unwrap_used)]

mod ops_common;

use backstop_fake::{ErrorStep, FakeHandle, Step};
use ops_common::*;
use serde_json::json;

/// A provider error whose message tries to run script in the dashboard.
const HOSTILE: &str = r#"<img src=x onerror="document.title='pwned'"> <script>document.title='pwned'</script> Incorrect API key provided"#;
/// How the hostile text reads once escaped as element text (Chromium's serialisation).
const SHOWN_SCRIPT: &str = "&lt;script&gt;document.title='pwned'&lt;/script&gt;";
const SHOWN_IMG: &str = "&lt;img src=x onerror=\"document.title='pwned'\"&gt;";

fn hostile_rejection() -> Step {
    Step::Error(ErrorStep {
        status: 401,
        body: Some(json!({"error": {
            "message": HOSTILE, "type": "invalid_request_error", "param": null,
            "code": "invalid_api_key"}})),
        ..ErrorStep::default()
    })
}

/// A gateway whose primary key was just rejected with the hostile message (and the
/// fakes behind it, which must outlive it), and the failed-over request's id.
async fn after_hostile_outage(client_key: Option<&str>) -> (Gateway, String, [FakeHandle; 2]) {
    let (primary, fallback) = (fake(), fake());
    primary.push(hostile_rejection());
    let overrides = match client_key {
        Some(k) => json!({"server": {"api_keys": [k]}}),
        None => json!({}),
    };
    let gw = Gateway::start(two_model_config(&primary, &fallback, overrides)).await;
    let auth = client_key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let r = gw.chat_with(&headers).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-backstop-fallback"), Some("auth"));
    let request_id = r.header("x-backstop-request-id").unwrap().to_string();
    (gw, request_id, [primary, fallback])
}

/// The nonce of `<script nonce="…">` in a page.
fn script_nonce(html: &str) -> &str {
    let start = html.find("<script nonce=\"").expect("a nonce'd script") + 15;
    let len = html[start..].find('"').unwrap();
    &html[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_escaped_and_served_with_a_strict_csp() {
    let (gw, request_id, _fakes) = after_hostile_outage(None).await;
    let html_accept = [("accept", "text/html")];
    let r = gw.get("/status", &html_accept).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let nonce = script_nonce(&r.body).to_string();
    assert_eq!(nonce.len(), 32);
    assert_eq!(
        r.header("content-security-policy").unwrap(),
        format!(
            "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
             img-src 'none'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
             form-action 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
        )
    );
    assert_eq!(r.body.matches(&format!("nonce=\"{nonce}\"")).count(), 2);
    // Self-contained: nothing is loaded from anywhere.
    for outside in ["<link", "src=\"", "href=\"", "@import", "url("] {
        assert!(!r.body.contains(outside), "the page refers to {outside}");
    }
    // The hostile message is in the page, as text only.
    assert!(!r.body.contains("<img"), "{}", r.body);
    assert!(!r.body.contains("<script>document"));
    assert!(
        r.body
            .contains("&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;")
    );
    assert!(
        r.body.contains(&request_id),
        "the failover is in the timeline"
    );
    assert!(
        r.body
            .contains("<span class=\"state s-cooldown\">cooldown</span>")
    );

    // A fresh nonce every time.
    let again = gw.get("/status", &html_accept).await;
    assert_ne!(script_nonce(&again.body), nonce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_keys_the_dashboard_needs_one_too() {
    let (gw, _, _fakes) = after_hostile_outage(Some("client-key-1")).await;
    let r = gw.get("/status", &[("accept", "text/html")]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = gw
        .get(
            "/status",
            &[
                ("accept", "text/html"),
                ("authorization", "Bearer client-key-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("s-cooldown"));
    assert!(
        !r.body.contains("client-key-1"),
        "the client key never reaches the page"
    );
}

/// The part of the DOM from `<tr data-profile="a">` to its `</tr>`.
fn profile_row<'a>(dom: &'a str, profile: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-profile=\"{profile}\">"))
        .unwrap_or_else(|| panic!("no row for profile {profile} in:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_in_headless_chromium_and_runs_nothing_hostile() {
    let Some(chromium) = chromium() else {
        return;
    };
    let (gw, request_id, _fakes) = after_hostile_outage(None).await;
    let dir = TempDir::new("dashboard");
    let url = format!("{}/status", gw.url);

    // The DOM after the page's script ran (virtual time: its first JSON refresh).
    let run = run_chromium(&chromium, &dir.0, &url, &["--dump-dom".to_string()]).await;
    assert!(
        run.status.success(),
        "chromium failed ({}): {}",
        run.status,
        run.stderr
    );
    let dom = run.stdout;
    assert!(
        dom.contains("<title>Backstop status</title>"),
        "the title was changed, or the page did not load:\n{dom}\n{}",
        run.stderr
    );
    assert!(!dom.contains("<title>pwned"), "injected script ran");
    // The script ran under the CSP (nonce, Trusted Types) and re-rendered from JSON.
    assert!(
        dom.contains("data-refreshes=\"1\""),
        "the page's script did not refresh it:\n{dom}"
    );
    assert!(dom.contains("live · every 5 s"), "{dom}");
    // The cooled key: its state and reason.
    let row = profile_row(&dom, "a");
    assert!(
        row.contains("<span class=\"state s-cooldown\">cooldown</span>"),
        "{row}"
    );
    assert!(row.contains("<td>auth</td>"), "{row}");
    assert!(row.contains("sk-…cdef"), "{row}");
    // The hostile message: shown as text, nothing injected.
    assert!(row.contains(SHOWN_SCRIPT), "{row}");
    assert!(row.contains(SHOWN_IMG), "{row}");
    assert!(!dom.contains("<img"), "an injected element exists:\n{dom}");
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    // The fallback is active and the failover is on the timeline.
    assert!(
        dom.contains("<span class=\"chip active\">anthropic/claude-sonnet-4-5</span>"),
        "{dom}"
    );
    assert!(dom.contains(&format!("<li data-request-id=\"{request_id}\">")));
    // Where state lives, re-rendered by the script too.
    assert!(
        dom.contains("<tr data-store=\"cooldowns\"><td>cooldowns</td>")
            && dom.contains("<span class=\"state s-ok\">reachable</span>"),
        "{dom}"
    );

    // A screenshot: a real, non-trivial PNG of the right size.
    let shot = dir.0.join("dashboard.png");
    let run = run_chromium(
        &chromium,
        &dir.0,
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1100".to_string(),
        ],
    )
    .await;
    assert!(run.status.success(), "chromium failed: {}", run.stderr);
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {}", run.stderr));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 1100));
    assert!(png.len() > 20_000, "a blank page? {} bytes", png.len());
    if let Ok(keep) = std::env::var("BACKSTOP_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
