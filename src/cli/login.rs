//! `metalor login HOST -u USER --password-stdin [--authfile F]` and
//! `metalor logout HOST [--authfile F]`: record or forget a registry's
//! credentials in skopeo's auth file.
//!
//! Login checks the credentials against the registry first (the token
//! exchange or `GET /v2/`), and writes nothing when they are refused: the
//! command then exits 1. The password is read from stdin only, one line,
//! and never printed.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use metalor::oci::registry::auth_file;
use metalor::oci::registry::remote::{self, LoginCheck};
use metalor::oci::registry::{Credentials, PullOptions, RegistryError};

/// Arguments of `metalor login`.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The registry: HOST[:PORT].
    registry: String,
    /// The user name.
    #[arg(short = 'u', long)]
    username: String,
    /// Read the password from stdin (one line). Required: metalor takes
    /// no password on the command line, where other users can see it.
    #[arg(long)]
    password_stdin: bool,
    /// The auth file to write; by default REGISTRY_AUTH_FILE, else
    /// $XDG_RUNTIME_DIR/containers/auth.json.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Use plain HTTP for this registry even when it is not on loopback.
    #[arg(long)]
    insecure: bool,
}

/// Arguments of `metalor logout`.
#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT].
    registry: String,
    /// The auth file to change; the same default as login's.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
}

/// Checks the credentials, then stores them.
pub fn login(args: &LoginArgs) -> Result<()> {
    if !args.password_stdin {
        bail!(
            "login to {}: pass the password on stdin with --password-stdin",
            args.registry
        );
    }
    let reference = remote::login_reference(&args.registry)?;
    let password = read_password().with_context(|| format!("login to {}", args.registry))?;
    let path = auth_path(args.authfile.as_ref())?;
    let credentials = Credentials::Basic {
        username: args.username.clone(),
        password: password.clone(),
    };
    let options = PullOptions {
        insecure: args.insecure,
        ..PullOptions::default()
    };
    let check = remote::check_login(&args.registry, &credentials, &options)
        .map_err(|e| login_error(&args.registry, e))?;
    if let LoginCheck::Refused(detail) = check {
        bail!(
            "login to {}: the registry refused the credentials of user {:?} ({detail})",
            args.registry,
            args.username
        );
    }
    auth_file::store(&path, &reference.registry, &args.username, &password)
        .with_context(|| format!("login to {}", args.registry))?;
    println!("Login Succeeded!");
    Ok(())
}

/// Removes the registry's entry; an error when there is none.
pub fn logout(args: &LogoutArgs) -> Result<()> {
    let registry = remote::login_reference(&args.registry)?.registry;
    let path = auth_path(args.authfile.as_ref())?;
    let removed = auth_file::remove(&path, &registry)
        .with_context(|| format!("logout from {}", args.registry))?;
    if !removed {
        bail!(
            "logout from {}: not logged into {} (no entry in {})",
            args.registry,
            args.registry,
            path.display()
        );
    }
    println!("Removed login credentials for {}", args.registry);
    Ok(())
}

/// A failed check in login's words: the registry error's own top line
/// speaks of a pull, of the placeholder repository the check runs on.
fn login_error(registry: &str, err: RegistryError) -> anyhow::Error {
    match err {
        RegistryError::Transfer { what, detail, .. } => {
            anyhow::anyhow!("login to {registry}: {what}: {detail}")
        }
        other => anyhow::Error::new(other).context(format!("login to {registry}")),
    }
}

/// `--authfile`, else the default auth file.
fn auth_path(given: Option<&PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None => Ok(auth_file::default_path()?),
    }
}

/// One line of stdin without its line ending; empty is refused.
fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        bail!("read the password from stdin: it is empty");
    }
    Ok(password.to_owned())
}
