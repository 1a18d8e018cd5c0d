//! `metalor run` end to end, as root against the real kernel, in a busybox
//! rootfs built at test time.
#![cfg(target_os = "linux")]

mod runtime_support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};

use runtime_support::{
    current_test, host_mounts_under, metalor, ok_stdout, run_in, skip_or_fail, stderr, stdout,
    Fixture,
};

#[test]
fn echo_runs_and_exit_codes_propagate() {
    let Some(fx) = Fixture::new() else { return };
    let out = run_in(&fx.rootfs, &[], &["/bin/echo", "hello", "world"]);
    assert_eq!(ok_stdout(&out), "hello world\n");

    let out = run_in(&fx.rootfs, &[], &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "a payload's exit code is not an error: {}",
        stderr(&out)
    );

    // A process inside that dies of a signal: its shell reports 128+N.
    // (`; exit $?` keeps busybox from exec'ing the inner shell as PID 1.)
    let out = run_in(
        &fx.rootfs,
        &[],
        &["sh", "-c", "sh -c 'kill -TERM $$'; exit $?"],
    );
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
}

#[test]
fn a_payload_killed_by_a_signal_exits_128_plus_n() {
    let Some(fx) = Fixture::new() else { return };
    let mut child = metalor()
        .arg("run")
        .arg("--rootfs")
        .arg(&fx.rootfs)
        .args(["--", "sh", "-c", "echo ready; exec sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn metalor");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    // `metalor run` itself waits for the payload, its only child. As PID 1
    // of its namespace the payload ignores signals it has no handler for,
    // except SIGKILL sent from outside.
    let pid = child.id();
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let payload: i32 = children.trim().parse().expect("one child");
    // kill(1) from the host, as a user would.
    let killed = Command::new("kill")
        .args(["-KILL", &payload.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137), "{status:?}");
}

#[test]
fn the_payload_is_pid_one() {
    let Some(fx) = Fixture::new() else { return };
    let out = run_in(
        &fx.rootfs,
        &[],
        &["sh", "-c", "echo $$ $PPID; set -- /proc/[0-9]*; echo $*"],
    );
    // The runner execs the payload (as `unshare --fork chroot` does), so it
    // is PID 1, and nothing of the host's process tree is visible.
    assert_eq!(ok_stdout(&out), "1 0\n/proc/1\n");
}

#[test]
fn hostname_is_private() {
    let Some(fx) = Fixture::new() else { return };
    let before = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = run_in(
        &fx.rootfs,
        &["--privileged"],
        &["sh", "-c", "hostname metalor-test && hostname"],
    );
    assert_eq!(ok_stdout(&out), "metalor-test\n");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        before
    );
}

#[test]
fn environment_is_exactly_what_was_given() {
    let Some(fx) = Fixture::new() else { return };
    let out = metalor()
        .env("METALOR_TEST_LEAK", "1")
        .args([
            "run", "--env", "A=1", "--env", "B=x=y", "--env", "A=2", "--rootfs",
        ])
        .arg(&fx.rootfs)
        .args(["--", "/bin/env"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = ok_stdout(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["A=2", "B=x=y"]);
}

#[test]
fn bare_names_are_found_on_the_containers_path() {
    let Some(fx) = Fixture::new() else { return };
    fs::create_dir_all(fx.rootfs.join("opt/tools")).unwrap();
    // `uname` exists only in /opt/tools.
    symlink("/bin/busybox", fx.rootfs.join("opt/tools/uname")).unwrap();
    let out = run_in(&fx.rootfs, &["--env", "PATH=/opt/tools"], &["uname", "-s"]);
    assert_eq!(ok_stdout(&out), "Linux\n");
    // Not on the given PATH: not found, even though /bin has the applet.
    let out = run_in(&fx.rootfs, &["--env", "PATH=/nowhere"], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("failed to spawn container command true"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn read_only_binds_refuse_writes_and_read_write_binds_reach_the_host() {
    let Some(fx) = Fixture::new() else { return };
    let ro = fx.outside("ro");
    let rw = fx.outside("rw");
    fs::create_dir(&ro).unwrap();
    fs::create_dir(&rw).unwrap();
    fs::write(ro.join("seen"), b"from host\n").unwrap();
    let ro_bind = format!("{}:/mnt/ro:ro", ro.display());
    let rw_bind = format!("{}:/mnt/rw", rw.display());
    let out = run_in(
        &fx.rootfs,
        &["--bind", &ro_bind, "--bind", &rw_bind],
        &[
            "sh",
            "-c",
            "cat /mnt/ro/seen; if touch /mnt/ro/new 2>/dev/null; then echo wrote; fi; \
             echo data > /mnt/rw/out",
        ],
    );
    assert_eq!(ok_stdout(&out), "from host\n");
    assert!(!ro.join("new").exists());
    assert_eq!(fs::read_to_string(rw.join("out")).unwrap(), "data\n");
    assert!(
        host_mounts_under(&fx.rootfs).is_empty(),
        "mounts leaked to the host"
    );
}

#[test]
fn auto_binds_and_an_explicit_override() {
    let Some(fx) = Fixture::new() else { return };
    let out = run_in(
        &fx.rootfs,
        &[],
        &[
            "sh",
            "-c",
            "for d in null zero random urandom; do test -c /dev/$d && echo $d; done; \
             echo gone > /dev/null",
        ],
    );
    assert_eq!(ok_stdout(&out), "null\nzero\nrandom\nurandom\n");
    if let Ok(host) = fs::read("/etc/resolv.conf") {
        let out = run_in(&fx.rootfs, &[], &["cat", "/etc/resolv.conf"]);
        assert_eq!(out.stdout, host, "{}", stderr(&out));
    }
    // A user mount at /dev/null wins over the auto-bind.
    let sink = fx.outside("sink");
    fs::write(&sink, b"").unwrap();
    let bind = format!("{}:/dev/null", sink.display());
    let out = run_in(
        &fx.rootfs,
        &["--bind", &bind],
        &["sh", "-c", "echo caught > /dev/null"],
    );
    ok_stdout(&out);
    assert_eq!(fs::read_to_string(&sink).unwrap(), "caught\n");
    assert!(
        host_mounts_under(&fx.rootfs).is_empty(),
        "mounts leaked to the host"
    );
}

/// A bind at `/` replaces the root: the later mounts and the `chroot` go
/// into the mounted tree, not the directory under it.
#[test]
fn a_bind_at_root_replaces_the_root() {
    let Some(fx) = Fixture::new() else { return };
    let other = fx.outside("other");
    fs::create_dir_all(other.join("bin")).unwrap();
    fs::copy(fx.rootfs.join("bin/busybox"), other.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "test"] {
        symlink("busybox", other.join("bin").join(applet)).unwrap();
    }
    fs::write(other.join("marker"), b"other\n").unwrap();
    let bind = format!("{}:/", other.display());
    let out = run_in(
        &fx.rootfs,
        &["--bind", &bind, "--env", "PATH=/bin"],
        &[
            "sh",
            "-c",
            "cat /marker; test -e /proc/self/status && echo proc",
        ],
    );
    assert_eq!(ok_stdout(&out), "other\nproc\n");
    // (A mount at `/` covers every auto-bind, so only `proc` is made.)
    assert!(other.join("proc").is_dir());
    assert!(!fx.rootfs.join("proc").exists(), "mounted under the bind");
    assert!(
        host_mounts_under(&fx.rootfs).is_empty(),
        "mounts leaked to the host"
    );
}

#[test]
fn mount_targets_through_symlinks_are_refused_with_nothing_created_outside() {
    let Some(fx) = Fixture::new() else { return };
    let far = fx.outside("far");
    fs::create_dir(&far).unwrap();

    // A bind destination through a rootfs symlink that points outside.
    symlink(&far, fx.rootfs.join("link")).unwrap();
    let src = fx.outside("src");
    fs::create_dir(&src).unwrap();
    let bind = format!("{}:/link/x", src.display());
    let out = run_in(&fx.rootfs, &["--bind", &bind], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    let want = format!(
        "container mount destination /link/x traverses a symlink at {}",
        fx.rootfs.join("link").display()
    );
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));

    // An auto-bind through a symlinked /etc.
    symlink(&far, fx.rootfs.join("etc")).unwrap();
    if fs::metadata("/etc/resolv.conf").is_ok() {
        let out = run_in(&fx.rootfs, &[], &["true"]);
        assert_eq!(out.status.code(), Some(1));
        let want = format!(
            "container auto-mount target /etc/resolv.conf traverses a symlink at {}",
            fx.rootfs.join("etc").display()
        );
        assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    } else {
        skip_or_fail(
            &current_test(),
            "the host has no /etc/resolv.conf to auto-bind",
        );
    }

    // A symlinked /dev.
    fs::remove_file(fx.rootfs.join("etc")).unwrap();
    symlink(&far, fx.rootfs.join("dev")).unwrap();
    let out = run_in(&fx.rootfs, &[], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("traverses a symlink at"),
        "{}",
        stderr(&out)
    );

    assert_eq!(
        fs::read_dir(&far).unwrap().count(),
        0,
        "created through a symlink"
    );
    assert!(
        host_mounts_under(&fx.rootfs).is_empty(),
        "mounts leaked to the host"
    );
}

#[test]
fn mount_targets_of_the_wrong_type_are_refused() {
    let Some(fx) = Fixture::new() else { return };
    let dir = fx.outside("dir");
    fs::create_dir(&dir).unwrap();
    let file = fx.outside("file");
    fs::write(&file, b"").unwrap();
    let busybox = fx.rootfs.join("bin/busybox");
    let bin = fx.rootfs.join("bin");
    let cases = [
        (
            format!("{}:/bin/busybox", dir.display()),
            format!(
                "container mount destination /bin/busybox already exists as a non-directory at {}",
                busybox.display()
            ),
        ),
        (
            format!("{}:/bin", file.display()),
            format!(
                "container mount destination /bin already exists as a directory at {}",
                bin.display()
            ),
        ),
        (
            format!("{}:/bin/busybox/x", dir.display()),
            format!(
                "container mount destination /bin/busybox/x traverses a non-directory path component at {}",
                busybox.display()
            ),
        ),
        (
            format!("{}:/", file.display()),
            "container mount destination must not be /".to_string(),
        ),
    ];
    for (bind, want) in cases {
        let out = run_in(&fx.rootfs, &["--bind", &bind], &["true"]);
        assert_eq!(out.status.code(), Some(1), "{bind}");
        assert!(stderr(&out).contains(&want), "{bind}: {}", stderr(&out));
    }
    assert!(
        host_mounts_under(&fx.rootfs).is_empty(),
        "mounts leaked to the host"
    );
}

#[test]
fn net_none_sees_only_loopback_and_it_is_up() {
    let Some(fx) = Fixture::new() else { return };
    let out = run_in(&fx.rootfs, &["--net", "none"], &["cat", "/proc/net/dev"]);
    let text = ok_stdout(&out);
    let interfaces: Vec<&str> = text
        .lines()
        .skip(2)
        .take_while(|l| l.contains(':'))
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(interfaces, ["lo"], "{text}");
    let out = run_in(&fx.rootfs, &["--net", "none"], &["ifconfig"]);
    let text = ok_stdout(&out);
    // `ifconfig` without -a lists only interfaces that are up.
    assert!(
        text.contains("lo        Link encap:Local Loopback"),
        "{text}"
    );
    assert!(text.contains("UP LOOPBACK RUNNING"), "{text}");
}

#[test]
fn capabilities_are_narrowed_unless_privileged() {
    let Some(fx) = Fixture::new() else { return };
    let script = "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status";
    let out = run_in(&fx.rootfs, &[], &["sh", "-c", script]);
    // Docker's default set: chown dac_override fowner fsetid kill setgid
    // setuid setpcap net_bind_service net_raw sys_chroot mknod audit_write
    // setfcap.
    assert_eq!(
        ok_stdout(&out),
        "CapBnd:\t00000000a80425fb\nNoNewPrivs:\t1\n"
    );
    let out = run_in(&fx.rootfs, &["--privileged"], &["sh", "-c", script]);
    let text = ok_stdout(&out);
    assert!(text.ends_with("NoNewPrivs:\t0\n"), "{text}");
    assert!(!text.contains("00000000a80425fb"), "{text}");
}

#[test]
fn rootless_backend_end_to_end() {
    let Some(fx) = Fixture::new() else { return };
    let probe = metalor::probe_rootless_userns(false);
    if !probe.ok {
        let reason = format!("user namespaces are refused here: {}", probe.stderr);
        skip_or_fail(&current_test(), &reason);
        return;
    }
    let rw = fx.outside("rw");
    fs::create_dir(&rw).unwrap();
    let ro_bind = format!("{}:/ro:ro", rw.display());
    let rw_bind = format!("{}:/rw", rw.display());
    let out = run_in(
        &fx.rootfs,
        &[
            "--rootless",
            "--net",
            "none",
            "--bind",
            &ro_bind,
            "--bind",
            &rw_bind,
        ],
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map; echo $$ $PPID; \
             touch /ro/no 2>/dev/null || echo ro-refused; echo yes > /rw/out; \
             ifconfig | grep -c 'UP LOOPBACK RUNNING'",
        ],
    );
    let euid = rustix_free_euid();
    let text = ok_stdout(&out);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(&words[..3], ["0", euid.as_str(), "1"], "{text}");
    assert!(text.ends_with("1 0\nro-refused\n1\n"), "{text}");
    assert_eq!(fs::read_to_string(rw.join("out")).unwrap(), "yes\n");
    assert!(
        host_mounts_under(&fx.rootfs).is_empty(),
        "mounts leaked to the host"
    );
}

fn rustix_free_euid() -> String {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().to_string()
}

#[test]
fn usage_and_runtime_errors() {
    let Some(fx) = Fixture::new() else { return };
    let out = metalor()
        .args(["run", "--rootfs"])
        .arg(&fx.rootfs)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no command is a usage error");
    let out = run_in(&fx.rootfs, &["--cwd", "rel"], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("container cwd must be absolute: rel"),
        "{}",
        stderr(&out)
    );
    let out = run_in(&fx.rootfs, &["--cwd", "/missing"], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("failed to chdir to /missing"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    let missing = fx.outside("missing-rootfs");
    let out = run_in(&missing, &[], &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists());
}
