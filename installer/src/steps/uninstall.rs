//! Uninstall: refuse while our handler's containers run, remove our entry (restart
//! only if the file changed), remove the shim and the saved backup.

use super::{Setup, Want, backup_paths, read_backup, resolve, verify};
use crate::error::{Error, Result};
use crate::fault::{self, Fault};
use crate::host::{Host, RestartAction};
use crate::plan::{FileChange, plan_uninstall};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallReport {
    pub config_changed: bool,
    pub shim_removed: bool,
}

#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler, force))]
pub fn uninstall(host: &dyn Host, s: &Setup, force: bool) -> Result<UninstallReport> {
    let _lock = host.lock_node(&format!("uninstall of {}", s.spec.handler))?;
    match super::cri_when_serving(host, s, || host.running_containers(&s.spec.handler)) {
        Ok(ids) if ids.is_empty() => {}
        Ok(ids) if force => tracing::warn!(?ids, "forced: removing while these still run"),
        Ok(ids) => {
            return Err(Error::ContainersRunning {
                handler: s.spec.handler.to_string(),
                ids,
            });
        }
        Err(e) if force => tracing::warn!(%e, "forced: cannot list containers"),
        Err(e) => return Err(e),
    }
    let r = resolve(host, s)?;
    let backup = read_backup(host, &r.file, &s.name)?;
    let plan = plan_uninstall(
        &r.facts,
        r.containerd,
        r.distro,
        &s.spec,
        backup.as_ref().map(super::SavedBackup::as_backup),
    )?;
    let config_changed = plan.change != FileChange::Nothing;
    match &plan.change {
        FileChange::Write(text) => host.write_atomic(&r.file, text.as_bytes(), 0o644)?,
        FileChange::Delete => {
            host.remove(&r.file)?;
        }
        FileChange::Nothing => {}
    }
    fault::hit(Fault::AfterConfig);
    // Our entry is gone from the file, yet containerd may still serve it: a run killed
    // between the write and the restart. Restart then too, or the handler outlives us.
    let stale = !config_changed
        && r.restart != RestartAction::None
        && host
            .cri_status()
            .is_ok_and(|status| status.knows(&s.spec.handler));
    if stale {
        tracing::warn!("the config no longer has our entry but containerd serves it: restarting");
    }
    if config_changed || stale {
        host.restart(&r.restart)?;
        fault::hit(Fault::AfterRestart);
        verify(host, s, Want::Serving).map_err(super::Unverified::into_error)?;
    }
    let shim = s.spec.shim_path.as_path();
    let shim_removed = host.remove(shim)?;
    fault::hit(Fault::AfterShimRemoved);
    host.remove(&super::options_path(shim))?;
    if let Some(dir) = shim.parent() {
        host.remove_dir_if_empty(dir)?;
    }
    let (orig, absent) = backup_paths(&r.file, &s.name);
    host.remove(&orig)?;
    host.remove(&absent)?;
    Ok(UninstallReport {
        config_changed,
        shim_removed,
    })
}
