//! Project automation: `cargo xtask <command>`. See `cargo xtask --help`.

mod bench;
mod bench_flap;
mod bench_installer;
mod bench_operator;
mod bench_reliability;
mod cmd;
mod crdgen;
mod docs;
mod e2e;
mod images;
mod testbed;
mod up;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Automation for the WasmRuntime operator workspace.
#[derive(Parser)]
#[command(about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and build every part of the test bed (apt packages, Kubernetes and etcd built
    /// with Go, helm, kwok, containerd 1.6/1.7/2.x, runc, CNI plugins, cargo-nextest) into the
    /// cache (`~/.cache/wasmruntime`, or $WASMRUNTIME_CACHE). Parts already there are reused.
    Testbed,
    /// Regenerate crds/ from the Rust API types.
    Crdgen,
    /// Regenerate the chart's README.md (from values.yaml) and docs/reference.md (from the CRD).
    Docs,
    /// The whole test suite: test bed, rustfmt, clippy, every test with nextest, then the
    /// end-to-end suite (`xtask e2e`) on containerd 2.x and 1.7.
    Test {
        /// Extra arguments for `cargo nextest run` (e.g. a test name filter); with any, only
        /// the matching nextest tests run (no end-to-end suite).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// A real single-node cluster on this machine (etcd, kube-apiserver, controller-manager,
    /// scheduler, containerd + runc, kubelet, kube-proxy, a CNI bridge with no uplink), then
    /// our images imported, the chart installed, the sample WasmRuntime applied and Ready, and
    /// a Wasm Job run. Idempotent: a running cluster is reused. State: <cache>/cluster.
    Up {
        /// containerd version of the node: 2 (default), 1.7 or 1.6. A running cluster with
        /// another version is torn down and started again.
        #[arg(long, default_value = "2")]
        containerd: String,
        /// Build the operator/installer/shim images in release mode (default: dev build).
        #[arg(long)]
        release: bool,
        /// Write the time of each milestone into docs/benchmarks.md.
        #[arg(long)]
        record: bool,
        /// Internal: run the cluster's process supervisor on this plan file.
        #[arg(long, hide = true, value_name = "PLAN")]
        supervise: Option<std::path::PathBuf>,
    },
    /// The end-to-end suite on a fresh single-node cluster per containerd version: install
    /// with helm, Wasm Jobs, wasi:http behind a Service, volumes and limits, a day-2 re-roll
    /// under load, a broken install rolled back, deletion and `helm uninstall`, and
    /// docs/getting-started.md run verbatim. Tears the cluster down at the end.
    E2e {
        /// containerd versions, in order (2, 1.7, 1.6).
        #[arg(long, value_delimiter = ',', default_value = "2,1.7")]
        containerd: Vec<String>,
        /// Write the step timings into docs/benchmarks.md.
        #[arg(long)]
        record: bool,
        /// Leave the last cluster running (`cargo xtask down` removes it).
        #[arg(long)]
        keep: bool,
    },
    /// Stop the cluster of `xtask up` and put the machine back as it was (processes, mounts,
    /// iptables rules, the bridge, kernel settings, files).
    Down,
    /// OCI image tarballs of wasm-operator and wasm-installer (with the shim), without a
    /// Docker daemon, ready for `ctr images import`. Reproducible: same sources, same digests.
    Images {
        /// Use a dev build instead of release (faster; what the tests use).
        #[arg(long)]
        dev: bool,
        /// Directory for the tarballs (default: $CARGO_TARGET_DIR/images).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Benchmarks; each writes its section of docs/benchmarks.md.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// The operator against many kwok nodes: apply -> Ready, write requests, peak RSS.
    Operator {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value = "10%")]
        max_unavailable: String,
    },
    /// The operator while the selector label of many kwok nodes flaps: RSS over time,
    /// reconciles per second against label changes, writes, convergence once it stops;
    /// writes its section of docs/reliability.md.
    Flap {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Seconds between two rounds of label flips (5% of the nodes each).
        #[arg(long, default_value_t = 3)]
        every_secs: u64,
    },
    /// The Wasm shim on containerd 2.x: `ctr run` cold start vs runc (with/without the
    /// module cache), idle memory per container, wasi:http vs `wasmtime serve`.
    Shim {
        /// Run only this part and replace only its subsection of the shim section.
        #[arg(long, value_enum)]
        only: Option<bench::ShimPart>,
    },
    /// The installer on real containerd 1.6/1.7/2.x: start -> verified, the CRI gap during
    /// the restart, the no-op re-run and its restarts (medians of 5 runs).
    Installer,
    /// The config editor's fuzz test with many generated inputs (release build); writes
    /// its row of docs/reliability.md.
    Fuzz {
        #[arg(long, default_value_t = 1_000_000)]
        cases: u64,
    },
    /// The shim's load test at full size (release shim): many containers at once, many
    /// start/stop cycles, nothing left behind; writes its row of docs/reliability.md.
    Load {
        #[arg(long, default_value_t = 200)]
        running: usize,
        #[arg(long, default_value_t = 1000)]
        cycles: usize,
    },
}

fn main() -> Result<()> {
    cmd::default_target_dir();
    match Cli::parse().command {
        Command::Testbed => testbed::install_all(),
        Command::Crdgen => crdgen::write(),
        Command::Docs => docs::write(),
        Command::Test { nextest_args } => test(&nextest_args),
        Command::Up {
            containerd,
            release,
            record,
            supervise,
        } => match supervise {
            Some(plan) => up::supervise(&plan),
            None => up::run(&containerd, release, record),
        },
        Command::Down => up::down(),
        Command::E2e {
            containerd,
            record,
            keep,
        } => e2e::run(&containerd, record, keep, None),
        Command::Images { dev, out } => {
            let out = out.unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_default())
                    .join("images")
            });
            for (reference, tar, digest) in images::build(dev, &out)? {
                println!("{reference} {digest} {}", tar.display());
            }
            Ok(())
        }
        Command::Bench(Bench::Operator {
            nodes,
            max_unavailable,
        }) => {
            testbed::install_all()?;
            let params = bench_operator::Params {
                nodes,
                max_unavailable,
            };
            let figures = bench_operator::run(&params)?;
            let section = bench_operator::report(&params, &figures);
            println!("{section}");
            cmd::update_doc_section("docs/benchmarks.md", "operator", &section)
        }
        Command::Bench(Bench::Flap {
            nodes,
            minutes,
            every_secs,
        }) => {
            testbed::install_all()?;
            let params = bench_flap::Params {
                nodes,
                minutes,
                every_secs,
            };
            let section = bench_flap::report(&params, &bench_flap::run(&params)?);
            println!("{section}");
            cmd::update_doc_section("docs/reliability.md", "flap", &section)
        }
        Command::Bench(Bench::Shim { only }) => bench::shim(only),
        Command::Bench(Bench::Fuzz { cases }) => bench_reliability::fuzz(cases),
        Command::Bench(Bench::Load { running, cycles }) => bench_reliability::load(running, cycles),
        Command::Bench(Bench::Installer) => {
            testbed::install_all()?;
            let section = bench_installer::report(&bench_installer::run()?);
            println!("{section}");
            cmd::update_doc_section("docs/benchmarks.md", "installer", &section)
        }
    }
}

fn reliability_rows_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target"))
        .join("reliability-rows")
}

/// The `faults` section of docs/reliability.md, from the rows the whole suite recorded.
fn write_reliability_doc(rows: &std::path::Path) -> Result<()> {
    let rows = ::testbed::reliability::collect(rows)?;
    anyhow::ensure!(
        !rows.is_empty(),
        "the test run recorded no reliability rows (is {} passed to the tests?)",
        ::testbed::reliability::DIR_ENV
    );
    let body = format!(
        "Command: `cargo xtask test` (the whole suite; each row is recorded by its test after \
         its assertions passed, {} rows).\n\n{}",
        rows.len(),
        ::testbed::reliability::render(&rows)
    );
    cmd::update_doc_section("docs/reliability.md", "faults", &body)
}

fn test(nextest_args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    testbed::install_all()?;
    cmd::cargo(&["fmt", "--all", "--check"])?;
    cmd::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    let mut args = vec![
        "nextest",
        "run",
        "--workspace",
        "--locked",
        "--no-fail-fast",
    ];
    args.extend(nextest_args.iter().map(String::as_str));
    // The fault, hostile-input and privilege tests record their rows of
    // docs/reliability.md here; a fresh directory per run.
    let rows = reliability_rows_dir();
    let _ = std::fs::remove_dir_all(&rows);
    std::fs::create_dir_all(&rows)?;
    cmd::run(cmd::cargo_command(&args).env(::testbed::reliability::DIR_ENV, &rows))?;
    if nextest_args.is_empty() {
        e2e::run(
            &["2".to_owned(), "1.7".to_owned()],
            false,
            false,
            Some(&rows),
        )?;
        write_reliability_doc(&rows)?;
    }
    eprintln!("xtask test: finished in {:.0?}", started.elapsed());
    Ok(())
}
