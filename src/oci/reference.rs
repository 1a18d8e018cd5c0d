#![forbid(unsafe_code)]
//! `oci:DIR[:REF]` and `DIR[:REF]`: naming an image inside a layout.
//!
//! The split rule: the text after the **last** `:` is taken as REF only if
//! it is a valid ref name containing no `/`; otherwise the whole text is the
//! directory. So `/tmp/img:latest` is (`/tmp/img`, `latest`), while
//! `/srv/a:b/layout` is the directory `/srv/a:b/layout` with no REF, and a
//! trailing `:` stays part of the path. A REF that itself contains `:` or
//! `/` (both allowed by the image-layout grammar) cannot be written this
//! way; metalor only ever tags layouts with plain names such as `image`.
//!
//! A ref name (a component of `org.opencontainers.image.ref.name`) is
//! alphanumeric runs joined by single separators `- . _ @ +` or by `--`.

use std::path::PathBuf;

use super::error::OciError;

/// The explicit OCI layout transport prefix.
const OCI_PREFIX: &str = "oci:";

/// Every transport skopeo knows (containers-transports(5)), as written in
/// front of its reference. This is the one list metalor reads sources
/// with: the OCI layout parser, the pull source parser and the OCI rootfs's
/// reference normalization all ask [`named_transport`].
pub const SKOPEO_TRANSPORTS: [&str; 9] = [
    "containers-storage:",
    "dir:",
    "docker:",
    "docker-archive:",
    "docker-daemon:",
    "oci:",
    "oci-archive:",
    "ostree:",
    "sif:",
];

/// The transport `value` names explicitly, with its separator: the
/// scheme of a `scheme://…` URL, or a [`SKOPEO_TRANSPORTS`] prefix.
/// `None` means a bare reference.
///
/// The docker transport counts only when written `docker://`: bare,
/// `docker:TAG` is the Docker Hub image `docker`, and upstream read it so
/// (it prefixed `docker://`). Any other skopeo transport is recognised by
/// its bare prefix, so `docker-daemon:x` or `sif:x` is never taken for a
/// registry name or a directory.
pub fn named_transport(value: &str) -> Option<&str> {
    if let Some(end) = value.find("://") {
        return Some(&value[..end + 3]);
    }
    SKOPEO_TRANSPORTS
        .into_iter()
        .filter(|prefix| *prefix != "docker:")
        .find(|prefix| value.starts_with(prefix))
}

/// A parsed `[oci:]DIR[:REF]`: the layout directory and the optional ref
/// name to look up in its `index.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout directory, as written (not canonicalized).
    pub dir: PathBuf,
    /// The `org.opencontainers.image.ref.name` to select, if given.
    pub reference: Option<String>,
}

impl LayoutRef {
    /// Parses `oci:DIR[:REF]` or `DIR[:REF]` with the split rule in the
    /// module docs. URL-style sources (`docker://…`) and the other skopeo
    /// transports ([`named_transport`]) are refused with
    /// [`OciError::UnsupportedTransport`].
    pub fn parse(value: &str) -> Result<LayoutRef, OciError> {
        let rest = match value.strip_prefix(OCI_PREFIX) {
            Some(rest) => rest,
            None => {
                reject_transport(value)?;
                value
            }
        };
        let (dir, reference) = split_ref(rest);
        if dir.is_empty() {
            return Err(OciError::InvalidReference {
                value: value.to_owned(),
                reason: "empty layout directory",
            });
        }
        Ok(LayoutRef {
            dir: PathBuf::from(dir),
            reference: reference.map(str::to_owned),
        })
    }
}

/// Refuses every transport but `oci:` (see [`named_transport`]).
fn reject_transport(value: &str) -> Result<(), OciError> {
    match named_transport(value) {
        Some(transport) => Err(OciError::UnsupportedTransport {
            value: value.to_owned(),
            transport: transport.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Splits at the last `:` when what follows is a ref name.
fn split_ref(text: &str) -> (&str, Option<&str>) {
    match text.rsplit_once(':') {
        Some((dir, reference)) if is_ref_component(reference) => (dir, Some(reference)),
        _ => (text, None),
    }
}

/// Whether `name` is one ref-name component: alphanumeric runs joined by a
/// single `- . _ @ +` or by `--`.
pub fn is_ref_component(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return false;
    }
    let mut separators = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_alphanumeric() {
            separators = 0;
            continue;
        }
        if !matches!(b, b'-' | b'.' | b'_' | b'@' | b'+') {
            return false;
        }
        separators += 1;
        let double_dash = separators == 2 && b == b'-' && bytes[i - 1] == b'-';
        if separators > 1 && !double_dash {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> (String, Option<String>) {
        let r = LayoutRef::parse(value).unwrap();
        (r.dir.to_string_lossy().into_owned(), r.reference)
    }

    #[test]
    fn splits_at_last_colon_before_a_ref_name() {
        assert_eq!(
            parsed("oci:/tmp/l:image"),
            ("/tmp/l".into(), Some("image".into()))
        );
        assert_eq!(
            parsed("/tmp/l:v1.2-rc_3"),
            ("/tmp/l".into(), Some("v1.2-rc_3".into()))
        );
        assert_eq!(
            parsed("oci:/tmp/a:b:c"),
            ("/tmp/a:b".into(), Some("c".into()))
        );
        assert_eq!(parsed("oci:/tmp/l"), ("/tmp/l".into(), None));
        assert_eq!(parsed("/srv/a:b/layout"), ("/srv/a:b/layout".into(), None));
        assert_eq!(parsed("/tmp/l:"), ("/tmp/l:".into(), None));
        assert_eq!(parsed("l:a--b"), ("l".into(), Some("a--b".into())));
    }

    #[test]
    fn ref_component_grammar() {
        for good in ["latest", "a", "1.0", "a--b", "x@y", "a+b"] {
            assert!(is_ref_component(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a..b", "a---b", "a/b", "a b", "a:b", "a._b"] {
            assert!(!is_ref_component(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_other_transports_and_empty_dirs() {
        for value in [
            "docker://docker.io/library/alpine",
            "docker-archive:/x.tar",
            "dir:/x",
            "docker-daemon:alpine:3",
            "sif:/x.sif",
        ] {
            let err = LayoutRef::parse(value).unwrap_err();
            assert!(
                matches!(err, OciError::UnsupportedTransport { .. }),
                "{value}: {err}"
            );
        }
        assert!(matches!(
            LayoutRef::parse("oci::image"),
            Err(OciError::InvalidReference { .. })
        ));
    }

    #[test]
    fn named_transports() {
        for (value, transport) in [
            ("docker://h.io/x", Some("docker://")),
            ("https://h.io/x", Some("https://")),
            ("oci:/l:image", Some("oci:")),
            ("oci-archive:/x.tar", Some("oci-archive:")),
            ("docker-archive:/x.tar", Some("docker-archive:")),
            ("docker-daemon:alpine:3", Some("docker-daemon:")),
            ("containers-storage:alpine", Some("containers-storage:")),
            ("dir:/x", Some("dir:")),
            ("ostree:x@/repo", Some("ostree:")),
            ("sif:/x.sif", Some("sif:")),
            // Docker Hub's `docker` image, not the docker transport.
            ("docker:24", None),
            ("debian:12", None),
            ("/tmp/l:image", None),
        ] {
            assert_eq!(named_transport(value), transport, "{value}");
        }
        // Every listed transport but `docker:` is recognised bare.
        for prefix in SKOPEO_TRANSPORTS {
            let value = format!("{prefix}x");
            let expected = (prefix != "docker:").then_some(prefix);
            assert_eq!(named_transport(&value), expected, "{value}");
        }
    }
}
