//! Where the test bed lives: a cache directory outside the clone, so a CI run on the same
//! machine reuses what an earlier run built.

use std::path::PathBuf;

use crate::versions::{DebPackage, GoBuild};

/// `$WASMRUNTIME_CACHE`, else `$XDG_CACHE_HOME/wasmruntime`, else `~/.cache/wasmruntime`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMRUNTIME_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"));
    base.join("wasmruntime")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Directory of one Go build: `src/` (the wrapper module) and `bin/`.
pub fn go_dir(build: &GoBuild) -> PathBuf {
    cache_root().join("go").join(build.name).join(build.version)
}

/// A binary of a Go build, e.g. `go_bin(&KUBERNETES_BUILD, "kube-apiserver")`.
pub fn go_bin(build: &GoBuild, binary: &str) -> PathBuf {
    go_dir(build).join("bin").join(binary)
}

/// kwok's node stages, written by `cargo xtask testbed`.
pub fn kwok_node_stages() -> PathBuf {
    go_dir(&crate::versions::KWOK_BUILD).join("node-stages.yaml")
}

/// kwok's default pod stages, written by `cargo xtask testbed`.
pub fn kwok_pod_stages() -> PathBuf {
    go_dir(&crate::versions::KWOK_BUILD).join("pod-stages.yaml")
}

/// Root an unpacked Debian package was extracted into (`usr/bin/...` below it).
pub fn deb_root(pkg: &DebPackage) -> PathBuf {
    cache_root().join("deb").join(pkg.dir)
}

/// The cargo target directory used by xtask for everything it builds.
/// The `wit-bindgen` binary `cargo xtask testbed` installs.
pub fn wit_bindgen() -> PathBuf {
    cache_root().join(format!(
        "tools/wit-bindgen-{}/bin/wit-bindgen",
        crate::versions::WIT_BINDGEN
    ))
}

pub fn cargo_target() -> PathBuf {
    cache_root().join("target")
}

/// The version an unpacked Debian package recorded (its `VERSION` file), e.g. "1.7.24~ds1-6".
pub fn deb_version(pkg: &DebPackage) -> Option<String> {
    std::fs::read_to_string(deb_root(pkg).join("VERSION"))
        .ok()
        .map(|v| v.trim().to_string())
}

/// The package directory of the running test or tool: `CARGO_MANIFEST_DIR` as cargo or
/// nextest sets it when running it, else `built_in` (pass `env!("CARGO_MANIFEST_DIR")`).
/// The run-time value comes first because builds are shared between checkouts (one
/// target dir in the cache): cargo does not rebuild a crate that only moved, so the
/// compile-time path can name another checkout, or one that is gone.
pub fn manifest_dir(built_in: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(built_in), PathBuf::from)
}
