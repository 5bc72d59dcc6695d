//! A recording in-memory host for the steps' unit tests: files in a map, every
//! effect appended to a log, CRI answers scripted (or derived from the config).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{CriStatus, Host, RestartAction, ShimCopy};
use crate::error::{Error, Result};
use crate::spec::HandlerName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Write(PathBuf),
    Remove(PathBuf),
    CopyShim(PathBuf),
    Restart(RestartAction),
}

/// How the fake containerd answers `Status`.
#[derive(Debug, Clone)]
pub enum CriScript {
    /// Knows the handlers whose name appears as `runtimes.<name>]` in this file
    /// as of the last restart (a crude but honest "containerd read its config").
    FromConfig(PathBuf),
    /// These answers in order, then the last one forever.
    Queue(VecDeque<Result<CriStatus, String>>),
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    super::real::hex(&sha2::Sha256::digest(bytes))
}

pub struct FakeHost {
    pub files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
    pub calls: Mutex<Vec<Call>>,
    pub systemd: bool,
    pub version: String,
    pub cri: Mutex<CriScript>,
    /// The config text containerd "loaded" at its last (re)start.
    pub loaded: Mutex<Option<String>>,
    /// A config text containing this makes the fake containerd stop serving.
    pub rejects: Option<String>,
    pub running: Vec<String>,
    pub daemons: Vec<crate::daemon::Daemon>,
}

impl FakeHost {
    pub fn new(version: &str, config: &Path) -> Self {
        Self {
            files: Mutex::new(BTreeMap::new()),
            calls: Mutex::new(Vec::new()),
            systemd: true,
            version: version.into(),
            cri: Mutex::new(CriScript::FromConfig(config.to_owned())),
            loaded: Mutex::new(None),
            rejects: None,
            running: Vec::new(),
            daemons: Vec::new(),
        }
    }

    pub fn put(&self, path: &str, text: &str) {
        self.files
            .lock()
            .unwrap()
            .insert(path.into(), text.as_bytes().to_vec());
    }

    pub fn text(&self, path: &str) -> Option<String> {
        let files = self.files.lock().unwrap();
        files
            .get(Path::new(path))
            .map(|b| String::from_utf8(b.clone()).unwrap())
    }

    /// containerd (re)reads its config, as at boot.
    pub fn boot(&self) {
        if let CriScript::FromConfig(p) = &*self.cri.lock().unwrap() {
            let t = self.text(p.to_str().unwrap()).unwrap_or_default();
            *self.loaded.lock().unwrap() = Some(t);
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn restarts(&self) -> Vec<RestartAction> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Restart(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn log(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl Host for FakeHost {
    fn lock_node(&self, _holder: &str) -> Result<super::NodeLock> {
        Ok(super::NodeLock::default())
    }
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        Ok(self.files.lock().unwrap().get(path).cloned())
    }
    fn exists(&self, path: &Path) -> bool {
        // A directory exists when a file below it does.
        self.files
            .lock()
            .unwrap()
            .keys()
            .any(|p| p.starts_with(path))
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8], _mode: u32) -> Result<()> {
        self.log(Call::Write(path.to_owned()));
        self.files
            .lock()
            .unwrap()
            .insert(path.to_owned(), bytes.to_vec());
        Ok(())
    }
    fn remove(&self, path: &Path) -> Result<bool> {
        self.log(Call::Remove(path.to_owned()));
        Ok(self.files.lock().unwrap().remove(path).is_some())
    }
    fn remove_dir_if_empty(&self, _path: &Path) -> Result<()> {
        Ok(())
    }
    fn sha256(&self, path: &Path) -> Result<Option<String>> {
        Ok(self.read(path)?.map(|b| sha256(&b)))
    }
    fn copy_shim(&self, source: &Path, dest: &Path) -> Result<ShimCopy> {
        let bytes = std::fs::read(source).map_err(Error::io("reading", source))?;
        let sha256 = sha256(&bytes);
        if self.sha256(dest)?.as_deref() == Some(sha256.as_str()) {
            return Ok(ShimCopy::Unchanged { sha256 });
        }
        self.log(Call::CopyShim(dest.to_owned()));
        self.files.lock().unwrap().insert(dest.to_owned(), bytes);
        Ok(ShimCopy::Copied { sha256 })
    }
    fn systemd_booted(&self) -> bool {
        self.systemd
    }
    fn restart(&self, action: &RestartAction) -> Result<()> {
        self.log(Call::Restart(action.clone()));
        self.boot();
        Ok(())
    }
    fn cri_version(&self) -> Result<String> {
        Ok(self.version.clone())
    }
    fn cri_status(&self) -> Result<CriStatus> {
        let cri_err = |reason: String| Error::Cri {
            call: "Status",
            socket: "/fake.sock".into(),
            reason,
        };
        let mut script = self.cri.lock().unwrap();
        match &mut *script {
            CriScript::Queue(q) => {
                let next = if q.len() > 1 {
                    q.pop_front().unwrap()
                } else {
                    q.front().cloned().expect("empty CRI script")
                };
                next.map_err(cri_err)
            }
            CriScript::FromConfig(_) => {
                let loaded = self.loaded.lock().unwrap().clone().unwrap_or_default();
                if self.rejects.as_ref().is_some_and(|r| loaded.contains(r)) {
                    return Err(cri_err("connection refused".into()));
                }
                let handlers = loaded
                    .lines()
                    .filter_map(|l| {
                        l.trim()
                            .strip_suffix(']')?
                            .rsplit_once(".runtimes.")?
                            .1
                            .into()
                    })
                    .map(|h: &str| h.trim_matches(['"', '\'']).to_owned())
                    .collect();
                Ok(CriStatus {
                    runtime_ready: true,
                    handlers,
                })
            }
        }
    }
    fn containerd_daemons(&self) -> Vec<crate::daemon::Daemon> {
        self.daemons.clone()
    }
    fn running_containers(&self, _handler: &HandlerName) -> Result<Vec<String>> {
        Ok(self.running.clone())
    }
    fn sleep(&self, _d: Duration) {}
}
