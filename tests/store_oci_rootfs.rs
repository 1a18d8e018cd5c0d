//! `prepare_oci_rootfs`'s warm path: the previous bundle is renamed aside
//! and removed while the new one is made, and whatever an interrupted
//! call left aside is removed by the next one.

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
    assert_eq!(names, ["bundle"], "nothing set aside is left");
}
