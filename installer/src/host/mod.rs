//! The edge: every effect the installer has on the node goes through [`Host`], so the
//! steps in [`crate::steps`] are plain functions over it and unit-testable with a
//! recording fake. [`RealHost`] is the thin real implementation.
//!
//! Paths given to the trait are *host* paths (`/etc/containerd/config.toml`); the
//! real host maps them under `--host-root` (the pod mounts `/` at `/host`).

mod proc;
pub(crate) mod real;
mod systemd;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use real::{RealHost, RealHostConfig, sha256_file};

use crate::distro::Unit;
use crate::error::Result;
use crate::spec::HandlerName;

/// What copying the shim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShimCopy {
    /// The target already had the same sha256: nothing written.
    Unchanged { sha256: String },
    /// Written (temp + fsync + rename) and re-hashed.
    Copied { sha256: String },
}

/// How containerd is made to re-read its config, resolved from the CLI strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartAction {
    /// Nothing to do (k0s reloads itself; or the admin chose `none`).
    None,
    /// `RestartUnit(unit, "replace")` on PID 1's systemd over D-Bus.
    Systemd(Unit),
    /// SIGTERM the containerd running with this `--config` (host path) and wait for
    /// its supervisor to start a new one.
    Signal { config: PathBuf },
    /// Run this argv on the host, no shell.
    Command(Vec<String>),
}

impl fmt::Display for RestartAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartAction::None => f.write_str("none"),
            RestartAction::Systemd(u) => write!(f, "systemd restart {}", u.name()),
            RestartAction::Signal { config } => {
                write!(f, "SIGTERM containerd --config {}", config.display())
            }
            RestartAction::Command(argv) => write!(f, "command {argv:?}"),
        }
    }
}

/// What containerd's CRI `Status` says, reduced to what we check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriStatus {
    pub runtime_ready: bool,
    /// Handlers containerd knows: `runtimeHandlers` (2.x) plus the runtimes of the
    /// verbose config (1.x has no `runtimeHandlers`).
    pub handlers: BTreeSet<String>,
}

impl CriStatus {
    pub fn knows(&self, handler: &HandlerName) -> bool {
        self.handlers.contains(handler.as_str())
    }
}

/// Held while one installer reads, writes and restarts: installers of two WasmRuntimes on
/// one node edit the same config and restart the same containerd. Released on drop, and
/// by the kernel when the process dies (flock), so a killed installer never blocks.
#[derive(Debug, Default)]
pub struct NodeLock {
    _held: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// Every effect the installer has on a node.
pub trait Host {
    /// Waits for and takes the node's installer lock; `holder` names this run for whoever
    /// waits next.
    fn lock_node(&self, holder: &str) -> Result<NodeLock>;
    /// A file's bytes; `None` when it does not exist.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>>;
    fn exists(&self, path: &Path) -> bool;
    /// Temp file in the same directory, fsync, rename, fsync the directory. An
    /// existing file's mode and owner are kept; a new one gets `mode`.
    fn write_atomic(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()>;
    /// `Ok(false)` when there was nothing to remove.
    fn remove(&self, path: &Path) -> Result<bool>;
    /// Removes a directory if it is empty; anything else is left alone.
    fn remove_dir_if_empty(&self, path: &Path) -> Result<()>;
    /// sha256 of a host file, `None` when absent.
    fn sha256(&self, path: &Path) -> Result<Option<String>>;
    /// Copies `source` (a path inside the installer's own filesystem, not a host
    /// path) to the host path `dest`, unless identical; verifies the hash.
    fn copy_shim(&self, source: &Path, dest: &Path) -> Result<ShimCopy>;
    /// Whether PID 1 on the host is systemd (`/run/systemd/system` exists).
    fn systemd_booted(&self) -> bool;
    /// The containerd daemons running on the host (hostPID), for `auto` decisions.
    fn containerd_daemons(&self) -> Vec<crate::daemon::Daemon>;
    fn restart(&self, action: &RestartAction) -> Result<()>;
    /// containerd's version as CRI `Version` reports it (`1.7.24~ds1`, `v2.1.9`).
    fn cri_version(&self) -> Result<String>;
    /// One CRI `Status` call (verbose), bounded by the host's CRI timeout.
    fn cri_status(&self) -> Result<CriStatus>;
    /// Ids of sandboxes and containers of `handler` that are not stopped.
    fn running_containers(&self, handler: &HandlerName) -> Result<Vec<String>>;
    /// Waits; the fake returns at once so step tests do not sleep.
    fn sleep(&self, d: Duration);
}

#[cfg(test)]
pub(crate) mod fake;
