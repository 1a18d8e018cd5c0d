#![forbid(unsafe_code)]
//! Building the `oci-client` HTTP client: scheme choice and TLS roots.
//!
//! TLS is rustls on ring. The roots are the host's CA store (when it can
//! be read) plus Mozilla's roots from `webpki-root-certs`, passed as the
//! only roots, so the client never depends on a platform verifier. Only
//! oci-client's internal default client wants a host CA store; on a host
//! with none at all (a static binary in an empty image) the program opts
//! in to bundled roots once, at start-up, with
//! [`provide_ca_store_for_process`]. The library does so itself only while
//! the pulling thread is the process's only thread, when no other thread
//! can read the environment as it changes. Plain HTTP is used for loopback registries and,
//! with `insecure`, for any registry.

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

/// Builds a client for `endpoint`, trusting the roots [`roots`] gives.
/// On a host with no CA store it fails with a [`RegistryError::Setup`]
/// that says what to do, unless [`provide_ca_store_for_process`] ran
/// first; it never changes the process environment itself.
pub(crate) fn build(endpoint: &Endpoint) -> Result<oci_client::Client, RegistryError> {
    // The process-wide default provider is what reqwest picks up; another
    // part of the program may already have installed one, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // See `provide_ca_store_for_process`: without a CA store, oci-client's
    // throwaway default client would panic inside `Client::try_from`.
    provide_ca_store_while_alone();
    if system_roots().is_empty() {
        return Err(RegistryError::Setup(format!(
            "build HTTP client for {}: the host has no CA store (none in the system \
             paths, SSL_CERT_FILE or SSL_CERT_DIR), and oci-client needs one even \
             though metalor brings its own roots; set SSL_CERT_FILE, or call \
             metalor::oci::registry::client::provide_ca_store_for_process() \
             before the program starts threads (this process already has {} threads)",
            endpoint.host,
            thread_count().map_or("several".to_owned(), |n| n.to_string())
        )));
    }
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

/// Makes a host without a CA store usable for pulls, for this process.
///
/// oci-client 0.18's `Client::try_from(ClientConfig)` ends its struct
/// literal with `..Default::default()`, which also builds a throwaway
/// `reqwest::Client::new()`. That one loads the host's CA store and panics
/// when there is none (a static binary in an empty image), although the
/// client metalor uses is given its own roots, and oci-client offers no
/// way to pass roots to the throwaway. So when the host has no CA store
/// and `SSL_CERT_FILE`/`SSL_CERT_DIR` name none, this writes the bundled
/// Mozilla roots to a memfd and points `SSL_CERT_FILE` at it through
/// `/proc/self/fd`; otherwise it does nothing. Trust is unchanged:
/// metalor's client trusts the bundled roots anyway.
///
/// It sets a process environment variable, which is only sound while no
/// other thread can read the environment: call it at the start of `main`,
/// before any thread exists. The `metalor` binary does so before `pull`.
/// The library calls it only while the calling thread is the process's
/// only one ([`provide_ca_store_while_alone`]); otherwise a pull on such a
/// host fails with a message naming this function.
pub fn provide_ca_store_for_process() {
    // `load_native_certs` honours SSL_CERT_FILE/SSL_CERT_DIR, so a variable
    // that names nothing usable counts as no CA store, as it does for reqwest.
    if !system_roots().is_empty() {
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

/// [`provide_ca_store_for_process`], when this thread is the process's only
/// one: then nothing can read the environment while it changes, so a library
/// caller that pulls before starting threads (a static binary in an empty
/// image, say) needs no set-up of its own. With other threads alive it does
/// nothing, and [`build`] explains what to do instead.
pub(crate) fn provide_ca_store_while_alone() {
    if thread_count() == Some(1) {
        provide_ca_store_for_process();
    }
}

/// The process's thread count, from `/proc/self/status`. While it is 1 no
/// other thread can start behind the caller's back: only this one could
/// start it.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
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
    fn without_a_ca_store_build_fails_cleanly_until_the_process_opts_in() {
        let empty = tempfile::tempdir().unwrap();
        let missing = empty.path().join("none.pem");
        // Only this test reads these variables in this process.
        std::env::set_var("SSL_CERT_FILE", &missing);
        std::env::set_var("SSL_CERT_DIR", empty.path());
        assert!(system_roots().is_empty());
        let endpoint = Endpoint {
            host: "registry.example".into(),
            plain_http: false,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bundled = roots(false).to_vec();
        assert!(bundled.len() > 100);
        let local = Endpoint {
            host: "127.0.0.1:5000".into(),
            plain_http: true,
        };
        // No panic and no change to the environment: a clear error.
        for endpoint in [&endpoint, &local] {
            let err = build(endpoint).err().expect("no CA store");
            assert!(
                err.to_string().contains("provide_ca_store_for_process"),
                "{err}"
            );
        }
        assert_eq!(std::env::var_os("SSL_CERT_FILE"), Some(missing.into()));
        provide_ca_store_for_process();
        let provided = std::env::var("SSL_CERT_FILE").unwrap();
        assert!(provided.starts_with("/proc/self/fd/"), "{provided}");
        build_with_roots(&endpoint, ClientProtocol::Https, bundled).unwrap();
        build(&endpoint).unwrap();
        build(&local).unwrap();
        std::env::remove_var("SSL_CERT_FILE");
        std::env::remove_var("SSL_CERT_DIR");
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
