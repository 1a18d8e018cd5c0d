//! Quoting for the provider's POSIX shell and the wording of process
//! failures, shared by the session and the transfers.
#![forbid(unsafe_code)]

use anyhow::{anyhow, Result};
use std::process::{ExitStatus, Output};

/// Quotes a value as one POSIX shell word. Inside single quotes nothing is
/// special, so the only character to handle is `'` itself, which is closed,
/// double-quoted and reopened: `'"'"'`.
pub(super) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r#"'"'"'"#))
}

/// Appends a finished process's stdout and then its stderr to the log.
pub(super) fn append_output(log: &mut String, output: &Output) {
    append_bytes(log, &output.stdout);
    append_bytes(log, &output.stderr);
}

/// Appends raw process output to the log, lossily, since provider tools may
/// print in any encoding.
pub(super) fn append_bytes(log: &mut String, bytes: &[u8]) {
    log.push_str(&String::from_utf8_lossy(bytes));
}

/// `<label> failed with status <status>`, followed by a `stdout:` and a
/// `stderr:` line for whichever stream produced output, trimmed at the end.
pub(super) fn failure_message(
    label: &str,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> String {
    let mut message = format!("{label} failed with status {status}");
    for (stream, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        if !bytes.is_empty() {
            let text = String::from_utf8_lossy(bytes);
            message.push_str(&format!("\n{stream}: {}", text.trim_end()));
        }
    }
    message
}

/// POSIX `dirname` and `basename` of a provider path, computed on the string
/// so a Windows host does not reinterpret it. The base name must be a real
/// entry name, because it is what gets archived.
pub(super) fn split_provider_path(path: &str) -> Result<(String, String)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None if trimmed.is_empty() => {
            return Err(anyhow!("remote path has no parent: {path}"));
        }
        None => (".", trimmed),
    };
    if matches!(name, "" | "." | "..") {
        return Err(anyhow!("remote path must have a normal file name: {path}"));
    }
    Ok((parent.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_wraps_and_escapes_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn split_provider_path_handles_root_relative_and_trailing_slash() {
        let split = |p: &str| split_provider_path(p).unwrap();
        assert_eq!(split("/a/b"), ("/a".into(), "b".into()));
        assert_eq!(split("/a/b/"), ("/a".into(), "b".into()));
        assert_eq!(split("/b"), ("/".into(), "b".into()));
        assert_eq!(split("b"), (".".into(), "b".into()));
        assert!(split_provider_path("/").is_err());
        assert!(split_provider_path("/a/..").is_err());
    }
}
