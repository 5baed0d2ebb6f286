//! The environment a config is loaded in: variables, the home directory and the
//! working directory, behind a trait so tests never touch the real process environment.

use std::collections::HashMap;
use std::path::PathBuf;

/// Where configuration loading reads environment variables and directories from.
pub trait Env {
    /// The value of an environment variable, `None` when unset.
    fn var(&self, name: &str) -> Option<String>;
    /// The user's home directory, for `~` expansion.
    fn home(&self) -> Option<PathBuf>;
    /// The working directory, where `./backstop.json5` is looked for.
    fn current_dir(&self) -> Option<PathBuf> {
        std::env::current_dir().ok()
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn home(&self) -> Option<PathBuf> {
        std::env::home_dir()
    }
}

/// A map-backed environment for tests and embedding.
///
/// ```
/// use backstop::config::{Env, MapEnv};
/// let env = MapEnv::new().with("OPENAI_API_KEY", "sk-test");
/// assert_eq!(env.var("OPENAI_API_KEY").as_deref(), Some("sk-test"));
/// assert_eq!(env.home(), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MapEnv {
    pub vars: HashMap<String, String>,
    pub home: Option<PathBuf>,
    /// `None` = no working directory (so `./backstop.json5` is never found).
    pub cwd: Option<PathBuf>,
}

impl MapEnv {
    pub fn new() -> Self {
        MapEnv::default()
    }

    /// Set a variable (builder style).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    pub fn with_home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn home(&self) -> Option<PathBuf> {
        self.home.clone()
    }

    fn current_dir(&self) -> Option<PathBuf> {
        self.cwd.clone()
    }
}
