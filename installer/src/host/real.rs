//! The real host: files under `--host-root`, restarts, CRI on containerd's socket.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{CriStatus, Host, RestartAction, ShimCopy};
use crate::cri::Cri;
use crate::error::{Error, Result};
use crate::fault::{self, Fault};
use crate::spec::HandlerName;

#[derive(Debug, Clone)]
pub struct RealHostConfig {
    /// Where the host's `/` is mounted (`/host` in the pod, `/` on the node).
    pub root: PathBuf,
    /// containerd's CRI socket, as a host path.
    pub socket: PathBuf,
    /// Bound on one CRI call.
    pub cri_timeout: Duration,
    /// How long a restart may take until the new containerd process exists.
    pub restart_timeout: Duration,
}

pub struct RealHost {
    cfg: RealHostConfig,
    cri: Cri,
}

impl RealHost {
    pub fn new(cfg: RealHostConfig) -> Result<Self> {
        let cri = Cri::new(under(&cfg.root, &cfg.socket), cfg.cri_timeout)?;
        Ok(Self { cfg, cri })
    }

    /// A host path as seen from here.
    pub fn local(&self, path: &Path) -> PathBuf {
        under(&self.cfg.root, path)
    }
}

/// `/etc/x` under `root`.
pub(crate) fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> Result<Option<String>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("opening", path)(e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(&hasher.finalize())))
}

/// The atomic write itself, on a local path. The temp name is fixed per target, so a
/// run killed before the rename leaves one stale temp that the next run overwrites.
pub(crate) fn write_atomic_local(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(Error::io("creating directory", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.wasm-installer.tmp"));
    let existing = fs::metadata(path).ok();
    let _ = fs::remove_file(&tmp);
    let written = write_temp(&tmp, bytes, mode, existing.as_ref());
    if written.is_err() {
        // A half-written temp on a full disk would keep the space it took.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fault::hit(Fault::BeforeRename(&name));
    // rename() replaces the directory entry; a running shim keeps its old inode, so
    // this never fails with ETXTBSY the way writing into the binary would.
    fs::rename(&tmp, path).map_err(Error::io("renaming into place", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))?;
    Ok(())
}

/// Writes and fsyncs the temp file with the final mode and owner (`existing`'s, else
/// `mode` and ours): the file never appears with the wrong ones.
fn write_temp(tmp: &Path, bytes: &[u8], mode: u32, existing: Option<&fs::Metadata>) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(Error::io("creating", tmp))?;
    file.write_all(bytes).map_err(Error::io("writing", tmp))?;
    let (mode, owner) = match existing {
        Some(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
        None => (mode, None),
    };
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(Error::io("setting the mode of", tmp))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(Error::io("setting the owner of", tmp))?;
    }
    file.sync_all().map_err(Error::io("fsync", tmp))
}

/// Beside containerd's socket: one lock per containerd, on the host's tmpfs (/run).
const LOCK_NAME: &str = ".wasm-installer.lock";
/// Longer than any install may hold it (restart + verify + rollback).
const LOCK_WAIT: Duration = Duration::from_secs(600);

impl RealHost {
    fn lock_path(&self) -> PathBuf {
        let dir = self.cfg.socket.parent().unwrap_or(Path::new("/run"));
        self.local(&dir.join(LOCK_NAME))
    }
}

impl Host for RealHost {
    fn lock_node(&self, holder: &str) -> Result<super::NodeLock> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.lock_path();
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(Error::io("creating directory", dir))?;
        }
        let started = std::time::Instant::now();
        let mut logged = None::<std::time::Instant>;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(Error::io("opening", &path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    // Who holds it, for the messages of whoever waits.
                    let me = format!("pid {} for {holder}", std::process::id());
                    lock.set_len(0)
                        .and_then(|()| lock.write_all(me.as_bytes()))
                        .map_err(Error::io("writing", &path))?;
                    if logged.is_some() {
                        tracing::info!(waited = ?started.elapsed(), "took the node lock");
                    }
                    return Ok(super::NodeLock { _held: Some(lock) });
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let held_by = fs::read_to_string(&path).unwrap_or_default();
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(Error::NodeBusy {
                            path,
                            holder: held_by,
                            waited: started.elapsed(),
                        });
                    }
                    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::info!(holder = %held_by, lock = %path.display(), "waiting for another installer on this node");
                        logged = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((_, errno)) => {
                    return Err(Error::io("locking", &path)(errno.into()));
                }
            }
        }
    }

    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let local = self.local(path);
        match fs::read(&local) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", local)(e)),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        self.local(path).exists()
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        write_atomic_local(&self.local(path), bytes, mode)
    }

    fn remove(&self, path: &Path) -> Result<bool> {
        let local = self.local(path);
        match fs::remove_file(&local) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("removing", local)(e)),
        }
    }

    fn remove_dir_if_empty(&self, path: &Path) -> Result<()> {
        let local = self.local(path);
        match fs::remove_dir(&local) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // ENOTEMPTY/EEXIST: someone else's files are in there; leave them.
            Err(e) if e.raw_os_error() == Some(39) || e.raw_os_error() == Some(17) => Ok(()),
            Err(e) => Err(Error::io("removing directory", local)(e)),
        }
    }

    fn sha256(&self, path: &Path) -> Result<Option<String>> {
        sha256_file(&self.local(path))
    }

    fn copy_shim(&self, source: &Path, dest: &Path) -> Result<ShimCopy> {
        let want = sha256_file(source)?.ok_or_else(|| {
            Error::io("reading the shim to install", source)(std::io::ErrorKind::NotFound.into())
        })?;
        let local = self.local(dest);
        if sha256_file(&local)?.as_deref() == Some(want.as_str()) {
            return Ok(ShimCopy::Unchanged { sha256: want });
        }
        let bytes = fs::read(source).map_err(Error::io("reading", source))?;
        // A shim we replace keeps its mode; a new one is 0755 root-owned.
        write_atomic_local(&local, &bytes, 0o755)?;
        let found = sha256_file(&local)?.unwrap_or_default();
        if found != want {
            return Err(Error::ShimHashMismatch {
                path: dest.to_owned(),
                expected: want,
                found,
            });
        }
        Ok(ShimCopy::Copied { sha256: want })
    }

    fn systemd_booted(&self) -> bool {
        // sd_booted(): the directory systemd creates at boot as PID 1.
        self.local(Path::new("/run/systemd/system")).is_dir()
    }

    fn containerd_daemons(&self) -> Vec<crate::daemon::Daemon> {
        super::proc::containerd_daemons()
    }

    fn restart(&self, action: &RestartAction) -> Result<()> {
        match action {
            RestartAction::None => Ok(()),
            RestartAction::Systemd(unit) => {
                super::systemd::restart_unit(&self.cfg.root, *unit, self.cfg.restart_timeout)
            }
            RestartAction::Signal { config } => {
                super::proc::restart_by_signal(config, self.cfg.restart_timeout)
            }
            RestartAction::Command(argv) => run_on_host(&self.cfg.root, argv),
        }
    }

    fn cri_version(&self) -> Result<String> {
        self.cri.version()
    }

    fn cri_status(&self) -> Result<CriStatus> {
        self.cri.status()
    }

    fn running_containers(&self, handler: &HandlerName) -> Result<Vec<String>> {
        self.cri.running(handler.as_str())
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The admin's restart command, as an argv (never a shell string). With a host root
/// other than `/` it runs chrooted into it, so its paths and binaries are the host's.
fn run_on_host(root: &Path, argv: &[String]) -> Result<()> {
    let strategy = format!("command {argv:?}");
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::Restart {
            strategy,
            reason: "empty command".into(),
        });
    };
    let mut cmd = if root == Path::new("/") {
        let mut c = std::process::Command::new(program);
        c.args(args);
        c
    } else {
        let mut c = std::process::Command::new("chroot");
        c.arg(root).arg(program).args(args);
        c
    };
    let out = cmd.output().map_err(|e| Error::Restart {
        strategy: strategy.clone(),
        reason: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Restart {
            strategy,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}
