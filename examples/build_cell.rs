//! A complete build-cell consumer: prepare a rootfs from an image, run one
//! job in a cell with a seeded workspace, a read-only import, a cache and
//! an export, then finalize. Run it as root (it uses mount, PID, UTS, IPC
//! and network namespaces):
//!
//! ```text
//! sudo cargo run --example build_cell -- /tmp/metalor-cell
//! sudo cargo run --example build_cell -- /tmp/metalor-cell docker.io/library/busybox:latest
//! ```
//!
//! Without an image reference the example builds a busybox image from the
//! host's static busybox (Debian's `busybox-static`), so it works offline.
//! The image is cached under `WORKDIR/cache`; a second run reuses it.
//!
//! The shape is the one every consumer follows: the program re-executes
//! itself (`build_cell_reexec_command` returns that `Command`) with a
//! hidden subcommand, here `__cell`, which reads the request file and calls
//! `run_build_cell` inside the namespaces; the outer side waits and calls
//! `finalize_build_cell`.

#[cfg(target_os = "linux")]
#[path = "../fixtures/src/lib.rs"]
mod fixtures;

#[cfg(target_os = "linux")]
fn main() {
    if let Err(err) = linux::main() {
        eprintln!("build_cell: {err:#}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("build cells run on Linux only");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs;
    use std::path::{Path, PathBuf};

    use anyhow::{bail, Context, Result};
    use metalor::{
        build_cell_reexec_command, finalize_build_cell, prepare_oci_rootfs,
        read_build_cell_request, run_build_cell, BuildCellSpec, CacheSpec, CleanupPolicy,
        CommandSpec, ExportSpec, HostPath, ImportSpec, NetworkPolicy, ResourceLimits,
        WorkspaceSeed,
    };

    /// The hidden subcommand the cell re-executes this program with.
    const INNER: &str = "__cell";

    const JOB: &str = r#"set -e
echo "building on $(uname -m) as $(id -u) in $(pwd)"
cat hello.txt /deps/greeting.txt > result.txt
count=$(cat /cache/runs 2>/dev/null || echo 0)
echo $((count + 1)) > /cache/runs
echo "run number $((count + 1)); network interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
"#;

    pub fn main() -> Result<()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.first().map(String::as_str) == Some(INNER) {
            return inner(&args[1..]);
        }
        let Some(workdir) = args.first() else {
            bail!("usage: build_cell WORKDIR [IMAGE]");
        };
        fs::create_dir_all(workdir).with_context(|| format!("create {workdir}"))?;
        let prefix = fs::canonicalize(workdir)?;
        let image = match args.get(1) {
            Some(reference) => reference.clone(),
            None => busybox_image(&prefix)?,
        };

        // 1. The rootfs, from a cached image layout.
        let rootfs = prepare_oci_rootfs(
            &image,
            &prefix,
            &prefix.join("package"),
            Some(&prefix.join("cache")),
            None,
        )?;
        println!("rootfs: {}", rootfs.display());

        // 2. Inputs on the host: a workspace seed, an import, a cache.
        let seed = prefix.join("seed");
        fs::create_dir_all(&seed)?;
        fs::write(seed.join("hello.txt"), "hello from the seed\n")?;
        let deps = prefix.join("deps");
        fs::create_dir_all(&deps)?;
        fs::write(deps.join("greeting.txt"), "and from a read-only import\n")?;

        let spec = BuildCellSpec {
            root: HostPath::new(&rootfs),
            scratch: HostPath::new(prefix.join("scratch")),
            workspace_path: "/workspace".into(),
            workspace_seed: WorkspaceSeed::SnapshotDir(HostPath::new(&seed)),
            imports: vec![ImportSpec {
                source: HostPath::new(&deps),
                destination: "/deps".into(),
            }],
            caches: vec![CacheSpec {
                source: HostPath::new(prefix.join("job-cache")),
                destination: "/cache".into(),
            }],
            exports: vec![ExportSpec {
                source: "/workspace/result.txt".into(),
                destination: HostPath::new(prefix.join("out/result.txt")),
            }],
            command: CommandSpec {
                cwd: "/workspace".into(),
                executable: "sh".into(),
                argv: vec!["-c".into(), JOB.into()],
            },
            env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
            network: NetworkPolicy::Disabled,
            limits: ResourceLimits {
                cpu_time_seconds: Some(60),
                memory_bytes: None,
                max_processes: None,
            },
            cleanup: CleanupPolicy::PreserveOnFailure,
        };

        // 3. Stage the scratch, re-execute into the cell, wait, finalize.
        let current_exe = std::env::current_exe()?;
        let status = build_cell_reexec_command(&current_exe, INNER, &prefix, &spec)?
            .status()
            .context("start the cell")?;
        let result = finalize_build_cell(&spec, status.success())?;
        println!(
            "cell exited with {status}; scratch preserved: {}",
            result.scratch_preserved
        );
        println!(
            "exported {}:\n{}",
            prefix.join("out/result.txt").display(),
            fs::read_to_string(prefix.join("out/result.txt")).unwrap_or_default()
        );
        if !status.success() {
            bail!(
                "the job failed; its scratch is kept at {}",
                prefix.join("scratch").display()
            );
        }
        Ok(())
    }

    /// The re-executed side: `__cell [--net] --build-cell-request PATH`.
    fn inner(args: &[String]) -> Result<()> {
        let request = args
            .iter()
            .position(|a| a == "--build-cell-request")
            .and_then(|i| args.get(i + 1))
            .context("missing --build-cell-request")?;
        let spec: BuildCellSpec = read_build_cell_request(Path::new(request))?;
        run_build_cell(&spec)
    }

    /// Writes a one-layer busybox image from the host's static busybox and
    /// returns its `oci:` reference.
    fn busybox_image(prefix: &Path) -> Result<String> {
        let busybox = super::fixtures::find_static_busybox()
            .context("no static busybox found: install busybox-static or pass an IMAGE")?;
        let layout: PathBuf = prefix.join("busybox-image");
        super::fixtures::write_busybox_layout(&layout, &busybox)
            .with_context(|| format!("write {}", layout.display()))?;
        Ok(format!("oci:{}:latest", layout.display()))
    }
}
