//! Upstream's reference normalization for `prepare_oci_rootfs`: a value
//! that names a transport is kept as it is, anything else is a registry
//! reference and gets `docker://`. Which values name a transport is
//! [`crate::oci::named_transport`]'s one list.

use crate::oci::named_transport;

/// Upstream's reference normalization: a value naming a transport is
/// kept, anything else is a registry reference and gets `docker://`.
///
/// Upstream kept only `oci:`, `dir:`, `docker-archive:`, `oci-archive:`
/// and `containers-storage:` (and anything with `://`); the other skopeo
/// transports (`docker-daemon:`, `ostree:`, `sif:`) got `docker://` in
/// front, a reference that can never work. Here they are kept too, so they
/// fail with a clear unsupported-transport error. `docker:TAG` still means
/// the Hub's `docker` image, as upstream read it.
pub(super) fn normalize_reference(reference: &str) -> String {
    if named_transport(reference).is_some() {
        reference.to_owned()
    } else {
        format!("docker://{reference}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_follows_upstream() {
        assert_eq!(
            normalize_reference("docker.io/library/busybox:1"),
            "docker://docker.io/library/busybox:1"
        );
        assert_eq!(
            normalize_reference("::not-a-reference"),
            "docker://::not-a-reference"
        );
        for kept in [
            "docker://a/b",
            "oci:/x:y",
            "dir:/x",
            "docker-archive:/x.tar",
            "oci-archive:/x.tar",
            "containers-storage:x",
            "docker-daemon:alpine:3",
            "ostree:x@/repo",
            "sif:/x.sif",
        ] {
            assert_eq!(normalize_reference(kept), kept);
        }
        assert_eq!(
            normalize_reference("docker:24"),
            "docker://docker:24",
            "the Hub's docker image, not the docker transport"
        );
    }
}
