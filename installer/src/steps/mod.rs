//! The installer's steps as functions over a [`Host`]: install (with verify and
//! rollback), uninstall, drift check. Each is a tracing span with node and handler.
//! Decisions come from the pure core ([`crate::plan`]); this layer only sequences
//! effects and decides what to do when one fails.

mod install;
mod uninstall;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use install::{ConfigOutcome, InstallReport, install};
pub use uninstall::{UninstallReport, uninstall};
pub use watch::{Drift, OnDrift, check_drift, watch};

use crate::daemon::{Daemon, SUPERVISORS, adopted_config, supervisor};
use crate::distro::{
    CONTAINERD_CONFIG, Distro, HostFacts, K0S_DROPIN_DIR, K0S_RENDERED_CRI, K3S_CONTAINERD_DIR,
    MICROK8S_TEMPLATE, RKE2_CONTAINERD_DIR, Restart, probe_paths,
};
use crate::edit::Backup;
use crate::error::{Error, Result};
use crate::host::{Host, RestartAction};
use crate::plan::{ConfigTarget, decide_target};
use crate::spec::{RuntimeName, RuntimeSpec};
use crate::version::ContainerdVersion;

/// How to make containerd re-read its config, as chosen on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// systemd when PID 1 is systemd (the distro's unit), nothing for k0s.
    Auto,
    Systemd,
    Signal,
    Command(Vec<String>),
    None,
}

/// Everything the steps need besides the host.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Node name, for logs and messages.
    pub node: String,
    pub name: RuntimeName,
    pub spec: RuntimeSpec,
    /// The shim inside the installer image (not a host path).
    pub source_shim: PathBuf,
    /// None: detect from host paths.
    pub distro: Option<Distro>,
    /// None: ask containerd over CRI `Version`.
    pub containerd: Option<ContainerdVersion>,
    /// Host path of the file to edit instead of the distro's (the containerd running
    /// with `--config <it>` for a main-file target).
    pub config: Option<PathBuf>,
    pub strategy: Strategy,
    pub verify_timeout: Duration,
    pub poll: Duration,
    /// Restore the previous config when verification fails (spec.rollout.autoRollback).
    pub rollback: bool,
    /// Guest defaults the shim reads from `options.json` beside itself.
    pub guest: GuestOptions,
}

/// Defaults for Wasm guests (WasmRuntime `spec.wasm`), written beside the shim as
/// `options.json`: the shim reads it at start, so changing them needs no containerd restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestOptions {
    /// "deny" or "allow".
    pub network: String,
    pub precompile: bool,
    /// Linear-memory limit for guests whose container sets none, in bytes.
    pub default_memory_limit_bytes: Option<u64>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            network: "deny".into(),
            precompile: true,
            default_memory_limit_bytes: None,
        }
    }
}

/// Host path of the guest options file of a shim.
pub fn options_path(shim: &std::path::Path) -> PathBuf {
    shim.with_file_name("options.json")
}

/// Host facts, the target decision, and where things really are.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub facts: HostFacts,
    pub distro: Distro,
    pub containerd: ContainerdVersion,
    /// The planner's name of the target (a key in `facts.files`).
    pub target: ConfigTarget,
    /// The file actually written (differs with `Setup::config`).
    pub file: PathBuf,
    pub restart: RestartAction,
}

fn text(bytes: Vec<u8>, path: &Path) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        Error::io("decoding UTF-8 of", path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        ))
    })
}

pub(crate) fn read_text(host: &dyn Host, path: &Path) -> Result<Option<String>> {
    host.read(path)?.map(|b| text(b, path)).transpose()
}

/// containerd's version over CRI, waiting out a restart in progress (a previous run
/// may have been killed right after restarting it).
fn cri_version(host: &dyn Host, s: &Setup) -> Result<String> {
    cri_when_serving(host, s, || host.cri_version())
}

/// A CRI call, retried until containerd answers or the verify timeout passes: a run
/// may start while containerd restarts (after another run was killed mid-restart).
pub(crate) fn cri_when_serving<T>(
    host: &dyn Host,
    s: &Setup,
    call: impl Fn() -> Result<T>,
) -> Result<T> {
    let started = std::time::Instant::now();
    loop {
        match call() {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() >= s.verify_timeout => return Err(e),
            Err(e) => tracing::debug!(%e, "containerd not answering yet"),
        }
        host.sleep(s.poll);
    }
}

/// Reads what the planner needs, from the host, once per step.
pub(crate) fn resolve(host: &dyn Host, s: &Setup) -> Result<Resolved> {
    let containerd = match s.containerd {
        Some(v) => v,
        None => ContainerdVersion::parse(&cri_version(host, s)?)?,
    };
    let mut facts = HostFacts {
        existing: BTreeSet::new(),
        files: Default::default(),
    };
    for path in probe_paths() {
        if host.exists(&path) {
            facts.existing.insert(path);
        }
    }
    let mut candidates: Vec<PathBuf> = vec![
        CONTAINERD_CONFIG.into(),
        MICROK8S_TEMPLATE.into(),
        K0S_RENDERED_CRI.into(),
        Path::new(K0S_DROPIN_DIR).join(format!("wasmruntime-{}.toml", s.spec.handler)),
    ];
    for dir in [K3S_CONTAINERD_DIR, RKE2_CONTAINERD_DIR] {
        for f in ["config.toml.tmpl", "config-v3.toml.tmpl", "config.toml"] {
            candidates.push(Path::new(dir).join(f));
        }
    }
    // No config given: the one running containerd may show where its config really is.
    let daemons = host.containerd_daemons();
    let config = s.config.clone().or_else(|| {
        let adopted = adopted_config(&daemons);
        if let Some(path) = &adopted {
            tracing::info!(config = %path.display(), "using the config the running containerd reads");
        }
        adopted
    });
    if let Some(config) = &config {
        // An explicit main config also decides drop-in use (its `imports`).
        candidates.retain(|p| p != Path::new(CONTAINERD_CONFIG));
        if let Some(t) = read_text(host, config)? {
            facts.files.insert(CONTAINERD_CONFIG.into(), t);
        }
    }
    for path in candidates {
        if let Some(t) = read_text(host, &path)? {
            facts.files.insert(path, t);
        }
    }
    let distro = match s.distro {
        Some(d) => d,
        None => Distro::detect(&facts)?,
    };
    let decision = decide_target(distro, &containerd, &facts, &s.spec.handler)?;
    let file = match (&decision.target, &config) {
        (ConfigTarget::MainFile { .. }, Some(config)) => config.clone(),
        (t, _) => t.path().to_owned(),
    };
    let effective = match (&decision.target, &config) {
        (_, Some(config)) => config.clone(),
        (ConfigTarget::MainFile { path }, None) => path.clone(),
        (ConfigTarget::GoTemplate { rendered, .. }, None) => rendered.clone(),
        (ConfigTarget::DropIn { effective, .. }, None) => effective.clone(),
    };
    let restart = restart_action(
        host,
        &s.strategy,
        distro.restart(&facts),
        &effective,
        &daemons,
    )?;
    Ok(Resolved {
        facts,
        distro,
        containerd,
        target: decision.target,
        file,
        restart,
    })
}

/// The CLI strategy made concrete for this node.
pub(crate) fn restart_action(
    host: &dyn Host,
    strategy: &Strategy,
    distro: Restart,
    effective_config: &Path,
    daemons: &[Daemon],
) -> Result<RestartAction> {
    let no = |reason: &str| Error::NoRestartStrategy {
        reason: reason.to_owned(),
    };
    Ok(match (strategy, distro) {
        (Strategy::None, _) | (Strategy::Auto, Restart::SelfReloading) => RestartAction::None,
        (Strategy::Signal, _) => RestartAction::Signal {
            config: effective_config.to_owned(),
        },
        (Strategy::Command(argv), _) => RestartAction::Command(argv.clone()),
        (Strategy::Systemd, Restart::Unit(u)) => RestartAction::Systemd(u),
        (Strategy::Systemd, Restart::SelfReloading) => {
            return Err(no(
                "k0s reloads containerd itself; use --restart auto or none",
            ));
        }
        (Strategy::Auto, Restart::Unit(u)) if host.systemd_booted() => RestartAction::Systemd(u),
        (Strategy::Auto, Restart::Unit(u)) => match supervisor(daemons, effective_config) {
            Some(by) => {
                tracing::info!(
                    supervisor = by,
                    "PID 1 is not systemd; containerd is supervised: restart by SIGTERM"
                );
                RestartAction::Signal {
                    config: effective_config.to_owned(),
                }
            }
            None => {
                return Err(no(&format!(
                    "PID 1 is not systemd, so {} cannot be restarted through it, and the \
                     containerd serving {} is not run by a known supervisor ({}); \
                     use --restart signal, command or none",
                    u.name(),
                    effective_config.display(),
                    SUPERVISORS.join(", ")
                )));
            }
        },
    })
}

/// The original config, saved once before our first write (kept across reinstalls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SavedBackup {
    Absent,
    Original(String),
}

impl SavedBackup {
    pub fn as_backup(&self) -> Backup<'_> {
        match self {
            SavedBackup::Absent => Backup::FileWasAbsent,
            SavedBackup::Original(t) => Backup::Original(t),
        }
    }
}

/// `<config>.wasmruntime-<name>.orig` holds the bytes; `.absent` records "no file".
pub(crate) fn backup_paths(file: &Path, name: &RuntimeName) -> (PathBuf, PathBuf) {
    let base = file.as_os_str().to_string_lossy();
    (
        PathBuf::from(format!("{base}.wasmruntime-{}.orig", name.as_str())),
        PathBuf::from(format!("{base}.wasmruntime-{}.absent", name.as_str())),
    )
}

pub(crate) fn read_backup(
    host: &dyn Host,
    file: &Path,
    name: &RuntimeName,
) -> Result<Option<SavedBackup>> {
    let (orig, absent) = backup_paths(file, name);
    if let Some(t) = read_text(host, &orig)? {
        return Ok(Some(SavedBackup::Original(t)));
    }
    Ok(host.exists(&absent).then_some(SavedBackup::Absent))
}

/// What we wait for over CRI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// RuntimeReady and our handler known, right after a restart.
    Handler,
    /// The same, when containerd reloads by itself (k0s, `--restart none`): keep
    /// polling while it still serves the old config.
    HandlerAfterReload,
    /// RuntimeReady (after a rollback or uninstall).
    Serving,
}

/// Why verification failed: the no-op path treats "serving without our handler" as a
/// restart that never happened (a run killed between write and restart).
#[derive(Debug)]
pub(crate) enum Unverified {
    HandlerMissing(Error),
    NotServing(Error),
}

impl Unverified {
    pub fn into_error(self) -> Error {
        match self {
            Unverified::HandlerMissing(e) | Unverified::NotServing(e) => e,
        }
    }
}

/// Polls CRI `Status` until it shows what we want or the timeout passes.
#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler, ?want))]
pub(crate) fn verify(host: &dyn Host, s: &Setup, want: Want) -> Result<(), Unverified> {
    let started = std::time::Instant::now();
    // Attempts bound the loop even when the host's sleep does not (the fake's).
    let attempts = (s.verify_timeout.as_millis() / s.poll.as_millis().max(1)).max(1);
    let mut last = String::from("no answer yet");
    for _ in 0..attempts {
        match host.cri_status() {
            Ok(st) if st.runtime_ready && (want == Want::Serving || st.knows(&s.spec.handler)) => {
                tracing::info!(elapsed = ?started.elapsed(), "containerd verified");
                return Ok(());
            }
            Ok(st) if st.runtime_ready && want == Want::HandlerAfterReload => {
                last = format!(
                    "containerd has not loaded handler {:?} (it knows {:?})",
                    s.spec.handler.as_str(),
                    st.handlers
                );
            }
            Ok(st) if st.runtime_ready => {
                // Definitive: CRI serves only after it has loaded its runtimes, so
                // waiting longer would not make the handler appear.
                return Err(Unverified::HandlerMissing(Error::Verify {
                    timeout: s.verify_timeout,
                    reason: format!(
                        "containerd serves CRI but does not know handler {:?} (it knows {:?})",
                        s.spec.handler.as_str(),
                        st.handlers
                    ),
                }));
            }
            Ok(_) => last = "CRI answers but RuntimeReady is false".into(),
            Err(e) => last = e.to_string(),
        }
        if started.elapsed() >= s.verify_timeout {
            break;
        }
        host.sleep(s.poll);
    }
    Err(Unverified::NotServing(Error::Verify {
        timeout: s.verify_timeout,
        reason: last,
    }))
}
