//! `cargo xtask crdgen`: write the CRD the operator generates into crds/ and its two
//! copies (the chart's crds/ and kustomize's config/crd/bases/), which a test keeps equal.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

const CRD_NAME: &str = "wasmruntime.dev_wasmruntimes.yaml";
const CRD_DIRS: &[&str] = &[
    "crds",
    "charts/wasm-runtime-operator/crds",
    "config/crd/bases",
];

pub fn write() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let yaml = cmd::output(
        Command::new(cargo)
            .args(["run", "--quiet", "--package", "wasm-operator", "--", "crd"])
            .current_dir(cmd::workspace_root()),
    )?;
    for dir in CRD_DIRS {
        let path = cmd::workspace_root().join(dir).join(CRD_NAME);
        std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    Ok(())
}
