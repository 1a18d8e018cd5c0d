//! Fault injection between `metalor::oci::registry::pull` and a real
//! registry, through a loopback proxy written here: a connection dropped
//! mid-blob resumes with `Range`; corrupted bytes, or more bytes than the
//! descriptor promises, fail and leave no blob;
//! a Content-Length that lies either way is survived; bursts of 500s are
//! retried and an endless one gives up; a 401 in the middle of a pull (an
//! expired token or session) is answered with one fresh authentication,
//! both with basic auth and with a bearer-token flow the proxy plays.
//! Whatever happens, no unverified blob, temp file or broken `index.json`
//! is left behind.

mod registry_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use metalor::oci::registry::{self, Credentials, PullOptions, PullSource, RetryPolicy};
use registry_support::{
    assert_blobs_verified, blob_set, ref_digest, stray_files, Fault, FaultProxy, Registry, Seen,
};
use support::fixtures::{self, Compression, Image, Layer};

/// A one-layer gzip image (skopeo pushes gzip as is, but would compress
/// a plain tar) with a 2 MiB incompressible file, so a blob can be
/// cut in the middle; returns the layout and the layer's digest.
fn big_layout(dir: &Path) -> (PathBuf, String) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..2 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let layer = Layer::new()
        .dir("data", 0o755)
        .file("data/big", 0o644, &data);
    let image = Image::new("latest", Compression::Gzip, &[layer]).unwrap();
    let layout = dir.join("big");
    fixtures::write_layout(&layout, &[image]).unwrap();
    let digest = blob_set(&layout)
        .into_iter()
        .map(|n| format!("sha256:{n}"))
        .find(|d| {
            std::fs::metadata(layout.join("blobs/sha256").join(&d[7..]))
                .unwrap()
                .len()
                > 1 << 20
        })
        .unwrap();
    (layout, digest)
}

struct Setup {
    registry: Registry,
    src: PathBuf,
    layer: String,
    tmp: tempfile::TempDir,
}

fn setup(test: &str, auth: bool) -> Option<Setup> {
    let registry = if auth {
        Registry::start_with_htpasswd(test, "u", "p")?
    } else {
        Registry::start(test)?
    };
    let tmp = tempfile::tempdir().unwrap();
    let (src, layer) = big_layout(tmp.path());
    registry.push(&src, "latest", "big", false);
    Some(Setup {
        registry,
        src,
        layer,
        tmp,
    })
}

fn options(creds: Credentials) -> PullOptions {
    PullOptions {
        credentials: Some(creds),
        retry: RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..PullOptions::default()
    }
}

/// The user and password the tests' registry (htpasswd) and token server accept.
fn test_user() -> Credentials {
    Credentials::Basic {
        username: "u".into(),
        password: "p".into(),
    }
}

/// How many requests the proxy saw whose request line starts with `prefix`.
fn requests_starting_with(proxy: &FaultProxy, prefix: &str) -> usize {
    let seen = proxy.seen.lock().unwrap();
    seen.iter().filter(|r| r.line.starts_with(prefix)).count()
}

fn pull_via(proxy: &FaultProxy, dest: &Path, opts: &PullOptions) -> Result<(), String> {
    let source = PullSource::parse(&format!("docker://{}/big:latest", proxy.addr)).unwrap();
    registry::pull(&source, dest, "img", opts)
        .map(drop)
        .map_err(|e| chain(&e))
}

/// An error and its causes, as the CLI prints them (one link each).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The layout holds exactly the source's image, verified, nothing else.
fn assert_complete(setup: &Setup, dest: &Path) {
    assert_eq!(ref_digest(dest, "img"), ref_digest(&setup.src, "latest"));
    assert_eq!(blob_set(dest), blob_set(&setup.src));
    assert_blobs_verified(dest);
}

/// Nothing unverified: no temp files, every blob hashes to its name, and
/// `index.json`, if any, does not name the failed ref.
fn assert_clean_failure(dest: &Path, layer: &str) {
    assert!(stray_files(dest).is_empty(), "{:?}", stray_files(dest));
    assert!(!dest.join("blobs/sha256").join(&layer[7..]).exists());
    assert_blobs_verified(dest);
    if let Ok(index) = std::fs::read_to_string(dest.join("index.json")) {
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert!(!index.to_string().contains("\"img\""), "{index}");
    }
}

fn is_layer(seen: &Seen, layer: &str) -> bool {
    seen.line.contains(&format!("/blobs/{layer}"))
}

#[test]
fn dropped_connection_resumes_with_range() {
    let Some(s) = setup("dropped_connection_resumes_with_range", false) else {
        return;
    };
    let layer = s.layer.clone();
    let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
        if is_layer(seen, &layer) && seen.range.as_deref().is_none_or(|r| r == "bytes=0-") {
            Fault::Truncate(700_000)
        } else {
            Fault::None
        }
    });
    let dest = s.tmp.path().join("dest");
    pull_via(&proxy, &dest, &options(Credentials::Anonymous)).unwrap();
    assert_complete(&s, &dest);
    let layer_requests: Vec<Seen> = proxy
        .blob_requests()
        .into_iter()
        .filter(|r| is_layer(r, &s.layer))
        .collect();
    assert_eq!(layer_requests.len(), 2, "{layer_requests:?}");
    let resumed = layer_requests[1].range.clone().unwrap_or_default();
    assert!(
        resumed.starts_with("bytes=") && resumed != "bytes=0-",
        "second request should resume: {resumed:?}"
    );
}

#[test]
fn corrupted_bytes_fail_and_leave_no_blob() {
    let Some(s) = setup("corrupted_bytes_fail_and_leave_no_blob", false) else {
        return;
    };
    let layer = s.layer.clone();
    let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
        if is_layer(seen, &layer) {
            Fault::Corrupt
        } else {
            Fault::None
        }
    });
    let dest = s.tmp.path().join("dest");
    let err = pull_via(&proxy, &dest, &options(Credentials::Anonymous)).unwrap_err();
    assert!(
        err.contains("digest mismatch") && err.contains(&s.layer),
        "{err}"
    );
    assert_clean_failure(&dest, &s.layer);
    // A blob longer than its descriptor is cut off and refused too.
    let layer = s.layer.clone();
    let longer = FaultProxy::start(&s.registry.addr, move |seen, _| {
        if is_layer(seen, &layer) {
            Fault::Append(4096)
        } else {
            Fault::None
        }
    });
    let err = pull_via(&longer, &dest, &options(Credentials::Anonymous)).unwrap_err();
    assert!(
        err.contains("size mismatch") && err.contains(&s.layer),
        "{err}"
    );
    assert_clean_failure(&dest, &s.layer);
    // The same layout takes a clean pull afterwards.
    let clean = FaultProxy::start(&s.registry.addr, |_, _| Fault::None);
    pull_via(&clean, &dest, &options(Credentials::Anonymous)).unwrap();
    assert_complete(&s, &dest);
}

#[test]
fn lying_content_length_is_survived() {
    let Some(s) = setup("lying_content_length_is_survived", false) else {
        return;
    };
    let size = std::fs::metadata(s.src.join("blobs/sha256").join(&s.layer[7..]))
        .unwrap()
        .len() as usize;
    for (label, length) in [("short", 1000), ("long", size + 4096)] {
        let layer = s.layer.clone();
        let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
            if is_layer(seen, &layer) && seen.range.as_deref().is_none_or(|r| r == "bytes=0-") {
                Fault::ContentLength(length)
            } else {
                Fault::None
            }
        });
        let dest = s.tmp.path().join(label);
        pull_via(&proxy, &dest, &options(Credentials::Anonymous))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_complete(&s, &dest);
    }
}

#[test]
fn bursts_of_500s_are_retried_and_endless_ones_give_up() {
    let Some(s) = setup("bursts_of_500s_are_retried_and_endless_ones_give_up", false) else {
        return;
    };
    // The first three requests of every kind fail.
    let proxy = FaultProxy::start(&s.registry.addr, |seen, n| {
        if n < 3 || (seen.line.contains("/blobs/") && n < 8) {
            Fault::Status(500)
        } else {
            Fault::None
        }
    });
    let dest = s.tmp.path().join("burst");
    pull_via(&proxy, &dest, &options(Credentials::Anonymous)).unwrap();
    assert_complete(&s, &dest);

    let layer = s.layer.clone();
    let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
        if is_layer(seen, &layer) {
            Fault::Status(503)
        } else {
            Fault::None
        }
    });
    let dest = s.tmp.path().join("endless");
    let err = pull_via(&proxy, &dest, &options(Credentials::Anonymous)).unwrap_err();
    assert!(
        err.contains("gave up after 5 attempts") && err.contains("503"),
        "{err}"
    );
    assert!(
        err.contains("big:latest") && err.contains(&proxy.addr),
        "{err}"
    );
    assert_clean_failure(&dest, &s.layer);
}

#[test]
fn unauthorized_mid_pull_reauthenticates_once() {
    let Some(s) = setup("unauthorized_mid_pull_reauthenticates_once", true) else {
        return;
    };
    let layer = s.layer.clone();
    let fired = std::sync::atomic::AtomicBool::new(false);
    let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
        let first_layer_request =
            is_layer(seen, &layer) && !fired.swap(true, std::sync::atomic::Ordering::SeqCst);
        if first_layer_request {
            Fault::Status(401)
        } else {
            Fault::None
        }
    });
    let dest = s.tmp.path().join("dest");
    pull_via(&proxy, &dest, &options(test_user())).unwrap();
    assert_complete(&s, &dest);
    let v2_checks = requests_starting_with(&proxy, "GET /v2/ ");
    assert!(
        v2_checks >= 2,
        "expected a second auth round trip, saw {v2_checks}"
    );

    // A 401 that persists ends the pull with an access-denied error.
    let layer = s.layer.clone();
    let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
        if is_layer(seen, &layer) {
            Fault::Status(401)
        } else {
            Fault::None
        }
    });
    let dest = s.tmp.path().join("denied");
    let err = pull_via(&proxy, &dest, &options(test_user())).unwrap_err();
    assert!(err.contains("access denied"), "{err}");
    assert_clean_failure(&dest, &s.layer);
}

/// A bearer-token registry, played by the proxy in front of an open one:
/// `/v2/` requests need `Bearer tok-N`, `/token` hands out the current
/// token for basic credentials, and the token is revoked under the pull
/// (as an expiring token would be) on its first layer request.
#[test]
fn bearer_token_flow_survives_an_expired_token() {
    use base64::Engine as _;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::{Arc, OnceLock};

    let Some(s) = setup("bearer_token_flow_survives_an_expired_token", false) else {
        return;
    };
    let addr = Arc::new(OnceLock::<String>::new());
    let generation = Arc::new(AtomicU64::new(1));
    let expired = AtomicBool::new(false);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    let (realm_addr, tokens, layer) = (addr.clone(), generation.clone(), s.layer.clone());
    let proxy = FaultProxy::start(&s.registry.addr, move |seen, _| {
        let current = tokens.load(SeqCst);
        let challenge = || {
            let realm = realm_addr.get().expect("proxy address");
            Fault::Respond(
                401,
                vec![format!(
                    "WWW-Authenticate: Bearer realm=\"http://{realm}/token\",service=\"metalor-test\",scope=\"repository:big:pull\""
                )],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_vec(),
            )
        };
        if seen.line.starts_with("GET /token") {
            if seen.authorization.as_deref() != Some(basic.as_str()) {
                return Fault::Respond(401, vec![], b"{}".to_vec());
            }
            let body = format!(r#"{{"token":"tok-{current}","expires_in":300}}"#);
            let json = vec!["Content-Type: application/json".to_owned()];
            return Fault::Respond(200, json, body.into_bytes());
        }
        let valid = seen.authorization.as_deref() == Some(format!("Bearer tok-{current}").as_str());
        if valid && is_layer(seen, &layer) && !expired.swap(true, SeqCst) {
            tokens.fetch_add(1, SeqCst);
            return challenge();
        }
        if valid {
            Fault::None
        } else {
            challenge()
        }
    });
    addr.set(proxy.addr.clone()).unwrap();

    let dest = s.tmp.path().join("dest");
    pull_via(&proxy, &dest, &options(test_user())).unwrap();
    assert_complete(&s, &dest);
    let token_requests = requests_starting_with(&proxy, "GET /token");
    assert!(
        token_requests >= 2,
        "expected a token refresh, saw {token_requests} token requests"
    );
    assert_eq!(generation.load(SeqCst), 2);

    // Without credentials the token server refuses, and the pull says so.
    let dest = s.tmp.path().join("anonymous");
    let err = pull_via(&proxy, &dest, &options(Credentials::Anonymous)).unwrap_err();
    assert!(
        err.contains("access denied") && err.contains("big:latest"),
        "{err}"
    );
    assert_clean_failure(&dest, &s.layer);
}
