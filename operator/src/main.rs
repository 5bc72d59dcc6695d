use anyhow::Context;
use clap::{Parser, Subcommand};

/// wasm-operator: the WasmRuntime controller.
///
/// Turns each cluster-scoped `WasmRuntime` (wasmruntime.dev/v1alpha1) into a RuntimeClass that
/// schedules only onto nodes where the bundled Wasmtime shim was installed and verified, and
/// drives the installer DaemonSet node by node.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the WasmRuntime CustomResourceDefinition as YAML (the content of crds/).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            let yaml = wasm_operator::crdgen::crd_yaml().context("generating the CRD")?;
            print!("{yaml}");
        }
    }
    Ok(())
}
