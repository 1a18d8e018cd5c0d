//! Moving trees between the host and the provider as a tar stream.
//!
//! The provider half is a `tar` process inside the provider, started through
//! the caller's shell. The host half is in-process: a push builds the archive
//! with the `tar` crate straight into the provider's stdin, and a pull reads
//! the provider's stdout with the checked extraction of `extract`. Failures are reported in
//! pipeline order: the producer first, then the consumer, then the copy
//! between them (where a broken pipe only echoes a failure already reported).
#![forbid(unsafe_code)]

use super::extract;
use super::shell::{append_bytes, append_output, failure_message};
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;

const PUSH_PRODUCER: &str = "tar producer";
const PUSH_CONSUMER: &str = "provider extract";
const PULL_PRODUCER: &str = "provider tar";
const PULL_CONSUMER: &str = "host tar";

/// A host path to push, resolved once so the archive and the returned
/// provider path agree on its name.
pub(super) struct HostSource {
    path: PathBuf,
    parent: PathBuf,
    name: String,
}

impl HostSource {
    /// Canonicalizes `local` (so a symlink or `..` in it is resolved on the
    /// host, like `tar -C parent name` after `realpath`) and splits it.
    pub(super) fn resolve(local: &Path) -> Result<Self> {
        let path = fs::canonicalize(local)
            .with_context(|| format!("failed to access {}", local.display()))?;
        let parent = path
            .parent()
            .ok_or_else(|| anyhow!("path has no parent: {}", path.display()))?
            .to_path_buf();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| anyhow!("path must have a normal file name: {}", path.display()))?
            .to_string();
        Ok(Self { path, parent, name })
    }

    /// The top-level name inside the archive.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The `tar` arguments this archive is equivalent to, for the log.
    fn tar_args(&self) -> String {
        format!("-cf - -C {} {}", display_host_path(&self.parent), self.name)
    }

    /// Writes the archive: directories recursively, symlinks as symlinks
    /// (never followed), modes and mtimes kept, as `tar -cf` does.
    fn write_archive<W: Write>(&self, sink: W) -> io::Result<()> {
        let mut builder = tar::Builder::new(sink);
        builder.follow_symlinks(false);
        if self.path.is_dir() {
            builder.append_dir_all(&self.name, &self.path)?;
        } else {
            builder.append_path_with_name(&self.path, &self.name)?;
        }
        builder.into_inner()?.flush()
    }
}

/// Streams `source` into the stdin of `consumer`, the provider's extract
/// script, and reports failures in pipeline order.
pub(super) fn push(source: &HostSource, mut consumer: Command, log: &mut String) -> Result<()> {
    log.push_str(&format!(
        "push into provider with tar {}\n",
        source.tar_args()
    ));
    consumer
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut consumer, PUSH_CONSUMER)?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("{PUSH_CONSUMER} did not expose stdin"))?;
    let (produced, output) = thread::scope(|scope| {
        let producer = scope.spawn(|| produce(source, stdin));
        let output = child.wait_with_output();
        (join(producer), output)
    });
    let output = output.with_context(|| format!("failed to wait for {PUSH_CONSUMER}"))?;
    append_output(log, &output);
    if let Err(ProduceError::Source(error)) = &produced {
        bail!("{PUSH_PRODUCER} failed: {error}");
    }
    check_status(PUSH_CONSUMER, &output)?;
    match produced {
        Err(ProduceError::Pipe(error)) => ignore_broken_pipe(error, PUSH_PRODUCER, PUSH_CONSUMER),
        _ => Ok(()),
    }
}

/// Reads the archive that `producer` (the provider's `tar -cf -`) writes
/// and extracts it under `local_parent`, reporting failures in pipeline
/// order.
pub(super) fn pull(mut producer: Command, local_parent: &Path, log: &mut String) -> Result<()> {
    log.push_str(&format!(
        "pull from provider with tar -xf - -C {}\n",
        display_host_path(local_parent)
    ));
    producer
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut producer, PULL_PRODUCER)?;
    let (mut stdout, stderr) = child_pipes(&mut child)?;
    let (extracted, drained, stderr) = thread::scope(|scope| {
        let stderr_reader = scope.spawn(move || read_to_end(stderr));
        let extracted = extract::unpack(&mut stdout, local_parent);
        // Read to EOF so the provider never sees a broken pipe while writing
        // its end-of-archive padding, and its status stays meaningful.
        let drained = io::copy(&mut stdout, &mut io::sink());
        drop(stdout);
        (extracted, drained, join(stderr_reader))
    });
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for {PULL_PRODUCER}"))?;
    let stderr = stderr.with_context(|| format!("failed to read {PULL_PRODUCER} stderr"))?;
    append_bytes(log, &stderr);
    if !status.success() {
        bail!("{}", failure_message(PULL_PRODUCER, status, &[], &stderr));
    }
    extracted.map_err(|error| anyhow!("{PULL_CONSUMER} failed: {error:#}"))?;
    drained
        .map(drop)
        .or_else(|error| ignore_broken_pipe(error, PULL_PRODUCER, PULL_CONSUMER))
}

/// Why the in-process producer stopped: reading the host tree failed, or
/// writing into the consumer's stdin failed.
enum ProduceError {
    Source(io::Error),
    Pipe(io::Error),
}

/// A writer that remembers whether the underlying pipe failed, so a write
/// error can be told apart from an error reading the host tree even after
/// the tar builder has passed it through.
struct PipeSink<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for PipeSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed = true)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

fn produce<W: Write>(source: &HostSource, pipe: W) -> Result<(), ProduceError> {
    let mut sink = PipeSink {
        inner: pipe,
        failed: false,
    };
    match source.write_archive(&mut sink) {
        Ok(()) => Ok(()),
        Err(error) if sink.failed => Err(ProduceError::Pipe(error)),
        Err(error) => Err(ProduceError::Source(error)),
    }
}

fn spawn(command: &mut Command, label: &str) -> Result<Child> {
    command
        .spawn()
        .with_context(|| format!("failed to spawn {label}"))
}

fn child_pipes(child: &mut Child) -> Result<(impl Read, impl Read + Send)> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{PULL_PRODUCER} did not expose stdout"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("{PULL_PRODUCER} did not expose stderr"))?;
    Ok((stdout, stderr))
}

fn read_to_end(mut reader: impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn check_status(label: &str, output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{}",
        failure_message(label, output.status, &output.stdout, &output.stderr)
    )
}

fn ignore_broken_pipe(error: io::Error, producer: &str, consumer: &str) -> Result<()> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(error).with_context(|| format!("failed to pipe {producer} into {consumer}"))
}

/// Host paths as a user would type them: Windows' verbatim `\\?\` prefix,
/// which `canonicalize` adds, is dropped for the log.
fn display_host_path(path: &Path) -> String {
    let text = path.display().to_string();
    if cfg!(windows) {
        if let Some(unc) = text.strip_prefix(r"\\?\UNC\") {
            return format!(r"\\{unc}");
        }
        if let Some(local) = text.strip_prefix(r"\\?\") {
            return local.to_string();
        }
    }
    text
}
