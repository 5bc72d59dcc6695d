//! After a successful install the installer stays running: every interval it checks
//! that the shim, the config and containerd still agree with what it installed, and
//! repairs or reports drift.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Setup, resolve};
use crate::error::Result;
use crate::host::Host;
use crate::plan::{FileChange, plan_install};
use crate::status::StatusFile;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// The host's shim differs from ours (or is gone).
    pub shim: bool,
    /// The config no longer has our entry exactly.
    pub config: bool,
    /// containerd does not report our handler (or does not answer).
    pub handler: bool,
}

impl Drift {
    pub fn any(&self) -> bool {
        self.shim || self.config || self.handler
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.shim {
            parts.push("the shim on the host differs from the installer's");
        }
        if self.config {
            parts.push("containerd's config lost or changed our entry");
        }
        if self.handler {
            parts.push("containerd does not serve our handler");
        }
        parts.join("; ")
    }
}

#[tracing::instrument(skip_all, fields(node = %s.node, handler = %s.spec.handler))]
pub fn check_drift(host: &dyn Host, s: &Setup) -> Result<Drift> {
    // Not while another installer restarts containerd: that is no drift of ours. Released
    // before a repair takes it again (two flocks of one process conflict too).
    let _lock = host.lock_node(&format!("drift check of {}", s.spec.handler))?;
    let want = crate::host::sha256_file(&s.source_shim)?;
    let shim = host.sha256(s.spec.shim_path.as_path())? != want;
    let r = resolve(host, s)?;
    let plan = plan_install(&r.facts, r.containerd, r.distro, &s.spec)?;
    let config = plan.change != FileChange::Nothing;
    let handler = !host
        .cri_status()
        .is_ok_and(|st| st.runtime_ready && st.knows(&s.spec.handler));
    Ok(Drift {
        shim,
        config,
        handler,
    })
}

/// What to do about drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrift {
    /// Run the install again (copy, edit, restart, verify, rollback on failure).
    Repair,
    /// Only become not-ready with the reason.
    Report,
}

/// The stay-running loop; returns when `stop` is set (SIGTERM).
pub fn watch(
    host: &dyn Host,
    s: &Setup,
    every: Duration,
    on_drift: OnDrift,
    status: &StatusFile,
    stop: &AtomicBool,
) -> Result<()> {
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100).min(every));
            continue;
        }
        next = Instant::now() + every;
        let verdict = match check_drift(host, s) {
            Ok(d) if !d.any() => Ok(()),
            Ok(d) if on_drift == OnDrift::Repair => {
                tracing::warn!(drift = d.describe(), "repairing drift");
                super::install(host, s)
                    .map(|_| ())
                    .map_err(|e| format!("repairing drift ({}) failed: {e}", d.describe()))
            }
            Ok(d) => Err(format!("drift: {}", d.describe())),
            Err(e) => Err(format!("drift check failed: {e}")),
        };
        match verdict {
            Ok(()) => status.ready("installed; last drift check clean")?,
            Err(msg) => {
                tracing::warn!(msg, "not ready");
                status.not_ready(&msg)?;
            }
        }
    }
    Ok(())
}
