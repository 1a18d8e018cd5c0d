//! Foreign-architecture execution (upstream-api.md: `prepare_runtime_emulator`,
//! and steps 4, 8 and 10 of the inner runner):
//! stage a static QEMU user emulator in the root, and register it with
//! binfmt_misc for the duration of one run.
//!
//! Unlike upstream, the rule name is unique per run (upstream used the
//! in-namespace PID, usually 1, so parallel runs collided) and the rule is
//! always unregistered, also when the payload could not be spawned.
//!
//! Where the kernel has a binfmt_misc instance per user namespace (6.7 and
//! later), every run registers in an instance of its own: the rootless
//! backend's user namespace has one, and the privileged backend adds a user
//! namespace that maps every id to itself for foreign-arch runs. A run
//! killed before it unregisters (`kill -9` of its caller takes the runner
//! down through `PR_SET_PDEATHSIG`) then leaves nothing in the host's
//! instance. On older kernels the privileged rule goes to the host's
//! instance as upstream's did.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rustix::fs::{Mode, OFlags};

use super::host::prepare_host_directory;
use super::mounts::{prepare_container_mount_target, TargetKind};
use super::{helper_binary_path, RUN_HELPER_DIR};
use crate::oci::normalize_arch_name;

/// Where binfmt_misc is mounted inside the root (the rule itself is
/// registered through the mount's fd).
pub(crate) const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Stages `qemu-<guest>-static` from `$PATH` at
/// `<runtime_root>/.metalor-run/` and returns its in-container path, or
/// `None` when host and guest are the same architecture (then nothing is
/// checked or touched). Architecture names are `x86_64`/`amd64`,
/// `aarch64`/`arm64` and `riscv64`.
pub fn prepare_runtime_emulator(
    runtime_root: &Path,
    host_arch: &str,
    guest_arch: &str,
) -> Result<Option<String>> {
    let host = normalize_arch_name(host_arch)?;
    let guest = normalize_arch_name(guest_arch)?;
    if host == guest {
        return Ok(None);
    }
    if runtime_root == Path::new("/") {
        bail!("runtime root for emulator staging must not be /");
    }
    let root = prepare_host_directory(runtime_root, "runtime root")?;
    let qemu = format!("qemu-{guest}-static");
    let Some(found) = find_in_path(&qemu) else {
        bail!("foreign-architecture execution for guest {guest} on host {host} requires {qemu} in PATH");
    };
    let found = fs::canonicalize(&found).unwrap_or(found);
    // The file first, so a refusal names the helper's own path, as
    // upstream's does; the directory walk then only reopens what it checked.
    let target = helper_binary_path(&qemu);
    prepare_container_mount_target(
        &root.fd,
        runtime_root,
        &target,
        TargetKind::File,
        "runtime helper path",
    )?;
    let helper_dir = prepare_container_mount_target(
        &root.fd,
        runtime_root,
        RUN_HELPER_DIR,
        TargetKind::Directory,
        "runtime helper path",
    )?;
    install_binary(&found, &helper_dir, &qemu).with_context(|| {
        format!(
            "failed to stage {} at {}",
            found.display(),
            runtime_root.join(target.trim_start_matches('/')).display()
        )
    })?;
    Ok(Some(target))
}

/// Whether binfmt_misc is per user namespace here (Linux 6.7 and later):
/// a run in a user namespace of its own then registers its rule in an
/// instance of its own, which nothing outside sees and which ends with the
/// namespace, so a killed run leaves no rule behind.
pub(crate) fn binfmt_misc_per_user_namespace() -> bool {
    let uname = rustix::system::uname();
    kernel_release_at_least(&uname.release().to_string_lossy(), (6, 7))
}

/// Whether a release string such as `6.18.0-1-amd64` is `minimum` or later.
fn kernel_release_at_least(release: &str, minimum: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => (major, minor) >= minimum,
        _ => false,
    }
}

/// The first `is_file()` candidate on `$PATH`; the exec bit is not checked.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Copies `source` into `dir` as `name`: written to a temporary name and
/// renamed over the old copy, so a copy that a running emulator holds open
/// (binfmt's fix-binary flag keeps it so) is replaced, not rewritten.
fn install_binary(source: &Path, dir: &OwnedFd, name: &str) -> io::Result<()> {
    let mut input = fs::File::open(source)?;
    let mode = input.metadata()?.permissions();
    let temp = format!(".{name}.{}", unique_suffix());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o700))?;
    let mut output = fs::File::from(fd);
    let written = io::copy(&mut input, &mut output)
        .and_then(|_| output.set_permissions(mode))
        .and_then(|()| output.flush());
    // Closed before the rename: a binary still open for writing cannot be
    // executed or registered (ETXTBSY), and a parallel run may register
    // the new copy as soon as it has its name.
    drop(output);
    let result = written.and_then(|()| Ok(rustix::fs::renameat(dir, temp.as_str(), dir, name)?));
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), rustix::fs::AtFlags::empty());
    }
    result
}

/// Process id, time and a per-process random value: unique enough that
/// parallel runs (each PID 1 of its own namespace) never share a name.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    format!(
        "{}-{:x}-{:08x}",
        std::process::id(),
        nanos,
        hasher.finish() as u32
    )
}

/// The ELF `e_machine` of the guest an emulator runs, by its basename.
fn emulated_machine(basename: &str) -> Option<u8> {
    match basename {
        "qemu-aarch64-static" => Some(0xb7),
        "qemu-riscv64-static" => Some(0xf3),
        "qemu-x86_64-static" => Some(0x3e),
        _ => None,
    }
}

/// A binfmt_misc rule for one run.
#[derive(Debug)]
pub(crate) struct BinfmtRule {
    name: String,
    registration: String,
}

impl BinfmtRule {
    /// The rule for a staged emulator: ELF64 little-endian executables
    /// and shared objects of its machine, run by the emulator with flags
    /// F (opened now, so it need not exist in the payload's view later)
    /// and P (argv[0] preserved).
    pub(crate) fn for_emulator(emulator: &str) -> Result<Self> {
        let basename = Path::new(emulator)
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or_default();
        let Some(machine) = emulated_machine(basename) else {
            bail!("unsupported emulator path {emulator}");
        };
        let sanitized: String = basename
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!("metalor-{sanitized}-{}", unique_suffix());
        let mut magic = [0u8; 20];
        magic[..8].copy_from_slice(&[0x7f, b'E', b'L', b'F', 0x02, 0x01, 0x01, 0x00]);
        magic[16] = 0x02;
        magic[18] = machine;
        let mut mask = [0xffu8; 20];
        mask[7] = 0x00;
        mask[16] = 0xfe;
        let escape =
            |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("\\x{b:02x}")).collect() };
        let registration = format!(
            ":{name}:M::{}:{}:{emulator}:FP",
            escape(&magic),
            escape(&mask)
        );
        Ok(Self { name, registration })
    }

    /// The rule's name under binfmt_misc.
    #[cfg(test)]
    fn name(&self) -> &str {
        &self.name
    }

    /// The string written to `register`.
    #[cfg(test)]
    fn registration(&self) -> &str {
        &self.registration
    }

    /// Registers the rule with the binfmt_misc instance mounted at
    /// `mount` (`shown` is its path, for messages). Runs after the
    /// `chroot`: with flag F the kernel opens the interpreter now, and it
    /// resolves the path in the registering process's root.
    pub(crate) fn register(&self, mount: OwnedFd, shown: &Path) -> Result<RegisteredRule> {
        let write = || -> io::Result<()> {
            let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let register = rustix::fs::openat(&mount, "register", flags, Mode::empty())?;
            fs::File::from(register).write_all(self.registration.as_bytes())
        };
        write().with_context(|| {
            format!(
                "failed to register private binfmt_misc handler for foreign-arch command: \
                 write rule {} to {}",
                self.name,
                shown.join("register").display()
            )
        })?;
        Ok(RegisteredRule {
            mount,
            name: self.name.clone(),
            shown: shown.join(&self.name),
        })
    }
}

/// A registered rule; [`RegisteredRule::unregister`] removes it.
#[derive(Debug)]
pub(crate) struct RegisteredRule {
    /// The binfmt_misc instance the rule is in.
    mount: OwnedFd,
    name: String,
    /// The rule's file, for messages.
    shown: PathBuf,
}

impl RegisteredRule {
    /// Writes `-1` to the rule's file, if it still exists.
    pub(crate) fn unregister(self) -> Result<()> {
        let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let write = || -> io::Result<()> {
            let name = self.name.as_str();
            let rule = match rustix::fs::openat(&self.mount, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                Err(err) => return Err(err.into()),
            };
            fs::File::from(rule).write_all(b"-1")
        };
        write().with_context(|| {
            format!(
                "failed to unregister binfmt_misc handler {}",
                self.shown.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_string_matches_upstream() {
        let rule = BinfmtRule::for_emulator("/.metalor-run/qemu-aarch64-static").unwrap();
        assert!(rule.name().starts_with("metalor-qemu-aarch64-static-"));
        let expected_tail = concat!(
            ":M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00",
            "\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00",
            ":\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00",
            "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff",
            ":/.metalor-run/qemu-aarch64-static:FP"
        );
        assert_eq!(
            rule.registration(),
            format!(":{}{expected_tail}", rule.name())
        );
    }

    #[test]
    fn names_are_unique_per_rule() {
        let a = BinfmtRule::for_emulator("/.metalor-run/qemu-riscv64-static").unwrap();
        let b = BinfmtRule::for_emulator("/.metalor-run/qemu-riscv64-static").unwrap();
        assert_ne!(a.name(), b.name());
        assert!(a.registration().contains("\\xf3\\x00:"));
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_release_at_least("6.18.0-1-amd64", (6, 7)));
        assert!(kernel_release_at_least("6.7", (6, 7)));
        assert!(kernel_release_at_least("7.0.1", (6, 7)));
        assert!(!kernel_release_at_least("6.6.58-generic", (6, 7)));
        assert!(!kernel_release_at_least("5.19.0", (6, 7)));
        assert!(!kernel_release_at_least("garbage", (6, 7)));
    }

    #[test]
    fn unknown_emulators_are_refused() {
        let err = BinfmtRule::for_emulator("/.metalor-run/qemu-arm-static").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported emulator path /.metalor-run/qemu-arm-static"
        );
    }
}
