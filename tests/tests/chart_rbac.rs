//! The operator's RBAC in the chart (and so in config/, which chart.rs proves identical) is
//! exactly what the code calls, plus documented extras; the real apiserver allows every one
//! of those calls to the operator's ServiceAccount and nothing else we check; and the real
//! controller, run in-process as that ServiceAccount, reconciles and deletes WasmRuntimes
//! and wins the leader Lease with no more than these rights.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;
use support::*;
use testbed::TestCluster;
use wasm_operator::metrics::Metrics;
use wasm_operator::resources::Settings;

/// Where a grant applies: cluster-wide, or one namespace of the installation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Cluster,
    /// The installer namespace (INSTALLER_NAMESPACE).
    Installer,
    /// `default`: kube-runtime's Recorder writes Events of cluster-scoped objects there.
    Events,
    /// The operator's own namespace (POD_NAMESPACE), for the leader Lease.
    Operator,
}

/// (scope, apiGroup, resource, verb, resourceName).
type Grant = (
    Scope,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
);

use Scope::*;

/// Every API call the operator makes, read from the code. Keep in step with:
/// - operator/src/controller.rs `run`: `runtimes.list` (CRD check), `Controller::new`
///   (wasmruntimes list/watch), the node metadata watcher (nodes list/watch), the installer
///   pod watcher and the DaemonSet watch (installer namespace, list/watch), the RuntimeClass
///   watch (cluster, list/watch);
/// - `reconcile` -> kube-runtime `finalizer()` (wasmruntimes JSON patch);
/// - `apply`/`apply_child`: server-side apply of the RuntimeClass and both DaemonSets
///   (patch, and create: the apiserver checks `create` when an apply creates the object,
///   which the RBAC test below shows);
///   `handler_conflict` (runtimeclasses get); `execute`: node label merge patch, installer pod
///   delete; `publish_status` (wasmruntimes/status apply = patch);
/// - `cleanup`: `pods_using` (pods list, all namespaces), `delete_if_present` (daemonsets,
///   runtimeclasses delete), `get_opt` of the RuntimeClass;
/// - `publish` -> kube-runtime `Recorder::publish` (events.k8s.io create, patch for a series,
///   in `default` for our cluster-scoped WasmRuntime);
/// - operator/src/main.rs -> kube-lease-manager 0.13 `LeaseState` (get, create, patch of
///   the Lease `wasm-operator-leader`), only with leader election.
const CODE_USES: &[Grant] = &[
    (Cluster, "wasmruntime.dev", "wasmruntimes", "list", None),
    (Cluster, "wasmruntime.dev", "wasmruntimes", "watch", None),
    (Cluster, "wasmruntime.dev", "wasmruntimes", "patch", None),
    (
        Cluster,
        "wasmruntime.dev",
        "wasmruntimes/status",
        "patch",
        None,
    ),
    (Cluster, "", "nodes", "list", None),
    (Cluster, "", "nodes", "watch", None),
    (Cluster, "", "nodes", "patch", None),
    (Cluster, "", "pods", "list", None),
    (Cluster, "node.k8s.io", "runtimeclasses", "get", None),
    (Cluster, "node.k8s.io", "runtimeclasses", "list", None),
    (Cluster, "node.k8s.io", "runtimeclasses", "watch", None),
    (Cluster, "node.k8s.io", "runtimeclasses", "create", None),
    (Cluster, "node.k8s.io", "runtimeclasses", "patch", None),
    (Cluster, "node.k8s.io", "runtimeclasses", "delete", None),
    (Installer, "apps", "daemonsets", "list", None),
    (Installer, "apps", "daemonsets", "watch", None),
    (Installer, "apps", "daemonsets", "create", None),
    (Installer, "apps", "daemonsets", "patch", None),
    (Installer, "apps", "daemonsets", "delete", None),
    (Installer, "", "pods", "list", None),
    (Installer, "", "pods", "watch", None),
    (Installer, "", "pods", "delete", None),
    (Events, "events.k8s.io", "events", "create", None),
    (Events, "events.k8s.io", "events", "patch", None),
    (Operator, "coordination.k8s.io", "leases", "create", None),
    (
        Operator,
        "coordination.k8s.io",
        "leases",
        "get",
        Some("wasm-operator-leader"),
    ),
    (
        Operator,
        "coordination.k8s.io",
        "leases",
        "patch",
        Some("wasm-operator-leader"),
    ),
];

/// Grants the chart adds beyond the calls, each with its reason (docs/security.md):
/// children carry `ownerReferences[].blockOwnerDeletion: true`, which clusters running the
/// OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) only allow with
/// `update` on the owner's `finalizers` subresource.
const DOCUMENTED_EXTRAS: &[Grant] = &[(
    Cluster,
    "wasmruntime.dev",
    "wasmruntimes/finalizers",
    "update",
    None,
)];

type Owned = (Scope, String, String, String, Option<String>);

fn owned(grant: &Grant) -> Owned {
    let (scope, group, resource, verb, name) = *grant;
    (
        scope,
        group.into(),
        resource.into(),
        verb.into(),
        name.map(Into::into),
    )
}

/// Every (scope, group, resource, verb, name) the rendering grants to the operator, after
/// checking that each role is bound to its ServiceAccount.
fn granted(objects: &[Value], installer_ns: &str) -> Result<BTreeSet<Owned>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        let scope = match (
            role["kind"].as_str(),
            role["metadata"]["namespace"].as_str(),
        ) {
            (Some("ClusterRole"), _) => Cluster,
            (_, Some(ns)) if ns == installer_ns => Installer,
            (_, Some("default")) => Events,
            (_, Some(NAMESPACE)) => Operator,
            other => bail!("role {name} in an unexpected place: {other:?}"),
        };
        let binding_kind = if scope == Cluster {
            "ClusterRoleBinding"
        } else {
            "RoleBinding"
        };
        let binding = objects
            .iter()
            .find(|b| {
                b["kind"] == binding_kind
                    && b["roleRef"]["name"] == name
                    && b["metadata"]["namespace"] == role["metadata"]["namespace"]
            })
            .with_context(|| format!("{} {name} is not bound", role["kind"]))?;
        let subjects = binding["subjects"].as_array().context("binding subjects")?;
        ensure!(
            subjects.len() == 1
                && subjects[0]["kind"] == "ServiceAccount"
                && subjects[0]["name"] == RELEASE
                && subjects[0]["namespace"] == NAMESPACE,
            "{name} is bound to {subjects:?}"
        );
        for rule in role["rules"].as_array().context("rules")? {
            let names = strings(&rule["resourceNames"]);
            let names: Vec<Option<String>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(Some).collect()
            };
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        for rn in &names {
                            out.insert((
                                scope,
                                group.clone(),
                                resource.clone(),
                                verb.clone(),
                                rn.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn chart_rbac_is_the_code_calls_plus_documented_extras() -> Result<()> {
    let expected = |leader: bool| -> BTreeSet<Owned> {
        CODE_USES
            .iter()
            .chain(DOCUMENTED_EXTRAS)
            .filter(|g| leader || g.0 != Operator)
            .map(owned)
            .collect()
    };
    for (args, leader) in [(&[][..], false), (&["--set", "replicaCount=2"][..], true)] {
        let objects = documents(&helm_template(args)?)?;
        let got = granted(&objects, INSTALLER_NAMESPACE)?;
        let want = expected(leader);
        let extra: Vec<_> = got.difference(&want).collect();
        let missing: Vec<_> = want.difference(&got).collect();
        ensure!(
            extra.is_empty() && missing.is_empty(),
            "chart RBAC ({args:?}) differs from the code's calls:\nnot used by the code: {extra:?}\nmissing: {missing:?}"
        );
    }
    testbed::reliability::record(
        "privilege",
        "the chart's RBAC compared with the API calls the operator's code makes (one and two replicas)",
        "every granted verb is used by the code or documented; nothing the code uses is missing",
        &format!(
            "{} grants used by the code + {} documented extras, 0 extra, 0 missing",
            CODE_USES.len(),
            DOCUMENTED_EXTRAS.len()
        ),
    );
    Ok(())
}

fn can_i(cluster: &TestCluster, grant: &Grant) -> Result<bool> {
    let (scope, group, resource, verb, name) = *grant;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let mut target = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    if let Some(name) = name {
        target = format!("{target}/{name}");
    }
    let mut cmd = cluster.kubectl();
    cmd.args([
        "auth",
        "can-i",
        verb,
        &target,
        &format!("--as={SERVICE_ACCOUNT}"),
    ]);
    if let Some(sub) = subresource {
        cmd.arg(format!("--subresource={sub}"));
    }
    match scope {
        // Cluster-scoped resources need no namespace; for pods, -A asks "in every namespace".
        Cluster if resource == "pods" => cmd.arg("--all-namespaces"),
        Cluster => &mut cmd,
        Installer => cmd.args(["-n", INSTALLER_NAMESPACE]),
        Events => cmd.args(["-n", "default"]),
        Operator => cmd.args(["-n", NAMESPACE]),
    };
    let out = output(&mut cmd, None)?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!("{cmd:?}: {answer} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Calls the operator never makes; each must be denied.
const DENIED: &[Grant] = &[
    (Cluster, "", "secrets", "get", None),
    (Cluster, "", "secrets", "list", None),
    (Installer, "", "secrets", "get", None),
    (Operator, "", "secrets", "get", None),
    (Cluster, "", "configmaps", "list", None),
    (Cluster, "", "pods", "delete", None),
    (Events, "", "pods", "delete", None),
    (Installer, "", "pods", "create", None),
    (Installer, "", "pods/exec", "create", None),
    (Cluster, "", "nodes", "delete", None),
    (Cluster, "", "nodes", "update", None),
    (Cluster, "", "nodes/proxy", "get", None),
    (Cluster, "wasmruntime.dev", "wasmruntimes", "delete", None),
    (Cluster, "wasmruntime.dev", "wasmruntimes", "create", None),
    (Events, "apps", "daemonsets", "patch", None),
    (Operator, "apps", "daemonsets", "patch", None),
    (Installer, "apps", "deployments", "patch", None),
    (
        Operator,
        "coordination.k8s.io",
        "leases",
        "patch",
        Some("someone-else"),
    ),
    (Events, "coordination.k8s.io", "leases", "create", None),
    (Operator, "events.k8s.io", "events", "create", None),
    (
        Cluster,
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "create",
        None,
    ),
    (
        Cluster,
        "rbac.authorization.k8s.io",
        "clusterroles",
        "escalate",
        None,
    ),
    (Cluster, "", "serviceaccounts", "impersonate", None),
    (Cluster, "", "serviceaccounts/token", "create", None),
    (
        Cluster,
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "patch",
        None,
    ),
];

/// A cluster with the CRD and the chart (two replicas: leader election on) applied for real.
async fn cluster_with_chart() -> Result<TestCluster> {
    let cluster = TestCluster::start().await?;
    install_crd(|| cluster.kubectl())?;
    run(cluster.kubectl().args(["create", "namespace", NAMESPACE]))?;
    let rendered = helm_template(&["--set", "replicaCount=2"])?;
    run_with_input(
        cluster
            .kubectl()
            .args(["apply", "--server-side", "-f", "-"]),
        &rendered,
    )?;
    Ok(cluster)
}

#[tokio::test]
async fn apiserver_allows_the_operators_calls_and_denies_the_rest() -> Result<()> {
    let cluster = cluster_with_chart().await?;
    for grant in CODE_USES.iter().chain(DOCUMENTED_EXTRAS) {
        ensure!(can_i(&cluster, grant)?, "the operator may not {grant:?}");
    }
    for grant in DENIED {
        ensure!(
            !can_i(&cluster, grant)?,
            "the operator may {grant:?}, but must not"
        );
    }
    // An apply that creates needs `create` besides `patch`: the operator's first apply of a
    // RuntimeClass, as the operator's identity.
    let class = r#"{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                    "metadata": {"name": "ssa-probe"}, "handler": "ssa-probe"}"#;
    let (stdout, _) = run_with_input(
        cluster.kubectl().args([
            "apply",
            "--server-side",
            "--field-manager=wasm-operator",
            &format!("--as={SERVICE_ACCOUNT}"),
            "-f",
            "-",
        ]),
        class,
    )?;
    ensure!(
        stdout.contains("runtimeclass.node.k8s.io/ssa-probe serverside-applied"),
        "{stdout}"
    );
    testbed::reliability::record(
        "privilege",
        "`kubectl auth can-i` as the operator's ServiceAccount on the real apiserver with the chart's RBAC",
        "every call the code makes is allowed; everything else listed is denied",
        &format!(
            "{} allowed, {} denied as expected; a server-side apply that creates works",
            CODE_USES.len() + DOCUMENTED_EXTRAS.len(),
            DENIED.len()
        ),
    );
    Ok(())
}

/// A client that impersonates the operator's ServiceAccount.
async fn operator_client(cluster: &TestCluster) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(SERVICE_ACCOUNT.into());
    Ok(kube::Client::try_from(config)?)
}

fn get_json(cluster: &TestCluster, args: &[&str]) -> Result<Value> {
    let mut cmd = cluster.kubectl();
    cmd.arg("get").args(args).args(["-o", "json"]);
    Ok(serde_json::from_str(&run(&mut cmd)?)?)
}

async fn wait_state(cluster: &TestCluster, name: &str, state: &str) -> Result<Value> {
    wait_for(
        &format!("WasmRuntime {name} to be {state}"),
        Duration::from_secs(60),
        async || {
            let object = get_json(cluster, &["wasmruntime", name])?;
            Ok((object["status"]["state"] == state).then_some(object))
        },
    )
    .await
}

/// The real controller, with only the chart's rights: it adds its finalizer, applies the
/// RuntimeClass and both DaemonSets, labels a node, reports status (Ready, Progressing,
/// Degraded: each read by the Argo CD health script as Healthy, Progressing, Degraded),
/// records an Event, and on deletion removes everything and its finalizer. The leader
/// Lease is won with the same rights.
#[tokio::test]
async fn real_controller_works_with_only_the_charts_rights() -> Result<()> {
    let cluster = cluster_with_chart().await?;
    let client = operator_client(&cluster).await?;
    let settings = Settings {
        installer_namespace: INSTALLER_NAMESPACE.into(),
        default_installer_image: "ghcr.io/wasmruntime/wasm-installer:0.1.0".into(),
    };
    let controller = tokio::spawn(wasm_operator::controller::run(
        client.clone(),
        settings,
        Arc::new(Metrics::default()),
    ));
    let node = r#"{"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": "node-a", "labels": {"kubernetes.io/os": "linux"}}}"#;
    run_with_input(cluster.kubectl().args(["create", "-f", "-"]), node)?;
    let foreign = r#"{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                      "metadata": {"name": "taken"}, "handler": "taken"}"#;
    run_with_input(cluster.kubectl().args(["create", "-f", "-"]), foreign)?;
    let runtimes = r#"
apiVersion: wasmruntime.dev/v1alpha1
kind: WasmRuntime
metadata: {name: nowhere}
spec: {nodeSelector: {matchLabels: {no-such-label: "true"}}}
---
apiVersion: wasmruntime.dev/v1alpha1
kind: WasmRuntime
metadata: {name: linux}
spec: {nodeSelector: {matchLabels: {kubernetes.io/os: linux}}}
---
apiVersion: wasmruntime.dev/v1alpha1
kind: WasmRuntime
metadata: {name: conflict}
spec: {handler: taken}
"#;
    run_with_input(cluster.kubectl().args(["apply", "-f", "-"]), runtimes)?;

    // No node selected: Ready at once.
    let ready = wait_state(&cluster, "nowhere", "Ready").await?;
    ensure!(argocd_health(&ready)?.0 == "Healthy", "{ready}");
    ensure!(
        ready["metadata"]["finalizers"][0] == "wasmruntime.dev/cleanup",
        "{ready}"
    );
    get_json(&cluster, &["runtimeclass", "nowhere"])?;
    get_json(
        &cluster,
        &[
            "daemonset",
            "-n",
            INSTALLER_NAMESPACE,
            "wasm-installer-nowhere",
        ],
    )?;
    get_json(
        &cluster,
        &[
            "daemonset",
            "-n",
            INSTALLER_NAMESPACE,
            "wasm-uninstaller-nowhere",
        ],
    )?;
    // node-a selected: labelled pending; no installer pod runs here, so it stays Progressing.
    let progressing = wait_state(&cluster, "linux", "Progressing").await?;
    ensure!(
        argocd_health(&progressing)?.0 == "Progressing",
        "{progressing}"
    );
    let node = get_json(&cluster, &["node", "node-a"])?;
    ensure!(
        node["metadata"]["labels"]["wasmruntime.dev/linux"] == "pending",
        "{node}"
    );
    // A handler held by a RuntimeClass we do not own.
    let degraded = wait_state(&cluster, "conflict", "Degraded").await?;
    let (health, message) = argocd_health(&degraded)?;
    ensure!(
        health == "Degraded" && message.starts_with("HandlerConflict: "),
        "{health}: {message}"
    );
    // The RolloutComplete Event, written to `default`.
    wait_for(
        "the RolloutComplete event",
        Duration::from_secs(30),
        async || {
            let events = get_json(&cluster, &["events.events.k8s.io", "-n", "default"])?;
            let found = events["items"].as_array().is_some_and(|items| {
                items.iter().any(|e| {
                    e["reason"] == "RolloutComplete" && e["regarding"]["name"] == "nowhere"
                })
            });
            Ok(found.then_some(()))
        },
    )
    .await?;

    // Deletion: DaemonSets, RuntimeClass and finalizer go; the object disappears.
    run(cluster
        .kubectl()
        .args(["delete", "wasmruntime", "nowhere", "--wait=false"]))?;
    wait_for(
        "WasmRuntime nowhere to be deleted",
        Duration::from_secs(60),
        async || {
            let out = run(cluster
                .kubectl()
                .args(["get", "wasmruntimes", "-o", "name"]))?;
            Ok((!out.contains("wasmruntime.wasmruntime.dev/nowhere")).then_some(()))
        },
    )
    .await?;
    let left = run(cluster
        .kubectl()
        .args(["get", "runtimeclass,daemonsets", "-A", "-o", "name"]))?;
    ensure!(
        !left.contains("nowhere"),
        "left behind after deletion:\n{left}"
    );
    ensure!(
        !controller.is_finished(),
        "the controller stopped: {:?}",
        controller.await
    );
    controller.abort();

    // Leader election with the same identity and rights.
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, "wasm-operator-leader")
        .with_namespace(NAMESPACE)
        .with_identity("chart-test")
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while !*leading.borrow_and_update() {
            leading.changed().await?;
        }
        anyhow::Ok(())
    })
    .await
    .context("never became leader")??;
    let lease = get_json(
        &cluster,
        &["lease", "-n", NAMESPACE, "wasm-operator-leader"],
    )?;
    ensure!(lease["spec"]["holderIdentity"] == "chart-test", "{lease}");
    drop(leading);
    task.abort();
    Ok(())
}
