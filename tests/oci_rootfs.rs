//! `prepare_oci_rootfs` end to end (upstream §3.9): from `oci:` layouts and
//! from a real registry (Debian's `docker-registry` on 127.0.0.1), the
//! package-root rules, reference normalization and its error prefix, the
//! architecture check before any fetch, the cache's exact shape, reuse
//! across package roots and offline, concurrent callers on one cache
//! entry, and the overlap of download and unpack: layer 1 is applied while
//! the last layer is held back by a proxy, and a later layer that fails to
//! download leaves nothing behind.

#[path = "../vendor-tests/support/mod.rs"]
mod support;

#[path = "../vendor-tests/registry_support/mod.rs"]
mod registry_support;

mod build_cell_support;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use build_cell_support::{busybox_reference, Prefix};
use metalor::prepare_oci_rootfs;
use registry_support::{Fault, FaultProxy, Registry};
use sha2::{Digest as _, Sha256};
use support::fixtures::{self, Compression, Image, Layer};

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache root's entries; each must be a directory holding exactly
/// `layout/` and `reference.txt`, and the pristine `rootfs/` a cache hit
/// copies.
fn cache_entries(cache: &Path) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(cache).unwrap() {
        let entry = entry.unwrap();
        assert!(
            entry.file_type().unwrap().is_dir(),
            "{:?} is not a directory",
            entry.path()
        );
        let mut names: Vec<String> = fs::read_dir(entry.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.retain(|name| name != "rootfs");
        assert_eq!(names, ["layout", "reference.txt"], "{:?}", entry.path());
        let identity = fs::read_to_string(entry.path().join("reference.txt")).unwrap();
        entries.push((entry.file_name().to_string_lossy().into_owned(), identity));
    }
    entries.sort();
    entries
}

fn assert_busybox_rootfs(rootfs: &Path, package: &Path) {
    assert!(
        rootfs.starts_with(package.canonicalize().unwrap()),
        "{}",
        rootfs.display()
    );
    assert_eq!(
        rootfs,
        package.canonicalize().unwrap().join("oci/bundle/rootfs")
    );
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "busybox\n"
    );
}

#[test]
fn from_an_oci_layout_without_cache() {
    let prefix = Prefix::new();
    let Some(reference) = busybox_reference(&prefix.path, "from_an_oci_layout_without_cache")
    else {
        return;
    };
    let package = prefix.join("pkg");
    let rootfs = prepare_oci_rootfs(&reference, &prefix.path, &package, None, None).unwrap();
    assert_busybox_rootfs(&rootfs, &package);
    let index = fs::read_to_string(package.join("oci/layout/index.json")).unwrap();
    assert!(
        index.contains(r#""org.opencontainers.image.ref.name":"image""#),
        "{index}"
    );
    // A second call replaces the bundle and the layout.
    fs::write(rootfs.join("marker"), "x").unwrap();
    let again =
        prepare_oci_rootfs(&reference, &prefix.path, &package, None, Some("amd64")).unwrap();
    assert_eq!(again, rootfs);
    assert!(!rootfs.join("marker").exists());
    let names: Vec<_> = fs::read_dir(package.join("oci/bundle"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["rootfs"], "nothing but the rootfs in the bundle");
}

#[test]
fn zero_layer_image_gives_an_empty_rootfs() {
    let prefix = Prefix::new();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/oci/empty");
    let index = fs::read_to_string(layout.join("index.json")).unwrap();
    let tag = if index.contains("\"latest\"") {
        "latest"
    } else {
        "empty"
    };
    let reference = format!("oci:{}:{tag}", layout.display());
    let rootfs =
        prepare_oci_rootfs(&reference, &prefix.path, &prefix.join("pkg"), None, None).unwrap();
    assert!(rootfs.is_dir());
    assert_eq!(fs::read_dir(&rootfs).unwrap().count(), 0);
}

#[test]
fn invalid_and_unsupported_references_fail_before_any_fetch() {
    let prefix = Prefix::new();
    let package = prefix.join("pkg");
    let cache = prefix.join("cache");
    for (reference, normalized) in [
        ("::not-a-reference", "docker://::not-a-reference"),
        ("docker://::not-a-reference", "docker://::not-a-reference"),
        ("dir:/tmp/x", "dir:/tmp/x"),
        ("docker-archive:/tmp/x.tar", "docker-archive:/tmp/x.tar"),
        ("oci-archive:/tmp/x.tar", "oci-archive:/tmp/x.tar"),
        ("containers-storage:x", "containers-storage:x"),
        ("docker-daemon:x:1", "docker-daemon:x:1"),
        ("ftp://host/x", "ftp://host/x"),
    ] {
        for cache_root in [None, Some(cache.as_path())] {
            let err = prepare_oci_rootfs(reference, &prefix.path, &package, cache_root, None)
                .unwrap_err();
            let top = err.to_string();
            assert!(
                top.starts_with(&format!("copy OCI image {normalized} into ")),
                "{reference}: {top}"
            );
            assert!(format!("{err:#}").contains("failed"), "{err:#}");
        }
    }
    // Refused before the cache is touched: no root, no entry.
    assert!(!cache.exists());
}

#[test]
fn unsupported_architecture_is_refused_before_any_fetch() {
    let prefix = Prefix::new();
    let package = prefix.join("pkg");
    fs::create_dir_all(package.join("oci/bundle/rootfs")).unwrap();
    let cache = prefix.join("cache");
    // Nothing listens there: a fetch would fail with another message.
    let reference = format!("127.0.0.1:{}/nothing:1", registry_support::free_port());
    for arch in ["sparc", "ARM64", "x86", ""] {
        let err = prepare_oci_rootfs(&reference, &prefix.path, &package, Some(&cache), Some(arch))
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("unsupported architecture {arch}"));
    }
    assert!(!cache.exists(), "the cache is not touched");
    // Upstream's order: the old bundle is removed before the check.
    assert!(!package.join("oci/bundle").exists());
    assert!(package.join("oci").is_dir());
}

#[test]
fn package_root_rules() {
    let prefix = Prefix::new();
    let Some(reference) = busybox_reference(&prefix.path, "package_root_rules") else {
        return;
    };
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().canonicalize().unwrap().join("pkg");
    let err = prepare_oci_rootfs(&reference, &prefix.path, &outside, None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "OCI package root {} must live under runtime root prefix {}",
            outside.display(),
            prefix.path.display()
        )
    );
    symlink(elsewhere.path(), prefix.join("linked")).unwrap();
    let err = prepare_oci_rootfs(
        &reference,
        &prefix.path,
        &prefix.join("linked/pkg"),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("traverses a symlink"), "{err}");
    assert!(!outside.exists(), "nothing created through the symlink");
    let err = prepare_oci_rootfs(&reference, Path::new("/"), &prefix.join("pkg"), None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "runtime root prefix must not be /");
    let err = prepare_oci_rootfs(
        &reference,
        &prefix.join("missing"),
        &prefix.join("pkg"),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("failed to canonicalize runtime root prefix"),
        "{err}"
    );
    let err = prepare_oci_rootfs(&reference, &prefix.path, Path::new("/"), None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "container root must not be /");
    let err = prepare_oci_rootfs(&reference, &prefix.path, Path::new("rel"), None, None)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "OCI package root must be absolute: rel");
}

#[test]
fn cache_shape_reuse_and_offline() {
    let test = "cache_shape_reuse_and_offline";
    let prefix = Prefix::new();
    let Some(reference) = busybox_reference(&prefix.path, test) else {
        return;
    };
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let layout = prefix.join("busybox");
    registry.push(&layout, "latest", "tools/busybox", false);
    let bare = format!("{}/tools/busybox:latest", registry.addr);
    let normalized = format!("docker://{bare}");
    let cache = prefix.join("cache");

    let first =
        prepare_oci_rootfs(&bare, &prefix.path, &prefix.join("a"), Some(&cache), None).unwrap();
    assert_busybox_rootfs(&first, &prefix.join("a"));
    let system = format!("{normalized}\narch=system");
    assert_eq!(
        cache_entries(&cache),
        [(sha256_hex(&system), system.clone())]
    );
    assert!(
        !prefix.join("a/oci/layout").exists(),
        "no package layout with a cache"
    );
    let entry = cache.join(sha256_hex(&system));
    let index = fs::read_to_string(entry.join("layout/index.json")).unwrap();
    assert!(
        index.contains(r#""org.opencontainers.image.ref.name":"image""#),
        "{index}"
    );
    let inode = fs::metadata(entry.join("layout/index.json")).unwrap().ino();

    // The explicit host architecture is a separate entry.
    prepare_oci_rootfs(
        &normalized,
        &prefix.path,
        &prefix.join("b"),
        Some(&cache),
        Some("x86_64"),
    )
    .unwrap();
    let amd64 = format!("{normalized}\narch=amd64");
    let mut expected = vec![
        (sha256_hex(&system), system.clone()),
        (sha256_hex(&amd64), amd64),
    ];
    expected.sort();
    assert_eq!(cache_entries(&cache), expected);

    // Offline: the registry is gone; cached entries still work, from any
    // package root, without being refilled.
    drop(registry);
    let offline =
        prepare_oci_rootfs(&bare, &prefix.path, &prefix.join("c"), Some(&cache), None).unwrap();
    assert_busybox_rootfs(&offline, &prefix.join("c"));
    assert_eq!(
        fs::metadata(entry.join("layout/index.json")).unwrap().ino(),
        inode
    );
    let err = prepare_oci_rootfs(&bare, &prefix.path, &prefix.join("d"), None, None).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("copy OCI image {normalized} into ")),
        "{err:#}"
    );

    // A stale entry (reference.txt differs) is refilled, here from a layout.
    fs::write(entry.join("reference.txt"), "something else").unwrap();
    let err =
        prepare_oci_rootfs(&bare, &prefix.path, &prefix.join("e"), Some(&cache), None).unwrap_err();
    assert!(err.to_string().starts_with("copy OCI image"), "{err:#}");
    assert_eq!(
        fs::read_dir(&entry).unwrap().count(),
        0,
        "a failed refill leaves an empty entry"
    );
    let _ = reference;
}

#[test]
fn concurrent_callers_share_one_cache_entry() {
    let test = "concurrent_callers_share_one_cache_entry";
    let prefix = Prefix::new();
    if busybox_reference(&prefix.path, test).is_none() {
        return;
    }
    let Some(registry) = Registry::start(test) else {
        return;
    };
    registry.push(&prefix.join("busybox"), "latest", "busybox", false);
    let reference = format!("{}/busybox:latest", registry.addr);
    let cache = prefix.join("cache");
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (reference, prefix, cache) = (&reference, &prefix, &cache);
                scope.spawn(move || {
                    prepare_oci_rootfs(
                        reference,
                        &prefix.path,
                        &prefix.join(&format!("pkg{i}")),
                        Some(cache),
                        None,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, result) in results.into_iter().enumerate() {
        let rootfs = result.unwrap_or_else(|e| panic!("caller {i}: {e:#}"));
        assert_busybox_rootfs(&rootfs, &prefix.join(&format!("pkg{i}")));
    }
    assert_eq!(cache_entries(&cache).len(), 1);
    registry_support::assert_blobs_verified(
        &cache
            .join(sha256_hex(&format!("docker://{reference}\narch=system")))
            .join("layout"),
    );
}

#[test]
fn concurrent_processes_share_one_cache_entry() {
    // Threads share a process; the lock is an flock, so check processes
    // too: the metalor binary cannot call prepare_oci_rootfs, so this test
    // re-runs its own test binary as the second caller.
    if let Ok(args) = std::env::var("METALOR_TEST_PREPARE_CHILD") {
        let parts: Vec<&str> = args.split('\n').collect();
        prepare_oci_rootfs(
            parts[0],
            Path::new(parts[1]),
            Path::new(parts[2]),
            Some(Path::new(parts[3])),
            None,
        )
        .unwrap();
        return;
    }
    let prefix = Prefix::new();
    let Some(reference) =
        busybox_reference(&prefix.path, "concurrent_processes_share_one_cache_entry")
    else {
        return;
    };
    let cache = prefix.join("cache");
    let children: Vec<_> = (0..3)
        .map(|i| {
            let payload = format!(
                "{reference}\n{}\n{}\n{}",
                prefix.path.display(),
                prefix.join(&format!("pkg{i}")).display(),
                cache.display()
            );
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "concurrent_processes_share_one_cache_entry",
                    "--nocapture",
                ])
                .env("METALOR_TEST_PREPARE_CHILD", payload)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    for i in 0..3 {
        assert_busybox_rootfs(
            &prefix.join(&format!("pkg{i}/oci/bundle/rootfs")),
            &prefix.join(&format!("pkg{i}")),
        );
    }
    assert_eq!(cache_entries(&cache).len(), 1);
}

// ------------------------------------------------- download/unpack overlap

/// The last entry of the first layer: once it exists in the staging
/// rootfs, layer 1 has been applied.
const FIRST_LAYER_DONE: &str = "one/done";

/// A three-layer gzip image (skopeo pushes gzip blobs as they are) whose
/// later layers change what the first one wrote, so applying them out of
/// order would show. Returns the layout (tag `latest`) and the last
/// layer's digest.
fn three_layer_layout(dir: &Path) -> (PathBuf, String) {
    let noise: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let layers = [
        Layer::new()
            .dir("one", 0o755)
            .file("one/replaced", 0o644, b"layer 1\n")
            .file("one/removed", 0o644, b"layer 1\n")
            .file("one/big", 0o644, &noise)
            .dir("usr", 0o755)
            .dir("usr/bin", 0o755)
            .symlink("bin", "usr/bin")
            .file(FIRST_LAYER_DONE, 0o644, b"1\n"),
        Layer::new()
            .dir("one", 0o755)
            .file("one/replaced", 0o600, b"layer 2\n")
            .whiteout("one/removed")
            .file("two", 0o644, b"layer 2\n"),
        Layer::new()
            .dir("bin", 0o755)
            .file("bin/tool", 0o755, b"#!/bin/sh\n")
            .file("three", 0o644, &noise[..1000]),
    ];
    let image = Image::new("latest", Compression::Gzip, &layers).unwrap();
    let layout = dir.join("three-layers");
    fixtures::write_layout(&layout, &[image]).unwrap();
    let manifest = registry_support::ref_digest(&layout, "latest");
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&manifest[7..])).unwrap(),
    )
    .unwrap();
    let last = manifest["layers"][2]["digest"].as_str().unwrap().to_owned();
    (layout, last)
}

/// Whether `rel` exists in a staging rootfs under `bundle` (the unpacker's
/// `.rootfs.metalor-staging-*`, renamed to `rootfs` only when complete).
fn staged(bundle: &Path, rel: &str) -> bool {
    fs::read_dir(bundle).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(".rootfs.metalor-staging-")
                && entry.path().join(rel).exists()
        })
    })
}

/// A proxy to `registry` that holds the request for `layer` back until
/// layer 1 shows in a staging rootfs under `bundle`, then answers it with
/// `fault`. The flag tells whether layer 1 showed while the layer was
/// held. A sequential pull-then-unpack never shows it; the wait gives up
/// after 20 s (under the client's read timeout) so that such a run ends.
fn hold_back(
    registry: &Registry,
    layer: &str,
    bundle: PathBuf,
    fault: Fault,
) -> (FaultProxy, Arc<AtomicBool>) {
    let applied_first = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&applied_first);
    let path = format!("/blobs/{layer}");
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        if !seen.line.contains(&path) {
            return Fault::None;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if staged(&bundle, FIRST_LAYER_DONE) {
                flag.store(true, Ordering::SeqCst);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        fault.clone()
    });
    (proxy, applied_first)
}

#[test]
fn layer_one_is_applied_while_the_last_layer_downloads() {
    let test = "layer_one_is_applied_while_the_last_layer_downloads";
    let prefix = Prefix::new();
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let (layout, last) = three_layer_layout(&prefix.path);
    registry.push(&layout, "latest", "overlap", false);
    let package = prefix.join("pkg");
    let (proxy, applied_first) =
        hold_back(&registry, &last, package.join("oci/bundle"), Fault::None);
    let reference = format!("{}/overlap:latest", proxy.addr);
    let cache = prefix.join("cache");
    let prepared = prepare_oci_rootfs(&reference, &prefix.path, &package, Some(&cache), None);
    assert!(
        applied_first.load(Ordering::SeqCst),
        "layer 1 was not applied while the last layer's blob was held back: \
         the unpack does not overlap the download"
    );
    let rootfs = prepared.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(proxy.blob_requests().len(), 4, "config and three layers");
    assert_eq!(
        fs::read_to_string(rootfs.join("one/replaced")).unwrap(),
        "layer 2\n"
    );
    assert!(!rootfs.join("one/removed").exists());
    assert!(
        rootfs.join("usr/bin/tool").is_file(),
        "kept the bin -> usr/bin link"
    );

    // The same image unpacked one step after the other: by the CLI from the
    // source layout, and by prepare_oci_rootfs from the (now complete)
    // cache entry, offline.
    let sequential = prefix.join("sequential");
    support::metalor_unpack(&layout, "latest", &sequential);
    support::assert_same_tree(
        "overlapped unpack",
        ("prepared", &rootfs),
        ("cli", &sequential),
    );
    drop(proxy);
    drop(registry);
    let reused = prepare_oci_rootfs(
        &reference,
        &prefix.path,
        &prefix.join("again"),
        Some(&cache),
        None,
    )
    .unwrap();
    support::assert_same_tree("cache reuse", ("prepared", &rootfs), ("reused", &reused));
    assert_eq!(cache_entries(&cache).len(), 1);
}

#[test]
fn a_failed_later_layer_leaves_nothing_behind() {
    let test = "a_failed_later_layer_leaves_nothing_behind";
    let prefix = Prefix::new();
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let (layout, last) = three_layer_layout(&prefix.path);
    registry.push(&layout, "latest", "overlap", false);
    // A corrupted blob fails its digest check; a 404 ends the pull at once.
    for (fault, cached) in [(Fault::Corrupt, true), (Fault::Status(404), false)] {
        let package = prefix.join(&format!("pkg-{cached}"));
        let bundle = package.join("oci/bundle");
        let (proxy, applied_first) = hold_back(&registry, &last, bundle.clone(), fault);
        let reference = format!("{}/overlap:latest", proxy.addr);
        let cache = prefix.join("cache");
        let cache_root = cached.then_some(cache.as_path());
        let err =
            prepare_oci_rootfs(&reference, &prefix.path, &package, cache_root, None).unwrap_err();
        assert!(
            applied_first.load(Ordering::SeqCst),
            "layer 1 was not being unpacked when the last layer failed"
        );
        let layout = match cached {
            true => cache
                .join(sha256_hex(&format!("docker://{reference}\narch=system")))
                .join("layout"),
            false => package.join("oci/layout"),
        };
        assert!(
            err.to_string().starts_with(&format!(
                "copy OCI image docker://{reference} into {} failed",
                layout.display()
            )),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains(&last[7..]), "{err:#}");
        assert!(!bundle.exists(), "no bundle, no rootfs, no staging");
        assert!(!layout.exists(), "no layout");
        if cached {
            let entry = layout.parent().unwrap();
            assert_eq!(fs::read_dir(entry).unwrap().count(), 0, "an empty entry");
            assert_eq!(fs::read_dir(&cache).unwrap().count(), 1, "only the entry");
        }
    }
}

/// Set (to `reference\nprefix\npackage\ncache`) in the child process of
/// [`a_killed_prepare_is_reclaimed_by_the_next_call`].
const KILLED_PREPARE_CHILD: &str = "METALOR_TEST_KILLED_PREPARE";

#[test]
#[ignore = "the child process of a_killed_prepare_is_reclaimed_by_the_next_call"]
fn killed_prepare_child() {
    let args = std::env::var(KILLED_PREPARE_CHILD).expect("run by the parent test only");
    let args: Vec<&str> = args.split('\n').collect();
    let [reference, prefix, package, cache] = args[..] else {
        panic!("bad child arguments {args:?}");
    };
    let (prefix, package, cache) = (Path::new(prefix), Path::new(package), Path::new(cache));
    prepare_oci_rootfs(reference, prefix, package, Some(cache), None).unwrap();
}

#[test]
fn a_killed_prepare_is_reclaimed_by_the_next_call() {
    let test = "a_killed_prepare_is_reclaimed_by_the_next_call";
    let prefix = Prefix::new();
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let (layout, last) = three_layer_layout(&prefix.path);
    registry.push(&layout, "latest", "killed", false);
    // The last layer is held back until released, so the process is killed
    // with layer 1 applied and the copy half done.
    let release = Arc::new(AtomicBool::new(false));
    let held = Arc::clone(&release);
    let path = format!("/blobs/{last}");
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.line.contains(&path) && !held.load(Ordering::SeqCst) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Fault::None
    });
    let reference = format!("{}/killed:latest", proxy.addr);
    let package = prefix.join("pkg");
    let cache = prefix.join("cache");
    let bundle = package.join("oci/bundle");
    let args = [
        &reference,
        &prefix.path.display().to_string(),
        &package.display().to_string(),
        &cache.display().to_string(),
    ];
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "killed_prepare_child",
            "--nocapture",
        ])
        .env(KILLED_PREPARE_CHILD, args.map(String::as_str).join("\n"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !staged(&bundle, FIRST_LAYER_DONE) {
        assert!(
            Instant::now() < deadline,
            "layer 1 never showed in a staging rootfs"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the prepare ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let entry = cache.join(sha256_hex(&format!("docker://{reference}\narch=system")));
    assert!(
        entry.join("layout.tmp").is_dir(),
        "the killed copy left its staged layout"
    );
    assert!(!entry.join("reference.txt").exists());

    // The next call takes the dead filler's place: it refills the entry
    // and replaces the bundle, and nothing of the killed run remains.
    release.store(true, Ordering::SeqCst);
    let rootfs = prepare_oci_rootfs(&reference, &prefix.path, &package, Some(&cache), None)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        fs::read_to_string(rootfs.join("one/replaced")).unwrap(),
        "layer 2\n"
    );
    assert!(rootfs.join("three").is_file());
    assert_eq!(
        cache_entries(&cache).len(),
        1,
        "one complete entry, nothing else"
    );
    let names: Vec<_> = fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["rootfs"], "nothing but the rootfs in the bundle");
}
