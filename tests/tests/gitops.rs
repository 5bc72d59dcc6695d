//! docs/gitops: the Argo CD health script, run by a real Lua 5.4 over statuses the operator's
//! own status function computes (chart_rbac.rs runs it over statuses of the real controller
//! too), and the Argo CD / Flux manifests, whose chart values must pass the chart's schema.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use support::*;
use wasm_operator::planner::{Counts, Plan};
use wasm_operator::status::{self, Blocker, StatusInput};

/// A WasmRuntime at `generation` whose status the operator computed for `plan`.
fn runtime(
    generation: i64,
    observed: i64,
    plan: &Plan,
    blocker: Option<Blocker>,
    deleting: bool,
) -> Value {
    let status = status::status(
        plan,
        StatusInput {
            generation: Some(observed),
            handler: "wasmtime".into(),
            previous: None,
            deleting,
            blocker,
            shim_version: None,
            now: Timestamp::now(),
        },
    );
    json!({
        "apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime",
        "metadata": {"name": "wasmtime", "generation": generation},
        "status": status,
    })
}

fn plan(selected: usize, pending: usize, provisioned: usize, failures: &[(&str, &str)]) -> Plan {
    Plan {
        counts: Counts {
            selected,
            pending,
            provisioned,
            failed: failures.len(),
            uninstalling: 0,
        },
        failures: failures
            .iter()
            .map(|(n, m)| (n.to_string(), m.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Plan::default()
    }
}

#[test]
fn argocd_health_script_reads_operator_statuses() -> Result<()> {
    let failed = [(
        "node-b",
        "containerd did not come back: \"timeout\"\nrolled back (ü)",
    )];
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "all nodes provisioned",
            runtime(1, 1, &plan(2, 0, 2, &[]), None, false),
            "Healthy",
            "2/2 nodes provisioned",
        ),
        (
            "no node selected",
            runtime(1, 1, &plan(0, 0, 0, &[]), None, false),
            "Healthy",
            "no node matches",
        ),
        (
            "rolling out",
            runtime(1, 1, &plan(3, 1, 1, &[]), None, false),
            "Progressing",
            "1/3 nodes provisioned, 1 installing",
        ),
        (
            "spec changed, status old",
            runtime(2, 1, &plan(2, 0, 2, &[]), None, false),
            "Progressing",
            "observe generation 2",
        ),
        (
            "a node failed",
            runtime(1, 1, &plan(2, 0, 1, &failed), None, false),
            "Degraded",
            "NodesFailed: 1 node(s) failed; node-b: containerd did not come back: \"timeout\"\nrolled back (ü)",
        ),
        (
            "handler taken",
            runtime(
                1,
                1,
                &plan(0, 0, 0, &[]),
                Some(Blocker::HandlerConflict(
                    "handler wasmtime is already used by WasmRuntime other".into(),
                )),
                false,
            ),
            "Degraded",
            "HandlerConflict: handler wasmtime is already used",
        ),
        (
            "invalid spec",
            runtime(
                1,
                1,
                &Plan::default(),
                Some(Blocker::InvalidSpec("spec.nodeSelector: bad".into())),
                false,
            ),
            "Degraded",
            "InvalidSpec: spec.nodeSelector: bad",
        ),
        (
            "deletion waits for pods",
            runtime(
                1,
                1,
                &plan(1, 0, 1, &[]),
                Some(Blocker::InUse("deletion waits: 1 pod(s)".into())),
                true,
            ),
            "Progressing",
            "deletion waits: 1 pod(s)",
        ),
        (
            "uninstalling",
            runtime(1, 1, &plan(0, 0, 1, &[]), None, true),
            "Progressing",
            "uninstalling: 1 node(s)",
        ),
        (
            "no status yet",
            json!({"apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime", "metadata": {"name": "w", "generation": 1}}),
            "Progressing",
            "Waiting for the operator to report status",
        ),
    ];
    for (name, object, want_status, want_message) in cases {
        let (status, message) = argocd_health(&object).with_context(|| name.to_string())?;
        ensure!(
            status == want_status,
            "{name}: {status} ({message}), want {want_status}"
        );
        ensure!(
            message.contains(want_message),
            "{name}: message {message:?} lacks {want_message:?}"
        );
    }
    Ok(())
}

#[test]
fn argocd_cm_snippet_carries_the_tested_script() -> Result<()> {
    let script = std::fs::read_to_string(root().join("docs/gitops/argocd-health.lua"))?;
    let cm: Value = serde_yaml::from_str(&std::fs::read_to_string(
        root().join("docs/gitops/argocd-cm.yaml"),
    )?)?;
    let embedded = cm["data"]["resource.customizations.health.wasmruntime.dev_WasmRuntime"]
        .as_str()
        .context("argocd-cm.yaml lacks the health customization")?;
    ensure!(
        embedded == script,
        "docs/gitops/argocd-cm.yaml is not argocd-health.lua verbatim"
    );
    Ok(())
}

/// The values the Argo CD Application and the Flux HelmRelease pass to the chart pass its
/// schema, render a WasmRuntime, and point at the chart that exists here.
#[test]
fn gitops_manifests_use_valid_chart_values() -> Result<()> {
    let read = |file: &str| -> Result<Vec<Value>> {
        documents(&std::fs::read_to_string(
            root().join("docs/gitops").join(file),
        )?)
    };
    let app = read("argocd-application.yaml")?;
    let app = find(&app, "Application", "wasm-runtime-operator")?;
    ensure!(
        root()
            .join(app["spec"]["source"]["path"].as_str().context("path")?)
            .join("Chart.yaml")
            .exists()
    );
    let release = read("flux-helmrelease.yaml")?;
    let release = find(&release, "HelmRelease", "wasm-runtime-operator")?;
    ensure!(
        root()
            .join(
                release["spec"]["chart"]["spec"]["chart"]
                    .as_str()
                    .context("chart")?
            )
            .join("Chart.yaml")
            .exists()
    );
    let flux = read("flux-kustomization.yaml")?;
    let checks = &find(&flux, "Kustomization", "wasm-runtime")?["spec"]["healthChecks"];
    ensure!(
        checks
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["kind"] == "WasmRuntime")),
        "{checks}"
    );
    for (what, values) in [
        (
            "Argo CD valuesObject",
            &app["spec"]["source"]["helm"]["valuesObject"],
        ),
        ("Flux values", &release["spec"]["values"]),
    ] {
        let file = std::env::temp_dir().join(format!("gitops-values-{}.json", std::process::id()));
        std::fs::write(&file, serde_json::to_string(values)?)?;
        let rendered = helm_template(&["-f", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        let objects = documents(&rendered.with_context(|| what.to_string())?)?;
        find(&objects, "WasmRuntime", "wasmtime").with_context(|| what.to_string())?;
    }
    Ok(())
}
