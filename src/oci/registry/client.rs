#![forbid(unsafe_code)]
//! Building the `oci-client` HTTP client: scheme choice and TLS roots.
//!
//! TLS is rustls on ring. The roots are the host's CA store (when it can
//! be read) plus Mozilla's roots from `webpki-root-certs`, passed as the
//! only roots, so the client never depends on a platform verifier and
//! builds on a host with no CA store at all (a static binary in an empty
//! image). Plain HTTP is used for loopback registries and, with
//! `insecure`, for any registry.

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::sync::OnceLock;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use super::error::RegistryError;
use super::reference::ImageReference;

/// How to reach one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` requests go to.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
}

impl Endpoint {
    /// Plain HTTP for loopback hosts, or for any host with `insecure`.
    pub fn for_reference(reference: &ImageReference, insecure: bool) -> Endpoint {
        Endpoint {
            host: reference.endpoint().to_owned(),
            plain_http: insecure || reference.is_loopback(),
        }
    }
}

/// Builds a client for `endpoint`. Never fails for lack of system CAs.
pub(crate) fn build(endpoint: &Endpoint) -> Result<oci_client::Client, RegistryError> {
    static CA_STORE: std::sync::Once = std::sync::Once::new();
    CA_STORE.call_once(provide_ca_store_for_oci_client);
    // The process-wide default provider is what reqwest picks up; another
    // part of the program may already have installed one, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if endpoint.plain_http {
        ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
    } else {
        ClientProtocol::Https
    };
    build_with_roots(endpoint, protocol, roots(!endpoint.plain_http).to_vec())
}

fn build_with_roots(
    endpoint: &Endpoint,
    protocol: ClientProtocol,
    roots: Vec<Certificate>,
) -> Result<oci_client::Client, RegistryError> {
    let config = ClientConfig {
        protocol,
        tls_certs_only: roots,
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        user_agent: concat!("metalor/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config)
        .map_err(|e| RegistryError::Setup(format!("build HTTP client for {}: {e}", endpoint.host)))
}

/// The trusted roots: Mozilla's, plus the host's when `with_system` (a
/// plain-HTTP pull skips reading the CA store). Host certificates that
/// rustls cannot use are dropped one by one instead of failing the build.
fn roots(with_system: bool) -> &'static [Certificate] {
    static BUNDLED: OnceLock<Vec<Certificate>> = OnceLock::new();
    static WITH_SYSTEM: OnceLock<Vec<Certificate>> = OnceLock::new();
    let bundled = || {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|c| der(c.as_ref()))
            .collect::<Vec<_>>()
    };
    if !with_system {
        return BUNDLED.get_or_init(bundled);
    }
    WITH_SYSTEM.get_or_init(|| {
        let mut all = bundled();
        all.extend(system_roots());
        all
    })
}

/// The host's CA certificates that rustls accepts; empty when the host has
/// no CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured).
fn system_roots() -> Vec<Certificate> {
    let mut probe = rustls::RootCertStore::empty();
    let mut usable = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        if probe.add(cert.clone()).is_ok() {
            usable.push(der(cert.as_ref()));
        }
    }
    usable
}

/// Works around oci-client 0.18: `Client::try_from(ClientConfig)` ends its
/// struct literal with `..Default::default()`, which also builds a throwaway
/// `reqwest::Client::new()`. That one loads the host's CA store and panics
/// when there is none (a static binary in an empty image), although the
/// client metalor uses is given its own roots. So when the host has no CA
/// store and `SSL_CERT_FILE`/`SSL_CERT_DIR` name none, the bundled Mozilla
/// roots are written to a memfd and `SSL_CERT_FILE` names it through
/// `/proc/self/fd`, for this process only (pull spawns nothing). It runs
/// once, before the first client is built and before the pull starts any
/// thread of its own; a caller with other threads reading the environment
/// at that moment should set `SSL_CERT_FILE` itself beforehand.
/// Trust is unchanged: metalor's client trusts the bundled roots anyway.
fn provide_ca_store_for_oci_client() {
    // `load_native_certs` honours SSL_CERT_FILE/SSL_CERT_DIR, so a variable
    // that names nothing usable counts as no CA store, as it does for reqwest.
    if !rustls_native_certs::load_native_certs().certs.is_empty() {
        return;
    }
    let flags = rustix::fs::MemfdFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::memfd_create("metalor-ca-roots", flags) else {
        return;
    };
    let mut file = std::fs::File::from(fd);
    if file.write_all(bundled_roots_pem().as_bytes()).is_err() {
        return;
    }
    // Kept open for the life of the process: the path below names it.
    let fd = file.into_raw_fd();
    std::env::set_var("SSL_CERT_FILE", format!("/proc/self/fd/{fd}"));
}

/// `webpki-root-certs` as a PEM bundle.
fn bundled_roots_pem() -> String {
    use base64::Engine as _;
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

fn der(bytes: &[u8]) -> Certificate {
    Certificate {
        encoding: CertificateEncoding::Der,
        data: bytes.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_without_a_ca_store() {
        let empty = tempfile::tempdir().unwrap();
        // Only this test reads these variables in this process.
        std::env::set_var("SSL_CERT_FILE", empty.path().join("none.pem"));
        std::env::set_var("SSL_CERT_DIR", empty.path());
        let system = system_roots();
        std::env::remove_var("SSL_CERT_FILE");
        std::env::remove_var("SSL_CERT_DIR");
        assert!(system.is_empty(), "{} system roots", system.len());
        let endpoint = Endpoint {
            host: "registry.example".into(),
            plain_http: false,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bundled = roots(false).to_vec();
        assert!(bundled.len() > 100);
        build_with_roots(&endpoint, ClientProtocol::Https, bundled).unwrap();
        build(&endpoint).unwrap();
        let local = Endpoint {
            host: "127.0.0.1:5000".into(),
            plain_http: true,
        };
        build(&local).unwrap();
    }

    #[test]
    fn bundled_roots_survive_the_pem_round_trip() {
        let pem = bundled_roots_pem();
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let parsed = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS;
        assert!(bundled.len() > 100);
        assert_eq!(parsed.len(), bundled.len());
        assert!(parsed
            .iter()
            .zip(bundled)
            .all(|(a, b)| a.as_ref() == b.as_ref()));
    }
}
