//! `cargo xtask up`: for now the API demo on the test bed's real control plane (the
//! single-node cluster with kubelet and containerd comes with the end-to-end work).

use anyhow::{Context, Result};
use testbed::TestCluster;

use crate::{cmd, testbed as bed};

const CRD: &str = "crds/wasmruntime.dev_wasmruntimes.yaml";
const SAMPLE: &str = "config/samples/wasmruntime_v1alpha1_wasmruntime.yaml";

pub fn run() -> Result<()> {
    bed::install_all()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo())
}

async fn demo() -> Result<()> {
    eprintln!(
        "xtask up: starting etcd + kube-apiserver {}",
        testbed::versions::KUBERNETES
    );
    let cluster = TestCluster::start()
        .await
        .context("starting the test bed control plane")?;
    let root = cmd::workspace_root();
    let kubectl = |args: &[&str]| -> Result<()> {
        eprintln!("\n$ kubectl {}", args.join(" "));
        cmd::run(cluster.kubectl().args(args).current_dir(root))
    };
    kubectl(&["apply", "--server-side", "-f", CRD])?;
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/wasmruntimes.wasmruntime.dev",
    ])?;
    kubectl(&["apply", "--server-side", "-f", SAMPLE])?;
    kubectl(&["get", "wasmruntimes", "-o", "wide"])?;
    kubectl(&["get", "wrt", "wasmtime", "-o", "yaml"])?;
    kubectl(&["explain", "wasmruntime.spec.rollout"])?;

    eprintln!("\n$ kubectl patch wrt wasmtime (maxUnavailable 0%, must be rejected)");
    let rejected = cluster
        .kubectl()
        .args([
            "patch",
            "wrt",
            "wasmtime",
            "--type=merge",
            "-p",
            r#"{"spec":{"rollout":{"maxUnavailable":"0%"}}}"#,
        ])
        .output()?;
    eprintln!("{}", String::from_utf8_lossy(&rejected.stderr).trim());
    anyhow::ensure!(
        !rejected.status.success(),
        "the apiserver accepted maxUnavailable 0%"
    );

    eprintln!(
        "\nxtask up: the API works on a real kube-apiserver. Kubeconfig while it ran: {}\n\
         (the single-node cluster with kubelet, containerd and Wasm pods arrives with the\n\
         end-to-end issue; the control plane now stops and its temp dir is removed)",
        cluster.kubeconfig().display()
    );
    Ok(())
}
