//! `auth-profiles.json` in the state dir.

use super::*;
use crate::secret::SecretSource;

fn setup(profiles: &str) -> (TempDir, MapEnv) {
    let dir = TempDir::new("profiles");
    let p = dir.write("state/auth-profiles.json", profiles);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let env = keys_env().with("BACKSTOP_STATE_DIR", dir.0.join("state").to_str().unwrap());
    (dir, env)
}

const PROFILES: &str = r#"{
  "version": 1,
  "profiles": {
    "openai:work": { "type": "api_key", "provider": "openai", "key": "sk-file-work-secretsecret-1111" },
    "openai:default": { "type": "api_key", "provider": "openai", "key": "sk-file-default-secretsecret-2222" },
    "anthropic:me": { "type": "token", "provider": "anthropic", "token": "sk-ant-oat-secretsecret-3333" },
    "ollama:box": { "type": "api_key", "key": "local-secretsecret-4444" },
    "nowhere:x": { "type": "api_key", "key": "sk-nowhere-secretsecret-5555" },
    "openai:oauth": { "type": "oauth", "access": "secretsecret-6666" },
    "openai:empty": { "type": "api_key", "key": "" },
    "broken": { "type": "api_key", "key": "sk-broken-secretsecret-7777" }
  }
}"#;

const CONFIG: &str = r#"{
  providers: {
    openai: { auth: [{ key: "$OPENAI_API_KEY" }], models: ["gpt-4o"] },
    anthropic: { auth: [{ profile: "team", key: "$ANTHROPIC_API_KEY" }], models: ["claude-opus-4-5"] },
    ollama: { models: ["llama3.2"] },
  },
  auth: { order: { openai: ["work", "default"] } },
}"#;

#[test]
fn file_profiles_are_added_and_config_profiles_win() {
    let (_dir, env) = setup(PROFILES);
    let c = ok(CONFIG, &env);
    let openai = c.provider("openai").unwrap();
    let names: Vec<&str> = openai.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "work"]);
    // The config's `default` wins over the file's.
    assert_eq!(
        openai.profiles[0].key.as_ref().unwrap().expose(),
        "sk-proj-secretsecret-BBBB"
    );
    let work = openai.profiles[1].key.as_ref().unwrap();
    assert_eq!(work.expose(), "sk-file-work-secretsecret-1111");
    assert!(matches!(work.source(), SecretSource::File(p) if p.ends_with("auth-profiles.json")));
    // `auth.order` may name a profile from the file.
    assert_eq!(c.auth.order["openai"], ["work", "default"]);
    let anthropic = c.provider("anthropic").unwrap();
    assert_eq!(anthropic.profiles[1].name, "me");
    assert_eq!(
        anthropic.profiles[1].key.as_ref().unwrap().expose(),
        "sk-ant-oat-secretsecret-3333"
    );
    // The implicit keyless profile gives way to the file's.
    let ollama = c.provider("ollama").unwrap();
    assert_eq!(ollama.profiles.len(), 1);
    assert_eq!(ollama.profiles[0].name, "box");

    let w = c.warnings.join("\n");
    assert!(
        w.contains("profiles[\"nowhere:x\"]: provider \"nowhere\" is not configured"),
        "{w}"
    );
    assert!(
        w.contains("profiles[\"openai:oauth\"].type: \"oauth\" is not supported"),
        "{w}"
    );
    assert!(
        w.contains("profiles[\"openai:empty\"].key: expected a non-empty string"),
        "{w}"
    );
    assert!(
        w.contains("profiles[\"broken\"]: expected a \"provider:profile\" key"),
        "{w}"
    );
    assert!(
        !w.contains("secretsecret"),
        "a key leaked into a warning: {w}"
    );
    assert!(!w.contains("wider than 0600"), "{w}");
    // `check` output never shows a key either.
    let dump = c.redacted_json().to_string();
    assert!(!dump.contains("secretsecret"), "{dump}");
}

#[cfg(unix)]
#[test]
fn a_file_readable_by_others_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, env) = setup(PROFILES);
    let p = dir.0.join("state/auth-profiles.json");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = ok(CONFIG, &env);
    let w = c.warnings.join("\n");
    assert!(w.contains("file mode 0644 is wider than 0600"), "{w}");
    // Still loaded.
    assert_eq!(c.provider("openai").unwrap().profiles.len(), 2);
}

#[test]
fn a_bad_file_is_a_warning_never_an_error() {
    let (_dir, env) = setup("{ not json sk-secretsecret-9999");
    let c = ok(&CONFIG.replace("work", "default"), &env);
    let w = c.warnings.join("\n");
    assert!(w.contains("auth-profiles.json: not valid JSON"), "{w}");
    assert!(!w.contains("secretsecret"), "{w}");
    assert_eq!(c.provider("openai").unwrap().profiles.len(), 1);
}

#[test]
fn no_file_changes_nothing() {
    let dir = TempDir::new("noprofiles");
    let env = keys_env().with("BACKSTOP_STATE_DIR", dir.0.to_str().unwrap());
    let c = ok(&CONFIG.replace("work", "default"), &env);
    assert_eq!(c.provider("openai").unwrap().profiles.len(), 1);
    assert!(c.warnings.iter().all(|w| !w.contains("auth-profiles")));
}

#[test]
fn profiles_are_added_to_a_config_built_from_the_environment() {
    let (_dir, env) = setup(PROFILES);
    let c = from_env(&env).unwrap();
    let names: Vec<&str> = c
        .provider("openai")
        .unwrap()
        .profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["default", "work"]);
}
