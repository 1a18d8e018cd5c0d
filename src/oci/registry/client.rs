#![forbid(unsafe_code)]
//! Building the HTTP client: scheme choice, TLS roots, timeouts and the
//! redirect policy.
//!
//! TLS is rustls on ring. The roots are the host's CA store (when it can
//! be read) plus Mozilla's roots from `webpki-root-certs`, passed as the
//! only roots, so the client never depends on a platform verifier and
//! builds on a host with no CA store at all (a static binary in an empty
//! image). Plain HTTP is used for loopback registries and, with
//! `insecure`, for any registry.
//!
//! Redirects are followed (registries send blob downloads to a CDN), at
//! most [`MAX_REDIRECTS`] in a row; a longer chain is a loop, and the pull
//! fails at once instead of retrying it.

use std::sync::OnceLock;

use reqwest::Certificate;

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

/// Redirects followed for one request before it counts as a loop.
pub const MAX_REDIRECTS: usize = 10;

/// Time to establish a TCP connection. A refused connection fails at once
/// whatever this is; it bounds a silently dropped SYN.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest silence in the middle of a response before the attempt fails.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Endpoint {
    /// `http://HOST` or `https://HOST`, what request URLs start with.
    pub fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// Builds a client for `endpoint`, trusting the roots [`roots`] gives.
pub(crate) fn build(endpoint: &Endpoint) -> Result<reqwest::Client, RegistryError> {
    // The process-wide default provider is what reqwest picks up; another
    // part of the program may already have installed one, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    build_with_roots(endpoint, roots(!endpoint.plain_http).to_vec())
}

fn build_with_roots(
    endpoint: &Endpoint,
    roots: Vec<Certificate>,
) -> Result<reqwest::Client, RegistryError> {
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(concat!("metalor/", env!("CARGO_PKG_VERSION")))
        .build()
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
            .filter_map(|c| der(c.as_ref()))
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
            usable.extend(der(cert.as_ref()));
        }
    }
    usable
}

/// A DER certificate for reqwest; one it refuses is dropped.
fn der(bytes: &[u8]) -> Option<Certificate> {
    Certificate::from_der(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_ca_store_the_client_still_builds() {
        let empty = tempfile::tempdir().unwrap();
        let missing = empty.path().join("none.pem");
        // Only this test reads these variables in this process.
        std::env::set_var("SSL_CERT_FILE", &missing);
        std::env::set_var("SSL_CERT_DIR", empty.path());
        assert!(system_roots().is_empty());
        let remote = Endpoint {
            host: "registry.example".into(),
            plain_http: false,
        };
        let local = Endpoint {
            host: "127.0.0.1:5000".into(),
            plain_http: true,
        };
        assert!(roots(false).len() > 100);
        for endpoint in [&remote, &local] {
            build(endpoint).unwrap();
        }
        assert_eq!(std::env::var_os("SSL_CERT_FILE"), Some(missing.into()));
        assert_eq!(remote.base_url(), "https://registry.example");
        assert_eq!(local.base_url(), "http://127.0.0.1:5000");
        std::env::remove_var("SSL_CERT_FILE");
        std::env::remove_var("SSL_CERT_DIR");
    }
}
