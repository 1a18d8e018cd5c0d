//! The library side of the Linux runtime, as root against the real kernel:
//! every §3.3 rejection (with nothing created on the host), the exact shape
//! of the re-exec `Command`, the isolation refusals, the probe, and the
//! library's own re-exec path end to end.
#![cfg(target_os = "linux")]

mod runtime_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use metalor::runtime::{
    build_unshare_reexec_command, build_unshare_reexec_command_with_backend, helper_binary_path,
    probe_rootless_userns, run_isolated_container_command, BindMount, ContainerRunCommand,
    LinuxNamespaceBackend, RUN_HELPER_DIR,
};
use runtime_support::{current_test, skip_or_fail, Fixture};

fn command(root: &Path) -> ContainerRunCommand {
    ContainerRunCommand {
        root: root.to_path_buf(),
        cwd: "/".into(),
        mounts: vec![],
        env: vec![("PATH".into(), "/bin".into())],
        emulator: None,
        executable: "/bin/true".into(),
        argv: vec![],
    }
}

fn reexec_error(prefix: &Path, command: &ContainerRunCommand) -> String {
    let exe = Path::new("/proc/self/exe");
    match build_unshare_reexec_command(exe, "inner", prefix, command) {
        Ok(cmd) => panic!("expected an error, got {cmd:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn helper_paths_are_upstreams() {
    assert_eq!(RUN_HELPER_DIR, "/.metalor-run");
    assert_eq!(
        helper_binary_path("qemu-aarch64-static"),
        "/.metalor-run/qemu-aarch64-static"
    );
    let _: fn(&Path, &str, &Path, &ContainerRunCommand) -> anyhow::Result<std::process::Command> =
        build_unshare_reexec_command;
    let _: fn(
        &Path,
        &str,
        &Path,
        &ContainerRunCommand,
        LinuxNamespaceBackend,
    ) -> anyhow::Result<std::process::Command> = build_unshare_reexec_command_with_backend;
    let _: fn(&ContainerRunCommand) -> anyhow::Result<()> = run_isolated_container_command;
    let _: fn(bool) -> metalor::LinuxNamespaceProbe = metalor::probe_rootless_userns;
}

#[test]
fn request_rules_reject_with_upstream_phrases_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().canonicalize().unwrap();
    let root = prefix.join("root");
    type Edit = fn(&mut ContainerRunCommand);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |c| c.cwd = "work".into(),
            "container cwd must be absolute: work",
        ),
        (
            |c| c.cwd = "/a/../b".into(),
            "container cwd must not contain '..': /a/../b",
        ),
        (
            |c| c.executable = "bin/true".into(),
            "container executable must be absolute or a bare command name: bin/true",
        ),
        (
            |c| c.executable = "./x".into(),
            "container executable must be absolute or a bare command name: ./x",
        ),
        (
            |c| c.executable = String::new(),
            "container executable must be absolute or a bare command name: ",
        ),
        (
            |c| c.executable = "../x".into(),
            "container executable must not contain '..': ../x",
        ),
        (
            |c| c.executable = "/bin/../x".into(),
            "container executable must not contain '..': /bin/../x",
        ),
        (
            |c| c.env = vec![(String::new(), "v".into())],
            "container environment keys must not be empty",
        ),
        (
            |c| c.env = vec![("A=B".into(), "v".into())],
            "container environment keys must not contain '=': A=B",
        ),
        (
            |c| c.env = vec![("A\0".into(), "v".into())],
            "container environment keys must not contain NUL bytes",
        ),
        (
            |c| c.env = vec![("A".into(), "v\0".into())],
            "container environment values must not contain NUL bytes",
        ),
        (
            |c| c.emulator = Some("qemu".into()),
            "container emulator must be absolute: qemu",
        ),
        (
            |c| c.emulator = Some("/.metalor-run/../q".into()),
            "container emulator must not contain '..': /.metalor-run/../q",
        ),
        (
            |c| c.emulator = Some("/usr/bin/qemu-aarch64-static".into()),
            "container emulator must live under /.metalor-run: /usr/bin/qemu-aarch64-static",
        ),
        (
            |c| c.mounts = vec![bind("src", "/dst")],
            "bind mount source must be absolute: src",
        ),
        (
            |c| c.mounts = vec![bind("/a/../src", "/dst")],
            "bind mount source must not contain '..': /a/../src",
        ),
        (
            |c| c.mounts = vec![bind("/src", "dst")],
            "container mount destination must be absolute: dst",
        ),
        (
            |c| c.mounts = vec![bind("/src", "/a/../dst")],
            "container mount destination must not contain '..': /a/../dst",
        ),
    ];
    for (edit, phrase) in cases {
        let mut cmd = command(&root);
        edit(&mut cmd);
        let err = reexec_error(&prefix, &cmd);
        assert!(err.contains(phrase), "want {phrase:?}, got {err:?}");
        assert!(!root.exists(), "{phrase}: the root was created");
    }
}

fn bind(source: &str, destination: &str) -> BindMount {
    BindMount {
        source: source.into(),
        destination: destination.into(),
        read_only: false,
    }
}

#[test]
fn prefix_and_root_rules_reject_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().canonicalize().unwrap();
    let root = prefix.join("root");
    let cases: Vec<(PathBuf, PathBuf, String)> = vec![
        (
            "/".into(),
            root.clone(),
            "runtime root prefix must not be /".into(),
        ),
        (
            "relative/prefix".into(),
            root.clone(),
            "runtime root prefix must be absolute: relative/prefix".into(),
        ),
        (
            prefix.join("a/../b"),
            root.clone(),
            format!(
                "runtime root prefix must not contain '..': {}",
                prefix.join("a/../b").display()
            ),
        ),
        (
            prefix.join("missing"),
            prefix.join("missing/root"),
            format!(
                "failed to canonicalize runtime root prefix {}",
                prefix.join("missing").display()
            ),
        ),
        (
            prefix.clone(),
            "/".into(),
            "container root must not be /".into(),
        ),
        (
            prefix.clone(),
            "rel/root".into(),
            "container root must be absolute: rel/root".into(),
        ),
        (
            prefix.clone(),
            prefix.join("x/../root"),
            format!(
                "container root must not contain '..': {}",
                prefix.join("x/../root").display()
            ),
        ),
        (
            prefix.join("inner"),
            root.clone(),
            format!(
                "container root {} must live under runtime root prefix {}",
                root.display(),
                prefix.join("inner").display()
            ),
        ),
    ];
    fs::create_dir(prefix.join("inner")).unwrap();
    for (p, r, phrase) in cases {
        let err = reexec_error(&p, &command(&r));
        assert!(err.contains(&phrase), "want {phrase:?}, got {err:?}");
        assert!(!root.exists() && !prefix.join("missing").exists() && !prefix.join("x").exists());
    }
}

#[test]
fn symlinked_root_is_refused_before_anything_is_created_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().canonicalize().unwrap().join("prefix");
    let far = dir.path().canonicalize().unwrap().join("far");
    fs::create_dir_all(&prefix).unwrap();
    fs::create_dir_all(&far).unwrap();
    symlink(&far, prefix.join("link")).unwrap();

    let err = reexec_error(&prefix, &command(&prefix.join("link/root")));
    let want = format!(
        "container root {} traverses a symlink",
        prefix.join("link").display()
    );
    assert!(err.contains(&want), "want {want:?}, got {err:?}");
    let err = reexec_error(&prefix, &command(&prefix.join("link")));
    assert!(err.contains(&want), "want {want:?}, got {err:?}");
    assert_eq!(
        fs::read_dir(&far).unwrap().count(),
        0,
        "something was created through the link"
    );

    fs::write(prefix.join("file"), b"").unwrap();
    let err = reexec_error(&prefix, &command(&prefix.join("file/root")));
    let want = format!(
        "container root {} traverses a non-directory path component at {}",
        prefix.join("file/root").display(),
        prefix.join("file").display()
    );
    assert!(err.contains(&want), "want {want:?}, got {err:?}");
}

#[test]
fn sentinel_is_written_when_needed_and_never_through_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().canonicalize().unwrap();
    let root = prefix.join("a/b/root");
    build_unshare_reexec_command(
        Path::new("/proc/self/exe"),
        "inner",
        &prefix,
        &command(&root),
    )
    .unwrap();
    let sentinel = root.join(".metalor-root");
    assert_eq!(
        fs::read(&sentinel).unwrap(),
        prefix.as_os_str().as_encoded_bytes()
    );
    let rebuild = || {
        build_unshare_reexec_command(
            Path::new("/proc/self/exe"),
            "inner",
            &prefix,
            &command(&root),
        )
        .unwrap()
    };
    // Already right: left alone, not rewritten (same inode).
    let inode = fs::metadata(&sentinel).unwrap().ino();
    rebuild();
    assert_eq!(fs::metadata(&sentinel).unwrap().ino(), inode);
    // Wrong, or right with trailing bytes: replaced.
    for stale in [
        b"/elsewhere".to_vec(),
        [prefix.as_os_str().as_encoded_bytes(), b"x"].concat(),
    ] {
        fs::write(&sentinel, &stale).unwrap();
        rebuild();
        assert_eq!(
            fs::read(&sentinel).unwrap(),
            prefix.as_os_str().as_encoded_bytes()
        );
    }

    fs::remove_file(&sentinel).unwrap();
    let victim = prefix.join("victim");
    fs::write(&victim, b"keep").unwrap();
    symlink(&victim, &sentinel).unwrap();
    let err = reexec_error(&prefix, &command(&root));
    let want = format!(
        "runtime root sentinel {} must not be a symlink",
        sentinel.display()
    );
    assert!(err.contains(&want), "want {want:?}, got {err:?}");
    assert_eq!(fs::read(&victim).unwrap(), b"keep");

    fs::remove_file(&sentinel).unwrap();
    fs::create_dir(&sentinel).unwrap();
    let err = reexec_error(&prefix, &command(&root));
    let want = format!(
        "runtime root sentinel {} must be a file",
        sentinel.display()
    );
    assert!(err.contains(&want), "want {want:?}, got {err:?}");
}

#[test]
fn reexec_command_has_upstreams_trailing_args_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().canonicalize().unwrap();
    let root = prefix.join("root");
    let cmd = ContainerRunCommand {
        root: root.clone(),
        cwd: "/work".into(),
        mounts: vec![
            BindMount {
                source: "/src/a".into(),
                destination: "/a".into(),
                read_only: true,
            },
            bind("/src/b", "/b"),
        ],
        env: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
        emulator: Some("/.metalor-run/qemu-aarch64-static".into()),
        executable: "env".into(),
        argv: vec!["--flag".into(), "--".into(), "last".into()],
    };
    let exe = Path::new("/usr/local/bin/consumer");
    for backend in [
        LinuxNamespaceBackend::Privileged,
        LinuxNamespaceBackend::RootlessUser,
    ] {
        let built =
            build_unshare_reexec_command_with_backend(exe, "inner-run", &prefix, &cmd, backend)
                .unwrap();
        assert_eq!(built.get_program(), exe.as_os_str());
        let args: Vec<&OsStr> = built.get_args().collect();
        let root_str = root.to_str().unwrap();
        let want = [
            "inner-run",
            "--root",
            root_str,
            "--cwd",
            "/work",
            "--mount-source",
            "/src/a",
            "--mount-dest",
            "/a",
            "--mount-mode",
            "ro",
            "--mount-source",
            "/src/b",
            "--mount-dest",
            "/b",
            "--mount-mode",
            "rw",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--emulator",
            "/.metalor-run/qemu-aarch64-static",
            "--executable",
            "env",
            "--flag",
            "--",
            "last",
        ];
        assert_eq!(args, want.map(OsStr::new));
        let envs: Vec<(&OsStr, Option<&OsStr>)> = built.get_envs().collect();
        let own_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
        assert_eq!(
            envs,
            vec![
                (
                    OsStr::new("METALOR_PARENT_MOUNT_NS"),
                    Some(own_ns.as_os_str())
                ),
                (OsStr::new("METALOR_PRIVATE_NS"), Some(OsStr::new("1"))),
                (
                    OsStr::new("METALOR_RUNTIME_ROOT_PREFIX"),
                    Some(prefix.as_os_str())
                ),
            ]
        );
    }
    assert!(root.join(".metalor-root").is_file());
}

#[test]
fn inner_runner_validates_before_it_checks_isolation() {
    // This binary never sets METALOR_PRIVATE_NS (runtime_host_ns.rs does,
    // in its own process).
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("root"));
    cmd.cwd = "rel".into();
    let err = run_isolated_container_command(&cmd)
        .unwrap_err()
        .to_string();
    assert!(err.contains("container cwd must be absolute: rel"), "{err}");
    cmd.cwd = "/".into();
    let err = run_isolated_container_command(&cmd)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to run container command without METALOR_PRIVATE_NS=1"),
        "{err}"
    );
    assert!(!dir.path().join("root").exists());
}

#[test]
fn probe_reports_and_memoises() {
    let first = probe_rootless_userns(false);
    assert_eq!(first.backend, LinuxNamespaceBackend::RootlessUser);
    assert!(!first.disable_network);
    let again = probe_rootless_userns(false);
    assert_eq!(
        (first.ok, first.status, &first.stderr),
        (again.ok, again.status, &again.stderr)
    );
    let net = probe_rootless_userns(true);
    assert!(net.disable_network);
    if !first.ok {
        let reason = format!("user namespaces are refused here: {}", first.stderr);
        skip_or_fail(&current_test(), &reason);
        return;
    }
    assert!(first.status.unwrap().success());
    assert!(net.ok, "{}", net.stderr);
}

/// The library's own re-exec path, driven the way a consumer would: the
/// returned Command re-runs the `metalor` binary's hidden verb.
#[test]
fn library_reexec_runs_the_payload_in_private_namespaces() {
    let Some(fx) = Fixture::new() else { return };
    let exe = Path::new(env!("CARGO_BIN_EXE_metalor"));
    let mut cmd = command(&fx.rootfs);
    cmd.executable = "sh".into();
    cmd.argv = vec!["-c".into(), "echo $$ $PPID; exit 3".into()];
    for backend in [
        LinuxNamespaceBackend::Privileged,
        LinuxNamespaceBackend::RootlessUser,
    ] {
        if backend == LinuxNamespaceBackend::RootlessUser && !probe_rootless_userns(false).ok {
            continue; // probe_reports_and_memoises explains or fails.
        }
        let output = build_unshare_reexec_command_with_backend(
            exe,
            "__inner-run",
            &fx.prefix,
            &cmd,
            backend,
        )
        .unwrap()
        .output()
        .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{backend:?}: {out} {output:?}"
        );
        // The binary's hidden verb execs the payload: it is PID 1.
        assert_eq!(out, "1 0\n", "{backend:?}: the payload is PID 1");
    }
}

/// Killing the process the caller holds tears the whole container down,
/// and spawn() returns while the container still runs.
#[test]
fn killing_the_reexec_process_ends_the_container() {
    let Some(fx) = Fixture::new() else { return };
    let exe = Path::new(env!("CARGO_BIN_EXE_metalor"));
    let mut cmd = command(&fx.rootfs);
    cmd.mounts = vec![bind(fx.prefix.join("shared").to_str().unwrap(), "/shared")];
    fs::create_dir(fx.prefix.join("shared")).unwrap();
    cmd.executable = "sh".into();
    cmd.argv = vec!["-c".into(), "sleep 3; echo late > /shared/marker".into()];
    let started = std::time::Instant::now();
    let mut child = build_unshare_reexec_command(exe, "__inner-run", &fx.prefix, &cmd)
        .unwrap()
        .spawn()
        .unwrap();
    assert!(
        started.elapsed().as_secs() < 3,
        "spawn() waited for the container"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !fx.prefix.join("shared/marker").exists(),
        "the payload outlived its runner"
    );
}

/// The inner side's own refusals, reached through the real re-exec with
/// one piece of the handshake tampered with after construction.
#[test]
fn inner_side_refusals_use_upstreams_phrases() {
    let Some(fx) = Fixture::new() else { return };
    let exe = Path::new(env!("CARGO_BIN_EXE_metalor"));
    let cmd = command(&fx.rootfs);
    let build = || build_unshare_reexec_command(exe, "__inner-run", &fx.prefix, &cmd).unwrap();
    let stderr_of = |mut reexec: std::process::Command| {
        let output = reexec.output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let sentinel = fx.rootfs.join(".metalor-root");

    let mut reexec = build();
    reexec.env_remove("METALOR_PRIVATE_NS");
    let err = stderr_of(reexec);
    assert!(
        err.contains("refusing to run container command without METALOR_PRIVATE_NS=1"),
        "{err}"
    );

    let mut reexec = build();
    reexec.env_remove("METALOR_RUNTIME_ROOT_PREFIX");
    let err = stderr_of(reexec);
    assert!(
        err.contains("missing required env METALOR_RUNTIME_ROOT_PREFIX"),
        "{err}"
    );

    let other = fx.outside("other");
    fs::create_dir(&other).unwrap();
    let mut reexec = build();
    reexec.env("METALOR_RUNTIME_ROOT_PREFIX", &other);
    let err = stderr_of(reexec);
    let want = format!(
        "refusing to run container command outside runtime root prefix: {} is not under {}",
        fx.rootfs.display(),
        other.display()
    );
    assert!(err.contains(&want), "{err}");

    let reexec = build();
    fs::write(&sentinel, b"/somewhere/else").unwrap();
    let err = stderr_of(reexec);
    let want = format!(
        "runtime root sentinel {} did not match the declared runtime root prefix",
        sentinel.display()
    );
    assert!(err.contains(&want), "{err}");

    let reexec = build();
    fs::remove_file(&sentinel).unwrap();
    let err = stderr_of(reexec);
    assert!(
        err.contains(&format!(
            "missing runtime root sentinel {}",
            sentinel.display()
        )),
        "{err}"
    );

    let reexec = build();
    fs::remove_file(&sentinel).unwrap();
    symlink(fx.outside("other"), &sentinel).unwrap();
    let err = stderr_of(reexec);
    let want = format!(
        "runtime root sentinel {} must not be a symlink",
        sentinel.display()
    );
    assert!(err.contains(&want), "{err}");
    fs::remove_file(&sentinel).unwrap();

    let mut missing = command(&fx.rootfs);
    missing.mounts = vec![bind(fx.outside("absent").to_str().unwrap(), "/absent")];
    let reexec = build_unshare_reexec_command(exe, "__inner-run", &fx.prefix, &missing).unwrap();
    let err = stderr_of(reexec);
    let want = format!(
        "missing bind mount source {}",
        fx.outside("absent").display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!fx.rootfs.join("absent").exists());

    let mut emulated = command(&fx.rootfs);
    emulated.emulator = Some("/.metalor-run/qemu-aarch64-static".into());
    let reexec = build_unshare_reexec_command(exe, "__inner-run", &fx.prefix, &emulated).unwrap();
    let err = stderr_of(reexec);
    // Nothing is staged at that path, so binfmt_misc cannot open it. The
    // message names the rule and the binfmt_misc instance written to.
    assert!(
        err.contains("failed to register private binfmt_misc handler for foreign-arch command"),
        "{err}"
    );
    let register = fx.rootfs.join("proc/sys/fs/binfmt_misc/register");
    let want = ": write rule metalor-qemu-aarch64-static-";
    assert!(err.contains(want), "{err}");
    assert!(
        err.contains(&format!(" to {}", register.display())),
        "{err}"
    );
}
