//! The `metalor` command line: pull, unpack, run and inspect OCI images.

#[cfg(target_os = "linux")]
mod cli;

#[cfg(target_os = "linux")]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("metalor: the command line runs on Linux only");
    std::process::exit(1);
}
