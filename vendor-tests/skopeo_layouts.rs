//! Layouts readable both ways with `skopeo`: skopeo reads every committed
//! fixture (and the busybox image) and copies it into a new layout,
//! re-compressed as it chooses; metalor must unpack the copy to the same
//! tree as the original.
//!
//! skopeo 1.9 writes `index.json` without a `mediaType`, and re-encodes
//! layers (gzip by default, zstd with `--dest-compress-format zstd`, plain
//! with `--dest-decompress`), so the copies exercise digests, media types
//! and compressions that our generator never writes.

mod support;

use std::path::Path;
use std::process::Command;

use support::{assert_same_tree, metalor_unpack, oci_arg, require_tool, run};

/// `skopeo copy [EXTRA] oci:SRC:tag oci:DST:tag`, then metalor unpacks both
/// and the trees must agree.
fn copy_and_compare(test: &str, label: &str, src: &Path, extra: &[&str], tmp: &Path) {
    let dst = tmp.join(format!("{label}-copy"));
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .args(extra)
        .arg(oci_arg(src, "latest"))
        .arg(oci_arg(&dst, "latest")));
    let original = tmp.join(format!("{label}-original"));
    let copied = tmp.join(format!("{label}-copied"));
    metalor_unpack(src, "latest", &original);
    metalor_unpack(&dst, "latest", &copied);
    assert_same_tree(
        &format!("{test} {label}"),
        ("original", &original),
        ("skopeo copy", &copied),
    );
}

fn copy_all_fixtures(test: &str, extra: &[&str]) {
    if !require_tool("skopeo", "skopeo", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut count = 0;
    for (name, _) in support::fixtures::fixture_layouts().unwrap() {
        let src = support::fixtures_dir().join(name);
        copy_and_compare(test, name, &src, extra, tmp.path());
        count += 1;
    }
    assert!(count >= 10, "only {count} fixtures");
    if let Some(layout) = support::busybox_layout(tmp.path(), test) {
        copy_and_compare(test, "busybox", &layout, extra, tmp.path());
    }
}

#[test]
fn skopeo_default_copy_unpacks_the_same() {
    copy_all_fixtures("skopeo_default_copy_unpacks_the_same", &[]);
}

#[test]
fn skopeo_zstd_copy_unpacks_the_same() {
    let test = "skopeo_zstd_copy_unpacks_the_same";
    copy_all_fixtures(test, &["--dest-compress-format", "zstd"]);
    // The copy must really be zstd, or this test proves nothing new.
    if !require_tool("skopeo", "skopeo", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("demo-zstd");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-compress-format", "zstd"])
        .arg(oci_arg(&support::fixtures_dir().join("demo"), "latest"))
        .arg(oci_arg(&dst, "latest")));
    let out = run(Command::new(env!("CARGO_BIN_EXE_metalor"))
        .arg("inspect")
        .arg(format!("oci:{}:latest", dst.display())));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tar+zstd"),
        "skopeo did not write zstd layers:\n{text}"
    );
}

#[test]
fn skopeo_decompressed_copy_unpacks_the_same() {
    copy_all_fixtures(
        "skopeo_decompressed_copy_unpacks_the_same",
        &["--dest-decompress"],
    );
}
