//! Argument parsing and dispatch; one file per verb.
#![forbid(unsafe_code)]

mod copy;
mod images;
mod inner;
mod inner_build_cell;
mod inspect;
mod list_tags;
mod logging;
mod login;
mod progress;
mod prune;
mod pull;
mod repack;
mod rmi;
mod run;
mod run_image;
mod unpack;

use std::ffi::OsString;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// OCI image pull, unpack and namespace execution with a pure-Rust runtime.
#[derive(Parser, Debug)]
#[command(name = "metalor", version)]
struct Cli {
    /// More log output on stderr: -v info, -vv debug (each registry
    /// request), -vvv trace. Wins over METALOR_LOG (EnvFilter syntax).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Unpack an image from an OCI layout into a new rootfs directory.
    Unpack(unpack::UnpackArgs),
    /// Pull an image from a registry or another layout into an OCI layout.
    Pull(pull::PullArgs),
    /// Copy an image between registries and layouts, in any direction.
    Copy(copy::CopyArgs),
    /// Push an image from an OCI layout to a registry.
    Push(copy::PushArgs),
    /// Print the manifest, config and platform of an image as JSON.
    Inspect(inspect::InspectArgs),
    /// Run a command inside a rootfs, in private namespaces.
    Run(Box<run::RunArgs>),
    /// List the images of the store.
    Images(images::ImagesArgs),
    /// Remove an image's reference from the store.
    Rmi(rmi::RmiArgs),
    /// Free the store's blobs, trees and partials that no reference needs.
    Prune(prune::PruneArgs),
    /// List a registry repository's tags as JSON.
    ListTags(list_tags::ListTagsArgs),
    /// Check a registry's credentials and store them in the auth file.
    Login(login::LoginArgs),
    /// Remove a registry's credentials from the auth file.
    Logout(login::LogoutArgs),
    /// Turn a changed rootfs or an overlay upper dir into a new layer and
    /// image in the layout.
    Repack(repack::RepackArgs),
}

/// A hidden verb: its arguments after the verb name, to its exit code.
type HiddenVerb = fn(&[OsString]) -> Result<i32>;

/// Parses the command line, runs the verb and returns the process exit code:
/// 0 on success, 1 on a runtime error, 2 on a usage error.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The hidden verbs that the re-execs run take upstream's trailing args
    // as they are. They bypass clap, which would add nothing there but
    // start-up time, paid on every `metalor run`.
    let hidden: Option<HiddenVerb> = match args.get(1).and_then(|verb| verb.to_str()) {
        Some(inner::INNER_RUN_VERB) => Some(inner::run),
        Some(inner_build_cell::INNER_BUILD_CELL_VERB) => Some(inner_build_cell::run),
        _ => None,
    };
    let result = match hidden {
        Some(verb) => verb(&args[2..]),
        None => {
            let cli = match Cli::try_parse_from(args) {
                Ok(cli) => cli,
                Err(err) => {
                    let code = if err.use_stderr() { 2 } else { 0 };
                    let _ = err.print();
                    return code;
                }
            };
            logging::init(cli.verbose);
            match &cli.verb {
                Verb::Unpack(args) => unpack::run(args).map(|()| 0),
                Verb::Inspect(args) => inspect::run(args).map(|()| 0),
                Verb::Pull(args) => pull::run(args).map(|()| 0),
                Verb::Copy(args) => copy::run_copy(args).map(|()| 0),
                Verb::Push(args) => copy::run_push(args).map(|()| 0),
                Verb::Run(args) => run::run(args).map(|never| match never {}),
                Verb::Images(args) => images::run(args).map(|()| 0),
                Verb::Rmi(args) => rmi::run(args).map(|()| 0),
                Verb::Prune(args) => prune::run(args).map(|()| 0),
                Verb::ListTags(args) => list_tags::run(args).map(|()| 0),
                Verb::Login(args) => login::login(args).map(|()| 0),
                Verb::Logout(args) => login::logout(args).map(|()| 0),
                Verb::Repack(args) => repack::run(args).map(|()| 0),
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            1
        }
    }
}

/// `--platform`, or the host's platform when it is not given.
fn platform_arg(platform: Option<&str>) -> Result<metalor::oci::Platform> {
    match platform {
        Some(text) => Ok(metalor::oci::Platform::parse(text)?),
        None => Ok(metalor::oci::Platform::host()),
    }
}

/// One line for the error, then one line per cause, most specific last.
fn report(err: &anyhow::Error) {
    eprintln!("metalor: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
