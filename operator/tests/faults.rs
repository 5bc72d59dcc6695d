//! Faults around the operator on a real control plane (test bed apiserver + etcd,
//! controller-manager, scheduler, kwok nodes whose installer pods turn Ready): the operator
//! killed during a deletion, kube-apiserver restarted mid-rollout, every connection cut
//! every two seconds, two WasmRuntimes rolled out at once, malformed objects. Each checks
//! that every node's label went through each state exactly once (no duplicated or lost
//! transition) and records its row of docs/reliability.md.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use testbed::reliability::record;
use tokio::net::{TcpListener, TcpStream};

const NODES: [&str; 5] = ["n-0", "n-1", "n-2", "n-3", "n-4"];

/// Every node went None -> pending -> provisioned, once.
fn exactly_once(history: &LabelHistory, nodes: &[&str]) -> Result<()> {
    for node in nodes {
        let seen = history.of(node);
        ensure!(
            seen == [None, Some("pending".into()), Some("provisioned".into())],
            "{node}: {seen:?}"
        );
    }
    Ok(())
}

async fn wait_gone(env: &Env, name: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while env.runtimes().get_opt(name).await?.is_some() {
        ensure!(
            Instant::now() < deadline,
            "{name} not deleted; operator log:\n{}",
            env.operator_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::test]
async fn apiserver_restart_mid_rollout_resumes_without_repeating_a_transition() -> Result<()> {
    let mut env = Env::start(&NODES).await?;
    let history = env.record_labels("wasmtime");
    env.start_operator(&[])?;
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": 1}}))
        .await?;
    env.wait_runtime("wasmtime", "2 provisioned", |rt| {
        rt.status.as_ref().is_some_and(|s| s.nodes.provisioned >= 2)
    })
    .await?;
    let t = Instant::now();
    env.cluster.restart_apiserver().await?;
    let back = t.elapsed();
    // On a saturated machine (this suite beside others on 2 CPUs) the operator's node and
    // pod watches have been seen taking up to 2 min to relist after the restart (the 410
    // at once, the next list a minute later, 40 s for it) while its other requests were
    // served; the cause is not pinned down. The row records the time measured.
    env.wait_runtime_for(Duration::from_secs(300), "wasmtime", "Ready", is_ready)
        .await?;
    let converged = t.elapsed();
    history.caught_up(&NODES, "provisioned").await?;
    exactly_once(&history, &NODES)?;
    ensure!(env.operator_running(), "the operator died");
    record(
        "operator",
        "kube-apiserver SIGKILLed and started again mid-rollout (5 nodes, maxUnavailable 1, 2 provisioned)",
        "the same operator process reconnects, resumes and converges; every node's label goes None -> pending -> provisioned exactly once",
        &format!(
            "apiserver serving again after {:.1} s, Ready {:.1} s after the kill; 5 nodes, each label history None -> pending -> provisioned; operator not restarted",
            back.as_secs_f64(),
            converged.as_secs_f64()
        ),
    );
    Ok(())
}

/// A TCP proxy to the apiserver that closes every connection it carries every `period`:
/// what a flaky load balancer or an apiserver rolling update does to watches.
struct Cutter {
    address: std::net::SocketAddr,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Cutter {
    async fn start(upstream: std::net::SocketAddr, period: Duration) -> Result<Self> {
        let listener = TcpListener::bind((upstream.ip(), 0)).await?;
        let address = listener.local_addr()?;
        let cuts = Arc::new(AtomicUsize::new(0));
        let counter = cuts.clone();
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        open.spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    _ = tick.tick() => {
                        if !open.is_empty() {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        // Dropping the tasks drops both sockets: the client sees the cut.
                        open.abort_all();
                    }
                    Some(_) = open.join_next(), if !open.is_empty() => {}
                }
            }
        });
        Ok(Self {
            address,
            cuts,
            task,
        })
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn watches_cut_every_two_seconds_converge_without_repeating_a_transition() -> Result<()> {
    let mut env = Env::start(&NODES).await?;
    let history = env.record_labels("wasmtime");
    let upstream =
        std::net::SocketAddr::from((env.cluster.address(), testbed_apiserver_port(&env)?));
    let cutter = Cutter::start(upstream, Duration::from_secs(2)).await?;
    // The operator's kubeconfig, pointed at the proxy (same IP: the serving cert fits).
    let text = std::fs::read_to_string(env.cluster.operator_kubeconfig())?;
    let via = text.replace(&upstream.to_string(), &cutter.address.to_string());
    ensure!(via != text, "the kubeconfig names {upstream}:\n{text}");
    let kubeconfig = env.cluster.dir().join("operator-via-proxy.kubeconfig");
    std::fs::write(&kubeconfig, via)?;
    env.start_operator_via(&kubeconfig, &[])?;
    let t = Instant::now();
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": 1}}))
        .await?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    let took = t.elapsed();
    history.caught_up(&NODES, "provisioned").await?;
    exactly_once(&history, &NODES)?;
    let cuts = cutter.cuts.load(Ordering::Relaxed);
    ensure!(
        cuts >= 2,
        "the proxy cut only {cuts} times: the test proves nothing"
    );
    ensure!(env.operator_running(), "the operator died");
    record(
        "operator",
        "every connection between the operator and kube-apiserver cut every 2 s (a TCP proxy) during a rollout of 5 nodes, maxUnavailable 1",
        "watches and requests resume; the rollout converges; every node's label goes None -> pending -> provisioned exactly once",
        &format!(
            "Ready after {:.1} s with {cuts} cuts; 5 nodes, each label history None -> pending -> provisioned",
            took.as_secs_f64()
        ),
    );
    Ok(())
}

/// The apiserver's port, from the admin kubeconfig's server URL.
fn testbed_apiserver_port(env: &Env) -> Result<u16> {
    let text = std::fs::read_to_string(env.cluster.kubeconfig())?;
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .context("server in kubeconfig")?
        .trim()
        .trim_matches('"');
    let port = server.rsplit(':').next().context("port")?;
    Ok(port.trim_end_matches('/').parse()?)
}

#[tokio::test]
async fn operator_killed_during_deletion_a_new_one_finishes_it() -> Result<()> {
    let nodes = ["n-0", "n-1", "n-2"];
    let mut env = Env::start(&nodes).await?;
    let history = env.record_labels("wasmtime");
    env.start_operator(&[])?;
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": 1}}))
        .await?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    env.runtimes()
        .delete("wasmtime", &DeleteParams::default())
        .await?;
    // Kill it as soon as the first node is being uninstalled.
    let deadline = Instant::now() + WAIT;
    while !history
        .of_all()
        .iter()
        .any(|v| v.as_deref() == Some("uninstalling"))
    {
        ensure!(Instant::now() < deadline, "no node was uninstalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.kill_operator();
    let killed_at = env.node_states("wasmtime").await?;
    env.start_operator(&[])?;
    wait_gone(&env, "wasmtime").await?;
    for node in nodes {
        let seen = history.of(node);
        ensure!(
            seen == [
                None,
                Some("pending".into()),
                Some("provisioned".into()),
                Some("uninstalling".into()),
                None
            ],
            "{node}: {seen:?}"
        );
    }
    ensure!(
        Api::<RuntimeClass>::all(env.client.clone())
            .get_opt("wasmtime")
            .await?
            .is_none()
    );
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), NAMESPACE);
    ensure!(daemonsets.list(&Default::default()).await?.items.is_empty());
    record(
        "operator",
        "the operator SIGKILLed while a WasmRuntime's deletion uninstalls its nodes (3 nodes, maxUnavailable 1)",
        "a new operator finishes the uninstall and removes the finalizer; RuntimeClass, DaemonSets and labels gone; each node uninstalled once",
        &format!(
            "labels at the kill: {killed_at:?}; deletion finished by the new operator; each node None -> pending -> provisioned -> uninstalling -> None; RuntimeClass and DaemonSets gone"
        ),
    );
    Ok(())
}

#[tokio::test]
async fn two_runtimes_at_once_on_the_same_nodes_both_converge() -> Result<()> {
    let mut env = Env::start(&NODES).await?;
    let a = env.record_labels("wasmtime");
    let b = env.record_labels("spin");
    env.start_operator(&[])?;
    let t = Instant::now();
    env.apply_runtime("wasmtime", json!({"rollout": {"maxUnavailable": 2}}))
        .await?;
    env.apply_runtime(
        "spin",
        json!({"handler": "spin", "rollout": {"maxUnavailable": 2}}),
    )
    .await?;
    env.wait_runtime("wasmtime", "Ready", is_ready).await?;
    env.wait_runtime("spin", "Ready", is_ready).await?;
    let took = t.elapsed();
    a.caught_up(&NODES, "provisioned").await?;
    b.caught_up(&NODES, "provisioned").await?;
    exactly_once(&a, &NODES)?;
    exactly_once(&b, &NODES)?;
    let classes = Api::<RuntimeClass>::all(env.client.clone());
    for (name, handler) in [("wasmtime", "wasmtime"), ("spin", "spin")] {
        let rc = classes.get(name).await?;
        ensure!(rc.handler == handler, "{name}: {}", rc.handler);
    }
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), NAMESPACE);
    for name in ["wasm-installer-wasmtime", "wasm-installer-spin"] {
        daemonsets
            .get(name)
            .await
            .with_context(|| name.to_owned())?;
    }
    record(
        "operator",
        "two WasmRuntimes (handlers wasmtime and spin) applied at the same moment on the same 5 nodes, maxUnavailable 2 each",
        "both roll out independently and become Ready; each has its own RuntimeClass, DaemonSet and node label; no transition of one is lost or repeated",
        &format!(
            "both Ready after {:.1} s; per runtime, every node None -> pending -> provisioned once; RuntimeClasses wasmtime/spin and both DaemonSets present",
            took.as_secs_f64()
        ),
    );
    Ok(())
}

#[tokio::test]
async fn malformed_runtimes_are_reported_and_others_roll_out() -> Result<()> {
    let mut env = Env::start(&["n-0", "n-1"]).await?;
    env.start_operator(&[])?;
    let runtimes = env.runtimes();
    let strict = PatchParams::apply("test").force().validation_strict();
    let object = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime",
               "metadata": {"name": name}, "spec": spec})
    };
    let mut seen = Vec::new();

    // An unknown field: strict validation (kubectl's default) names it; nothing is stored.
    let err = runtimes
        .patch(
            "typo",
            &strict,
            &Patch::Apply(object("typo", json!({"nodeSelectr": {}}))),
        )
        .await
        .expect_err("an unknown field is rejected");
    let msg = err.to_string();
    ensure!(msg.contains("nodeSelectr"), "{msg}");
    ensure!(runtimes.get_opt("typo").await?.is_none());
    seen.push(format!("unknown field: rejected, \"{}\"", first_line(&msg)));

    // A huge selector: 2,000 matchLabels. The apiserver stores it; it selects no node.
    let labels: serde_json::Map<String, serde_json::Value> = (0..2000)
        .map(|i| (format!("pool-{i}.example.com/x"), json!("y")))
        .collect();
    let huge = object(
        "huge",
        json!({"handler": "huge", "nodeSelector": {"matchLabels": labels}}),
    );
    let size = huge.to_string().len();
    runtimes
        .patch("huge", &strict, &Patch::Apply(huge))
        .await
        .context("a large selector")?;
    // A selector value of 1 MiB: larger than any label value can be.
    let giant = object(
        "giant",
        json!({"handler": "giant", "nodeSelector": {"matchLabels": {"a": "b".repeat(1 << 20)}}}),
    );
    let giant_result = runtimes.patch("giant", &strict, &Patch::Apply(giant)).await;
    let giant_seen = match &giant_result {
        Err(e) => format!(
            "rejected by the apiserver: \"{}\"",
            first_line(&e.to_string())
        ),
        Ok(_) => "stored".into(),
    };
    // A selector the operator cannot use: an invalid label value.
    env.apply_runtime(
        "badvalue",
        json!({"handler": "badvalue", "nodeSelector": {"matchLabels": {"a": "not a label value!"}}}),
    )
    .await?;
    env.apply_runtime("fine", json!({})).await?;

    let fine = env.wait_runtime("fine", "Ready", is_ready).await?;
    let huge = env
        .wait_runtime("huge", "reconciled", |rt| {
            rt.status.as_ref().and_then(|s| s.observed_generation) == rt.metadata.generation
        })
        .await?;
    let huge_status = huge.status.context("status")?;
    ensure!(huge_status.nodes.provisioned == 0, "{huge_status:?}");
    seen.push(format!(
        "2,000 matchLabels ({} KiB): stored, reconciled, {} nodes selected (ready {:?})",
        size / 1024,
        huge_status.nodes.provisioned,
        huge_status.ready
    ));
    if giant_result.is_ok() {
        let giant = env
            .wait_runtime("giant", "Degraded", |rt| {
                condition(rt, "Degraded").is_some_and(|(s, _, _)| s == "True")
            })
            .await?;
        let (_, reason, message) = condition(&giant, "Degraded").context("Degraded")?;
        ensure!(message.contains("(1048576 bytes)"), "{message}");
        seen.push(format!(
            "a 1 MiB label value: {giant_seen}, Degraded {reason}: \"{message}\""
        ));
    } else {
        seen.push(format!("a 1 MiB label value: {giant_seen}"));
    }
    let bad = env
        .wait_runtime("badvalue", "Degraded", |rt| {
            condition(rt, "Degraded").is_some_and(|(s, _, _)| s == "True")
        })
        .await?;
    let (_, reason, message) = condition(&bad, "Degraded").context("Degraded")?;
    seen.push(format!(
        "an invalid label value: Degraded {reason}: \"{message}\""
    ));
    ensure!(
        fine.status
            .as_ref()
            .and_then(|s| s.ready.clone())
            .as_deref()
            == Some("2/2"),
        "{:?}",
        fine.status
    );
    ensure!(env.operator_running(), "the operator died");
    ensure!(
        !env.operator_log().contains("panicked"),
        "the operator panicked:\n{}",
        env.operator_log()
    );
    record(
        "input",
        "malformed WasmRuntime objects beside a good one: an unknown field, 2,000 matchLabels, a 1 MiB label value, an invalid label value",
        "rejected by the apiserver with the field named, or stored and reported in status; the operator keeps running and the good WasmRuntime rolls out",
        &format!(
            "{}; the good one Ready 2/2; operator alive, no panic",
            seen.join("; ")
        ),
    );
    Ok(())
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(200).collect()
}
