//! `metalor pull [--platform linux/ARCH] [--insecure] [--quiet] SOURCE oci:DIR[:REF]`
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::os::fd::IntoRawFd;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use metalor::oci::registry::{self, PullEvent, PullOptions};
use metalor::oci::Platform;

/// Arguments of `metalor pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Platform to pick from an index, as linux/ARCH[/VARIANT]; the host's
    /// by default.
    #[arg(long)]
    platform: Option<String>,
    /// Use plain HTTP for this registry even when it is not on loopback.
    #[arg(long)]
    insecure: bool,
    /// No progress and no summary.
    #[arg(long, short)]
    quiet: bool,
    /// docker://HOST[:PORT]/REPO[:TAG|@DIGEST], a bare reference, or
    /// oci:DIR[:REF].
    source: String,
    /// The destination layout, oci:DIR[:REF]; REF defaults to the source
    /// tag, else `latest`.
    destination: String,
}

/// Pulls the image and prints a one-line summary unless `--quiet`.
pub fn run(args: &PullArgs) -> anyhow::Result<()> {
    provide_ca_store_for_oci_client();
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let mut options = PullOptions {
        platform,
        insecure: args.insecure,
        ..PullOptions::default()
    };
    if !args.quiet && std::io::stderr().is_terminal() {
        options.progress = Some(progress_printer());
    }
    let report = registry::pull_str(&args.source, &args.destination, &options)
        .with_context(|| format!("pull {} into {}", args.source, args.destination))?;
    if !args.quiet {
        eprintln!(
            "pulled {} as {} ({} blobs, {} bytes fetched)",
            report.manifest_digest, report.ref_name, report.blobs, report.bytes_fetched
        );
    }
    Ok(())
}

/// Per-blob progress on a terminal: one line per finished blob and a
/// running byte count.
fn progress_printer() -> registry::ProgressFn {
    let state = Arc::new(Mutex::new((0usize, 0usize, 0u64)));
    Arc::new(move |event: &PullEvent| {
        let Ok(mut s) = state.lock() else { return };
        match event {
            PullEvent::Resolved { blobs, .. } => s.1 = *blobs,
            PullEvent::Bytes { bytes, .. } => {
                s.2 += bytes;
                eprint!("\r{}/{} blobs, {} MiB", s.0, s.1, s.2 >> 20);
            }
            PullEvent::BlobDone {
                digest,
                size,
                fetched,
            } => {
                s.0 += 1;
                let how = if *fetched == 0 { "present" } else { "fetched" };
                eprintln!("\r{}/{} {digest} ({size} bytes, {how})", s.0, s.1);
            }
            _ => {}
        }
    })
}

/// Works around oci-client 0.18: `Client::try_from(ClientConfig)` ends its
/// struct literal with `..Default::default()`, which also builds a throwaway
/// `reqwest::Client::new()`. That one loads the host's CA store and panics
/// when there is none (a static binary in an empty image), although the
/// client metalor uses is given its own roots. So when the host has no CA
/// store and `SSL_CERT_FILE`/`SSL_CERT_DIR` name none, the bundled Mozilla
/// roots are written to a memfd and `SSL_CERT_FILE` names it through
/// `/proc/self/fd`, for this process only (pull spawns nothing). This runs
/// before the pull starts any thread, so changing the environment is sound.
/// Trust is unchanged: metalor's client trusts the bundled roots anyway.
fn provide_ca_store_for_oci_client() {
    if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some() {
        return;
    }
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn bundled_roots_survive_the_pem_round_trip() {
        let pem = super::bundled_roots_pem();
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
