//! Shared helpers for the build-cell, OCI-rootfs and emulator suites: a
//! runtime root prefix, busybox images and rootfs built at test time
//! (amd64 from the host's `busybox-static`, arm64 from Debian's
//! `busybox-static:arm64` downloaded with `apt-get download`), and a view
//! of the host's binfmt_misc rules.
//!
//! Include beside `vendor-tests/support` as `support`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{self, fixtures};

/// The `metalor` binary, the re-exec target of every test here.
pub const METALOR: &str = env!("CARGO_BIN_EXE_metalor");
/// Its hidden build-cell verb.
pub const INNER_BUILD_CELL: &str = "__inner-build-cell";
/// Its hidden run verb.
pub const INNER_RUN: &str = "__inner-run";

/// A runtime root prefix: a canonical temp directory.
pub struct Prefix {
    _dir: TempDir,
    /// The canonical prefix path.
    pub path: PathBuf,
}

impl Prefix {
    pub fn new() -> Prefix {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().canonicalize().expect("canonical tempdir");
        Prefix { _dir: dir, path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Writes the amd64 busybox layout into `dir/busybox` and returns
/// `oci:<dir>/busybox:latest`; `None` (after the skip notice) without a
/// static busybox outside CI.
pub fn busybox_reference(dir: &Path, test: &str) -> Option<String> {
    let layout = support::busybox_layout(dir, test)?;
    Some(format!("oci:{}:latest", layout.display()))
}

/// A busybox rootfs prepared by `prepare_oci_rootfs` in package root
/// `prefix/<package>`.
pub fn busybox_rootfs(prefix: &Prefix, package: &str, test: &str) -> Option<PathBuf> {
    let images = prefix.join("images");
    fs::create_dir_all(&images).unwrap();
    let reference = match images.join("busybox").exists() {
        true => format!("oci:{}:latest", images.join("busybox").display()),
        false => busybox_reference(&images, test)?,
    };
    let rootfs =
        metalor::prepare_oci_rootfs(&reference, &prefix.path, &prefix.join(package), None, None)
            .expect("prepare the busybox rootfs");
    Some(rootfs)
}

/// Debian's static arm64 busybox, downloaded once per build directory with
/// `apt-get download busybox-static:arm64` and extracted with `dpkg-deb
/// -x`. Needs `dpkg --add-architecture arm64` and an `apt-get update`
/// (scripts/test.sh does both).
pub fn arm64_busybox(test: &str) -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match FOUND.get_or_init(download_arm64_busybox) {
        Ok(path) => Some(path.clone()),
        Err(reason) => {
            support::skip_or_fail(test, reason);
            None
        }
    }
}

fn download_arm64_busybox() -> Result<PathBuf, String> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("busybox-arm64");
    let binary = cache.join("bin/busybox");
    if binary.is_file() {
        return Ok(binary);
    }
    for tool in ["apt-get", "dpkg-deb"] {
        if support::which(tool).is_none() {
            return Err(format!("`{tool}` is not on PATH"));
        }
    }
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).map_err(|e| e.to_string())?;
    let download = Command::new("apt-get")
        .args(["download", "-qq", "busybox-static:arm64"])
        .current_dir(work.path())
        .output()
        .map_err(|e| format!("spawn apt-get: {e}"))?;
    if !download.status.success() {
        return Err(format!(
            "apt-get download busybox-static:arm64 failed (run `dpkg --add-architecture arm64 && apt-get update`, as scripts/test.sh does): {}",
            String::from_utf8_lossy(&download.stderr).trim()
        ));
    }
    let deb = fs::read_dir(work.path())
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let extracted = work.path().join("x");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&extracted)
        .status()
        .map_err(|e| format!("spawn dpkg-deb: {e}"))?;
    if !status.success() || !extracted.join("bin/busybox").is_file() {
        return Err(format!("dpkg-deb -x {} gave no bin/busybox", deb.display()));
    }
    // Another test binary may have raced us here; either copy is fine.
    match fs::rename(&extracted, &cache) {
        Ok(()) => {}
        Err(_) if binary.is_file() => {}
        Err(e) => return Err(format!("move the extracted package into place: {e}")),
    }
    Ok(binary)
}

/// Writes an arm64 busybox image (config architecture `arm64`) at
/// `dir/busybox-arm64` and returns `oci:<layout>:latest`.
pub fn arm64_busybox_reference(dir: &Path, test: &str) -> Option<String> {
    let busybox = arm64_busybox(test)?;
    let layout = dir.join("busybox-arm64");
    fixtures::write_busybox_layout(&layout, &busybox).expect("write the arm64 layout");
    relabel_architecture(&layout, "arm64");
    Some(format!("oci:{}:latest", layout.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(&digest["sha256:".len()..])
}

fn put(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = fixtures::sha256_digest(bytes);
    fs::write(blob(layout, &digest), bytes).unwrap();
    (digest, bytes.len())
}

/// Rewrites the single image of `layout` so its config declares `arch`.
fn relabel_architecture(layout: &Path, arch: &str) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let mut manifest: Value =
        serde_json::from_slice(&fs::read(blob(layout, &manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: Value =
        serde_json::from_slice(&fs::read(blob(layout, &config_digest)).unwrap()).unwrap();
    config["architecture"] = json!(arch);
    let (digest, size) = put(layout, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = json!(digest);
    manifest["config"]["size"] = json!(size);
    let (digest, size) = put(layout, &serde_json::to_vec(&manifest).unwrap());
    index["manifests"][0]["digest"] = json!(digest);
    index["manifests"][0]["size"] = json!(size);
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The `metalor-*` rules registered in the host's binfmt_misc, listed in a
/// throwaway mount namespace so nothing is mounted on the host.
pub fn metalor_binfmt_rules() -> Vec<String> {
    let out = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && ls /proc/sys/fs/binfmt_misc",
        ])
        .output()
        .expect("spawn unshare");
    assert!(
        out.status.success(),
        "listing binfmt_misc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("metalor-"))
        .map(str::to_owned)
        .collect()
}

/// `metalor run <flags> --rootfs R -- <cmd>`.
pub fn metalor_run(rootfs: &Path, flags: &[&str], cmd: &[&str]) -> std::process::Output {
    Command::new(METALOR)
        .arg("run")
        .args(flags)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--")
        .args(cmd)
        .output()
        .expect("spawn metalor run")
}

/// Asserts success and returns stdout.
pub fn ok_stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
