//! The streaming layer applier: tar / gzip / zstd layer streams in, an OCI
//! rootfs out.
//!
//! Semantics follow the OCI image-spec "Applying Changesets": whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) only affect lower layers; a non-directory
//! replaces whatever is at its path; a directory merges, and a symlink to a
//! directory left by a lower layer is kept (keep-dirlinks). Every write goes
//! through the root directory fd, resolved with `RESOLVE_IN_ROOT`, so no
//! member can reach outside the rootfs.
#![forbid(unsafe_code)]

mod apply;
pub(crate) mod arriving;
pub mod decode;
mod error;
mod fsops;
mod path;
mod pipeline;
mod sparse;
mod stage;

pub(crate) use apply::{image_xattr, XATTR_PREFIX};
pub use apply::{Applier, Privileges};
pub use error::UnpackError;
pub(crate) use path::{
    classify as classify_name, normalize as normalize_name, Whiteout, OPAQUE_MARKER,
    WHITEOUT_PREFIX,
};
pub use pipeline::{apply_layers, LayerInput};
pub use stage::{unpack_layers_into, StagedUnpackError};

/// Limits and choices for one unpack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Stop once regular-file content exceeds this many bytes.
    pub max_bytes: Option<u64>,
    /// Stop once the layers hold more than this many entries.
    pub max_entries: Option<u64>,
}

/// What an unpack did, summed over its layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayerStats {
    /// Tar entries seen (whiteouts included).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Regular files created.
    pub files: u64,
    /// Directories created or merged.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Device nodes and fifos created.
    pub devices: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes skipped for lack of `CAP_MKNOD`.
    pub skipped_devices: u64,
    /// Extended attributes applied.
    pub xattrs: u64,
    /// Extended attributes not applied: refused by the filesystem or our
    /// privileges, or dropped because they would steer the host (overlayfs
    /// `trusted.overlay.*` and `user.overlay.*`, other `trusted.*`, LSM
    /// labels; the rule is in `unpack::apply::metadata`). With
    /// [`LayerStats::xattrs`] it sums to every xattr the layers carried.
    pub skipped_xattrs: u64,
}
