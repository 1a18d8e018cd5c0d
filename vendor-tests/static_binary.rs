//! The static musl `metalor` inside an otherwise empty image (issue 7).
//!
//! The image is a directory holding only `/bin/metalor`, an empty
//! `/etc/resolv.conf` and empty `/tmp`, `/proc` and `/dev`: no shell, no
//! libc, no skopeo, no umoci. A minimal container runtime is imitated on
//! the host: `unshare --mount --pid --fork`, then a bind mount that makes
//! the image directory a mount point (as every runtime's root is; metalor
//! makes `/` private, which the kernel refuses on a directory that is not
//! one), `proc` mounted on its `/proc`, and `chroot`, all with an empty
//! environment and `PATH=` empty. Inside, metalor pulls a
//! busybox image from a real registry on 127.0.0.1, unpacks it and runs
//! `/bin/sh` in it. Everything runs under `strace -f -e trace=execve`, and
//! the only programs ever executed must be the two host helpers, metalor
//! itself (its re-exec) and the payload: a lookup of any other tool, found
//! or not, fails the test.
//!
//! The binary comes from `$METALOR_STATIC_BIN`, else from
//! `TARGET_DIR/x86_64-unknown-linux-musl/release/metalor` beside the test's
//! own target directory; `.ci/run` builds it before the tests.

mod registry_support;
mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use registry_support::Registry;
use support::{busybox_layout, is_root, require_tool, skip_or_fail, which};

const TARGET: &str = "x86_64-unknown-linux-musl";
const BUILD_HINT: &str = "build it with `rustup target add x86_64-unknown-linux-musl && \
     apt-get install musl-tools && cargo build --release --target x86_64-unknown-linux-musl` \
     (.ci/run does), or point METALOR_STATIC_BIN at it";

/// Where the static binary is expected when `METALOR_STATIC_BIN` is unset:
/// the musl release directory of the target directory this test was built
/// in (`CARGO_BIN_EXE_metalor` is `TARGET_DIR/debug/metalor`).
fn default_static_binary() -> Option<PathBuf> {
    let target_dir = Path::new(env!("CARGO_BIN_EXE_metalor"))
        .parent()?
        .parent()?;
    Some(target_dir.join(TARGET).join("release/metalor"))
}

/// The static binary, or `None` after the skip notice (a failure under CI).
fn static_binary(test: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("METALOR_STATIC_BIN") {
        Some(p) => PathBuf::from(p),
        None => default_static_binary()?,
    };
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(
        test,
        &format!("no static metalor at {}; {BUILD_HINT}", path.display()),
    );
    None
}

/// Panics unless `path` is an x86-64 ELF with no program interpreter
/// (`PT_INTERP`), i.e. static or static-pie: a dynamic binary would need a
/// loader and a libc in the image.
fn assert_static_elf(path: &Path) {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    for i in 0..usize::from(phnum) {
        let header = phoff + i * usize::from(phentsize);
        assert!(
            u32_at(header) != PT_INTERP,
            "{} is dynamically linked (it has an ELF interpreter); {BUILD_HINT}",
            path.display()
        );
    }
}

/// Builds the empty image at `dir`: `/bin/metalor` (mode 0755) and nothing
/// else but an empty `/etc/resolv.conf`, `/tmp` (1777), `/proc` and `/dev`.
fn empty_image(dir: &Path, binary: &Path) {
    for sub in ["bin", "etc", "tmp", "proc", "dev"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let target = dir.join("bin/metalor");
    fs::copy(binary, &target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("etc/resolv.conf"), b"").unwrap();
}

/// Every path in `dir`, relative, without following symlinks, skipping the
/// subtrees in `skip`.
fn tree(dir: &Path, skip: &[&str]) -> BTreeSet<String> {
    fn walk(root: &Path, path: &Path, skip: &[&str], out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(path).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let descend = path.symlink_metadata().unwrap().is_dir() && !skip.contains(&&*rel);
            out.insert(rel);
            if descend {
                walk(root, &path, skip, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, skip, &mut out);
    out
}

/// Played by the host's `sh` inside `unshare --mount --pid --fork`:
/// `$1` is `mount`, `$2` `chroot`, `$3` the image; the rest is metalor's
/// command line.
const RUNTIME_SCRIPT: &str = r#"set -e
mount=$1 chroot=$2 image=$3
shift 3
"$mount" --bind "$image" "$image"
"$mount" -t proc proc "$image/proc"
exec "$chroot" "$image" /bin/metalor "$@""#;

/// The host helpers that play the container runtime, by absolute path so
/// that nothing depends on the empty `PATH`.
struct Runtime {
    image: PathBuf,
    strace: PathBuf,
    unshare: PathBuf,
    sh: PathBuf,
    mount: PathBuf,
    chroot: PathBuf,
    traces: PathBuf,
}

impl Runtime {
    /// Finds the helpers; `None` after the skip notice (a failure under CI).
    fn new(image: &Path, traces: &Path, test: &str) -> Option<Runtime> {
        let tools = [
            ("strace", "strace"),
            ("unshare", "util-linux"),
            ("sh", "dash"),
            ("mount", "mount"),
            ("chroot", "coreutils"),
        ];
        if !tools
            .iter()
            .all(|(tool, pkg)| require_tool(tool, pkg, test))
        {
            return None;
        }
        Some(Runtime {
            image: image.to_owned(),
            strace: which("strace")?,
            unshare: which("unshare")?,
            sh: which("sh")?,
            mount: which("mount")?,
            chroot: which("chroot")?,
            traces: traces.to_owned(),
        })
    }

    /// The host programs the runtime itself executes.
    fn helpers(&self) -> Vec<String> {
        [&self.unshare, &self.sh, &self.mount, &self.chroot]
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// Runs `/bin/metalor ARGS` inside the image with `env -i PATH=`, and
    /// returns its output and every program path an `execve` was tried on,
    /// in order.
    fn metalor(&self, label: &str, args: &[&str]) -> (Output, Vec<String>) {
        let trace = self.traces.join(format!("{label}.strace"));
        let out = Command::new(&self.strace)
            .args([
                "-f",
                "-qq",
                "-s",
                "256",
                "-e",
                "trace=execve,execveat",
                "-o",
            ])
            .arg(&trace)
            .arg(&self.unshare)
            .args(["--mount", "--pid", "--fork", "--propagation", "private"])
            .arg(&self.sh)
            .args(["-c", RUNTIME_SCRIPT, "runtime"])
            .args([&self.mount, &self.chroot, &self.image])
            .args(args)
            .env_clear()
            .env("PATH", "")
            .output()
            .unwrap_or_else(|e| panic!("spawn strace: {e}"));
        let text = fs::read_to_string(&trace).unwrap_or_default();
        (out, executed(&text))
    }
}

/// The first string argument of each `execve(`/`execveat(` line of an
/// strace log (for `execveat` the path follows the dirfd).
fn executed(strace_log: &str) -> Vec<String> {
    strace_log
        .lines()
        .filter_map(|line| {
            let call = line.find("execve(").or_else(|| line.find("execveat("))?;
            let rest = &line[call..];
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            Some(rest[start..end].to_owned())
        })
        .collect()
}

/// Asserts success (or the expected code), printing both streams otherwise.
fn assert_exit(what: &str, out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status {} (want {code})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn static_binary_pulls_unpacks_and_runs_in_an_empty_image() {
    let test = "static_binary_pulls_unpacks_and_runs_in_an_empty_image";
    if !is_root() {
        skip_or_fail(test, "needs root (chroot, mount namespaces, /proc mounts)");
        return;
    }
    let Some(binary) = static_binary(test) else {
        return;
    };
    assert_static_elf(&binary);
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(busybox) = busybox_layout(tmp.path(), test) else {
        return;
    };
    registry.push(&busybox, "latest", "busybox", false);

    let image = tmp.path().join("image");
    empty_image(&image, &binary);
    let Some(runtime) = Runtime::new(&image, tmp.path(), test) else {
        return;
    };
    let helpers = runtime.helpers();
    // Every exec must be a helper, /bin/metalor or (for run) /bin/sh.
    let check_execs = |what: &str, execs: &[String], payload: Option<&str>| {
        let mut allowed: Vec<&str> = helpers.iter().map(String::as_str).collect();
        allowed.push("/bin/metalor");
        allowed.extend(payload);
        let stray: Vec<&String> = execs
            .iter()
            .filter(|p| !allowed.contains(&p.as_str()))
            .collect();
        assert!(
            stray.is_empty(),
            "{what}: metalor tried to execute {stray:?} (all execs: {execs:?})"
        );
        assert!(
            execs.iter().any(|p| p == "/bin/metalor"),
            "{what}: strace saw no exec of /bin/metalor: {execs:?}"
        );
        if let Some(payload) = payload {
            assert!(
                execs.iter().any(|p| p == payload),
                "{what}: strace saw no exec of {payload}: {execs:?}"
            );
        }
    };

    let source = format!("docker://{}/busybox:latest", registry.addr);
    let (out, execs) = runtime.metalor("pull", &["pull", &source, "oci:/tmp/l:t"]);
    assert_exit("metalor pull", &out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pulled sha256:"), "metalor pull: {stderr}");
    check_execs("metalor pull", &execs, None);
    assert!(image.join("tmp/l/index.json").is_file());

    let (out, execs) = runtime.metalor("unpack", &["unpack", "--image", "/tmp/l:t", "/tmp/r"]);
    assert_exit("metalor unpack", &out, 0);
    check_execs("metalor unpack", &execs, None);
    assert!(image.join("tmp/r/bin/busybox").is_file());

    let run = |label: &str, script: &str| {
        let args = ["run", "--rootfs", "/tmp/r", "--", "/bin/sh", "-c", script];
        runtime.metalor(label, &args)
    };
    let (out, execs) = run("run", "echo inside");
    assert_exit("metalor run", &out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\n");
    check_execs("metalor run", &execs, Some("/bin/sh"));

    let (out, execs) = run("run-exit", "echo failing; exit 7");
    assert_exit("metalor run (exit 7)", &out, 7);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "failing\n");
    check_execs("metalor run (exit 7)", &execs, Some("/bin/sh"));

    // Nothing appeared in the image but the layout and the rootfs.
    let expected: BTreeSet<String> = [
        "bin",
        "bin/metalor",
        "dev",
        "etc",
        "etc/resolv.conf",
        "proc",
        "tmp",
        "tmp/l",
        "tmp/r",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(tree(&image, &["tmp/l", "tmp/r"]), expected);
    eprintln!("{test}: ok with {}", binary.display());
}
