//! The operator's DaemonSets call `wasm-installer` with arguments built by
//! `wasm_operator::resources`: every combination the API allows must parse here, and the
//! readiness probe must name a real subcommand.

use std::process::Command;

use serde_json::json;
use wasm_operator::api::WasmRuntime;
use wasm_operator::resources::{Role, Settings, daemonset, installer_args};

fn parses(args: &[String]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wasm-installer"))
        .args(args)
        .env("WASM_INSTALLER_PARSE_ONLY", "1")
        .output()
        .expect("run wasm-installer");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn runtime(spec: serde_json::Value) -> WasmRuntime {
    serde_json::from_value(json!({
        "apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime",
        "metadata": {"name": "wasmtime"}, "spec": spec
    }))
    .unwrap()
}

#[test]
fn every_spec_shape_yields_arguments_the_installer_accepts() {
    let specs = [
        json!({}),
        json!({"handler": "wasm-fast", "containerd": {"configPath": "/etc/containerd/custom.toml", "systemdCgroup": "true",
               "restart": {"strategy": "command", "command": ["/usr/bin/systemctl", "restart", "containerd"]}}}),
        json!({"containerd": {"restart": {"strategy": "signal"}, "systemdCgroup": "false"}, "rollout": {"autoRollback": false, "verifyTimeoutSeconds": 10}}),
        json!({"containerd": {"restart": {"strategy": "none"}}, "wasm": {"network": "allow", "precompile": false, "defaultMemoryLimit": "128Mi"}}),
        json!({"containerd": {"restart": {"strategy": "systemd"}}}),
    ];
    for spec in specs {
        let rt = runtime(spec.clone());
        for role in [Role::Install, Role::Uninstall] {
            let args = installer_args(&rt, role);
            let parsed = parses(&args)
                .unwrap_or_else(|e| panic!("{spec} {role:?}: {args:?} rejected:\n{e}"));
            assert!(parsed.contains("wasmtime"), "{parsed}");
        }
    }
    // The parsed form carries what the spec says.
    let rt = runtime(
        json!({"rollout": {"autoRollback": false}, "wasm": {"network": "allow", "defaultMemoryLimit": "64Mi"}}),
    );
    let parsed = parses(&installer_args(&rt, Role::Install)).unwrap();
    assert!(parsed.contains("no_rollback: true"), "{parsed}");
    assert!(parsed.contains("guest_network: Allow"), "{parsed}");
    assert!(
        parsed.contains(&format!("guest_memory_limit: Some({})", 64u64 << 20)),
        "{parsed}"
    );
    let parsed = parses(&installer_args(&rt, Role::Uninstall)).unwrap();
    assert!(parsed.contains("stay: true"), "{parsed}");
}

#[test]
fn readiness_probe_names_a_real_subcommand() {
    let settings = Settings {
        installer_namespace: "ns".into(),
        default_installer_image: "img:1".into(),
    };
    let ds = daemonset(&runtime(json!({})), Role::Install, &settings);
    let container = &ds.spec.template.spec.unwrap().containers[0];
    let probe = container
        .readiness_probe
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command
        .clone()
        .unwrap();
    assert_eq!(probe[0], "wasm-installer");
    parses(&probe[1..]).unwrap_or_else(|e| panic!("probe {probe:?} rejected: {e}"));
}
