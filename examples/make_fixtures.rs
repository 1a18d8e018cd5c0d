//! Regenerates the committed fixture OCI layouts.
//!
//! ```sh
//! cargo run --example make_fixtures -- fixtures/oci
//! ```
//!
//! Output is deterministic (fixed mtimes, numeric owners, authored entry
//! order, fixed gzip headers), so a rerun gives the same bytes;
//! `fixtures/reproduce.rs` checks that the committed layouts match.

#[path = "../fixtures/src/lib.rs"]
mod fixtures;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: make_fixtures OUT_DIR");
        std::process::exit(2);
    };
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    for dir in fixtures::write_fixtures(&out)? {
        println!("{}", dir.display());
    }
    Ok(())
}
