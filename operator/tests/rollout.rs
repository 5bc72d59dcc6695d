//! The operator against a real kube-apiserver, controller-manager, scheduler and kwok nodes:
//! kwok plays the kubelet and the installer (see fixtures/kwok-pod-stages.yaml).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use wasm_operator::api::WasmRuntime;

#[tokio::test]
async fn rolls_out_in_batches_and_publishes_a_runtime_class() -> Result<()> {
    let mut env = Env::start(&["n-0", "n-1", "n-2", "n-3"]).await?;
    let history = env.record_labels("wasmtime");
    env.start_operator(&[])?;
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": 2}}))
        .await?;

    let rt = env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    let status = rt.status.context("status")?;
    assert_eq!(status.ready.as_deref(), Some("4/4"));
    assert_eq!(status.nodes.provisioned, 4);
    assert_eq!(status.handler.as_deref(), Some("wasmtime"));
    assert_eq!(
        status.shim_version.as_deref(),
        Some("test"),
        "the installer image tag"
    );
    assert!(
        env.node_states("wasmtime")
            .await?
            .values()
            .all(|v| v.as_deref() == Some("provisioned"))
    );
    assert!(
        history.max_pending() <= 2,
        "at most maxUnavailable nodes in flight, saw {}",
        history.max_pending()
    );
    history
        .caught_up(&["n-0", "n-1", "n-2", "n-3"], "provisioned")
        .await?;
    for node in ["n-0", "n-1", "n-2", "n-3"] {
        assert_eq!(
            history.of(node),
            [None, Some("pending".into()), Some("provisioned".into())],
            "{node}"
        );
    }

    let rc = Api::<RuntimeClass>::all(env.client.clone())
        .get("wasmtime")
        .await?;
    assert_eq!(rc.handler, "wasmtime");
    let selector = rc
        .scheduling
        .and_then(|s| s.node_selector)
        .context("RuntimeClass schedules")?;
    assert_eq!(
        selector.get("wasmruntime.dev/wasmtime").map(String::as_str),
        Some("provisioned")
    );

    let ds = Api::<DaemonSet>::namespaced(env.client.clone(), NAMESPACE)
        .get("wasm-installer-wasmtime")
        .await?;
    let spec = ds.spec;
    assert_eq!(
        spec.update_strategy.and_then(|u| u.type_).as_deref(),
        Some("OnDelete")
    );
    let pod = spec.template.spec.context("pod spec")?;
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "installer pods hold no API token"
    );
    assert_eq!(pod.host_pid, Some(true));
    Ok(())
}

#[tokio::test]
async fn failed_node_is_labelled_failed_never_provisioned_and_stops_the_rollout() -> Result<()> {
    // Name order is rollout order: fail-0 goes first and fails.
    let mut env = Env::start(&["fail-0", "n-0", "n-1"]).await?;
    let history = env.record_labels("wasmtime");
    env.start_operator(&[])?;
    env.apply_runtime("wasmtime", json!({})).await?;

    let rt = env
        .wait_runtime("wasmtime", "Degraded", |rt| {
            condition(rt, "Degraded").is_some_and(|(s, _, _)| s == "True")
        })
        .await?;
    let status = rt.status.clone().context("status")?;
    let (_, reason, message) = condition(&rt, "Degraded").unwrap();
    assert_eq!(reason, "NodesFailed");
    assert!(
        message.contains("fail-0") && message.contains("containerd did not come back"),
        "{message}"
    );
    assert_eq!(status.failures.len(), 1);
    assert_eq!(status.failures[0].node, "fail-0");
    assert!(
        status.failures[0]
            .message
            .contains("original config was restored")
    );
    assert_eq!(status.nodes.failed, 1);

    // The failure holds the whole budget (maxUnavailable 1): nobody else starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let states = env.node_states("wasmtime").await?;
    assert_eq!(states["fail-0"].as_deref(), Some("failed"));
    assert_eq!(
        states["n-0"], None,
        "rollout must not widen past failures: {states:?}"
    );
    assert_eq!(states["n-1"], None);
    assert!(
        !history.of("fail-0").contains(&Some("provisioned".into())),
        "a failed node is never selectable"
    );

    // A Warning Event names the node.
    let events = env
        .cluster
        .kubectl()
        .args([
            "get",
            "events",
            "-A",
            "--field-selector",
            "reason=NodeFailed",
            "-o",
            "json",
        ])
        .output()?;
    assert!(
        String::from_utf8_lossy(&events.stdout).contains("fail-0"),
        "Warning Event for fail-0"
    );

    // More budget lets the rollout continue around the failed node.
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": 3}}))
        .await?;
    env.wait_runtime("wasmtime", "n-0 and n-1 provisioned", |rt| {
        rt.status.as_ref().is_some_and(|s| s.nodes.provisioned == 2)
    })
    .await?;
    let states = env.node_states("wasmtime").await?;
    assert_eq!(states["fail-0"].as_deref(), Some("failed"));
    assert!(!history.of("fail-0").contains(&Some("provisioned".into())));
    Ok(())
}

#[tokio::test]
async fn spec_change_rerolls_node_by_node_with_new_installer_pods() -> Result<()> {
    let mut env = Env::start(&["n-0", "n-1", "n-2"]).await?;
    env.start_operator(&[])?;
    env.apply_runtime("wasmtime", json!({})).await?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NAMESPACE);
    let revision = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("wasmruntime.dev/revision").cloned())
            .unwrap_or_default()
    };
    let before: Vec<String> = pods
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(revision)
        .collect();
    assert_eq!(before.len(), 3);

    let history = env.record_labels("wasmtime");
    env.apply_runtime("wasmtime", json!({"wasm": {"network": "allow"}}))
        .await?;
    let rt = env
        .wait_runtime("wasmtime", "Ready at generation 2", |rt| {
            is_ready(rt) && rt.metadata.generation == Some(2)
        })
        .await?;
    assert_eq!(rt.status.and_then(|s| s.observed_generation), Some(2));
    let after: Vec<String> = pods
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(revision)
        .collect();
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|r| r != &before[0]),
        "every installer pod runs the new revision: {before:?} -> {after:?}"
    );
    assert!(
        history.max_pending() <= 1,
        "re-roll stays within maxUnavailable 1"
    );
    for node in ["n-0", "n-1", "n-2"] {
        assert!(
            history.of(node).contains(&Some("pending".into())),
            "{node} was re-rolled"
        );
    }

    // A rollout-only change (no effect on the node) re-rolls nothing.
    let history = env.record_labels("wasmtime");
    env.apply_runtime(
        "wasmtime",
        json!({"wasm": {"network": "allow"}, "rollout": {"maxUnavailable": 2}}),
    )
    .await?;
    env.wait_runtime("wasmtime", "Ready at generation 3", |rt| {
        is_ready(rt) && rt.metadata.generation == Some(3)
    })
    .await?;
    assert_eq!(history.max_pending(), 0);
    Ok(())
}

#[tokio::test]
async fn nodes_joining_and_leaving_the_selection() -> Result<()> {
    let mut env = Env::start(&[]).await?;
    env.add_node("a", &[("wasm", "yes")]).await?;
    env.add_node("b", &[("wasm", "no")]).await?;
    env.start_operator(&[])?;
    env.apply_runtime(
        "wasmtime",
        json!({"nodeSelector": {"matchLabels": {"wasm": "yes"}}}),
    )
    .await?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    assert_eq!(
        env.node_states("wasmtime").await?["b"],
        None,
        "unselected node untouched"
    );

    env.add_node("c", &[("wasm", "yes")]).await?;
    env.wait_runtime("wasmtime", "2/2", |rt| {
        rt.status.as_ref().and_then(|s| s.ready.as_deref()) == Some("2/2") && is_ready(rt)
    })
    .await?;

    // a leaves the selection: the uninstaller runs there, then the label goes.
    let history = env.record_labels("wasmtime");
    let nodes: Api<Node> = Api::all(env.client.clone());
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"wasm": "no"}}})),
        )
        .await?;
    env.wait_runtime("wasmtime", "1/1", |rt| {
        rt.status.as_ref().and_then(|s| s.ready.as_deref()) == Some("1/1") && is_ready(rt)
    })
    .await?;
    let deadline = std::time::Instant::now() + WAIT;
    while env.node_states("wasmtime").await?["a"].is_some() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "a still labelled: {:?}",
            env.node_states("wasmtime").await?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        history.of("a").contains(&Some("uninstalling".into())),
        "a went through uninstalling: {:?}",
        history.of("a")
    );
    Ok(())
}

#[tokio::test]
async fn handler_conflicts_are_reported_and_nothing_is_overwritten() -> Result<()> {
    let mut env = Env::start(&["n-0"]).await?;
    let foreign: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "taken"}, "handler": "runc"
    }))?;
    Api::<RuntimeClass>::all(env.client.clone())
        .create(&PostParams::default(), &foreign)
        .await?;
    env.start_operator(&[])?;
    env.apply_runtime("first", json!({"handler": "shared"}))
        .await?;
    env.wait_runtime("first", "Ready", is_ready).await?;
    env.apply_runtime("second", json!({"handler": "shared"}))
        .await?;
    env.apply_runtime("third", json!({"handler": "taken"}))
        .await?;
    env.apply_runtime("other", json!({"handler": "other"}))
        .await?;

    let degraded = |rt: &wasm_operator::api::WasmRuntime| {
        condition(rt, "Degraded").is_some_and(|(s, r, _)| s == "True" && r == "HandlerConflict")
    };
    let second = env
        .wait_runtime("second", "HandlerConflict", degraded)
        .await?;
    assert!(
        condition(&second, "Degraded")
            .unwrap()
            .2
            .contains("already used by WasmRuntime first")
    );
    let third = env
        .wait_runtime("third", "HandlerConflict", degraded)
        .await?;
    assert!(
        condition(&third, "Degraded")
            .unwrap()
            .2
            .contains("RuntimeClass taken already exists")
    );
    // Two runtimes with different handlers coexist on the same node.
    env.wait_runtime("other", "Ready", is_ready).await?;

    let rc = Api::<RuntimeClass>::all(env.client.clone())
        .get("taken")
        .await?;
    assert_eq!(rc.handler, "runc", "the foreign RuntimeClass is untouched");
    assert!(rc.scheduling.is_none());
    let states = env.node_states("second").await?;
    assert_eq!(
        states["n-0"], None,
        "a conflicting runtime installs nothing"
    );
    Ok(())
}

#[tokio::test]
async fn deletion_waits_for_pods_then_uninstalls_and_cleans_up() -> Result<()> {
    let mut env = Env::start(&["n-0", "n-1"]).await?;
    env.start_operator(&[])?;
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": "100%"}}))
        .await?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;

    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wasm-app", "namespace": "default"},
        "spec": {"runtimeClassName": "wasmtime", "containers": [{"name": "app", "image": "hello-wasm:latest"}]}
    }))?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    // The default ServiceAccount appears once the controller-manager is up.
    let deadline = std::time::Instant::now() + WAIT;
    while let Err(e) = pods.create(&PostParams::default(), &pod).await {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "creating the Wasm pod: {e}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    env.runtimes()
        .delete("wasmtime", &DeleteParams::default())
        .await?;
    let rt = env
        .wait_runtime("wasmtime", "InUse", |rt| {
            condition(rt, "Ready").is_some_and(|(_, r, _)| r == "InUse")
        })
        .await?;
    assert!(
        condition(&rt, "Ready")
            .unwrap()
            .2
            .contains("default/wasm-app"),
        "names the pod"
    );
    assert!(
        env.node_states("wasmtime")
            .await?
            .values()
            .all(|v| v.as_deref() == Some("provisioned")),
        "nothing uninstalled yet"
    );

    pods.delete("wasm-app", &DeleteParams::default()).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while env.runtimes().get_opt("wasmtime").await?.is_some() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "WasmRuntime not deleted; log:\n{}",
            env.operator_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        env.node_states("wasmtime")
            .await?
            .values()
            .all(Option::is_none),
        "labels removed"
    );
    assert!(
        Api::<RuntimeClass>::all(env.client.clone())
            .get_opt("wasmtime")
            .await?
            .is_none()
    );
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), NAMESPACE);
    assert!(
        daemonsets
            .get_opt("wasm-installer-wasmtime")
            .await?
            .is_none()
    );
    assert!(
        daemonsets
            .get_opt("wasm-uninstaller-wasmtime")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn a_new_operator_resumes_a_rollout_after_a_kill() -> Result<()> {
    let nodes = ["n-0", "n-1", "n-2", "n-3", "n-4", "n-5"];
    let mut env = Env::start(&nodes).await?;
    let history = env.record_labels("wasmtime");
    env.start_operator(&["--leader-elect", "--lease-namespace", "default"])?;
    env.apply_runtime("wasmtime", json!({})).await?;
    env.wait_runtime("wasmtime", "2 provisioned", |rt| {
        rt.status.as_ref().is_some_and(|s| s.nodes.provisioned >= 2)
    })
    .await?;
    env.kill_operator();

    env.start_operator(&["--leader-elect", "--lease-namespace", "default"])?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    history.caught_up(&nodes, "provisioned").await?;
    for node in nodes {
        // Exactly one pass per node: no duplicated or lost transitions across the handover.
        assert_eq!(
            history.of(node),
            [None, Some("pending".into()), Some("provisioned".into())],
            "{node}"
        );
    }
    assert!(history.max_pending() <= 1);
    Ok(())
}

#[tokio::test]
async fn an_unusable_spec_does_not_stall_others_and_metrics_are_served() -> Result<()> {
    let mut env = Env::start(&["n-0"]).await?;
    env.start_operator(&[])?;
    // Valid for the schema, unusable for a selector: an unknown operator.
    env.apply_runtime("broken", json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Sometimes", "values": ["b"]}]}})).await?;
    env.apply_runtime("fine", json!({})).await?;
    let broken = env
        .wait_runtime("broken", "InvalidSpec", |rt| {
            condition(rt, "Degraded").is_some_and(|(s, r, _)| s == "True" && r == "InvalidSpec")
        })
        .await?;
    assert!(
        condition(&broken, "Degraded")
            .unwrap()
            .2
            .contains("spec.nodeSelector")
    );
    env.wait_runtime("fine", "Ready", is_ready).await?;

    let url = env.metrics_url();
    let body = tokio::task::spawn_blocking(move || -> Result<String> {
        let out = std::process::Command::new("curl")
            .args(["-sf", &url])
            .output()?;
        Ok(String::from_utf8(out.stdout)?)
    })
    .await??;
    assert!(body.contains("wasm_operator_reconciles_total"), "{body}");
    assert!(
        body.contains("wasm_operator_reconcile_failures_total{error=\"invalid_spec\"}"),
        "{body}"
    );
    assert!(
        body.contains("wasm_operator_nodes{runtime=\"fine\",state=\"provisioned\"} 1"),
        "{body}"
    );
    Ok(())
}

/// An object stored under a looser, older schema that this operator cannot deserialize is
/// reported (a Warning Event) and does not stop the others.
#[tokio::test]
async fn an_unreadable_object_is_reported_and_does_not_stall_the_watch() -> Result<()> {
    let mut env = Env::start(&["n-0"]).await?;
    // Store the object while the schema lets anything into spec, then restore the real CRD:
    // the apiserver keeps serving the stored object as it is.
    let real = wasm_operator::crdgen::crd()?;
    let mut loose = serde_json::to_value(&real)?;
    let schema = &mut loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    schema["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    schema
        .as_object_mut()
        .unwrap()
        .remove("x-kubernetes-validations");
    common::install_crd(&env.client, &serde_json::from_value(loose)?).await?;
    let raw = ApiResource::erase::<WasmRuntime>(&());
    let dynamic: Api<DynamicObject> = Api::all_with(env.client.clone(), &raw);
    let unreadable: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime",
        "metadata": {"name": "unreadable"}, "spec": {"handler": 42}
    }))?;
    dynamic.create(&PostParams::default(), &unreadable).await?;
    common::install_crd(&env.client, &real).await?;

    env.start_operator(&[])?;
    env.apply_runtime("fine", json!({})).await?;
    env.wait_runtime("fine", "Ready", is_ready).await?;

    // The report is a Warning Event: this apiserver refuses any status write to the object
    // (its CEL rules cannot evaluate on the stored data), so status cannot carry it.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let about_it = || async {
        let list = events.list(&Default::default()).await?;
        anyhow::Ok(
            list.items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("unreadable")
                })
                .map(|e| {
                    let (t, r) = (e.type_.unwrap_or_default(), e.reason.unwrap_or_default());
                    format!("{t} {r} {}", e.note.unwrap_or_default())
                })
                .collect::<Vec<_>>(),
        )
    };
    let deadline = std::time::Instant::now() + common::WAIT;
    while about_it().await?.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no Event about the unreadable object; operator log:\n{}",
            env.operator_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Node and pod events keep waking the controller; the report must not repeat.
    env.add_node("n-1", &[]).await?;
    env.wait_runtime("fine", "Ready on two nodes", |rt| {
        is_ready(rt) && rt.status.as_ref().is_some_and(|s| s.nodes.provisioned == 2)
    })
    .await?;
    let reports = about_it().await?;
    assert_eq!(reports.len(), 1, "one Event, not one per loop: {reports:?}");
    assert!(
        reports[0].starts_with("Warning Unreadable the object cannot be read"),
        "{reports:?}"
    );
    assert!(
        reports[0].contains("kubectl edit wasmruntime unreadable"),
        "{reports:?}"
    );
    // Nothing was rolled out for it: no RuntimeClass of its name, no label key of its own.
    assert!(
        Api::<RuntimeClass>::all(env.client.clone())
            .get_opt("unreadable")
            .await?
            .is_none()
    );
    assert!(
        env.node_states("unreadable")
            .await?
            .values()
            .all(Option::is_none)
    );
    Ok(())
}
