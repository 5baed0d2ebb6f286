//! Defaults, formats, discovery, the environment, secrets, providers and error texts.

use super::*;
use crate::config::*;
use crate::secret::SecretSource;
use std::path::Path;

// ---- defaults and formats ----

#[test]
fn defaults_fill_everything_not_written() {
    let c = ok(
        r#"{ providers: { ollama: { models: ["llama3.2"] } } }"#,
        &MapEnv::new().with_home("/home/op"),
    );
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
    assert!(c.server.api_keys.is_empty());
    assert!(!c.server.allow_unauthenticated);
    assert_eq!(c.server.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(c.server.max_json_depth, 64);
    assert_eq!(c.retry, RetryConfig::default());
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.stream, StreamConfig::default());
    assert_eq!(c.auth.cooldowns, CooldownConfig::default());
    assert_eq!(c.state.dir, Path::new("/home/op/.backstop"));
    assert_eq!(c.state.redis_url, None);
    let p = c.provider("ollama").unwrap();
    assert_eq!(p.api, WireFormat::OpenAi);
    assert_eq!(p.base_url, "http://127.0.0.1:11434/v1");
    assert_eq!(p.profiles.len(), 1);
    assert_eq!(p.profiles[0].name, "default");
    assert!(p.profiles[0].key.is_none());
    // No chain written: the first provider's first catalogue model.
    assert_eq!(c.default_chain.primary.to_string(), "ollama/llama3.2");
    assert!(c.default_chain.fallbacks.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn json5_comments_trailing_commas_and_bare_keys() {
    let c = ok(
        "// a comment\n{ /* block */ providers: { openai: { models: ['gpt-4o',], }, }, retry: { max_attempts: 3, }, }",
        &MapEnv::new(),
    );
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.default_chain.primary.to_string(), "openai/gpt-4o");
}

#[test]
fn syntax_errors_name_the_file() {
    let e = errs("{ providers: ", &MapEnv::new());
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("backstop.json5: JSON5 syntax error"),
        "{e:?}"
    );
    let e = errs("[1, 2]", &MapEnv::new());
    assert!(e[0].contains("the top level must be an object"), "{e:?}");
}

#[test]
fn yaml_and_toml_by_extension() {
    let dir = TempDir::new("formats");
    let env = keys_env();
    let yaml = dir.write(
        "b.yaml",
        "providers:\n  openai:\n    auth:\n      - key: $OPENAI_API_KEY\n    models: [gpt-4o]\nretry:\n  max_attempts: 4\n",
    );
    let c = load(Some(&yaml), &env).unwrap();
    assert_eq!(c.retry.max_attempts, 4);
    assert_eq!(c.origin, ConfigOrigin::File(yaml.clone()));
    assert_eq!(
        c.provider("openai").unwrap().profiles[0]
            .key
            .as_ref()
            .unwrap()
            .expose(),
        "sk-proj-secretsecret-BBBB"
    );

    let yml = dir.write("b.yml", "providers:\n  openai: {models: [gpt-4o]}\n");
    assert_eq!(
        load(Some(&yml), &env)
            .unwrap()
            .default_chain
            .primary
            .to_string(),
        "openai/gpt-4o"
    );

    let toml = dir.write(
        "b.toml",
        "[providers.openai]\nmodels = [\"gpt-4o\", { id = \"o3\", context_window = 200000 }]\n\n[timeouts]\nrequest_ms = 60000\n",
    );
    let c = load(Some(&toml), &env).unwrap();
    assert_eq!(c.timeouts.request_ms, 60_000);
    assert_eq!(
        c.provider("openai")
            .unwrap()
            .model("o3")
            .unwrap()
            .context_window,
        Some(200_000)
    );

    // Config order survives TOML too (the first provider gives the implicit default chain).
    let order = dir.write("order.toml", "[providers.zz]\nmodels = [\"z\"]\n[providers.openai]\nmodels = [\"a\"]\n[providers.zz.headers]\nX = \"1\"\n");
    let e = load(Some(&order), &env).unwrap_err().to_string();
    assert!(e.contains("providers.zz.api: required"), "{e}");
    let order = dir.write(
        "order2.toml",
        "[providers.xai]\nmodels = [\"z\"]\n[providers.openai]\nmodels = [\"a\"]\n",
    );
    let c = load(Some(&order), &env).unwrap();
    assert_eq!(
        c.providers
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        ["xai", "openai"]
    );
    assert_eq!(c.default_chain.primary.to_string(), "xai/z");

    let json = dir.write(
        "b.json",
        r#"{"providers": {"openai": {"models": ["gpt-4o"]}}}"#,
    );
    assert!(load(Some(&json), &env).is_ok());

    let other = dir.write("b.ini", "x=1");
    let e = load(Some(&other), &env).unwrap_err().to_string();
    assert!(e.contains("unsupported file extension"), "{e}");

    let bad_yaml = dir.write("bad.yaml", "providers:\n  openai:\n    bse_url: x\n");
    let e = load(Some(&bad_yaml), &env).unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml: providers.openai.bse_url: unknown key (did you mean \"base_url\"?)"),
        "{e}"
    );
}

// ---- discovery ----

#[test]
fn discovery_order_and_missing_files() {
    let dir = TempDir::new("discovery");
    let cwd = dir.0.join("cwd");
    let home = dir.0.join("home");
    std::fs::create_dir_all(&cwd).unwrap();
    dir.write(
        "home/.backstop/backstop.json5",
        "{ providers: { openai: { models: ['from-home'] } } }",
    );
    let env = MapEnv::new().with_cwd(&cwd).with_home(&home);
    assert_eq!(
        load(None, &env).unwrap().default_chain.primary.model,
        "from-home"
    );

    dir.write(
        "cwd/backstop.json5",
        "{ providers: { openai: { models: ['from-cwd'] } } }",
    );
    assert_eq!(
        load(None, &env).unwrap().default_chain.primary.model,
        "from-cwd"
    );

    let explicit = dir.write(
        "x.json5",
        "{ providers: { openai: { models: ['explicit'] } } }",
    );
    let env2 = env
        .clone()
        .with("BACKSTOP_CONFIG", dir.0.join("x.json5").to_str().unwrap());
    assert_eq!(
        load(None, &env2).unwrap().default_chain.primary.model,
        "explicit"
    );
    assert_eq!(
        load(Some(&explicit), &env)
            .unwrap()
            .default_chain
            .primary
            .model,
        "explicit"
    );

    let missing = dir.0.join("nope.json5");
    let e = load(Some(&missing), &env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: config file not found", missing.display())
    );
    let env3 = env
        .clone()
        .with("BACKSTOP_CONFIG", missing.to_str().unwrap());
    assert!(
        load(None, &env3)
            .unwrap_err()
            .to_string()
            .contains("config file not found")
    );
}

#[test]
fn no_file_falls_back_to_the_environment() {
    let dir = TempDir::new("nofile");
    let env = MapEnv::new()
        .with_cwd(&dir.0)
        .with_home(&dir.0)
        .with("OPENAI_API_KEY", "sk-test-123456789");
    let c = load(None, &env).unwrap();
    assert_eq!(c.origin, ConfigOrigin::Environment);

    let bare = MapEnv::new().with_cwd(&dir.0).with_home(&dir.0);
    let e = load(None, &bare).unwrap_err().to_string();
    assert!(
        e.starts_with("environment: no config file found (looked for $BACKSTOP_CONFIG (unset), "),
        "{e}"
    );
    assert!(
        e.contains(&dir.0.join("backstop.json5").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains(&dir.0.join(".backstop/backstop.json5").display().to_string()),
        "{e}"
    );
    assert!(
        e.contains(
            "ANTHROPIC_API_KEY, OPENAI_API_KEY, GEMINI_API_KEY, GOOGLE_API_KEY, OPENROUTER_API_KEY"
        ),
        "{e}"
    );
}

#[test]
fn env_only_config() {
    let env = MapEnv::new()
        .with("ANTHROPIC_API_KEY", "sk-ant-1234567890")
        .with("GOOGLE_API_KEY", "AIza-1234567890")
        .with("OPENROUTER_API_KEY", "sk-or-1234567890")
        .with("OPENROUTER_BASE_URL", "https://proxy.example/api/v1/")
        .with("BACKSTOP_API_KEY", "client-key-1234567890")
        .with("BACKSTOP_LISTEN", "0.0.0.0:9000")
        .with("BACKSTOP_STATE_DIR", "/var/lib/backstop");
    let c = from_env(&env).unwrap();
    assert_eq!(c.origin, ConfigOrigin::Environment);
    let ids: Vec<&str> = c.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["anthropic", "gemini", "openrouter"]);
    assert_eq!(
        c.default_chain.primary.to_string(),
        "anthropic/claude-sonnet-4-5"
    );
    assert_eq!(
        names(&c.default_chain.fallbacks),
        [
            "gemini/gemini-2.5-flash",
            "openrouter/anthropic/claude-sonnet-4.5"
        ]
    );
    let gemini = c.provider("gemini").unwrap();
    assert_eq!(gemini.api, WireFormat::Gemini);
    assert_eq!(gemini.base_url, "https://generativelanguage.googleapis.com");
    assert_eq!(
        gemini.profiles[0].key.as_ref().unwrap().source(),
        &SecretSource::Env("GOOGLE_API_KEY".into())
    );
    assert_eq!(
        c.provider("openrouter").unwrap().base_url,
        "https://proxy.example/api/v1"
    );
    assert_eq!(
        c.provider("anthropic").unwrap().models[0].id,
        "claude-sonnet-4-5"
    );
    assert_eq!(c.server.api_keys.len(), 1);
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.state.dir, Path::new("/var/lib/backstop"));
    // The bare catalogue name resolves.
    assert_eq!(
        names(&c.resolve("gemini-2.5-flash", Some("")).unwrap().targets),
        ["gemini/gemini-2.5-flash"]
    );

    let bad = MapEnv::new()
        .with("OPENAI_API_KEY", "sk-1234567890")
        .with("BACKSTOP_LISTEN", "localhost");
    let e = from_env(&bad).unwrap_err().to_string();
    assert!(
        e.contains("$BACKSTOP_LISTEN: \"localhost\" is not a socket address"),
        "{e}"
    );
}

// ---- secrets ----

#[test]
fn secrets_from_env_file_and_literal() {
    let dir = TempDir::new("secrets");
    dir.write("keys/openrouter.txt", "sk-or-v1-fromfile-9999\n");
    let cfg = dir.write(
        "backstop.json5",
        r#"{ providers: {
            openai: { auth: [{ profile: "env", key: "${OPENAI_API_KEY}" }, { profile: "lit", key: "sk-literal-secret-7777" }] },
            openrouter: { auth: [{ key: "file:keys/openrouter.txt" }], headers: { "X-Title": "bs", "X-Token": "$OPENAI_API_KEY" } },
            anthropic: { auth: [{ key: "file:~/keys/openrouter.txt" }] },
          },
          agents: { defaults: { model: { primary: "openai/gpt-4o" } } } }"#,
    );
    let env = keys_env().with_home(&dir.0);
    let c = load(Some(&cfg), &env).unwrap();
    let openai = c.provider("openai").unwrap();
    let k0 = openai.profiles[0].key.as_ref().unwrap();
    assert_eq!(k0.expose(), "sk-proj-secretsecret-BBBB");
    assert_eq!(k0.source(), &SecretSource::Env("OPENAI_API_KEY".into()));
    let k1 = openai.profiles[1].key.as_ref().unwrap();
    assert_eq!(k1.source(), &SecretSource::Literal);
    assert_eq!(
        c.warnings,
        [
            "providers.openai.auth[1].key: a literal key is written in the config; use $VAR or file:PATH"
        ]
    );
    let or = c.provider("openrouter").unwrap();
    let kf = or.profiles[0].key.as_ref().unwrap();
    assert_eq!(kf.expose(), "sk-or-v1-fromfile-9999");
    assert!(matches!(kf.source(), SecretSource::File(p) if p.ends_with("keys/openrouter.txt")));
    assert_eq!(or.headers[0].0, "X-Title");
    assert_eq!(or.headers[0].1.expose(), "bs");
    assert_eq!(
        or.headers[1].1.source(),
        &SecretSource::Env("OPENAI_API_KEY".into())
    );
    let ka = c.provider("anthropic").unwrap().profiles[0]
        .key
        .as_ref()
        .unwrap();
    assert_eq!(ka.expose(), "sk-or-v1-fromfile-9999");
}

#[test]
fn unset_key_is_a_warning_and_the_profile_is_skipped() {
    let text = r#"{ providers: {
        openai: { auth: [{ key: "$OPENAI_API_KEY" }], models: ["gpt-4o"] },
        anthropic: { auth: [{ profile: "team", key: "$TEAM" }, { profile: "me", key: "$ME" }, { profile: "f", key: "file:/nonexistent/backstop/key" }] },
      },
      auth: { order: { anthropic: ["me", "team"] } } }"#;
    let c = ok(text, &MapEnv::new().with("ME", "sk-ant-me-1234567890"));
    assert!(c.provider("openai").unwrap().profiles.is_empty());
    let a = c.provider("anthropic").unwrap();
    assert_eq!(a.profiles.len(), 1);
    assert_eq!(a.profiles[0].name, "me");
    assert_eq!(
        c.warnings[0],
        "providers.openai.auth[0].key: environment variable OPENAI_API_KEY is not set; profile \"default\" is skipped"
    );
    assert_eq!(
        c.warnings[1],
        "providers.anthropic.auth[0].key: environment variable TEAM is not set; profile \"team\" is skipped"
    );
    assert!(
        c.warnings[2].starts_with(
            "providers.anthropic.auth[2].key: cannot read key file /nonexistent/backstop/key"
        ),
        "{:?}",
        c.warnings
    );
    assert!(c.warnings[2].ends_with("profile \"f\" is skipped"));
    // The order names a skipped profile: no error, it is just left out.
    assert_eq!(c.auth.order["anthropic"], ["me"]);
}

#[test]
fn strict_secrets_api_keys_headers_urls() {
    let text = r#"{ server: { api_keys: ["$CLIENT_KEY", "literal-client-key-123"] },
      providers: { openai: { base_url: "https://${GW_HOST}/v1", headers: { "X-Key": "$NOPE" }, models: ["m"] } },
      state: { redis_url: "redis://${REDIS_HOST}:6379" } }"#;
    let e = errs(text, &MapEnv::new());
    assert_eq!(
        e,
        [
            "backstop.json5: server.api_keys[0]: environment variable CLIENT_KEY is not set; clients could not authenticate",
            "backstop.json5: providers.openai.base_url: environment variable GW_HOST is not set",
            "backstop.json5: providers.openai.headers.X-Key: environment variable NOPE is not set",
            "backstop.json5: state.redis_url: environment variable REDIS_HOST is not set",
        ]
    );
    let env = MapEnv::new()
        .with_home("/h")
        .with("CLIENT_KEY", "client-secret-123456")
        .with("GW_HOST", "gw.example")
        .with("NOPE", "v")
        .with("REDIS_HOST", "cache");
    let c = ok(text, &env);
    assert_eq!(c.server.api_keys.len(), 2);
    assert_eq!(
        c.warnings,
        ["server.api_keys[1]: a literal key is written in the config; use $VAR or file:PATH"]
    );
    assert_eq!(
        c.provider("openai").unwrap().base_url,
        "https://gw.example/v1"
    );
    assert_eq!(c.state.redis_url.as_deref(), Some("redis://cache:6379"));
}

#[test]
fn a_key_written_in_the_wrong_shape_never_appears_in_an_error() {
    let key = "sk-proj-LEAKME-abcdefgh-1234";
    for text in [
        format!(r#"{{ providers: {{ openai: {{ auth: ["{key}"], models: ["m"] }} }} }}"#),
        format!(
            r#"{{ server: {{ api_keys: "{key}" }}, providers: {{ openai: {{ models: ["m"] }} }} }}"#
        ),
        format!(
            r#"{{ providers: {{ openai: {{ models: ["m"], headers: {{ "X-Key": ["{key}"] }} }} }} }}"#
        ),
    ] {
        let e = errs(&text, &MapEnv::new());
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(!e[0].contains("LEAKME"), "{}", e[0]);
    }
    let e = errs(
        &format!(r#"{{ providers: {{ openai: {{ auth: ["{key}"], models: ["m"] }} }} }}"#),
        &MapEnv::new(),
    );
    assert_eq!(
        e[0],
        "backstop.json5: providers.openai.auth[0]: invalid type: string \"sk-…1234\", expected struct RawAuthEntry"
    );
}

// ---- providers and profiles ----

#[test]
fn provider_rules() {
    let c = ok(
        r#"{ providers: {
            groq: { models: ["llama"] }, google: {}, lmstudio: {},
            vllm: { api: "openai", base_url: "http://10.0.0.5:8000/v1///" },
          } }"#,
        &MapEnv::new(),
    );
    assert_eq!(
        c.provider("groq").unwrap().base_url,
        "https://api.groq.com/openai/v1"
    );
    assert_eq!(c.provider("google").unwrap().api, WireFormat::Gemini);
    assert_eq!(
        c.provider("lmstudio").unwrap().base_url,
        "http://127.0.0.1:1234/v1"
    );
    assert_eq!(
        c.provider("vllm").unwrap().base_url,
        "http://10.0.0.5:8000/v1"
    );

    let e = errs(
        r#"{ providers: {
            myproxy: {},
            bedrock: { auth: [{ key: "$AWS" }] },
            "a/b": { api: "openai", base_url: "http://x" },
            fallback2: { api: "opnai", base_url: "ftp://x" },
          }, agents: { defaults: { model: { primary: "bedrock/claude" } } } }"#,
        &MapEnv::new(),
    );
    assert_eq!(
        e,
        [
            "backstop.json5: providers.myproxy.api: required: \"myproxy\" is not a well-known provider id; set api to one of openai, anthropic, gemini",
            "backstop.json5: providers.myproxy.base_url: required: \"myproxy\" is not a well-known provider id, so there is no default URL",
            "backstop.json5: providers.bedrock: provider \"bedrock\" is not supported yet; reach it through an OpenAI-compatible gateway (api: \"openai\" with its base_url) or use openrouter",
            "backstop.json5: providers.a/b: provider id \"a/b\" must be non-empty without '/', ':' or spaces (it is used in \"<id>/<model>\")",
            "backstop.json5: providers.fallback2.api: \"opnai\" is not a supported api; valid: openai, anthropic, gemini (did you mean \"openai\"?)",
            "backstop.json5: providers.fallback2.base_url: \"ftp://x\" must start with http:// or https://",
        ]
    );
}

#[test]
fn profile_names() {
    let c = ok(
        r#"{ providers: {
            a: { api: "openai", base_url: "http://a", auth: [{ key: "k-aaaaaaaaaaaa" }], models: ["m"] },
            b: { api: "openai", base_url: "http://b", auth: [{ key: "k1-aaaaaaaaaaa" }, { profile: "named", key: "k2-aaaaaaaaaaa" }, { key: "k3-aaaaaaaaaaa" }] },
            c: { api: "openai", base_url: "http://c", auth: [] },
          } }"#,
        &MapEnv::new(),
    );
    let n = |id: &str| -> Vec<String> {
        c.provider(id)
            .unwrap()
            .profiles
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(n("a"), ["default"]);
    assert_eq!(n("b"), ["key1", "named", "key3"]);
    assert_eq!(n("c"), ["default"]);
    assert!(c.provider("c").unwrap().profiles[0].key.is_none());

    let e = errs(
        r#"{ providers: { openai: { auth: [{ profile: "x", key: "$A" }, { profile: "x", key: "$B" }, { profile: "y" }] } },
             auth: { order: { openai: ["x", "yy"], opneai: ["x"] } } }"#,
        &MapEnv::new(),
    );
    assert_eq!(
        e,
        [
            "backstop.json5: providers.openai.auth[1].profile: duplicate profile name \"x\"; each profile of a provider needs its own name",
            "backstop.json5: providers.openai.auth[2].key: required: write $VAR, ${VAR} or file:PATH (omit `auth` for a server that needs no key)",
            "backstop.json5: auth.order.openai[1]: profile \"yy\" is not configured for provider \"openai\"; configured: x, y (did you mean \"y\"?)",
            "backstop.json5: auth.order.opneai: provider \"opneai\" is not configured; configured: openai (did you mean \"openai\"?)",
        ]
    );
}

// ---- unknown keys and many errors in one pass ----

#[test]
fn unknown_key_with_did_you_mean() {
    let e = errs(
        r#"{ providers: { openai: { bse_url: "https://x/v1", models: ["m"] } } }"#,
        &MapEnv::new(),
    );
    assert_eq!(
        e,
        [
            "backstop.json5: providers.openai.bse_url: unknown key (did you mean \"base_url\"?); valid keys: api, auth, base_url, headers, models"
        ]
    );
}

#[test]
fn many_errors_in_one_pass() {
    let e = errs(
        r#"{
          server: { listen: "localhost:80", max_body_bytes: 0 },
          providers: { openai: { models: ["gpt-4o"] } },
          retry: { max_attempts: 0, trigger_codes: [429, 600], budget_ratio: 1.5 },
          timeouts: { first_token_ms: 200000, idle_ms: 0 },
          stream: { commit: "complet", rescue: ["prefil"] },
          auth: { cooldowns: { transient: { base_ms: 60000, cap_ms: 1000 }, billing: { base_ms: 0 },
                               per_provider: { openai: { auth: { cap_ms: 1 } } } } },
          state: { redis_url: "http://cache", max_bytes: 0 },
        }"#,
        &MapEnv::new(),
    );
    let expected = [
        "server.listen: \"localhost:80\" is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8787\" or \"0.0.0.0:8787\"",
        "server.max_body_bytes: must be greater than 0; got 0",
        "retry.max_attempts: must be at least 1 (the first attempt counts); got 0",
        "retry.trigger_codes[1]: 600 is not an HTTP status; valid: 100..=599",
        "retry.budget_ratio: 1.5 is out of range; valid: 0..=1 (a fraction of recent requests)",
        "auth.cooldowns.transient.cap_ms: cap_ms (1000) must be at least base_ms (60000)",
        "auth.cooldowns.billing.base_ms: must be greater than 0; got 0",
        "auth.cooldowns.per_provider.openai.auth.cap_ms: cap_ms (1) must be at least base_ms (300000)",
        "timeouts.idle_ms: must be greater than 0; got 0",
        "timeouts.first_token_ms: 200000 must not exceed timeouts.request_ms (120000), the whole request's deadline",
        "stream.commit: \"complet\" is not valid; valid: first_content, complete (did you mean \"complete\"?)",
        "stream.rescue[0]: \"prefil\" is not valid; valid: prefill, splice (did you mean \"prefill\"?)",
        "state.redis_url: \"http://cache\" is not a Redis URL; it must start with redis://, rediss://, redis+unix:// or unix://",
        "state.max_bytes: must be greater than 0; got 0",
    ];
    let expected: Vec<String> = expected
        .iter()
        .map(|s| format!("backstop.json5: {s}"))
        .collect();
    assert_eq!(e, expected);
}

#[test]
fn type_errors_carry_the_key_path() {
    let e = errs(
        r#"{ retry: { max_attempts: "two" }, providers: { openai: { auth: [{ key: 5 }] } } }"#,
        &MapEnv::new(),
    );
    assert!(
        e.iter()
            .any(|l| l
                .starts_with("backstop.json5: retry.max_attempts: invalid type: string \"two\"")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.starts_with(
            "backstop.json5: providers.openai.auth[0].key: invalid type: integer `5`"
        )),
        "{e:?}"
    );
}

// ---- state ----

#[test]
fn session_store_budget_and_ttl() {
    let c = ok(
        r#"{ providers: { openai: { models: ["m"] } } }"#,
        &MapEnv::new().with_home("/h"),
    );
    assert_eq!(c.state.session_ttl_ms, 7 * 24 * 60 * 60 * 1000);
    assert_eq!(c.state.max_bytes, None);
    assert_eq!(c.state.session_max_bytes(), 8 * 1024 * 1024);
    let c = ok(
        r#"{ providers: { openai: { models: ["m"] } }, state: { max_bytes: 4096, session_ttl_ms: 60000 } }"#,
        &MapEnv::new().with_home("/h"),
    );
    assert_eq!(c.state.session_ttl_ms, 60_000);
    assert_eq!(c.state.session_max_bytes(), 4096);
    let e = errs(
        r#"{ providers: { openai: { models: ["m"] } }, state: { session_ttl_ms: 0 } }"#,
        &MapEnv::new().with_home("/h"),
    );
    assert_eq!(
        e,
        ["backstop.json5: state.session_ttl_ms: must be greater than 0; got 0"]
    );
    let e = errs(
        r#"{ providers: { openai: { models: ["m"] } }, state: { session_ttl: 5 } }"#,
        &MapEnv::new().with_home("/h"),
    );
    assert!(
        e[0].contains("state.session_ttl: unknown key (did you mean \"session_ttl_ms\"?)"),
        "{e:?}"
    );
}

#[test]
fn state_dir_expansion_and_override() {
    let c = ok(
        r#"{ providers: { openai: { models: ["m"] } }, state: { dir: "~/bs" } }"#,
        &MapEnv::new().with_home("/h"),
    );
    assert_eq!(c.state.dir, Path::new("/h/bs"));
    let env = MapEnv::new()
        .with_home("/h")
        .with("BACKSTOP_STATE_DIR", "~/override");
    let c = ok(
        r#"{ providers: { openai: { models: ["m"] } }, state: { dir: "/x" } }"#,
        &env,
    );
    assert_eq!(c.state.dir, Path::new("/h/override"));
    let e = errs(
        r#"{ providers: { openai: { models: ["m"] } }, state: { dir: "~/bs" } }"#,
        &MapEnv::new(),
    );
    assert!(
        e[0].contains("state.dir: cannot expand \"~/bs\": no home directory is known"),
        "{e:?}"
    );
}

#[test]
fn health_settings_and_their_errors() {
    let c = ok(
        r#"{ providers: { ollama: { models: ["m"] } }, health: { enabled: false, latency_multiple: 4, error_rate: 0.25, min_samples: 5, window_ms: 60000 } }"#,
        &MapEnv::new(),
    );
    assert!(!c.health.enabled);
    assert_eq!(c.health.latency_multiple, 4.0);
    assert_eq!(c.health.error_rate, 0.25);
    assert_eq!(c.health.min_samples, 5);
    assert_eq!(c.health.window_ms, 60_000);
    let d = ok(
        r#"{ providers: { ollama: { models: ["m"] } } }"#,
        &MapEnv::new(),
    );
    assert_eq!(d.health, crate::health::HealthConfig::default());
    let e = errs(
        r#"{ providers: { ollama: { models: ["m"] } }, health: { latency_multiple: 0.5, error_rate: 2, min_samples: 0, windw_ms: 1 } }"#,
        &MapEnv::new(),
    );
    let all = e.join("\n");
    assert!(
        all.contains("health.latency_multiple: 0.5 is not valid"),
        "{all}"
    );
    assert!(all.contains("health.error_rate: 2 is not valid"), "{all}");
    assert!(all.contains("health.min_samples: 0 is not valid"), "{all}");
    assert!(
        all.contains("health.windw_ms: unknown key (did you mean \"window_ms\"?)"),
        "{all}"
    );
}
