//! `metalor images [--format table|json] [--store DIR]`
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Arguments of `metalor images`.
#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    /// `table` (the default) or `json`.
    #[arg(long, default_value = "table")]
    format: String,
    /// The image store.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

/// Prints reference, digest, size and whether each image is unpacked.
pub fn run(args: &ImagesArgs) -> Result<()> {
    let store = super::run_image::open_store(args.store.as_ref())?;
    let images = store.list()?;
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&images)?),
        "table" => {
            let width = images
                .iter()
                .map(|i| i.reference.len())
                .max()
                .unwrap_or(0)
                .max(9);
            println!(
                "{:width$}  {:19}  {:>10}  UNPACKED",
                "REFERENCE", "DIGEST", "SIZE"
            );
            for image in &images {
                let short = image.digest.get(..19).unwrap_or(&image.digest);
                let unpacked = if image.unpacked { "yes" } else { "no" };
                println!(
                    "{:width$}  {short:19}  {:>10}  {unpacked}",
                    image.reference,
                    human(image.size)
                );
            }
        }
        other => bail!("invalid --format {other}: expected table or json"),
    }
    Ok(())
}

/// Bytes in the largest unit that keeps the number at least 1.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}
