//! Hardlinks: the target must already be inside the rootfs and must not be
//! a directory; both ends are resolved inside the root.
#![forbid(unsafe_code)]

use std::io::Read;
use std::os::fd::AsFd;

use rustix::fs::FileType;
use rustix::io::Errno;
use tar::Entry;

use super::Applier;
use crate::unpack::error::{hostile, io_error, UnpackError};
use crate::unpack::{fsops, path};

impl Applier<'_> {
    pub(super) fn hardlink<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &[u8],
        raw: &[u8],
    ) -> Result<(), UnpackError> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| hostile(raw, "hardlink without a target"))?
            .into_owned();
        let target = path::normalize(&raw_target).map_err(|bad| {
            hostile(
                raw,
                match bad {
                    path::BadName::DotDot => "hardlink target has a '..' component",
                    path::BadName::Nul => "hardlink target has a NUL byte",
                },
            )
        })?;
        if target.is_empty() {
            return Err(hostile(raw, "hardlink to the root directory"));
        }
        if target == path {
            return Err(hostile(raw, "hardlink to itself"));
        }
        let (tparent, tname) = path::split_parent(&target);
        let src_dir = match fsops::open_dir_in_root(self.root, tparent) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    Errno::from_io_error(&e),
                    Some(Errno::NOENT) | Some(Errno::NOTDIR)
                ) =>
            {
                return Err(hostile(raw, "hardlink target does not exist in the rootfs"))
            }
            Err(e) => return Err(io_error("resolve hardlink target", &target, e)),
        };
        match fsops::lstat_at(src_dir.as_fd(), tname)
            .map_err(|e| io_error("stat hardlink target", &target, e))?
        {
            None => return Err(hostile(raw, "hardlink target does not exist in the rootfs")),
            Some(st) if fsops::file_type(&st) == FileType::Directory => {
                return Err(hostile(raw, "hardlink to a directory"))
            }
            Some(_) => {}
        }
        let (parent, name) = path::split_parent(path);
        let dir = self.parent_dir(parent)?;
        if let Err(e) = fsops::link_at(src_dir.as_fd(), tname, dir.as_fd(), name) {
            if e.raw_os_error() != Some(Errno::EXIST.raw_os_error()) {
                return Err(io_error("hardlink", path, e));
            }
            self.clear_slot(dir.as_fd(), name, path)?;
            self.forget_parents();
            fsops::link_at(src_dir.as_fd(), tname, dir.as_fd(), name)
                .map_err(|e| io_error("hardlink", path, e))?;
        }
        self.stats.hardlinks += 1;
        Ok(())
    }
}
