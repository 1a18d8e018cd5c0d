//! `metalor repack` against real oracles: the repacked image is unpacked
//! by `umoci unpack` (and by metalor) and compared, tree for tree, with the
//! changed rootfs or the merged overlay view it came from.

mod support;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::fixtures::{write_layout, Compression, Image, Layer};
use support::{metalor_unpack, require_root, require_tool, umoci_unpack};

/// A two-layer image with what the changes below touch.
fn base_layout(dir: &Path) -> PathBuf {
    let bottom = Layer::new()
        .dir("etc", 0o755)
        .file("etc/conf", 0o644, b"setting=1\n")
        .file("etc/mode", 0o644, b"mode")
        .file("etc/owned", 0o644, b"owned")
        .file("etc/tagged", 0o644, b"tagged")
        .symlink("etc/link", "conf")
        .dir("data", 0o755)
        .file("data/gone", 0o644, b"gone")
        .file("data/kept", 0o644, b"kept")
        .dir("olddir", 0o755)
        .file("olddir/a", 0o644, b"a")
        .dir("olddir/sub", 0o755)
        .file("olddir/sub/b", 0o644, b"b")
        .dir("todir", 0o755)
        .file("todir/x", 0o644, b"x")
        .dir("wiped", 0o755)
        .file("wiped/old1", 0o644, b"1")
        .file("wiped/old2", 0o644, b"2");
    let top = Layer::new()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", 0o755, b"#!/bin/sh\necho tool\n")
        .hardlink("usr/bin/tool-alias", "usr/bin/tool");
    let layout = dir.join("layout");
    let image = Image::new("base", Compression::Gzip, &[bottom, top]).unwrap();
    write_layout(&layout, &[image]).unwrap();
    layout
}

fn metalor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metalor"))
}

/// `metalor repack`; returns the command's output, whatever its status.
fn repack(layout: &Path, args: &[&std::ffi::OsStr], tag: &str, epoch: Option<&str>) -> Output {
    let mut cmd = metalor();
    cmd.args(["repack", "--quiet", "--image"])
        .arg(format!("{}:base", layout.display()))
        .args(args)
        .args(["--tag", tag]);
    match epoch {
        Some(epoch) => cmd.env("SOURCE_DATE_EPOCH", epoch),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    cmd.output().expect("spawn metalor repack")
}

fn repack_ok(layout: &Path, args: &[&std::ffi::OsStr], tag: &str, epoch: Option<&str>) -> String {
    let out = repack(layout, args, tag, epoch);
    assert!(
        out.status.success(),
        "repack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("set {name} on {}: {e}", path.display()));
}

/// Every kind of change the rootfs form must find.
fn change_rootfs(root: &Path) {
    fs::write(root.join("new.txt"), b"brand new\n").unwrap();
    fs::write(root.join("etc/conf"), b"setting=2, longer\n").unwrap();
    fs::remove_file(root.join("data/gone")).unwrap();
    fs::remove_dir_all(root.join("olddir")).unwrap();
    fs::remove_dir_all(root.join("todir")).unwrap();
    fs::write(root.join("todir"), b"now a file").unwrap();
    fs::set_permissions(root.join("etc/mode"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(root.join("etc/owned"), Some(1000), Some(1001)).unwrap();
    fs::hard_link(root.join("data/kept"), root.join("data/kept-link")).unwrap();
    set_xattr(&root.join("etc/tagged"), "user.repack.test", b"yes");
    fs::remove_dir_all(root.join("wiped")).unwrap();
    fs::create_dir(root.join("wiped")).unwrap();
    fs::write(root.join("wiped/fresh"), b"fresh").unwrap();
    std::os::unix::fs::symlink("../etc/conf", root.join("usr/conf-link")).unwrap();
}

/// umoci's and metalor's unpack of `tag` both equal the tree at `expected`.
fn assert_unpacks_to(test: &str, layout: &Path, tag: &str, expected: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let theirs = umoci_unpack(layout, tag, &tmp.path().join("bundle"));
    let mut umoci = support::snapshot(&theirs);
    support::apply_rootless_owners(&mut umoci);
    let want = support::snapshot(expected);
    support::assert_same_snapshot(
        &format!("{test}: umoci"),
        ("expected", expected, want.clone()),
        ("umoci", &theirs, umoci),
    );
    let ours = tmp.path().join("metalor-rootfs");
    metalor_unpack(layout, tag, &ours);
    support::assert_same_snapshot(
        &format!("{test}: metalor"),
        ("expected", expected, want),
        ("metalor", &ours, support::snapshot(&ours)),
    );
}

fn index_digest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {tag} in index.json"))
}

/// GNU tar's listing of the manifest's last layer: sorted, the changes
/// and nothing else, whiteouts and an opaque marker where they belong, the
/// new name of an old inode a hardlink.
fn assert_layer_lists(layout: &Path, manifest: &str) {
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(manifest)).unwrap()).unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap();
    assert_eq!(
        layer["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let out = support::run(
        Command::new("tar")
            .arg("-tvzf")
            .arg(blob(layer["digest"].as_str().unwrap())),
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().nth(5).unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries not sorted:\n{listing}");
    for want in [
        ".wh.olddir",
        "data/.wh.gone",
        "wiped/.wh..wh..opq",
        "wiped/fresh",
        "todir",
        "new.txt",
        "etc/conf",
        "etc/mode",
        "etc/owned",
        "etc/tagged",
        "usr/conf-link",
    ] {
        assert!(
            names.contains(&want),
            "{want} missing from the layer:\n{listing}"
        );
    }
    for unchanged in ["etc/link", "usr/bin/tool", "wiped/.wh.old1", "olddir/a"] {
        assert!(
            !names.contains(&unchanged),
            "{unchanged} in the layer:\n{listing}"
        );
    }
    assert!(
        listing.contains("data/kept-link link to data/kept")
            || listing.contains("data/kept link to data/kept-link"),
        "no hardlink entry:\n{listing}"
    );
}

#[test]
fn rootfs_changes_repack_to_what_umoci_unpacks() {
    let test = "rootfs_changes_repack_to_what_umoci_unpacks";
    if !require_root(test) || !require_tool("umoci", "umoci", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = base_layout(tmp.path());
    let base_digest = index_digest(&layout, "base");
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "base", &rootfs);
    change_rootfs(&rootfs);
    let rootfs_arg = [std::ffi::OsStr::new("--rootfs"), rootfs.as_os_str()];
    let first = repack_ok(&layout, &rootfs_arg, "changed", Some("1700000000"));
    assert_eq!(index_digest(&layout, "changed"), first);
    assert_eq!(index_digest(&layout, "base"), base_digest, "base ref moved");
    assert_unpacks_to(test, &layout, "changed", &rootfs);
    assert_layer_lists(&layout, &first);

    // Reproducible: the same tree and SOURCE_DATE_EPOCH give the same image.
    let again = repack_ok(&layout, &rootfs_arg, "again", Some("1700000000"));
    assert_eq!(first, again, "two repacks with SOURCE_DATE_EPOCH differ");

    // zstd and --hash give the same tree.
    let mut args = rootfs_arg.to_vec();
    args.extend(["--compression", "zstd", "--hash"].map(std::ffi::OsStr::new));
    repack_ok(&layout, &args, "zstd", None);
    let zstd_root = tmp.path().join("zstd-rootfs");
    metalor_unpack(&layout, "zstd", &zstd_root);
    support::assert_same_tree(test, ("expected", &rootfs), ("metalor zstd", &zstd_root));
}

#[test]
fn hash_finds_a_content_change_that_keeps_size_and_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = base_layout(tmp.path());
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "base", &rootfs);
    let conf = rootfs.join("etc/conf");
    let mtime = fs::metadata(&conf).unwrap().modified().unwrap();
    fs::write(&conf, b"setting=9\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&conf)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let arg = [std::ffi::OsStr::new("--rootfs"), rootfs.as_os_str()];
    repack_ok(&layout, &arg, "plain", None);
    let mut hashed = arg.to_vec();
    hashed.push(std::ffi::OsStr::new("--hash"));
    repack_ok(&layout, &hashed, "hashed", None);
    let (plain, with_hash) = (tmp.path().join("plain"), tmp.path().join("hashed"));
    metalor_unpack(&layout, "plain", &plain);
    metalor_unpack(&layout, "hashed", &with_hash);
    assert_eq!(fs::read(plain.join("etc/conf")).unwrap(), b"setting=1\n");
    assert_eq!(
        fs::read(with_hash.join("etc/conf")).unwrap(),
        b"setting=9\n"
    );
}

/// Mounts an overlay of `lower` with `upper` on `merged`.
fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).unwrap();
    let flags = rustix::mount::MountFlags::empty();
    rustix::mount::mount("overlay", merged, "overlay", flags, data.as_c_str())
        .unwrap_or_else(|e| panic!("mount overlay on {}: {e}", merged.display()));
}

#[test]
fn overlay_upper_repacks_to_the_merged_view() {
    let test = "overlay_upper_repacks_to_the_merged_view";
    if !require_root(test) || !require_tool("umoci", "umoci", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = base_layout(tmp.path());
    let lower = tmp.path().join("lower");
    metalor_unpack(&layout, "base", &lower);
    let [upper, work, merged] = ["upper", "work", "merged"].map(|d| tmp.path().join(d));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    mount_overlay(&lower, &upper, &work, &merged);
    change_rootfs(&merged);
    let view = tmp.path().join("view");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&merged)
        .arg(&view)
        .status();
    let unmounted = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty());
    assert!(copied.unwrap().success(), "copy the merged view");
    unmounted.unwrap();
    let arg = [std::ffi::OsStr::new("--upper"), upper.as_os_str()];
    repack_ok(&layout, &arg, "upper", Some("1700000000"));
    assert_unpacks_to(test, &layout, "upper", &view);
}

#[test]
fn upper_with_a_redirect_is_refused_naming_path_and_xattr() {
    let test = "upper_with_a_redirect_is_refused_naming_path_and_xattr";
    if !require_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = base_layout(tmp.path());
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc/moved")).unwrap();
    set_xattr(
        &upper.join("etc/moved"),
        "trusted.overlay.redirect",
        b"/olddir",
    );
    let out = repack(
        &layout,
        &["--upper".as_ref(), upper.as_os_str()],
        "bad",
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("etc/moved") && stderr.contains("trusted.overlay.redirect"),
        "{stderr}"
    );
    assert!(!fs::read_to_string(layout.join("index.json"))
        .unwrap()
        .contains("\"bad\""));
}

#[test]
fn unrepresentable_names_are_refused_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = base_layout(tmp.path());
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "base", &rootfs);
    fs::write(rootfs.join("etc/.wh.sneaky"), b"").unwrap();
    let arg = [std::ffi::OsStr::new("--rootfs"), rootfs.as_os_str()];
    let out = repack(&layout, &arg, "bad", None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("etc/.wh.sneaky"), "{stderr}");

    fs::remove_file(rootfs.join("etc/.wh.sneaky")).unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"bad-\xff-name");
    fs::write(rootfs.join("data").join(bad), b"").unwrap();
    let out = repack(&layout, &arg, "bad", None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("data/bad-") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    let leftovers: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().as_bytes().starts_with(b".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp blobs left: {leftovers:?}");
}

/// The demo fixture writes `bin/hello` through `bin -> usr/bin`: the
/// header scan must resolve that as unpack did, or the untouched file
/// would show up as deleted and added.
#[test]
fn an_untouched_rootfs_of_a_dirlink_image_adds_no_files() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("demo");
    support::run(
        Command::new("cp")
            .arg("-a")
            .arg(support::fixtures_dir().join("demo"))
            .arg(&layout),
    );
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "latest", &rootfs);
    let mut cmd = metalor();
    cmd.args(["repack", "--quiet", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["--tag", "same"]);
    let manifest = String::from_utf8(support::run(&mut cmd).stdout).unwrap();
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(&digest.trim()["sha256:".len()..])
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&manifest)).unwrap()).unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap();
    let out = support::run(
        Command::new("tar")
            .arg("-tvzf")
            .arg(blob(layer["digest"].as_str().unwrap())),
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let files: Vec<&str> = listing.lines().filter(|l| !l.starts_with('d')).collect();
    assert!(
        files.is_empty(),
        "an untouched tree gave entries:\n{listing}"
    );
}
