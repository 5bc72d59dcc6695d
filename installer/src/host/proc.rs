//! The `signal` restart: find the containerd process serving a config through /proc
//! (the pod runs with hostPID), SIGTERM it, and wait for its supervisor to start a
//! new one. containerd's own SIGTERM handling shuts down cleanly; running containers
//! survive in their shims.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::distro::CONTAINERD_CONFIG;
use crate::error::{Error, Result};

const POLL: Duration = Duration::from_millis(20);

/// The config a containerd command line runs with: `--config X`, `-c X`,
/// `--config=X`, else containerd's default. `None`: not a containerd daemon.
pub(crate) fn daemon_config(argv: &[String]) -> Option<PathBuf> {
    let program = Path::new(argv.first()?).file_name()?.to_str()?;
    if program != "containerd" {
        return None;
    }
    let mut args = argv[1..].iter();
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            // `containerd config dump` and friends are not the daemon.
            "config" | "--version" | "-v" | "help" => return None,
            a => {
                if let Some(v) = a.strip_prefix("--config=").or(a.strip_prefix("-c=")) {
                    config = Some(PathBuf::from(v));
                }
            }
        }
    }
    Some(config.unwrap_or_else(|| PathBuf::from(CONTAINERD_CONFIG)))
}

fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Every live containerd daemon with its config and its parent's `comm` (none when the
/// parent is PID 1).
pub(crate) fn containerd_daemons() -> Vec<crate::daemon::Daemon> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let config = daemon_config(&cmdline(pid)?)?;
            if is_zombie(pid) {
                return None;
            }
            let parent = parent_pid(pid)
                .filter(|p| *p > 1)
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
                .map(|c| c.trim_end().to_owned());
            Some(crate::daemon::Daemon {
                pid,
                config,
                parent,
            })
        })
        .collect()
}

/// The 4th field of /proc/<pid>/stat (after the parenthesised comm, which may hold spaces).
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Live containerd daemons whose config is `config` (compared after resolving
/// symlinks, as the process may have been started with another spelling).
pub(crate) fn find_containerd(config: &Path) -> Vec<i32> {
    let want = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            cmdline(*pid)
                .and_then(|argv| daemon_config(&argv))
                .is_some_and(|c| std::fs::canonicalize(&c).unwrap_or(c) == want)
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

pub(crate) fn restart_by_signal(config: &Path, timeout: Duration) -> Result<()> {
    let strategy = format!("signal, containerd --config {}", config.display());
    let fail = |reason: String| Error::Restart {
        strategy: strategy.clone(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let old = match find_containerd(config).as_slice() {
        [] => None,
        [one] => Some(*one),
        many => {
            return Err(fail(format!(
                "several containerd processes match: {many:?}"
            )));
        }
    };
    if let Some(pid) = old {
        tracing::info!(pid, "sending SIGTERM to containerd");
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .map_err(|e| fail(format!("kill -TERM {pid}: {e}")))?;
        while !is_zombie(pid) {
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "containerd {pid} did not exit within {timeout:?}"
                )));
            }
            std::thread::sleep(POLL);
        }
    }
    // A restart means a *new* process: its supervisor (systemd, a script) starts it.
    loop {
        if let Some(new) = find_containerd(config)
            .into_iter()
            .find(|p| Some(*p) != old)
        {
            tracing::info!(old, new, "containerd restarted");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "no new containerd process within {timeout:?} (is it supervised?)"
            )));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn reads_the_config_of_a_daemon_command_line() {
        assert_eq!(
            daemon_config(&argv("/usr/bin/containerd")),
            Some(PathBuf::from(CONTAINERD_CONFIG))
        );
        assert_eq!(
            daemon_config(&argv("containerd --config /tmp/c.toml --log-level debug")),
            Some(PathBuf::from("/tmp/c.toml"))
        );
        assert_eq!(
            daemon_config(&argv("containerd -c /x.toml")),
            Some(PathBuf::from("/x.toml"))
        );
        assert_eq!(
            daemon_config(&argv("containerd --config=/y.toml")),
            Some(PathBuf::from("/y.toml"))
        );
        assert_eq!(
            daemon_config(&argv("containerd --config /x config dump")),
            None
        );
        assert_eq!(daemon_config(&argv("containerd-shim-runc-v2 -id x")), None);
    }

    #[test]
    fn finds_no_daemon_for_an_unused_config() {
        assert!(find_containerd(Path::new("/nonexistent/wasm-installer.toml")).is_empty());
    }
}
