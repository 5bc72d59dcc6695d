//! Running commands, with the command line in every error.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Build into the cache unless the caller chose a target dir: a fresh clone on the same machine
/// then reuses earlier builds.
pub fn default_target_dir() {
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        // SAFETY: called first thing in main, before any thread exists.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CARGO_TARGET_DIR", testbed::paths::cargo_target());
        }
    }
}

/// Run a command to completion; fail with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Run a command and return its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo <args>` in the workspace root, without the `CARGO_PKG_*`/`CARGO_MANIFEST_*`
/// variables `cargo run` gave xtask: build scripts that watch them (ring's does) would
/// otherwise rerun, and everything above them rebuild, whenever a build alternates between
/// xtask and a shell.
pub fn cargo_command(args: &[&str]) -> Command {
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args).current_dir(workspace_root());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
        {
            c.env_remove(&*k);
        }
    }
    c
}

pub fn cargo(args: &[&str]) -> Result<()> {
    run(&mut cargo_command(args))
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf()
    })
}

/// Replace the part of a generated Markdown file between `<!-- <name>:start -->` and
/// `<!-- <name>:end -->` (appended when missing), so each benchmark owns its section.
pub fn update_doc_section(file: &str, name: &str, body: &str) -> Result<()> {
    let path = workspace_root().join(file);
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let section = format!("{start}\n{body}\n{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: updated the {name} section of {file}");
    Ok(())
}

/// Writes the shim's Wasm test programs (`shim/examples/fixtures.rs`) into `dir`, built in
/// the debug profile: its dependencies are the tests' own build.
pub fn wasm_fixtures(dir: &std::path::Path) -> Result<()> {
    let dir = dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", dir.display()))?;
    cargo(&[
        "run",
        "--quiet",
        "--locked",
        "-p",
        "containerd-shim-wasmtime",
        "--example",
        "fixtures",
        "--",
        dir,
    ])
}

/// rustc flags of the release shim's binary: linked statically against glibc's archives
/// (and position-dependent, as shim/build.rs links every build). containerd execs the
/// binary for `start` and `delete` of every container and waits for both; a static one
/// skips the dynamic loader (0.5 ms of a 1.4 ms `delete` here, docs/benchmarks.md) and a
/// node needs no library. Only the binary may get them, hence `cargo rustc`: as RUSTFLAGS
/// they would reach the proc-macro crates, which they break. images/Dockerfile runs the
/// same command (a test in images.rs holds it to this).
pub const STATIC_SHIM: &[&str] = &[
    "rustc",
    "--release",
    "--locked",
    "-p",
    "containerd-shim-wasmtime",
    "--bin",
    "containerd-shim-wasmtime-v1",
    "--",
    "-C",
    "target-feature=+crt-static",
    "-C",
    "relocation-model=static",
];

/// Builds the release shim (static, [`STATIC_SHIM`]; libseccomp is an archive anyway,
/// `.cargo/config.toml`: the binary nodes get) and returns its path.
pub fn release_shim() -> Result<std::path::PathBuf> {
    cargo(STATIC_SHIM)?;
    let target = std::env::var("CARGO_TARGET_DIR").context("xtask sets CARGO_TARGET_DIR")?;
    Ok(std::path::Path::new(&target).join("release/containerd-shim-wasmtime-v1"))
}
