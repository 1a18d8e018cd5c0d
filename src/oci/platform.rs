#![forbid(unsafe_code)]
//! Platforms: architecture names, the host platform, `--platform` parsing
//! and the matching rule used to pick a manifest from an index.
//!
//! Two naming schemes meet here. Upstream metalor's user-facing names are
//! the kernel's (`x86_64`, `aarch64`, `riscv64`) and it accepts the OCI
//! aliases too ([`normalize_arch_name`]); images and indexes use the OCI
//! (Go) names (`amd64`, `arm64`, `riscv64`; [`oci_arch_name`]). A
//! [`Platform`] always holds OCI names.

use std::fmt;

use serde::Serialize;

use super::error::OciError;

/// The only OS metalor runs images for.
const LINUX: &str = "linux";

/// Normalizes a user-supplied architecture name to upstream's spelling:
/// `x86_64`/`amd64` → `x86_64`, `aarch64`/`arm64` → `aarch64`,
/// `riscv64` → `riscv64`.
///
/// Anything else, including other letter case, fails with
/// `unsupported architecture <a>`, exactly upstream's message, because
/// those are the only architectures upstream has QEMU mappings for.
pub fn normalize_arch_name(arch: &str) -> Result<&'static str, OciError> {
    match arch {
        "x86_64" | "amd64" => Ok("x86_64"),
        "aarch64" | "arm64" => Ok("aarch64"),
        "riscv64" => Ok("riscv64"),
        _ => Err(OciError::UnsupportedArchitecture(arch.to_owned())),
    }
}

/// Maps a user-supplied architecture name to the OCI name images use
/// (`amd64`, `arm64`, `riscv64`), with the same validation as
/// [`normalize_arch_name`].
pub fn oci_arch_name(arch: &str) -> Result<&'static str, OciError> {
    Ok(match normalize_arch_name(arch)? {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    })
}

/// Maps an architecture name found in an image or in Rust's
/// `std::env::consts::ARCH` to its OCI spelling without rejecting anything:
/// images may describe architectures metalor cannot run, and they must
/// still be listed and compared.
fn lenient_oci_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i386" | "i686" => "386",
        "loongarch64" => "loong64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// An image platform: the triple an index entry or a config declares, and
/// the triple a caller asks for.
///
/// `architecture` uses OCI names. `variant` is optional (`v7`, `v8`);
/// a request without one matches any variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// Operating system, `linux` for everything metalor runs.
    pub os: String,
    /// OCI architecture name, e.g. `amd64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8` for arm64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Builds a platform from what an image declares, normalizing the
    /// architecture spelling (`x86_64` → `amd64`) and dropping an empty
    /// variant, so that comparisons do not trip on cosmetics.
    pub fn from_image(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: lenient_oci_arch(architecture).to_owned(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_owned),
        }
    }

    /// The platform this process runs on; the default choice, as skopeo's
    /// `--multi-arch system` makes it. Never fails: a host outside
    /// upstream's architecture list still gets its OCI name.
    pub fn host() -> Platform {
        Platform::from_image(LINUX, std::env::consts::ARCH, None)
    }

    /// Linux on a user-supplied architecture (`x86_64`, `arm64`…), with
    /// upstream's validation; this is what `--arch` and `requested_arch`
    /// mean.
    pub fn linux(arch: &str) -> Result<Platform, OciError> {
        Ok(Platform {
            os: LINUX.to_owned(),
            architecture: oci_arch_name(arch)?.to_owned(),
            variant: None,
        })
    }

    /// Parses a `--platform` value `linux/ARCH[/VARIANT]`. ARCH takes either
    /// naming scheme and must be one upstream supports.
    pub fn parse(value: &str) -> Result<Platform, OciError> {
        let bad = |reason| OciError::InvalidPlatform {
            value: value.to_owned(),
            reason,
        };
        let mut parts = value.split('/');
        let (os, arch) = match (parts.next(), parts.next()) {
            (Some(os), Some(arch)) => (os, arch),
            _ => return Err(bad("expected linux/ARCH[/VARIANT]")),
        };
        if os != LINUX {
            return Err(bad("only the linux OS is supported"));
        }
        let variant = parts.next();
        if parts.next().is_some() || variant == Some("") {
            return Err(bad("expected linux/ARCH[/VARIANT]"));
        }
        let mut platform = Platform::linux(arch)?;
        platform.variant = variant.map(str::to_owned);
        Ok(platform)
    }

    /// Whether `candidate` (from an image) satisfies this request: same OS,
    /// same architecture, and the same variant when the request names one.
    /// An arm64 image without a variant counts as `v8`, the only arm64
    /// variant in practice, as containerd does.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if candidate.os != self.os
            || lenient_oci_arch(&candidate.architecture) != lenient_oci_arch(&self.architecture)
        {
            return false;
        }
        let Some(wanted) = self.variant.as_deref() else {
            return true;
        };
        let found = candidate
            .variant
            .as_deref()
            .or_else(|| (lenient_oci_arch(&candidate.architecture) == "arm64").then_some("v8"));
        found == Some(wanted)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_upstream_names() {
        assert_eq!(normalize_arch_name("amd64").unwrap(), "x86_64");
        assert_eq!(normalize_arch_name("x86_64").unwrap(), "x86_64");
        assert_eq!(normalize_arch_name("arm64").unwrap(), "aarch64");
        assert_eq!(normalize_arch_name("riscv64").unwrap(), "riscv64");
        assert_eq!(oci_arch_name("x86_64").unwrap(), "amd64");
        assert_eq!(oci_arch_name("aarch64").unwrap(), "arm64");
        for bad in ["AMD64", "arm", "s390x", ""] {
            let err = normalize_arch_name(bad).unwrap_err();
            assert_eq!(err.to_string(), format!("unsupported architecture {bad}"));
        }
    }

    #[test]
    fn parses_platform_flags() {
        let p = Platform::parse("linux/x86_64").unwrap();
        assert_eq!(p.to_string(), "linux/amd64");
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert!(matches!(
            Platform::parse("linux/mips"),
            Err(OciError::UnsupportedArchitecture(_))
        ));
        for bad in ["linux", "windows/amd64", "linux/amd64/", "linux/amd64/v1/x"] {
            assert!(
                matches!(Platform::parse(bad), Err(OciError::InvalidPlatform { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn matching_honours_variant_only_when_asked() {
        let any_arm = Platform::linux("arm64").unwrap();
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        let image_plain = Platform::from_image("linux", "arm64", None);
        let image_v9 = Platform::from_image("linux", "aarch64", Some("v9"));
        assert!(any_arm.matches(&image_v9));
        assert!(v8.matches(&image_plain));
        assert!(!v8.matches(&image_v9));
        assert!(!any_arm.matches(&Platform::from_image("windows", "arm64", None)));
        assert!(!any_arm.matches(&Platform::from_image("linux", "amd64", None)));
    }

    #[test]
    fn host_is_linux_with_an_oci_name() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert_ne!(host.architecture, "x86_64");
        assert_ne!(host.architecture, "aarch64");
    }
}
