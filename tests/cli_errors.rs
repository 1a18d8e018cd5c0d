//! How `metalor pull` and `metalor unpack` report a bad layout: each
//! cause once, and the file that is missing named, not just the directory.

use std::path::Path;
use std::process::Command;

const METALOR: &str = env!("CARGO_BIN_EXE_metalor");

/// Runs metalor, expects exit status 1 and returns stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(METALOR).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    stderr
}

#[test]
fn pull_from_a_missing_layout_prints_each_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let none = tmp.path().join("none");
    let source = format!("oci:{}:x", none.display());
    let dest = format!("oci:{}:z", tmp.path().join("y").display());
    let err = fails(&["pull", "--quiet", &source, &dest]);
    let opened = format!("open layout {}", none.display());
    assert_eq!(err.matches(&format!("pull {source}")).count(), 1, "{err}");
    assert_eq!(err.matches(&opened).count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!tmp.path().join("y").exists(), "{err}");
}

/// `metalor unpack --image DIR` of a directory that is not (yet) a whole
/// layout.
fn unpack_error(layout: &Path) -> String {
    let rootfs = layout.parent().unwrap().join("rootfs");
    let image = layout.to_str().unwrap();
    fails(&[
        "unpack",
        "--quiet",
        "--image",
        image,
        rootfs.to_str().unwrap(),
    ])
}

#[test]
fn unpack_names_the_missing_layout_file() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let err = unpack_error(&layout);
    assert!(
        err.contains(&format!("{}/oci-layout", layout.display())),
        "{err}"
    );
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let err = unpack_error(&layout);
    assert!(
        err.contains(&format!("{}/blobs/sha256", layout.display())),
        "{err}"
    );
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let err = unpack_error(&layout);
    assert!(
        err.contains(&format!("{}/index.json", layout.display())),
        "{err}"
    );
}
