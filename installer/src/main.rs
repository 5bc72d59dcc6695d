//! `wasm-installer`: the node-side binary of the WasmRuntime operator. `main` only
//! wires the CLI to the library: `plan` (read-only), `install` (then stay running),
//! `uninstall`, and `ready` (the readiness probe).

mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use wasm_installer::distro::{
    CONTAINERD_CONFIG, K0S_DROPIN_DIR, K0S_RENDERED_CRI, K3S_CONTAINERD_DIR, MICROK8S_TEMPLATE,
    RKE2_CONTAINERD_DIR, probe_paths,
};
use wasm_installer::plan::render_plan;
use wasm_installer::{
    ContainerdVersion, Distro, HandlerName, HostFacts, RuntimeName, RuntimeSpec, ShimPath,
    SystemdCgroupMode, plan_install,
};

/// Installs the Wasmtime containerd shim on a Kubernetes node and registers it as a
/// CRI runtime handler in containerd's config (plain containerd, k3s, RKE2, MicroK8s,
/// k0s), restarting containerd only when the config changed, verifying it, and rolling
/// back on failure. Runs as the privileged DaemonSet pod of a WasmRuntime; it holds no
/// Kubernetes credentials and reports through its readiness probe and termination
/// message.
#[derive(Debug, Parser)]
#[command(name = "wasm-installer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what `install` would change on this node (target file, reason, a diff,
    /// restart), from a config file and a containerd version. Writes nothing.
    Plan(PlanArgs),
    /// Copy the shim, add our runtime handler, restart containerd if needed, verify,
    /// roll back on failure, then stay running and watch for drift.
    Install(cli::InstallArgs),
    /// Remove our runtime handler and shim; refuses while our containers run.
    Uninstall(cli::UninstallArgs),
    /// Readiness probe: exit 0 only when the last check of the running `install` was
    /// good and recent.
    Ready(cli::ReadyArgs),
}

#[derive(Debug, Args)]
struct RuntimeArgs {
    /// WasmRuntime name: the shim goes to /opt/wasmruntime/<name>/.
    #[arg(long, env = "WASM_RUNTIME_NAME")]
    name: String,
    /// CRI runtime handler (the RuntimeClass's handler); defaults to the name.
    #[arg(long, env = "WASM_RUNTIME_HANDLER")]
    handler: Option<String>,
    /// SystemdCgroup for the shim: auto copies the node's runc entry.
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(SystemdCgroupMode))]
    systemd_cgroup: SystemdCgroupMode,
    /// Absolute shim path to write into runtime_path, instead of the per-name default.
    #[arg(long)]
    shim_path: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PlanArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// containerd's version: `containerd --version` output or just `1.7.24`.
    #[arg(long)]
    containerd_version: String,
    /// The config file (or template/drop-in) to plan against; a missing file is
    /// planned as "absent". Defaults to the file the distro's decision picks, read
    /// under --host-root.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Distribution; `auto` detects it from paths under --host-root.
    #[arg(long, default_value = "auto")]
    distro: String,
    /// Where the host's filesystem is (the pod mounts it at /host).
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// The config the distro renders (k3s/RKE2 config.toml, k0s containerd-cri.toml),
    /// used for ownership checks and runc's SystemdCgroup; defaults to the host's.
    #[arg(long)]
    rendered_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // What the installer did (a handful of lines per run) belongs in `kubectl logs`
        // without anyone setting RUST_LOG.
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing::level_filters::LevelFilter::INFO.into())
                .from_env_lossy(),
        )
        .init();
    let cli = Cli::parse();
    // Contract tests: the operator's DaemonSet arguments must parse, without touching the host.
    if std::env::var_os("WASM_INSTALLER_PARSE_ONLY").is_some() {
        println!("{:?}", cli.command);
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wasm-installer: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plan(args) => plan(args),
        Command::Install(args) => cli::install(args),
        Command::Uninstall(args) => cli::uninstall(args),
        Command::Ready(args) => cli::ready(args),
    }
}

fn spec(args: &RuntimeArgs) -> anyhow::Result<RuntimeSpec> {
    let name = RuntimeName::new(&args.name)?;
    let handler = HandlerName::new(args.handler.as_deref().unwrap_or(&args.name))?;
    let mut spec = RuntimeSpec::for_runtime(&name, handler, args.systemd_cgroup);
    if let Some(path) = &args.shim_path {
        spec.shim_path = ShimPath::new(path)?;
    }
    Ok(spec)
}

/// `/etc/x` under `root` (the host mount).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn read_if_exists(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let rt = spec(&args.runtime)?;
    let containerd = ContainerdVersion::parse(&args.containerd_version)?;
    let root = &args.host_root;

    // Read-only probing of the host: which marker paths exist, and every config file
    // any target decision might need.
    let mut facts = HostFacts {
        existing: BTreeSet::new(),
        files: BTreeMap::new(),
    };
    for path in probe_paths() {
        if under(root, &path).exists() {
            facts.existing.insert(path);
        }
    }
    let mut candidates: Vec<PathBuf> = vec![
        CONTAINERD_CONFIG.into(),
        MICROK8S_TEMPLATE.into(),
        K0S_RENDERED_CRI.into(),
        Path::new(K0S_DROPIN_DIR).join(format!("wasmruntime-{}.toml", rt.handler)),
    ];
    for dir in [K3S_CONTAINERD_DIR, RKE2_CONTAINERD_DIR] {
        for f in ["config.toml.tmpl", "config-v3.toml.tmpl", "config.toml"] {
            candidates.push(Path::new(dir).join(f));
        }
    }
    for path in candidates {
        if let Some(text) = read_if_exists(&under(root, &path))? {
            facts.files.insert(path, text);
        }
    }
    let distro = if args.distro == "auto" {
        Distro::detect(&facts)?
    } else {
        args.distro.parse::<Distro>().map_err(anyhow::Error::msg)?
    };

    // Explicit files override what was read from the host for the decided target.
    let decision = wasm_installer::decide_target(distro, &containerd, &facts, &rt.handler)?;
    if let Some(config) = &args.config {
        let target = decision.target.path().to_owned();
        match read_if_exists(config)? {
            Some(text) => {
                facts.files.insert(target, text);
            }
            None => {
                facts.files.remove(&target);
                facts.existing.remove(&target);
            }
        }
    }
    if let Some(rendered) = &args.rendered_config {
        let text = std::fs::read_to_string(rendered)
            .with_context(|| format!("reading {}", rendered.display()))?;
        let key = match &decision.target {
            wasm_installer::ConfigTarget::GoTemplate { rendered, .. } => rendered.clone(),
            wasm_installer::ConfigTarget::DropIn { effective, .. } => effective.clone(),
            wasm_installer::ConfigTarget::MainFile { .. } => {
                bail!("--rendered-config only applies to k3s, RKE2 and drop-in targets")
            }
        };
        facts.files.insert(key, text);
    }

    let plan = plan_install(&facts, containerd, distro, &rt)?;
    print!("{}", render_plan(&plan));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The chart and the operator call these names; renaming one breaks them.
    #[test]
    fn subcommand_names_are_pinned() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(names, ["plan", "install", "uninstall", "ready"]);
    }
}
