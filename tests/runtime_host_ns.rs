//! The inner runner refuses to mount anything in the caller's own mount
//! namespace. This sets process-wide env vars, so it is its own binary with
//! a single test.
#![cfg(target_os = "linux")]

use std::fs;

use metalor::runtime::{run_isolated_container_command, ContainerRunCommand};

#[test]
fn inner_runner_refuses_the_host_mount_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let own = fs::read_link("/proc/self/ns/mnt").unwrap();
    std::env::set_var("METALOR_PRIVATE_NS", "1");
    std::env::set_var("METALOR_PARENT_MOUNT_NS", &own);
    std::env::set_var("METALOR_RUNTIME_ROOT_PREFIX", dir.path());
    let command = ContainerRunCommand {
        root: root.clone(),
        cwd: "/".into(),
        mounts: vec![],
        env: vec![],
        emulator: None,
        executable: "/bin/true".into(),
        argv: vec![],
    };
    let err = run_isolated_container_command(&command)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to run container command in the host mount namespace"),
        "{err}"
    );
    assert!(!root.exists());

    // Without the parent's namespace, upstream's fallback reads
    // /proc/1/ns/mnt, which some sandboxes refuse even to root.
    std::env::remove_var("METALOR_PARENT_MOUNT_NS");
    let err = run_isolated_container_command(&command)
        .unwrap_err()
        .to_string();
    let pid1 = fs::read_link("/proc/1/ns/mnt");
    match pid1 {
        Ok(ns) if ns == own => assert!(
            err.contains("refusing to run container command in the host mount namespace"),
            "{err}"
        ),
        Ok(_) => assert!(
            err.contains("missing runtime root sentinel") || err.contains("canonicalize"),
            "{err}"
        ),
        Err(_) => assert!(
            err.contains("failed to read /proc/1/ns/mnt for container isolation check"),
            "{err}"
        ),
    }
}
