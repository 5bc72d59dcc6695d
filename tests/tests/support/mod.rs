//! Helpers shared by the packaging tests (chart.rs, chart_rbac.rs, gitops.rs): the test bed's
//! helm and kubectl, rendering, and YAML documents as JSON values.

#![allow(dead_code)] // each test file uses a subset

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;
use testbed::paths::go_bin;
use testbed::versions::{HELM_BUILD, KUBERNETES, KUBERNETES_BUILD};

/// Release name and namespace every test renders with: the names config/default uses.
pub const RELEASE: &str = "wasm-runtime-operator";
pub const NAMESPACE: &str = "wasm-system";
pub const INSTALLER_NAMESPACE: &str = "wasm-installers";
/// The operator's ServiceAccount with default values.
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:wasm-system:wasm-runtime-operator";

pub fn root() -> PathBuf {
    testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    root().join("charts/wasm-runtime-operator")
}

pub fn all_values() -> PathBuf {
    chart_dir().join("ci/all-values.yaml")
}

/// The test bed's helm, with its config and cache in a throwaway place.
pub fn helm() -> Command {
    let mut cmd = Command::new(go_bin(&HELM_BUILD, "helm"));
    let home = std::env::temp_dir().join("wasmruntime-chart-tests-helm");
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// The test bed's kubectl without a cluster (for `kubectl kustomize`).
pub fn kubectl() -> Command {
    Command::new(go_bin(&KUBERNETES_BUILD, "kubectl"))
}

/// Run a command; fail with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd, None)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command with `input` on stdin.
pub fn output(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.unwrap_or_default().as_bytes())?;
    drop(stdin);
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {shown}"))
}

/// Run a command with `input` on stdin; fail with its stderr unless it succeeds. Returns
/// (stdout, stderr).
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<(String, String)> {
    let out = output(cmd, Some(input))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    Ok((stdout, stderr))
}

/// `helm template wasm-runtime-operator <chart> -n wasm-system --kube-version <test bed> ...`.
/// The kube version is explicit: the test bed's helm is built without Kubernetes version
/// stamping and would otherwise assume v1.20.
pub fn helm_template_command(args: &[&str]) -> Command {
    let mut cmd = helm();
    cmd.arg("template")
        .arg(RELEASE)
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--kube-version", KUBERNETES])
        .args(args);
    cmd
}

pub fn helm_template(args: &[&str]) -> Result<String> {
    run(&mut helm_template_command(args))
}

/// `kubectl kustomize config/<dir>`.
pub fn kustomize(dir: &str) -> Result<String> {
    run(kubectl()
        .arg("kustomize")
        .arg(root().join("config").join(dir)))
}

/// Every non-empty YAML document, as JSON.
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).context("parsing a rendered document")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// (kind, namespace, name) of an object.
pub fn key(object: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

/// The one object of a kind (and name) in a rendering.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendering"))
}

/// Poll `check` every 250 ms until it returns Some, or fail after `timeout` with `what`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last_error = None;
    while start.elapsed() < timeout {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what} (last error: {last_error:?})")
}

/// Apply the repo's CRD for real and wait until it is established.
pub fn install_crd(kubectl: impl Fn() -> Command) -> Result<()> {
    let crd = root().join("crds/wasmruntime.dev_wasmruntimes.yaml");
    run(kubectl().args(["apply", "--server-side", "-f"]).arg(&crd))?;
    run(kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/wasmruntimes.wasmruntime.dev",
    ]))?;
    Ok(())
}

/// A JSON value as a Lua table constructor (objects become `{["key"]=...}`, arrays
/// `{a, b}`, null nil), so the Argo CD health script can read it as `obj`.
pub fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<_> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<_> = map
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(text: &str) -> String {
    let mut out = String::from("\"");
    for byte in text.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(byte as char),
            // Everything else (newlines, UTF-8 bytes) as a decimal escape: Lua strings are bytes.
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

/// What docs/gitops/argocd-health.lua says about an object: (status, message), computed by
/// the real Lua 5.4 interpreter.
pub fn argocd_health(object: &Value) -> Result<(String, String)> {
    let script = std::fs::read_to_string(root().join("docs/gitops/argocd-health.lua"))?;
    let program = format!(
        "obj = {}\nlocal function health()\n{script}\nend\nlocal hs = health()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_literal(object)
    );
    let file = std::env::temp_dir().join(format!(
        "argocd-health-{}-{}.lua",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&file, program)?;
    let out = run(Command::new("/usr/bin/lua5.4").arg(&file));
    let _ = std::fs::remove_file(&file);
    let out = out?;
    let (status, message) = out
        .split_once('\n')
        .context("health script printed no status")?;
    Ok((status.to_string(), message.to_string()))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
