//! The readiness status file: the installer (holding no API credentials) reports only
//! through it, via `wasm-installer ready` as the pod's readiness probe, and through
//! its termination message.
//!
//! Format: line 1 `ready` or `not-ready`, line 2 unix seconds, then the message.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::host::real::write_atomic_local;

#[derive(Debug, Clone)]
pub struct StatusFile(PathBuf);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl StatusFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, state: &str, msg: &str) -> Result<()> {
        write_atomic_local(
            &self.0,
            format!("{state}\n{}\n{msg}\n", now()).as_bytes(),
            0o644,
        )
    }

    pub fn ready(&self, msg: &str) -> Result<()> {
        self.write("ready", msg)
    }

    pub fn not_ready(&self, msg: &str) -> Result<()> {
        self.write("not-ready", msg)
    }

    /// Ready only when the last check said so and is not older than `max_age` (a
    /// hung watch loop must not stay Ready forever).
    pub fn check(&self, max_age: Duration) -> Result<Readiness> {
        let text = match std::fs::read_to_string(&self.0) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Readiness::NotReady("no check has completed yet".into()));
            }
            Err(e) => return Err(Error::io("reading", &self.0)(e)),
        };
        let mut lines = text.lines();
        let state = lines.next().unwrap_or("");
        let at: u64 = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let msg = lines.collect::<Vec<_>>().join("\n");
        let age = now().saturating_sub(at);
        Ok(match state {
            "ready" if age <= max_age.as_secs() => Readiness::Ready,
            "ready" => Readiness::NotReady(format!("last check is {age}s old")),
            _ => Readiness::NotReady(msg),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_then_not_ready_then_stale() {
        let dir = tempfile::tempdir().unwrap();
        let f = StatusFile::new(dir.path().join("s"));
        let day = Duration::from_secs(86400);
        assert!(matches!(f.check(day).unwrap(), Readiness::NotReady(_)));
        f.ready("ok").unwrap();
        assert_eq!(f.check(day).unwrap(), Readiness::Ready);
        f.not_ready("drift: x").unwrap();
        assert_eq!(
            f.check(day).unwrap(),
            Readiness::NotReady("drift: x".into())
        );
        std::fs::write(f.path(), "ready\n1\nold\n").unwrap();
        assert!(matches!(f.check(day).unwrap(), Readiness::NotReady(m) if m.contains("old")));
    }
}
