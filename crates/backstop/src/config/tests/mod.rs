//! Loading, validation, resolution and redaction, end to end with a [`MapEnv`].

mod chains;
mod loading;
mod profiles_file;
mod routing;

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) fn ok(text: &str, env: &MapEnv) -> Config {
    match from_str(text, Format::Json5, ConfigOrigin::Environment, env) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

pub(super) fn errs(text: &str, env: &MapEnv) -> Vec<String> {
    errs_fmt(text, Format::Json5, env)
}

pub(super) fn errs_fmt(text: &str, format: Format, env: &MapEnv) -> Vec<String> {
    match from_str(
        text,
        format,
        ConfigOrigin::File("backstop.json5".into()),
        env,
    ) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

pub(super) fn names(targets: &[ModelRef]) -> Vec<String> {
    targets.iter().map(ToString::to_string).collect()
}

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) std::path::PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("backstop-config-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub(super) fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) const THREE: &str = r#"{
  providers: {
    anthropic: { auth: [{ key: "$ANTHROPIC_API_KEY" }], models: ["claude-opus-4-5"] },
    openai: { auth: [{ key: "$OPENAI_API_KEY" }], models: ["gpt-4o", "gpt-4o-mini"] },
    openrouter: { auth: [{ key: "$OPENROUTER_API_KEY" }], models: ["anthropic/claude-3.5-sonnet"] },
  },
  agents: {
    defaults: { model: { primary: "anthropic/claude-opus-4-5",
                         fallbacks: ["openai/gpt-4o", "openrouter/anthropic/claude-3.5-sonnet"] } },
    list: [
      { id: "cheap", model: { primary: "openai/gpt-4o-mini", fallbacks: [] } },
      { id: "inherit", model: { primary: "openai/gpt-4o-mini" } },
    ],
  },
}"#;

pub(super) fn keys_env() -> MapEnv {
    MapEnv::new()
        .with("ANTHROPIC_API_KEY", "sk-ant-api03-secretsecret-AAAA")
        .with("OPENAI_API_KEY", "sk-proj-secretsecret-BBBB")
        .with("OPENROUTER_API_KEY", "sk-or-v1-secretsecret-CCCC")
        .with_home("/home/op")
}
