//! Prepares a rootfs from an image reference with `prepare_oci_rootfs` and
//! prints its path and how long the call took: the end-to-end path a
//! consumer takes before running anything (pull, verify, unpack).
//!
//! ```text
//! cargo run --release --example prepare_rootfs -- PREFIX REFERENCE [CACHE]
//! cargo run --release --example prepare_rootfs -- /tmp/p 127.0.0.1:5000/debian:gzip
//! ```
//!
//! `PREFIX` is the runtime root prefix (it must exist); the package root is
//! `PREFIX/pkg`. With `CACHE`, the image layout is kept in that cache root
//! and reused by later runs.

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(prefix), Some(reference)) = (args.first(), args.get(1)) else {
        eprintln!("usage: prepare_rootfs PREFIX REFERENCE [CACHE]");
        std::process::exit(2);
    };
    let prefix = std::path::Path::new(prefix);
    let cache = args.get(2).map(std::path::Path::new);
    let started = std::time::Instant::now();
    match metalor::prepare_oci_rootfs(reference, prefix, &prefix.join("pkg"), cache, None) {
        Ok(rootfs) => println!(
            "{} in {:.3} s",
            rootfs.display(),
            started.elapsed().as_secs_f64()
        ),
        Err(err) => {
            eprintln!("prepare_rootfs: {err:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("prepare_oci_rootfs runs on Linux only");
}
