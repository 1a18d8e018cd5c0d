//! Progress bars on stderr, only when a person is watching.
//!
//! One small API for every verb that moves bytes, on top of `indicatif`:
//!
//! - [`Bars::new`]`(quiet)` decides once whether bars are drawn: only
//!   when stderr is a terminal and `--quiet` was not given
//!   ([`shows_bars`] is that rule, testable without a terminal). A
//!   hidden `Bars` hands out hidden bars, so callers never branch;
//!   [`Bars::is_shown`] lets them skip work (wrapping a reader) that only
//!   a drawn bar needs. [`Bars::shown_if`] skips the terminal check (for
//!   tests, or a verb that decided already).
//! - [`Bars::blob_bar`]`(digest, size)`: one blob's transfer (pull, push,
//!   copy), with bytes, rate and ETA.
//! - [`Bars::layer_bar`]`(index, count, size)`: one layer of an unpack or
//!   repack, counted in the layer blob's bytes ([`ProgressBar::wrap_read`]
//!   or `wrap_write` on the blob stream drives it; the callback that says
//!   the layer is applied calls [`ProgressBar::finish`]).
//! - [`Bars::pull_events`]: a [`ProgressFn`] for `PullOptions::progress`
//!   that turns [`PullEvent`]s into blob bars (`BlobStarted` makes the
//!   bar, `Bytes` moves it, `BlobDone` finishes it); `None` when hidden,
//!   so a pull then pays nothing for progress.
//! - [`Bars::push_events`]: the same for `PushOptions::progress`
//!   ([`PushEvent`]s), each bar ending with what became of its blob
//!   (`uploaded`, `mounted` or `present`).
//!
//! All bars of the process share one `MultiProgress`, so a pull followed
//! by an unpack stacks its lines. Log lines written while bars are up go
//! through [`suspend`], which lifts the bars for the write.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use metalor::oci::registry::{BlobOutcome, ProgressFn, PullEvent, PushEvent, PushProgressFn};
use metalor::oci::Digest;

/// The bars of the process, made on the first shown [`Bars`].
static SHOWN: OnceLock<MultiProgress> = OnceLock::new();

/// One line per blob or layer: label, bar (as wide as the terminal
/// leaves room for), bytes, rate, ETA, and a last word once finished.
const TEMPLATE: &str = "{prefix:<19} [{wide_bar}] {bytes:>9}/{total_bytes:<9} \
                        {binary_bytes_per_sec:>11} {eta:>3} {msg:7}";

/// Whether bars are drawn: on a terminal, unless `--quiet`. Scripts and
/// logs (stderr a file or a pipe) get no escape codes.
pub fn shows_bars(quiet: bool, is_terminal: bool) -> bool {
    !quiet && is_terminal
}

/// Where a verb's progress bars go; see the module doc.
#[derive(Clone)]
pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    /// Bars on stderr when [`shows_bars`] says so, hidden ones otherwise.
    pub fn new(quiet: bool) -> Bars {
        Bars::shown_if(shows_bars(quiet, std::io::stderr().is_terminal()))
    }

    /// Drawn bars when `shown`, hidden ones otherwise.
    pub fn shown_if(shown: bool) -> Bars {
        Bars {
            multi: shown.then(|| SHOWN.get_or_init(MultiProgress::new).clone()),
        }
    }

    /// Whether these bars are drawn.
    pub fn is_shown(&self) -> bool {
        self.multi.is_some()
    }

    /// A bar for one blob of `size` bytes, labelled with its short digest.
    pub fn blob_bar(&self, digest: &Digest, size: u64) -> ProgressBar {
        self.bar(size, short_digest(digest))
    }

    /// A bar for layer `index` (from 0) of `count`, whose blob is `size`
    /// bytes.
    pub fn layer_bar(&self, index: usize, count: usize, size: u64) -> ProgressBar {
        self.bar(size, format!("layer {}/{count}", index + 1))
    }

    /// A pull callback that draws one bar per blob; `None` when hidden.
    pub fn pull_events(&self) -> Option<ProgressFn> {
        let draw = self.blob_events(|event: &PullEvent| match event {
            PullEvent::BlobStarted { digest, size } => Step::Start(digest, *size),
            PullEvent::Bytes { digest, bytes } => Step::Bytes(digest, *bytes),
            PullEvent::BlobDone {
                digest,
                size,
                fetched,
            } => Step::Done(
                digest,
                *size,
                if *fetched == 0 { "present" } else { "done" },
            ),
            _ => Step::Other,
        })?;
        Some(Arc::new(draw))
    }

    /// A push callback that draws one bar per blob; `None` when hidden.
    pub fn push_events(&self) -> Option<PushProgressFn> {
        let draw = self.blob_events(|event: &PushEvent| match event {
            PushEvent::BlobStarted { digest, size } => Step::Start(digest, *size),
            PushEvent::Bytes { digest, bytes } => Step::Bytes(digest, *bytes),
            PushEvent::BlobDone {
                digest,
                size,
                outcome,
            } => Step::Done(
                digest,
                *size,
                match outcome {
                    BlobOutcome::Mounted { .. } => "mounted",
                    BlobOutcome::Present => "present",
                    _ => "uploaded",
                },
            ),
            _ => Step::Other,
        })?;
        Some(Arc::new(draw))
    }

    /// One bar per blob, driven by events that `step` sorts; `None` when
    /// hidden.
    fn blob_events<E>(
        &self,
        step: impl Fn(&E) -> Step<'_> + Send + Sync,
    ) -> Option<impl Fn(&E) + Send + Sync> {
        if !self.is_shown() {
            return None;
        }
        let bars = self.clone();
        let open: Mutex<HashMap<Digest, ProgressBar>> = Mutex::new(HashMap::new());
        Some(move |event: &E| {
            let Ok(mut open) = open.lock() else { return };
            match step(event) {
                Step::Start(digest, size) => {
                    open.insert(digest.clone(), bars.blob_bar(digest, size));
                }
                Step::Bytes(digest, bytes) => {
                    if let Some(bar) = open.get(digest) {
                        bar.inc(bytes);
                    }
                }
                Step::Done(digest, size, word) => {
                    let bar = open
                        .remove(digest)
                        .unwrap_or_else(|| bars.blob_bar(digest, size));
                    bar.set_position(size);
                    bar.finish_with_message(word);
                }
                Step::Other => {}
            }
        })
    }

    fn bar(&self, size: u64, prefix: String) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let style = ProgressStyle::with_template(TEMPLATE)
            .expect("the bar templates are valid")
            .progress_chars("=> ");
        multi.add(ProgressBar::new(size).with_style(style).with_prefix(prefix))
    }
}

/// What a transfer event means for its blob's bar.
enum Step<'a> {
    /// A bar of this size starts.
    Start(&'a Digest, u64),
    /// The bar moves by this many bytes.
    Bytes(&'a Digest, u64),
    /// The bar is full, with this last word.
    Done(&'a Digest, u64, &'static str),
    /// Not about a blob's bytes.
    Other,
}

/// Runs `write` with the bars lifted off the screen, if any are up, so
/// that a log line does not tear them.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    match SHOWN.get() {
        Some(multi) => multi.suspend(write),
        None => write(),
    }
}

/// `sha256:` and the first 12 hex digits: enough to tell blobs apart.
fn short_digest(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("{}:{}", digest.algorithm(), &hex[..hex.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_only_on_a_terminal_without_quiet() {
        assert!(shows_bars(false, true));
        assert!(!shows_bars(true, true));
        assert!(!shows_bars(false, false));
        assert!(!shows_bars(true, false));
    }

    #[test]
    fn hidden_bars_cost_nothing_and_draw_nothing() {
        let bars = Bars::shown_if(false);
        assert!(!bars.is_shown());
        assert!(bars.pull_events().is_none());
        assert!(bars.push_events().is_none());
        let digest = Digest::sha256_of(b"x");
        assert!(bars.blob_bar(&digest, 1).is_hidden());
        assert!(bars.layer_bar(0, 1, 1).is_hidden());
    }

    #[test]
    fn short_digests() {
        let digest = Digest::sha256_of(b"");
        assert_eq!(short_digest(&digest), "sha256:e3b0c44298fc");
    }
}
