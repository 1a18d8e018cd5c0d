//! `metalor push` and `metalor copy` against a real registry (Debian's
//! `docker-registry` on 127.0.0.1), with skopeo as the oracle: the
//! manifest skopeo reads back is the layout's, byte for byte, and
//! `skopeo copy` back gives the same blobs. Also: a second push sends
//! nothing, blobs are mounted across repositories (and a refused mount
//! becomes an upload), `--all` pushes an index whole while `--platform`
//! picks one manifest, htpasswd auth, refusals that name the blob or
//! manifest with the registry's code, and a chunked upload that resumes
//! from the registry's offset after a failed chunk (through the
//! fault-injecting proxy).

mod registry_support;
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalor::oci::registry::{self, BlobOutcome, PushEvent, PushOptions, PushReport, RetryPolicy};
use registry_support::{
    big_layout, blob_set, error_chain, metalor_command, multiarch_layout, ref_digest, Fault,
    FaultProxy, Registry,
};
use support::{fixtures_dir, oci_arg, run};

/// `metalor VERB ARGS…` with a clean auth environment (HOME at `home`).
fn metalor(home: &Path, verb: &str, args: &[&str]) -> Output {
    metalor_command(home, verb, args)
        .output()
        .expect("spawn metalor")
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "metalor failed ({}):\n{stderr}",
        out.status
    );
    stderr
}

use registry_support::{failed_stderr as failed, oci_string as oci};

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap()
}

/// Options that record every event.
fn recording() -> (PushOptions, Arc<Mutex<Vec<PushEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let options = PushOptions {
        progress: Some(Arc::new(move |e: &PushEvent| {
            sink.lock().unwrap().push(e.clone())
        })),
        retry: RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..PushOptions::default()
    };
    (options, events)
}

/// The outcomes of the `BlobDone` events.
fn outcomes(events: &Mutex<Vec<PushEvent>>) -> Vec<BlobOutcome> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            PushEvent::BlobDone { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
        .collect()
}

fn push_lib(layout: &Path, target: &str, options: &PushOptions) -> Result<PushReport, String> {
    registry::push_str(&oci(layout, "latest"), target, options).map_err(|e| error_chain(&e))
}

/// `skopeo copy` of `repo` back into a fresh layout: its blob set.
fn skopeo_back(registry: &Registry, repo: &str, dir: &Path) -> Vec<String> {
    registry.skopeo_pull(repo, dir, "back", None);
    blob_set(dir)
}

#[test]
fn push_matches_the_layout_and_a_second_push_sends_nothing() {
    let Some(registry) = Registry::start("push_matches_the_layout") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    let target = format!("{}:v1", registry.url("demo"));
    let said = ok(metalor(
        tmp.path(),
        "push",
        &[&oci(&src, "latest"), &target],
    ));
    assert!(said.contains("4 uploaded"), "{said}");
    let digest = ref_digest(&src, "latest");
    assert_eq!(registry.raw_manifest("demo:v1"), blob(&src, &digest));
    assert_eq!(
        skopeo_back(&registry, "demo:v1", &tmp.path().join("back")),
        blob_set(&src)
    );

    // Again: every blob is present, nothing is sent.
    let (options, events) = recording();
    let report = push_lib(&src, &target, &options).unwrap();
    assert_eq!(
        (report.present, report.uploaded, report.bytes_uploaded),
        (4, 0, 0)
    );
    assert_eq!(outcomes(&events), vec![BlobOutcome::Present; 4]);
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        PushEvent::ManifestDone { reference, .. } if reference == "v1"
    )));

    // And back to a layout through copy: the same manifest.
    let dest = tmp.path().join("copied");
    ok(metalor(
        tmp.path(),
        "copy",
        &["--quiet", &target, &oci(&dest, "x")],
    ));
    assert_eq!(ref_digest(&dest, "x"), digest);
}

#[test]
fn blobs_are_mounted_across_repositories_and_a_refused_mount_uploads() {
    let Some(registry) = Registry::start("blobs_are_mounted") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    push_lib(&src, &registry.url("a"), &PushOptions::default()).unwrap();

    let (mut options, events) = recording();
    options.mount_from = vec!["a".into()];
    let report = push_lib(&src, &registry.url("b"), &options).unwrap();
    assert_eq!((report.mounted, report.uploaded), (4, 0), "{report:?}");
    let from_a = BlobOutcome::Mounted { from: "a".into() };
    assert_eq!(outcomes(&events), vec![from_a; 4]);

    // A repository that does not have the blobs: the registry refuses
    // each mount, and the upload it opens instead is used.
    let (mut options, events) = recording();
    options.mount_from = vec!["nowhere".into()];
    let report = push_lib(&src, &registry.url("c"), &options).unwrap();
    assert_eq!((report.mounted, report.uploaded), (0, 4), "{report:?}");
    assert!(outcomes(&events)
        .iter()
        .all(|o| matches!(o, BlobOutcome::Uploaded { .. })));

    // copy docker→docker on one registry mounts from the source.
    let said = ok(metalor(
        tmp.path(),
        "copy",
        &[&registry.url("a"), &format!("{}:copied", registry.url("d"))],
    ));
    assert!(said.contains("4 mounted"), "{said}");
    assert_eq!(
        registry.raw_manifest("d:copied"),
        registry.raw_manifest("a")
    );
}

#[test]
fn all_pushes_an_index_whole_and_platform_picks_one() {
    let Some(registry) = Registry::start("all_pushes_an_index_whole") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, amd, arm) = multiarch_layout(tmp.path());
    let index_digest = ref_digest(&layout, "latest");
    ok(metalor(
        tmp.path(),
        "push",
        &["--all", &oci(&layout, "latest"), &registry.url("multi")],
    ));
    assert_eq!(registry.raw_manifest("multi"), blob(&layout, &index_digest));
    let inner: serde_json::Value = serde_json::from_slice(&blob(&layout, &index_digest)).unwrap();
    let inner_digest = inner["manifests"][0]["digest"].as_str().unwrap().to_owned();
    for digest in [&inner_digest, &amd, &arm] {
        let served = registry.raw_manifest(&format!("multi@{digest}"));
        assert_eq!(served, blob(&layout, digest), "{digest}");
    }
    // skopeo copies the whole index back with every blob it names.
    let back = tmp.path().join("back");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--all", "--src-tls-verify=false"])
        .arg(registry.url("multi"))
        .arg(oci_arg(&back, "back")));
    let mut named = vec![index_digest.clone(), amd.clone(), arm.clone()];
    for manifest in [&amd, &arm] {
        let doc: serde_json::Value = serde_json::from_slice(&blob(&layout, manifest)).unwrap();
        let layers = doc["layers"].as_array().unwrap().iter();
        for desc in std::iter::once(&doc["config"]).chain(layers) {
            named.push(desc["digest"].as_str().unwrap().to_owned());
        }
    }
    let mut named: Vec<String> = named.into_iter().map(|d| d[7..].to_owned()).collect();
    named.sort();
    named.dedup();
    assert_eq!(blob_set(&back), named);

    // copy --all from the registry: to a layout, and to another
    // repository (through a temp layout, mounting every blob).
    let copied = tmp.path().join("copied");
    let to_layout = ["copy", "--all", "--quiet", &registry.url("multi")];
    ok(metalor(
        tmp.path(),
        to_layout[0],
        &[&to_layout[1..], &[oci(&copied, "x").as_str()]].concat(),
    ));
    assert_eq!(ref_digest(&copied, "x"), index_digest);
    assert_eq!(blob_set(&copied), named);
    let said = ok(metalor(
        tmp.path(),
        "copy",
        &["--all", &registry.url("multi"), &registry.url("multi2")],
    ));
    assert!(
        said.contains(&format!("{} mounted", named.len() - 3)),
        "{said}"
    );
    for digest in [&index_digest, &amd, &arm] {
        assert_eq!(
            registry.raw_manifest(&format!("multi2@{digest}")),
            blob(&layout, digest)
        );
    }

    // Without --all: the manifest for the platform, at the tag.
    let args = ["--platform", "linux/arm64/v8", &oci(&layout, "latest")];
    let target = registry.url("one");
    ok(metalor(
        tmp.path(),
        "push",
        &[&args[..], &[target.as_str()]].concat(),
    ));
    assert_eq!(registry.raw_manifest("one"), blob(&layout, &arm));
}

#[test]
fn push_with_htpasswd_auth() {
    let Some(registry) = Registry::start_with_htpasswd("push_with_htpasswd_auth", "u", "p") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    let target = registry.url("secret");
    let err = failed(metalor(
        tmp.path(),
        "push",
        &[&oci(&src, "latest"), &target],
    ));
    assert!(
        err.contains("push docker://") && err.contains("access denied"),
        "{err}"
    );
    let authfile = tmp.path().join("auth.json");
    std::fs::write(
        &authfile,
        format!(r#"{{"auths":{{"{}":{{"auth":"dTpw"}}}}}}"#, registry.addr),
    )
    .unwrap();
    let file = authfile.to_str().unwrap();
    ok(metalor(
        tmp.path(),
        "push",
        &["--authfile", file, &oci(&src, "latest"), &target],
    ));
    let digest = ref_digest(&src, "latest");
    assert_eq!(registry.raw_manifest("secret"), blob(&src, &digest));
}

#[test]
fn refusals_name_the_blob_or_manifest_with_the_registry_code() {
    let Some(registry) = Registry::start("refusals_name_the_blob") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A layer whose bytes do not match its digest: the real registry
    // refuses it with DIGEST_INVALID.
    let (layout, layer) = big_layout(tmp.path());
    let path = layout.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = push_lib(&layout, &registry.url("bad"), &PushOptions::default()).unwrap_err();
    assert!(err.contains(&format!("blob {layer}")), "{err}");
    assert!(err.contains("DIGEST_INVALID"), "{err}");

    // A manifest the registry refuses (a policy proxy's 400).
    let src = fixtures_dir().join("demo");
    let manifest = ref_digest(&src, "latest");
    let body = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"tag is immutable"}]}"#;
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        if seen.line.starts_with("PUT ") && seen.line.contains("/manifests/") {
            Fault::Respond(400, vec![], body.to_vec())
        } else {
            Fault::None
        }
    });
    let target = format!("docker://{}/refused:v1", proxy.addr);
    let err = push_lib(&src, &target, &PushOptions::default()).unwrap_err();
    assert!(err.starts_with("push docker://"), "{err}");
    assert!(err.contains(&format!("manifest {manifest}")), "{err}");
    assert!(err.contains("MANIFEST_INVALID: tag is immutable"), "{err}");
}

#[test]
fn a_failed_chunk_resumes_from_the_registry_offset() {
    let Some(registry) = Registry::start("a_failed_chunk_resumes") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, layer) = big_layout(tmp.path());
    // The third chunk of the layer fails once, before the registry sees it.
    let failed_once = AtomicBool::new(false);
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        let third = seen.content_range.as_deref() == Some("524288-786431");
        if seen.line.starts_with("PATCH ") && third && !failed_once.swap(true, SeqCst) {
            return Fault::Status(500);
        }
        Fault::None
    });
    let (mut options, _) = recording();
    options.chunk_size = 256 << 10;
    let target = format!("docker://{}/resume", proxy.addr);
    push_lib(&layout, &target, &options).unwrap();
    let seen = proxy.seen.lock().unwrap().clone();
    let patches: Vec<&str> = seen
        .iter()
        .filter(|s| s.line.starts_with("PATCH "))
        .filter_map(|s| s.content_range.as_deref())
        .collect();
    // Each chunk once, the failed one twice: never from byte 0 again.
    assert_eq!(patches.iter().filter(|r| r.starts_with("0-")).count(), 1);
    assert_eq!(patches.iter().filter(|r| **r == "524288-786431").count(), 2);
    assert!(
        seen.iter()
            .any(|s| s.line.starts_with("GET /v2/resume/blobs/uploads/")),
        "no upload status request"
    );
    assert_eq!(
        skopeo_back(&registry, "resume", &tmp.path().join("back")),
        blob_set(&layout)
    );

    // A chunk cut in the middle: distribution gives up that upload, and a
    // new one finishes the blob.
    let cut = AtomicBool::new(false);
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        let second = seen.content_range.as_deref() == Some("262144-524287");
        if seen.line.starts_with("PATCH ") && second && !cut.swap(true, SeqCst) {
            return Fault::CutRequest(100_000);
        }
        Fault::None
    });
    let target = format!("docker://{}/cut", proxy.addr);
    push_lib(&layout, &target, &options).unwrap();
    registry.skopeo_pull("cut", &tmp.path().join("cut"), "back", None);
    assert!(blob_set(&tmp.path().join("cut")).contains(&layer[7..].to_owned()));
}

#[test]
fn push_refuses_what_it_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    // A layout as the push target, and --all between layouts.
    let err = failed(metalor(
        tmp.path(),
        "push",
        &[&oci(&src, "latest"), "oci:/tmp/x"],
    ));
    assert!(err.contains("a push goes to a registry"), "{err}");
    let err = failed(metalor(
        tmp.path(),
        "copy",
        &[
            "--all",
            &oci(&src, "latest"),
            &oci(&tmp.path().join("d"), "x"),
        ],
    ));
    assert!(
        err.contains("--all") && err.contains("one platform"),
        "{err}"
    );
    assert!(!tmp.path().join("d").exists());
}

#[test]
fn bearer_tokens_are_asked_with_push_scope_and_mount_sources() {
    let Some(registry) = Registry::start("bearer_tokens_are_asked_with_push_scope") else {
        return;
    };
    let src = fixtures_dir().join("demo");
    push_lib(&src, &registry.url("a"), &PushOptions::default()).unwrap();
    // A token registry played by the proxy in front of the open one; the
    // realm names the proxy, whose address is known once it runs.
    let realm = Arc::new(Mutex::new(String::new()));
    let proxy_realm = realm.clone();
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        if seen.line.starts_with("GET /token") {
            return Fault::Respond(200, vec![], br#"{"token":"tok"}"#.to_vec());
        }
        if seen.authorization.as_deref() != Some("Bearer tok") {
            let at = proxy_realm.lock().unwrap().clone();
            let challenge = format!("WWW-Authenticate: Bearer realm=\"http://{at}/token\"");
            return Fault::Respond(401, vec![challenge], Vec::new());
        }
        Fault::None
    });
    *realm.lock().unwrap() = proxy.addr.clone();
    let (mut options, events) = recording();
    options.mount_from = vec!["a".into()];
    let target = format!("docker://{}/tok:v1", proxy.addr);
    push_lib(&src, &target, &options).unwrap();
    let seen = proxy.seen.lock().unwrap().clone();
    let token = seen
        .iter()
        .find(|s| s.line.starts_with("GET /token"))
        .expect("a token request");
    assert!(
        token.line.contains("scope=repository%3Atok%3Apull%2Cpush")
            && token.line.contains("scope=repository%3Aa%3Apull"),
        "{}",
        token.line
    );
    let from_a = BlobOutcome::Mounted { from: "a".into() };
    assert_eq!(outcomes(&events), vec![from_a; 4]);
}

#[test]
fn docker_schema2_manifests_are_pushed_with_their_media_type() {
    let Some(registry) = Registry::start("docker_schema2_manifests") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    registry.push_with(&src, "latest", "v2s2", &["--format", "v2s2"]);
    let layout = tmp.path().join("v2s2");
    ok(metalor(
        tmp.path(),
        "copy",
        &["--quiet", &registry.url("v2s2"), &oci(&layout, "x")],
    ));
    ok(metalor(
        tmp.path(),
        "push",
        &["--quiet", &oci(&layout, "x"), &registry.url("again")],
    ));
    let served = registry.raw_manifest("again");
    assert_eq!(served, registry.raw_manifest("v2s2"));
    let doc: serde_json::Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(
        doc["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}
