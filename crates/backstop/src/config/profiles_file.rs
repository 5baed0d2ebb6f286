//! `auth-profiles.json` in the state dir: credentials kept apart from the config, in
//! OpenClaw's shape.
//!
//! ```json
//! { "version": 1,
//!   "profiles": {
//!     "openai:work": { "type": "api_key", "provider": "openai", "key": "sk-…" },
//!     "anthropic:me": { "type": "token", "provider": "anthropic", "token": "…" } } }
//! ```
//!
//! Each profile is added to its (configured) provider's profiles, after the config's own;
//! a config profile of the same name wins. A provider whose only profile is the implicit
//! keyless `default` gets the file's profiles instead. Nothing here is fatal: a bad file
//! or entry is a warning naming its key path, and keys never appear in one. The file
//! should be mode 0600; a wider mode is a warning.

use super::providers::Declared;
use super::validate::Ctx;
use super::{AuthProfile, ProviderConfig};
use crate::secret::{Secret, SecretSource};
use serde_json::Value;
use std::path::Path;

/// The credentials file's name inside `state.dir`.
pub const AUTH_PROFILES_FILE: &str = "auth-profiles.json";

pub(crate) fn add_file_profiles(
    dir: &Path,
    providers: &mut [ProviderConfig],
    declared: &mut [Declared],
    cx: &mut Ctx<'_>,
) {
    let path = dir.join(AUTH_PROFILES_FILE);
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            cx.warn(
                &shown,
                format!("cannot read it ({e}); its profiles are skipped"),
            );
            return;
        }
    };
    check_mode(&path, &shown, cx);
    let root: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            // serde_json's message names a line and column, never the text.
            cx.warn(
                &shown,
                format!("not valid JSON ({e}); its profiles are skipped"),
            );
            return;
        }
    };
    if let Some(v) = root.get("version")
        && v.as_u64().is_none_or(|n| n > 1)
    {
        cx.warn(
            &format!("{shown}: version"),
            format!("{v} is not a version this Backstop knows (1); reading what it understands"),
        );
    }
    let Some(profiles) = root.get("profiles").and_then(Value::as_object) else {
        cx.warn(
            &shown,
            "expected {\"profiles\": {\"provider:profile\": {…}}}",
        );
        return;
    };
    for (key, entry) in profiles {
        let epath = format!("{shown}: profiles[{key:?}]");
        let Some((provider_id, name)) = key.split_once(':').filter(|(p, n)| {
            !p.is_empty() && !n.is_empty() && !n.contains(':') && !n.contains('/')
        }) else {
            cx.warn(&epath, "expected a \"provider:profile\" key; skipped");
            continue;
        };
        let Some(entry) = entry.as_object() else {
            cx.warn(&epath, "expected an object; skipped");
            continue;
        };
        if let Some(p) = entry.get("provider")
            && p.as_str() != Some(provider_id)
        {
            cx.warn(
                &format!("{epath}.provider"),
                format!(
                    "does not match the key's provider \"{provider_id}\"; using \"{provider_id}\""
                ),
            );
        }
        let field = match entry.get("type").and_then(Value::as_str) {
            Some("api_key") | None => "key",
            Some("token") => "token",
            Some(other) => {
                cx.warn(
                    &format!("{epath}.type"),
                    format!("\"{other}\" is not supported (api_key, token); skipped"),
                );
                continue;
            }
        };
        let Some(key_value) = entry
            .get(field)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|k| !k.is_empty())
        else {
            cx.warn(
                &format!("{epath}.{field}"),
                "expected a non-empty string; skipped",
            );
            continue;
        };
        let Some(i) = providers.iter().position(|p| p.id == provider_id) else {
            cx.warn(
                &epath,
                format!("provider \"{provider_id}\" is not configured; skipped"),
            );
            continue;
        };
        let provider = &mut providers[i];
        if provider
            .profiles
            .iter()
            .any(|p| p.name == name && p.key.is_some())
        {
            continue; // the config's own profile wins
        }
        // The implicit keyless profile gives way to real credentials.
        provider.profiles.retain(|p| p.key.is_some());
        provider.profiles.push(AuthProfile {
            name: name.to_owned(),
            key: Some(Secret::new(key_value, SecretSource::File(shown.clone()))),
        });
        if let Some(d) = declared.iter_mut().find(|d| d.id == provider_id) {
            for list in [&mut d.profiles, &mut d.usable] {
                if !list.iter().any(|n| n == name) {
                    list.push(name.to_owned());
                }
            }
        }
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, shown: &str, cx: &mut Ctx<'_>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            cx.warn(
                shown,
                format!("file mode {mode:04o} is wider than 0600: other users may read these keys; run chmod 600 {shown}"),
            );
        }
    }
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _shown: &str, _cx: &mut Ctx<'_>) {}
