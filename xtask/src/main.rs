//! Project automation: `cargo xtask <command>`. See `cargo xtask --help`.

mod bench;
mod bench_operator;
mod cmd;
mod crdgen;
mod docs;
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
    /// The whole test suite: test bed, rustfmt, clippy, then every test with nextest.
    Test {
        /// Extra arguments for `cargo nextest run` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// Start the test bed's control plane, install the CRD, apply the sample WasmRuntime and
    /// show it. (Until the single-node cluster lands, this is the API demo.)
    Up,
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
    /// The Wasm shim on containerd 2.x: `ctr run` cold start vs runc (with/without the
    /// module cache), idle memory per container, wasi:http vs `wasmtime serve`.
    Shim,
}

fn main() -> Result<()> {
    cmd::default_target_dir();
    match Cli::parse().command {
        Command::Testbed => testbed::install_all(),
        Command::Crdgen => crdgen::write(),
        Command::Docs => docs::write(),
        Command::Test { nextest_args } => test(&nextest_args),
        Command::Up => up::run(),
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
        Command::Bench(Bench::Shim) => bench::shim(),
    }
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
    cmd::cargo(&args)?;
    eprintln!("xtask test: finished in {:.0?}", started.elapsed());
    Ok(())
}
