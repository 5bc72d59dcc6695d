//! Install: shim, config, restart, verify; roll back by itself when containerd does
//! not come back with our handler.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    Resolved, SavedBackup, Setup, Unverified, Want, backup_paths, read_backup, read_text, resolve,
    verify,
};
use crate::error::{Error, Result};
use crate::fault::{self, Fault};
use crate::host::{Host, RestartAction, ShimCopy};
use crate::plan::{ConfigTarget, FileChange, plan_install, plan_uninstall};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOutcome {
    /// Already right and containerd knew the handler: nothing written or restarted.
    Unchanged,
    /// Already right, but containerd did not know the handler (a run killed between
    /// write and restart): restarted only.
    RestartedOnly,
    Written,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub shim: ShimCopy,
    pub config: ConfigOutcome,
    pub file: std::path::PathBuf,
    pub restart: RestartAction,
    pub elapsed: Duration,
}

impl InstallReport {
    pub fn restarted(&self) -> bool {
        self.config != ConfigOutcome::Unchanged && self.restart != RestartAction::None
    }
}

#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler))]
pub fn install(host: &dyn Host, s: &Setup) -> Result<InstallReport> {
    let started = Instant::now();
    let _lock = host.lock_node(&format!("install of {}", s.spec.handler))?;
    // Everything that can refuse (distro, version, restart strategy) before any write.
    let r = resolve(host, s)?;
    let shim = copy_shim(host, s)?;
    write_guest_options(host, s)?;
    fault::hit(Fault::AfterShim);
    let plan = plan_install(&r.facts, r.containerd, r.distro, &s.spec)?;
    tracing::info!(file = %r.file.display(), restart = %r.restart, change = ?std::mem::discriminant(&plan.change), "planned");
    let config = match &plan.change {
        FileChange::Nothing => settle_unchanged(host, s, &r)?,
        FileChange::Write(new) => {
            write_config(host, s, &r, plan.current.as_deref(), new)?;
            ConfigOutcome::Written
        }
        FileChange::Delete => unreachable!("an install plan never deletes"),
    };
    Ok(InstallReport {
        shim,
        config,
        file: r.file,
        restart: r.restart,
        elapsed: started.elapsed(),
    })
}

#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler, dest = %s.spec.shim_path.as_str()))]
fn copy_shim(host: &dyn Host, s: &Setup) -> Result<ShimCopy> {
    let copy = host.copy_shim(&s.source_shim, s.spec.shim_path.as_path())?;
    tracing::info!(?copy, "shim");
    Ok(copy)
}

/// `options.json` beside the shim, rewritten only when it differs.
fn write_guest_options(host: &dyn Host, s: &Setup) -> Result<()> {
    let path = super::options_path(s.spec.shim_path.as_path());
    let mut text = serde_json::to_vec_pretty(&s.guest).expect("plain struct serializes");
    text.push(b'\n');
    if host.read(&path)?.as_deref() != Some(text.as_slice()) {
        host.write_atomic(&path, &text, 0o644)?;
    }
    Ok(())
}

/// The config is already ours. Normally containerd knows the handler and this is a
/// no-op; if containerd serves without it, the restart after our write never
/// happened; if containerd does not serve at all, our entry may be why: roll back.
fn settle_unchanged(host: &dyn Host, s: &Setup, r: &Resolved) -> Result<ConfigOutcome> {
    match verify(host, s, want_handler(r)) {
        Ok(()) => Ok(ConfigOutcome::Unchanged),
        Err(Unverified::HandlerMissing(_)) if r.restart != RestartAction::None => {
            tracing::warn!("config already has our entry but containerd does not: restarting");
            restart_and_verify(host, s, r).map_err(|failed| rollback(host, s, r, None, failed))?;
            Ok(ConfigOutcome::RestartedOnly)
        }
        Err(e) => Err(rollback(host, s, r, None, e.into_error())),
    }
}

#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler, file = %r.file.display()))]
fn write_config(
    host: &dyn Host,
    s: &Setup,
    r: &Resolved,
    current: Option<&str>,
    new: &str,
) -> Result<()> {
    // A drop-in is ours as a whole: uninstall deletes it, nothing to back up.
    if !matches!(r.target, ConfigTarget::DropIn { .. }) {
        backup_once(host, s, &r.file, current)?;
    }
    fault::hit(Fault::AfterBackup);
    let new = fault::corrupt_entry(new.to_owned());
    host.write_atomic(&r.file, new.as_bytes(), 0o644)?;
    fault::hit(Fault::AfterConfig);
    restart_and_verify(host, s, r).map_err(|failed| {
        let before = Before {
            written: &new,
            previous: current,
        };
        rollback(host, s, r, Some(before), failed)
    })
}

fn restart_and_verify(host: &dyn Host, s: &Setup, r: &Resolved) -> Result<()> {
    host.restart(&r.restart)?;
    fault::hit(Fault::AfterRestart);
    verify(host, s, want_handler(r)).map_err(Unverified::into_error)
}

fn want_handler(r: &Resolved) -> Want {
    if r.restart == RestartAction::None {
        Want::HandlerAfterReload
    } else {
        Want::Handler
    }
}

/// Saves the file as it was before our first write. An existing backup is never
/// replaced: it is the admin's original, which a reinstall must not overwrite with
/// a file that already carries our entry.
fn backup_once(host: &dyn Host, s: &Setup, file: &Path, current: Option<&str>) -> Result<()> {
    if read_backup(host, file, &s.name)?.is_some() {
        return Ok(());
    }
    let (orig, absent) = backup_paths(file, &s.name);
    match current {
        Some(text) => host.write_atomic(&orig, text.as_bytes(), 0o600),
        None => host.write_atomic(&absent, b"", 0o600),
    }
}

/// What this run wrote over, when it wrote.
struct Before<'a> {
    written: &'a str,
    previous: Option<&'a str>,
}

/// Puts the config back, restarts, and checks containerd serves again; the error
/// says what failed and what was restored.
#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler, %failed))]
fn rollback(
    host: &dyn Host,
    s: &Setup,
    r: &Resolved,
    before: Option<Before<'_>>,
    failed: Error,
) -> Error {
    if !s.rollback {
        tracing::error!("install failed; automatic rollback is disabled");
        return Error::NotRolledBack {
            failed: Box::new(failed),
        };
    }
    tracing::error!("install failed, rolling back");
    let mut restored = None;
    match try_rollback(host, s, r, before, &mut restored) {
        Ok(()) => Error::RolledBack {
            failed: Box::new(failed),
            restored: restored.unwrap_or_default(),
        },
        // The file is back; only containerd is missing (say, it never came back).
        Err(after) if restored.is_some() => Error::RestoredNotServing {
            failed: Box::new(failed),
            restored: restored.unwrap_or_default(),
            after: Box::new(after),
        },
        Err(e) => Error::RollbackFailed {
            failed: Box::new(failed),
            rollback: Box::new(e),
        },
    }
}

fn try_rollback(
    host: &dyn Host,
    s: &Setup,
    r: &Resolved,
    before: Option<Before<'_>>,
    restored_out: &mut Option<String>,
) -> Result<()> {
    let file = &r.file;
    let current = read_text(host, file)?;
    let restored = match before {
        // Still what we wrote: the bytes we replaced come back exactly.
        Some(b) if current.as_deref() == Some(b.written) => match b.previous {
            Some(prev) => {
                host.write_atomic(file, prev.as_bytes(), 0o644)?;
                format!("restored the previous bytes of {}", file.display())
            }
            None => {
                host.remove(file)?;
                format!("removed {} (it did not exist before)", file.display())
            }
        },
        // A later run (or someone else) wrote it: the uninstall rule decides, with
        // the saved original.
        _ => {
            let backup = read_backup(host, file, &s.name)?;
            let mut facts = r.facts.clone();
            match &current {
                Some(t) => facts.files.insert(r.target.path().to_owned(), t.clone()),
                None => facts.files.remove(r.target.path()),
            };
            let plan = plan_uninstall(
                &facts,
                r.containerd,
                r.distro,
                &s.spec,
                backup.as_ref().map(SavedBackup::as_backup),
            )?;
            match plan.change {
                FileChange::Write(t) => {
                    host.write_atomic(file, t.as_bytes(), 0o644)?;
                    format!("removed our entry from {}", file.display())
                }
                FileChange::Delete => {
                    host.remove(file)?;
                    format!("removed {} (ours alone)", file.display())
                }
                FileChange::Nothing => format!("{} has no entry of ours", file.display()),
            }
        }
    };
    *restored_out = Some(restored.clone());
    host.restart(&r.restart)?;
    verify(host, s, Want::Serving).map_err(Unverified::into_error)?;
    *restored_out = Some(format!(
        "{restored}; containerd serves again ({})",
        r.restart
    ));
    Ok(())
}
