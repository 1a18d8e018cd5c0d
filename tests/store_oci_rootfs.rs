//! `prepare_oci_rootfs`'s warm path: the previous bundle is renamed aside
//! and removed while the new one is made, and whatever an interrupted
//! call left aside is removed by the next one; a cache hit copies the
//! entry's pristine rootfs instead of decompressing the layers again; a
//! bundle nothing touched since is kept as it is.

#[path = "../vendor-tests/support/mod.rs"]
mod support;

mod build_cell_support;

use std::fs;

use build_cell_support::{busybox_reference, Prefix};
use metalor::prepare_oci_rootfs;

#[test]
fn the_old_bundle_is_removed_aside_and_leftovers_are_reclaimed() {
    let prefix = Prefix::new();
    let test = "the_old_bundle_is_removed_aside_and_leftovers_are_reclaimed";
    let Some(reference) = busybox_reference(&prefix.path, test) else {
        return;
    };
    let package = prefix.join("pkg");
    let cache = prefix.join("cache");
    let rootfs =
        prepare_oci_rootfs(&reference, &prefix.path, &package, Some(&cache), None).unwrap();
    fs::write(rootfs.join("marker"), "x").unwrap();
    // What a call that failed after setting its old bundle aside leaves.
    let leftover = package.join("oci/.bundle.old-1-000000001");
    fs::create_dir_all(leftover.join("rootfs/bin")).unwrap();
    let again = prepare_oci_rootfs(&reference, &prefix.path, &package, Some(&cache), None).unwrap();
    assert_eq!(again, rootfs);
    assert!(!rootfs.join("marker").exists());
    assert!(rootfs.join("bin/busybox").is_file());
    let mut names: Vec<_> = fs::read_dir(package.join("oci"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".bundle.seal", "bundle"],
        "nothing set aside is left"
    );
}

fn inode(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(path).unwrap())
}

#[test]
fn a_kept_bundle_is_repaired_where_it_was_touched() {
    let prefix = Prefix::new();
    let test = "a_kept_bundle_is_repaired_where_it_was_touched";
    let Some(reference) = busybox_reference(&prefix.path, test) else {
        return;
    };
    let package = prefix.join("pkg");
    let cache = prefix.join("cache");
    let prepare = || prepare_oci_rootfs(&reference, &prefix.path, &package, Some(&cache), None);
    let rootfs = prepare().unwrap();
    let entries: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let pristine = entries[0].join("rootfs");
    let busybox = rootfs.join("bin/busybox");
    let made = inode(&busybox);
    // Nothing touched it: the same tree comes back, not a copy.
    assert_eq!(prepare().unwrap(), rootfs);
    assert_eq!(inode(&busybox), made, "kept as it is");
    fs::read(&busybox).unwrap();
    assert_eq!(prepare().unwrap(), rootfs);
    assert_eq!(inode(&busybox), made, "reading is not touching");
    // A chmod, a new file, a removed one and a write: each is undone, and
    // only those are redone.
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    fs::set_permissions(&busybox, mode).unwrap();
    fs::write(rootfs.join("bin/extra"), b"x").unwrap();
    fs::remove_file(rootfs.join("etc/passwd")).unwrap();
    fs::write(rootfs.join("etc/group"), b"changed").unwrap();
    let untouched = inode(&rootfs.join("etc/hostname"));
    assert_eq!(prepare().unwrap(), rootfs);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&busybox).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o755, "the changed file is copied again");
    assert_eq!(inode(&rootfs.join("etc/hostname")), untouched);
    support::assert_same_tree(
        "repaired bundle",
        ("pristine", &pristine),
        ("repaired", &rootfs),
    );
}

#[test]
fn a_cache_hit_copies_the_pristine_rootfs() {
    let prefix = Prefix::new();
    let test = "a_cache_hit_copies_the_pristine_rootfs";
    let Some(reference) = busybox_reference(&prefix.path, test) else {
        return;
    };
    let cache = prefix.join("cache");
    let cold = prepare_oci_rootfs(
        &reference,
        &prefix.path,
        &prefix.join("cold"),
        Some(&cache),
        None,
    )
    .unwrap();
    let entries: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [entry] = &entries[..] else {
        panic!("one cache entry: {entries:?}");
    };
    let pristine = entry.join("rootfs");
    support::assert_same_tree("pristine copy", ("cold", &cold), ("pristine", &pristine));
    // A hit reads no layer blob: with them gone it still gives the tree.
    for blob in fs::read_dir(entry.join("layout/blobs/sha256")).unwrap() {
        let blob = blob.unwrap().path();
        if fs::metadata(&blob).unwrap().len() > 4096 {
            fs::remove_file(blob).unwrap();
        }
    }
    let warm = prepare_oci_rootfs(
        &reference,
        &prefix.path,
        &prefix.join("warm"),
        Some(&cache),
        None,
    )
    .unwrap();
    support::assert_same_tree("cache hit", ("cold", &cold), ("warm", &warm));
    // The copy is a copy: writes to it, even through a file's own inode,
    // leave the cache alone.
    let before = support::snapshot(&pristine);
    fs::write(warm.join("bin/busybox"), b"overwritten").unwrap();
    fs::write(warm.join("marker"), b"x").unwrap();
    support::assert_same_snapshot(
        "pristine after writes",
        ("before", &pristine, before),
        ("after", &pristine, support::snapshot(&pristine)),
    );
    assert_ne!(
        fs::read(pristine.join("bin/busybox")).unwrap(),
        b"overwritten"
    );
}
