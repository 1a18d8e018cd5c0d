//! The hidden verb a build-cell re-exec runs inside the namespaces:
//! `__inner-build-cell [--net] --build-cell-request PATH`. It reads the
//! request file and calls `run_build_cell`, as upstream's consumers'
//! inner subcommands do. Not a user interface.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use metalor::runtime::linux::{ContainerExit, BUILD_CELL_REQUEST_ARG};
use metalor::{read_build_cell_request, run_build_cell};

/// The subcommand name a build-cell re-exec runs.
pub const INNER_BUILD_CELL_VERB: &str = "__inner-build-cell";

/// Runs the cell's command; returns its exit code (128+N for signal N).
pub fn run(args: &[OsString]) -> Result<i32> {
    let mut request: Option<PathBuf> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--net" {
            // The request's network policy decides; the flag only mirrors it.
            continue;
        }
        if arg == BUILD_CELL_REQUEST_ARG {
            let path = iter
                .next()
                .with_context(|| format!("missing value after {BUILD_CELL_REQUEST_ARG}"))?;
            request = Some(PathBuf::from(path));
            continue;
        }
        bail!("unexpected argument {}", arg.to_string_lossy());
    }
    let request = request.with_context(|| format!("missing {BUILD_CELL_REQUEST_ARG}"))?;
    let spec = read_build_cell_request(&request)?;
    match run_build_cell(&spec) {
        Ok(()) => Ok(0),
        Err(err) => match err.downcast_ref::<ContainerExit>() {
            Some(exit) => Ok(exit.exit_code()),
            None => Err(err),
        },
    }
}
