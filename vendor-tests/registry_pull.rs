//! `metalor pull` against a real registry (Debian's `docker-registry` on
//! 127.0.0.1), with skopeo as the oracle: the same manifest digest and
//! blob set as `skopeo copy docker://… oci:…`, layouts that skopeo, umoci
//! and `metalor unpack` read, index resolution by platform, pulls by
//! digest, clear 404 and 401 messages, basic auth with credentials from
//! each auth file location, layout-to-layout copies and concurrent pulls
//! into one layout.

mod registry_support;
mod support;

use std::path::Path;
use std::process::{Command, Output};

use registry_support::{
    assert_blobs_verified, blob_set, multiarch_layout, multiarch_layout_with, ref_digest,
    stray_files, Registry,
};
use support::{assert_same_tree, fixtures_dir, metalor_unpack, oci_arg, require_tool, run};

const METALOR: &str = env!("CARGO_BIN_EXE_metalor");

/// `metalor pull ARGS…` with a clean auth environment (HOME pointed at
/// `home`), returning the output whatever the exit status.
fn metalor_pull(home: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = registry_support::metalor_command(home, "pull", args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn metalor pull")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "metalor pull failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

use registry_support::{failed_stderr as failed, oci_string as oci};

/// Checks that skopeo and umoci read the layout, and that our reader and
/// unpacker do too.
fn assert_readable(layout: &Path, tag: &str, test: &str) {
    run(Command::new("skopeo")
        .args(["inspect"])
        .arg(oci_arg(layout, tag)));
    if require_tool("umoci", "umoci", test) {
        let out = run(Command::new("umoci").args(["ls", "--layout"]).arg(layout));
        let tags = String::from_utf8_lossy(&out.stdout);
        assert!(tags.lines().any(|l| l == tag), "umoci ls: {tags}");
    }
    assert!(stray_files(layout).is_empty(), "{:?}", stray_files(layout));
    assert_blobs_verified(layout);
}

#[test]
fn pull_matches_skopeo_and_unpacks() {
    let test = "pull_matches_skopeo_and_unpacks";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for fixture in ["demo", "multi-gzip", "multi-zstd", "empty"] {
        let src = fixtures_dir().join(fixture);
        registry.push(&src, "latest", fixture, false);
        let ours = tmp.path().join(format!("{fixture}-metalor"));
        let theirs = tmp.path().join(format!("{fixture}-skopeo"));
        ok(metalor_pull(
            tmp.path(),
            &["--quiet", &registry.url(fixture), &oci(&ours, "img")],
            &[],
        ));
        registry.skopeo_pull(fixture, &theirs, "img", None);
        assert_eq!(
            ref_digest(&ours, "img"),
            ref_digest(&theirs, "img"),
            "{fixture}"
        );
        assert_eq!(
            ref_digest(&ours, "img"),
            ref_digest(&src, "latest"),
            "{fixture}"
        );
        assert_eq!(blob_set(&ours), blob_set(&theirs), "{fixture}");
        assert_readable(&ours, "img", test);
        let rootfs = tmp.path().join(format!("{fixture}-rootfs"));
        let expected = tmp.path().join(format!("{fixture}-expected"));
        metalor_unpack(&ours, "img", &rootfs);
        metalor_unpack(&src, "latest", &expected);
        assert_same_tree(fixture, ("pulled", &rootfs), ("fixture", &expected));
    }
    // A second pull finds every blob present and verified, and adds a ref.
    let ours = tmp.path().join("demo-metalor");
    let out = ok(metalor_pull(
        tmp.path(),
        &[&registry.url("demo"), &oci(&ours, "again")],
        &[],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0 bytes fetched"), "{stderr}");
    assert_eq!(ref_digest(&ours, "again"), ref_digest(&ours, "img"));
}

#[test]
fn index_resolves_to_the_requested_platform() {
    let test = "index_resolves_to_the_requested_platform";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, amd64, arm64) = multiarch_layout(tmp.path());
    registry.push(&layout, "latest", "multi", true);
    for (platform, arch, want) in [
        ("linux/amd64", "amd64", &amd64),
        ("linux/arm64", "arm64", &arm64),
    ] {
        let ours = tmp.path().join(format!("ours-{arch}"));
        let theirs = tmp.path().join(format!("skopeo-{arch}"));
        ok(metalor_pull(
            tmp.path(),
            &[
                "--platform",
                platform,
                &registry.url("multi:latest"),
                &oci(&ours, "img"),
            ],
            &[],
        ));
        registry.skopeo_pull("multi:latest", &theirs, "img", Some(arch));
        assert_eq!(&ref_digest(&ours, "img"), want, "{platform}");
        assert_eq!(
            ref_digest(&ours, "img"),
            ref_digest(&theirs, "img"),
            "{platform}"
        );
        assert_eq!(blob_set(&ours), blob_set(&theirs), "{platform}");
        assert_readable(&ours, "img", test);
    }
    // The host default is what skopeo picks without an override.
    if std::env::consts::ARCH == "x86_64" {
        let ours = tmp.path().join("ours-host");
        ok(metalor_pull(
            tmp.path(),
            &[&registry.url("multi"), &oci(&ours, "img")],
            &[],
        ));
        assert_eq!(ref_digest(&ours, "img"), amd64);
    }
    let ours = tmp.path().join("ours-riscv");
    let err = failed(metalor_pull(
        tmp.path(),
        &[
            "--platform",
            "linux/riscv64",
            &registry.url("multi"),
            &oci(&ours, "img"),
        ],
        &[],
    ));
    assert!(
        err.contains("linux/riscv64") && err.contains("linux/arm64/v8"),
        "{err}"
    );
    assert!(!ours.join("index.json").exists());
}

/// `metalor inspect --platform PLATFORM IMAGE`: the manifest the layout
/// reader chooses.
fn inspected_manifest(image: &str, platform: &str) -> String {
    let out = run(Command::new(METALOR).args(["inspect", "--platform", platform, image]));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    summary["manifestDigest"].as_str().unwrap().to_owned()
}

#[test]
fn index_entries_without_platform_pull_and_unpack_alike() {
    let test = "index_entries_without_platform_pull_and_unpack_alike";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (layout, amd64, arm64) = multiarch_layout_with(tmp.path(), "bare", false);
    registry.push(&layout, "latest", "bare", true);
    let source = oci(&layout, "latest");
    for (platform, want) in [("linux/amd64", &amd64), ("linux/arm64", &arm64)] {
        let arch = &platform[6..];
        let ours = tmp.path().join(format!("pulled-{arch}"));
        ok(metalor_pull(
            tmp.path(),
            &[
                "--quiet",
                "--platform",
                platform,
                &registry.url("bare:latest"),
                &oci(&ours, "img"),
            ],
            &[],
        ));
        // The registry pull and the layout reader choose the same manifest,
        // the one whose config names the platform.
        assert_eq!(&ref_digest(&ours, "img"), want, "{platform}");
        assert_eq!(inspected_manifest(&source, platform), *want, "{platform}");
        assert_readable(&ours, "img", test);
        let pulled = tmp.path().join(format!("pulled-{arch}-rootfs"));
        let direct = tmp.path().join(format!("direct-{arch}-rootfs"));
        metalor_unpack(&ours, "img", &pulled);
        run(Command::new(METALOR)
            .args([
                "unpack",
                "--quiet",
                "--platform",
                platform,
                "--image",
                &source,
            ])
            .arg(&direct));
        assert_same_tree(platform, ("pulled", &pulled), ("layout", &direct));
    }
    let err = failed(metalor_pull(
        tmp.path(),
        &[
            "--platform",
            "linux/riscv64",
            &registry.url("bare:latest"),
            &oci(&tmp.path().join("none"), "img"),
        ],
        &[],
    ));
    assert!(
        err.contains("no match (available: linux/amd64, linux/arm64/v8)"),
        "{err}"
    );
}

#[test]
fn pull_works_on_a_host_without_a_ca_store() {
    let test = "pull_works_on_a_host_without_a_ca_store";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    registry.push(&src, "latest", "demo", false);
    // With these set, rustls-native-certs finds no certificate at all,
    // as in an empty image: the binary falls back to its bundled roots.
    let empty = tmp.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let ours = tmp.path().join("ours");
    ok(metalor_pull(
        tmp.path(),
        &["--quiet", &registry.url("demo"), &oci(&ours, "img")],
        &[
            ("SSL_CERT_FILE", &empty.join("none.pem")),
            ("SSL_CERT_DIR", &empty),
        ],
    ));
    assert_eq!(ref_digest(&ours, "img"), ref_digest(&src, "latest"));
}

#[test]
fn pull_by_digest_and_not_found_messages() {
    let test = "pull_by_digest_and_not_found_messages";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    registry.push(&src, "latest", "demo", false);
    let digest = ref_digest(&src, "latest");
    let ours = tmp.path().join("ours");
    let by_digest = format!("{}@{digest}", registry.url("demo"));
    ok(metalor_pull(
        tmp.path(),
        &[&by_digest, &oci(&ours, "pinned")],
        &[],
    ));
    assert_eq!(ref_digest(&ours, "pinned"), digest);
    // Without a ref, a digest-only source is stored as `latest`.
    ok(metalor_pull(
        tmp.path(),
        &[&by_digest, &format!("oci:{}", ours.display())],
        &[],
    ));
    assert_eq!(ref_digest(&ours, "latest"), digest);
    assert_readable(&ours, "pinned", test);

    let missing_tag = format!("{}:nope", registry.url("demo"));
    let err = failed(metalor_pull(
        tmp.path(),
        &[&missing_tag, &oci(&ours, "x")],
        &[],
    ));
    assert!(
        err.contains(&format!("{}/demo:nope", registry.addr)),
        "{err}"
    );
    assert!(err.contains("not found"), "{err}");
    let missing_repo = registry.url("nothing/here");
    let err = failed(metalor_pull(
        tmp.path(),
        &[&missing_repo, &oci(&ours, "x")],
        &[],
    ));
    assert!(
        err.contains("nothing/here") && err.contains("not found"),
        "{err}"
    );
    let zero = format!("{}@sha256:{}", registry.url("demo"), "0".repeat(64));
    let err = failed(metalor_pull(tmp.path(), &[&zero, &oci(&ours, "x")], &[]));
    assert!(
        err.contains("not found") && err.contains(&registry.addr),
        "{err}"
    );
    let err = failed(metalor_pull(
        tmp.path(),
        &["docker://::not-a-reference", &oci(&ours, "x")],
        &[],
    ));
    assert!(err.contains("parse image reference"), "{err}");
    // Failures leave the layout as it was.
    let refs = std::fs::read_to_string(ours.join("index.json")).unwrap();
    assert!(!refs.contains("\"x\""), "{refs}");
    assert!(stray_files(&ours).is_empty());
}

/// Docker v2 schema 2 manifests and manifest lists are stored exactly as
/// served (skopeo would convert them to OCI and change the digest), so the
/// layout pins what the registry signed off. umoci and metalor read such
/// layouts; skopeo's `oci:` transport only lists OCI-typed entries.
#[test]
fn docker_schema2_manifests_and_lists_are_kept_raw() {
    let test = "docker_schema2_manifests_and_lists_are_kept_raw";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    registry.push_with(&src, "latest", "d2", &["--format", "v2s2"]);
    let raw = registry.raw_manifest("d2");
    assert!(String::from_utf8_lossy(&raw).contains("vnd.docker.distribution.manifest.v2+json"));
    let ours = tmp.path().join("d2");
    ok(metalor_pull(
        tmp.path(),
        &[&registry.url("d2"), &oci(&ours, "img")],
        &[],
    ));
    assert_eq!(
        ref_digest(&ours, "img"),
        support::fixtures::sha256_digest(&raw)
    );
    assert_blobs_verified(&ours);
    let rootfs = tmp.path().join("d2-rootfs");
    let expected = tmp.path().join("d2-expected");
    metalor_unpack(&ours, "img", &rootfs);
    metalor_unpack(&src, "latest", &expected);
    assert_same_tree("docker v2s2", ("pulled", &rootfs), ("fixture", &expected));
    if require_tool("umoci", "umoci", test) {
        run(Command::new("umoci").args(["ls", "--layout"]).arg(&ours));
    }

    let (layout, _, _) = multiarch_layout(tmp.path());
    registry.push_with(&layout, "latest", "list", &["--all", "--format", "v2s2"]);
    let list: serde_json::Value = serde_json::from_slice(&registry.raw_manifest("list")).unwrap();
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let arm = list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "arm64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let ours = tmp.path().join("list");
    ok(metalor_pull(
        tmp.path(),
        &[
            "--platform",
            "linux/arm64/v8",
            &registry.url("list"),
            &oci(&ours, "img"),
        ],
        &[],
    ));
    assert_eq!(ref_digest(&ours, "img"), arm);
    assert_blobs_verified(&ours);
    metalor_unpack(&ours, "img", &tmp.path().join("list-rootfs"));
}

#[test]
fn layout_to_layout_copy() {
    let test = "layout_to_layout_copy";
    if !require_tool("skopeo", "skopeo", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (multi, _, arm64) = multiarch_layout(tmp.path());
    let ours = tmp.path().join("copy");
    let src = fixtures_dir().join("multi-gzip");
    ok(metalor_pull(
        tmp.path(),
        &[&oci(&src, "latest"), &oci(&ours, "m")],
        &[],
    ));
    assert_eq!(ref_digest(&ours, "m"), ref_digest(&src, "latest"));
    assert_eq!(blob_set(&ours), blob_set(&src));
    ok(metalor_pull(
        tmp.path(),
        &[
            "--platform",
            "linux/arm64",
            &oci(&multi, "latest"),
            &oci(&ours, "arm"),
        ],
        &[],
    ));
    assert_eq!(ref_digest(&ours, "arm"), arm64);
    assert_readable(&ours, "m", test);
    assert_readable(&ours, "arm", test);
    // A bare source without a ref names the layout's only image.
    let demo = fixtures_dir().join("demo");
    let other = tmp.path().join("other");
    ok(metalor_pull(
        tmp.path(),
        &[
            &format!("oci:{}", demo.display()),
            &format!("oci:{}", other.display()),
        ],
        &[],
    ));
    assert_eq!(ref_digest(&other, "latest"), ref_digest(&demo, "latest"));
}

/// Writes an auth file in the format each location expects.
fn write_auth(path: &Path, addr: &str, user: &str, password: &str, base64_form: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let entry = if base64_form {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        serde_json::json!({ "auth": auth })
    } else {
        serde_json::json!({ "username": user, "password": password })
    };
    let body = serde_json::json!({ "auths": { addr: entry } });
    std::fs::write(path, serde_json::to_vec(&body).unwrap()).unwrap();
}

#[test]
fn basic_auth_from_each_auth_file_location() {
    let test = "basic_auth_from_each_auth_file_location";
    let Some(registry) = Registry::start_with_htpasswd(test, "puller", "s3cret") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("demo");
    registry.push(&src, "latest", "private/demo", false);
    let url = registry.url("private/demo");
    let want = ref_digest(&src, "latest");

    let home = tmp.path().join("home-none");
    std::fs::create_dir_all(&home).unwrap();
    let ours = tmp.path().join("anon");
    let err = failed(metalor_pull(&home, &[&url, &oci(&ours, "x")], &[]));
    assert!(
        err.contains("access denied") && err.contains("private/demo"),
        "{err}"
    );
    assert!(!ours.join("index.json").exists());

    // REGISTRY_AUTH_FILE, base64 `auth`.
    let file = tmp.path().join("explicit/auth.json");
    write_auth(&file, &registry.addr, "puller", "s3cret", true);
    let ours = tmp.path().join("l1");
    ok(metalor_pull(
        &home,
        &[&url, &oci(&ours, "x")],
        &[("REGISTRY_AUTH_FILE", &file)],
    ));
    assert_eq!(ref_digest(&ours, "x"), want);

    // $XDG_RUNTIME_DIR/containers/auth.json, username/password fields.
    let run_dir = tmp.path().join("run");
    write_auth(
        &run_dir.join("containers/auth.json"),
        &registry.addr,
        "puller",
        "s3cret",
        false,
    );
    let ours = tmp.path().join("l2");
    ok(metalor_pull(
        &home,
        &[&url, &oci(&ours, "x")],
        &[("XDG_RUNTIME_DIR", &run_dir)],
    ));
    assert_eq!(ref_digest(&ours, "x"), want);

    // ~/.docker/config.json, with an http:// key as docker login writes.
    let docker_home = tmp.path().join("home-docker");
    write_auth(
        &docker_home.join(".docker/config.json"),
        &format!("http://{}", registry.addr),
        "puller",
        "s3cret",
        true,
    );
    let ours = tmp.path().join("l3");
    ok(metalor_pull(&docker_home, &[&url, &oci(&ours, "x")], &[]));
    assert_eq!(ref_digest(&ours, "x"), want);
    assert_readable(&ours, "x", test);

    // A wrong password is refused with the same clear message.
    let bad = tmp.path().join("bad.json");
    write_auth(&bad, &registry.addr, "puller", "wrong", true);
    let ours = tmp.path().join("l4");
    let err = failed(metalor_pull(
        &home,
        &[&url, &oci(&ours, "x")],
        &[("REGISTRY_AUTH_FILE", &bad)],
    ));
    assert!(err.contains("access denied"), "{err}");
}

#[test]
fn concurrent_pulls_into_one_layout() {
    let test = "concurrent_pulls_into_one_layout";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = ["demo", "multi-gzip", "multi-zstd", "dirlinks"];
    for fixture in fixtures {
        registry.push(&fixtures_dir().join(fixture), "latest", fixture, false);
    }
    let shared = tmp.path().join("shared");
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for round in 0..2 {
            for fixture in fixtures {
                let (registry, shared, home) = (&registry, &shared, tmp.path());
                handles.push(s.spawn(move || {
                    let tag = format!("{fixture}-{round}");
                    ok(metalor_pull(
                        home,
                        &["--quiet", &registry.url(fixture), &oci(shared, &tag)],
                        &[],
                    ));
                }));
            }
        }
        for h in handles {
            h.join().unwrap();
        }
    });
    for fixture in fixtures {
        let want = ref_digest(&fixtures_dir().join(fixture), "latest");
        for round in 0..2 {
            let tag = format!("{fixture}-{round}");
            assert_eq!(ref_digest(&shared, &tag), want, "{tag}");
            assert_readable(&shared, &tag, test);
        }
    }
}
