//! The HTML dashboard: `GET /status` when a browser asks for `text/html` (PRODUCT §2, §5).
//!
//! One self-contained page (no CDN, no fonts, no other route): the server renders the
//! first view from the `/status` document, escaping everything; an inline script
//! (allowed by a per-response CSP nonce) then fetches the JSON every few seconds and
//! rebuilds the same markup with `textContent` only. The CSP also requires Trusted
//! Types, so even a stray `innerHTML` in the script would throw rather than parse data.
//!
//! With `server.api_keys` set, the page cannot know a key, so its fetch gets 401: the
//! script then reloads the whole page every 15 s instead (the navigation carries
//! whatever credentials brought the browser here, e.g. a reverse proxy's header).
//! Without script, a `<noscript>` meta refresh reloads it every 10 s.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde_json::Value;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

const CSS: &str = include_str!("dashboard.css");
const JS: &str = include_str!("dashboard.js");

/// The states `/status` spells; anything else is shown as `unknown`.
const STATES: [&str; 5] = ["ok", "degraded", "cooldown", "disabled", "half_open"];

/// Whether the client prefers the dashboard, by the q-values of its `Accept`:
/// HTML only when `text/html` ranks strictly above `application/json` (each
/// taking the q of its most specific matching range: `text/html`, `text/*`,
/// `*/*`; `application/json`, `application/*`, `*/*`). Browsers send
/// `text/html,…,*/*;q=0.8` for navigations; `fetch` and API clients send JSON or
/// `*/*`; no `Accept` is JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    // (specificity, q) of the best-matching range seen so far, per type.
    let mut html: Option<(u8, f32)> = None;
    let mut json: Option<(u8, f32)> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(1.0))
            .clamp(0.0, 1.0);
        let (html_rank, json_rank) = match media.as_str() {
            "text/html" => (Some(2), None),
            "text/*" => (Some(1), None),
            "application/json" => (None, Some(2)),
            "application/*" => (None, Some(1)),
            "*/*" => (Some(0), Some(0)),
            _ => (None, None),
        };
        for (rank, best) in [(html_rank, &mut html), (json_rank, &mut json)] {
            let Some(rank) = rank else { continue };
            match best {
                // A more specific range decides; among equals, the higher q.
                Some((r, bq)) if *r > rank || (*r == rank && *bq >= q) => {}
                _ => *best = Some((rank, q)),
            }
        }
    }
    let q = |best: Option<(u8, f32)>| best.map_or(0.0, |(_, q)| q);
    q(html) > q(json)
}

/// The page's Content-Security-Policy for one response's nonce.
pub fn csp(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         img-src 'none'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
    )
}

/// A fresh, unpredictable CSP nonce (128 bits, hex). `RandomState` keys SipHash with
/// secret random keys from the OS, which makes it a keyed PRF over a counter and the time.
fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = String::with_capacity(32);
    for half in 0u8..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u8(half);
        h.write_u128(nanos);
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

/// The dashboard response for a `/status` document.
pub fn page(status: &Value) -> Response {
    let nonce = nonce();
    let mut resp = Response::new(Body::from(render(status, &nonce)));
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::VARY, "accept");
    if let Ok(v) = HeaderValue::from_str(&csp(&nonce)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// HTML-escape text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as display text ("" for null).
fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Escaped text, or an em dash when empty.
fn dash(v: &Value) -> String {
    match text_of(v) {
        s if s.is_empty() => "\u{2014}".into(),
        s => escape(&s),
    }
}

fn code(v: &Value) -> String {
    format!("<code>{}</code>", escape(&text_of(v)))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn fmt_ms(v: &Value) -> String {
    match v.as_f64() {
        None => "\u{2014}".into(),
        Some(v) if v < 1.0 => "&lt;1 ms".into(),
        Some(v) if v < 1000.0 => format!("{} ms", v.round()),
        Some(v) => format!("{:.2} s", v / 1000.0),
    }
}

fn fmt_rate(v: &Value) -> String {
    v.as_f64()
        .map_or("\u{2014}".into(), |r| format!("{:.1} %", r * 100.0))
}

/// "in 30 s", "3 min ago", "now".
fn rel(delta_ms: i64) -> String {
    let a = delta_ms.unsigned_abs();
    if a < 1000 {
        return "now".into();
    }
    let s = (a as f64 / 1000.0).round();
    let t = if s < 90.0 {
        format!("{s} s")
    } else if s < 5400.0 {
        format!("{} min", (s / 60.0).round())
    } else if s < 172_800.0 {
        format!("{} h", (s / 3600.0).round())
    } else {
        format!("{} d", (s / 86_400.0).round())
    };
    if delta_ms > 0 {
        format!("in {t}")
    } else {
        format!("{t} ago")
    }
}

/// Epoch milliseconds of an RFC 3339 UTC time as `/status` writes it
/// (`2026-11-21T07:14:56.123Z`).
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match s.get(19..s.len() - 1) {
        Some("") => 0,
        Some(frac) => {
            let digits = frac.strip_prefix('.')?;
            let padded = format!("{digits:0<3}");
            padded.get(..3)?.parse::<i64>().ok()?
        }
        None => return None,
    };
    // Days from civil (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// A time cell: `HH:MM:SS` (UTC) and how far it is from the document's `now`.
fn when(v: &Value, now_ms: Option<i64>) -> String {
    let Some(iso) = v.as_str().filter(|s| s.len() >= 19) else {
        return "<span class=\"dim\">\u{2014}</span>".into();
    };
    let e = escape(iso);
    let mut out = format!(
        "<span><time datetime=\"{e}\" title=\"{e}\">{}</time>",
        escape(iso.get(11..19).unwrap_or(iso))
    );
    if let (Some(at), Some(now)) = (parse_rfc3339_ms(iso), now_ms) {
        let _ = write!(out, " <span class=\"dim\">({})</span>", rel(at - now));
    }
    out.push_str("</span>");
    out
}

fn badge(state: &Value) -> String {
    let name = text_of(state);
    let class = if STATES.contains(&name.as_str()) {
        name.as_str()
    } else {
        "unknown"
    };
    let shown = if name.is_empty() { "unknown" } else { &name };
    format!("<span class=\"state s-{class}\">{}</span>", escape(shown))
}

fn err_cell(e: &Value) -> String {
    if !e.is_object() {
        return "<td class=\"dim\">\u{2014}</td>".into();
    }
    let mut title = text_of(&e["reason"]);
    if let Some(st) = e["status"].as_u64() {
        let _ = write!(title, ", HTTP {st}");
    }
    if let Some(at) = e["at"].as_str() {
        let _ = write!(title, ", at {at}");
    }
    format!(
        "<td class=\"err\" title=\"{}\">{}</td>",
        escape(&title),
        escape(&text_of(&e["message"]))
    )
}

fn table(out: &mut String, class: &str, heads: &[&str], rows: &str) {
    let _ = write!(out, "<table class=\"{class}\"><thead><tr>");
    for h in heads {
        let _ = write!(out, "<th>{h}</th>");
    }
    let _ = write!(out, "</tr></thead><tbody>{rows}</tbody></table>");
}

fn chains(out: &mut String, doc: &Value) {
    let mut rows = String::new();
    for c in list(&doc["chains"]) {
        let active = if c["active"].is_string() {
            let profile = c["active_profile"]
                .as_str()
                .map(|p| format!("key {}", escape(p)))
                .unwrap_or_default();
            format!(
                "<span class=\"chip active\">{}</span> <span class=\"dim\">{profile}</span>",
                escape(&text_of(&c["active"]))
            )
        } else {
            "<span class=\"state s-cooldown\">none usable</span>".into()
        };
        let mut chips = String::new();
        for (i, t) in list(&c["targets"]).iter().enumerate() {
            if i > 0 {
                chips.push_str("<span class=\"arrow\">\u{2192}</span>");
            }
            let class = if *t == c["active"] {
                "chip active"
            } else {
                "chip"
            };
            let _ = write!(
                chips,
                "<span class=\"{class}\">{}</span>",
                escape(&text_of(t))
            );
        }
        let _ = write!(
            rows,
            "<tr data-agent=\"{}\"><td>{}</td><td>{active}</td><td><div class=\"chips\">{chips}</div></td></tr>",
            escape(&text_of(&c["agent"])),
            code(&c["agent"]),
        );
    }
    out.push_str("<section><h2>Chains</h2><div class=\"card\">");
    table(out, "chains", &["Agent", "Active target", "Chain"], &rows);
    out.push_str("</div></section>");
}

fn provider(out: &mut String, p: &Value, now: Option<i64>) {
    let mut profiles = String::new();
    for a in list(&p["profiles"]) {
        let _ = write!(
            profiles,
            "<tr data-profile=\"{}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td>{}</td>{}</tr>",
            escape(&text_of(&a["id"])),
            code(&a["id"]),
            dash(&a["key"]),
            badge(&a["state"]),
            dash(&a["reason"]),
            when(&a["until"], now),
            a["error_count"].as_u64().unwrap_or(0),
            when(&a["last_used"], now),
            err_cell(&a["last_error"]),
        );
    }
    let mut models = String::new();
    for m in list(&p["models"]) {
        let lat = &m["latency_ms"];
        let _ = write!(
            models,
            "<tr data-model=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} / {}</td>{}</tr>",
            escape(&text_of(&m["id"])),
            code(&m["id"]),
            badge(&m["state"]),
            dash(&m["reason"]),
            when(&m["until"], now),
            fmt_ms(&lat["p50"]),
            fmt_ms(&lat["p95"]),
            fmt_rate(&m["error_rate"]),
            m["requests"]["ok"].as_u64().unwrap_or(0),
            m["requests"]["failed"].as_u64().unwrap_or(0),
            err_cell(&m["last_error"]),
        );
    }
    let _ = write!(
        out,
        "<article class=\"card provider\" data-provider=\"{}\"><div class=\"card-head\"><h3>{}</h3>\
         <span class=\"tag\">{}</span><span class=\"url\">{}</span></div><h4>Keys</h4>",
        escape(&text_of(&p["id"])),
        escape(&text_of(&p["id"])),
        escape(&text_of(&p["api"])),
        escape(&text_of(&p["base_url"])),
    );
    table(
        out,
        "profiles",
        &[
            "Profile",
            "Key",
            "State",
            "Reason",
            "Until",
            "Errors",
            "Last used",
            "Last error",
        ],
        &profiles,
    );
    out.push_str("<h4>Models</h4>");
    table(
        out,
        "models",
        &[
            "Model",
            "State",
            "Reason",
            "Until",
            "p50",
            "p95",
            "Error rate",
            "OK / failed",
            "Last error",
        ],
        &models,
    );
    out.push_str("</article>");
}

fn events(out: &mut String, doc: &Value, now: Option<i64>) {
    out.push_str("<section><h2>Failover timeline</h2><div class=\"card\">");
    let evs = list(&doc["events"]);
    if evs.is_empty() {
        out.push_str("<p class=\"empty\">No failovers yet.</p>");
    } else {
        out.push_str("<ol class=\"timeline\">");
        for e in evs {
            let _ = write!(
                out,
                "<li data-request-id=\"{}\">{} {} <span class=\"arrow\">\u{2192}</span> {}\
                 <span class=\"reason\">{}</span> <code class=\"dim\">{}</code></li>",
                escape(&text_of(&e["request_id"])),
                when(&e["at"], now),
                code(&e["from"]),
                code(&e["to"]),
                escape(&text_of(&e["reason"])),
                escape(&text_of(&e["request_id"])),
            );
        }
        out.push_str("</ol>");
    }
    out.push_str("</div></section>");
}

/// Where state lives (`doc.state`): each store's kind, place and whether it reaches it.
fn stores(out: &mut String, doc: &Value) {
    let mut rows = String::new();
    for name in ["cooldowns", "sessions"] {
        let s = &doc["state"][name];
        if !s.is_object() {
            continue;
        }
        let (class, text) = if s["connected"].as_bool().unwrap_or(true) {
            ("s-ok", "reachable")
        } else {
            ("s-disabled", "unreachable: serving the local view")
        };
        let _ = write!(
            rows,
            "<tr data-store=\"{name}\"><td>{name}</td><td>{}</td><td>{}</td>\
             <td><span class=\"state {class}\">{text}</span></td></tr>",
            code(&s["kind"]),
            dash(&s["location"]),
        );
    }
    if rows.is_empty() {
        return;
    }
    out.push_str("<section><h2>State</h2><div class=\"card\">");
    table(out, "stores", &["Store", "Kind", "Where", "Backend"], &rows);
    out.push_str("</div></section>");
}

/// The whole page for a `/status` document; `nonce` marks the inline style and script.
pub fn render(doc: &Value, nonce: &str) -> String {
    let now_iso = text_of(&doc["now"]);
    let now = parse_rfc3339_ms(&now_iso);
    let mut out = String::with_capacity(16 * 1024 + CSS.len() + JS.len());
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>Backstop status</title>\
         <noscript><meta http-equiv=\"refresh\" content=\"10\"></noscript>\
         <style nonce=\"{nonce}\">{CSS}</style></head><body>\
         <header><h1>Backstop</h1><span class=\"sub\">gateway status</span>\
         <span class=\"meta\">as of <time id=\"as-of\" datetime=\"{}\">{} UTC</time>\
         <span id=\"live\" class=\"live live-reload\">auto-reload</span></span></header>\
         <main id=\"dashboard\">",
        escape(&now_iso),
        escape(now_iso.get(11..19).unwrap_or(&now_iso)),
    );
    chains(&mut out, doc);
    out.push_str("<section><h2>Providers</h2>");
    for p in list(&doc["providers"]) {
        provider(&mut out, p, now);
    }
    out.push_str("</section>");
    events(&mut out, doc, now);
    stores(&mut out, doc);
    let _ = writeln!(
        out,
        "</main><footer>JSON: <code>GET /status</code> with <code>Accept: application/json</code> \
         \u{b7} Prometheus: <code>GET /metrics</code></footer>\
         <script nonce=\"{nonce}\">{JS}</script></body></html>"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn browsers_get_html_and_api_clients_json() {
        let chromium =
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        assert!(wants_html(&accept(chromium)));
        assert!(wants_html(&accept("TEXT/HTML")));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&accept("text/html;q=0, application/json")));
        assert!(!wants_html(&HeaderMap::new()));
        // By q-values: a JSON range ranked at least as high as text/html wins.
        assert!(!wants_html(&accept("text/html;q=0.5, application/json")));
        assert!(!wants_html(&accept("text/html;q=0.5, */*")));
        assert!(!wants_html(&accept("text/html, application/json")));
        assert!(!wants_html(&accept("application/json, text/html;q=0.9")));
        assert!(wants_html(&accept("text/html, application/json;q=0.9")));
        assert!(wants_html(&accept("application/json;q=0.5, text/html")));
        assert!(wants_html(&accept("text/*")));
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(&accept(firefox)));
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn nonces_differ_and_fit_the_csp_grammar() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        let policy = csp(&a);
        assert!(policy.contains(&format!("script-src 'nonce-{a}'")));
        assert!(!policy.contains("unsafe-inline"));
    }

    #[test]
    fn rfc3339_round_trips_with_the_clock_formatter() {
        for ms in [0, 951_782_400_000, 1_795_245_296_123, 1_800_000_030_000] {
            assert_eq!(
                parse_rfc3339_ms(&backstop::clock::rfc3339(ms)),
                Some(ms as i64)
            );
        }
        assert_eq!(
            parse_rfc3339_ms("2027-01-15T08:00:00Z"),
            parse_rfc3339_ms("2027-01-15T08:00:00.000Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2027-01-15T08:00:00.5Z"),
            parse_rfc3339_ms("2027-01-15T08:00:00.500Z")
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn relative_times() {
        assert_eq!(rel(300), "now");
        assert_eq!(rel(30_000), "in 30 s");
        assert_eq!(rel(-180_000), "3 min ago");
        assert_eq!(rel(7_200_000), "in 2 h");
        assert_eq!(rel(-3 * 86_400_000), "3 d ago");
    }

    /// Every string the document carries, hostile: none of it may reach the page as markup.
    #[test]
    fn every_outside_string_is_escaped() {
        let evil = "<i>x</i>\"'&";
        let doc = json!({
            "now": "2027-01-15T08:00:00.000Z",
            "providers": [{
                "id": evil, "api": evil, "base_url": evil,
                "profiles": [{"id": evil, "state": evil, "reason": evil, "until": evil,
                              "error_count": 3, "last_used": evil, "key": evil,
                              "last_error": {"at": evil, "reason": evil, "status": 429, "message": evil}}],
                "models": [{"id": evil, "state": "cooldown", "reason": evil, "until": "2027-01-15T08:00:30.000Z",
                            "latency_ms": {"ewma": 1.5, "p50": 12.4, "p95": 1500.0}, "error_rate": 0.25,
                            "requests": {"ok": 3, "failed": 1},
                            "last_error": {"at": evil, "reason": evil, "status": null, "message": evil}}],
            }],
            "chains": [{"agent": evil, "targets": [evil, "b/c"], "active": evil, "active_profile": evil}],
            "events": [{"at": evil, "request_id": evil, "from": evil, "to": evil, "reason": evil}],
        });
        let html = render(&doc, "n0nce");
        assert!(!html.contains("<i>"), "raw markup from data in the page");
        assert!(!html.contains("\"'&<"));
        let escaped = "&lt;i&gt;x&lt;/i&gt;&quot;&#39;&amp;";
        // id, api, url, profile id/key/reason, messages, chain, event fields...
        assert!(html.matches(escaped).count() >= 20, "{html}");
        assert!(html.contains("<span class=\"state s-unknown\">"));
        assert!(html.contains("<span class=\"state s-cooldown\">cooldown</span>"));
        assert!(html.contains("(in 30 s)"));
        assert!(html.contains(">12 ms<") && html.contains(">1.50 s<") && html.contains(">25.0 %<"));
        assert_eq!(html.matches("nonce=\"n0nce\"").count(), 2);
    }

    #[test]
    fn an_empty_document_renders() {
        let html = render(&json!({}), "n");
        assert!(html.contains("No failovers yet."));
        assert!(html.starts_with("<!doctype html>"));
    }

    #[test]
    fn the_state_section_says_when_redis_is_unreachable() {
        let doc = json!({"state": {
            "cooldowns": {"kind": "file", "connected": true, "location": "/var/lib/<b>x"},
            "sessions": {"kind": "redis", "connected": false, "location": "redis://:****@h:6379"},
        }});
        let html = render(&doc, "n");
        assert!(html.contains("<h2>State</h2>"));
        assert!(html.contains(
            "<tr data-store=\"cooldowns\"><td>cooldowns</td><td><code>file</code></td><td>/var/lib/&lt;b&gt;x</td>\
             <td><span class=\"state s-ok\">reachable</span></td></tr>"
        ));
        assert!(html.contains(
            "<span class=\"state s-disabled\">unreachable: serving the local view</span>"
        ));
        assert!(!render(&json!({}), "n").contains("<h2>State</h2>"));
    }

    #[test]
    fn the_script_never_parses_strings_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!JS.contains(sink), "dashboard.js uses {sink}");
        }
        assert!(!JS.contains("</script"));
        assert!(!CSS.contains("</style"));
        assert!(!CSS.contains("url("), "no external resources");
    }
}
