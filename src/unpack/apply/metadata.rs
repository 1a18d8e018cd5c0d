//! What every handler applies once the node exists: owner, mode, xattrs
//! and mtime, in the order that keeps each one (a chown clears setuid bits,
//! so the mode comes after it).
//!
//! # Which xattrs a layer may set
//!
//! An xattr is image content only if it means the same on any host. Names
//! that steer a host mechanism are dropped, whatever our privileges, and
//! counted in [`LayerStats::skipped_xattrs`](crate::unpack::LayerStats):
//!
//! - `trusted.*`, all of it. `trusted.overlay.*` (`opaque`, `redirect`,
//!   `metacopy`, `origin`…) steers overlayfs when the tree becomes a lower
//!   dir, as the image store makes it; the rest of the namespace is by
//!   definition private to privileged host daemons (glusterfs, XFS's old
//!   ACL store) and no image builder can record it without root.
//! - `user.overlay.*`, which overlayfs reads instead of `trusted.overlay.*`
//!   on a `userxattr` (rootless) mount.
//! - LSM labels, `security.selinux` and `security.SMACK64*`: they belong to
//!   the host's policy, and a label from an image would either be refused
//!   or relabel the file for that policy.
//! - `system.*` other than the POSIX ACLs `system.posix_acl_access` and
//!   `system.posix_acl_default` (`system.nfs4_acl` is filesystem-specific),
//!   and every other namespace (`btrfs.*` holds the filesystem's own
//!   properties) or none.
//!
//! Everything else is applied where the filesystem and privilege allow:
//! other `user.*`, the POSIX ACLs, and the other `security.*` names, among
//! them `security.capability` (file capabilities such as `ping`'s
//! `cap_net_raw`, which an image legitimately ships) and the content-bound
//! integrity data `security.ima` and `security.evm`.
//!
//! umoci drops `security.selinux` and `system.nfs4_acl` and, when it
//! unpacks for overlayfs, escapes `{trusted,user}.overlay.*` to
//! `*.overlay.overlay.*`, which only kernels from 6.7 show back under the
//! original name. metalor's trees are used both plain and as lower dirs
//! on any kernel, so it drops them rather than escape them.
#![forbid(unsafe_code)]

use std::io::{self, Read};
use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use tar::{Entry, EntryType};

use super::Applier;
use crate::unpack::error::{io_error, UnpackError};
use crate::unpack::fsops;

/// The PAX record prefix GNU tar and bsdtar use for extended attributes.
pub(crate) const XATTR_PREFIX: &str = "SCHILY.xattr.";

impl Applier<'_> {
    /// A `./` entry sets the rootfs directory's owner and mode, as umoci
    /// and `tar -xp` do.
    pub(super) fn root_metadata<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Stream)?;
        if self.privileges.chown {
            let (uid, gid) = owner(entry, b".")?;
            fsops::chown_fd(self.root, uid, gid).map_err(|e| io_error("chown", b".", e))?;
        }
        // The root may be a kept parent, whose group is now stale.
        self.forget_parents();
        fsops::chmod_fd(self.root, mode).map_err(|e| io_error("chmod", b".", e))
    }

    /// Whether the node for `entry`, if this process creates it now in
    /// `parent`, needs a chown: not when we may not chown at all, nor when
    /// it is created with the entry's owner already
    /// ([`Applier::created_as`]). A node that existed before needs one
    /// whatever this says.
    pub(super) fn chown_on_create<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        parent: &[u8],
        path: &[u8],
    ) -> Result<bool, UnpackError> {
        if !self.privileges.chown {
            return Ok(false);
        }
        let ids = owner(entry, path)?;
        Ok(!self.created_as(parent, ids)?)
    }

    /// Ownership (only if `chown`), mode (after ownership, which clears
    /// setuid; skipped when `mode_set`, the node was created with it),
    /// xattrs, mtime.
    pub(super) fn finish_metadata<R: Read>(
        &mut self,
        fd: BorrowedFd<'_>,
        entry: &mut Entry<'_, R>,
        path: &[u8],
        chown: bool,
        mode_set: bool,
    ) -> Result<(), UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Stream)?;
        if chown {
            let (uid, gid) = owner(entry, path)?;
            fsops::chown_fd(fd, uid, gid).map_err(|e| io_error("chown", path, e))?;
        }
        if !mode_set {
            fsops::chmod_fd(fd, mode).map_err(|e| io_error("chmod", path, e))?;
        }
        self.apply_xattrs(fd, entry, path)?;
        if entry.header().entry_type() != EntryType::Directory {
            let mtime = entry.header().mtime().map_err(UnpackError::Stream)?;
            fsops::set_times_fd(fd, mtime).map_err(|e| io_error("set mtime of", path, e))?;
        }
        Ok(())
    }

    /// PAX `SCHILY.xattr.*` records, applied to the open file.
    fn apply_xattrs<R: Read>(
        &mut self,
        fd: BorrowedFd<'_>,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Stream)? else {
            return Ok(());
        };
        for ext in extensions {
            let ext = ext.map_err(UnpackError::Stream)?;
            let Some(name) = ext.key_bytes().strip_prefix(XATTR_PREFIX.as_bytes()) else {
                continue;
            };
            if !image_xattr(name) {
                self.stats.skipped_xattrs += 1;
                continue;
            }
            if name == b"system.posix_acl_default" {
                // It narrows the modes of what is created below, in place
                // of the umask: every mode is set explicitly from now on.
                self.umask = None;
            }
            match fsops::set_xattr_fd(fd, name, ext.value_bytes()) {
                Ok(()) => self.stats.xattrs += 1,
                Err(e) => {
                    skippable_xattr_error(e, path, name)?;
                    self.stats.skipped_xattrs += 1;
                }
            }
        }
        Ok(())
    }
}

/// Whether a layer may set the xattr `name`: the rule in the module docs.
pub(crate) fn image_xattr(name: &[u8]) -> bool {
    let Some(dot) = name.iter().position(|&b| b == b'.') else {
        return false;
    };
    match &name[..dot] {
        b"user" => !name.starts_with(b"user.overlay."),
        b"security" => {
            name != b"security.selinux".as_slice() && !name.starts_with(b"security.SMACK64")
        }
        b"system" => matches!(
            name,
            b"system.posix_acl_access" | b"system.posix_acl_default"
        ),
        _ => false,
    }
}

/// Decides whether a refused xattr may be skipped (and counted).
///
/// The filesystem may not support xattrs or that namespace (`ENOTSUP`), or
/// our privileges may not allow it (`EPERM` for `trusted.*` without
/// `CAP_SYS_ADMIN`, `EACCES` for `user.*` on a file whose mode denies us
/// writing): those are what a rootless or tmpfs unpack meets, and umoci
/// skips them too. Any other error (`EIO`, `ENOSPC`, `EDQUOT`, `ERANGE` for
/// an overlong name, `E2BIG` for an oversized value, `EINVAL` for a bad
/// ACL) means the tree would silently differ from the image, so it fails
/// the layer.
fn skippable_xattr_error(err: io::Error, path: &[u8], name: &[u8]) -> Result<(), UnpackError> {
    match Errno::from_io_error(&err) {
        Some(Errno::NOTSUP | Errno::PERM | Errno::ACCESS) => Ok(()),
        _ => Err(UnpackError::Xattr {
            path: String::from_utf8_lossy(path).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            source: err,
        }),
    }
}

/// The entry's owner as Linux ids. `u32::MAX` is refused: it means "no
/// change" to `chown(2)`, so it could never be applied.
pub(super) fn owner<R: Read>(entry: &Entry<'_, R>, path: &[u8]) -> Result<(u32, u32), UnpackError> {
    let header = entry.header();
    let uid = header.uid().map_err(UnpackError::Stream)?;
    let gid = header.gid().map_err(UnpackError::Stream)?;
    let fit = |id: u64| u32::try_from(id).ok().filter(|&v| v != u32::MAX);
    match (fit(uid), fit(gid)) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(UnpackError::Unsupported {
            path: String::from_utf8_lossy(path).into_owned(),
            reason: format!("owner {uid}:{gid} does not fit a Linux id"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_image_content_xattrs_are_applied() {
        let kept = [
            "user.mime_type",
            "user.overlayfoo",
            "security.capability",
            "security.ima",
            "system.posix_acl_access",
            "system.posix_acl_default",
        ];
        for name in kept {
            assert!(image_xattr(name.as_bytes()), "{name}");
        }
        let dropped = [
            "trusted.overlay.opaque",
            "trusted.overlay.redirect",
            "trusted.overlay.overlay.opaque",
            "trusted.overlay",
            "trusted.glusterfs.volume-id",
            "user.overlay.opaque",
            "user.overlay.redirect",
            "security.selinux",
            "security.SMACK64EXEC",
            "system.nfs4_acl",
            "system.sockprotoname",
            "nonamespace",
            "btrfs.compression",
            "",
        ];
        for name in dropped {
            assert!(!image_xattr(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn unsupported_or_unpermitted_xattrs_are_skipped() {
        for errno in [Errno::NOTSUP, Errno::OPNOTSUPP, Errno::PERM, Errno::ACCESS] {
            skippable_xattr_error(errno.into(), b"etc/f", b"user.a").unwrap();
        }
    }

    #[test]
    fn other_xattr_errors_fail_with_path_and_name() {
        for errno in [Errno::IO, Errno::NOSPC, Errno::DQUOT, Errno::INVAL] {
            let err = skippable_xattr_error(errno.into(), b"etc/f", b"user.a").unwrap_err();
            let UnpackError::Xattr { path, name, source } = &err else {
                panic!("{err:?}");
            };
            assert_eq!((path.as_str(), name.as_str()), ("etc/f", "user.a"));
            assert_eq!(Errno::from_io_error(source), Some(errno));
            assert_eq!(err.to_string(), "set xattr user.a on etc/f");
        }
    }
}
