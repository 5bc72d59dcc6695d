//! `cargo xtask e2e`: the end-to-end suite on the real single-node cluster of `xtask up`,
//! once per containerd version (a fresh cluster each time). Every step checks behaviour
//! through the Kubernetes API, the node's containerd config and real HTTP traffic, and is
//! timed; `--record` writes the timings into docs/benchmarks.md.
//!
//! Steps: 1 install (helm, WasmRuntime Ready, node provisioned, RuntimeClass), 2 Jobs
//! (classic compat-smart image, p2 component, exit code 3), 3 wasi:http behind a Service
//! (port from the pod annotation `wasmruntime.dev/http-port`; Service IP, port-forward)
//! beside a runc pod, 4 volumes, memory limit (137, `OOMKilled`),
//! graceful delete, 5 day-2 re-roll under HTTP load, 6 a broken install rolled back (two
//! containerd restarts under HTTP load, the Wasm pod untouched), 7 deletion while in use
//! and `helm uninstall`, 8 docs/getting-started.md run verbatim.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use testbed::node::{NODE_NAME, Node};
use testbed::oci::RootfsImage;
use testbed::workloads::{BUSYBOX_IMAGE, HELLO_GREETING, HELLO_WASM_IMAGE};

use crate::up::{self, Clock, INSTALLER_NAMESPACE, RELEASE, RELEASE_NAMESPACE, Up};
use crate::{cmd, images};

/// Where the installer puts the shim of WasmRuntime `wasmtime` (`SHIM_ROOT/<name>/`).
const SHIM_DIR: &str = "/opt/wasmruntime/wasmtime";
/// The image docs/getting-started.md runs; the suite imports our hello image under it.
const GETTING_STARTED_IMAGE: &str = "ghcr.io/wasmruntime/hello-wasm:0.1.0";
const BROKEN_INSTALLER: &str = "localhost/wasmruntime/wasm-installer:e2e-broken";

/// One workload image: (reference, fixture file, entrypoint).
const WORKLOADS: [(&str, &str); 6] = [
    (
        "localhost/wasmruntime/e2e-component:1",
        "hello-component.wasm",
    ),
    ("localhost/wasmruntime/e2e-exit3:1", "exit3.wasm"),
    ("localhost/wasmruntime/e2e-grow:1", "grow.wasm"),
    ("localhost/wasmruntime/e2e-fs:1", "fs.wasm"),
    ("localhost/wasmruntime/e2e-sleep:1", "sleep.wasm"),
    ("localhost/wasmruntime/e2e-http:1", "http.wasm"),
];

fn workload(file: &str) -> &'static str {
    WORKLOADS
        .iter()
        .find(|(_, f)| *f == file)
        .map(|(r, _)| *r)
        .expect("a known workload")
}

/// Timings of one containerd version's run.
pub struct Run {
    pub containerd: String,
    pub steps: Vec<(String, Duration)>,
    /// Requests and failed requests through the Service during the day-2 re-roll.
    pub load: Vec<(String, u64, u64)>,
    /// Rows of docs/reliability.md this run proved.
    pub findings: Vec<Finding>,
}

/// A fault the suite injected through the real cluster, and what it saw.
pub struct Finding {
    pub step: &'static str,
    pub area: &'static str,
    pub fault: &'static str,
    pub expected: &'static str,
    pub observed: String,
}

/// `rows`: where `cargo xtask test` collects the rows of docs/reliability.md.
pub fn run(
    versions: &[String],
    record: bool,
    keep: bool,
    rows: Option<&std::path::Path>,
) -> Result<()> {
    let started = Instant::now();
    let mut runs = Vec::new();
    for v in versions {
        let run = run_version(v).with_context(|| format!("e2e on containerd {v}"))?;
        for f in run.findings.iter().filter(|_| rows.is_some()) {
            let row = ::testbed::reliability::Row {
                area: f.area.into(),
                fault: format!("{} (containerd {}, real kubelet)", f.fault, run.containerd),
                expected: f.expected.into(),
                observed: f.observed.clone(),
                test: format!("xtask e2e ({}) {}", run.containerd, f.step),
            };
            ::testbed::reliability::record_row(rows.expect("filtered"), &row);
        }
        runs.push(run);
    }
    if !keep {
        up::down()?;
    }
    let section = report(&runs);
    println!("{section}");
    eprintln!("xtask e2e: passed in {:.0?}", started.elapsed());
    if record {
        cmd::update_doc_section("docs/benchmarks.md", "e2e", &section)?;
    }
    Ok(())
}

fn run_version(containerd: &str) -> Result<Run> {
    let clock = Clock::new();
    let mut run = Run {
        containerd: containerd.to_owned(),
        steps: Vec::new(),
        load: Vec::new(),
        findings: Vec::new(),
    };
    let mut lap = Instant::now();
    let mut done = |run: &mut Run, what: &str| {
        clock.step(&format!("e2e ({containerd}): {what} passed"));
        run.steps.push((what.to_owned(), lap.elapsed()));
        lap = Instant::now();
    };

    let up = up::cluster(up::package(containerd)?, false, true, &clock)?;
    let node = &up.node;
    import_workloads(&up)?;
    let before = std::fs::read(node.containerd_config()).context("containerd config")?;
    done(&mut run, "cluster up, images imported (as `xtask up`)");

    step1_install(&up)?;
    done(
        &mut run,
        "1 helm install -> WasmRuntime Ready, node provisioned",
    );
    step2_jobs(node)?;
    done(&mut run, "2 Jobs: compat-smart image, p2 component, exit 3");
    let service = step3_http(node)?;
    done(
        &mut run,
        "3 wasi:http via Service IP and port-forward, runc beside",
    );
    run.findings.extend(step4_limits(node)?);
    done(
        &mut run,
        "4 ConfigMap ro, memory limit 137 OOMKilled, graceful delete 143",
    );
    run.load.push(step5_day2(node, service)?);
    done(&mut run, "5 day-2 re-roll under HTTP load");
    let (load, finding) = step6_broken(node, service)?;
    run.load.push(load);
    run.findings.push(finding);
    done(
        &mut run,
        "6 broken install rolled back, node excluded, HTTP pod kept",
    );
    step7_delete(node, &before)?;
    done(&mut run, "7 delete while in use, uninstall, helm uninstall");
    step8_getting_started(&up)?;
    done(&mut run, "8 docs/getting-started.md verbatim");
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// Steps

fn step1_install(up: &Up) -> Result<()> {
    let node = &up.node;
    up::install_chart(up)?;
    up::apply(node, &up::adapted_sample(node)?)?;
    up::wait_runtime_ready(node, "wasmtime", "300s")?;
    let label = get(
        node,
        &["node", NODE_NAME],
        "{.metadata.labels.wasmruntime\\.dev/wasmtime}",
    )?;
    ensure!(label == "provisioned", "node label is {label:?}");
    let selector = get(
        node,
        &["runtimeclass", "wasmtime"],
        "{.handler} {.scheduling.nodeSelector}",
    )?;
    ensure!(
        selector.starts_with("wasmtime ")
            && selector.contains("\"wasmruntime.dev/wasmtime\":\"provisioned\""),
        "RuntimeClass wasmtime: {selector}"
    );
    Ok(())
}

fn step2_jobs(node: &Node) -> Result<()> {
    up::run_job(
        node,
        "e2e-compat",
        &job("e2e-compat", pod(HELLO_WASM_IMAGE, &["from", "e2e"])),
        HELLO_GREETING,
    )?;
    up::run_job(
        node,
        "e2e-component",
        &job(
            "e2e-component",
            pod(workload("hello-component.wasm"), &["component"]),
        ),
        "hello from wasm",
    )?;
    let (code, _, _) = failed_job(
        node,
        "e2e-exit3",
        job("e2e-exit3", pod(workload("exit3.wasm"), &[])),
    )?;
    ensure!(code == 3, "the exit-3 guest's container exited {code}");
    Ok(())
}

/// Port of the wasi:http pod, set by its annotation (not the shim's default 8080): a pod
/// that turns ready proves CRI copied the annotation to the shim (the installer's
/// `pod_annotations` in the runtime entry).
const HTTP_POD_PORT: u16 = 8081;

fn step3_http(node: &Node) -> Result<SocketAddr> {
    let mut spec = pod(workload("http.wasm"), &[]);
    spec["restartPolicy"] = json!("Always");
    spec["containers"][0]["ports"] = json!([{"containerPort": HTTP_POD_PORT}]);
    spec["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/ready", "port": HTTP_POD_PORT}, "periodSeconds": 1});
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "e2e-http", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "e2e-http"}},
            "template": {
                "metadata": {
                    "labels": {"app": "e2e-http"},
                    "annotations": {"wasmruntime.dev/http-port": HTTP_POD_PORT.to_string()}
                },
                "spec": spec
            }
        }
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "e2e-http", "namespace": "default"},
        "spec": {"selector": {"app": "e2e-http"}, "ports": [{"port": 80, "targetPort": HTTP_POD_PORT}]}
    });
    let runc = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "e2e-runc", "namespace": "default"},
        "spec": {"containers": [{
            "name": "sleep", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", "echo runc beside wasm; exec busybox sleep 3600"]
        }]}
    });
    up::apply(node, &deployment.to_string())?;
    up::apply(node, &service.to_string())?;
    up::apply(node, &runc.to_string())?;
    kubectl(
        node,
        &["rollout", "status", "deployment/e2e-http", "--timeout=180s"],
    )?;
    kubectl(
        node,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/e2e-runc",
            "--timeout=120s",
        ],
    )?;

    let ip = get(node, &["service", "e2e-http"], "{.spec.clusterIP}")?;
    let addr: SocketAddr = format!("{ip}:80").parse().context("Service IP")?;
    // kube-proxy programs the Service a moment after the pod turned Ready: wait for it.
    wait_until("the Service to answer", 60, || {
        Ok(http_get(addr, "/via-service").is_ok())
    })?;
    let body = http_get(addr, "/via-service")?;
    ensure!(
        body == "hello from wasi:http /via-service\n",
        "through the Service IP: {body:?}"
    );

    let mut forward = node
        .kubectl()
        .args(["port-forward", "service/e2e-http", ":80"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("kubectl port-forward")?;
    let mut lines = BufReader::new(forward.stdout.take().context("port-forward stdout")?).lines();
    let line = lines.next().context("port-forward printed nothing")??;
    // Keep draining: kubectl (Go) dies of SIGPIPE when its stdout closes.
    std::thread::spawn(move || lines.for_each(drop));
    // "Forwarding from 127.0.0.1:40123 -> 8081"
    let port = line
        .split_once("127.0.0.1:")
        .and_then(|(_, r)| r.split_whitespace().next())
        .with_context(|| format!("port-forward said {line:?}"))?;
    let body = http_get(format!("127.0.0.1:{port}").parse()?, "/via-port-forward");
    let _ = forward.kill();
    let _ = forward.wait();
    let body = body?;
    ensure!(
        body == "hello from wasi:http /via-port-forward\n",
        "through kubectl port-forward: {body:?}"
    );

    let wasm_node = get(
        node,
        &["pods", "-l", "app=e2e-http"],
        "{.items[0].spec.nodeName}",
    )?;
    let runc_node = get(node, &["pod", "e2e-runc"], "{.spec.nodeName}")?;
    let runc_logs = kubectl(node, &["logs", "e2e-runc"])?;
    ensure!(
        wasm_node == runc_node && runc_logs.contains("runc beside wasm"),
        "runc pod on {runc_node:?} ({runc_logs:?}), Wasm pod on {wasm_node:?}"
    );
    Ok(addr)
}

fn step4_limits(node: &Node) -> Result<Vec<Finding>> {
    let config = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "e2e-config", "namespace": "default"},
        "data": {"greeting.txt": "hello from a ConfigMap\n"}
    });
    up::apply(node, &config.to_string())?;
    let with_config = |args: &[&str]| {
        let mut spec = pod(workload("fs.wasm"), args);
        spec["containers"][0]["volumeMounts"] = json!([{"name": "config", "mountPath": "/config"}]);
        spec["volumes"] = json!([{"name": "config", "configMap": {"name": "e2e-config"}}]);
        spec
    };
    up::run_job(
        node,
        "e2e-read",
        &job("e2e-read", with_config(&["read", "/config/greeting.txt"])),
        "hello from a ConfigMap",
    )?;
    let (code, _, logs) = failed_job(
        node,
        "e2e-write",
        job("e2e-write", with_config(&["write", "/config/new.txt"])),
    )?;
    ensure!(
        code != 0 && logs.contains("open /config/new.txt"),
        "writing into the ConfigMap: exit {code}, logs {logs:?}"
    );

    let mut grow = pod(workload("grow.wasm"), &[]);
    grow["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    let (code, reason, _) = failed_job(node, "e2e-oom", job("e2e-oom", grow))?;
    ensure!(
        code == 137 && reason == "OOMKilled",
        "growing past the limit: exit {code} ({reason}); want 137 (OOMKilled)"
    );
    eprintln!("e2e: memory limit: exit 137, reason {reason:?}");
    let mut findings = vec![Finding {
        step: "4",
        area: "shim",
        fault: "a Wasm Job grows its memory past its 32Mi limit",
        expected: "the container ends 137 and kubelet reports OOMKilled, as for runc",
        observed: format!("exit {code}, reason {reason}"),
    }];

    let mut sleep = pod(workload("sleep.wasm"), &[]);
    sleep["terminationGracePeriodSeconds"] = json!(30);
    let sleeper = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "e2e-sleep", "namespace": "default"},
        "spec": sleep
    });
    up::apply(node, &sleeper.to_string())?;
    kubectl(
        node,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/e2e-sleep",
            "--timeout=120s",
        ],
    )?;
    let (code, took) = delete_and_watch_exit(node, "e2e-sleep")?;
    ensure!(
        code == 143,
        "deleted with a 30 s grace period, the guest exited {code} after {took:.1?} (143: SIGTERM ended it; 137: it was killed when the grace period ran out)"
    );
    eprintln!("e2e: graceful delete: exit 143 after {took:.1?} (grace period 30 s)");
    findings.push(Finding {
        step: "4",
        area: "shim",
        fault: "a Wasm pod blocked in a host call is deleted with a 30 s grace period",
        expected: "SIGTERM ends the guest: exit 143 long before the grace period",
        observed: format!("exit {code} after {:.1} s", took.as_secs_f64()),
    });
    for j in [
        "e2e-compat",
        "e2e-component",
        "e2e-exit3",
        "e2e-read",
        "e2e-write",
        "e2e-oom",
    ] {
        kubectl(
            node,
            &["delete", "job", j, "--cascade=foreground", "--wait=true"],
        )?;
    }
    Ok(findings)
}

/// The wasi:http pod's uid and its container's restart count: the same before and after
/// means nothing replaced or restarted it.
fn http_pod(node: &Node) -> Result<String> {
    get(
        node,
        &["pods", "-l", "app=e2e-http"],
        "{.items[0].metadata.uid} {.items[0].status.containerStatuses[0].restartCount}",
    )
}

fn step5_day2(node: &Node, service: SocketAddr) -> Result<(String, u64, u64)> {
    let before = http_pod(node)?;
    let installer_before = installer_pod_uid(node)?;
    let load = Load::start(service);
    kubectl(
        node,
        &[
            "patch",
            "wasmruntime",
            "wasmtime",
            "--type=merge",
            "-p",
            r#"{"spec":{"wasm":{"precompile":false}}}"#,
        ],
    )?;
    let generation = get(node, &["wasmruntime", "wasmtime"], "{.metadata.generation}")?;
    wait_until("the re-roll of generation {generation}", 300, || {
        let status = get(
            node,
            &["wasmruntime", "wasmtime"],
            "{.status.observedGeneration} {.status.conditions[?(@.type==\"Ready\")].status}",
        )?;
        Ok(status == format!("{generation} True")
            && installer_pod_uid(node).is_ok_and(|u| u != installer_before))
    })?;
    let (requests, failed) = load.stop();
    let after = http_pod(node)?;
    ensure!(
        after == before,
        "the HTTP pod was replaced or restarted during the re-roll: {before} -> {after}"
    );
    let version = get(node, &["wasmruntime", "wasmtime"], "{.status.shimVersion}")?;
    eprintln!(
        "e2e: day-2: generation {generation} rolled out, shim {version}, {requests} requests, {failed} failed"
    );
    ensure!(!version.is_empty(), "status.shimVersion is empty");
    ensure!(
        failed == 0,
        "{failed} of {requests} requests failed during the re-roll"
    );
    Ok(("day-2 re-roll (step 5)".into(), requests, failed))
}

/// The broken install restarts containerd twice (install, rollback) while the wasi:http
/// Deployment serves under load: the running Wasm pod must come through both restarts
/// untouched (same pod, no container restart, no failed request).
fn step6_broken(node: &Node, service: SocketAddr) -> Result<((String, u64, u64), Finding)> {
    let before = http_pod(node)?;
    let load = Load::start(service);
    let mut broken: serde_yaml::Value = serde_yaml::from_str(&up::adapted_sample(node)?)?;
    broken["metadata"]["name"] = "broken".into();
    broken["spec"]["handler"] = "broken".into();
    broken["spec"]["shim"] = serde_yaml::from_str(&format!(
        "{{image: \"{BROKEN_INSTALLER}\", imagePullPolicy: Never}}"
    ))?;
    broken["spec"]["rollout"]["verifyTimeoutSeconds"] = 60.into();
    up::apply(node, &serde_yaml::to_string(&broken)?)?;
    kubectl(
        node,
        &[
            "wait",
            "--for=condition=Degraded",
            "wasmruntime/broken",
            "--timeout=300s",
        ],
    )?;
    let label = get(
        node,
        &["node", NODE_NAME],
        "{.metadata.labels.wasmruntime\\.dev/broken}",
    )?;
    let failure = get(
        node,
        &["wasmruntime", "broken"],
        "{.status.failures[0].message}",
    )?;
    ensure!(label == "failed", "node label for broken: {label:?}");
    ensure!(!failure.is_empty(), "no failure message in status");
    eprintln!("e2e: broken install reported: {failure}");
    let config = std::fs::read_to_string(node.containerd_config())?;
    ensure!(
        !config.contains("runtimes.broken") && config.contains("runtimes.wasmtime"),
        "the config was not rolled back:\n{config}"
    );
    kubectl(
        node,
        &[
            "wait",
            "--for=condition=Ready",
            &format!("node/{NODE_NAME}"),
            "--timeout=60s",
        ],
    )?;
    up::run_job(
        node,
        "e2e-runc-after",
        &job_with_image(
            "e2e-runc-after",
            BUSYBOX_IMAGE,
            &["/bin/sh", "-c", "echo still fine"],
        ),
        "still fine",
    )?;
    // A pod for the broken runtime is not scheduled: no node is provisioned for it.
    let mut spec = pod(HELLO_WASM_IMAGE, &[]);
    spec["runtimeClassName"] = json!("broken");
    let excluded = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "e2e-broken", "namespace": "default"},
        "spec": spec
    });
    up::apply(node, &excluded.to_string())?;
    wait_until("pod e2e-broken to be found unschedulable", 60, || {
        Ok(get(
            node,
            &["pod", "e2e-broken"],
            "{.status.conditions[?(@.type==\"PodScheduled\")].reason}",
        )? == "Unschedulable")
    })?;
    kubectl(node, &["delete", "pod", "e2e-broken", "--wait=true"])?;
    let (requests, failed) = load.stop();
    let after = http_pod(node)?;
    eprintln!("e2e: HTTP through two containerd restarts: {requests} requests, {failed} failed");
    ensure!(
        after == before,
        "the HTTP pod was replaced or restarted by the containerd restarts: {before} -> {after}"
    );
    ensure!(
        failed == 0,
        "{failed} of {requests} requests failed across the containerd restarts"
    );
    kubectl(
        node,
        &[
            "delete",
            "deployment,service",
            "e2e-http",
            "--cascade=foreground",
            "--wait=true",
        ],
    )?;
    kubectl(
        node,
        &[
            "delete",
            "job",
            "e2e-runc-after",
            "--cascade=foreground",
            "--wait=true",
        ],
    )?;
    kubectl(
        node,
        &[
            "delete",
            "wasmruntime",
            "broken",
            "--wait=true",
            "--timeout=300s",
        ],
    )?;
    let finding = Finding {
        step: "6",
        area: "operator",
        fault: "a WasmRuntime whose installer writes an entry containerd rejects, while a wasi:http Deployment of another WasmRuntime serves under load on the node",
        expected: "rolled back on the node (containerd restarted twice), node labelled failed with the message in status, its RuntimeClass schedules nowhere; the running Wasm pod keeps its uid and restart count and no request fails",
        observed: format!(
            "node label {label}, message: {failure}; {requests} requests, {failed} failed; pod uid and restarts {}",
            if after == before {
                "unchanged"
            } else {
                "changed"
            }
        ),
    };
    Ok((
        (
            "broken install: two containerd restarts (step 6)".into(),
            requests,
            failed,
        ),
        finding,
    ))
}

fn step7_delete(node: &Node, before: &[u8]) -> Result<()> {
    let user = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "e2e-user", "namespace": "default"},
        "spec": pod(workload("sleep.wasm"), &[])
    });
    up::apply(node, &user.to_string())?;
    kubectl(
        node,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/e2e-user",
            "--timeout=120s",
        ],
    )?;
    kubectl(node, &["delete", "wasmruntime", "wasmtime", "--wait=false"])?;
    wait_until("the deletion to wait for the Wasm pod", 120, || {
        Ok(get(
            node,
            &["wasmruntime", "wasmtime"],
            "{.status.conditions[?(@.type==\"Ready\")].reason}",
        )? == "InUse")
    })?;
    let why = get(
        node,
        &["wasmruntime", "wasmtime"],
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    )?;
    ensure!(
        why.contains("e2e-user"),
        "the InUse message names no pod: {why}"
    );
    ensure!(
        Path::new(SHIM_DIR)
            .join("containerd-shim-wasmtime-v1")
            .exists(),
        "the shim went while pods use it"
    );
    eprintln!("e2e: deletion waits: {why}");
    kubectl(node, &["delete", "pod", "e2e-user", "--wait=true"])?;
    kubectl(
        node,
        &[
            "wait",
            "--for=delete",
            "wasmruntime/wasmtime",
            "--timeout=300s",
        ],
    )?;
    let left = kubectl(
        node,
        &[
            "get",
            "runtimeclass,daemonset",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=wasm-operator",
            "-o",
            "name",
        ],
    )?;
    let runtimeclass = kubectl(
        node,
        &[
            "get",
            "runtimeclass",
            "wasmtime",
            "--ignore-not-found",
            "-o",
            "name",
        ],
    )?;
    let label = get(
        node,
        &["node", NODE_NAME],
        "{.metadata.labels.wasmruntime\\.dev/wasmtime}",
    )?;
    ensure!(
        left.trim().is_empty() && runtimeclass.trim().is_empty() && label.is_empty(),
        "left after deletion: {left} {runtimeclass} label {label:?}"
    );
    let after = std::fs::read(node.containerd_config())?;
    ensure!(
        after == before,
        "the containerd config differs from before the install:\n{}",
        String::from_utf8_lossy(&after)
    );
    ensure!(
        !Path::new(SHIM_DIR)
            .join("containerd-shim-wasmtime-v1")
            .exists(),
        "the shim is still in {SHIM_DIR}"
    );

    for (kind, name) in [("pod", "e2e-runc"), ("configmap", "e2e-config")] {
        kubectl(
            node,
            &["delete", kind, name, "--ignore-not-found", "--wait=true"],
        )?;
    }
    cmd::run(node.helm().args([
        "uninstall",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
    ]))?;
    let instance = format!("app.kubernetes.io/instance={RELEASE}");
    let left = kubectl(
        node,
        &[
            "get",
            "all,serviceaccount,role,rolebinding,clusterrole,clusterrolebinding,configmap,secret,lease",
            "-A",
            "-l",
            &instance,
            "-o",
            "name",
        ],
    )?;
    ensure!(left.trim().is_empty(), "helm uninstall left: {left}");
    let namespace = kubectl(
        node,
        &[
            "get",
            "namespace",
            INSTALLER_NAMESPACE,
            "--ignore-not-found",
            "-o",
            "name",
        ],
    )?;
    ensure!(
        namespace.trim().is_empty(),
        "helm uninstall left the namespace {INSTALLER_NAMESPACE}"
    );
    // Helm never deletes CRDs (docs/uninstall.md step 4).
    kubectl(
        node,
        &[
            "delete",
            "crd",
            "wasmruntimes.wasmruntime.dev",
            "--wait=true",
        ],
    )?;
    kubectl(
        node,
        &["delete", "namespace", RELEASE_NAMESPACE, "--wait=true"],
    )?;
    Ok(())
}

/// The shell blocks of docs/getting-started.md, verbatim, in order, from the repository
/// root, against this cluster.
fn step8_getting_started(up: &Up) -> Result<()> {
    let node = &up.node;
    let text = std::fs::read_to_string(cmd::workspace_root().join("docs/getting-started.md"))?;
    let blocks = shell_blocks(&text);
    ensure!(
        blocks.len() >= 4,
        "docs/getting-started.md has {} sh blocks",
        blocks.len()
    );
    let bin = testbed::paths::go_bin(&testbed::versions::KUBERNETES_BUILD, "kubectl");
    let helm = testbed::paths::go_bin(&testbed::versions::HELM_BUILD, "helm");
    let path = format!(
        "{}:{}:{}",
        bin.parent().context("kubectl dir")?.display(),
        helm.parent().context("helm dir")?.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (i, block) in blocks.iter().enumerate() {
        eprintln!("e2e: getting-started block {}:\n{block}", i + 1);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env("KUBECONFIG", node.kubeconfig())
            .env("PATH", &path)
            .current_dir(cmd::workspace_root())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        ensure!(
            out.status.success(),
            "getting-started block {} failed",
            i + 1
        );
        if block.contains("kubectl logs hello-wasm") {
            ensure!(
                stdout.contains("hello from wasm") || stdout.contains(HELLO_GREETING),
                "the getting-started pod printed {stdout:?}"
            );
        }
    }
    Ok(())
}

/// The bodies of the ```sh blocks of a Markdown text.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(body), l) => {
                body.push_str(l);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

// ---------------------------------------------------------------------------------------
// Images

/// Our Wasm test programs as classic `FROM scratch` images, the getting-started image, and
/// an installer image that writes a corrupt entry (the `bad-entry` fault hook, set in the
/// image's environment: a "broken option" containerd refuses to start with).
fn import_workloads(up: &Up) -> Result<()> {
    let dir = up.image_dir.join("e2e");
    let fixtures = dir.join("fixtures");
    cmd::wasm_fixtures(&fixtures)?;
    let mut tars = Vec::new();
    for (reference, file) in WORKLOADS {
        let wasm = std::fs::read(fixtures.join(file))?;
        let entry = format!("/{file}");
        let tar = dir.join(format!("{}.tar", file.trim_end_matches(".wasm")));
        RootfsImage::new(reference)
            .file(&entry, wasm, 0o755)
            .entrypoint(&[&entry])
            .write_tar(&tar)?;
        tars.push(tar);
    }
    let hello = std::fs::read(up.image_dir.join("hello-src/hello.wasm"))?;
    let tar = dir.join("getting-started.tar");
    RootfsImage::new(GETTING_STARTED_IMAGE)
        .file("/hello.wasm", hello, 0o755)
        .entrypoint(&["/hello.wasm"])
        .annotation(testbed::oci::VARIANT_ANNOTATION, "compat-smart")
        .write_tar(&tar)?;
    tars.push(tar);
    let spec = images::specs()
        .into_iter()
        .find(|s| s.name == "wasm-installer")
        .context("installer image spec")?;
    let tar = dir.join("installer-broken.tar");
    images::assemble(&spec, BROKEN_INSTALLER, &up.binaries, up.dev, &dir)?
        .env(&["WASM_INSTALLER_FAULT=bad-entry"])
        .write_tar(&tar)?;
    tars.push(tar);
    for tar in tars {
        up.node
            .import(&tar)
            .with_context(|| format!("importing {}", tar.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Kubernetes helpers

fn kubectl(node: &Node, args: &[&str]) -> Result<String> {
    cmd::output(node.kubectl().args(args).current_dir(cmd::workspace_root()))
}

/// `kubectl get <what> -o jsonpath=<path>`, trimmed.
fn get(node: &Node, what: &[&str], path: &str) -> Result<String> {
    let mut args = vec!["get"];
    args.extend(what);
    let jsonpath = format!("jsonpath={path}");
    args.extend(["-o", &jsonpath]);
    Ok(kubectl(node, &args)?.trim().to_owned())
}

/// Polls `ready` once a second until it holds.
fn wait_until(what: &str, seconds: u64, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut last = None;
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {seconds} s waiting for {what} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A pod spec running `image` with `args` on our runtime, never restarted.
fn pod(image: &str, args: &[&str]) -> Value {
    json!({
        "runtimeClassName": "wasmtime",
        "restartPolicy": "Never",
        "containers": [{
            "name": "main", "image": image, "imagePullPolicy": "Never", "args": args
        }]
    })
}

fn job(name: &str, spec: Value) -> String {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}}
    })
    .to_string()
}

fn job_with_image(name: &str, image: &str, command: &[&str]) -> String {
    job(
        name,
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never", "command": command
            }]
        }),
    )
}

/// Runs a Job that must fail; returns its container's exit code, reason and logs.
fn failed_job(node: &Node, name: &str, manifest: String) -> Result<(i64, String, String)> {
    kubectl(
        node,
        &["delete", "job", name, "--ignore-not-found", "--wait=true"],
    )?;
    up::apply(node, &manifest)?;
    kubectl(
        node,
        &[
            "wait",
            "--for=condition=Failed",
            &format!("job/{name}"),
            "--timeout=180s",
        ],
    )?;
    let selector = format!("job-name={name}");
    let terminated = get(
        node,
        &["pods", "-l", &selector],
        "{.items[0].status.containerStatuses[0].state.terminated.exitCode} {.items[0].status.containerStatuses[0].state.terminated.reason}",
    )?;
    let (code, reason) = terminated.split_once(' ').unwrap_or((&terminated, ""));
    let code: i64 = code
        .parse()
        .with_context(|| format!("Job {name}: terminated state {terminated:?}"))?;
    let logs = kubectl(node, &["logs", &format!("job/{name}")]).unwrap_or_default();
    Ok((code, reason.to_owned(), logs))
}

/// Deletes a pod (its own grace period) while watching it; returns the exit code its
/// container reported before the object went, and how long the deletion took.
fn delete_and_watch_exit(node: &Node, name: &str) -> Result<(i64, Duration)> {
    let mut watch = node
        .kubectl()
        .args(["get", "pod", name, "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = watch.stdout.take().context("watch stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // the watch lists the pod first: give it that moment
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    kubectl(
        node,
        &["delete", "pod", name, "--wait=true", "--timeout=120s"],
    )?;
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let _ = watch.wait();
    let text = reader.join().unwrap_or_default();
    let code = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        .filter_map(|pod| {
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"].as_i64()
        })
        .last()
        .with_context(|| format!("no terminated state of {name} was seen"))?;
    Ok((code, took))
}

fn installer_pod_uid(node: &Node) -> Result<String> {
    let uid = get(
        node,
        &[
            "pods",
            "-n",
            INSTALLER_NAMESPACE,
            "-l",
            "wasmruntime.dev/runtime=wasmtime,wasmruntime.dev/role=install",
            "--field-selector=status.phase=Running",
        ],
        "{.items[0].metadata.uid}",
    )?;
    ensure!(!uid.is_empty(), "no running installer pod");
    Ok(uid)
}

/// One HTTP/1.1 GET; the response body, which must come with status 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response: {response:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    // chunked or not, the test bodies are one short line
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.split("\r\n").nth(1).unwrap_or_default().to_owned()
    } else {
        body.to_owned()
    };
    Ok(body)
}

/// Requests against the Service, every 50 ms, from a thread, counting failures.
struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, r, f) = (stop.clone(), requests.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                r.fetch_add(1, Ordering::Relaxed);
                match http_get(addr, "/load") {
                    Ok(body) if body == "hello from wasi:http /load\n" => {}
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        eprintln!("e2e: request failed: {other:?}");
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            requests,
            failed,
            thread,
        }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.requests.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn report(runs: &[Run]) -> String {
    let date = cmd::output(Command::new("date").args(["-u", "+%F"]))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut out = format!(
        "## End to end (`cargo xtask e2e --record`, {date})\n\n\
         A fresh single-node cluster per containerd version (the one `cargo xtask up` \
         starts), dev builds, {cpus} CPUs. Wall time of each step; every step asserts what \
         xtask/src/e2e.rs says it does.\n\n",
        cpus = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut header = "| step |".to_owned();
    let mut rule = "|---|".to_owned();
    for r in runs {
        header.push_str(&format!(" containerd {} |", r.containerd));
        rule.push_str("---|");
    }
    out.push_str(&format!("{header}\n{rule}\n"));
    let names: Vec<&String> = runs
        .first()
        .map(|r| r.steps.iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let mut row = format!("| {name} |");
        for r in runs {
            row.push_str(&format!(" {:.1} s |", r.steps[i].1.as_secs_f64()));
        }
        out.push_str(&row);
        out.push('\n');
    }
    let mut row = "| total |".to_owned();
    for r in runs {
        let total: Duration = r.steps.iter().map(|(_, d)| *d).sum();
        row.push_str(&format!(" {:.1} s |", total.as_secs_f64()));
    }
    out.push_str(&row);
    out.push_str("\n\nHTTP requests to the Wasm Deployment through its Service (one every 50 ms) while the node changes under it (the day-2 option change re-rolls the installer without restarting containerd; the broken install restarts containerd twice, install and rollback):\n\n| while | containerd | requests | failed |\n|---|---|---|---|\n");
    for r in runs {
        for (what, requests, failed) in &r.load {
            out.push_str(&format!(
                "| {what} | {} | {requests} | {failed} |\n",
                r.containerd
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_blocks_are_the_sh_fences_only() {
        let md = "# t\n```sh\na\nb\n```\ntext\n```yaml\nno\n```\n```sh\nc\n```\n";
        assert_eq!(
            shell_blocks(md),
            vec!["a\nb\n".to_owned(), "c\n".to_owned()]
        );
    }

    #[test]
    fn getting_started_has_the_blocks_the_suite_runs() {
        let text =
            std::fs::read_to_string(cmd::workspace_root().join("docs/getting-started.md")).unwrap();
        let blocks = shell_blocks(&text);
        assert!(blocks.iter().any(|b| b.contains("helm install")));
        assert!(blocks.iter().any(|b| b.contains(GETTING_STARTED_IMAGE)));
    }

    #[test]
    fn report_has_a_column_per_version() {
        let run = |v: &str| Run {
            containerd: v.into(),
            steps: vec![("1 install".into(), Duration::from_millis(1500))],
            load: vec![("day-2".into(), 100, 0)],
            findings: Vec::new(),
        };
        let text = report(&[run("2"), run("1.7")]);
        assert!(
            text.contains("| step | containerd 2 | containerd 1.7 |"),
            "{text}"
        );
        assert!(text.contains("| 1 install | 1.5 s | 1.5 s |"), "{text}");
        assert!(text.contains("| day-2 | 1.7 | 100 | 0 |"), "{text}");
    }
}
