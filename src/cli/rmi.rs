//! `metalor rmi [--store DIR] REF...`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `metalor rmi`.
#[derive(clap::Args, Debug)]
pub struct RmiArgs {
    /// The image store.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// The references to remove.
    #[arg(required = true, value_name = "REF")]
    references: Vec<String>,
}

/// Removes each reference; `metalor prune` then frees what it used.
pub fn run(args: &RmiArgs) -> Result<()> {
    let store = super::run_image::open_store(args.store.as_ref())?;
    for reference in &args.references {
        let digest = store.remove(reference)?;
        println!("untagged {reference} ({digest})");
    }
    Ok(())
}
