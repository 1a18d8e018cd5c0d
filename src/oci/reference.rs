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

/// Other skopeo transports. Written bare they would otherwise be read as
/// a directory named after the transport, which is never what was meant.
const OTHER_TRANSPORTS: [&str; 6] = [
    "docker:",
    "dir:",
    "docker-archive:",
    "oci-archive:",
    "containers-storage:",
    "docker-daemon:",
];

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
    /// module docs. URL-style sources (`docker://…`) and other skopeo
    /// transports are refused with [`OciError::UnsupportedTransport`].
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

/// Refuses `scheme://…` and the bare skopeo transport prefixes.
fn reject_transport(value: &str) -> Result<(), OciError> {
    let transport = match value.find("://") {
        Some(end) => Some(&value[..end + 3]),
        None => OTHER_TRANSPORTS
            .into_iter()
            .find(|prefix| value.starts_with(prefix)),
    };
    match transport {
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
}
