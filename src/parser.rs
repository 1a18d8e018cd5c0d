//! Helpers for line-oriented DSLs.
//!
//! Build tools that drive metalor describe their steps in small text formats
//! (one instruction a line, `#` comments, Dockerfile-style exec arrays and
//! `${NAME}` expansions). These helpers give every such format the same
//! rules, so line numbers in error messages, comment handling and variable
//! expansion agree across tools. The behaviour matches upstream `metalor`
//! 0.3.2 exactly, with one deliberate fix documented on
//! [`interpolate_braced_variables`].
#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;

/// One line of a DSL source that carries content.
///
/// `number` is the 1-based physical line number in the source, so a caller
/// can point an error at the line the user actually wrote even though blank
/// and comment lines were skipped. `text` borrows the trimmed line from the
/// source instead of copying it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct SignificantLine<'a> {
    /// 1-based number of the physical line, counting blank and comment lines.
    pub number: usize,
    /// The line with surrounding whitespace (Unicode `trim`) removed.
    pub text: &'a str,
}

/// Yields the lines of `source` that are neither blank nor comments.
///
/// Lines are split with [`str::lines`], so `\n` and `\r\n` end a line and a
/// bare `\r` does not. Each line is trimmed on both sides; a line that is
/// then empty, or whose first character is `#`, is skipped. A `#` later in
/// the line is ordinary text: the formats built on this have no inline
/// comments, no quoting and no line continuation, which keeps them
/// predictable.
pub fn significant_lines(source: &str) -> impl Iterator<Item = SignificantLine<'_>> {
    source
        .lines()
        .enumerate()
        .filter_map(|(index, line)| significant_line(index + 1, line))
}

/// Builds the [`SignificantLine`] for one physical line, or `None` when the
/// line carries nothing.
fn significant_line(number: usize, line: &str) -> Option<SignificantLine<'_>> {
    let text = line.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    Some(SignificantLine { number, text })
}

/// Reports whether `value` is a C-style identifier: an ASCII letter or `_`,
/// then ASCII letters, digits or `_`.
///
/// Variable names in the DSLs follow shell conventions; restricting them to
/// ASCII keeps them valid as environment variable names on every platform.
/// The empty string is not an identifier.
pub fn valid_identifier(value: &str) -> bool {
    let mut chars = value.chars();
    let starts_well = chars
        .next()
        .is_some_and(|first| first == '_' || first.is_ascii_alphabetic());
    starts_well && chars.all(|rest| rest == '_' || rest.is_ascii_alphanumeric())
}

/// Parses an exec-form command such as `["cc", "-c", "main.c"]`.
///
/// The input (trimmed of surrounding whitespace) must be a JSON array of
/// strings with at least one element, the executable. JSON escapes are
/// decoded and empty strings are allowed as elements. Requiring the `[`
/// up front gives a clear message for the common mistake of writing a
/// shell-form command where an exec form is expected.
///
/// # Errors
/// * `exec-form arrays must use JSON array syntax` when the trimmed input
///   does not start with `[` (this includes empty input and JSON strings);
/// * `invalid exec-form array`, with serde's message as its cause, when the
///   text is not a JSON array of strings (non-string elements, trailing
///   commas, trailing text);
/// * `exec-form arrays must not be empty` for `[]`.
pub fn parse_exec_array(raw: &str) -> Result<Vec<String>> {
    let trimmed = raw.trim();
    if !trimmed.starts_with('[') {
        bail!("exec-form arrays must use JSON array syntax");
    }
    let argv: Vec<String> = serde_json::from_str(trimmed).context("invalid exec-form array")?;
    if argv.is_empty() {
        bail!("exec-form arrays must not be empty");
    }
    Ok(argv)
}

/// Expands every `${NAME}` in `value` from `variables`.
///
/// Only `${` starts an expansion: `$NAME`, a lone `$` and a stray `}` are
/// kept literally, and there is no `$$` escape (`$${A}` is `$` followed by
/// the value of `A`). The name runs to the first `}`, so braces do not nest.
/// Substituted values are not scanned again, which keeps expansion
/// single-pass and immune to values that happen to contain `${`.
///
/// A name must be a [`valid_identifier`] unless `variables` has an entry
/// under that exact string; this lets a caller deliberately allow names such
/// as `bad-name`, the empty name or ` A ` (names are not trimmed).
/// `variable_kind` (for example `ARG`) is used only in error messages.
///
/// **Deliberate divergence from upstream:** text outside expansions is
/// copied as UTF-8, so non-ASCII characters survive. Upstream copied it
/// byte by byte as Latin-1 characters, turning `é` into `Ã©`; no caller can
/// have wanted that.
///
/// # Errors
/// * `unterminated ${NAME} expansion` when a `${` has no closing `}`;
/// * `invalid {variable_kind} reference {name}` for a name that is neither
///   an identifier nor a key of `variables`;
/// * `undefined {variable_kind} {name}` for an identifier missing from
///   `variables`.
pub fn interpolate_braced_variables(
    value: &str,
    variables: &BTreeMap<String, String>,
    variable_kind: &str,
) -> Result<String> {
    let mut output = String::with_capacity(value.len());
    let mut rest = value;
    // `$`, `{` and `}` are ASCII, so every index found below is a char
    // boundary and slicing keeps multi-byte characters whole.
    while let Some(start) = rest.find("${") {
        output.push_str(&rest[..start]);
        let after_open = &rest[start + 2..];
        let close = after_open
            .find('}')
            .ok_or_else(|| anyhow!("unterminated ${{NAME}} expansion"))?;
        let name = &after_open[..close];
        output.push_str(lookup_variable(name, variables, variable_kind)?);
        rest = &after_open[close + 1..];
    }
    output.push_str(rest);
    Ok(output)
}

/// Resolves one expansion name, distinguishing a malformed name from a
/// well-formed one that is simply not defined.
fn lookup_variable<'v>(
    name: &str,
    variables: &'v BTreeMap<String, String>,
    variable_kind: &str,
) -> Result<&'v str> {
    match variables.get(name) {
        Some(value) => Ok(value),
        None if valid_identifier(name) => bail!("undefined {variable_kind} {name}"),
        None => bail!("invalid {variable_kind} reference {name}"),
    }
}
