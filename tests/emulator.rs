//! Foreign-architecture execution end to end (upstream §3.8, §3.6 steps 4,
//! 8 and 10): `prepare_runtime_emulator`'s rules and staging, then an
//! arm64 busybox image (Debian's `busybox-static:arm64`, downloaded at test
//! time) prepared with `prepare_oci_rootfs` and run through QEMU user
//! emulation, by `metalor run --arch` and by the library re-exec. Checks
//! that payloads spawning children work, that parallel runs do not
//! collide, and that no binfmt_misc rule outlives its run, not even one
//! whose caller was killed with SIGKILL.

#[path = "../vendor-tests/support/mod.rs"]
mod support;

mod build_cell_support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use build_cell_support::{
    arm64_busybox_reference, metalor_binfmt_rules, metalor_run, ok_stdout, Prefix, INNER_RUN,
    METALOR,
};
use metalor::{
    build_unshare_reexec_command, prepare_oci_rootfs, prepare_runtime_emulator, ContainerRunCommand,
};

const QEMU: &str = "qemu-aarch64-static";

/// binfmt_misc rules are global under the privileged backend: tests that
/// count them must not overlap with each other's runs.
static FOREIGN_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serialized() -> std::sync::MutexGuard<'static, ()> {
    FOREIGN_RUNS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs only on x86_64 hosts, where arm64 is foreign.
fn x86_64_host(test: &str) -> bool {
    if std::env::consts::ARCH == "x86_64" {
        return true;
    }
    eprintln!("SKIP {test}: these tests emulate arm64 on an x86_64 host");
    false
}

#[test]
fn architecture_names_and_same_arch_shortcut() {
    for (host, guest) in [
        ("x86_64", "amd64"),
        ("arm64", "aarch64"),
        ("riscv64", "riscv64"),
    ] {
        // `/` is accepted because nothing is validated or touched.
        assert_eq!(
            prepare_runtime_emulator(Path::new("/"), host, guest).unwrap(),
            None
        );
    }
    let err = prepare_runtime_emulator(Path::new("/tmp/x"), "sparc", "mips").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported architecture sparc",
        "host first"
    );
    let err = prepare_runtime_emulator(Path::new("/tmp/x"), "x86_64", "AMD64").unwrap_err();
    assert_eq!(err.to_string(), "unsupported architecture AMD64");
    let err = prepare_runtime_emulator(Path::new("/"), "x86_64", "aarch64").unwrap_err();
    assert_eq!(
        err.to_string(),
        "runtime root for emulator staging must not be /"
    );
}

#[test]
fn missing_emulator_is_named() {
    if std::env::var_os("METALOR_TEST_NO_QEMU_CHILD").is_some() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare_runtime_emulator(&dir.path().join("root"), "x86_64", "riscv64")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "foreign-architecture execution for guest riscv64 on host x86_64 requires qemu-riscv64-static in PATH"
        );
        return;
    }
    // PATH is process-wide: change it only in a child copy of this test.
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "missing_emulator_is_named", "--nocapture"])
        .env("METALOR_TEST_NO_QEMU_CHILD", "1")
        .env("PATH", "/nonexistent")
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn emulator_is_staged_under_the_helper_dir() {
    let test = "emulator_is_staged_under_the_helper_dir";
    if !x86_64_host(test) || !support::require_tool(QEMU, "qemu-user-static", test) {
        return;
    }
    let prefix = Prefix::new();
    let root = prefix.join("new/root");
    let staged = prepare_runtime_emulator(&root, "amd64", "arm64").unwrap();
    assert_eq!(staged.as_deref(), Some("/.metalor-run/qemu-aarch64-static"));
    let host = fs::canonicalize(support::which(QEMU).unwrap()).unwrap();
    let copy = root.join(".metalor-run").join(QEMU);
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&host).unwrap());
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode(),
        fs::metadata(&host).unwrap().permissions().mode()
    );
    // Staging again replaces the copy and leaves nothing else behind.
    prepare_runtime_emulator(&root, "x86_64", "aarch64").unwrap();
    let names: Vec<_> = fs::read_dir(root.join(".metalor-run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [QEMU]);

    // A symlinked helper dir is refused before anything is written there.
    let other = prefix.join("other");
    let outside = prefix.join("outside");
    fs::create_dir_all(&other).unwrap();
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, other.join(".metalor-run")).unwrap();
    let err = prepare_runtime_emulator(&other, "x86_64", "aarch64")
        .unwrap_err()
        .to_string();
    assert!(err.contains("runtime helper path"), "{err}");
    assert!(err.contains("traverses a symlink"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

    // A symlinked runtime root component is refused too.
    symlink(&outside, prefix.join("linked")).unwrap();
    let err = prepare_runtime_emulator(&prefix.join("linked/root"), "x86_64", "aarch64")
        .unwrap_err()
        .to_string();
    assert!(err.contains("traverses a symlink"), "{err}");
}

/// An arm64 busybox rootfs prepared from an `oci:` layout with
/// `requested_arch = arm64`.
fn arm64_rootfs(prefix: &Prefix, test: &str) -> Option<PathBuf> {
    if !x86_64_host(test) || !support::require_tool(QEMU, "qemu-user-static", test) {
        return None;
    }
    let images = prefix.join("images");
    fs::create_dir_all(&images).unwrap();
    let reference = arm64_busybox_reference(&images, test)?;
    let rootfs = prepare_oci_rootfs(
        &reference,
        &prefix.path,
        &prefix.join("pkg"),
        None,
        Some("arm64"),
    )
    .unwrap();
    Some(rootfs)
}

#[test]
fn foreign_arch_run_through_the_cli() {
    let test = "foreign_arch_run_through_the_cli";
    let _serial = serialized();
    let prefix = Prefix::new();
    let Some(rootfs) = arm64_rootfs(&prefix, test) else {
        return;
    };
    let path = ["--env", "PATH=/bin"];
    let flags = [&["--arch", "arm64"][..], &path[..]].concat();
    assert_eq!(
        ok_stdout(&metalor_run(&rootfs, &flags, &["uname", "-m"])),
        "aarch64\n"
    );
    // A shell that spawns other applets, each an arm64 exec of its own.
    let script = "for i in 1 2 3; do echo \"$(uname -m) $i\"; done | cat; ls /proc/sys/fs/binfmt_misc | grep -c '^metalor-qemu-aarch64-static-'";
    let out = ok_stdout(&metalor_run(&rootfs, &flags, &["sh", "-c", script]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], ["aarch64 1", "aarch64 2", "aarch64 3"], "{out}");
    assert!(
        lines[3].parse::<u32>().unwrap() >= 1,
        "the run's rule was registered: {out}"
    );
    // Without --arch the arm64 binary cannot run.
    let out = metalor_run(&rootfs, &path, &["uname", "-m"]);
    assert!(!out.status.success());
    // The payload's exit code is passed on, and the rule still goes away.
    let out = metalor_run(&rootfs, &flags, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = metalor_run(&rootfs, &flags, &["/bin/does-not-exist"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("failed to spawn container command /bin/does-not-exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        metalor_binfmt_rules(),
        Vec::<String>::new(),
        "no rule outlives its run"
    );
}

#[test]
fn parallel_foreign_runs_do_not_collide() {
    let test = "parallel_foreign_runs_do_not_collide";
    let _serial = serialized();
    let prefix = Prefix::new();
    let Some(rootfs) = arm64_rootfs(&prefix, test) else {
        return;
    };
    let spawned: Vec<_> = (0..4)
        .map(|i| {
            Command::new(METALOR)
                .args(["run", "--arch", "aarch64", "--env", "PATH=/bin", "--rootfs"])
                .arg(&rootfs)
                .args([
                    "--",
                    "sh",
                    "-c",
                    &format!("sleep 0.5; echo $(uname -m) {i}"),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in spawned.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(ok_stdout(&out), format!("aarch64 {i}\n"));
    }
    assert_eq!(metalor_binfmt_rules(), Vec::<String>::new());
}

#[test]
fn foreign_arch_run_through_the_library_reexec() {
    let test = "foreign_arch_run_through_the_library_reexec";
    let _serial = serialized();
    let prefix = Prefix::new();
    let Some(rootfs) = arm64_rootfs(&prefix, test) else {
        return;
    };
    let emulator = prepare_runtime_emulator(&rootfs, std::env::consts::ARCH, "arm64").unwrap();
    let command = ContainerRunCommand {
        root: rootfs.clone(),
        cwd: "/".into(),
        mounts: vec![],
        env: vec![("PATH".into(), "/bin".into())],
        emulator,
        executable: "sh".into(),
        argv: vec!["-c".into(), "uname -m; cat /etc/hostname".into()],
    };
    let mut reexec =
        build_unshare_reexec_command(Path::new(METALOR), INNER_RUN, &prefix.path, &command)
            .unwrap();
    let args: Vec<_> = reexec
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--emulator")
        .expect("--emulator in the args");
    assert_eq!(args[at + 1], "/.metalor-run/qemu-aarch64-static");
    assert_eq!(ok_stdout(&reexec.output().unwrap()), "aarch64\nbusybox\n");

    // A staged name outside the three known emulators is refused inside.
    let mut unknown = command.clone();
    unknown.emulator = Some("/.metalor-run/qemu-arm-static".into());
    let out = build_unshare_reexec_command(Path::new(METALOR), INNER_RUN, &prefix.path, &unknown)
        .unwrap()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unsupported emulator path /.metalor-run/qemu-arm-static"),
        "{stderr}"
    );

    // And an emulator outside the helper dir never gets that far.
    let mut outside = command.clone();
    outside.emulator = Some("/usr/bin/qemu-aarch64-static".into());
    let err = build_unshare_reexec_command(Path::new(METALOR), INNER_RUN, &prefix.path, &outside)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "container emulator must live under /.metalor-run: /usr/bin/qemu-aarch64-static"
    );
    assert_eq!(metalor_binfmt_rules(), Vec::<String>::new());
}

/// binfmt_misc is instanced per user namespace from Linux 6.7 on.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[test]
fn rootless_foreign_run_gets_a_private_binfmt_instance() {
    let test = "rootless_foreign_run_gets_a_private_binfmt_instance";
    let _serial = serialized();
    if !kernel_at_least(6, 7) {
        support::skip_or_fail(
            test,
            "binfmt_misc is per user namespace only from Linux 6.7",
        );
        return;
    }
    if !metalor::probe_rootless_userns(false).ok {
        support::skip_or_fail(test, "no rootless user namespaces");
        return;
    }
    let prefix = Prefix::new();
    let Some(rootfs) = arm64_rootfs(&prefix, test) else {
        return;
    };
    let flags = ["--rootless", "--arch", "arm64", "--env", "PATH=/bin"];
    let script = "uname -m; id -u; ls /proc/sys/fs/binfmt_misc | grep -v -e register -e status";
    let out = ok_stdout(&metalor_run(&rootfs, &flags, &["sh", "-c", script]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["aarch64", "0"], "{out}");
    // Only this run's rule: the instance belongs to the run's namespace.
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[2].starts_with("metalor-qemu-aarch64-static-"),
        "{out}"
    );
    assert_eq!(metalor_binfmt_rules(), Vec::<String>::new());
}

/// A mount of the host's binfmt_misc instance, held by the test as a host
/// that mounts binfmt_misc holds one: without any mount the kernel drops
/// every rule with the last one, and a leaked rule would not show.
struct HostBinfmt(std::os::fd::OwnedFd);

impl HostBinfmt {
    fn mount() -> HostBinfmt {
        use rustix::mount::{fsconfig_create, fsmount, fsopen, FsMountFlags, FsOpenFlags};
        let fs = fsopen("binfmt_misc", FsOpenFlags::FSOPEN_CLOEXEC).expect("fsopen binfmt_misc");
        fsconfig_create(&fs).expect("create binfmt_misc");
        let mount = fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            rustix::mount::MountAttrFlags::empty(),
        )
        .expect("fsmount binfmt_misc");
        HostBinfmt(mount)
    }

    fn metalor_rules(&self) -> Vec<String> {
        use std::os::fd::AsRawFd;
        fs::read_dir(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("metalor-"))
            .collect()
    }
}

/// Waits up to `limit` for `path` to exist.
fn wait_for_file(path: &Path, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn a_privileged_foreign_run_killed_with_sigkill_leaves_no_host_rule() {
    let test = "a_privileged_foreign_run_killed_with_sigkill_leaves_no_host_rule";
    let _serial = serialized();
    if !kernel_at_least(6, 7) {
        support::skip_or_fail(
            test,
            "binfmt_misc is per user namespace only from Linux 6.7",
        );
        return;
    }
    let prefix = Prefix::new();
    let Some(rootfs) = arm64_rootfs(&prefix, test) else {
        return;
    };
    let host = HostBinfmt::mount();
    let out = prefix.join("out");
    fs::create_dir(&out).unwrap();
    // The payload records the rules it sees and its id map, then waits to
    // be killed; the rule is registered before the payload starts.
    let script = "ls /proc/sys/fs/binfmt_misc > /out/rules; cat /proc/self/uid_map > /out/map; \
                  touch /out/ready; sleep 60";
    let mut caller = Command::new(METALOR)
        .args(["run", "--arch", "arm64", "--env", "PATH=/bin", "--bind"])
        .arg(format!("{}:/out", out.display()))
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["--", "sh", "-c", script])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = wait_for_file(&out.join("ready"), std::time::Duration::from_secs(60));
    let ours: Vec<String> = fs::read_to_string(out.join("rules"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("metalor-"))
        .map(str::to_owned)
        .collect();
    // The host's rules while the run is live: ours must not be among them.
    let host_live = host.metalor_rules();
    caller.kill().unwrap();
    let status = caller.wait().unwrap();
    assert!(ready, "the payload did not start: {status:?}");
    assert_eq!(ours.len(), 1, "the run sees its own rule only: {ours:?}");
    assert_eq!(
        fs::read_to_string(out.join("map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "0", "4294967295"],
        "root stays root: every id is mapped to itself"
    );
    assert!(
        !host_live.contains(&ours[0]),
        "the run's rule {} is in the host's binfmt_misc",
        ours[0]
    );
    // Killing the caller takes the runner down before it can unregister;
    // give the kernel a moment to tear the namespaces down, then look.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let host_after = host.metalor_rules();
    assert!(
        !host_after.contains(&ours[0]),
        "the killed run's rule {} outlived it in the host's binfmt_misc",
        ours[0]
    );
}
