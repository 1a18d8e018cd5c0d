//! Interrupted and killed commands: real signals sent to a real `metalor
//! unpack` or `metalor pull` while it is mid-way.
//!
//! - SIGINT and SIGTERM remove the staging directory and exit 130 / 143;
//! - `kill -9` leaves the staging directory, and the next unpack beside it
//!   reclaims it, while a staging directory whose owner is alive (an
//!   unpack still running in the same parent) is left alone.
//!
//! An unpack is caught mid-way with a layer of many small files, which
//! takes seconds to apply: the test waits until the staging directory has
//! entries, then signals. A pull is caught with a proxy that holds a blob
//! back until the test is done.

#[path = "../vendor-tests/support/mod.rs"]
mod support;

#[path = "../vendor-tests/registry_support/mod.rs"]
mod registry_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry_support::{Fault, FaultProxy, Registry};
use rustix::process::{kill_process, Pid, Signal};
use support::fixtures::{self, Compression, Image, Layer};

const METALOR: &str = env!("CARGO_BIN_EXE_metalor");

/// A one-layer image of `files` empty files, as layout `dir:latest`.
fn layout_with_files(dir: &Path, files: usize) -> PathBuf {
    let mut layer = Layer::new().dir("d", 0o755);
    for i in 0..files {
        layer = layer.file(&format!("d/{i}"), 0o644, b"");
    }
    let image = Image::new("latest", Compression::Gzip, &[layer]).unwrap();
    fixtures::write_layout(dir, &[image]).unwrap();
    dir.to_path_buf()
}

/// The big image: long enough to apply that a signal lands mid-way.
fn slow_layout(dir: &Path) -> PathBuf {
    layout_with_files(&dir.join("slow"), 60_000)
}

fn spawn_unpack(layout: &Path, rootfs: &Path) -> Child {
    Command::new(METALOR)
        .args(["unpack", "--quiet", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(rootfs)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The staging directories in `parent`.
fn staging_dirs(parent: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".metalor-staging-"))
        .collect();
    names.sort();
    names
}

/// Waits until a staging directory for `target` (beside it) has entries,
/// so its owner holds the lock and is applying the layer, and returns its
/// name. Fails if the unpack ended first.
fn wait_mid_unpack(child: &mut Child, target: &Path) -> String {
    let parent = target.parent().unwrap();
    let prefix = format!(
        ".{}.metalor-staging-",
        target.file_name().unwrap().to_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let found = staging_dirs(parent).into_iter().find(|name| {
            name.starts_with(&prefix)
                && fs::read_dir(parent.join(name)).is_ok_and(|mut d| d.next().is_some())
        });
        if let Some(name) = found {
            return name;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "unpack into {} ended before it was signalled: {status}",
                target.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("no staging directory for {} appeared", target.display());
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(child.id() as i32).unwrap();
    kill_process(pid, signal).unwrap();
}

#[test]
fn sigint_and_sigterm_remove_the_staging_directory_and_exit_128_plus_n() {
    let dir = tempfile::tempdir().unwrap();
    let layout = slow_layout(dir.path());
    let parent = dir.path().join("targets");
    fs::create_dir(&parent).unwrap();
    for (sig, code) in [(Signal::INT, 130), (Signal::TERM, 143)] {
        let rootfs = parent.join(format!("rootfs-{code}"));
        let mut child = spawn_unpack(&layout, &rootfs);
        wait_mid_unpack(&mut child, &rootfs);
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{sig:?}: {out:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(staging_dirs(&parent), Vec::<String>::new(), "{sig:?}");
        assert!(!rootfs.exists(), "{sig:?}: nothing at the target");
    }
}

#[test]
fn a_killed_unpack_is_reclaimed_by_the_next_one_beside_it_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let layout = slow_layout(dir.path());
    let small = layout_with_files(&dir.path().join("small"), 3);
    let parent = dir.path().join("targets");
    fs::create_dir(&parent).unwrap();

    // kill -9 leaves the staging directory: nothing in the process runs.
    let killed_target = parent.join("killed");
    let mut killed = spawn_unpack(&layout, &killed_target);
    let abandoned = wait_mid_unpack(&mut killed, &killed_target);
    signal(&killed, Signal::KILL);
    killed.wait().unwrap();
    assert_eq!(staging_dirs(&parent), std::slice::from_ref(&abandoned));

    // An unpack that is still running owns its staging directory.
    let live_target = parent.join("live");
    let mut live = spawn_unpack(&layout, &live_target);
    let owned = wait_mid_unpack(&mut live, &live_target);

    // The next unpack beside them reclaims the abandoned one only.
    let next = parent.join("next");
    let out = Command::new(METALOR)
        .args(["unpack", "--quiet", "--image"])
        .arg(format!("{}:latest", small.display()))
        .arg(&next)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(next.join("d/2").is_file());
    let left = staging_dirs(&parent);
    assert!(
        !left.contains(&abandoned),
        "the abandoned {abandoned} was not reclaimed"
    );
    assert_eq!(
        left,
        std::slice::from_ref(&owned),
        "the live unpack's {owned} was touched"
    );
    assert!(
        live.try_wait().unwrap().is_none(),
        "the live unpack was disturbed"
    );

    signal(&live, Signal::TERM);
    assert_eq!(live.wait().unwrap().code(), Some(143));
    assert_eq!(staging_dirs(&parent), Vec::<String>::new());
}

#[test]
fn an_interrupted_pull_exits_128_plus_n() {
    let test = "an_interrupted_pull_exits_128_plus_n";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let layout = layout_with_files(&dir.path().join("src"), 3);
    registry.push(&layout, "latest", "held", false);
    // Holds every layer blob back until the test ends, so the pull is
    // mid-way for as long as the test needs.
    let release = Arc::new(AtomicBool::new(false));
    let held = Arc::clone(&release);
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.line.contains("/blobs/") && !held.load(Ordering::SeqCst) {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Fault::None
    });
    for (sig, code) in [(Signal::INT, 130), (Signal::TERM, 143)] {
        let dest = dir.path().join(format!("dest-{code}"));
        let mut child = Command::new(METALOR)
            .args(["pull", "--quiet"])
            .arg(format!("docker://{}/held:latest", proxy.addr))
            .arg(format!("oci:{}:latest", dest.display()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let seen_before = proxy.blob_requests().len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while proxy.blob_requests().len() == seen_before {
            assert!(Instant::now() < deadline, "the pull never asked for a blob");
            assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
            std::thread::sleep(Duration::from_millis(5));
        }
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{sig:?}: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Only a digest-named partial may stay (the next pull resumes it);
        // private temp files are this process's, and go with it.
        let strays: Vec<String> = walk_names(&dest)
            .into_iter()
            .filter(|name| name.starts_with(".tmp-"))
            .collect();
        assert!(strays.is_empty(), "{sig:?} left {strays:?}");
    }
    release.store(true, Ordering::SeqCst);
}

/// Every file name under `dir`, recursively (none when it does not exist).
fn walk_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        names.push(entry.file_name().to_string_lossy().into_owned());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.extend(walk_names(&entry.path()));
        }
    }
    names
}
