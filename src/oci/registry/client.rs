#![forbid(unsafe_code)]
//! Building the `oci-client` HTTP client: scheme choice and TLS roots.
//!
//! TLS is rustls on ring. The roots are the host's CA store (when it can
//! be read) plus Mozilla's roots from `webpki-root-certs`, passed as the
//! only roots, so the client never depends on a platform verifier and
//! builds on a host with no CA store at all (a static binary in an empty
//! image). Plain HTTP is used for loopback registries and, with
//! `insecure`, for any registry.

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
    // The process-wide default provider is what reqwest picks up; another
    // part of the program may already have installed one, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if endpoint.plain_http {
        ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        tls_certs_only: roots(!endpoint.plain_http).to_vec(),
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
        let mut probe = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            if probe.add(cert.clone()).is_ok() {
                all.push(der(cert.as_ref()));
            }
        }
        all
    })
}

fn der(bytes: &[u8]) -> Certificate {
    Certificate {
        encoding: CertificateEncoding::Der,
        data: bytes.to_vec(),
    }
}
