//! Guest defaults of the node's WasmRuntime (`spec.wasm`): `options.json` beside the shim
//! binary, written by the installer (`--guest-network`, `--precompile`,
//! `--guest-memory-limit`):
//!
//! ```json
//! { "network": "deny", "precompile": true, "defaultMemoryLimitBytes": null }
//! ```
//!
//! `main` reads it at every shim start, before containerd-shim-wasm forks its zygote, so
//! container inits inherit the parsed value (they could not read the file: they run after
//! `pivot_root`). A changed file therefore applies to shims started afterwards, without a
//! containerd restart. A missing file means the defaults (network denied, cache on, no
//! default limit); an unreadable or invalid one too, logged: the safe side, since an
//! invalid file cannot grant the network.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::engine::NetworkPolicy;
use crate::error::Error;

/// The file name, beside the shim binary.
pub const OPTIONS_FILE: &str = "options.json";

/// What the file holds. Missing keys take the defaults; unknown keys are ignored, so an
/// older shim reads a newer installer's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOptions {
    /// Network for guests whose container does not decide itself (`WASMRUNTIME_NETWORK`).
    pub network: NetworkPolicy,
    /// The precompiled-module cache (file cache and OCI precompilation).
    pub precompile: bool,
    /// Linear-memory cap for guests whose container has no memory limit.
    pub default_memory_limit_bytes: Option<u64>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            network: NetworkPolicy::Deny,
            precompile: true,
            default_memory_limit_bytes: None,
        }
    }
}

impl GuestOptions {
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let err = |why: String| Error::Options {
            path: path.to_path_buf(),
            source: why.into(),
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| err("expected a JSON object".into()))?;
        let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
        let mut options = Self::default();
        if let Some(v) = field("network") {
            options.network = match v.as_str() {
                Some("allow") => NetworkPolicy::Allow,
                Some("deny") => NetworkPolicy::Deny,
                _ => {
                    return Err(err(format!(
                        "network: expected \"allow\" or \"deny\", found {v}"
                    )));
                }
            };
        }
        if let Some(v) = field("precompile") {
            options.precompile = v
                .as_bool()
                .ok_or_else(|| err(format!("precompile: expected true or false, found {v}")))?;
        }
        if let Some(v) = field("defaultMemoryLimitBytes") {
            options.default_memory_limit_bytes = Some(v.as_u64().ok_or_else(|| {
                err(format!(
                    "defaultMemoryLimitBytes: expected a byte count, found {v}"
                ))
            })?);
        }
        Ok(options)
    }

    /// The file at `path`; `Ok(None)` if there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Options {
                path: path.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

/// `options.json` beside the running binary (`/proc/self/exe`: the installed shim, not a
/// symlink to it).
pub fn path_beside_binary() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.with_file_name(OPTIONS_FILE))
}

/// The options this process runs with, and why they are the defaults if the file was
/// unusable (logged by the container init, where the shim log is set up).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub options: GuestOptions,
    pub problem: Option<String>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// Reads the file beside the binary once; see the module docs for when.
pub fn load_beside_binary() -> &'static GuestOptions {
    &LOADED
        .get_or_init(|| {
            let Some(path) = path_beside_binary() else {
                return Loaded::default();
            };
            match GuestOptions::read(&path) {
                Ok(options) => Loaded {
                    options: options.unwrap_or_default(),
                    problem: None,
                },
                Err(e) => Loaded {
                    options: GuestOptions::default(),
                    problem: Some(crate::error::chain(&e)),
                },
            }
        })
        .options
}

/// What [`load_beside_binary`] found (the defaults if it never ran).
pub fn loaded() -> Loaded {
    LOADED.get().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GuestOptions, Error> {
        GuestOptions::parse(Path::new("options.json"), text)
    }

    #[test]
    fn the_installers_file_parses() {
        // what installer/src/steps/install.rs writes for `--guest-network allow
        // --precompile false --guest-memory-limit 128Mi`
        let text = r#"{
  "network": "allow",
  "precompile": false,
  "defaultMemoryLimitBytes": 134217728
}
"#;
        assert_eq!(
            parse(text).unwrap(),
            GuestOptions {
                network: NetworkPolicy::Allow,
                precompile: false,
                default_memory_limit_bytes: Some(128 << 20),
            }
        );
        let defaults = r#"{"network":"deny","precompile":true,"defaultMemoryLimitBytes":null}"#;
        assert_eq!(parse(defaults).unwrap(), GuestOptions::default());
    }

    #[test]
    fn missing_keys_take_defaults_and_unknown_keys_are_ignored() {
        assert_eq!(parse("{}").unwrap(), GuestOptions::default());
        let newer = parse(r#"{"network":"allow","someFutureKey":[1]}"#).unwrap();
        assert_eq!(newer.network, NetworkPolicy::Allow);
        assert!(newer.precompile);
    }

    #[test]
    fn an_invalid_file_is_an_error_naming_it() {
        for bad in [
            r#"{"network":"sometimes"}"#,
            "not json",
            "[]",
            r#"{"precompile":"yes"}"#,
            r#"{"defaultMemoryLimitBytes":-1}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                crate::error::chain(&e).contains("options.json"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_none_and_a_present_one_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OPTIONS_FILE);
        assert_eq!(GuestOptions::read(&path).unwrap(), None);
        std::fs::write(&path, r#"{"network":"allow"}"#).unwrap();
        assert_eq!(
            GuestOptions::read(&path).unwrap().map(|o| o.network),
            Some(NetworkPolicy::Allow)
        );
    }
}
