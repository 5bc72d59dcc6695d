//! The test bed itself: a full control plane runs a pod on a kwok node, clusters run side by
//! side, and every process is gone after a cluster is dropped, even by a panic.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use testbed::{ClusterOptions, TestCluster};

const WAIT: Duration = Duration::from_secs(90);

/// Whether a process exists (reaped processes leave /proc).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn full_control_plane_runs_a_pod_on_a_kwok_node() -> Result<()> {
    let cluster = TestCluster::start_with(ClusterOptions::full()).await?;
    let client = cluster.client();

    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "kwok-node-0", "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": "kwok-node-0", "type": "kwok"}},
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]}
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let ready = await_condition(nodes, "kwok-node-0", |n: Option<&Node>| {
        n.and_then(|n| n.status.as_ref()?.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    });
    tokio::time::timeout(WAIT, ready)
        .await
        .context("kwok did not make the node Ready")??;

    // The controller-manager creates the default ServiceAccount the pod needs.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa = await_condition(sas, "default", |sa: Option<&ServiceAccount>| sa.is_some());
    tokio::time::timeout(WAIT, sa)
        .await
        .context("no default ServiceAccount")??;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hello"},
        "spec": {
            "containers": [{"name": "hello", "image": "hello:latest"}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let running = await_condition(pods.clone(), "hello", conditions::is_pod_running());
    tokio::time::timeout(WAIT, running)
        .await
        .context("the pod never ran")??;
    let pod = pods.get("hello").await?;
    assert_eq!(
        pod.spec.and_then(|s| s.node_name).as_deref(),
        Some("kwok-node-0"),
        "scheduled by kube-scheduler"
    );
    Ok(())
}

#[tokio::test]
async fn two_clusters_side_by_side_are_independent() -> Result<()> {
    let (a, b) = tokio::try_join!(TestCluster::start(), TestCluster::start())?;
    assert_ne!(a.address(), b.address());
    let ns = |name: &str| -> Result<k8s_openapi::api::core::v1::Namespace> {
        Ok(serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )?)
    };
    let a_ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(a.client());
    let b_ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(b.client());
    a_ns.create(&PostParams::default(), &ns("only-in-a")?)
        .await?;
    assert!(a_ns.get_opt("only-in-a").await?.is_some());
    assert!(
        b_ns.get_opt("only-in-a").await?.is_none(),
        "clusters share no state"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_a_cluster_stops_every_process_and_removes_its_dir() -> Result<()> {
    let cluster = TestCluster::start().await?;
    let pids = [
        cluster.pid("etcd").context("etcd pid")?,
        cluster.pid("kube-apiserver").context("apiserver pid")?,
    ];
    let dir = cluster.dir().to_path_buf();
    assert!(pids.iter().all(|p| alive(*p)) && dir.exists());
    drop(cluster);
    assert!(
        !pids.iter().any(|p| alive(*p)),
        "processes left behind: {pids:?}"
    );
    assert!(
        !dir.exists() || std::env::var_os("TESTBED_KEEP").is_some(),
        "{} left behind",
        dir.display()
    );
    Ok(())
}

#[test]
fn a_panicking_test_still_tears_its_cluster_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cluster = TestCluster::start().await.expect("cluster starts");
            tx.send((
                cluster.pid("etcd").unwrap(),
                cluster.pid("kube-apiserver").unwrap(),
                cluster.dir().to_path_buf(),
            ))
            .unwrap();
            panic!("a test assertion failed");
        })
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let (etcd, apiserver, dir) = rx.recv().unwrap();
    assert!(
        !alive(etcd) && !alive(apiserver),
        "processes survived the panic"
    );
    assert!(!dir.exists() || std::env::var_os("TESTBED_KEEP").is_some());
}

#[tokio::test]
async fn components_report_the_pinned_version() -> Result<()> {
    let cluster = TestCluster::start().await?;
    let info = cluster.client().apiserver_version().await?;
    assert_eq!(info.git_version, testbed::versions::KUBERNETES);
    let out = cluster.kubectl().args(["version", "-o", "json"]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        v["clientVersion"]["gitVersion"],
        testbed::versions::KUBERNETES
    );
    assert_eq!(
        v["serverVersion"]["gitVersion"],
        testbed::versions::KUBERNETES
    );
    Ok(())
}
