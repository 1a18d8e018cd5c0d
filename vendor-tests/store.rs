//! The image store and `metalor run --image`, as root, against a real
//! registry on 127.0.0.1 and real overlay mounts: cold and warm runs,
//! writes that vanish or stay in `--upper`, `--read-only`, the image
//! config's Entrypoint/Cmd/Env/WorkingDir/User, concurrent cold runs, a
//! killed unpack, rmi + prune, foreign store directories, a rootless
//! run by an unprivileged user, and a cold pull that unpacks each layer
//! while later ones still download.

mod registry_support;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use registry_support::{Fault, FaultProxy, Registry};
use serde_json::{json, Value};
use support::fixtures::{self, sha256_digest, Compression, Image, Layer};
use support::{require_root, require_tool};

const METALOR: &str = env!("CARGO_BIN_EXE_metalor");

/// A busybox image whose config sets every run setting, with an `app`
/// user (1000:1001) in its account files.
fn configured_image(dir: &Path, test: &str) -> Option<PathBuf> {
    let Some(busybox) = fixtures::find_static_busybox() else {
        support::skip_or_fail(test, "no static busybox (Debian package `busybox-static`)");
        return None;
    };
    let mut layer =
        Layer::new()
            .dir("bin", 0o755)
            .file("bin/busybox", 0o755, &std::fs::read(busybox).unwrap());
    for applet in fixtures::BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    let layer = layer
        .dir("dev", 0o755)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1001:\nstaff:x:50:\n")
        .dir("proc", 0o555)
        .dir("srv", 0o755)
        .dir("srv/work", 0o777)
        .dir("tmp", 0o1777);
    let layout = dir.join("configured");
    fixtures::write_layout(
        &layout,
        &[Image::new("latest", Compression::Gzip, &[layer]).unwrap()],
    )
    .unwrap();
    rewrite_config(&layout, |config| {
        config["config"] = json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo \"cmd $GREETING $(pwd) $(id -u):$(id -g)\""],
            "Env": ["GREETING=hello", "PATH=/bin", "LEVEL=image"],
            "WorkingDir": "/srv/work",
            "User": "app",
        });
    });
    Some(layout)
}

/// Rewrites the config of the layout's only image (and its manifest and
/// index entry to match).
fn rewrite_config(layout: &Path, edit: impl Fn(&mut Value)) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    let put = |bytes: &[u8]| {
        let digest = sha256_digest(bytes);
        std::fs::write(blob(&digest), bytes).unwrap();
        digest
    };
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(blob(&config_digest)).unwrap()).unwrap();
    edit(&mut config);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = json!(put(&config_bytes));
    manifest["config"]["size"] = json!(config_bytes.len());
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = json!(put(&manifest_bytes));
    index["manifests"][0]["size"] = json!(manifest_bytes.len());
    std::fs::write(index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A registry serving the configured image as `REG/configured:latest`, and
/// its reference.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    _registry: Registry,
    image: String,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !require_root(test) {
        return None;
    }
    let registry = Registry::start(test)?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let layout = configured_image(&dir, test)?;
    registry.push(&layout, "latest", "configured", false);
    let image = format!("{}/configured:latest", registry.addr);
    Some(Fixture {
        _tmp: tmp,
        dir,
        _registry: registry,
        image,
    })
}

fn metalor(args: &[&str]) -> Output {
    Command::new(METALOR)
        .args(args)
        .output()
        .expect("spawn metalor")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `metalor ARGS…` and expects exit 0; returns stdout and stderr.
fn ok(args: &[&str]) -> (String, String) {
    let out = metalor(args);
    assert!(
        out.status.success(),
        "metalor {args:?} failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

fn overlay_mounts_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(path.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

impl Fixture {
    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn store_arg(&self) -> String {
        self.store().to_str().unwrap().to_owned()
    }

    /// `metalor run --store S --image IMAGE EXTRA… -- CMD…`.
    fn run(&self, extra: &[&str], cmd: &[&str]) -> Output {
        let store = self.store_arg();
        let mut args = vec!["run", "--store", &store, "--image", &self.image];
        args.extend(extra);
        if !cmd.is_empty() {
            args.push("--");
            args.extend(cmd);
        }
        metalor(&args)
    }

    fn tree(&self) -> PathBuf {
        let trees: Vec<_> = std::fs::read_dir(self.store().join("trees"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(trees.len(), 1, "{trees:?}");
        trees[0].path()
    }
}

fn ran(out: Output) -> (String, String) {
    assert!(
        out.status.success(),
        "run failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn cold_then_warm_runs_on_a_throwaway_overlay() {
    let Some(fx) = fixture("cold_then_warm_runs_on_a_throwaway_overlay") else {
        return;
    };
    let write = ["--user", "0", "--entrypoint", "/bin/sh"];
    let (out, err) = ran(fx.run(&write, &["-c", "echo x > /etc/written; cat /etc/written"]));
    assert_eq!(out, "x\n");
    assert!(err.contains("pulled") && err.contains("unpacked"), "{err}");
    // Warm: no pull, no unpack, and the write is gone.
    let (out, err) = ran(fx.run(
        &["--pull", "never", "--user", "0"],
        &["test ! -e /etc/written && echo clean"],
    ));
    assert_eq!(out, "clean\n");
    assert!(err.is_empty(), "{err}");
    assert!(
        !fx.tree().join("etc/written").exists(),
        "the pristine tree was written"
    );
    assert!(
        overlay_mounts_of(&fx.store()).is_empty(),
        "{:?}",
        overlay_mounts_of(&fx.store())
    );
    // --upper keeps the writes, as an overlay upper dir, across runs.
    let upper = fx.dir.join("upper");
    let upper_arg = upper.to_str().unwrap();
    ran(fx.run(
        &["--upper", upper_arg, "--user", "0"],
        &["echo kept > /etc/written; rm /etc/group"],
    ));
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/written")).unwrap(),
        "kept\n"
    );
    let whiteout = std::fs::symlink_metadata(upper.join("etc/group")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&whiteout.file_type()),
        "no whiteout"
    );
    let (out, _) = ran(fx.run(
        &["--upper", upper_arg, "--user", "0"],
        &["cat /etc/written; test -e /etc/group || echo gone"],
    ));
    assert_eq!(out, "kept\ngone\n");
    assert!(fx.tree().join("etc/group").exists());
    // --read-only refuses writes.
    let out = fx.run(&["--read-only", "--user", "0"], &["touch /etc/nope"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    assert!(overlay_mounts_of(&fx.store()).is_empty());
    // An upper on another overlay is refused with the reason.
    let host = fx.dir.join("host-overlay");
    for sub in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir_all(host.join(sub)).unwrap();
    }
    let options = format!(
        "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
        host.display()
    );
    let merged = host.join("merged");
    support::run(
        Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged),
    );
    let nested = merged.join("up");
    let out = fx.run(&["--upper", nested.to_str().unwrap()], &["true"]);
    support::run(Command::new("umount").arg(&merged));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("is on overlayfs, which overlayfs cannot use as an upper"),
        "{err}"
    );
}

#[test]
fn the_image_config_sets_command_env_cwd_and_user() {
    let Some(fx) = fixture("the_image_config_sets_command_env_cwd_and_user") else {
        return;
    };
    let (out, _) = ran(fx.run(&["-q"], &[]));
    assert_eq!(out, "cmd hello /srv/work 1000:1001\n");
    // CMD… replaces Cmd, --env merges over Env, --cwd and --user override.
    let (out, _) = ran(fx.run(
        &["--env", "LEVEL=cli", "--cwd", "/tmp", "--user", "app:staff"],
        &["echo $GREETING $LEVEL $PATH $(pwd) $(id -u):$(id -g)"],
    ));
    assert_eq!(out, "hello cli /bin /tmp 1000:50\n");
    // A missing working directory is made in the run's upper, as runc
    // does, and never in the pristine tree; --read-only cannot make it.
    let (out, _) = ran(fx.run(&["--cwd", "/srv/new/deep", "--user", "0"], &["pwd"]));
    assert_eq!(out, "/srv/new/deep\n");
    assert!(
        !fx.tree().join("srv/new").exists(),
        "the pristine tree changed"
    );
    let out = fx.run(&["--cwd", "/srv/none", "--read-only"], &["pwd"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("/srv/none"),
        "{}",
        text(&out.stderr)
    );
    // --entrypoint replaces Entrypoint and drops Cmd.
    let (out, _) = ran(fx.run(&["--entrypoint", "/bin/id", "--user", "0:0"], &["-u"]));
    assert_eq!(out, "0\n");
    let out = fx.run(&["--user", "ghost"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no user \"ghost\" in the image's /etc/passwd"),
        "{}",
        text(&out.stderr)
    );
    // --pull never on a store without the reference names both.
    let store = fx.dir.join("other-store");
    let out = metalor(&[
        "run",
        "--store",
        store.to_str().unwrap(),
        "--pull",
        "never",
        "--image",
        &fx.image,
        "--",
        "true",
    ]);
    let err = text(&out.stderr);
    assert!(
        err.contains(&fx.image) && err.contains(store.to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn four_concurrent_cold_runs_unpack_once() {
    let Some(fx) = fixture("four_concurrent_cold_runs_unpack_once") else {
        return;
    };
    let store = fx.store_arg();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(METALOR)
                .args([
                    "run",
                    "--store",
                    &store,
                    "--image",
                    &fx.image,
                    "--",
                    "test -d /bin && echo ok",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut unpacks = 0;
    let mut pulls = 0;
    for child in children {
        let (out, err) = ran(child.wait_with_output().unwrap());
        assert_eq!(out, "ok\n");
        unpacks += err.matches("unpacked").count();
        pulls += err.matches("pulled").count();
    }
    assert_eq!((pulls, unpacks), (1, 1));
    assert!(std::fs::read_dir(fx.store().join("staging"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_killed_unpack_is_reclaimed_by_the_next_call() {
    let Some(fx) = fixture("a_killed_unpack_is_reclaimed_by_the_next_call") else {
        return;
    };
    ok(&["pull", "-q", "--store", &fx.store_arg(), &fx.image]);
    let (json, _) = ok(&["images", "--store", &fx.store_arg(), "--format", "json"]);
    let images: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(images[0]["unpacked"], json!(false));
    let key = images[0]["digest"].as_str().unwrap().replace(':', "-");
    // What SIGKILL during the unpack leaves: a staging dir nobody locks,
    // holding the unpacker's own half-filled staging tree.
    let half = fx
        .store()
        .join("staging")
        .join(&key)
        .join(".rootfs.metalor-staging-1-000000001");
    std::fs::create_dir_all(half.join("bin")).unwrap();
    std::fs::write(half.join("bin/half"), b"partial").unwrap();
    let (out, err) = ran(fx.run(&["--user", "0"], &["test -e /bin/half || echo whole"]));
    assert_eq!(out, "whole\n");
    assert!(err.contains("unpacked"), "{err}");
    assert!(!fx.store().join("staging").join(&key).exists());
    assert!(fx
        .store()
        .join("trees")
        .join(&key)
        .join("bin/busybox")
        .is_file());
}

#[test]
fn rmi_and_prune_reclaim_the_space() {
    let Some(fx) = fixture("rmi_and_prune_reclaim_the_space") else {
        return;
    };
    let store = fx.store_arg();
    ran(fx.run(&["-q"], &[]));
    let (table, _) = ok(&["images", "--store", &store]);
    assert!(
        table.contains("/configured:latest") && table.contains("yes"),
        "{table}"
    );
    // Blobs and tree stay for the reference, and skopeo reads the layout.
    let (out, _) = ok(&["prune", "--store", &store]);
    assert!(out.contains("freed 0 B"), "{out}");
    let (untagged, _) = ok(&["rmi", "--store", &store, &fx.image]);
    assert!(untagged.contains("untagged"), "{untagged}");
    let (out, _) = ok(&["prune", "--store", &store]);
    assert!(
        out.contains("removed tree sha256-") && out.contains("(3 blobs, 1 trees"),
        "{out}"
    );
    assert!(std::fs::read_dir(fx.store().join("trees"))
        .unwrap()
        .next()
        .is_none());
    assert!(std::fs::read_dir(fx.store().join("oci/blobs/sha256"))
        .unwrap()
        .next()
        .is_none());
    let (json, _) = ok(&["images", "--store", &store, "--format", "json"]);
    assert_eq!(json.trim(), "[]");
}

#[test]
fn the_store_layout_is_read_by_skopeo() {
    let test = "the_store_layout_is_read_by_skopeo";
    let Some(fx) = fixture(test) else {
        return;
    };
    if !require_tool("skopeo", "skopeo", test) {
        return;
    }
    ok(&["pull", "-q", "--store", &fx.store_arg(), &fx.image]);
    let name = fx.image.replace('/', "+").replace(':', "@");
    let out = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}/oci:{name}", fx.store_arg()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn foreign_directories_are_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let out = metalor(&["images", "--store", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("\"notes.txt\""),
        "{}",
        text(&out.stderr)
    );
    let names: Vec<_> = std::fs::read_dir(&foreign)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
    let future = tmp.path().join("future");
    std::fs::create_dir(&future).unwrap();
    std::fs::write(future.join("metalor-store.json"), br#"{"version":9}"#).unwrap();
    let out = metalor(&["images", "--store", future.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("expected version 1, found 9"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&future).unwrap().count(), 1);
}

#[test]
fn a_rootless_run_by_an_unprivileged_user() {
    let test = "a_rootless_run_by_an_unprivileged_user";
    let Some(fx) = fixture(test) else {
        return;
    };
    if !require_tool("setpriv", "util-linux", test) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let home = fx.dir.join("home");
    std::fs::create_dir(&home).unwrap();
    for dir in [fx.dir.as_path(), fx.dir.parent().unwrap()] {
        let mut perms = std::fs::metadata(dir).unwrap().permissions();
        perms.set_mode(perms.mode() | 0o711);
        std::fs::set_permissions(dir, perms).unwrap();
    }
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(METALOR)
        .args([
            "run",
            "--rootless",
            "--image",
            &fx.image,
            "--user",
            "0",
            "--",
            "id -u; echo w > /tmp/f; cat /tmp/f",
        ])
        .env("HOME", &home)
        .env_remove("METALOR_STORE")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootless run failed:\n{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "0\nw\n");
    assert!(home.join(".local/share/metalor/trees").is_dir());
}

/// Whether `rel` shows in a tree being made in the store's `staging/`
/// (the unpacker's own `.rootfs.metalor-staging-*` inside `staging/KEY`).
fn staged_in(store: &Path, rel: &str) -> bool {
    let Ok(keys) = std::fs::read_dir(store.join("staging")) else {
        return false;
    };
    keys.flatten().any(|key| {
        std::fs::read_dir(key.path()).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".rootfs.metalor-staging-")
                    && entry.path().join(rel).exists()
            })
        })
    })
}

#[test]
fn a_cold_pull_unpacks_each_layer_as_it_arrives() {
    let test = "a_cold_pull_unpacks_each_layer_as_it_arrives";
    if !require_root(test) {
        return;
    }
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let noise: Vec<u8> = (0..300_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let layers = [
        Layer::new()
            .dir("one", 0o755)
            .file("one/big", 0o644, &noise)
            .file("one/removed", 0o644, b"layer 1\n")
            .file("one/done", 0o644, b"1\n"),
        Layer::new()
            .dir("one", 0o755)
            .whiteout("one/removed")
            .file("two", 0o644, b"layer 2\n"),
    ];
    let layout = dir.join("two-layers");
    let image = Image::new("latest", Compression::Gzip, &layers).unwrap();
    fixtures::write_layout(&layout, &[image]).unwrap();
    registry.push(&layout, "latest", "overlap", false);
    let manifest = registry_support::ref_digest(&layout, "latest");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&manifest[7..])).unwrap(),
    )
    .unwrap();
    let last = format!(
        "/blobs/{}",
        manifest["layers"][1]["digest"].as_str().unwrap()
    );

    // The last layer is held back until layer 1 shows in the tree being
    // made: a pull followed by an unpack never shows it, and gives up
    // after 20 s (under the client's read timeout) so that such a run ends.
    let store_dir = dir.join("store");
    let applied_first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, watched) = (applied_first.clone(), store_dir.clone());
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        if seen.line.contains(&last) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if staged_in(&watched, "one/done") {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        Fault::None
    });
    let store = metalor::store::Store::open(&store_dir).unwrap();
    let reference = format!("{}/overlap:latest", proxy.addr);
    let (image, tree) = store
        .image_and_tree(
            &reference,
            metalor::store::PullPolicy::Missing,
            &metalor::oci::registry::PullOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        applied_first.load(std::sync::atomic::Ordering::SeqCst),
        "layer 1 was not applied while the last layer's blob was held back: \
         the store's cold path does not overlap the download and the unpack"
    );
    assert!(image.pulled && tree.made());
    assert_eq!(tree.path(), store_dir.join("trees").join(tree.key()));
    assert!(!tree.path().join("one/removed").exists());
    let sequential = dir.join("sequential");
    support::metalor_unpack(&layout, "latest", &sequential);
    support::assert_same_tree(
        "overlapped store unpack",
        ("tree", tree.path()),
        ("cli", &sequential),
    );
    assert!(std::fs::read_dir(store_dir.join("staging"))
        .unwrap()
        .next()
        .is_none());
    // Warm: found, not pulled, not made again.
    drop(tree);
    let options = metalor::oci::registry::PullOptions::default();
    let (again, tree) = store
        .image_and_tree(&reference, metalor::store::PullPolicy::Never, &options)
        .unwrap();
    assert!(!again.pulled && !tree.made());
}

/// Mounts a tmpfs of `size` at `dir` (test-time only: src/ never runs
/// `mount`), unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("spawn mount");
        assert!(status.success(), "mount a tmpfs at {}", dir.display());
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_the_unpack_leaves_no_tree_and_names_the_path() {
    let test = "a_full_disk_during_the_unpack_leaves_no_tree_and_names_the_path";
    if !require_root(test) || !require_tool("mount", "mount", test) {
        return;
    }
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    // 16 MiB of zeros gzip to a few KiB: the blobs fit on the 4 MiB disk,
    // the unpacked tree does not.
    let layer = Layer::new()
        .dir("data", 0o755)
        .file("data/zeros", 0o644, &vec![0u8; 16 << 20]);
    let layout = dir.join("big");
    fixtures::write_layout(
        &layout,
        &[Image::new("latest", Compression::Gzip, &[layer]).unwrap()],
    )
    .unwrap();
    registry.push(&layout, "latest", "big", false);
    let image = format!("{}/big:latest", registry.addr);
    let store = dir.join("store");
    let _disk = SmallDisk::mount(&store, "4m");
    let store_arg = store.to_str().unwrap();
    let out = metalor(&[
        "run", "-q", "--store", store_arg, "--image", &image, "--", "true",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(store_arg), "the error names no path: {err}");
    for sub in ["trees", "staging"] {
        let left: Vec<_> = std::fs::read_dir(store.join(sub))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{sub}/ keeps {left:?}");
    }
    // The blobs stay: the reference is pulled, only its tree is missing.
    let (json, _) = ok(&["images", "--store", store_arg, "--format", "json"]);
    let images: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(images[0]["unpacked"], json!(false), "{json}");
}
