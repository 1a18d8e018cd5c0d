//! Turns a tiny build recipe into a build-cell request file and reads it back.
//!
//! This is the hand-off a build tool performs before re-executing itself in
//! a cell: parse its own DSL with the `metalor` parser helpers, describe the
//! run as a portable `BuildCellSpec`, and write the request into the cell's
//! scratch directory. Nothing is executed, so the example runs anywhere:
//!
//! ```text
//! cargo run --example build_cell_request
//! ```

use anyhow::{bail, Context, Result};
use metalor::{
    build_cell_request_path, interpolate_braced_variables, parse_exec_array,
    read_build_cell_request, significant_lines, valid_identifier, write_build_cell_request,
    BuildCellSpec, CleanupPolicy, CommandSpec, HostPath, NetworkPolicy, ResourceLimits,
    WorkspaceSeed,
};
use std::collections::BTreeMap;
use std::path::Path;

const RECIPE: &str = r#"
# A recipe: ARG and ENV set variables, WORKDIR picks the cwd, RUN is the
# command in exec form.
ARG CHANNEL=stable
ARG TARGET=x86_64

WORKDIR /workspace
ENV PATH=/usr/bin:/bin
ENV LABEL=${CHANNEL}-${TARGET} (naïve build)
RUN ["/bin/sh", "-c", "echo building ${CHANNEL} for ${TARGET}"]
"#;

/// The pieces of the recipe the build cell needs.
#[derive(Default)]
struct Recipe {
    args: BTreeMap<String, String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    run: Option<Vec<String>>,
}

fn main() -> Result<()> {
    let recipe = parse_recipe(RECIPE)?;
    let base = std::env::temp_dir().join(format!("metalor-example-{}", std::process::id()));
    let result = write_and_read_back(&recipe, &base);
    // Remove the scratch tree whatever happened; the example leaves no trace.
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// Writes the request for `recipe` under `base`, reads it back and checks the
/// round trip, printing what a backend would see.
fn write_and_read_back(recipe: &Recipe, base: &Path) -> Result<()> {
    let spec = build_spec(recipe, base)?;
    let request = build_cell_request_path(spec.scratch.as_path());
    write_build_cell_request(&request, &spec)?;
    let loaded = read_build_cell_request(&request)?;
    if loaded != spec {
        bail!("request file {} did not round-trip", request.display());
    }
    print_summary(&request, &loaded);
    Ok(())
}

/// Parses the recipe line by line; errors name the recipe line.
fn parse_recipe(source: &str) -> Result<Recipe> {
    let mut recipe = Recipe::default();
    for line in significant_lines(source) {
        apply_instruction(&mut recipe, line.text)
            .with_context(|| format!("recipe line {}", line.number))?;
    }
    Ok(recipe)
}

/// Applies one `KEYWORD rest` instruction to the recipe.
fn apply_instruction(recipe: &mut Recipe, text: &str) -> Result<()> {
    let (keyword, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim();
    match keyword {
        "ARG" => {
            let (name, value) = assignment(rest)?;
            recipe.args.insert(name, value);
        }
        "ENV" => {
            let (name, value) = assignment(rest)?;
            let value = interpolate_braced_variables(&value, &recipe.args, "ARG")?;
            recipe.env.push((name, value));
        }
        "WORKDIR" => recipe.workdir = Some(rest.to_string()),
        "RUN" => recipe.run = Some(expand_all(parse_exec_array(rest)?, &recipe.args)?),
        other => bail!("unknown instruction {other}"),
    }
    Ok(())
}

/// Splits `NAME=value`, insisting on an identifier so the name is usable in
/// `${NAME}` expansions later.
fn assignment(text: &str) -> Result<(String, String)> {
    let (name, value) = text.split_once('=').context("expected NAME=value")?;
    if !valid_identifier(name) {
        bail!("invalid variable name {name:?}");
    }
    Ok((name.to_string(), value.to_string()))
}

/// Expands `${ARG}` references in every exec-form element.
fn expand_all(argv: Vec<String>, args: &BTreeMap<String, String>) -> Result<Vec<String>> {
    argv.iter()
        .map(|element| interpolate_braced_variables(element, args, "ARG"))
        .collect()
}

/// Describes the recipe as a build cell rooted under `base`.
fn build_spec(recipe: &Recipe, base: &Path) -> Result<BuildCellSpec> {
    let mut run = recipe.run.clone().context("recipe has no RUN")?.into_iter();
    let executable = run.next().context("RUN has no executable")?;
    let cwd = recipe.workdir.clone().unwrap_or_else(|| "/".to_string());
    Ok(BuildCellSpec {
        root: HostPath::new(base.join("rootfs")),
        scratch: HostPath::new(base.join("scratch")),
        workspace_path: "/workspace".into(),
        workspace_seed: WorkspaceSeed::Empty,
        imports: Vec::new(),
        caches: Vec::new(),
        exports: Vec::new(),
        command: CommandSpec {
            cwd: cwd.into(),
            executable,
            argv: run.collect(),
        },
        env: recipe.env.clone(),
        network: NetworkPolicy::Disabled,
        limits: ResourceLimits {
            cpu_time_seconds: Some(300),
            ..ResourceLimits::default()
        },
        cleanup: CleanupPolicy::PreserveOnFailure,
    })
}

fn print_summary(request: &Path, spec: &BuildCellSpec) {
    println!("request file: {}", request.display());
    println!("cwd:          {}", spec.command.cwd.as_str());
    println!(
        "command:      {} {:?}",
        spec.command.executable, spec.command.argv
    );
    for (name, value) in &spec.env {
        println!("env:          {name}={value}");
    }
    println!("network:      {:?}", spec.network);
    println!("limits:       {:?}", spec.limits);
    println!("cleanup:      {:?}", spec.cleanup);
}
