//! Store names: how a registry reference becomes a ref name of the store's
//! OCI layout, and back.
//!
//! The OCI ref-name grammar has no `/` and no `:`, so `skopeo inspect
//! oci:STORE/oci:NAME` needs an encoding. A Docker reference has `/` only
//! between path components, `:` only before a port or a tag, and `@` only
//! before a digest, and never `+`: so `/` becomes `+`, `:` becomes `@`, and
//! a digest keeps its `@` with its own `:` as `@` too. Decoding reads the
//! first component's `@` as a port, and the last component's trailing
//! `@ALGO@HEX` as a digest.

use super::StoreError;
use crate::oci::reference::is_ref_component;
use crate::oci::registry::ImageReference;

/// The normalized reference (`HOST[:PORT]/REPO:TAG` or `…@DIGEST`) and
/// its ref name in the store's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreName {
    pub(crate) reference: ImageReference,
    pub(crate) display: String,
    pub(crate) ref_name: String,
}

/// Parses a user's reference (`docker://…` or bare) into its store name.
/// A tagless, digestless reference means `:latest`, as `docker pull` says.
pub(crate) fn store_name(value: &str) -> Result<StoreName, StoreError> {
    if value.starts_with("oci:") {
        return Err(StoreError::InvalidName {
            reference: value.to_owned(),
            reason: "the store holds registry images; pull oci: layouts with a destination",
        });
    }
    let mut reference = ImageReference::parse(value)?;
    if reference.tag.is_none() && reference.digest.is_none() {
        reference.tag = Some("latest".to_owned());
    }
    let display = normalized(&reference);
    let ref_name = encode(&display);
    if !is_ref_component(&ref_name) {
        return Err(StoreError::InvalidName {
            reference: value.to_owned(),
            reason: "it has runs of separators that an OCI ref name cannot hold",
        });
    }
    Ok(StoreName {
        reference,
        display,
        ref_name,
    })
}

/// `HOST/REPO[:TAG][@DIGEST]`, the form `images` prints.
fn normalized(reference: &ImageReference) -> String {
    let mut out = format!("{}/{}", reference.registry, reference.repository);
    if let Some(tag) = &reference.tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = &reference.digest {
        out.push('@');
        out.push_str(&digest.to_string());
    }
    out
}

fn encode(display: &str) -> String {
    display.replace('/', "+").replace(':', "@")
}

/// The reference a store ref name stands for; `None` for a ref name this
/// encoding did not make (somebody else tagged the layout).
pub(crate) fn decode(ref_name: &str) -> Option<String> {
    let mut components: Vec<String> = ref_name.split('+').map(str::to_owned).collect();
    if components.len() < 2 {
        return None;
    }
    components[0] = components[0].replace('@', ":");
    let last = components.last_mut()?;
    let mut pieces: Vec<&str> = last.split('@').collect();
    let mut digest = None;
    if pieces.len() >= 3 {
        let (algo, hex) = (pieces[pieces.len() - 2], pieces[pieces.len() - 1]);
        if algo.starts_with("sha") && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            digest = Some(format!("@{algo}:{hex}"));
            pieces.truncate(pieces.len() - 2);
        }
    }
    let mut tail = pieces.join(":");
    if let Some(digest) = digest {
        tail.push_str(&digest);
    }
    *last = tail;
    Some(components.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let hex = "a".repeat(64);
        for (input, display) in [
            ("127.0.0.1:5000/demo", "127.0.0.1:5000/demo:latest"),
            (
                "docker://127.0.0.1:5000/a/b:v1.2",
                "127.0.0.1:5000/a/b:v1.2",
            ),
            ("debian:12", "docker.io/library/debian:12"),
            (
                &format!("ghcr.io/x/y@sha256:{hex}"),
                &format!("ghcr.io/x/y@sha256:{hex}"),
            ),
            (
                &format!("ghcr.io/x/y:t@sha256:{hex}"),
                &format!("ghcr.io/x/y:t@sha256:{hex}"),
            ),
        ] {
            let name = store_name(input).unwrap();
            assert_eq!(name.display, display, "{input}");
            assert!(is_ref_component(&name.ref_name), "{}", name.ref_name);
            assert_eq!(decode(&name.ref_name).as_deref(), Some(display), "{input}");
        }
        assert_eq!(
            store_name("127.0.0.1:5000/demo").unwrap().ref_name,
            "127.0.0.1@5000+demo@latest"
        );
        assert_eq!(decode("latest"), None);
    }

    #[test]
    fn unnameable_references_are_refused() {
        let err = store_name("127.0.0.1:5000/a__b:x").unwrap_err();
        assert!(err.to_string().contains("a__b"), "{err}");
        assert!(store_name("oci:/tmp/x:y").is_err());
    }
}
