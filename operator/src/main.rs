use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};
use wasm_operator::metrics::Metrics;
use wasm_operator::resources::Settings;
use wasm_operator::server::{self, Health};

/// wasm-operator: the WasmRuntime controller.
///
/// Turns each cluster-scoped `WasmRuntime` (wasmruntime.dev/v1alpha1) into a RuntimeClass that
/// schedules only onto nodes where the bundled Wasmtime shim was installed and verified, and
/// drives the installer DaemonSet node by node.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the WasmRuntime CustomResourceDefinition as YAML (the content of crds/).
    Crd,
    /// Run the controller.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace of the installer DaemonSets (it must allow privileged pods).
    #[arg(long, env = "INSTALLER_NAMESPACE", default_value = "wasm-installers")]
    installer_namespace: String,
    /// Installer image used when a WasmRuntime sets no spec.shim.image.
    #[arg(long, env = "INSTALLER_IMAGE", default_value = concat!("ghcr.io/wasmruntime/wasm-installer:", env!("CARGO_PKG_VERSION")))]
    installer_image: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease, so several replicas can run.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wasm-system")]
    lease_namespace: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

const LEASE: &str = "wasm-operator-leader";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            let yaml = wasm_operator::crdgen::crd_yaml().context("generating the CRD")?;
            print!("{yaml}");
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let is_leader = Arc::new(AtomicBool::new(false));
    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
        leading: is_leader.clone(),
    };
    let server = tokio::spawn(server::serve(args.metrics_addr, health));

    let settings = Settings {
        installer_namespace: args.installer_namespace,
        default_installer_image: args.installer_image,
    };
    let controller = async {
        ready.store(true, Ordering::Relaxed);
        is_leader.store(true, Ordering::Relaxed);
        wasm_operator::controller::run(client.clone(), settings, metrics).await
    };
    if !args.leader_elect {
        return tokio::select! {
            result = controller => result.context("controller"),
            result = server => Err(anyhow::anyhow!("metrics server stopped: {:?}", result)),
        };
    }
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("wasm-operator-{}", std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .build()
        .await
        .context("creating the leader lease manager")?;
    let (mut leading, lease_task) = manager.watch().await;
    ready.store(true, Ordering::Relaxed);
    info!(identity, lease = LEASE, "waiting to become leader");
    while !*leading.borrow_and_update() {
        leading.changed().await.context("leader election stopped")?;
    }
    info!(identity, "became leader");
    // Losing the lease ends the process: a fresh start re-reads everything from the API, so
    // the new leader resumes from the labels and status, never from memory.
    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow() {
                return;
            }
        }
    };
    tokio::select! {
        result = controller => { drop(lease_task); result.context("controller") }
        () = lost => { warn!("lost the leader lease; exiting"); std::process::exit(1) }
        result = server => Err(anyhow::anyhow!("metrics server stopped: {:?}", result)),
    }
}
