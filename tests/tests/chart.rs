//! The Helm chart (charts/wasm-runtime-operator) and the kustomize config (config/) with the
//! test bed's helm and kubectl, and against its real kube-apiserver: lint, schema, server-side
//! dry-run, chart == kustomize, and Pod Security admission (operator `restricted`, installer
//! `privileged`).

mod support;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use support::*;
use testbed::{ClusterOptions, TestCluster};
use wasm_operator::api::{WasmRuntime, WasmRuntimeSpec};
use wasm_operator::resources::{self, Role, Settings};

#[test]
fn helm_lint_is_clean_with_defaults_and_every_option() -> Result<()> {
    for values in [None, Some(all_values())] {
        let mut cmd = helm();
        cmd.args([
            "lint",
            "--strict",
            "--kube-version",
            testbed::versions::KUBERNETES,
        ])
        .arg(chart_dir());
        if let Some(values) = &values {
            cmd.arg("-f").arg(values);
        }
        let out = run(&mut cmd)?;
        ensure!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
        ensure!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint ({values:?}) reported problems:\n{out}"
        );
    }
    Ok(())
}

#[test]
fn crd_copies_are_identical_to_crds_dir() -> Result<()> {
    let source = root().join("crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&source)? {
        names.push(entry?.file_name());
    }
    ensure!(!names.is_empty(), "crds/ is empty");
    for copy in [chart_dir().join("crds"), root().join("config/crd/bases")] {
        let mut copied: Vec<_> = std::fs::read_dir(&copy)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        copied.sort();
        names.sort();
        ensure!(
            copied == names,
            "{} holds {copied:?}, crds/ holds {names:?}",
            copy.display()
        );
        for name in &names {
            let want = std::fs::read_to_string(source.join(name))?;
            let got = std::fs::read_to_string(copy.join(name))?;
            ensure!(
                want == got,
                "{} differs from crds/{}: copy crds/ over it after `cargo xtask crdgen`",
                copy.join(name).display(),
                name.to_string_lossy()
            );
        }
    }
    Ok(())
}

/// Each bad value fails `helm template` (which is what `helm install` runs first) with a
/// message naming the value.
#[test]
fn bad_values_are_rejected_with_a_clear_message() -> Result<()> {
    // The defaults render, so each failure below is the bad value's doing.
    helm_template(&[])?;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "replicaCount=0"],
            "at '/replicaCount': minimum: got 0, want 1",
        ),
        (
            &["--set", "replicas=2"],
            "additional properties 'replicas' not allowed",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            &["--set", "operator.logFormat=xml"],
            "at '/operator/logFormat': value must be one of 'text', 'json'",
        ),
        (
            &["--set", "operator.port=70000"],
            "at '/operator/port': maximum",
        ),
        (&["--set", "image.digest=latest"], "at '/image/digest'"),
        (
            &["--set", "installer.namespace.name=Wasm_Nodes"],
            "at '/installer/namespace/name'",
        ),
        (
            &["--set", "wasmRuntimes[0].name=Bad_Name"],
            "at '/wasmRuntimes/0/name'",
        ),
        (
            &["--set", "wasmRuntimes[0].spec.handler=x"],
            "missing property 'name'",
        ),
        (
            &["--set", "metrics.serviceMonitor.interval=soon"],
            "at '/metrics/serviceMonitor/interval'",
        ),
        (
            &["--set", "resources.limits.memory=lots"],
            "at '/resources/limits/memory'",
        ),
        (
            &["--set", "installer.namespace.name=wasm-system"],
            "installer.namespace.name (wasm-system) must differ from the release namespace",
        ),
        (
            &[
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.service.enabled=false",
            ],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
        (
            &["--set", "serviceAccount.create=false"],
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ];
    for (args, message) in cases {
        let out = output(&mut helm_template_command(args), None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "{args:?} rendered, but must be rejected"
        );
        ensure!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in:\n{stderr}"
        );
    }
    Ok(())
}

/// Labels that say which tool rendered an object: the only intended difference between the
/// chart and config/default besides the operator Namespace (below).
const TOOL_LABELS: [&str; 2] = ["helm.sh/chart", "app.kubernetes.io/managed-by"];

fn without_tool_labels(mut object: Value) -> Value {
    let metadata = object.get_mut("metadata").and_then(Value::as_object_mut);
    if let Some(metadata) = metadata
        && let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut)
    {
        for label in TOOL_LABELS {
            labels.remove(label);
        }
        if labels.is_empty() {
            metadata.remove("labels");
        }
    }
    object
}

/// The first JSON path where two values differ, with both sides.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(l, r, &format!("{path}.{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        // kustomize writes 3600.0 from the CRD as 3600: the same number to the apiserver.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

fn by_key(objects: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    objects
        .into_iter()
        .map(|o| (key(&o), without_tool_labels(o)))
        .collect()
}

/// `kubectl apply -k config/<dir>` installs what the chart installs with `helm_args`, object
/// by object and field by field. Intended differences: the tool labels, and config/default
/// also creates the operator's Namespace (labelled `restricted`), which Helm leaves to
/// `--create-namespace` or the admin.
fn assert_kustomize_matches_chart(dir: &str, helm_args: &[&str]) -> Result<()> {
    let mut args = vec!["--include-crds"];
    args.extend_from_slice(helm_args);
    let chart = by_key(documents(&helm_template(&args)?)?);
    let mut kustomized = by_key(documents(&kustomize(dir)?)?);
    let operator_ns = kustomized
        .remove(&("Namespace".into(), String::new(), NAMESPACE.into()))
        .context("config/default must create the operator namespace")?;
    ensure!(
        operator_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted",
        "the operator namespace must enforce restricted: {operator_ns}"
    );
    let chart_keys: Vec<_> = chart.keys().collect();
    let kustomize_keys: Vec<_> = kustomized.keys().collect();
    ensure!(
        chart_keys == kustomize_keys,
        "objects differ:\nchart:     {chart_keys:?}\nkustomize: {kustomize_keys:?}"
    );
    for (key, object) in &chart {
        let other = &kustomized[key];
        if let Some(difference) = first_difference(object, other, "") {
            anyhow::bail!("{key:?} differs between the chart and config/{dir} at {difference}");
        }
    }
    Ok(())
}

#[test]
fn kustomize_default_installs_what_the_chart_installs() -> Result<()> {
    assert_kustomize_matches_chart("default", &[])
}

#[test]
fn kustomize_ha_matches_the_chart_with_two_replicas() -> Result<()> {
    assert_kustomize_matches_chart("ha", &["--set", "replicaCount=2"])
}

/// A stand-in for prometheus-operator's ServiceMonitor CRD (not part of the test bed): enough
/// for the apiserver to accept the chart's ServiceMonitor in a dry-run.
const SERVICE_MONITOR_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
  "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
    "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
    "versions": [{"name": "v1", "served": true, "storage": true,
      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#;

/// Server-side dry-run of a rendering; every object must come back as applied.
fn dry_run(cluster: &TestCluster, what: &str, yaml: &str) -> Result<()> {
    let count = documents(yaml)?.len();
    let (stdout, stderr) = run_with_input(
        cluster
            .kubectl()
            .args(["apply", "--server-side", "--dry-run=server", "-f", "-"]),
        yaml,
    )
    .with_context(|| format!("dry-run of {what}"))?;
    let applied = stdout
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    ensure!(
        applied == count,
        "{what}: {applied} of {count} objects applied:\n{stdout}"
    );
    ensure!(
        !stderr.contains("Warning"),
        "{what}: the apiserver warned:\n{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn renderings_pass_server_side_dry_run_on_the_real_apiserver() -> Result<()> {
    let cluster = TestCluster::start().await?;
    install_crd(|| cluster.kubectl())?;
    run_with_input(
        cluster.kubectl().args(["apply", "-f", "-"]),
        SERVICE_MONITOR_CRD,
    )?;
    run(cluster.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    ]))?;
    // The namespaces the namespaced objects go to must exist for a dry-run (a dry-run does
    // not create the chart's Namespace object).
    for ns in [NAMESPACE, INSTALLER_NAMESPACE, "wasm-nodes"] {
        run(cluster.kubectl().args(["create", "namespace", ns]))?;
    }
    dry_run(&cluster, "chart defaults", &helm_template(&[])?)?;
    let all = helm_template(&["-f", &all_values().to_string_lossy()])?;
    let objects = documents(&all)?;
    for kind in [
        "ServiceMonitor",
        "WasmRuntime",
        "Role",
        "Namespace",
        "Service",
        "Deployment",
    ] {
        ensure!(
            objects.iter().any(|o| o["kind"] == kind),
            "every-option rendering has no {kind}"
        );
    }
    dry_run(&cluster, "chart with every option", &all)?;
    dry_run(&cluster, "config/default", &kustomize("default")?)?;
    dry_run(&cluster, "config/ha", &kustomize("ha")?)?;
    let samples = std::fs::read_to_string(
        root().join("config/samples/wasmruntime_v1alpha1_wasmruntime.yaml"),
    )?;
    dry_run(&cluster, "config/samples", &samples)?;
    Ok(())
}

/// The operator runs in a namespace that enforces `restricted`: its Deployment raises no
/// Pod Security warning and the ReplicaSet controller gets its pod admitted. The installer
/// pod the operator builds is admitted in the privileged installer namespace and rejected
/// in a restricted one, which is why the two namespaces are separate.
#[tokio::test]
async fn pod_security_restricted_operator_privileged_installer() -> Result<()> {
    let cluster = TestCluster::start_with(ClusterOptions {
        controller_manager: true,
        ..ClusterOptions::default()
    })
    .await?;
    run(cluster.kubectl().args(["create", "namespace", NAMESPACE]))?;
    run(cluster.kubectl().args([
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]))?;
    let rendered = helm_template(&[])?;
    let (_, stderr) = run_with_input(
        cluster
            .kubectl()
            .args(["apply", "--server-side", "-f", "-"]),
        &rendered,
    )?;
    ensure!(
        !stderr.contains("PodSecurity"),
        "the chart violates restricted:\n{stderr}"
    );
    let installer_ns: Value = serde_json::from_str(&run(cluster.kubectl().args([
        "get",
        "namespace",
        INSTALLER_NAMESPACE,
        "-o",
        "json",
    ]))?)?;
    ensure!(
        installer_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged",
        "{installer_ns}"
    );

    // The ReplicaSet controller creates the operator pod only if admission lets it.
    let selector = "app.kubernetes.io/name=wasm-runtime-operator";
    wait_for(
        "the operator pod to be admitted",
        std::time::Duration::from_secs(60),
        async || {
            let out = run(cluster
                .kubectl()
                .args(["get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "name"]))?;
            Ok((!out.trim().is_empty()).then_some(()))
        },
    )
    .await
    .with_context(|| {
        run(cluster.kubectl().args(["get", "events", "-n", NAMESPACE])).unwrap_or_default()
    })?;

    // The installer pod, exactly as the operator builds it.
    let runtime = WasmRuntime::new("wasmtime", WasmRuntimeSpec::default());
    let pod_in = |ns: &str| -> Result<String> {
        let settings = Settings {
            installer_namespace: ns.into(),
            default_installer_image: "ghcr.io/wasmruntime/wasm-installer:0.1.0".into(),
        };
        let ds = resources::daemonset(&runtime, Role::Install, &settings);
        let template = ds.spec.template;
        Ok(serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "installer-probe", "namespace": ns, "labels": template.metadata.and_then(|m| m.labels)},
            "spec": template.spec,
        }))?)
    };
    let admitted = run_with_input(
        cluster.kubectl().args(["create", "-f", "-"]),
        &pod_in(INSTALLER_NAMESPACE)?,
    )?;
    ensure!(
        admitted.0.contains("pod/installer-probe created"),
        "{admitted:?}"
    );
    let out = output(
        cluster.kubectl().args(["create", "-f", "-"]),
        Some(&pod_in(NAMESPACE)?),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the installer pod was admitted in a restricted namespace"
    );
    for expected in [
        r#"violates PodSecurity "restricted:latest""#,
        "privileged",
        "hostPID",
        "hostPath",
    ] {
        ensure!(
            stderr.contains(expected),
            "expected {expected:?} in the rejection:\n{stderr}"
        );
    }
    testbed::reliability::record(
        "privilege",
        "the chart applied to the real apiserver with its namespace labelled PodSecurity `restricted`; the installer pod as the operator builds it, in each namespace",
        "the operator's objects and pod are admitted under restricted; only the installer namespace is privileged; the installer pod is refused anywhere restricted",
        "chart applied with no PodSecurity warning, operator pod created by the ReplicaSet controller, installer namespace enforce=privileged, installer pod admitted there and refused in the restricted namespace (privileged, hostPID, hostPath named)",
    );
    Ok(())
}

/// The installer pod's access to the node and the cluster is exactly what docs/security.md
/// states: no API token or other credential, the host's `/` at `/host` (and no other host
/// path), hostPID, no host network or IPC; for install and uninstall pods alike.
#[test]
fn installer_pod_has_no_credentials_and_only_the_documented_host_access() -> Result<()> {
    let settings = Settings {
        installer_namespace: INSTALLER_NAMESPACE.into(),
        default_installer_image: "ghcr.io/wasmruntime/wasm-installer:0.1.0".into(),
    };
    let runtime = WasmRuntime::new("wasmtime", WasmRuntimeSpec::default());
    let mut seen = Vec::new();
    for role in [Role::Install, Role::Uninstall] {
        let ds = resources::daemonset(&runtime, role, &settings);
        let pod = serde_json::to_value(ds.spec.template.spec.context("pod spec")?)?;
        ensure!(pod["automountServiceAccountToken"] == false, "{pod}");
        ensure!(pod.get("serviceAccountName").is_none(), "{pod}");
        ensure!(pod["hostPID"] == true, "{pod}");
        ensure!(
            pod.get("hostNetwork").is_none() && pod.get("hostIPC").is_none(),
            "{pod}"
        );
        let volumes = pod["volumes"].as_array().context("volumes")?;
        let host_paths: Vec<&Value> = volumes.iter().map(|v| &v["hostPath"]["path"]).collect();
        ensure!(host_paths == [&json!("/")], "host paths {host_paths:?}");
        ensure!(volumes.len() == 1, "{volumes:?}");
        let containers = pod["containers"].as_array().context("containers")?;
        ensure!(
            containers.len() == 1 && pod.get("initContainers").is_none(),
            "{pod}"
        );
        let c = &containers[0];
        ensure!(c.get("envFrom").is_none(), "{c}");
        for env in c["env"].as_array().into_iter().flatten() {
            let from = &env["valueFrom"];
            ensure!(
                from.is_null() || from.get("fieldRef").is_some(),
                "only downward-API values, no secrets or config maps: {env}"
            );
        }
        let mounts: Vec<&Value> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| &m["mountPath"])
            .collect();
        ensure!(mounts == [&json!("/host")], "{mounts:?}");
        seen.push(format!(
            "{role:?}: token none, host paths {host_paths:?} at {mounts:?}, hostPID, privileged {}",
            c["securityContext"]["privileged"]
        ));
    }
    testbed::reliability::record(
        "privilege",
        "the installer and uninstaller pod specs as the operator renders them",
        "no service-account token or other credential; one host path (the host's `/` at /host, see docs/security.md for why not fewer), hostPID, no host network or IPC",
        &seen.join("; "),
    );
    Ok(())
}
