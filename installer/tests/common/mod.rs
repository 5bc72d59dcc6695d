//! Shared helpers for the installer's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use wasm_installer::distro::{
    CONTAINERD_CONFIG, K0S_DROPIN_DIR, K0S_RENDERED_CRI, K3S_CONTAINERD_DIR, MICROK8S_TEMPLATE,
    RKE2_CONTAINERD_DIR,
};
use wasm_installer::{
    ContainerdVersion, Distro, HandlerName, HostFacts, RuntimeName, RuntimeSpec, SystemdCgroupMode,
};

pub fn fixtures_dir() -> PathBuf {
    testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `defaults/...` come from installer/fixtures (embedded by the crate); the rest from
/// tests/fixtures/input.
pub fn fixture(name: &str) -> String {
    let path = match name.strip_prefix("defaults/") {
        Some(rest) => testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/defaults")
            .join(rest),
        None => fixtures_dir().join("input").join(name),
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Compares with tests/fixtures/golden/<name>. `BLESS=1` rewrites the file (then
/// review the diff by eye before committing).
pub fn assert_golden(name: &str, actual: &str) {
    let path = fixtures_dir().join("golden").join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden {} missing ({e}); run with BLESS=1 once and review it",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("golden", "actual")
            .to_string();
        panic!("{name} differs from its golden:\n{diff}");
    }
}

pub fn v(s: &str) -> ContainerdVersion {
    ContainerdVersion::parse(s).unwrap()
}

pub fn spec(handler: &str, mode: SystemdCgroupMode) -> RuntimeSpec {
    RuntimeSpec::for_runtime(
        &RuntimeName::new(handler).unwrap(),
        HandlerName::new(handler).unwrap(),
        mode,
    )
}

/// Where a distro keeps the file we edit, and the rendered/effective config.
pub fn target_path(distro: Distro, version: &ContainerdVersion, handler: &str) -> PathBuf {
    match distro {
        Distro::Containerd => CONTAINERD_CONFIG.into(),
        Distro::MicroK8s => MICROK8S_TEMPLATE.into(),
        Distro::K3s | Distro::Rke2 => {
            let dir = if distro == Distro::K3s {
                K3S_CONTAINERD_DIR
            } else {
                RKE2_CONTAINERD_DIR
            };
            let file = if version.major >= 2 {
                "config-v3.toml.tmpl"
            } else {
                "config.toml.tmpl"
            };
            Path::new(dir).join(file)
        }
        Distro::K0s => Path::new(K0S_DROPIN_DIR).join(format!("wasmruntime-{handler}.toml")),
    }
}

pub fn rendered_path(distro: Distro) -> PathBuf {
    match distro {
        Distro::K3s => Path::new(K3S_CONTAINERD_DIR).join("config.toml"),
        Distro::Rke2 => Path::new(RKE2_CONTAINERD_DIR).join("config.toml"),
        Distro::K0s => K0S_RENDERED_CRI.into(),
        Distro::Containerd | Distro::MicroK8s => CONTAINERD_CONFIG.into(),
    }
}

pub fn facts(files: &[(PathBuf, String)]) -> HostFacts {
    let mut facts = HostFacts::default();
    for (p, t) in files {
        facts.files.insert(p.clone(), t.clone());
    }
    facts
}

/// Every leaf key path of a config and its value, sorted, except under the runtime table
/// of `handler` (what our edits may touch).
pub fn leaves_outside(doc: &toml_edit::DocumentMut, handler: &str) -> Vec<(String, String)> {
    fn walk(
        t: &dyn toml_edit::TableLike,
        prefix: &str,
        ours: &str,
        out: &mut Vec<(String, String)>,
    ) {
        for (k, item) in t.iter() {
            let p = format!("{prefix}/{k}");
            if p.ends_with(ours) {
                continue;
            }
            match item.as_table_like() {
                Some(sub) => walk(sub, &p, ours, out),
                None => out.push((p, item.to_string().trim().to_owned())),
            }
        }
    }
    let mut out = Vec::new();
    walk(
        doc.as_table(),
        "",
        &format!("/runtimes/{handler}"),
        &mut out,
    );
    out.sort();
    out
}
