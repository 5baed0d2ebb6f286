//! Chains, agents and the seed shapes.

use super::*;
use crate::config::*;

// ---- chains ----

#[test]
fn unknown_provider_in_a_chain() {
    let e = errs(
        r#"{ providers: { anthropic: {}, openai: {}, openrouter: {} },
             agents: { defaults: { model: { primary: "anthropic/claude-opus-4-5", fallbacks: ["openai/gpt-4o", "opnai/gpt-4o", "gpt-4o"] } },
                       list: [{ id: "x", model: { primary: "groq/llama" } }] } }"#,
        &MapEnv::new(),
    );
    assert_eq!(
        e,
        [
            "backstop.json5: agents.defaults.model.fallbacks[1]: provider \"opnai\" is not configured; configured: anthropic, openai, openrouter (did you mean \"openai\"?)",
            "backstop.json5: agents.defaults.model.fallbacks[2]: \"gpt-4o\" must be written provider/model, e.g. \"openai/gpt-4o\"; configured providers: anthropic, openai, openrouter",
            "backstop.json5: agents.list[0].model.primary: provider \"groq\" is not configured; configured: anthropic, openai, openrouter",
        ]
    );
}

#[test]
fn agents_inherit_default_fallbacks_unless_given() {
    let c = ok(THREE, &keys_env());
    assert_eq!(c.agent("cheap").unwrap().chain.fallbacks, []);
    assert_eq!(
        names(&c.agent("inherit").unwrap().chain.fallbacks),
        ["openai/gpt-4o", "openrouter/anthropic/claude-3.5-sonnet"]
    );
    let or = &c.default_chain.fallbacks[1];
    assert_eq!(
        (or.provider.as_str(), or.model.as_str()),
        ("openrouter", "anthropic/claude-3.5-sonnet")
    );
}

#[test]
fn agent_id_rules() {
    let e = errs(
        r#"{ providers: { openai: { models: ["m"] } },
             agents: { list: [ { id: "", model: { primary: "openai/m" } }, { id: "default", model: { primary: "openai/m" } },
                               { id: "a/b", model: { primary: "openai/m" } }, { id: "ok", model: { primary: "openai/m" } },
                               { id: "ok", model: { primary: "openai/m" } }, { id: "nomodel" } ] } }"#,
        &MapEnv::new(),
    );
    assert_eq!(e.len(), 5, "{e:?}");
    assert!(e[0].contains("agents.list[0].id: required"));
    assert!(e[1].contains("agents.list[1].id: \"default\" cannot be an agent id"));
    assert!(e[2].contains("agents.list[2].id: \"a/b\" cannot be an agent id"));
    assert!(e[3].contains("agents.list[4].id: duplicate agent id \"ok\""));
    assert!(e[4].contains("agents.list[5].model.primary: required"));
}

#[test]
fn no_default_chain() {
    let e = errs("{}", &MapEnv::new());
    assert_eq!(
        e,
        [
            "backstop.json5: agents.defaults.model.primary: required (no default chain): no providers are configured; add one under `providers`"
        ]
    );
    let e = errs("{ providers: { openai: {} } }", &MapEnv::new());
    assert_eq!(
        e,
        [
            "backstop.json5: agents.defaults.model.primary: required (no default chain): write agents.defaults.model.primary, or give provider \"openai\" a `models` catalogue to take the first model from"
        ]
    );
}

// ---- the seed shapes, as the seeds write them ----

/// seeds/001: the "recommended failover strategy" template, verbatim.
const SEED_001_TEMPLATE: &str = r#"{
  "providers": {
    "anthropic": {
      "auth": [
        { "key": "key-a", "profile": "Primary" },
        { "key": "key-b", "profile": "Backup" }
      ]
    },
    "openai": {
      "auth": [
        { "key": "key-c", "profile": "Primary" }
      ]
    },
    "openrouter": {
      "auth": [
        { "key": "key-d", "profile": "Primary" }
      ]
    }
  },
  "agents": {
    "defaults": {
      "model": {
        "primary": "anthropic/claude-opus-4-5",
        "fallback": "openai/gpt-4o",
        "fallback2": "openrouter/anthropic/claude-3.5-sonnet"
      }
    }
  }
}"#;

/// seeds/003: the YAML of the feature request, verbatim.
const SEED_003_YAML: &str = "providers:
  fallback:
    - anthropic/claude-opus-4
    - openai/gpt-4o
    - anthropic/claude-sonnet-4
  retry:
    max_attempts: 2          # per provider before moving to next
    backoff_ms: 1000         # exponential backoff base
    trigger_codes: [429, 500, 502, 503, 504]
    trigger_on_auth_failure: true
    trigger_on_timeout: true  # provider response timeout
";

#[test]
fn seed_001_fallback_keys() {
    let c = ok(SEED_001_TEMPLATE, &MapEnv::new().with_home("/h"));
    assert_eq!(
        c.default_chain.primary.to_string(),
        "anthropic/claude-opus-4-5"
    );
    assert_eq!(
        names(&c.default_chain.fallbacks),
        ["openai/gpt-4o", "openrouter/anthropic/claude-3.5-sonnet"]
    );
    let a = c.provider("anthropic").unwrap();
    assert_eq!(a.api, WireFormat::Anthropic);
    assert_eq!(
        a.profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["Primary", "Backup"]
    );
    assert_eq!(
        c.warnings.len(),
        4,
        "every literal key warns: {:?}",
        c.warnings
    );

    // The four-level chain of seed 001 (with fallback3); its bedrock entry is not supported.
    let four = r#"{ "providers": { "anthropic": {}, "openai": {}, "openrouter": {} },
      "agents": { "defaults": { "model": {
        "primary": "anthropic/claude-opus-4-5",
        "fallback": "bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0",
        "fallback2": "openai/gpt-4o",
        "fallback3": "openrouter/anthropic/claude-3.5-sonnet" } } } }"#;
    let e = errs(four, &MapEnv::new());
    assert_eq!(
        e,
        [
            "backstop.json5: agents.defaults.model.fallback: provider \"bedrock\" is not configured; configured: anthropic, openai, openrouter (provider \"bedrock\" is not supported yet)"
        ]
    );
    let three = four.replace(
        "bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0",
        "anthropic/claude-sonnet-4-5",
    );
    let c = ok(&three, &MapEnv::new());
    assert_eq!(
        names(&c.default_chain.fallbacks),
        [
            "anthropic/claude-sonnet-4-5",
            "openai/gpt-4o",
            "openrouter/anthropic/claude-3.5-sonnet"
        ]
    );

    let both = r#"{ providers: { openai: {} }, agents: { defaults: { model: { primary: "openai/a", fallbacks: [], fallback: "openai/b" } } } }"#;
    assert_eq!(
        errs(both, &MapEnv::new()),
        [
            "backstop.json5: agents.defaults.model.fallbacks: give either `fallbacks` or `fallback`/`fallback2`/`fallback3`, not both"
        ]
    );
}

#[test]
fn seed_003_providers_fallback_and_retry() {
    // Verbatim, the seed names providers it never configures.
    let e = errs_fmt(SEED_003_YAML, Format::Yaml, &MapEnv::new());
    assert_eq!(
        e,
        [
            "backstop.json5: providers.fallback[0]: provider \"anthropic\" is not configured; configured: (none)",
            "backstop.json5: providers.fallback[1]: provider \"openai\" is not configured; configured: (none)",
            "backstop.json5: providers.fallback[2]: provider \"anthropic\" is not configured; configured: (none)",
        ]
    );
    let text = format!(
        "{SEED_003_YAML}  anthropic:\n    auth:\n      - key: $ANTHROPIC_API_KEY\n  openai: {{}}\n"
    );
    let c = from_str(&text, Format::Yaml, ConfigOrigin::Environment, &keys_env()).unwrap();
    assert_eq!(
        c.default_chain.primary.to_string(),
        "anthropic/claude-opus-4"
    );
    assert_eq!(
        names(&c.default_chain.fallbacks),
        ["openai/gpt-4o", "anthropic/claude-sonnet-4"]
    );
    assert_eq!(
        c.retry,
        RetryConfig::default(),
        "the seed's values are the defaults"
    );
    let ids: Vec<&str> = c.providers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        ["anthropic", "openai"],
        "the seed keys are not providers"
    );

    let custom = text.replace("max_attempts: 2", "max_attempts: 5");
    let c = from_str(
        &custom,
        Format::Yaml,
        ConfigOrigin::Environment,
        &keys_env(),
    )
    .unwrap();
    assert_eq!(c.retry.max_attempts, 5);

    let both = format!(
        "{text}retry:\n  max_attempts: 3\nagents:\n  defaults:\n    model:\n      primary: openai/gpt-4o\n"
    );
    assert_eq!(
        errs_fmt(&both, Format::Yaml, &keys_env()),
        [
            "backstop.json5: providers.retry: both `retry` and `providers.retry` are given; keep one (the top-level `retry` is preferred)",
            "backstop.json5: providers.fallback: both agents.defaults.model and providers.fallback define the default chain; keep one",
        ]
    );
}
