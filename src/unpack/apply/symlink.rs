//! Symlinks: the target text is stored verbatim and never followed here;
//! the tree only ever resolves it inside the root.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::fd::AsFd;

use rustix::io::Errno;
use tar::Entry;

use super::metadata::{owner, XATTR_PREFIX};
use super::Applier;
use crate::unpack::error::{hostile, io_error, UnpackError};
use crate::unpack::{fsops, path};

impl Applier<'_> {
    pub(super) fn symlink<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| hostile(path, "symlink without a target"))?
            .into_owned();
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        // The symlink is always new, created by us.
        let chown = self.chown_on_create(entry, parent, path)?;
        if let Err(e) = fsops::symlink_at(dir.as_fd(), name, &target) {
            if e.raw_os_error() != Some(Errno::EXIST.raw_os_error()) {
                return Err(io_error("symlink", path, e));
            }
            self.clear_slot(dir.as_fd(), name, path)?;
            self.forget_parents();
            fsops::symlink_at(dir.as_fd(), name, &target)
                .map_err(|e| io_error("symlink", path, e))?;
        }
        if chown {
            let (uid, gid) = owner(entry, path)?;
            fsops::lchown_at(dir.as_fd(), name, uid, gid)
                .map_err(|e| io_error("chown", path, e))?;
        }
        if entry
            .pax_extensions()
            .map_err(UnpackError::Stream)?
            .is_some()
        {
            // xattrs on a symlink need a path-based call; they are counted,
            // not applied.
            self.count_symlink_xattrs(entry)?;
        }
        let mtime = entry.header().mtime().map_err(UnpackError::Stream)?;
        fsops::set_times_at_nofollow(dir.as_fd(), name, mtime)
            .map_err(|e| io_error("set mtime of", path, e))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn count_symlink_xattrs<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Stream)? {
            for ext in extensions.flatten() {
                if ext.key_bytes().starts_with(XATTR_PREFIX.as_bytes()) {
                    self.stats.skipped_xattrs += 1;
                }
            }
        }
        Ok(())
    }
}
