//! The effectful subcommands' flags and wiring: build a `Setup` and a `RealHost`,
//! run a step, report through stdout, the status file and the termination message.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, ValueEnum};
use wasm_installer::host::{RealHost, RealHostConfig, ShimCopy};
use wasm_installer::status::{Readiness, StatusFile};
use wasm_installer::steps::{self, ConfigOutcome, GuestOptions, OnDrift, Setup, Strategy};
use wasm_installer::{ContainerdVersion, Distro, HostFacts};

use crate::{RuntimeArgs, spec, under};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RestartStrategy {
    /// systemd when PID 1 is systemd (the distro's unit); nothing for k0s.
    Auto,
    /// RestartUnit over D-Bus on PID 1's systemd.
    Systemd,
    /// SIGTERM the containerd serving the config; its supervisor restarts it.
    Signal,
    /// Run --restart-command on the host (argv, no shell).
    Command,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DriftAction {
    Repair,
    Report,
}

#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Where the host's filesystem is mounted.
    #[arg(long, default_value = "/host")]
    host_root: PathBuf,
    /// The shim binary inside this image, copied to the host.
    #[arg(
        long,
        default_value = "/usr/local/lib/wasmruntime/containerd-shim-wasmtime-v1"
    )]
    shim_source: PathBuf,
    /// Distribution; `auto` detects it from paths under --host-root.
    #[arg(long, default_value = "auto")]
    distro: String,
    /// containerd's CRI socket (host path); defaults to the distro's.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// containerd's version; defaults to what CRI `Version` reports.
    #[arg(long)]
    containerd_version: Option<String>,
    /// Host path of the main config to edit instead of the distro's.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    restart: RestartStrategy,
    /// argv for --restart command, one flag per word.
    #[arg(long = "restart-command", num_args = 1.., allow_hyphen_values = true)]
    restart_command: Vec<String>,
    /// How long containerd may take to serve our handler after a restart.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    verify_timeout: u64,
    /// How long a restart may take until a new containerd process exists.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    restart_timeout: u64,
    /// Node name, for logs and the termination message.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node: String,
    /// Where the termination message goes (the pod's terminationMessagePath).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GuestNetwork {
    Deny,
    Allow,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Leave the new config in place when verification fails (spec.rollout.autoRollback: false).
    #[arg(long)]
    no_rollback: bool,
    /// Whether Wasm guests may open sockets by default.
    #[arg(long, value_enum, default_value = "deny")]
    guest_network: GuestNetwork,
    /// Cache compiled modules on the node.
    #[arg(long, default_value = "true", action = clap::ArgAction::Set)]
    precompile: bool,
    /// Linear-memory limit of guests whose container sets none (a Kubernetes quantity, e.g. 128Mi).
    #[arg(long, value_parser = parse_quantity)]
    guest_memory_limit: Option<u64>,
    /// Exit after the install instead of staying running.
    #[arg(long)]
    once: bool,
    /// Seconds between drift checks.
    #[arg(long, default_value = "60")]
    check_interval: u64,
    #[arg(long, value_enum, default_value = "repair")]
    on_drift: DriftAction,
    #[arg(long, default_value = "/run/wasm-installer/status")]
    status_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    host: HostArgs,
    /// Uninstall even while containers of our handler run.
    #[arg(long)]
    force: bool,
    /// After a clean uninstall, report Ready and wait for SIGTERM (the uninstaller DaemonSet:
    /// readiness is how the operator learns the node is clean).
    #[arg(long)]
    stay: bool,
    #[arg(long, default_value = "/run/wasm-installer/status")]
    status_file: PathBuf,
}

/// A Kubernetes quantity in bytes: plain, or with a binary (Ki..Ei) or decimal (k..E) suffix.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (digits, factor) = UNITS
        .iter()
        .find_map(|(suffix, f)| text.strip_suffix(suffix).map(|d| (d, *f)))
        .unwrap_or((text, 1));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a whole quantity such as 128Mi"))?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[derive(Debug, Args)]
pub struct ReadyArgs {
    #[arg(long, default_value = "/run/wasm-installer/status")]
    status_file: PathBuf,
    /// A last check older than this is not ready (a hung loop).
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    max_age: u64,
}

fn setup(a: &HostArgs) -> anyhow::Result<(Setup, RealHost)> {
    setup_with(a, true, GuestOptions::default())
}

fn setup_with(
    a: &HostArgs,
    rollback: bool,
    guest: GuestOptions,
) -> anyhow::Result<(Setup, RealHost)> {
    let rt = spec(&a.runtime)?;
    let distro = match a.distro.as_str() {
        "auto" => None,
        d => Some(d.parse::<Distro>().map_err(anyhow::Error::msg)?),
    };
    let socket = match &a.socket {
        Some(s) => s.clone(),
        None => {
            let d = match distro {
                Some(d) => d,
                None => {
                    let mut facts = HostFacts::default();
                    for p in wasm_installer::distro::probe_paths() {
                        if under(&a.host_root, &p).exists() {
                            facts.existing.insert(p);
                        }
                    }
                    Distro::detect(&facts)?
                }
            };
            d.socket().into()
        }
    };
    let strategy = match a.restart {
        RestartStrategy::Auto => Strategy::Auto,
        RestartStrategy::Systemd => Strategy::Systemd,
        RestartStrategy::Signal => Strategy::Signal,
        RestartStrategy::None => Strategy::None,
        RestartStrategy::Command if a.restart_command.is_empty() => {
            anyhow::bail!("--restart command needs --restart-command <argv...>")
        }
        RestartStrategy::Command => Strategy::Command(a.restart_command.clone()),
    };
    let verify_timeout = Duration::from_secs(a.verify_timeout);
    let host = RealHost::new(RealHostConfig {
        root: a.host_root.clone(),
        socket,
        cri_timeout: Duration::from_secs(2),
        restart_timeout: Duration::from_secs(a.restart_timeout),
    })?;
    let setup = Setup {
        node: a.node.clone(),
        name: wasm_installer::RuntimeName::new(&a.runtime.name)?,
        spec: rt,
        source_shim: a.shim_source.clone(),
        distro,
        containerd: a
            .containerd_version
            .as_deref()
            .map(ContainerdVersion::parse)
            .transpose()?,
        config: a.config.clone(),
        strategy,
        verify_timeout,
        poll: Duration::from_millis(50),
        rollback,
        guest,
    };
    Ok((setup, host))
}

/// The pod's termination message: what failed (and what was restored), for the
/// operator to show as the node's failure reason.
fn terminate(a: &HostArgs, what: &str, err: &wasm_installer::Error) -> String {
    let msg = format!(
        "{what} failed on node {:?} [{}]: {err}\n",
        a.node,
        err.category()
    );
    if let Err(e) = std::fs::write(&a.termination_log, &msg) {
        tracing::warn!(%e, path = %a.termination_log.display(), "cannot write the termination message");
    }
    msg
}

/// Where a failed run of this pod leaves its message (on the host, so it survives container
/// restarts): `/var/lib/wasmruntime/<name>/failed-<pod uid>`. Without POD_UID (outside
/// Kubernetes) every run tries again.
fn failure_marker(a: &HostArgs) -> Option<PathBuf> {
    let uid = std::env::var("POD_UID").ok().filter(|u| !u.is_empty())?;
    let dir =
        under(&a.host_root, std::path::Path::new("/var/lib/wasmruntime")).join(&a.runtime.name);
    std::fs::create_dir_all(&dir).ok()?;
    // Markers of earlier pods are stale by definition.
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("failed-")
            && name.to_string_lossy() != format!("failed-{uid}")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Some(dir.join(format!("failed-{uid}")))
}

pub fn install(a: InstallArgs) -> anyhow::Result<()> {
    // Registered first: a SIGTERM during the install lets it finish (or roll back)
    // and then exits, instead of killing it half-way.
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    let guest = GuestOptions {
        network: match a.guest_network {
            GuestNetwork::Deny => "deny".into(),
            GuestNetwork::Allow => "allow".into(),
        },
        precompile: a.precompile,
        default_memory_limit_bytes: a.guest_memory_limit,
    };
    let (setup, host) = setup_with(&a.host, !a.no_rollback, guest)?;
    let status = StatusFile::new(&a.status_file);
    // The kubelet restarts a failed installer container; each retry would restart
    // containerd again. A container of the same pod repeats the failure instead; a new
    // pod (a new revision, or an admin deleting the pod) tries again.
    let marker = failure_marker(&a.host);
    if let Some(previous) = marker
        .as_ref()
        .and_then(|m| std::fs::read_to_string(m).ok())
    {
        let _ = std::fs::write(&a.host.termination_log, &previous);
        let _ = status.not_ready(previous.trim());
        anyhow::bail!(
            "an earlier run of this pod failed; not retrying until the pod is replaced: {}",
            previous.trim()
        );
    }
    let report = match steps::install(&host, &setup) {
        Ok(r) => r,
        Err(err) => {
            let message = terminate(&a.host, "install", &err);
            if let Some(marker) = &marker {
                let _ = std::fs::write(marker, &message);
            }
            let _ = status.not_ready(&err.to_string());
            return Err(err.into());
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "event": "installed",
            "shim": match report.shim { ShimCopy::Copied { .. } => "copied", ShimCopy::Unchanged { .. } => "unchanged" },
            "config": match report.config {
                ConfigOutcome::Unchanged => "unchanged",
                ConfigOutcome::RestartedOnly => "restarted-only",
                ConfigOutcome::Written => "written",
            },
            "file": report.file,
            "restarted": report.restarted(),
            "restart": report.restart.to_string(),
            "elapsed_ms": report.elapsed.as_millis() as u64,
        })
    );
    status.ready("installed")?;
    if a.once {
        return Ok(());
    }
    let on_drift = match a.on_drift {
        DriftAction::Repair => OnDrift::Repair,
        DriftAction::Report => OnDrift::Report,
    };
    steps::watch(
        &host,
        &setup,
        Duration::from_secs(a.check_interval.max(1)),
        on_drift,
        &status,
        &stop,
    )?;
    tracing::info!("SIGTERM: exiting");
    Ok(())
}

pub fn uninstall(a: UninstallArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    let (setup, host) = setup(&a.host)?;
    match steps::uninstall(&host, &setup, a.force) {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({
                    "event": "uninstalled",
                    "config_changed": r.config_changed,
                    "shim_removed": r.shim_removed,
                })
            );
            // Failure markers of earlier installer pods go with the runtime.
            let state = under(
                &a.host.host_root,
                std::path::Path::new("/var/lib/wasmruntime"),
            )
            .join(&a.host.runtime.name);
            let _ = std::fs::remove_dir_all(state);
            if a.stay {
                StatusFile::new(&a.status_file).ready("uninstalled")?;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Ok(())
        }
        Err(err) => {
            terminate(&a.host, "uninstall", &err);
            Err(err.into())
        }
    }
}

pub fn ready(a: ReadyArgs) -> anyhow::Result<()> {
    match StatusFile::new(&a.status_file).check(Duration::from_secs(a.max_age))? {
        Readiness::Ready => Ok(()),
        Readiness::NotReady(msg) => anyhow::bail!("not ready: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_quantity;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("128Mi"), Ok(128 << 20));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("4096"), Ok(4096));
        assert!(
            parse_quantity("1.5Gi")
                .unwrap_err()
                .contains("whole quantity")
        );
        assert!(
            parse_quantity("99999999Ei")
                .unwrap_err()
                .contains("too large")
        );
    }
}
