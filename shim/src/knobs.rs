//! Per-container settings a workload gives the shim, from two places:
//!
//! - the container's env (`WASMRUNTIME_NETWORK`, `WASMRUNTIME_HTTP_PORT`): per container;
//! - the pod's annotations (`wasmruntime.dev/network`, `wasmruntime.dev/http-port`): per
//!   pod. containerd's CRI copies a pod annotation into every container's OCI spec when
//!   the runtime entry lists it in `pod_annotations`; wasm-installer writes our entry with
//!   `pod_annotations = ["wasmruntime.dev/*"]`. `ctr run --annotation` sets them directly.
//!
//! The container's own env wins over the pod's annotation (the narrower scope decides),
//! and either wins over the node default.

use std::collections::HashMap;

/// One setting and the two names it goes by.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    pub env: &'static str,
    pub annotation: &'static str,
}

/// The guest's network access: `allow` or `deny`.
pub const NETWORK: Knob = Knob {
    env: "WASMRUNTIME_NETWORK",
    annotation: "wasmruntime.dev/network",
};

/// The port a `wasi:http` component is served on.
pub const HTTP_PORT: Knob = Knob {
    env: "WASMRUNTIME_HTTP_PORT",
    annotation: "wasmruntime.dev/http-port",
};

/// A value found for a knob, with where it came from (for errors and the log).
#[derive(Debug, PartialEq, Eq)]
pub struct Setting<'a> {
    /// e.g. `env WASMRUNTIME_HTTP_PORT` or `annotation wasmruntime.dev/http-port`
    pub origin: String,
    pub value: &'a str,
}

impl Knob {
    /// The container env's value (its last occurrence, as for any env variable), else the
    /// annotation's, else nothing.
    pub fn lookup<'a>(
        &self,
        env: &'a [(String, String)],
        annotations: &'a HashMap<String, String>,
    ) -> Option<Setting<'a>> {
        if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == self.env) {
            return Some(Setting {
                origin: format!("env {}", self.env),
                value: v,
            });
        }
        annotations.get(self.annotation).map(|v| Setting {
            origin: format!("annotation {}", self.annotation),
            value: v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_over_annotation() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let ann = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let p = "WASMRUNTIME_HTTP_PORT";
        let a = "wasmruntime.dev/http-port";
        type Env = Vec<(String, String)>;
        type Annotations = HashMap<String, String>;
        type Want<'a> = Option<(&'a str, &'a str)>;
        let cases: Vec<(Env, Annotations, Want)> = vec![
            (env(&[]), ann(&[]), None),
            (
                env(&[(p, "9000")]),
                ann(&[]),
                Some(("env WASMRUNTIME_HTTP_PORT", "9000")),
            ),
            (
                env(&[]),
                ann(&[(a, "9001")]),
                Some(("annotation wasmruntime.dev/http-port", "9001")),
            ),
            (
                env(&[(p, "9000")]),
                ann(&[(a, "9001")]),
                Some(("env WASMRUNTIME_HTTP_PORT", "9000")),
            ),
            // last occurrence of the env variable
            (
                env(&[(p, "1"), (p, "2")]),
                ann(&[]),
                Some(("env WASMRUNTIME_HTTP_PORT", "2")),
            ),
            // other knobs' names do not count
            (
                env(&[("WASMRUNTIME_NETWORK", "allow")]),
                ann(&[("wasmruntime.dev/network", "allow")]),
                None,
            ),
        ];
        for (env, ann, want) in cases {
            let got = HTTP_PORT.lookup(&env, &ann);
            assert_eq!(
                got.as_ref().map(|s| (s.origin.as_str(), s.value)),
                want,
                "{env:?} {ann:?}"
            );
        }
    }
}
