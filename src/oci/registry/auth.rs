#![forbid(unsafe_code)]
//! Registry credentials, looked up the way skopeo (containers/image) does.
//!
//! Files, first match wins:
//! 1. `$REGISTRY_AUTH_FILE` when set, otherwise
//!    `$XDG_RUNTIME_DIR/containers/auth.json` and
//!    `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/…`);
//! 2. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! In each file's `auths` map, the most specific key wins:
//! `registry/namespace/repo`, then its parents, then `registry`. Keys may
//! carry a scheme and a path (`https://index.docker.io/v1/`), and the
//! Docker Hub answers to `docker.io`, `index.docker.io` and
//! `registry-1.docker.io`. An entry gives `auth` (base64 `user:password`)
//! or `username` and `password`. Credential helpers are not run: metalor
//! spawns nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::error::RegistryError;
use super::reference::{ImageReference, DOCKER_HUB};

/// What to present to a registry.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// No credentials; bearer-token registries still hand out anonymous
    /// pull tokens.
    #[default]
    Anonymous,
    /// A user name and password (basic auth, or the token exchange).
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
        }
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The auth files to consult, in order, from the process environment.
pub fn auth_file_candidates() -> Vec<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut files = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        files.push(file);
    } else {
        if let Some(run) = env("XDG_RUNTIME_DIR") {
            files.push(run.join("containers/auth.json"));
        }
        match (env("XDG_CONFIG_HOME"), &home) {
            (Some(cfg), _) => files.push(cfg.join("containers/auth.json")),
            (None, Some(home)) => files.push(home.join(".config/containers/auth.json")),
            _ => {}
        }
    }
    match (env("DOCKER_CONFIG"), &home) {
        (Some(dir), _) => files.push(dir.join("config.json")),
        (None, Some(home)) => files.push(home.join(".docker/config.json")),
        _ => {}
    }
    files
}

/// Finds credentials for `reference` in the standard auth files; none
/// found means [`Credentials::Anonymous`]. A file that exists but is
/// broken is an error rather than a silent anonymous pull.
pub fn lookup(reference: &ImageReference) -> Result<Credentials, RegistryError> {
    lookup_in(&auth_file_candidates(), reference)
}

/// [`lookup`] over an explicit list of files.
pub fn lookup_in(
    files: &[PathBuf],
    reference: &ImageReference,
) -> Result<Credentials, RegistryError> {
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(file_err(path, e.to_string())),
        };
        if let Some(creds) = lookup_in_bytes(path, &bytes, reference)? {
            return Ok(creds);
        }
    }
    Ok(Credentials::Anonymous)
}

/// One auth file's answer for `reference`, from its contents (`path`
/// names it in errors). Public, hidden, for the fuzz harness.
#[doc(hidden)]
pub fn lookup_in_bytes(
    path: &Path,
    bytes: &[u8],
    reference: &ImageReference,
) -> Result<Option<Credentials>, RegistryError> {
    let file: AuthFile =
        serde_json::from_slice(bytes).map_err(|e| file_err(path, e.to_string()))?;
    find(path, &file, reference)
}

fn file_err(path: &Path, reason: String) -> RegistryError {
    RegistryError::AuthFile {
        path: path.to_path_buf(),
        reason,
    }
}

/// The entry for the most specific matching key of one file.
fn find(
    path: &Path,
    file: &AuthFile,
    reference: &ImageReference,
) -> Result<Option<Credentials>, RegistryError> {
    let mut by_key: BTreeMap<String, &AuthEntry> = BTreeMap::new();
    for (key, entry) in &file.auths {
        by_key.entry(normalize_key(key)).or_insert(entry);
    }
    let mut scope = format!("{}/{}", reference.registry, reference.repository);
    loop {
        if let Some(entry) = by_key.get(&scope) {
            if let Some(creds) = decode(path, &scope, entry)? {
                return Ok(Some(creds));
            }
        }
        match scope.rfind('/') {
            Some(i) => scope.truncate(i),
            None => return Ok(None),
        }
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/x` → `h:5000/x`.
pub(crate) fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let (host, rest) = match key.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    // Docker's legacy keys end in /v1 or /v2; they name the whole host.
    match rest {
        None | Some("v1") | Some("v2") => host.to_owned(),
        Some(r) => format!("{host}/{r}"),
    }
}

fn decode(path: &Path, key: &str, entry: &AuthEntry) -> Result<Option<Credentials>, RegistryError> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| file_err(path, format!("entry {key:?}: auth is not base64: {e}")))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| file_err(path, format!("entry {key:?}: auth is not UTF-8")))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| file_err(path, format!("entry {key:?}: auth is not user:password")))?;
        return Ok(Some(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn base64_and_plain_entries_and_specificity() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.json",
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dTE6cDE="},
                "127.0.0.1:5000/team":{"username":"u2","password":"p2"}}}"#,
        );
        let r = ImageReference::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(
            lookup_in(std::slice::from_ref(&a), &r).unwrap(),
            basic("u2", "p2")
        );
        let r = ImageReference::parse("127.0.0.1:5000/other").unwrap();
        assert_eq!(
            lookup_in(std::slice::from_ref(&a), &r).unwrap(),
            basic("u1", "p1")
        );
        let r = ImageReference::parse("127.0.0.1:5001/other").unwrap();
        assert_eq!(lookup_in(&[a], &r).unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn docker_hub_legacy_key_and_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let docker = write(
            dir.path(),
            "config.json",
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="}}}"#,
        );
        let r = ImageReference::parse("debian").unwrap();
        assert_eq!(
            lookup_in(&[missing, docker], &r).unwrap(),
            basic("hub", "secret")
        );
    }

    #[test]
    fn broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "bad.json", "{not json");
        let r = ImageReference::parse("debian").unwrap();
        assert!(matches!(
            lookup_in(&[bad], &r),
            Err(RegistryError::AuthFile { .. })
        ));
        assert!(format!("{:?}", basic("u", "hidden")).contains("redacted"));
    }
}
