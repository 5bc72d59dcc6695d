//! `cargo xtask crdgen`: write the CRD the operator generates into crds/.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

const CRD_FILE: &str = "crds/wasmruntime.dev_wasmruntimes.yaml";

pub fn write() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let yaml = cmd::output(
        Command::new(cargo)
            .args(["run", "--quiet", "--package", "wasm-operator", "--", "crd"])
            .current_dir(cmd::workspace_root()),
    )?;
    let path = cmd::workspace_root().join(CRD_FILE);
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
