//! Shared helpers for the runtime tests: a busybox rootfs under a fresh
//! runtime root prefix, and a driver for the `metalor` binary.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

#[path = "../skip/mod.rs"]
mod skip;
#[allow(unused_imports)] // each test crate uses a different subset
pub use skip::{current_test, in_ci, skip_or_fail};

/// The applets the tests call, linked to `/bin/busybox` in the rootfs.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "true", "false", "hostname", "ifconfig", "env", "ls", "id", "kill",
    "sleep", "test", "grep", "touch", "stat", "readlink",
];

/// A static busybox: `$METALOR_BUSYBOX`, or Debian's busybox-static.
pub fn find_busybox() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("METALOR_BUSYBOX") {
        return Some(PathBuf::from(path));
    }
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A runtime root prefix (a temp dir) holding `rootfs/` with busybox.
pub struct Fixture {
    pub dir: TempDir,
    pub prefix: PathBuf,
    pub rootfs: PathBuf,
}

impl Fixture {
    /// Builds the rootfs, or returns None (after skip_or_fail) without
    /// busybox.
    pub fn new() -> Option<Self> {
        let Some(busybox) = find_busybox() else {
            skip_or_fail(
                &current_test(),
                "no static busybox (install busybox-static or set METALOR_BUSYBOX)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().canonicalize().expect("canonical tempdir");
        let rootfs = prefix.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        Some(Self {
            dir,
            prefix,
            rootfs,
        })
    }

    /// A scratch path beside the rootfs, outside it.
    pub fn outside(&self, name: &str) -> PathBuf {
        self.prefix.join(name)
    }
}

/// The `metalor` binary under test.
pub fn metalor() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metalor"))
}

/// `metalor run <flags> --rootfs R -- <cmd>`, collecting the output.
pub fn run_in(rootfs: &Path, flags: &[&str], cmd: &[&str]) -> Output {
    let mut command = metalor();
    command
        .arg("run")
        .args(flags)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--")
        .args(cmd);
    command.output().expect("spawn metalor")
}

/// stdout as a string.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts exit 0 and returns stdout.
pub fn ok_stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// Every line of the host's mountinfo that mentions `path`.
pub fn host_mounts_under(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}
