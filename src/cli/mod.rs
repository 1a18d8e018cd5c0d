//! Argument parsing and dispatch; one file per verb.
#![forbid(unsafe_code)]

mod inner;
mod inner_build_cell;
mod inspect;
mod progress;
mod pull;
mod run;
mod unpack;

use clap::{Parser, Subcommand};

/// OCI image pull, unpack and namespace execution with a pure-Rust runtime.
#[derive(Parser, Debug)]
#[command(name = "metalor", version)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Unpack an image from an OCI layout into a new rootfs directory.
    Unpack(unpack::UnpackArgs),
    /// Pull an image from a registry or another layout into an OCI layout.
    Pull(pull::PullArgs),
    /// Print the manifest, config and platform of an image as JSON.
    Inspect(inspect::InspectArgs),
    /// Run a command inside a rootfs, in private namespaces.
    Run(run::RunArgs),
    /// Internal: the re-executed side of `metalor run`.
    #[command(name = "__inner-run", hide = true)]
    InnerRun(inner::InnerArgs),
    /// Internal: the re-executed side of a build cell.
    #[command(name = "__inner-build-cell", hide = true)]
    InnerBuildCell(inner_build_cell::InnerBuildCellArgs),
}

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
    let result = match &cli.verb {
        Verb::Unpack(args) => unpack::run(args).map(|()| 0),
        Verb::Inspect(args) => inspect::run(args).map(|()| 0),
        Verb::Pull(args) => pull::run(args).map(|()| 0),
        Verb::Run(args) => run::run(args).map(|never| match never {}),
        Verb::InnerRun(args) => inner::run(args),
        Verb::InnerBuildCell(args) => inner_build_cell::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            1
        }
    }
}

/// One line for the error, then one line per cause, most specific last.
fn report(err: &anyhow::Error) {
    eprintln!("metalor: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
