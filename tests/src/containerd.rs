//! A real containerd from the test bed (1.6, 1.7 or 2.x), private to one test: its own
//! config, root, state, socket and namespace in a fresh temp dir, with runc and our Wasm
//! shim reachable as runtimes `io.containerd.runc.v2` and `io.containerd.wasmtime.v1`.
//!
//! containerd resolves a `--runtime io.containerd.X.vN` of `ctr run` to the binary
//! `containerd-shim-X-vN` on its own `PATH`, so the daemon gets a `bin/` dir first on its
//! `PATH` with links to the shim under test, the test bed's runc and runc shim. The CRI
//! plugin is disabled: `ctr` does not need it.
//!
//! Dropping a [`Containerd`] kills every task and shim it started, the daemon, unmounts
//! whatever is still mounted below its temp dir and removes the dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Error;
use crate::paths::deb_root;
use crate::process::Component;
use crate::versions::{DEB_PACKAGES, DebPackage};

/// The runtime name `ctr run --runtime` takes for our shim.
pub const WASMTIME_RUNTIME: &str = "io.containerd.wasmtime.v1";
/// The shim binary name containerd derives from [`WASMTIME_RUNTIME`].
pub const WASMTIME_SHIM: &str = "containerd-shim-wasmtime-v1";

/// What to start.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// The shim binary under test.
    pub shim: PathBuf,
    /// Extra environment for the daemon, which shims inherit (e.g. `WASMRUNTIME_CACHE_DIR`).
    pub env: Vec<(String, String)>,
}

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Component,
    /// `env(1)` arguments that start the daemon (for [`Containerd::restart`])
    args: Vec<String>,
    package: DebPackage,
    socket: PathBuf,
    namespace: String,
}

impl Containerd {
    /// Starts the test bed's containerd `package` and waits until it answers `ctr version`.
    pub fn start(package: DebPackage, opts: &ContainerdOptions) -> Result<Self, Error> {
        let root = deb_root(&package);
        let containerd = root.join("usr/bin/containerd");
        let runc = DEB_PACKAGES
            .iter()
            .find(|p| p.package == "runc")
            .map(|p| deb_root(p).join("usr/sbin/runc"))
            .unwrap_or_default();
        for (name, path) in [
            ("containerd", &containerd),
            ("runc", &runc),
            ("the shim under test", &opts.shim),
        ] {
            if !path.exists() {
                return Err(Error::MissingBinary {
                    binary: name.into(),
                    path: path.clone(),
                });
            }
        }
        // Short path: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .map_err(|e| Error::io(Path::new("/tmp"), e))?;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).map_err(|e| Error::io(&bin, e))?;
        let links = [
            (WASMTIME_SHIM, opts.shim.clone()),
            (
                "containerd-shim-runc-v2",
                root.join("usr/bin/containerd-shim-runc-v2"),
            ),
            ("runc", runc),
        ];
        for (name, target) in links {
            let link = bin.join(name);
            std::os::unix::fs::symlink(&target, &link).map_err(|e| Error::io(&link, e))?;
        }
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        let text = config_toml(major_version(&package), dir.path(), &socket);
        std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;

        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        // Through env(1), which execs containerd in place: Component takes no environment.
        let mut args = vec![format!("PATH={path}")];
        args.extend(opts.env.iter().map(|(k, v)| format!("{k}={v}")));
        args.extend([
            containerd.display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ]);
        let daemon = Component::spawn("containerd", Path::new("/usr/bin/env"), &args, dir.path())?;
        let namespace = format!(
            "t{}",
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
                .trim_start_matches("ctrd-")
                .to_ascii_lowercase()
        );
        let mut me = Self {
            dir,
            daemon,
            args,
            package,
            socket,
            namespace,
        };
        me.wait_ready(Duration::from_secs(30))?;
        Ok(me)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            self.daemon.check_running()?;
            let ok = self
                .socket
                .exists()
                .then(|| self.ctr().arg("version").output().ok())
                .flatten()
                .is_some_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::NotReady {
                    component: "containerd".into(),
                    seconds: limit.as_secs(),
                    log: self.daemon.log_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL (a crash, an OOM kill, a node agent's hard restart)
    /// and starts it again on the same config and state. Shims are not its children's
    /// children: they keep running and the new daemon reloads them.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.daemon.stop();
        self.daemon = Component::spawn(
            "containerd",
            Path::new("/usr/bin/env"),
            &self.args,
            self.dir.path(),
        )?;
        self.wait_ready(Duration::from_secs(30))
    }

    /// `ctr --address <socket> --namespace <ns>`, ready for a subcommand.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new(deb_root(&self.package).join("usr/bin/ctr"));
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// `ctr images import` of an image-layout tarball (`platform` e.g.
    /// [`crate::oci::WASM_PLATFORM`] for Wasm artifacts; `None`: the host's).
    pub fn import(&self, tar: &Path, platform: Option<&str>) -> Result<(), Error> {
        let mut cmd = self.ctr();
        cmd.args(["images", "import"]);
        if let Some(p) = platform {
            cmd.args(["--platform", p]);
        }
        let out = cmd
            .arg(tar)
            .output()
            .map_err(|e| Error::io(Path::new("ctr"), e))?;
        if !out.status.success() {
            return Err(Error::io(
                tar,
                std::io::Error::other(format!(
                    "ctr images import failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )),
            ));
        }
        Ok(())
    }

    /// The version the unpacked package recorded, e.g. "2.1.9+ds1-5".
    pub fn version(&self) -> String {
        crate::paths::deb_version(&self.package).unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp dir everything of this containerd lives in (`root/`, `state/`, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The daemon's log (shims log through it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.daemon.log).unwrap_or_default()
    }

    /// PIDs of the shim processes serving this containerd: every process whose command line
    /// names its socket (containerd passes `-address <socket>` to each shim).
    pub fn shim_pids(&self) -> Vec<u32> {
        let needle = self.socket.display().to_string();
        let mine = std::process::id();
        pids_with_cmdline(|cmd| cmd.iter().any(|a| *a == needle))
            .into_iter()
            .filter(|&p| p != mine && p != self.daemon.pid())
            .collect()
    }

    /// Mount points below this containerd's temp dir (snapshots, rootfs bind mounts).
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_below(self.dir.path())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first, so shims exit through containerd; then whatever is left, by force.
        if let Ok(out) = self.ctr().args(["tasks", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "-s", "SIGKILL", id])
                    .output();
                let _ = self.ctr().args(["tasks", "delete", "-f", id]).output();
            }
        }
        let shims = self.shim_pids();
        self.daemon.stop();
        for pid in shims.iter().chain(self.shim_pids().iter()) {
            // SAFETY: plain kill(2) on a PID we just found serving our socket.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        // Runtime state the shims keep outside our dir, per namespace (ours is unique).
        for runtime in ["wasmtime", "runc"] {
            let _ = std::fs::remove_dir_all(runtime_root(runtime, &self.namespace));
        }
        let mut mounts = mounts_below(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if std::env::var_os("TESTBED_KEEP").is_some() {
            eprintln!("TESTBED_KEEP: leaving {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}

/// Where a shim keeps per-container runtime state for a namespace (youki's or runc's
/// root; both default to `/run/containerd/<runtime>/<namespace>`).
pub fn runtime_root(runtime: &str, namespace: &str) -> PathBuf {
    Path::new("/run/containerd").join(runtime).join(namespace)
}

fn major_version(package: &DebPackage) -> u32 {
    if package.dir.starts_with("containerd-1") {
        1
    } else {
        2
    }
}

/// A minimal config: no CRI, private root/state/socket, info logs.
fn config_toml(major: u32, dir: &Path, socket: &Path) -> String {
    let (version, cri) = match major {
        1 => (2, r#"["io.containerd.grpc.v1.cri"]"#),
        _ => (
            3,
            r#"["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]"#,
        ),
    };
    format!(
        "version = {version}\n\
         root = \"{root}\"\n\
         state = \"{state}\"\n\
         disabled_plugins = {cri}\n\
         [grpc]\n  address = \"{socket}\"\n\
         [ttrpc]\n  address = \"{socket}.ttrpc\"\n\
         [debug]\n  level = \"info\"\n",
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
    )
}

/// PIDs whose `/proc/<pid>/cmdline` satisfies `pred`.
pub fn pids_with_cmdline(pred: impl Fn(&[&str]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let text = String::from_utf8_lossy(&raw);
                let args: Vec<&str> = text.split('\0').filter(|a| !a.is_empty()).collect();
                pred(&args)
            })
        })
        .collect()
}

/// Mount points at or below `dir`, from the host's mount table.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_versions_follow_the_major() {
        let d = Path::new("/tmp/x");
        let v1 = config_toml(1, d, &d.join("c.sock"));
        assert!(v1.starts_with("version = 2\n"), "{v1}");
        assert!(v1.contains("address = \"/tmp/x/c.sock\""));
        let v2 = config_toml(2, d, &d.join("c.sock"));
        assert!(v2.starts_with("version = 3\n"), "{v2}");
        assert!(v2.contains("io.containerd.cri.v1.runtime"));
    }
}
