//! `metalor prune [--store DIR]`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `metalor prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The image store.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

/// Frees what no reference needs and prints what that was.
pub fn run(args: &PruneArgs) -> Result<()> {
    let store = super::run_image::open_store(args.store.as_ref())?;
    let report = store.prune()?;
    for tree in &report.trees {
        println!("removed tree {tree}");
    }
    for tree in &report.trees_in_use {
        println!("kept tree {tree}: a run is using it");
    }
    println!(
        "freed {} ({} blobs, {} trees, {} partials)",
        super::images::human(report.bytes),
        report.blobs,
        report.trees.len(),
        report.partials
    );
    Ok(())
}
