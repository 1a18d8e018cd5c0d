#![forbid(unsafe_code)]
//! Writing skopeo's auth file: what `metalor login` and `metalor logout`
//! change.
//!
//! The file is the one [`auth`](super::auth) reads first, so that a later
//! pull finds the login: `$REGISTRY_AUTH_FILE`, else
//! `$XDG_RUNTIME_DIR/containers/auth.json` (skopeo's and podman's
//! default), else the `containers/auth.json` under the config home. Its
//! format is `{"auths": {HOST: {"auth": base64(user:password)}}}`; other
//! entries and other top-level keys (`credHelpers`…) are kept as they are.
//!
//! A change is written whole into a temporary file beside the target with
//! mode 0600, synced, and renamed over it, so a reader sees the old file
//! or the new one and never a torn one; the directory is created 0700
//! when missing. A file that exists but is not a JSON object is an error,
//! and nothing is written.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::cleanup::TempGuard;

/// Why an auth file could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFileError {
    /// Reading, writing or renaming the file failed.
    #[error("{op} auth file {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file (or its temporary, or its directory).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a JSON object with an `auths` object.
    #[error("auth file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No auth file location is known: none of `REGISTRY_AUTH_FILE`,
    /// `XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME` or `HOME` is set.
    #[error(
        "no auth file location: set XDG_RUNTIME_DIR or REGISTRY_AUTH_FILE, or pass --authfile"
    )]
    NoDefault,
}

/// The file a login writes when none is given: the first one a pull reads.
pub fn default_path() -> Result<PathBuf, AuthFileError> {
    super::auth::auth_file_candidates()
        .into_iter()
        .next()
        .ok_or(AuthFileError::NoDefault)
}

/// Records `username:password` for `registry` in the auth file at `path`,
/// replacing an entry under the same key and keeping the others.
pub fn store(
    path: &Path,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<(), AuthFileError> {
    let mut file = read(path)?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut entry = Map::new();
    entry.insert("auth".to_owned(), Value::String(auth));
    auths(path, &mut file)?.insert(registry.to_owned(), Value::Object(entry));
    write_atomic(path, &file)
}

/// Removes the entries for `registry` from the auth file at `path`: the
/// key itself and any key that names the same registry (`https://HOST`,
/// `HOST/`). Returns `false`, writing nothing, when there was none.
pub fn remove(path: &Path, registry: &str) -> Result<bool, AuthFileError> {
    let mut file = read(path)?;
    let wanted = super::auth::normalize_key(registry);
    let entries = auths(path, &mut file)?;
    let before = entries.len();
    entries.retain(|key, _| key != registry && super::auth::normalize_key(key) != wanted);
    if entries.len() == before {
        return Ok(false);
    }
    write_atomic(path, &file)?;
    Ok(true)
}

/// The file's top-level object; an empty one when the file is missing.
fn read(path: &Path) -> Result<Map<String, Value>, AuthFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(source) => {
            return Err(AuthFileError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let invalid = |reason: String| AuthFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("not a JSON object".to_owned())),
        Err(e) => Err(invalid(format!("not JSON: {e}"))),
    }
}

/// The `auths` object of `file`, created when absent.
fn auths<'a>(
    path: &Path,
    file: &'a mut Map<String, Value>,
) -> Result<&'a mut Map<String, Value>, AuthFileError> {
    let value = file
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    value.as_object_mut().ok_or_else(|| AuthFileError::Invalid {
        path: path.to_path_buf(),
        reason: "\"auths\" is not an object".to_owned(),
    })
}

/// Writes `file` to `path` through a 0600 temporary beside it: write,
/// fsync, rename, fsync the directory. The temporary is removed on error.
fn write_atomic(path: &Path, file: &Map<String, Value>) -> Result<(), AuthFileError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| AuthFileError::Io { op, path, source }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create the directory of", dir))?;
    let mut text = serde_json::to_vec_pretty(file).expect("a JSON map encodes");
    text.push(b'\n');
    let name = path
        .file_name()
        .map_or("auth.json".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let guard = TempGuard::new(&tmp);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create a temporary for", &tmp))?;
        out.write_all(&text).map_err(io("write", &tmp))?;
        out.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(guard);
    result?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the directory of", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn json(path: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn store_keeps_other_entries_and_keys_and_remove_takes_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/containers/auth.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            r#"{"auths":{"other.example":{"auth":"eDp5"},"https://h:5000/":{"auth":"b2xkOm9sZA=="}},"credHelpers":{"a":"b"}}"#,
        )
        .unwrap();
        store(&path, "h:5000", "user", "pa:ss").unwrap();
        let file = json(&path);
        assert_eq!(file["auths"]["h:5000"]["auth"], "dXNlcjpwYTpzcw==");
        assert_eq!(file["auths"]["other.example"]["auth"], "eDp5");
        assert_eq!(file["credHelpers"]["a"], "b");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(remove(&path, "h:5000").unwrap());
        let file = json(&path);
        assert_eq!(file["auths"].as_object().unwrap().len(), 1, "{file}");
        assert!(!remove(&path, "h:5000").unwrap());
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn creates_the_directory_private_and_refuses_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/auth.json");
        store(&path, "h:1", "u", "p").unwrap();
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(&path, "[1]").unwrap();
        let err = store(&path, "h:1", "u", "p").unwrap_err().to_string();
        assert!(
            err.contains("not a JSON object") && err.contains("auth.json"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"[1]");
        assert!(!remove(&dir.path().join("missing.json"), "h:1").unwrap());
    }
}
