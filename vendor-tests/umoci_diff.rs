//! Differential suite against `umoci unpack --rootless --keep-dirlinks`:
//! for the same image, metalor's rootfs and umoci's `BUNDLE/rootfs` must
//! hold the same paths, types, permission bits, sizes, contents, symlink
//! targets, hardlink groups and xattrs.
//!
//! Known, deliberate differences, normalized before comparing:
//! - owners: metalor keeps the image's uid/gid when it has `CAP_CHOWN`
//!   (SPEC "Ownership and devices follow privilege"), while `--rootless`
//!   umoci gives every file to the caller and records the image's owner in
//!   a `user.rootlesscontainers` xattr instead. The suite decodes that xattr
//!   into the owner it stands for and compares it with metalor's real owner
//!   (as root); without root, owners are not compared.
//!
//! Not compared:
//! - timestamps: both apply the image's mtimes, but umoci also leaves
//!   atimes/ctimes of its own, and neither is part of the OCI contract.
//!
//! umoci 0.4.7 (Debian bookworm) rejects `tar+zstd` layers ("blob is not
//! correct mediatype"), so zstd images are compared with the gzip image of
//! the same layer tars instead.

mod support;

use std::path::{Path, PathBuf};

use support::{assert_same_tree, metalor_unpack, require_tool, umoci_unpack};

/// metalor's rootfs at `ours` and umoci's at `theirs` agree, with umoci's
/// rootless owner xattrs turned into owners (see the module docs).
fn assert_same_as_umoci(what: &str, ours: (&str, &Path), theirs: (&str, &Path)) {
    let mut a = support::snapshot(ours.1);
    let mut b = support::snapshot(theirs.1);
    support::apply_rootless_owners(&mut b);
    if !support::is_root() {
        eprintln!("{what}: not root, so metalor cannot keep owners; owners not compared");
        support::drop_owners(&mut a);
        support::drop_owners(&mut b);
    }
    support::assert_same_snapshot(what, (ours.0, ours.1, a), (theirs.0, theirs.1, b));
}

/// metalor and umoci unpack `LAYOUT:tag` to the same tree.
fn check_against_umoci(test: &str, layout: &Path, tag: &str) {
    if !require_tool("umoci", "umoci", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("metalor-rootfs");
    metalor_unpack(layout, tag, &ours);
    let theirs = umoci_unpack(layout, tag, &tmp.path().join("umoci-bundle"));
    assert_same_as_umoci(test, ("metalor", &ours), ("umoci", &theirs));
}

fn fixture(name: &str) -> PathBuf {
    let dir = support::fixtures_dir().join(name);
    assert!(
        dir.join("index.json").is_file(),
        "missing fixture {}",
        dir.display()
    );
    dir
}

macro_rules! fixture_tests {
    ($($test:ident => $name:literal,)*) => {$(
        #[test]
        fn $test() {
            check_against_umoci(stringify!($test), &fixture($name), "latest");
        }
    )*};
}

fixture_tests! {
    demo_matches_umoci => "demo",
    plain_matches_umoci => "plain",
    whiteouts_match_umoci => "whiteouts",
    opaque_matches_umoci => "opaque",
    hardlinks_match_umoci => "hardlinks",
    symlinks_match_umoci => "symlinks",
    typechange_matches_umoci => "typechange",
    dirlinks_match_umoci => "dirlinks",
    multi_gzip_matches_umoci => "multi-gzip",
    empty_matches_umoci => "empty",
}

#[test]
fn every_fixture_is_covered() {
    let covered = [
        "demo",
        "plain",
        "whiteouts",
        "opaque",
        "hardlinks",
        "symlinks",
        "typechange",
        "dirlinks",
        "multi-gzip",
        "multi-zstd",
        "empty",
    ];
    let names: Vec<_> = support::fixtures::fixture_layouts()
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for name in &names {
        assert!(
            covered.contains(name),
            "fixture {name} has no umoci comparison"
        );
    }
}

#[test]
fn zero_layer_image_unpacks_to_an_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&fixture("empty"), "latest", &rootfs);
    assert_eq!(std::fs::read_dir(&rootfs).unwrap().count(), 0);
}

/// The zstd fixture has the same layer tars as `multi-gzip`: metalor must
/// produce the same tree from both, and (transitively) the tree umoci
/// produces from the gzip one.
#[test]
fn multi_zstd_matches_gzip_and_umoci() {
    let test = "multi_zstd_matches_gzip_and_umoci";
    let tmp = tempfile::tempdir().unwrap();
    let zstd = tmp.path().join("zstd");
    let gzip = tmp.path().join("gzip");
    metalor_unpack(&fixture("multi-zstd"), "latest", &zstd);
    metalor_unpack(&fixture("multi-gzip"), "latest", &gzip);
    assert_same_tree(test, ("metalor zstd", &zstd), ("metalor gzip", &gzip));
    if require_tool("umoci", "umoci", test) {
        let theirs = umoci_unpack(&fixture("multi-gzip"), "latest", &tmp.path().join("bundle"));
        assert_same_as_umoci(test, ("metalor zstd", &zstd), ("umoci gzip", &theirs));
    }
}

#[test]
fn busybox_matches_umoci() {
    let test = "busybox_matches_umoci";
    let tmp = tempfile::tempdir().unwrap();
    let Some(layout) = support::busybox_layout(tmp.path(), test) else {
        return;
    };
    check_against_umoci(test, &layout, "latest");
    let rootfs = tmp.path().join("rootfs");
    metalor_unpack(&layout, "latest", &rootfs);
    let sh = std::fs::read_link(rootfs.join("bin/sh")).unwrap();
    assert_eq!(sh, Path::new("busybox"));
    let meta = std::fs::metadata(rootfs.join("bin/busybox")).unwrap();
    assert!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0);
    for dir in ["etc", "tmp", "proc", "dev"] {
        assert!(rootfs.join(dir).is_dir(), "busybox rootfs lacks /{dir}");
    }
}

/// The multi-layer Debian image of `make-images.sh`: gzip against umoci,
/// zstd and plain against metalor's own gzip result (umoci 0.4.7 has no
/// zstd). Building it takes minutes (debootstrap, apt downloads), so this
/// runs only with `METALOR_BIG_IMAGES=1` or when the layout already exists
/// at `$BENCH/images/debian`.
#[test]
fn debian_image_matches_umoci() {
    let test = "debian_image_matches_umoci";
    let bench = std::env::var_os("BENCH")
        .map_or_else(|| PathBuf::from("/tmp/metalor-bench"), PathBuf::from);
    let images = bench.join("images");
    let layout = images.join("debian");
    let wanted = std::env::var("METALOR_BIG_IMAGES").is_ok_and(|v| v == "1");
    if !layout.join("index.json").is_file() {
        if !wanted {
            eprintln!(
                "SKIP {test}: no layout at {} and METALOR_BIG_IMAGES is not 1 \
                 (building it takes minutes: debootstrap and ~450 MB of .debs)",
                layout.display()
            );
            return;
        }
        let tools = std::env::var_os("METALOR_TOOLS")
            .map_or_else(|| PathBuf::from("/work/shared/tools"), PathBuf::from);
        let script = tools.join("make-images.sh");
        assert!(
            script.is_file(),
            "{test}: METALOR_BIG_IMAGES=1 but {} is missing (set METALOR_TOOLS)",
            script.display()
        );
        support::run(
            std::process::Command::new("bash")
                .arg(&script)
                .arg(&images)
                .env("BENCH", &bench),
        );
    }
    if !require_tool("umoci", "umoci", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gzip = tmp.path().join("gzip");
    metalor_unpack(&layout, "gzip", &gzip);
    let theirs = umoci_unpack(&layout, "gzip", &tmp.path().join("bundle"));
    assert_same_as_umoci(test, ("metalor gzip", &gzip), ("umoci gzip", &theirs));
    std::fs::remove_dir_all(tmp.path().join("bundle")).unwrap();
    for tag in ["zstd", "plain"] {
        let ours = tmp.path().join(tag);
        metalor_unpack(&layout, tag, &ours);
        assert_same_tree(
            test,
            (&format!("metalor {tag}"), &ours),
            ("metalor gzip", &gzip),
        );
        std::fs::remove_dir_all(&ours).unwrap();
    }
}
