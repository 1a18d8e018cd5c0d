//! The copy-on-write view of a run: an overlayfs whose lowerdir is a
//! pristine tree, mounted by the inner runner onto the run's root inside
//! its private mount namespace, so the host never sees it and it goes away
//! with the namespace.
//!
//! Every mount is made with the new mount API (`fsopen`, `fsconfig`,
//! `fsmount`, `move_mount`). Layer directories are opened first and named
//! to overlayfs as `/proc/self/fd/N`, so the directory checked is the
//! directory used; a per-run tmpfs upper is never attached anywhere at
//! all. When the kernel refuses a mount, the reason it logged on the
//! filesystem context is part of the error.

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
};

/// Filesystems overlayfs cannot take as an upper (or that metalor will
/// not put one on): another overlay, and network filesystems whose
/// xattrs and rename semantics it needs but does not get.
const REFUSED_UPPER_FILESYSTEMS: [(i64, &str); 5] = [
    (0x794c_7630, "overlayfs"),
    (0x6969, "NFS"),
    (0xff53_4d42, "CIFS"),
    (0xfe53_4d42, "SMB2"),
    (0x6573_5546, "FUSE"),
];

/// A run root that is an overlay of a read-only lower tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayView {
    /// The lowerdir: a pristine tree, never written.
    pub lower: PathBuf,
    /// Where writes go.
    pub upper: OverlayUpper,
    /// Mount with `userxattr` (overlay metadata in `user.overlay.*`),
    /// which overlayfs requires in a user namespace (kernel 5.11 and
    /// later). The rootless backend sets it.
    pub userxattr: bool,
}

/// Where the writes of an overlay run go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayUpper {
    /// A tmpfs of this run: writes vanish with it.
    Tmpfs,
    /// A directory of the caller's, kept as an overlay upper dir (with
    /// whiteouts as overlayfs writes them). The work dir overlayfs needs
    /// on the same filesystem is its sibling `.NAME.metalor-work`.
    Dir(PathBuf),
    /// No writes: the root is made read-only once the runner's own mount
    /// points exist (they live in a small per-run tmpfs, and binds keep
    /// their own modes).
    ReadOnly,
}

impl OverlayUpper {
    /// The work dir beside an upper dir.
    pub fn work_dir_for(upper: &Path) -> PathBuf {
        let name = upper.file_name().unwrap_or_default().to_string_lossy();
        upper.with_file_name(format!(".{name}.metalor-work"))
    }
}

/// Refuses an upper dir on a filesystem overlayfs cannot write through,
/// naming it.
pub fn check_upper_dir(upper: &Path) -> Result<()> {
    let stat = rustix::fs::statfs(upper)
        .with_context(|| format!("failed to statfs overlay upper dir {}", upper.display()))?;
    let kind = stat.f_type as i64;
    if let Some((_, name)) = REFUSED_UPPER_FILESYSTEMS.iter().find(|(m, _)| *m == kind) {
        bail!(
            "overlay upper dir {} is on {name}, which overlayfs cannot use as an upper \
             (pick a directory on a local filesystem such as ext4, xfs, btrfs or tmpfs)",
            upper.display()
        );
    }
    Ok(())
}

/// Mounts the view onto `target` (an `O_PATH` fd of the run's root) and
/// returns the overlay mount's fd, the new root for everything after.
pub(crate) fn mount_overlay_onto(view: &OverlayView, target: &OwnedFd) -> Result<OwnedFd> {
    let lower = open_dir(&view.lower, "overlay lower dir")?;
    let (upper, work, _tmpfs) = match &view.upper {
        OverlayUpper::Tmpfs | OverlayUpper::ReadOnly => {
            let tmpfs = tmpfs_upper(view.upper == OverlayUpper::ReadOnly)?;
            let upper = open_at(&tmpfs, "upper")?;
            let work = open_at(&tmpfs, "work")?;
            copy_root_attributes(&lower, &upper);
            (upper, work, Some(tmpfs))
        }
        OverlayUpper::Dir(dir) => {
            check_upper_dir(dir)?;
            let work_dir = OverlayUpper::work_dir_for(dir);
            std::fs::create_dir_all(&work_dir)
                .with_context(|| format!("failed to create {}", work_dir.display()))?;
            let upper = open_dir(dir, "overlay upper dir")?;
            (upper, open_dir(&work_dir, "overlay work dir")?, None)
        }
    };
    let context = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .context("failed to open an overlayfs context (is the overlay module available?)")?;
    let fail = |what: &str, err: rustix::io::Errno| {
        let why = context_log(&context);
        anyhow::Error::new(std::io::Error::from(err)).context(format!(
            "failed to {what} overlayfs over {}{why}",
            view.lower.display()
        ))
    };
    let path = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    fsconfig_set_string(&context, "lowerdir", path(&lower)).map_err(|e| fail("configure", e))?;
    fsconfig_set_string(&context, "upperdir", path(&upper)).map_err(|e| fail("configure", e))?;
    fsconfig_set_string(&context, "workdir", path(&work)).map_err(|e| fail("configure", e))?;
    if view.userxattr {
        fsconfig_set_flag(&context, "userxattr").map_err(|e| fail("configure", e))?;
    }
    fsconfig_create(&context).map_err(|e| fail("create", e))?;
    let mount = fsmount(
        &context,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| fail("mount", e))?;
    move_mount(
        &mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| fail("attach", e))?;
    Ok(mount)
}

/// A detached tmpfs holding `upper` and `work`; small when it only holds
/// the runner's mount points.
fn tmpfs_upper(small: bool) -> Result<OwnedFd> {
    let context =
        fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).context("failed to open a tmpfs context")?;
    let failed = |e: rustix::io::Errno| {
        anyhow::Error::new(std::io::Error::from(e)).context(format!(
            "failed to make the run's tmpfs upper{}",
            context_log(&context)
        ))
    };
    fsconfig_set_string(&context, "mode", "0755").map_err(failed)?;
    if small {
        fsconfig_set_string(&context, "size", "1m").map_err(failed)?;
    }
    fsconfig_create(&context).map_err(failed)?;
    let mount = fsmount(
        &context,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(failed)?;
    for name in ["upper", "work"] {
        rustix::fs::mkdirat(&mount, name, Mode::from_raw_mode(0o755))
            .map_err(std::io::Error::from)
            .with_context(|| format!("failed to create {name} in the run's tmpfs"))?;
    }
    Ok(mount)
}

/// The merged root takes its owner and mode from the upper dir: give it
/// the lower's, so `/` looks as the image says. Best effort: without the
/// privilege to (rootless, unmapped owner) it stays the caller's.
fn copy_root_attributes(lower: &OwnedFd, upper: &OwnedFd) {
    let Ok(stat) = rustix::fs::fstat(lower) else {
        return;
    };
    let owner = (
        Some(rustix::fs::Uid::from_raw(stat.st_uid)),
        Some(rustix::fs::Gid::from_raw(stat.st_gid)),
    );
    let _ = rustix::fs::fchown(upper, owner.0, owner.1);
    let _ = rustix::fs::fchmod(upper, Mode::from_raw_mode(stat.st_mode & 0o7777));
}

fn open_dir(path: &Path, what: &str) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("failed to open {what} {}", path.display()))
}

fn open_at(dir: &OwnedFd, name: &str) -> Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("failed to open {name} in the run's tmpfs"))
}

/// What the kernel logged on a filesystem context (`e overlayfs: …`
/// lines), as `: reason; reason`, or empty.
fn context_log(context: &impl AsFd) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 512];
    // Each read returns one message; ENODATA when there are no more.
    while let Ok(n) = rustix::io::read(context, &mut buf) {
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        let line = line.trim_start_matches(['e', 'w', 'i']).trim();
        let _ = write!(out, "{}{line}", if out.is_empty() { ": " } else { "; " });
    }
    out
}
