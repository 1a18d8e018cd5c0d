#![forbid(unsafe_code)]
//! The typed error of a pull.
//!
//! Registry failures name the image reference and the registry, so that a
//! message read in a CI log says what was asked of whom: "pull
//! docker://127.0.0.1:5000/demo:nope from 127.0.0.1:5000: manifest nope:
//! not found (…)".

use std::path::PathBuf;

use crate::oci::OciError;

/// Everything that can go wrong while pulling an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The source or destination text is not a reference metalor reads.
    #[error("parse image reference {value:?}: {reason}")]
    InvalidReference {
        /// The text given.
        value: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// The registry answered 404 (or a `*_UNKNOWN` error code).
    #[error("pull {reference} from {registry}: {what}: not found ({detail})")]
    NotFound {
        /// The image reference being pulled.
        reference: String,
        /// The registry endpoint.
        registry: String,
        /// What was asked for (`manifest latest`, `blob sha256:…`).
        what: String,
        /// The registry's own words.
        detail: String,
    },

    /// The registry refused the credentials, or there were none and it
    /// wants some (401/403).
    #[error("pull {reference} from {registry}: {what}: access denied ({detail}); credentials are read from REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json")]
    Denied {
        /// The image reference being pulled.
        reference: String,
        /// The registry endpoint.
        registry: String,
        /// What was asked for.
        what: String,
        /// The registry's own words.
        detail: String,
    },

    /// A request failed in a way retrying did not fix, or that is not worth
    /// retrying.
    #[error("pull {reference} from {registry}: {what}: {detail}")]
    Transfer {
        /// The image reference being pulled.
        reference: String,
        /// The registry endpoint.
        registry: String,
        /// What was asked for.
        what: String,
        /// The last failure, with the attempt count when retried.
        detail: String,
    },

    /// A manifest or index the registry served cannot be used.
    #[error("pull {reference}: {what}: {reason}")]
    BadDocument {
        /// The image reference being pulled.
        reference: String,
        /// The document (`manifest sha256:…`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A manifest, index or config failed a check (digest, size, shape,
    /// platform choice), or reading or writing a layout failed. The cause
    /// is the typed error, printed once as the next link of the chain.
    #[error("{}", pull_context(reference))]
    Layout {
        /// The image reference being pulled.
        reference: String,
        /// The typed layout error.
        #[source]
        source: OciError,
    },

    /// A push failed: the registry refused a blob, a mount or a manifest
    /// (`what` names it; `detail` has the registry's error code and
    /// message), or a request failed in a way retrying did not fix.
    #[error("push {reference} to {registry}: {what}: {detail}")]
    Push {
        /// The target image reference.
        reference: String,
        /// The registry endpoint.
        registry: String,
        /// What was being pushed (`blob sha256:…`, `manifest sha256:…`).
        what: String,
        /// The registry's own words, or the last failure.
        detail: String,
    },

    /// Reading the image to push failed (a layout that does not resolve,
    /// a missing blob). The cause is the typed layout error.
    #[error("push {reference}")]
    PushSource {
        /// What was being pushed (`oci:DIR:REF`).
        reference: String,
        /// The typed layout error.
        #[source]
        source: OciError,
    },

    /// An auth file exists but cannot be read or parsed.
    #[error("read auth file {}: {reason}", path.display())]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The HTTP client or the async runtime could not be set up.
    #[error("set up the registry client: {0}")]
    Setup(String),
}

impl From<OciError> for RegistryError {
    fn from(source: OciError) -> Self {
        match source {
            OciError::InvalidReference { value, reason } => RegistryError::InvalidReference {
                value,
                reason: reason.to_owned(),
            },
            OciError::UnsupportedTransport { value, transport } => {
                RegistryError::InvalidReference {
                    value,
                    reason: format!("unsupported transport {transport:?}"),
                }
            }
            source => RegistryError::Layout {
                reference: String::new(),
                source,
            },
        }
    }
}

/// `pull REF` when the reference is known; a bare `pull` otherwise (an
/// error converted with `?` before the reference was known).
fn pull_context(reference: &str) -> String {
    if reference.is_empty() {
        "pull".to_owned()
    } else {
        format!("pull {reference}")
    }
}

impl RegistryError {
    /// Wraps a layout error with the reference being pulled.
    pub(crate) fn layout(reference: &impl ToString, source: OciError) -> RegistryError {
        RegistryError::Layout {
            reference: reference.to_string(),
            source,
        }
    }
}

impl RegistryError {
    /// The same failure told as part of a push: the request code shared
    /// with the pull words its errors as a pull's, and a push rewrites
    /// them once, at its top, so that every message starts with `push`.
    pub(crate) fn into_push(self) -> RegistryError {
        let push = |reference, registry, what, detail| RegistryError::Push {
            reference,
            registry,
            what,
            detail,
        };
        match self {
            RegistryError::NotFound {
                reference,
                registry,
                what,
                detail,
            } => push(reference, registry, what, format!("not found ({detail})")),
            RegistryError::Denied {
                reference,
                registry,
                what,
                detail,
            } => push(
                reference,
                registry,
                what,
                format!("access denied ({detail}); credentials are read from --authfile, REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json"),
            ),
            RegistryError::Transfer {
                reference,
                registry,
                what,
                detail,
            } => push(reference, registry, what, detail),
            RegistryError::Layout { reference, source } => {
                RegistryError::PushSource { reference, source }
            }
            other => other,
        }
    }
}

/// One entry of a registry's error envelope.
#[derive(serde::Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<EnvelopeError>,
}

/// Longest excerpt of a body that is not an error envelope.
const EXCERPT_CHARS: usize = 200;

/// A registry error body in one line: `CODE: message; …` from the
/// distribution spec's `{"errors":[…]}` envelope, else a short printable
/// excerpt of whatever was sent (an HTML page from a proxy), else empty.
/// The caller bounds how much of the body it reads.
pub fn summarize_error_body(body: &[u8]) -> String {
    if let Ok(envelope) = serde_json::from_slice::<Envelope>(body) {
        let parts: Vec<String> = envelope
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .map(|part| one_line(&part))
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut excerpt = one_line(&text.chars().take(EXCERPT_CHARS).collect::<String>());
    if text.chars().count() > EXCERPT_CHARS {
        excerpt.push('…');
    }
    excerpt
}

/// `text` with control characters as spaces and whitespace runs folded, so
/// a registry's text cannot break an error message over lines.
fn one_line(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_in_one_line() {
        let body =
            br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"},{"code":"DENIED"}]}"#;
        assert_eq!(
            summarize_error_body(body),
            "TOOMANYREQUESTS: slow down; DENIED"
        );
        assert_eq!(
            summarize_error_body(b"<html>\n<b>502</b></html>"),
            "<html> <b>502</b></html>"
        );
        assert!(summarize_error_body(&[b'x'; 1000]).ends_with('…'));
        assert_eq!(summarize_error_body(b""), "");
    }

    #[test]
    fn pull_wording_becomes_push_wording() {
        let denied = RegistryError::Denied {
            reference: "docker://h/r:t".into(),
            registry: "h".into(),
            what: "blob sha256:ab".into(),
            detail: "HTTP 403".into(),
        };
        let text = denied.into_push().to_string();
        assert!(
            text.starts_with("push docker://h/r:t to h: blob sha256:ab: access denied (HTTP 403)"),
            "{text}"
        );
        let missing = RegistryError::NotFound {
            reference: "docker://h/r:t".into(),
            registry: "h".into(),
            what: "manifest sha256:cd".into(),
            detail: "MANIFEST_UNKNOWN".into(),
        };
        assert_eq!(
            missing.into_push().to_string(),
            "push docker://h/r:t to h: manifest sha256:cd: not found (MANIFEST_UNKNOWN)"
        );
    }

    #[test]
    fn an_envelope_message_cannot_break_the_line() {
        let body = br#"{"errors":[{"code":"DENIED","message":"no\n\u001b[31mway"}]}"#;
        assert_eq!(summarize_error_body(body), "DENIED: no [31mway");
    }
}
