//! `cargo xtask images`, run as users run it (dev build, to share the test build): the same
//! sources give the same digests, and the images import into real containerd 2.x and run
//! there through runc with nothing missing (libraries, CA file, user, the shim payload).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use testbed::containerd::{Containerd, ContainerdOptions};
use testbed::versions::CONTAINERD_2;

fn root() -> PathBuf {
    testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo xtask images --dev --out <out>`: (reference, digest, tarball) per image.
fn build_images(out: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["xtask", "images", "--dev", "--out"])
        .arg(out)
        .current_dir(root())
        .output()
        .context("running cargo xtask images")?;
    ensure!(
        output.status.success(),
        "cargo xtask images failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            ensure!(parts.len() == 3, "unexpected line {line:?}");
            Ok((parts[0].into(), parts[1].into(), parts[2].into()))
        })
        .collect()
}

/// The image config inside an image-layout tarball (index -> manifest -> config).
fn image_config(tar: &Path) -> Result<serde_json::Value> {
    let mut blobs = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(tar)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        blobs.insert(path, bytes);
    }
    let blob = |digest: &serde_json::Value| -> Result<serde_json::Value> {
        let hex = digest
            .as_str()
            .context("digest")?
            .trim_start_matches("sha256:");
        let bytes = blobs
            .get(&format!("blobs/sha256/{hex}"))
            .context("missing blob")?;
        Ok(serde_json::from_slice(bytes)?)
    };
    let index: serde_json::Value =
        serde_json::from_slice(blobs.get("index.json").context("index")?)?;
    let manifest = blob(&index["manifests"][0]["digest"])?;
    blob(&manifest["config"]["digest"])
}

#[test]
fn images_are_reproducible_and_run_on_containerd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first = build_images(&dir.path().join("a"))?;
    let second = build_images(&dir.path().join("b"))?;
    ensure!(first.len() == 2, "{first:?}");
    for (a, b) in first.iter().zip(&second) {
        ensure!(a.0 == b.0 && a.1 == b.1, "not reproducible: {a:?} vs {b:?}");
        ensure!(
            std::fs::read(&a.2)? == std::fs::read(&b.2)?,
            "tarballs differ"
        );
    }
    let by_name = |name: &str| {
        first
            .iter()
            .find(|(r, _, _)| r.contains(&format!("/{name}:")))
            .cloned()
            .with_context(|| format!("no {name} image"))
    };
    let (operator, _, operator_tar) = by_name("wasm-operator")?;
    let (installer, _, installer_tar) = by_name("wasm-installer")?;

    let config = image_config(&operator_tar)?;
    ensure!(config["config"]["User"] == "65532:65532", "{config}");
    ensure!(
        config["config"]["Labels"]["org.opencontainers.image.version"] == env!("CARGO_PKG_VERSION"),
        "{config}"
    );

    // Our shim must be there for the daemon; this test only runs runc containers.
    let shim = dir.path().join("unused-shim");
    std::fs::write(&shim, "#!/bin/sh\nexit 1\n")?;
    let c = Containerd::start(
        CONTAINERD_2,
        &ContainerdOptions {
            shim,
            env: Vec::new(),
        },
    )?;
    c.import(&operator_tar, None)?;
    c.import(&installer_tar, None)?;
    let run = |image: &str, id: &str, args: &[&str]| -> Result<String> {
        let out = c
            .ctr()
            .args(["run", "--rm", image, id])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "{image} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The entrypoint with --help: every library it loads is in the image.
    let help = run(
        &operator,
        "operator",
        &["/usr/local/bin/wasm-operator", "--help"],
    )?;
    ensure!(help.contains("Usage"), "{help}");
    let help = run(
        &installer,
        "installer",
        &["/usr/local/bin/wasm-installer", "--help"],
    )?;
    ensure!(help.contains("Usage"), "{help}");
    // The payload the installer copies onto nodes runs from the image too.
    let version = run(
        &installer,
        "shim",
        &[
            "/usr/local/lib/wasmruntime/containerd-shim-wasmtime-v1",
            "--version",
        ],
    )?;
    ensure!(version.contains("containerd-shim-wasmtime"), "{version}");
    Ok(())
}
