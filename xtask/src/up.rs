//! `cargo xtask up` / `cargo xtask down`: a real single-node Kubernetes cluster on this
//! machine, with the product installed and a Wasm pod run on it.
//!
//! The cluster itself is the test bed's [`testbed::node::Node`] (etcd, kube-apiserver,
//! controller-manager, scheduler, containerd + runc, kubelet, kube-proxy, a CNI bridge with no
//! uplink, run by a detached supervisor that this binary becomes with the hidden
//! `up --supervise <plan>`). On top of it `up` imports our images (operator, installer with the
//! shim, a busybox and a hello-Wasm image, all written by our code), installs the chart with
//! helm, applies the sample WasmRuntime adapted to this node (its containerd config path,
//! restart by signal to the supervised containerd), waits for it to be Ready, runs a runc Job
//! and a Wasm Job and prints their logs and a summary.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testbed::node::{NODE_NAME, Node, NodeOptions};
use testbed::workloads::{BUSYBOX_IMAGE, HELLO_GREETING, HELLO_WASM_IMAGE};
use testbed::{cni, paths, versions};

use crate::{cmd, images, testbed as bed};

pub const SAMPLE: &str = "config/samples/wasmruntime_v1alpha1_wasmruntime.yaml";
const CHART: &str = "charts/wasm-runtime-operator";
/// The release name contains the chart name, so objects are named `wasm-runtime-operator`.
pub const RELEASE: &str = "wasm-runtime-operator";
pub const RELEASE_NAMESPACE: &str = "wasm-system";
pub const INSTALLER_NAMESPACE: &str = "wasm-installers";

/// The hidden `up --supervise <plan>`: the cluster's process supervisor.
pub fn supervise(plan: &Path) -> Result<()> {
    testbed::supervisor::run(plan).context("cluster supervisor")
}

/// Prints each milestone with the time since the start, and keeps them for the record.
pub struct Clock(pub Instant, std::cell::RefCell<Vec<(String, f64)>>);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now(), Default::default())
    }

    pub fn step(&self, what: &str) {
        let at = self.0.elapsed().as_secs_f64();
        eprintln!("xtask [{at:>6.1}s] {what}");
        self.1.borrow_mut().push((what.to_owned(), at));
    }
}

/// A running single-node cluster with our images in its containerd.
pub struct Up {
    pub node: Node,
    /// (reference, tarball, digest) of the operator and installer images.
    pub product: images::Written,
    /// Where the tarballs are; scratch space for more images.
    pub image_dir: PathBuf,
    /// The directory of the binaries the images carry, and whether they are dev builds.
    pub binaries: PathBuf,
    pub dev: bool,
}

/// The Debian containerd package for `--containerd 2|1.7|1.6`.
pub fn package(containerd: &str) -> Result<versions::DebPackage> {
    match containerd {
        "2" | "2.x" => Ok(versions::CONTAINERD_2),
        v => versions::containerd_package(v)
            .with_context(|| format!("--containerd {v}: choose 2, 1.7 or 1.6")),
    }
}

pub fn run(containerd: &str, release: bool, record: bool) -> Result<()> {
    let clock = Clock::new();
    let up = cluster(package(containerd)?, release, false, &clock)?;
    let node = &up.node;
    let kubectl = |args: &[&str]| -> Result<()> {
        cmd::run(node.kubectl().args(args).current_dir(cmd::workspace_root()))
    };

    run_job(node, "hello-runc", &runc_job(), "hello from runc")?;
    clock.step("runc Job completed");

    install_chart(&up)?;
    clock.step("chart installed, operator Deployment available");

    apply(node, &adapted_sample(node)?)?;
    wait_runtime_ready(node, "wasmtime", "300s")?;
    kubectl(&["get", "wasmruntimes", "-o", "wide"])?;
    kubectl(&["get", "runtimeclass", "wasmtime"])?;
    clock.step("WasmRuntime wasmtime Ready, RuntimeClass wasmtime present");

    let logs = run_job(node, "hello-wasm", &wasm_job(), HELLO_GREETING)?;
    clock.step("Wasm Job completed");
    print_summary(node, &logs, clock.0.elapsed());
    if record {
        let section = report(&clock, containerd, release);
        cmd::update_doc_section("docs/benchmarks.md", "up", &section)?;
    }
    Ok(())
}

/// The docs/benchmarks.md section: each milestone of this run with its time.
fn report(clock: &Clock, containerd: &str, release: bool) -> String {
    let date = cmd::output(std::process::Command::new("date").args(["-u", "+%F"]))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mut out = format!(
        "## `cargo xtask up --record` ({date})\n\n\
         containerd {containerd}, {} build, {} CPUs; seconds since the command started \
         (a cluster already running with this containerd is reused; an earlier one with \
         another is torn down first).\n\n| milestone | at |\n|---|---|\n",
        if release { "release" } else { "dev" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for (what, at) in clock.1.borrow().iter() {
        out.push_str(&format!("| {} | {at:.1} s |\n", what.trim()));
    }
    out
}

/// The test bed, our images, the cluster (the running one when it has this containerd
/// and `fresh` is false; otherwise a new one), the images imported, the node Ready.
pub fn cluster(
    package: versions::DebPackage,
    release: bool,
    fresh: bool,
    clock: &Clock,
) -> Result<Up> {
    bed::install_all()?;
    ensure_nft()?;
    clock.step("test bed ready");

    // Everything that can fail without touching the machine comes first.
    let target = PathBuf::from(std::env::var("CARGO_TARGET_DIR").context("CARGO_TARGET_DIR")?);
    let image_dir = target.join("up-images");
    let (binaries, product) = product_images(release, &image_dir)?;
    let busybox = image_dir.join("busybox.tar");
    testbed::workloads::busybox_image(&busybox)?;
    let hello = image_dir.join("hello-wasm.tar");
    testbed::workloads::hello_wasm_image(&image_dir.join("hello-src"), &hello)?;
    clock.step("images ready (operator, installer + shim, busybox, hello-wasm)");

    let node = Node::new();
    let wanted_dir = paths::deb_root(&package).display().to_string();
    let reuse =
        !fresh && node.is_running() && node.info().is_some_and(|i| i.containerd_dir == wanted_dir);
    if reuse {
        clock.step(&format!(
            "reusing the running cluster in {}",
            node.dir().display()
        ));
    } else {
        if node.dir().exists() || cni::bridge_exists() {
            clock.step("tearing down the earlier cluster first");
            let problems = node.down(&|l| clock.step(&format!("  down: {l}")));
            if !problems.is_empty() {
                bail!(
                    "could not clean up the earlier cluster:\n  {}",
                    problems.join("\n  ")
                );
            }
        }
        // /proc/self/exe, not current_exe(): `cargo xtask test` rebuilds this very binary
        // (nextest) before the e2e suite, which unlinks the path this process started from.
        let exe = PathBuf::from("/proc/self/exe");
        let args = ["up".to_string(), "--supervise".to_string()];
        let info = node
            .start(
                NodeOptions {
                    containerd: package,
                },
                (&exe, &args),
                &|l| clock.step(&format!("  {l}")),
            )
            .context("starting the cluster (`cargo xtask down` removes what was started)")?;
        clock.step(&format!(
            "cluster running (containerd {}), supervisor pid {}",
            info.containerd_version, info.supervisor_pid
        ));
    }

    for tar in product
        .iter()
        .map(|(_, t, _)| t.clone())
        .chain([busybox, hello])
    {
        node.import(&tar)
            .with_context(|| format!("importing {}", tar.display()))?;
    }
    clock.step("images imported into containerd (namespace k8s.io)");

    let kubectl = |args: &[&str]| -> Result<()> {
        cmd::run(node.kubectl().args(args).current_dir(cmd::workspace_root()))
    };
    kubectl(&[
        "wait",
        "--for=create",
        &format!("node/{NODE_NAME}"),
        "--timeout=120s",
    ])?;
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{NODE_NAME}"),
        "--timeout=180s",
    ])?;
    clock.step("node Ready");
    Ok(Up {
        node,
        product,
        image_dir,
        binaries,
        dev: !release,
    })
}

/// `helm upgrade --install` of the chart with our imported images, waiting for the
/// operator Deployment.
pub fn install_chart(up: &Up) -> Result<()> {
    let (operator_ref, installer_ref) = (&up.product[0].0, &up.product[1].0);
    let (op_repo, op_tag) = operator_ref.rsplit_once(':').context("operator image")?;
    let (inst_repo, inst_tag) = installer_ref.rsplit_once(':').context("installer image")?;
    let installed = cmd::run(
        up.node
            .helm()
            .args(["upgrade", "--install", RELEASE])
            .arg(cmd::workspace_root().join(CHART))
            .args(["--namespace", RELEASE_NAMESPACE, "--create-namespace"])
            .args(["--set", &format!("image.repository={op_repo}")])
            .args(["--set", &format!("image.tag={op_tag}")])
            .args(["--set", "image.pullPolicy=Never"])
            .args(["--set", &format!("installer.image.repository={inst_repo}")])
            .args(["--set", &format!("installer.image.tag={inst_tag}")])
            .args(["--wait", "--timeout", "3m"])
            // The chart's NOTES are for people installing by hand; the summary follows.
            .stdout(Stdio::null()),
    );
    if let Err(e) = installed {
        // helm only says "context deadline exceeded": show why the operator is not up (a
        // node under disk pressure, say, schedules nothing)
        show(
            &up.node,
            &[
                &[
                    "get",
                    "nodes",
                    "-o",
                    "custom-columns=NAME:.metadata.name,TAINTS:.spec.taints[*].key,\
                     CONDITIONS:.status.conditions[?(@.status==\"True\")].type",
                ],
                &["-n", RELEASE_NAMESPACE, "get", "pods", "-o", "wide"],
                &[
                    "-n",
                    RELEASE_NAMESPACE,
                    "get",
                    "events",
                    "--sort-by=.lastTimestamp",
                ],
            ],
        );
        return Err(e.context("the operator's chart did not come up"));
    }
    Ok(())
}

/// Waits for the WasmRuntime's Ready condition; on timeout shows why.
pub fn wait_runtime_ready(node: &Node, name: &str, timeout: &str) -> Result<()> {
    let waited = cmd::run(node.kubectl().args([
        "wait",
        "--for=condition=Ready",
        &format!("wasmruntime/{name}"),
        &format!("--timeout={timeout}"),
    ]));
    if let Err(e) = waited {
        let selector = format!("wasmruntime.dev/runtime={name}");
        show(
            node,
            &[
                &["get", "wasmruntime", name, "-o", "yaml"],
                &["-n", INSTALLER_NAMESPACE, "get", "pods", "-o", "wide"],
                &[
                    "-n",
                    INSTALLER_NAMESPACE,
                    "logs",
                    "-l",
                    &selector,
                    "--tail=50",
                ],
            ],
        );
        return Err(e.context(format!("the WasmRuntime {name} did not become Ready")));
    }
    Ok(())
}

/// After a failed wait: each kubectl command's output on the terminal, best effort (what
/// cannot be shown is no reason to hide the failure itself).
fn show(node: &Node, commands: &[&[&str]]) {
    for args in commands {
        let _ = cmd::run(node.kubectl().args(*args));
    }
}

/// The operator and installer images, as `xtask images` builds them (dev binaries without
/// their debug info: a dev build of the shim is ~650 MB, more than the installer pod's
/// memory limit allows it to copy, and minutes of hashing). Skipped when the tarballs of
/// an earlier run are newer than the binaries (the images are reproducible: the same
/// binaries give the same tarballs). Returns the binaries' directory too.
fn product_images(release: bool, dir: &Path) -> Result<(PathBuf, images::Written)> {
    let profile = if release { "release" } else { "debug" };
    let target = images::build_binaries(!release)?;
    let record = dir.join(format!("images-{profile}.json"));
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_input = [
        "wasm-operator",
        "wasm-installer",
        "containerd-shim-wasmtime-v1",
    ]
    .iter()
    .map(|b| mtime(&target.join(b)))
    .chain([std::env::current_exe().ok().and_then(|e| mtime(&e))])
    .collect::<Option<Vec<_>>>()
    .and_then(|v| v.into_iter().max());
    let earlier: Option<images::Written> = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let (Some(newest), Some(earlier)) = (newest_input, earlier)
        && earlier
            .iter()
            .all(|(_, tar, _)| mtime(tar).is_some_and(|t| t > newest))
    {
        eprintln!("xtask up: operator and installer images are up to date");
        return Ok((target, earlier));
    }
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for spec in images::specs() {
        let reference = spec.reference();
        let image = images::assemble(&spec, &reference, &target, !release, dir)?;
        let tar = dir.join(format!("{}.tar", spec.name));
        let digest = image
            .write_tar(&tar)
            .with_context(|| format!("writing {}", tar.display()))?;
        written.push((reference, tar, digest));
    }
    std::fs::write(&record, serde_json::to_vec_pretty(&written)?)?;
    Ok((target, written))
}

/// `cargo xtask down`.
pub fn down() -> Result<()> {
    let started = Instant::now();
    let node = Node::new();
    if !node.dir().exists() && !cni::bridge_exists() {
        eprintln!(
            "xtask down: no cluster ({} does not exist)",
            node.dir().display()
        );
        return Ok(());
    }
    let problems =
        node.down(&|l| eprintln!("xtask down [{:>5.1}s] {l}", started.elapsed().as_secs_f64()));
    if !problems.is_empty() {
        bail!(
            "xtask down: finished with problems:\n  {}",
            problems.join("\n  ")
        );
    }
    eprintln!(
        "xtask down: done in {:.1}s; the machine is as before `xtask up`",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `nft`, which `down` needs to delete the (empty) nftables tables that iptables-nft
/// leaves behind.
fn ensure_nft() -> Result<()> {
    let found = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("xtask up: apt-get install nftables (for `down`)");
        cmd::run(
            std::process::Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "nftables",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

/// The sample WasmRuntime, adapted to this node: containerd's config is the cluster's own
/// file, and containerd is restarted by SIGTERM to the supervised process (PID 1 here is no
/// systemd, so `auto` cannot work).
pub fn adapted_sample(node: &Node) -> Result<String> {
    let path = cmd::workspace_root().join(SAMPLE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {SAMPLE}"))?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let containerd = doc
        .get_mut("spec")
        .and_then(|s| s.get_mut("containerd"))
        .and_then(|c| c.as_mapping_mut())
        .context("the sample has no spec.containerd")?;
    containerd.insert(
        "configPath".into(),
        node.containerd_config().display().to_string().into(),
    );
    let mut restart = serde_yaml::Mapping::new();
    restart.insert("strategy".into(), "signal".into());
    containerd.insert("restart".into(), restart.into());
    Ok(serde_yaml::to_string(&doc)?)
}

pub fn apply(node: &Node, yaml: &str) -> Result<()> {
    let mut child = node
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(yaml.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("kubectl apply failed ({status}):\n{yaml}");
    }
    Ok(())
}

fn runc_job() -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: hello-runc
  namespace: default
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: hello
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command:
            - /bin/sh
            - -c
            - echo "hello from runc in pod $(hostname)"; busybox ip -4 -o addr show eth0
"#
    )
}

fn wasm_job() -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: hello-wasm
  namespace: default
spec:
  backoffLimit: 0
  template:
    spec:
      runtimeClassName: wasmtime
      restartPolicy: Never
      containers:
        - name: hello
          image: {HELLO_WASM_IMAGE}
          imagePullPolicy: Never
          args: ["from", "cargo xtask up"]
          env:
            - name: NODE_NAME
              valueFrom:
                fieldRef:
                  fieldPath: spec.nodeName
"#
    )
}

/// (Re)creates a Job, waits for its Complete or Failed condition, and returns its logs,
/// which must contain `expect`.
pub fn run_job(node: &Node, name: &str, manifest: &str, expect: &str) -> Result<String> {
    cmd::run(node.kubectl().args([
        "delete",
        "job",
        name,
        "--ignore-not-found",
        "--wait=true",
        "--cascade=foreground",
    ]))?;
    apply(node, manifest)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        // Block on the watch for up to 5 s, then look at both terminal conditions.
        let _ = node
            .kubectl()
            .args([
                "wait",
                "--for=condition=Complete",
                &format!("job/{name}"),
                "--timeout=5s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let conditions = cmd::output(node.kubectl().args([
            "get",
            "job",
            name,
            "-o",
            "jsonpath={range .status.conditions[?(@.status==\"True\")]}{.type} {end}",
        ]))?;
        let types: Vec<&str> = conditions.split_whitespace().collect();
        if types.contains(&"Complete") {
            break;
        }
        if types.contains(&"Failed") || Instant::now() > deadline {
            let (selector, job) = (format!("job-name={name}"), format!("job/{name}"));
            show(
                node,
                &[
                    &["describe", "job", name],
                    &["describe", "pods", "-l", &selector],
                    &["logs", &job],
                ],
            );
            bail!("Job {name} did not complete (conditions: {conditions})");
        }
    }
    let logs = cmd::output(node.kubectl().args(["logs", &format!("job/{name}")]))?;
    eprintln!("\n$ kubectl logs job/{name}\n{}", logs.trim_end());
    if !logs.contains(expect) {
        bail!("the logs of Job {name} do not contain {expect:?}");
    }
    Ok(logs)
}

fn print_summary(node: &Node, wasm_logs: &str, elapsed: Duration) {
    let kubectl = paths::go_bin(&versions::KUBERNETES_BUILD, "kubectl");
    let info = node.info();
    let containerd = info
        .as_ref()
        .map(|i| i.containerd_version.clone())
        .unwrap_or_default();
    let first = wasm_logs.lines().next().unwrap_or_default();
    println!(
        "
xtask up: done in {elapsed:.0?}.

What runs (one node, {NODE_NAME}, all on this machine):
  control plane  etcd, kube-apiserver {k8s} (https://198.18.0.1:6443), controller-manager, scheduler
  node           kubelet, kube-proxy (iptables), containerd {containerd} + runc, CNI bridge wasmrt0
                 (pods 198.18.0.0/16, services 198.19.0.0/16, no uplink), our pause image
  product        helm release {RELEASE} (namespace {RELEASE_NAMESPACE}), WasmRuntime wasmtime Ready,
                 installer DaemonSet in {INSTALLER_NAMESPACE}, RuntimeClass wasmtime
  workloads      Job hello-runc (busybox on runc), Job hello-wasm (runtimeClassName: wasmtime):
                 \"{first}\"

Look at it:
  export KUBECONFIG={kubeconfig}
  alias kubectl={kubectl}
  kubectl get nodes -o wide
  kubectl get wasmruntimes -o wide; kubectl get runtimeclass
  kubectl -n {INSTALLER_NAMESPACE} get pods -o wide; kubectl -n {RELEASE_NAMESPACE} logs deploy/{RELEASE}
  kubectl logs job/hello-wasm
  component logs: {logs}/*.log; containerd config: {config}

Tear down (processes, mounts, iptables, the bridge, files): cargo xtask down",
        k8s = versions::KUBERNETES,
        kubeconfig = node.kubeconfig().display(),
        kubectl = kubectl.display(),
        logs = node.log_dir().display(),
        config = node.containerd_config().display(),
    );
}
