//! One control-plane process: started with its log in a file, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::Error;

/// A running component. Dropping it kills the process (tests must not leak daemons).
#[derive(Debug)]
pub struct Component {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Component {
    /// Start `binary args..`, logging stdout and stderr to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        if !binary.exists() {
            return Err(Error::MissingBinary {
                binary: name.into(),
                path: binary.into(),
            });
        }
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| Error::io(&log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&log, e))?;
        let mut cmd = Command::new(binary);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: name.into(),
            source,
        })?;
        Ok(Self {
            name: name.into(),
            log,
            child,
        })
    }

    /// `Err(Exited)` when the process has already ended.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(40),
            }),
            _ => Ok(()),
        }
    }

    /// For error messages: the component's klog error/fatal lines (the cause usually hides
    /// among hundreds of info lines), then the last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let errors: Vec<&str> = all
            .iter()
            .copied()
            .filter(|l| l.starts_with('E') || l.starts_with('F'))
            .take(10)
            .collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        format!(
            "{}\n...\n{}\n(full log: {})",
            errors.join("\n"),
            tail.join("\n"),
            self.log.display()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill and reap now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ask the kernel to SIGKILL the child when the thread that spawned it dies, so even a test
/// process killed by a timeout leaves no daemons behind.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
