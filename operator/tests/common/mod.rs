//! A real control plane (apiserver, controller-manager, scheduler, kwok) with the CRD installed,
//! kwok nodes, and the `wasm-operator` binary running against it as a separate process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
use testbed::{ClusterOptions, TestCluster};
use wasm_operator::api::WasmRuntime;

pub const NAMESPACE: &str = "wasm-installers";
pub const WAIT: Duration = Duration::from_secs(120);

pub struct Env {
    pub cluster: TestCluster,
    pub client: Client,
    operator: Option<Child>,
}

/// Apply (or replace) the WasmRuntime CRD and wait until it is established.
pub async fn install_crd(client: &Client, crd: &CustomResourceDefinition) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        WasmRuntime::crd_name(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(crd),
    )
    .await?;
    let established = await_condition(
        crds,
        WasmRuntime::crd_name(),
        conditions::is_crd_established(),
    );
    tokio::time::timeout(WAIT, established).await??;
    Ok(())
}

impl Env {
    /// A control plane with the CRD, the installer namespace and kwok nodes named `nodes`.
    pub async fn start(nodes: &[&str]) -> Result<Self> {
        let stages = testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kwok-pod-stages.yaml");
        let options = ClusterOptions {
            kwok_pod_stages: Some(stages),
            ..ClusterOptions::full()
        };
        let cluster = TestCluster::start_with(options).await?;
        let client = cluster.client();
        install_crd(&client, &wasm_operator::crdgen::crd()?).await?;
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let env = Self {
            cluster,
            client,
            operator: None,
        };
        for node in nodes {
            env.add_node(node, &[]).await?;
        }
        Ok(env)
    }

    /// A kwok node with extra labels.
    pub async fn add_node(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("kubernetes.io/os".into(), "linux".into());
        all.insert("kubernetes.io/hostname".into(), name.into());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": all},
        }))?;
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        Ok(())
    }

    /// Start the operator binary (again); it finds the API through KUBECONFIG.
    pub fn start_operator(&mut self, extra: &[&str]) -> Result<()> {
        let kubeconfig = self.cluster.operator_kubeconfig();
        self.start_operator_via(&kubeconfig, extra)
    }

    /// [`Self::start_operator`] with another kubeconfig (say, one that goes through a proxy).
    pub fn start_operator_via(&mut self, kubeconfig: &Path, extra: &[&str]) -> Result<()> {
        let port = 20000 + (std::process::id() % 20000) as u16;
        let log = std::fs::File::create(self.cluster.dir().join("operator.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_wasm-operator"))
            .args([
                "run",
                "--installer-namespace",
                NAMESPACE,
                "--installer-image",
                "wasm-installer:test",
            ])
            .arg(format!("--metrics-addr={}:{port}", self.cluster.address()))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                "info,wasm_operator=debug,kube_runtime::watcher=debug",
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting wasm-operator")?;
        self.operator = Some(child);
        Ok(())
    }

    pub fn metrics_url(&self) -> String {
        format!(
            "http://{}:{}/metrics",
            self.cluster.address(),
            20000 + (std::process::id() % 20000) as u16
        )
    }

    /// Kill the operator with SIGKILL (no chance to clean up).
    pub fn kill_operator(&mut self) {
        if let Some(mut child) = self.operator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the operator process is still running (it did not crash).
    pub fn operator_running(&mut self) -> bool {
        self.operator
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn operator_log(&self) -> String {
        std::fs::read_to_string(self.cluster.dir().join("operator.log")).unwrap_or_default()
    }

    pub fn runtimes(&self) -> Api<WasmRuntime> {
        Api::all(self.client.clone())
    }

    pub async fn apply_runtime(&self, name: &str, spec: Value) -> Result<()> {
        let obj = json!({"apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime", "metadata": {"name": name}, "spec": spec});
        self.runtimes()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(obj),
            )
            .await?;
        Ok(())
    }

    /// Wait until `check` holds for the named runtime; on timeout, fail with its last status
    /// and the operator log tail.
    pub async fn wait_runtime(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&WasmRuntime) -> bool,
    ) -> Result<WasmRuntime> {
        self.wait_runtime_for(WAIT, name, what, check).await
    }

    /// [`Self::wait_runtime`] with its own time limit.
    pub async fn wait_runtime_for(
        &self,
        limit: Duration,
        name: &str,
        what: &str,
        check: impl Fn(&WasmRuntime) -> bool,
    ) -> Result<WasmRuntime> {
        let started = Instant::now();
        loop {
            if let Some(rt) = self.runtimes().get_opt(name).await?
                && check(&rt)
            {
                return Ok(rt);
            }
            if started.elapsed() > limit {
                let rt = self.runtimes().get_opt(name).await?;
                let log = self.operator_log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                // what the installer pods really are, against what the operator saw
                let pods = self
                    .cluster
                    .kubectl()
                    .args(["get", "pods", "-A", "-o", "wide", "--show-labels"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                bail!(
                    "{name}: {what} not reached in {limit:?}; status: {:?}\npods:\n{pods}\noperator log:\n{}",
                    rt.and_then(|r| r.status),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The value of our label on each node.
    pub async fn node_states(&self, runtime: &str) -> Result<BTreeMap<String, Option<String>>> {
        let key = format!("wasmruntime.dev/{runtime}");
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&Default::default())
            .await?;
        Ok(nodes
            .items
            .into_iter()
            .map(|n| {
                let v = n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned());
                (n.metadata.name.unwrap_or_default(), v)
            })
            .collect())
    }

    /// Record every value our label takes on every node, from now on.
    pub fn record_labels(&self, runtime: &str) -> LabelHistory {
        let history = LabelHistory::default();
        let key = format!("wasmruntime.dev/{runtime}");
        let sink = history.clone();
        let nodes: Api<Node> = Api::all(self.client.clone());
        tokio::spawn(async move {
            // Through apiserver restarts and cut connections too: errors are retried, and
            // the re-list repeats values the history already holds (not recorded twice).
            let mut stream = watcher(nodes, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                let Ok(node) = item else { continue };
                let value = node
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned());
                sink.push(node.metadata.name.unwrap_or_default(), value);
            }
        });
        history
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_operator();
    }
}

/// Every distinct label value each node went through, in order.
#[derive(Clone, Default)]
pub struct LabelHistory(Arc<Mutex<Vec<Observed>>>);

/// A node and the value our label had.
type Observed = (String, Option<String>);

impl LabelHistory {
    fn push(&self, node: String, value: Option<String>) {
        let mut all = self.0.lock().unwrap();
        let last = all
            .iter()
            .rev()
            .find(|(n, _)| *n == node)
            .map(|(_, v)| v.clone());
        if last.as_ref() != Some(&value) {
            all.push((node, value));
        }
    }

    /// Wait until the watch has delivered `value` as the latest label of every node: the
    /// recorder's watch may trail the client that saw the runtime Ready.
    pub async fn caught_up(&self, nodes: &[&str], value: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let behind: Vec<&str> = nodes
                .iter()
                .copied()
                .filter(|n| self.of(n).last().cloned().flatten().as_deref() != Some(value))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("label history never showed {value} on {behind:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every value recorded on any node, in order.
    pub fn of_all(&self) -> Vec<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn of(&self, node: &str) -> Vec<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == node)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The most nodes that were `pending` at the same time.
    pub fn max_pending(&self) -> usize {
        let mut current: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut max = 0;
        for (node, value) in self.0.lock().unwrap().iter() {
            current.insert(node.clone(), value.clone());
            max = max.max(
                current
                    .values()
                    .filter(|v| v.as_deref() == Some("pending"))
                    .count(),
            );
        }
        max
    }
}

pub fn condition(rt: &WasmRuntime, kind: &str) -> Option<(String, String, String)> {
    rt.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub fn is_ready(rt: &WasmRuntime) -> bool {
    condition(rt, "Ready").is_some_and(|(s, _, _)| s == "True")
        && rt.status.as_ref().and_then(|s| s.observed_generation) == rt.metadata.generation
}
