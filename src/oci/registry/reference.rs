#![forbid(unsafe_code)]
//! Registry image references and pull sources.
//!
//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`, a bare reference meaning the
//! same, and `oci:DIR[:REF]`. Bare names follow Docker's normalization: a
//! first component without `.` or `:` (and not `localhost`) is a Docker
//! Hub repository, single-component Hub names get `library/`, and the Hub
//! is reached at `registry-1.docker.io`.

use std::fmt;

use super::error::RegistryError;
use crate::oci::{named_transport, Digest, LayoutRef};

/// The registry name Docker Hub images are filed under.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves the Docker Hub registry API.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// A parsed registry image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// The registry as written, normalized (`docker.io` for the Hub),
    /// with its port: `127.0.0.1:5000`, `[::1]:5000`, `ghcr.io`.
    pub registry: String,
    /// The repository path, e.g. `library/debian`.
    pub repository: String,
    /// The tag, if given (`latest` is implied only when no digest is).
    pub tag: Option<String>,
    /// The manifest digest, if given; it pins the content.
    pub digest: Option<Digest>,
}

/// Where a pull reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullSource {
    /// A registry, over the distribution API.
    Registry(ImageReference),
    /// Another OCI layout on disk (`oci:DIR[:REF]`).
    Layout(LayoutRef),
}

impl PullSource {
    /// Parses `docker://…`, `oci:DIR[:REF]` or a bare registry reference.
    /// Other transports ([`named_transport`]) are refused by name;
    /// `docker:TAG` is the Hub's `docker` image.
    pub fn parse(value: &str) -> Result<PullSource, RegistryError> {
        if value.starts_with("oci:") {
            return Ok(PullSource::Layout(LayoutRef::parse(value)?));
        }
        if let Some(rest) = value.strip_prefix("docker://") {
            return ImageReference::parse_named(value, rest).map(PullSource::Registry);
        }
        if let Some(transport) = named_transport(value) {
            return Err(invalid(
                value,
                format!("unsupported transport {transport:?} (expected docker:// or oci:)"),
            ));
        }
        ImageReference::parse(value).map(PullSource::Registry)
    }

    /// The ref name a pull stores the image under when none is given: the
    /// source's tag, otherwise `latest`.
    pub fn default_ref_name(&self) -> String {
        let tag = match self {
            PullSource::Registry(r) => r.tag.clone(),
            PullSource::Layout(l) => l.reference.clone(),
        };
        tag.unwrap_or_else(|| "latest".to_owned())
    }
}

impl fmt::Display for PullSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullSource::Registry(r) => write!(f, "{r}"),
            PullSource::Layout(l) => {
                write!(f, "oci:{}", l.dir.display())?;
                match &l.reference {
                    Some(r) => write!(f, ":{r}"),
                    None => Ok(()),
                }
            }
        }
    }
}

fn invalid(value: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::InvalidReference {
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl ImageReference {
    /// Parses `[docker://]HOST[:PORT]/REPO[:TAG][@DIGEST]` or a bare Docker
    /// Hub name such as `debian:12`.
    pub fn parse(value: &str) -> Result<ImageReference, RegistryError> {
        let rest = value.strip_prefix("docker://").unwrap_or(value);
        ImageReference::parse_named(value, rest)
    }

    fn parse_named(value: &str, text: &str) -> Result<ImageReference, RegistryError> {
        if text.is_empty() || text.len() > 4096 {
            return Err(invalid(value, "empty or overlong reference"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest)
                    .map_err(|e| invalid(value, format!("bad digest: {e}")))?;
                (name, Some(digest))
            }
            None => (text, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(value, format!("invalid tag {tag:?}")));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        if !valid_registry(&registry) {
            return Err(invalid(
                value,
                format!("invalid registry host {registry:?}"),
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_repository(&repository) {
            return Err(invalid(
                value,
                format!("invalid repository name {repository:?} (lowercase components joined by / . _ -)"),
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) requests go to: `registry-1.docker.io` for the
    /// Hub, the registry itself otherwise.
    pub fn endpoint(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`
    /// or `::1`), where plain HTTP is used without `--insecure`, as Docker
    /// does.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host == "::1"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// What to fetch the manifest by: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The host part of `HOST[:PORT]` or `[V6]:PORT`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p.strip_prefix(':')),
            _ => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::Ipv6Addr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// Distribution's repository grammar: lowercase alphanumeric components
/// separated by `.`, `_`, `__` or runs of `-`, joined by `/`.
fn valid_repository(repo: &str) -> bool {
    repo.len() <= 255
        && repo.split('/').all(|component| {
            let b = component.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
                && !component.contains("..")
                && !component.contains("___")
        })
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_hub_normalization() {
        let r = ImageReference::parse("debian").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.endpoint(), "registry-1.docker.io");
        let r = ImageReference::parse("docker://docker.io/bitnami/redis:7").unwrap();
        assert_eq!(r.repository, "bitnami/redis");
        assert_eq!(r.tag.as_deref(), Some("7"));
        let r = ImageReference::parse("index.docker.io/ubuntu:24.04").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/ubuntu")
        );
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let r = ImageReference::parse(&format!("docker://127.0.0.1:5000/a/b:v1@{D}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(r.manifest_ref(), D);
        assert!(r.is_loopback());
        let r = ImageReference::parse(&format!("localhost/x@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert!(r.is_loopback());
        let r = ImageReference::parse("[::1]:5000/x").unwrap();
        assert!(r.is_loopback());
        assert!(!ImageReference::parse("ghcr.io/x/y").unwrap().is_loopback());
        assert_eq!(
            ImageReference::parse("127.0.0.1:5000/demo")
                .unwrap()
                .to_string(),
            "docker://127.0.0.1:5000/demo:latest"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "docker://::not-a-reference",
            "docker://",
            "Upper/case",
            "host:5000/a//b",
            "a:b:c",
            "x@sha256:abc",
            "reg.io/x:bad tag",
        ] {
            assert!(PullSource::parse(bad).is_err(), "{bad}");
        }
        for other in [
            "docker-archive:/x.tar",
            "docker-daemon:alpine:3",
            "sif:/x",
            "s3://b/k",
        ] {
            let err = PullSource::parse(other).unwrap_err();
            assert!(err.to_string().contains("unsupported transport"), "{err}");
        }
    }

    #[test]
    fn sources_and_default_refs() {
        let s = PullSource::parse("oci:/tmp/l:img").unwrap();
        assert!(matches!(s, PullSource::Layout(_)));
        assert_eq!(s.default_ref_name(), "img");
        assert_eq!(
            PullSource::parse("debian:12").unwrap().default_ref_name(),
            "12"
        );
        let PullSource::Registry(hub) = PullSource::parse("docker:24").unwrap() else {
            panic!("docker:24 is a registry reference");
        };
        assert_eq!(hub.to_string(), "docker://docker.io/library/docker:24");
        let s = PullSource::parse(&format!("docker://h.io/x@{D}")).unwrap();
        assert_eq!(s.default_ref_name(), "latest");
    }
}
