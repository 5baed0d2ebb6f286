//! Resolution, `/v1/models`, redaction and the example config.

use super::*;
use crate::config::*;
use std::path::Path;

const EXAMPLE: &str = include_str!("../../../../../examples/backstop.json5");

// ---- resolution ----

#[test]
fn resolution_rules() {
    let c = ok(THREE, &keys_env());
    let r = c.resolve("default", None).unwrap();
    assert_eq!(r.agent.as_deref(), Some("default"));
    assert_eq!(
        names(&r.targets),
        [
            "anthropic/claude-opus-4-5",
            "openai/gpt-4o",
            "openrouter/anthropic/claude-3.5-sonnet"
        ]
    );
    let r = c.resolve("cheap", None).unwrap();
    assert_eq!(r.agent.as_deref(), Some("cheap"));
    assert_eq!(names(&r.targets), ["openai/gpt-4o-mini"]);

    // provider/model: that model, then the default fallbacks (not in the catalogue: allowed).
    let r = c.resolve("openai/o3", None).unwrap();
    assert_eq!(r.agent, None);
    assert_eq!(
        names(&r.targets),
        [
            "openai/o3",
            "openai/gpt-4o",
            "openrouter/anthropic/claude-3.5-sonnet"
        ]
    );
    // De-duplicated, keeping the first.
    let r = c.resolve("openai/gpt-4o", None).unwrap();
    assert_eq!(
        names(&r.targets),
        ["openai/gpt-4o", "openrouter/anthropic/claude-3.5-sonnet"]
    );
    // The provider is split at the first '/'.
    let r = c
        .resolve("openrouter/anthropic/claude-3.5-sonnet", None)
        .unwrap();
    assert_eq!(r.targets[0].provider, "openrouter");
    assert_eq!(r.targets[0].model, "anthropic/claude-3.5-sonnet");
    assert_eq!(
        names(&r.targets),
        ["openrouter/anthropic/claude-3.5-sonnet", "openai/gpt-4o"]
    );
    // A bare name from a catalogue (the first provider listing it); slashes included.
    let r = c.resolve("gpt-4o-mini", None).unwrap();
    assert_eq!(
        names(&r.targets),
        [
            "openai/gpt-4o-mini",
            "openai/gpt-4o",
            "openrouter/anthropic/claude-3.5-sonnet"
        ]
    );
    // "anthropic" is a configured provider, so provider/model wins over openrouter's catalogue entry.
    let r = c.resolve("anthropic/claude-3.5-sonnet", None).unwrap();
    assert_eq!(
        (r.targets[0].provider.as_str(), r.targets[0].model.as_str()),
        ("anthropic", "claude-3.5-sonnet")
    );
}

#[test]
fn bare_name_with_slash_found_in_a_catalogue() {
    let c = ok(
        r#"{ providers: { openrouter: { models: ["meta-llama/llama-3.3-70b"] } } }"#,
        &MapEnv::new(),
    );
    let r = c.resolve("meta-llama/llama-3.3-70b", None).unwrap();
    assert_eq!(names(&r.targets), ["openrouter/meta-llama/llama-3.3-70b"]);
}

#[test]
fn unknown_model_lists_what_is_configured() {
    let c = ok(THREE, &keys_env());
    let e = c.resolve("gpt-5", None).unwrap_err();
    let ResolveError::UnknownModel { requested, message } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(requested, "gpt-5");
    assert_eq!(
        message,
        "model \"gpt-5\" is not configured; agents: default, cheap, inherit; models: anthropic/claude-opus-4-5, openai/gpt-4o, openai/gpt-4o-mini, openrouter/anthropic/claude-3.5-sonnet; or write provider/model with a configured provider (anthropic, openai, openrouter)"
    );
    assert_eq!(e.to_string(), *message);
    assert!(matches!(
        c.resolve("groq/llama", None),
        Err(ResolveError::UnknownModel { .. })
    ));
}

#[test]
fn fallbacks_header() {
    let c = ok(THREE, &keys_env());
    let r = c
        .resolve(
            "default",
            Some(" openrouter/anthropic/claude-3.5-sonnet , openai/o3 "),
        )
        .unwrap();
    assert_eq!(
        names(&r.targets),
        [
            "anthropic/claude-opus-4-5",
            "openrouter/anthropic/claude-3.5-sonnet",
            "openai/o3"
        ]
    );
    assert_eq!(
        names(&c.resolve("default", Some("")).unwrap().targets),
        ["anthropic/claude-opus-4-5"]
    );
    assert_eq!(
        names(&c.resolve("cheap", Some("  ")).unwrap().targets),
        ["openai/gpt-4o-mini"]
    );
    // The header's first entry equal to the first target is de-duplicated.
    let r = c
        .resolve(
            "openai/gpt-4o",
            Some("openai/gpt-4o,anthropic/claude-opus-4-5"),
        )
        .unwrap();
    assert_eq!(
        names(&r.targets),
        ["openai/gpt-4o", "anthropic/claude-opus-4-5"]
    );
    let e = c
        .resolve("default", Some("openai/gpt-4o,opnai/gpt-4o"))
        .unwrap_err();
    assert_eq!(
        e,
        ResolveError::BadFallbacks {
            message: "x-backstop-fallbacks: \"opnai/gpt-4o\" is not provider/model of a configured provider; configured providers: anthropic, openai, openrouter".into()
        }
    );
    assert!(matches!(
        c.resolve("default", Some("gpt-4o")),
        Err(ResolveError::BadFallbacks { .. })
    ));
}

#[test]
fn model_ids_for_v1_models() {
    let c = ok(THREE, &keys_env());
    assert_eq!(
        c.model_ids(),
        [
            "default",
            "cheap",
            "inherit",
            "anthropic/claude-opus-4-5",
            "openai/gpt-4o",
            "openai/gpt-4o-mini",
            "openrouter/anthropic/claude-3.5-sonnet"
        ]
    );
}

// ---- redaction ----

#[test]
fn redacted_json_never_holds_a_raw_key() {
    let dir = TempDir::new("redact");
    dir.write("k.txt", "sk-filekey-secretsecret-DDDD");
    let cfg = dir.write(
        "backstop.json5",
        r#"{ server: { api_keys: ["$CLIENT"] },
             providers: { openai: { auth: [{ profile: "env", key: "$OPENAI_API_KEY" }, { profile: "lit", key: "sk-literal-secretsecret-EEEE" },
                                           { profile: "file", key: "file:k.txt" }],
                                    headers: { "X-Auth": "Bearer secretsecret-header" }, models: ["gpt-4o"] },
                          proxied: { api: "openai", base_url: "https://gw:urlsecretsecret@llm.example/v1/a@b", models: ["m"] } },
             state: { redis_url: "redis://user:redispassword@cache:6379" } }"#,
    );
    let env = keys_env().with("CLIENT", "client-secretsecret-FFFF");
    let c = load(Some(&cfg), &env).unwrap();
    let j = c.redacted_json();
    let text = j.to_string();
    for raw in ["secretsecret", "redispassword"] {
        assert!(!text.contains(raw), "{raw} leaked: {text}");
    }
    let auth = &j["providers"]["openai"]["auth"];
    assert_eq!(auth[0]["key"], "sk-…BBBB (from $OPENAI_API_KEY)");
    assert_eq!(auth[1]["key"], "sk-…EEEE (literal)");
    assert_eq!(
        auth[2]["key"],
        format!("sk-…DDDD (from file:{})", dir.0.join("k.txt").display())
    );
    assert_eq!(j["server"]["api_keys"][0], "client-…FFFF (from $CLIENT)");
    assert_eq!(j["state"]["redis_url"], "redis://user:…@cache:6379");
    // A password in a base_url is masked the same way; an `@` in its path is not userinfo.
    assert_eq!(
        j["providers"]["proxied"]["base_url"],
        "https://gw:…@llm.example/v1/a@b"
    );
    assert_eq!(
        j["providers"]["openai"]["base_url"],
        "https://api.openai.com/v1"
    );
    assert_eq!(j["agents"]["defaults"]["model"]["primary"], "openai/gpt-4o");
    assert_eq!(j["retry"]["max_attempts"], 2);
    assert!(j.get("warnings").is_none());
}

// ---- the example ----

#[test]
fn example_config_loads_with_and_without_keys() {
    let origin = ConfigOrigin::File("examples/backstop.json5".into());
    let c = from_str(EXAMPLE, Format::Json5, origin.clone(), &keys_env()).unwrap();
    assert_eq!(
        c.default_chain.primary.to_string(),
        "anthropic/claude-sonnet-4-5"
    );
    assert_eq!(
        names(&c.default_chain.fallbacks),
        ["openai/gpt-4o", "openrouter/anthropic/claude-sonnet-4.5"]
    );
    assert_eq!(
        names(&c.resolve("cheap", None).unwrap().targets),
        ["openai/gpt-4o-mini", "openrouter/openai/gpt-4o-mini"]
    );
    let a = c.provider("anthropic").unwrap();
    assert_eq!(
        a.profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["work"]
    );
    assert_eq!(a.model("claude-sonnet-4-5").unwrap().prefill, Some(true));
    assert_eq!(c.state.dir, Path::new("/home/op/.backstop"));
    assert_eq!(c.auth.order["anthropic"], ["work"]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("ANTHROPIC_API_KEY_PERSONAL is not set"));

    let all = keys_env().with("ANTHROPIC_API_KEY_PERSONAL", "sk-ant-personal-1234567");
    let c = from_str(EXAMPLE, Format::Json5, origin.clone(), &all).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.auth.order["anthropic"], ["work", "personal"]);

    // A fresh machine without any key still starts; every profile is skipped with a warning.
    let c = from_str(
        EXAMPLE,
        Format::Json5,
        origin,
        &MapEnv::new().with_home("/home/op"),
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 4, "{:?}", c.warnings);
    assert!(c.providers.iter().all(|p| p.profiles.is_empty()));
}
