//! `cargo xtask bench installer`: the release build of wasm-installer installing the
//! release build of the Wasmtime shim into real containerd 1.6, 1.7 and 2.x from the test
//! bed, each restarted by the installer tests' supervisor (installer/tests/support: a
//! restart loop like systemd's `Restart=always`, `RestartSec=100ms`).
//!
//! The measuring code is the `real_shim_installed_runs_wasm` test itself (which also runs
//! a Wasm container through the installed shim), run [`RUNS`] times, one test at a time so
//! the versions do not share the 2 cores; each run appends its figures as a JSON line to
//! `$INSTALLER_BENCH_OUT`. Writes the `installer` section of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

pub const RUNS: usize = 5;
const TEST: &str = "real_shim_installed_runs_wasm";
const VERSIONS: [&str; 3] = ["1.6.20", "1.7.24", "2.1.9"];

/// One test run's figures for one containerd version (milliseconds).
#[derive(Debug, Clone)]
pub struct Sample {
    pub install_ms: f64,
    pub installer_reported_ms: f64,
    pub cri_gap_ms: f64,
    pub noop_ms: f64,
    pub noop_restarts: u64,
    pub shim_bytes: u64,
}

/// Samples by containerd version.
pub type Samples = BTreeMap<String, Vec<Sample>>;

/// What one bench run measured, with the conditions it ran under.
pub struct Figures {
    pub samples: Samples,
    pub date: String,
    /// `/proc/loadavg`'s first three fields before and after.
    pub load: (String, String),
}

pub fn run() -> Result<Figures> {
    cmd::cargo(&["build", "--release", "--locked", "-p", "wasm-installer"])?;
    let shim = cmd::release_shim()?;
    let target = PathBuf::from(std::env::var("CARGO_TARGET_DIR").context("xtask sets it")?);
    let installer = target.join("release/wasm-installer");
    let work = tempfile::tempdir()?;
    let out = work.path().join("figures.jsonl");
    let date = cmd::output(Command::new("date").args(["-u", "+%F"]))?
        .trim()
        .to_owned();
    let before = load_average();
    for run in 1..=RUNS {
        eprintln!("bench installer: run {run}/{RUNS}");
        cmd::run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "nextest",
                    "run",
                    "--locked",
                    "-p",
                    "wasm-installer",
                    "--test",
                    "lifecycle_real",
                    "--test-threads",
                    "1",
                    TEST,
                ])
                .env("WASM_INSTALLER_BINARY", &installer)
                .env("SHIM_BINARY", &shim)
                .env("INSTALLER_BENCH_OUT", &out)
                .current_dir(cmd::workspace_root()),
        )?;
    }
    let load = (before, load_average());
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    Ok(Figures {
        samples: parse(&text)?,
        date,
        load,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn parse(text: &str) -> Result<Samples> {
    let mut figures = Samples::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let f = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("{k} missing in {line}"))
        };
        let version = v["containerd"].as_str().context("containerd version")?;
        figures.entry(version.to_owned()).or_default().push(Sample {
            install_ms: f("install_ms")?,
            installer_reported_ms: f("installer_reported_ms")?,
            cri_gap_ms: f("cri_gap_ms")?,
            noop_ms: f("noop_ms")?,
            noop_restarts: f("noop_restarts")? as u64,
            shim_bytes: f("shim_bytes")? as u64,
        });
    }
    for version in VERSIONS {
        let n = figures.get(version).map_or(0, Vec::len);
        if n != RUNS {
            bail!("containerd {version}: {n} samples, expected {RUNS}");
        }
    }
    Ok(figures)
}

/// Median and range of one figure, in seconds.
fn stat(samples: &[Sample], pick: impl Fn(&Sample) -> f64) -> String {
    let mut v: Vec<f64> = samples.iter().map(pick).collect();
    v.sort_by(f64::total_cmp);
    format!(
        "{:.2} s ({:.2}-{:.2})",
        v[v.len() / 2] / 1e3,
        v[0] / 1e3,
        v[v.len() - 1] / 1e3
    )
}

/// The Markdown section for docs/benchmarks.md.
pub fn report(bench: &Figures) -> String {
    let figures = &bench.samples;
    let shim_mib = figures
        .values()
        .flatten()
        .map(|s| s.shim_bytes)
        .max()
        .unwrap_or(0) as f64
        / (1 << 20) as f64;
    let mut out = format!(
        "## Installer: real containerd 1.6 / 1.7 / 2.x (`cargo xtask bench installer`, {date})\n\n\
         {cpus} CPUs, load average {before} before and {after} after.\n\n\
         Command: `cargo xtask bench installer`. It builds wasm-installer and \
         containerd-shim-wasmtime-v1 ({shim_mib:.1} MiB) with `--release`, then runs \
         `cargo nextest run -p wasm-installer --test lifecycle_real --test-threads 1 {TEST}` \
         {RUNS} times with `WASM_INSTALLER_BINARY` / `SHIM_BINARY` pointing at them. Each run \
         starts a fresh containerd per version (its Debian default config, private paths) \
         under a supervisor that restarts it like systemd's `Restart=always` \
         (`RestartSec=100ms`); `wasm-installer install --once --restart signal` copies the \
         shim, edits the config, SIGTERMs containerd and verifies our handler over CRI; a \
         Wasm container then runs through the installed shim; the same install runs again. \
         These machines have no systemd: a node's `systemctl restart containerd` (the \
         installer's D-Bus `RestartUnit`) adds systemd's own stop/start time, not measured here.\n\n\
         - start -> verified: wall time of `install --once` (process start to exit after CRI \
         verification); the installer's own figure in brackets;\n\
         - CRI gap: the longest time without an answer to CRI `Version` polled every 5 ms \
         during that install (the restart window a kubelet sees);\n\
         - no-op re-run: wall time of the second `install --once`, and how often the \
         supervisor had to start containerd during it.\n\n\
         Medians (min-max) of {RUNS} runs:\n\n\
         | containerd (Debian package) | start -> verified | (installer-reported) | CRI gap | no-op re-run | restarts on no-op |\n\
         |---|---|---|---|---|---|\n",
        date = bench.date,
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
        before = bench.load.0,
        after = bench.load.1,
    );
    for (version, samples) in figures {
        let pkg = testbed::versions::containerd_package(version)
            .and_then(|p| testbed::paths::deb_version(&p))
            .unwrap_or_else(|| "?".into());
        let restarts: u64 = samples.iter().map(|s| s.noop_restarts).sum();
        let _ = writeln!(
            out,
            "| {version} ({pkg}) | {} | {} | {} | {} | {restarts} in {} runs |",
            stat(samples, |s| s.install_ms),
            stat(samples, |s| s.installer_reported_ms),
            stat(samples, |s| s.cri_gap_ms),
            stat(samples, |s| s.noop_ms),
            samples.len(),
        );
    }
    let worst = |pick: fn(&Sample) -> f64| {
        figures
            .values()
            .map(|s| {
                let mut v: Vec<f64> = s.iter().map(pick).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2] / 1e3
            })
            .fold(0.0, f64::max)
    };
    let restarts: u64 = figures.values().flatten().map(|s| s.noop_restarts).sum();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let (verified, gap) = (worst(|s| s.install_ms), worst(|s| s.cri_gap_ms));
    let _ = write!(
        out,
        "\nGoals (issue 5), against the worst version's median: start -> verified <= 5 s: \
         {verified:.2} s, {}; CRI unavailable <= 1 s: {gap:.2} s, {}; zero restarts on a \
         no-op: {restarts}, {}.\n",
        verdict(verified <= 5.0),
        verdict(gap <= 1.0),
        verdict(restarts == 0),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(version: &str, install_ms: f64) -> String {
        format!(
            r#"{{"containerd":"{version}","shim_bytes":1048576,"install_ms":{install_ms},"installer_reported_ms":900,"cri_gap_ms":300,"noop_ms":40,"noop_restarts":0}}"#
        )
    }

    #[test]
    fn medians_and_goals() {
        let mut text = String::new();
        for version in VERSIONS {
            for ms in [1000.0, 5000.0, 1200.0, 1100.0, 1300.0] {
                text.push_str(&line(version, ms));
                text.push('\n');
            }
        }
        let section = report(&Figures {
            samples: parse(&text).unwrap(),
            date: "2026-01-01".into(),
            load: ("1.00 1.00 1.00".into(), "2.00 2.00 2.00".into()),
        });
        assert!(
            section.contains("| 1.20 s (1.00-5.00) | 0.90 s (0.90-0.90) | 0.30 s (0.30-0.30)"),
            "{section}"
        );
        assert!(section.contains("<= 5 s: 1.20 s, met"), "{section}");
        assert!(
            section.contains("load average 1.00 1.00 1.00 before"),
            "{section}"
        );
        assert!(
            section.contains("zero restarts on a no-op: 0, met"),
            "{section}"
        );
    }

    #[test]
    fn a_missing_version_is_an_error() {
        let err = parse(&line("1.6.20", 1.0)).unwrap_err().to_string();
        assert!(err.contains("1.6.20: 1 samples"), "{err}");
    }
}
