//! Argument parsing and dispatch; one file per verb.

use clap::{Parser, Subcommand};

/// OCI image pull, unpack and namespace execution with a pure-Rust runtime.
#[derive(Parser, Debug)]
#[command(name = "metalor", version)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {}

/// Parses the command line, runs the verb and returns the process exit code:
/// 0 on success, 1 on a runtime error, 2 on a usage error.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return code;
        }
    };
    match cli.verb {}
}
