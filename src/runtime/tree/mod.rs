//! Host directory trees: copying, replacing and linking them (`copy`), the
//! portable extractor for untrusted tar archives (`extract`), and
//! workspace seeding built on both (`seed`).
//!
//! Both are plain path-based `std::fs` code, so they compile on Linux,
//! macOS and Windows alike. The Linux build cell stages and collects
//! trusted host trees with `copy`; the macOS and Windows workers use both.
//! On Linux an untrusted archive is never written by `extract`: it goes
//! through the fd-based `unpack::Applier`, and `extract` only lends it the
//! rules (see that module).
#![forbid(unsafe_code)]

mod copy;
pub(crate) mod extract;
pub(crate) mod seed;
#[cfg(test)]
pub(crate) mod test_tar;

pub(crate) use copy::{copy_directory_entries, copy_path, create_symlink, remove_path_if_exists};
