//! Typed, validated description of the runtime entry we want in containerd's config.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// The `runtime_type` every entry we write uses: containerd derives the shim binary
/// name `containerd-shim-wasmtime-v1` from it, but `runtime_path` overrides the lookup.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";
/// Pod annotations containerd's CRI copies into the container spec for our handler
/// (`pod_annotations`, matched with Go's `path.Match`): the shim reads
/// `wasmruntime.dev/network` and `wasmruntime.dev/http-port` there.
pub const POD_ANNOTATIONS: &str = "wasmruntime.dev/*";
/// File name of the shim we copy onto the node.
pub const SHIM_BINARY: &str = "containerd-shim-wasmtime-v1";
/// Directory under which every WasmRuntime gets its own shim directory.
pub const SHIM_ROOT: &str = "/opt/wasmruntime";

/// A CRI runtime handler: what a RuntimeClass's `handler` names. Kubernetes requires a
/// DNS-1123 label; that also makes it a bare TOML key and safe inside Go templates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HandlerName(String);

impl HandlerName {
    pub fn new(name: &str) -> Result<Self> {
        dns_label(name).map_err(|reason| Error::InvalidHandler {
            name: name.to_owned(),
            reason,
        })?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandlerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The WasmRuntime object's name; it names the shim directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuntimeName(String);

impl RuntimeName {
    pub fn new(name: &str) -> Result<Self> {
        // Object names may be DNS subdomains (dots allowed); one path segment either way.
        let ok = !name.is_empty()
            && name.len() <= 253
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(Error::InvalidRuntimeName {
                name: name.to_owned(),
                reason: "must be a Kubernetes object name (lowercase letters, digits, '-', '.')",
            });
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Absolute path of the copied shim binary, as written into `runtime_path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShimPath(String);

impl ShimPath {
    /// `/opt/wasmruntime/<name>/containerd-shim-wasmtime-v1`.
    pub fn for_runtime(name: &RuntimeName) -> Self {
        Self(format!("{SHIM_ROOT}/{}/{SHIM_BINARY}", name.as_str()))
    }

    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let invalid = |reason| Error::InvalidShimPath {
            path: path.clone(),
            reason,
        };
        if !path.is_absolute() {
            return Err(invalid(
                "must be absolute (containerd must not search PATH)",
            ));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(invalid("must not contain `.` or `..`"));
        }
        let text = path
            .to_str()
            .ok_or_else(|| invalid("must be UTF-8 (TOML strings are)"))?;
        if text.contains("{{") || text.contains(['\n', '\r']) {
            return Err(invalid("must not contain `{{` or line breaks"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// How to set the shim's `SystemdCgroup` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SystemdCgroupMode {
    /// Copy what the node's runc entry uses, so pods of both runtimes share a driver.
    #[default]
    Auto,
    Enabled,
    Disabled,
}

impl FromStr for SystemdCgroupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "true" => Ok(Self::Enabled),
            "false" => Ok(Self::Disabled),
            other => Err(format!("expected auto, true or false, got {other:?}")),
        }
    }
}

/// The entry to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    pub handler: HandlerName,
    pub shim_path: ShimPath,
    pub systemd_cgroup: SystemdCgroupMode,
}

impl RuntimeSpec {
    /// The usual spec: handler and shim directory both named after the WasmRuntime.
    pub fn for_runtime(name: &RuntimeName, handler: HandlerName, mode: SystemdCgroupMode) -> Self {
        Self {
            handler,
            shim_path: ShimPath::for_runtime(name),
            systemd_cgroup: mode,
        }
    }
}

fn dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("must contain only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("wasmtime", true)]
    #[case("wasm-1", true)]
    #[case("", false)]
    #[case("Wasm", false)]
    #[case("-wasm", false)]
    #[case("wasm.time", false)]
    #[case("a\"b", false)]
    fn handler_names(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(HandlerName::new(name).is_ok(), ok, "{name}");
    }

    #[rstest]
    #[case("/opt/wasmruntime/x/containerd-shim-wasmtime-v1", true)]
    #[case("relative/shim", false)]
    #[case("/opt/../etc/shim", false)]
    #[case("/opt/{{ .x }}/shim", false)]
    fn shim_paths(#[case] path: &str, #[case] ok: bool) {
        assert_eq!(ShimPath::new(path).is_ok(), ok, "{path}");
    }

    #[test]
    fn shim_path_per_runtime() {
        let name = RuntimeName::new("wasmtime-fast").unwrap();
        assert_eq!(
            ShimPath::for_runtime(&name).as_str(),
            "/opt/wasmruntime/wasmtime-fast/containerd-shim-wasmtime-v1"
        );
        assert!(RuntimeName::new("../x").is_err());
    }
}
