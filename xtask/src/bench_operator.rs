//! `cargo xtask bench operator`: the operator against many kwok nodes on the test bed's real
//! control plane. Measures apply -> Ready once installers report, the operator's write
//! requests (from the apiserver's audit log of the operator's own identity) and its peak RSS.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::{ClusterOptions, TestCluster};

use crate::cmd;

/// The bench's inputs, recorded next to its figures.
pub struct Params {
    pub nodes: usize,
    pub max_unavailable: String,
}

/// What one run measured.
pub struct Figures {
    pub ready_after: Duration,
    pub writes: BTreeMap<String, usize>,
    pub peak_rss_kib: u64,
    pub reconciles: Option<u64>,
}

/// Client QPS of the controller-manager and scheduler, as a 1000-node cluster sets them.
const CONTROL_PLANE_QPS: u32 = 200;

pub fn run(params: &Params) -> Result<Figures> {
    let operator = release_operator()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(params, &operator))
}

/// Builds the release operator and returns its path.
pub(crate) fn release_operator() -> Result<PathBuf> {
    cmd::cargo(&["build", "--release", "--locked", "-p", "wasm-operator"])?;
    let target = std::env::var("CARGO_TARGET_DIR").context("xtask sets CARGO_TARGET_DIR")?;
    Ok(Path::new(&target).join("release/wasm-operator"))
}

/// The operator benches' cluster: the test bed's full control plane and kwok with the
/// installer stages, the operator's writes audited, the CRD, the installer namespace and
/// the kwok nodes of `nodes` (YAML, see [`nodes_yaml`]) created.
pub(crate) async fn start_cluster(nodes: &str, count: usize) -> Result<TestCluster> {
    let root = cmd::workspace_root();
    let stages = root.join("operator/tests/fixtures/kwok-pod-stages.yaml");
    let options = ClusterOptions {
        kwok_pod_stages: Some(stages),
        audit_operator_writes: true,
        control_plane_qps: Some(CONTROL_PLANE_QPS),
        ..ClusterOptions::full()
    };
    let cluster = TestCluster::start_with(options).await?;
    let crd = root.join("crds/wasmruntime.dev_wasmruntimes.yaml");
    kubectl(
        &cluster,
        &["apply", "--server-side", "-f", &crd.display().to_string()],
    )?;
    kubectl(
        &cluster,
        &[
            "wait",
            "--for=condition=Established",
            "crd/wasmruntimes.wasmruntime.dev",
        ],
    )?;
    kubectl(&cluster, &["create", "namespace", "wasm-installers"])?;
    let started = Instant::now();
    apply(&cluster, "nodes.yaml", nodes)?;
    eprintln!(
        "bench: {count} kwok nodes created in {:.1?}",
        started.elapsed()
    );
    Ok(cluster)
}

/// `kubectl <args>` against the cluster; its stdout.
pub(crate) fn kubectl(cluster: &TestCluster, args: &[&str]) -> Result<String> {
    cmd::output(cluster.kubectl().args(args))
}

/// Server-side apply of `yaml`, kept as `file` in the cluster dir.
pub(crate) fn apply(cluster: &TestCluster, file: &str, yaml: &str) -> Result<()> {
    let path = cluster.dir().join(file);
    std::fs::write(&path, yaml)?;
    kubectl(
        cluster,
        &["apply", "--server-side", "-f", &path.display().to_string()],
    )?;
    Ok(())
}

/// Starts the operator with the operator identity; returns it and its metrics address.
pub(crate) fn spawn_operator(cluster: &TestCluster, operator: &Path) -> Result<(Child, String)> {
    let log = std::fs::File::create(cluster.dir().join("operator.log"))?;
    let metrics_addr = format!("{}:18080", cluster.address());
    let child = Command::new(operator)
        .args([
            "run",
            "--installer-namespace",
            "wasm-installers",
            "--installer-image",
            "wasm-installer:bench",
        ])
        .arg(format!("--metrics-addr={metrics_addr}"))
        .env("KUBECONFIG", cluster.operator_kubeconfig())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting wasm-operator")?;
    Ok((child, metrics_addr))
}

async fn measure(params: &Params, operator: &Path) -> Result<Figures> {
    let cluster = start_cluster(&nodes_yaml(params.nodes, |_| None), params.nodes).await?;
    let (mut child, metrics_addr) = spawn_operator(&cluster, operator)?;
    let pid = child.id();
    let runtime = format!(
        "apiVersion: wasmruntime.dev/v1alpha1\nkind: WasmRuntime\nmetadata:\n  name: bench\nspec:\n  rollout:\n    maxUnavailable: \"{}\"\n",
        params.max_unavailable
    );
    let started = Instant::now();
    apply(&cluster, "runtime.yaml", &runtime)?;
    let result = wait_ready(&|args| kubectl(&cluster, args), "bench", started).await;
    let ready_after = started.elapsed();
    let peak_rss_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let reconciles = scrape(&metrics_addr, "wasm_operator_reconciles_total");
    let _ = child.kill();
    let _ = child.wait();
    result?;
    Ok(Figures {
        ready_after,
        writes: count_writes(&cluster.audit_log(), 0..usize::MAX)?,
        peak_rss_kib,
        reconciles,
    })
}

/// Waits until WasmRuntime `name` is Ready for its current generation.
pub(crate) async fn wait_ready(
    kubectl: &impl Fn(&[&str]) -> Result<String>,
    name: &str,
    started: Instant,
) -> Result<()> {
    let mut last = String::new();
    loop {
        let jsonpath =
            "{.status.ready} {.status.state} {.status.observedGeneration} {.metadata.generation}";
        let out = kubectl(&["get", "wrt", name, "-o", &format!("jsonpath={jsonpath}")])?;
        let parts: Vec<&str> = out.split_whitespace().collect();
        if parts.len() == 4 && parts[1] == "Ready" && parts[2] == parts[3] {
            return Ok(());
        }
        if out != last {
            eprintln!("bench: {:>5.1}s {out}", started.elapsed().as_secs_f64());
            last = out;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not Ready after 600 s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` kwok nodes `bench-0000`...; `extra(i)` is one more label of node `i`, if any.
pub(crate) fn nodes_yaml(n: usize, extra: impl Fn(usize) -> Option<(String, String)>) -> String {
    let mut out = String::new();
    for i in 0..n {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: bench-{i:04}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/os: linux\n    kubernetes.io/hostname: bench-{i:04}\n"
        );
        if let Some((key, value)) = extra(i) {
            // quoted: YAML reads a bare `off` or `on` as a boolean
            let _ = writeln!(out, "    {key}: \"{value}\"");
        }
    }
    out
}

/// A KiB field of /proc/<pid>/status: `VmHWM` (peak resident set), `VmRSS` (resident now).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Mutating requests of the operator, by verb and resource, from the JSON audit log (its
/// events within `bytes`: the log's lengths at two moments, a line cut by either belonging
/// to the earlier part).
pub(crate) fn count_writes(
    audit: &Path,
    bytes: std::ops::Range<usize>,
) -> Result<BTreeMap<String, usize>> {
    let text =
        std::fs::read_to_string(audit).with_context(|| format!("reading {}", audit.display()))?;
    let end_of_line = |b: usize| match b {
        0 => 0,
        b if b >= text.len() => text.len(),
        b => text.as_bytes()[b - 1..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(text.len(), |i| b + i),
    };
    let mut counts = BTreeMap::new();
    for line in text[end_of_line(bytes.start)..end_of_line(bytes.end)].lines() {
        let event: serde_json::Value = serde_json::from_str(line)?;
        if event["stage"] != "ResponseComplete" {
            continue;
        }
        let resource = event["objectRef"]["resource"].as_str().unwrap_or("?");
        let sub = event["objectRef"]["subresource"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let verb = event["verb"].as_str().unwrap_or("?");
        *counts.entry(format!("{verb} {resource}{sub}")).or_default() += 1;
    }
    Ok(counts)
}

/// One counter from the operator's /metrics (curl keeps xtask free of an HTTP client).
pub(crate) fn scrape(addr: &str, name: &str) -> Option<u64> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

/// The Markdown section for docs/benchmarks.md.
pub fn report(params: &Params, figures: &Figures) -> String {
    let total: usize = figures.writes.values().sum();
    let mut out = format!(
        "## Operator: {} kwok nodes, maxUnavailable {}\n\n\
         Command: `cargo xtask bench operator` (real kube-apiserver, controller-manager, scheduler \
         {k8s} and kwok from the test bed; the installer is played by kwok stages that mark each \
         installer pod Ready; controller-manager and scheduler at `--kube-api-qps={qps}`; release \
         build of wasm-operator).\n\n\
         | figure | value | goal |\n|---|---|---|\n\
         | apply -> Ready (all nodes provisioned) | {:.1} s | < 60 s |\n\
         | operator write requests (audit log) | {total} ({:.2} per node) | O(nodes) |\n\
         | operator peak RSS (VmHWM) | {:.1} MiB | <= 64 MiB |\n\
         | reconciles | {} | |\n\n\
         Write requests by verb and resource:\n\n| request | count |\n|---|---|\n",
        params.nodes,
        params.max_unavailable,
        figures.ready_after.as_secs_f64(),
        total as f64 / params.nodes as f64,
        figures.peak_rss_kib as f64 / 1024.0,
        figures.reconciles.map_or("?".into(), |r| r.to_string()),
        k8s = testbed::versions::KUBERNETES,
        qps = CONTROL_PLANE_QPS,
    );
    for (request, count) in &figures.writes {
        let _ = writeln!(out, "| {request} | {count} |");
    }
    out.push_str(
        "\nNo peer operator runs here for a same-run ratio: runtime-class-manager and kata-deploy \
         need their own images and a real node agent. The figures stand against the issue's goals.\n",
    );
    out
}
