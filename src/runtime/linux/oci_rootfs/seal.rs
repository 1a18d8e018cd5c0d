//! Keeping a bundle across calls: a warm `prepare_oci_rootfs` whose bundle
//! was made by an earlier call from the cache entry's pristine tree
//! returns it as it is when nothing touched it, or repaired (see
//! [`super::repair`]) when something did, instead of removing it and
//! copying the whole pristine tree again.
//!
//! "Untouched" is proved with change times, which no caller can set: any
//! write, chmod, chown, xattr change, link, unlink or rename sets the
//! ctime of the inode it changes (and of the directory it changes an
//! entry of) to the current time. When a bundle is complete, the seal
//! `<pkg>/oci/.bundle.seal` records a time `T` read from a file written
//! after the bundle's last change, once the kernel's (coarse) clock has
//! moved past that change, so every ctime in the bundle is below `T` and
//! every later change gets a ctime at or above `T`.
//!
//! A later call trusts the seal only when it names the same cache entry
//! and the same pristine tree (device, inode and ctime of its root, so a
//! refilled entry never matches) and the bundle is the same directory,
//! itself unchanged; then an entry with a ctime below `T` is as it was
//! made. Checking that is one `statx` per entry: tens of milliseconds for
//! the generated Debian image, where a copy takes seconds.
//!
//! What it trusts: the system clock does not step backwards between the
//! two calls (a step back by `d` hides changes made in the first `d`
//! after the seal). Anything else, including a removed and re-created
//! bundle, shows as a newer ctime and costs only the copy.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rustix::fs::{statat, AtFlags, FileType, Stat};

/// The seal's file name, beside the bundle in `<pkg>/oci`.
pub(super) const SEAL: &str = ".bundle.seal";
/// Where a seal is written, and where a repair keeps it meanwhile.
pub(super) const SEAL_TMP: &str = ".bundle.seal.tmp";

/// A change time, `(seconds, nanoseconds)`.
pub(super) type Ctime = (i64, i64);

// The `stat` field types differ between architectures.
#[allow(clippy::unnecessary_cast)]
pub(super) fn ctime(stat: &Stat) -> Ctime {
    (stat.st_ctime as i64, stat.st_ctime_nsec as i64)
}

/// `dev:ino:ctime` of a directory's root: which tree it is.
fn identity(stat: &Stat) -> String {
    let (sec, nsec) = ctime(stat);
    format!("{}:{}:{sec}.{nsec:09}", stat.st_dev, stat.st_ino)
}

fn stat_dir(path: &Path) -> Option<Stat> {
    let stat = statat(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    (FileType::from_raw_mode(stat.st_mode) == FileType::Directory).then_some(stat)
}

/// What the seal says, one `key=value` per line.
fn seal_text(key: &str, pristine: &Stat, bundle: &Stat, time: Ctime) -> String {
    format!(
        "key={key}\npristine={}\nbundle={}:{}\ntime={}.{:09}\n",
        identity(pristine),
        bundle.st_dev,
        bundle.st_ino,
        time.0,
        time.1
    )
}

/// Seals the complete bundle that is a copy of `pristine`, for cache entry
/// `key`. Best effort: without a seal the next call copies again.
pub(super) fn seal(oci: &Path, bundle: &Path, pristine: &Path, key: &str) {
    let (Some(pristine), Some(bundle)) = (stat_dir(pristine), stat_dir(bundle)) else {
        return;
    };
    let staged = oci.join(SEAL_TMP);
    let written = |text: &str| {
        fs::write(&staged, text)
            .ok()
            .and_then(|()| statat(rustix::fs::CWD, &staged, AtFlags::empty()).ok())
            .map(|stat| ctime(&stat))
    };
    // Every change to the bundle happened before this write, so its ctime
    // is at or above theirs; wait for the clock to tick past it.
    let Some(after) = written("") else {
        let _ = fs::remove_file(&staged);
        return;
    };
    let mut time = after;
    for _ in 0..200 {
        if time > after {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        match written("") {
            Some(t) => time = t,
            None => break,
        }
    }
    let sealed = time > after
        && written(&seal_text(key, &pristine, &bundle, time)).is_some()
        && fs::rename(&staged, oci.join(SEAL)).is_ok();
    if !sealed {
        let _ = fs::remove_file(&staged);
    }
}

/// The seal time of the bundle, when its seal is for cache entry `key`
/// and `pristine`, and the bundle directory itself is unchanged since.
pub(super) fn sealed_time(oci: &Path, bundle: &Path, pristine: &Path, key: &str) -> Option<Ctime> {
    let text = fs::read_to_string(oci.join(SEAL)).ok()?;
    let (pristine, bundle) = (stat_dir(pristine)?, stat_dir(bundle)?);
    let time = text
        .lines()
        .find_map(|line| line.strip_prefix("time="))
        .and_then(parse_time)?;
    (text == seal_text(key, &pristine, &bundle, time) && ctime(&bundle) < time).then_some(time)
}

fn parse_time(text: &str) -> Option<Ctime> {
    let (sec, nsec) = text.split_once('.')?;
    Some((sec.parse().ok()?, nsec.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_names_its_entry_pristine_tree_and_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let oci = tmp.path();
        let pristine = oci.join("pristine");
        let bundle = oci.join("bundle");
        for dir in [&pristine, &bundle.join("rootfs")] {
            fs::create_dir_all(dir).unwrap();
        }
        assert_eq!(
            sealed_time(oci, &bundle, &pristine, "k"),
            None,
            "no seal yet"
        );
        seal(oci, &bundle, &pristine, "k");
        let time = sealed_time(oci, &bundle, &pristine, "k").expect("sealed");
        let rootfs = statat(rustix::fs::CWD, bundle.join("rootfs"), AtFlags::empty()).unwrap();
        assert!(ctime(&rootfs) < time, "the seal is later than the bundle");
        assert_eq!(sealed_time(oci, &bundle, &pristine, "other"), None);
        // A file beside the rootfs changes the bundle directory itself.
        fs::write(bundle.join("config.json"), b"{}").unwrap();
        assert_eq!(sealed_time(oci, &bundle, &pristine, "k"), None);
        fs::remove_file(bundle.join("config.json")).unwrap();
        seal(oci, &bundle, &pristine, "k");
        assert!(sealed_time(oci, &bundle, &pristine, "k").is_some());
        // A re-made pristine tree is another tree.
        fs::remove_dir(&pristine).unwrap();
        fs::create_dir(&pristine).unwrap();
        assert_eq!(sealed_time(oci, &bundle, &pristine, "k"), None);
    }
}
