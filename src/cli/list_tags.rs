//! `metalor list-tags [--page-size N] [--insecure] docker://HOST/REPO`:
//! print a repository's tags as skopeo list-tags does,
//! `{"Repository": "HOST/REPO", "Tags": [...]}`, following the registry's
//! pagination to the last page.
#![forbid(unsafe_code)]

use std::io::Write;

use anyhow::{bail, Context, Result};
use metalor::oci::registry::remote;
use metalor::oci::registry::{ImageReference, PullOptions};
use serde_json::json;

/// Arguments of `metalor list-tags`.
#[derive(clap::Args, Debug)]
pub struct ListTagsArgs {
    /// The repository: docker://HOST[:PORT]/REPO, without a tag or digest.
    repository: String,
    /// Tags to ask for per page (the registry's `?n=`); by default the
    /// registry chooses.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    page_size: Option<u32>,
    /// Use plain HTTP for this registry even when it is not on loopback.
    #[arg(long)]
    insecure: bool,
}

/// Lists the tags and prints them as pretty JSON on stdout.
pub fn run(args: &ListTagsArgs) -> Result<()> {
    let reference = parse_repository(&args.repository)?;
    let options = PullOptions {
        insecure: args.insecure,
        ..PullOptions::default()
    };
    let tags = remote::list_tags(&reference, &options, args.page_size)
        .with_context(|| format!("list tags of {}", args.repository))?;
    let out = json!({
        "Repository": format!("{}/{}", reference.registry, reference.repository),
        "Tags": tags,
    });
    let mut text = serde_json::to_vec_pretty(&out).context("encode list-tags output")?;
    text.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("write to stdout"),
        _ => Ok(()),
    }
}

/// `docker://HOST/REPO`; a tag or digest is refused, as skopeo does,
/// since the listing is of the whole repository.
fn parse_repository(text: &str) -> Result<ImageReference> {
    let Some(rest) = text.strip_prefix("docker://") else {
        bail!("list tags of {text}: expected docker://HOST[:PORT]/REPO");
    };
    let reference = ImageReference::parse(text)?;
    let last = rest.rsplit('/').next().unwrap_or(rest);
    if reference.digest.is_some() || last.contains(':') {
        bail!("list tags of {text}: name a repository, without a tag or digest");
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_only() {
        let r = parse_repository("docker://127.0.0.1:5000/team/app").unwrap();
        assert_eq!(r.repository, "team/app");
        for bad in [
            "docker://127.0.0.1:5000/app:1",
            "127.0.0.1:5000/app",
            "oci:/tmp/x",
        ] {
            assert!(parse_repository(bad).is_err(), "{bad}");
        }
        let digest = format!("docker://h.example/app@sha256:{}", "a".repeat(64));
        assert!(parse_repository(&digest).is_err());
    }
}
