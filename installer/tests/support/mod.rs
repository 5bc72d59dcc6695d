//! A real containerd from the test bed in a temp root (own config, root, state,
//! socket), under a small supervisor that starts it again whenever it exits, the way
//! systemd's `Restart=always` would. That is what makes the `signal` strategy real.
//!
//! Also shared by the real-containerd test files: [`Run`] (the installer binary against
//! one such containerd), the real Wasmtime shim built in this test's profile
//! ([`real_shim`]), images written with `testbed::oci` and imported with `ctr`, and
//! the figures `cargo xtask bench installer` collects ([`record_bench`]).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ListContainersRequest, ListPodSandboxRequest, RemovePodSandboxRequest, StopPodSandboxRequest,
};
use testbed::oci::RootfsImage;
use testbed::versions::DebPackage;
use toml_edit::{DocumentMut, value};
use wasm_installer::cri::Cri;
use wasm_installer::{ContainerdVersion, Edit, HandlerName, RuntimeName, RuntimeSpec};

/// Where the pods of every test containerd get their cgroups.
const CGROUP_ROOT: &str = "wasmruntime-installer-tests";

/// The shim's file name, as installed and as built.
pub const SHIM_NAME: &str = "containerd-shim-wasmtime-v1";

pub struct Containerd {
    pub version: &'static str,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub bin: PathBuf,
    package: DebPackage,
    stop: Arc<AtomicBool>,
    /// While set, the supervisor starts no new daemon (a containerd that never comes back).
    hold: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    spawns: Arc<AtomicU32>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<JoinHandle<()>>,
}

fn package(version: &str) -> DebPackage {
    testbed::versions::containerd_package(version)
        .unwrap_or_else(|| panic!("the test bed has no containerd {version}"))
}

pub fn containerd_bin(version: &str) -> PathBuf {
    let bin = testbed::paths::deb_root(&package(version)).join("usr/bin/containerd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask testbed`",
        bin.display()
    );
    bin
}

fn default_config(version: &str) -> &'static str {
    match version {
        "1.6.20" => include_str!("../../fixtures/defaults/containerd-1.6.20.toml"),
        "1.7.24" => include_str!("../../fixtures/defaults/containerd-1.7.24.toml"),
        "2.1.9" => include_str!("../../fixtures/defaults/containerd-2.1.9.toml"),
        v => panic!("no default config for {v}"),
    }
}

impl Containerd {
    /// `containerd config default` of that version with private paths: what a node
    /// without any admin edit runs with.
    pub fn start(version: &'static str) -> Self {
        Self::start_with(version, |_| {})
    }

    /// [`Self::start`], with `prepare` run on the (empty) directory of the config file
    /// first: a test mounts a small tmpfs there.
    pub fn start_with(version: &'static str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::Builder::new().prefix("ctd").tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        prepare(&etc);
        let socket = dir.path().join("c.sock");
        let mut doc: DocumentMut = default_config(version).parse().unwrap();
        doc["root"] = value(dir.path().join("root").to_str().unwrap());
        doc["state"] = value(dir.path().join("state").to_str().unwrap());
        doc["grpc"]["address"] = value(socket.to_str().unwrap());
        if version.starts_with('2') {
            // NRI's socket is a fixed host path: parallel daemons would fight over it.
            doc["plugins"]["io.containerd.nri.v1.nri"]["disable"] = value(true);
        }
        if !has_cap_sys_resource() {
            // Pod sandboxes ask for oom_score_adj -998, which only CAP_SYS_RESOURCE may
            // set; without it (these test machines) the shim cannot create the pause
            // container. containerd's own switch for such hosts clamps the score to its own.
            let cri = if version.starts_with('1') {
                "io.containerd.grpc.v1.cri"
            } else {
                "io.containerd.cri.v1.runtime"
            };
            doc["plugins"][cri]["restrict_oom_score_adj"] = value(true);
        }
        let config = etc.join("config.toml");
        std::fs::write(&config, doc.to_string()).unwrap();
        let log = dir.path().join("containerd.log");
        let mut me = Self {
            version,
            bin: containerd_bin(version),
            package: package(version),
            config,
            socket,
            log,
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            hold: Arc::new(AtomicBool::new(false)),
            pid: Arc::new(AtomicU32::new(0)),
            spawns: Arc::new(AtomicU32::new(0)),
            child: Arc::new(Mutex::new(None)),
            thread: None,
        };
        me.supervise();
        me.wait_serving(Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!("containerd {version} did not start: {e}\n{}", me.log_tail())
            });
        me
    }

    fn spawn(bin: &Path, config: &Path, log: &Path, dir: &Path) -> Child {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let path = std::env::join_paths(std::iter::once(dir.join("path-bin")).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .unwrap();
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("PATH", path)
            // Shims inherit it: their module cache stays in this temp dir, not /var/lib.
            .env("WASMRUNTIME_CACHE_DIR", dir.join("module-cache"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn containerd")
    }

    fn supervise(&mut self) {
        let (bin, config, log) = (self.bin.clone(), self.config.clone(), self.log.clone());
        let dir = self.dir.path().to_owned();
        std::fs::create_dir_all(self.path_bin()).unwrap();
        let (stop, pid, slot) = (self.stop.clone(), self.pid.clone(), self.child.clone());
        let hold = self.hold.clone();
        let spawns = self.spawns.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let child = Self::spawn(&bin, &config, &log, &dir);
                pid.store(child.id(), Ordering::SeqCst);
                spawns.fetch_add(1, Ordering::SeqCst);
                *slot.lock().unwrap() = Some(child);
                loop {
                    std::thread::sleep(Duration::from_millis(10));
                    let mut guard = slot.lock().unwrap();
                    let Some(c) = guard.as_mut() else { return };
                    if c.try_wait().unwrap().is_some() {
                        *guard = None;
                        break;
                    }
                }
                // systemd's default RestartSec.
                std::thread::sleep(Duration::from_millis(100));
                while hold.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    pid.store(0, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }

    /// The first directory on the daemon's PATH (empty unless a test puts a shim there):
    /// where containerd looks up a shim binary by name.
    pub fn path_bin(&self) -> PathBuf {
        self.dir.path().join("path-bin")
    }

    /// Every directory containerd searches for `containerd-shim-<x>-<v>` by name: its
    /// PATH, then the directory of its own executable.
    pub fn shim_search_dirs(&self) -> Vec<PathBuf> {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        std::iter::once(self.path_bin())
            .chain(std::env::split_paths(&inherited))
            .chain(self.bin.parent().map(Path::to_path_buf))
            .collect()
    }

    /// SIGTERM the daemon, as the installer's `signal` strategy does, and wait until the
    /// supervisor's next one serves CRI.
    pub fn restart(&self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGTERM, "a restart");
    }

    /// While `on`, a daemon that exits is not started again; `false` lets the supervisor
    /// start it as usual.
    pub fn hold_restarts(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    /// Power cut: SIGKILL the daemon (no clean-up of its own), then wait until the
    /// supervisor's next one serves CRI, as after a reboot.
    pub fn kill_and_boot(&self) {
        self.signal_and_wait(nix::sys::signal::Signal::SIGKILL, "a power cut");
    }

    fn signal_and_wait(&self, signal: nix::sys::signal::Signal, what: &str) {
        let old = self.pid();
        // ESRCH: it exited on its own meanwhile (the installer's restart); the supervisor
        // starts the next one all the same
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("signalling containerd {old} for {what}: {e}"),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.pid() == old || self.pid() == 0 {
            assert!(
                Instant::now() < deadline,
                "containerd was not started after {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_serving(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("containerd after {what}: {e}\n{}", self.log_tail()));
    }

    /// The current daemon's PID (0 while being restarted).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// How often the supervisor started containerd again after the first start.
    pub fn restarts(&self) -> u32 {
        self.spawns.load(Ordering::SeqCst).saturating_sub(1)
    }

    pub fn cri(&self) -> Cri {
        Cri::new(&self.socket, Duration::from_secs(1)).unwrap()
    }

    pub fn wait_serving(&self, timeout: Duration) -> Result<(), String> {
        let cri = self.cri();
        let deadline = Instant::now() + timeout;
        loop {
            match cri.status() {
                Ok(s) if s.runtime_ready => return Ok(()),
                Ok(s) => {
                    if Instant::now() > deadline {
                        return Err(format!("not ready: {s:?}"));
                    }
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(e.to_string());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// This version's `ctr`, bound to the daemon's socket and `namespace`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = Command::new(testbed::paths::deb_root(&self.package).join("usr/bin/ctr"));
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace);
        cmd
    }

    /// Writes `image` as an OCI tarball and `ctr images import`s it into `namespace`
    /// (`k8s.io` for CRI).
    pub fn import(&self, namespace: &str, image: &RootfsImage) {
        let tar = self
            .dir
            .path()
            .join(format!("image-{}.tar", unique_suffix()));
        image.write_tar(&tar).expect("write image");
        let out = self
            .ctr(namespace)
            .args(["images", "import"])
            .arg(&tar)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr import: {}", describe(&out));
        let _ = std::fs::remove_file(tar);
    }

    /// The pause image this containerd's CRI starts every pod sandbox from (it never
    /// pulls it when it is present under exactly this name).
    pub fn sandbox_image(&self) -> String {
        let doc: DocumentMut = std::fs::read_to_string(&self.config)
            .unwrap()
            .parse()
            .unwrap();
        let item = if self.version.starts_with('1') {
            &doc["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"]
        } else {
            &doc["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
        };
        item.as_str()
            .expect("sandbox image in the config")
            .to_owned()
    }

    /// Stops and removes every CRI pod sandbox (and so its containers); errors are the
    /// caller's to judge.
    pub fn remove_all_pods(&self) -> Result<usize, wasm_installer::Error> {
        let cri = Cri::new(&self.socket, Duration::from_secs(30))?;
        let ids: Vec<String> = cri.call("ListPodSandbox", |mut c| async move {
            let items = c
                .list_pod_sandbox(ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            Ok(items.into_iter().map(|s| s.id).collect())
        })?;
        for id in &ids {
            let pod_sandbox_id = id.clone();
            cri.call("StopPodSandbox", |mut c| async move {
                c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id })
                    .await?;
                Ok(())
            })?;
            let pod_sandbox_id = id.clone();
            cri.call("RemovePodSandbox", |mut c| async move {
                c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id })
                    .await?;
                Ok(())
            })?;
        }
        Ok(ids.len())
    }

    /// IDs of every CRI pod sandbox and container.
    fn cri_ids(&self) -> Result<Vec<String>, wasm_installer::Error> {
        self.cri()
            .call("ListPodSandbox/ListContainers", |mut c| async move {
                let sandboxes = c
                    .list_pod_sandbox(ListPodSandboxRequest::default())
                    .await?
                    .into_inner()
                    .items;
                let containers = c
                    .list_containers(ListContainersRequest::default())
                    .await?
                    .into_inner()
                    .containers;
                Ok(sandboxes
                    .into_iter()
                    .map(|s| s.id)
                    .chain(containers.into_iter().map(|c| c.id))
                    .collect())
            })
    }

    /// The cgroup parent for this containerd's pods: private, so teardown can kill
    /// exactly their processes.
    pub fn cgroup_parent(&self) -> String {
        let dir = self.dir.path().file_name().unwrap().to_string_lossy();
        format!("/{CGROUP_ROOT}/{dir}")
    }

    /// Shim processes serving this containerd (each gets `-address <socket>`), and
    /// the container processes they forked without exec (the Wasm guests' init).
    pub fn shim_pids(&self) -> Vec<u32> {
        let needle = self.socket.display().to_string();
        testbed::containerd::pids_with_cmdline(|argv| argv.iter().any(|a| *a == needle))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods first, through CRI, so their processes end with their shims.
        let mut ids = Vec::new();
        if self.pid() != 0 {
            ids = self.cri_ids().unwrap_or_default();
            let _ = self.remove_all_pods();
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A restart racing the stop flag may have left one more daemon.
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // What CRI lost track of (a forced uninstall, a failed test): shims, then the
        // container processes in our pods' cgroups, their state and mounts.
        for pid in self.shim_pids() {
            kill9(pid);
        }
        remove_cgroups(&self.cgroup_parent());
        // The shared parent, once no other test uses it.
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(CGROUP_ROOT));
        }
        for id in ids {
            let _ = std::fs::remove_dir_all(Path::new("/run/containerd/wasmtime/k8s.io").join(id));
        }
        let mut mounts = testbed::containerd::mounts_below(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills every process in the cgroup `rel` (e.g. `/a/b`) and below, in every mounted
/// hierarchy, then removes those cgroups.
pub fn remove_cgroups(rel: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let mut stack = vec![h.path().join(rel.trim_start_matches('/'))];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
            {
                kill9(pid);
            }
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
            dirs.push(dir);
        }
    }
    // Deepest first; a cgroup goes once its killed processes are reaped.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
    for dir in dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether this process may lower an oom_score_adj (CAP_SYS_RESOURCE, bit 24).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    caps & (1 << 24) != 0
}

/// Polls CRI `Version` every 5 ms from another thread and records the longest span
/// without an answer: the restart's unavailability window as a client sees it.
pub struct OutageProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Duration>>,
}

impl OutageProbe {
    pub fn start(socket: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = socket.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let cri = Cri::new(&socket, Duration::from_millis(500)).unwrap();
            let mut last_ok = Instant::now();
            let mut worst = Duration::ZERO;
            while !flag.load(Ordering::SeqCst) {
                if cri.version().is_ok() {
                    worst = worst.max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// The longest gap between two answers.
    pub fn finish(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// One runtime (`--name`) installed by the real installer binary into one containerd;
/// the shim goes to `/opt/wasmruntime/<name>/` on this host, removed again on drop.
pub struct Run<'a> {
    pub c: &'a Containerd,
    pub name: String,
    /// The installer's `--shim-source`.
    pub shim: PathBuf,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/opt/wasmruntime/{}", self.name));
    }
}

impl<'a> Run<'a> {
    /// With a small stand-in executable as the shim.
    pub fn new(c: &'a Containerd, case: &str) -> Self {
        let me = Self::named(c, case);
        std::fs::write(
            &me.shim,
            format!("#!/bin/sh\necho stand-in shim {}\n", me.name),
        )
        .unwrap();
        std::fs::set_permissions(
            &me.shim,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        me
    }

    /// With a private copy of `shim` (a later build may replace the original meanwhile),
    /// stripped: a debug build is ~650 MB, ~100 MB without symbols and debug info; the
    /// code is the same, and every test copies and hashes six times less.
    pub fn with_shim(c: &'a Containerd, case: &str, shim: &Path) -> Self {
        let me = Self::named(c, case);
        let out = Command::new("strip")
            .arg("-o")
            .arg(&me.shim)
            .arg(shim)
            .output()
            .expect("strip (binutils)");
        assert!(out.status.success(), "strip: {}", describe(&out));
        me
    }

    fn named(c: &'a Containerd, case: &str) -> Self {
        let name = format!("t-{}-{case}", c.version.replace('.', ""));
        let shim = c.dir.path().join("shim-source");
        let _ = std::fs::remove_dir_all(format!("/opt/wasmruntime/{name}"));
        Self { c, name, shim }
    }

    pub fn handler(&self) -> HandlerName {
        HandlerName::new(&self.name).unwrap()
    }

    pub fn shim_dest(&self) -> PathBuf {
        PathBuf::from(format!("/opt/wasmruntime/{}/{SHIM_NAME}", self.name))
    }

    pub fn status_file(&self) -> PathBuf {
        self.c.dir.path().join("status")
    }

    pub fn term_log(&self) -> PathBuf {
        self.c.dir.path().join("termination-log")
    }

    pub fn cmd(&self, sub: &str, fault: Option<&str>) -> Command {
        let mut cmd = Command::new(installer_bin());
        cmd.arg(sub)
            .args([
                "--name",
                &self.name,
                "--host-root",
                "/",
                "--distro",
                "containerd",
            ])
            .arg("--shim-source")
            .arg(&self.shim)
            .arg("--socket")
            .arg(&self.c.socket)
            .arg("--config")
            .arg(&self.c.config)
            .args(["--restart", "signal", "--verify-timeout", "15"])
            .arg("--termination-log")
            .arg(self.term_log());
        if sub == "install" {
            cmd.arg("--status-file").arg(self.status_file());
        }
        cmd.env_remove(wasm_installer::fault::ENV);
        if let Some(f) = fault {
            cmd.env(wasm_installer::fault::ENV, f);
        }
        cmd
    }

    pub fn run(&self, sub: &str, fault: Option<&str>) -> Output {
        self.run_with(sub, fault, &[])
    }

    /// `sub` with extra flags (e.g. `--force`); `install` exits after installing.
    pub fn run_with(&self, sub: &str, fault: Option<&str>, flags: &[&str]) -> Output {
        let mut cmd = self.cmd(sub, fault);
        if sub == "install" {
            cmd.arg("--once");
        }
        cmd.args(flags).output().unwrap()
    }

    pub fn ready(&self) -> bool {
        Command::new(installer_bin())
            .arg("ready")
            .arg("--status-file")
            .arg(self.status_file())
            .output()
            .unwrap()
            .status
            .success()
    }

    pub fn ok(&self, sub: &str) -> serde_json::Value {
        self.ok_with(sub, &[])
    }

    pub fn ok_with(&self, sub: &str, flags: &[&str]) -> serde_json::Value {
        let out = self.run_with(sub, None, flags);
        assert!(
            out.status.success(),
            "{sub} failed on containerd {}: {}\ncontainerd log:\n{}",
            self.c.version,
            String::from_utf8_lossy(&out.stderr),
            self.c.log_tail()
        );
        serde_json::from_slice(&out.stdout).expect("one JSON report line")
    }

    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.c.config).unwrap()
    }

    pub fn knows_handler(&self) -> bool {
        self.c.cri().status().unwrap().knows(&self.handler())
    }

    /// What a finished install makes of `original` (the pure core's answer).
    pub fn installed_text(&self, original: &str) -> String {
        let rt = RuntimeSpec::for_runtime(
            &RuntimeName::new(&self.name).unwrap(),
            self.handler(),
            wasm_installer::SystemdCgroupMode::Auto,
        );
        match wasm_installer::add_runtime(
            original,
            &rt,
            &ContainerdVersion::parse(self.c.version).unwrap(),
        )
        .unwrap()
        {
            Edit::Changed(t) => t,
            Edit::Unchanged => original.to_owned(),
        }
    }

    pub fn backup(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}.wasmruntime-{}.orig",
            self.c.config.display(),
            self.name
        ))
    }
}

/// The installer under test: `$WASM_INSTALLER_BINARY` (the bench's release build), else
/// this test build's.
pub fn installer_bin() -> PathBuf {
    std::env::var_os("WASM_INSTALLER_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wasm-installer")))
}

/// The real Wasmtime shim: `$SHIM_BINARY` (the bench's release build), else built here
/// with cargo in this test's own profile and target dir (a no-op when it is fresh; a
/// cold build takes minutes). The test executable lives in `<target>/<profile>/deps/`.
pub fn real_shim() -> PathBuf {
    if let Some(p) = std::env::var_os("SHIM_BINARY") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test exe in <target>/<profile>/deps");
    let target = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("odd test exe path {}", exe.display()),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let out = Command::new(&cargo)
        .args([
            "build",
            "-p",
            "containerd-shim-wasmtime",
            "--bin",
            SHIM_NAME,
            "--profile",
            profile,
            "--target-dir",
        ])
        .arg(target)
        .current_dir(testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        out.status.success(),
        "building the shim: {}",
        describe(&out)
    );
    let shim = profile_dir.join(SHIM_NAME);
    assert!(shim.is_file(), "{} missing after the build", shim.display());
    shim
}

/// A WASI preview 1 command that writes `text` to stdout and exits with `code`.
pub fn hello_wasm(text: &str, code: u32) -> Vec<u8> {
    let escaped: String = text.bytes().map(|b| format!("\\{b:02x}")).collect();
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "{escaped}")
          (func (export "_start")
            ;; one iovec at 0: (ptr 64, len), bytes written at 8
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (call $proc_exit (i32.const {code}))))"#,
        len = text.len()
    ))
    .unwrap()
}

/// A WASI preview 1 command that sleeps an hour in one `poll_oneoff` (a long-running
/// container; the shim stops it on SIGTERM).
pub fn sleep_wasm() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "poll_oneoff"
            (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            ;; clock subscription at 0: userdata @0, tag @8 (clock), id @16 (monotonic),
            ;; timeout @24 (ns); the event goes to 1024, the count to 2048
            (i64.store (i32.const 0) (i64.const 1))
            (i32.store8 (i32.const 8) (i32.const 0))
            (i32.store (i32.const 16) (i32.const 1))
            (i64.store (i32.const 24) (i64.const 3600000000000))
            (drop (call $poll_oneoff (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 2048)))))"#,
    )
    .unwrap()
}

/// A classic image `docker.io/test/<name>:1` whose entrypoint is `/app.wasm`.
pub fn wasm_image(name: &str, wasm: &[u8]) -> RootfsImage {
    RootfsImage::new(&wasm_image_name(name))
        .file("/app.wasm", wasm.to_vec(), 0o755)
        .entrypoint(&["/app.wasm"])
}

pub fn wasm_image_name(name: &str) -> String {
    format!("docker.io/test/{name}:1")
}

/// A pause image under `name`: a static native program (built here with `clang -static`)
/// that sleeps until SIGTERM/SIGINT, as registry.k8s.io/pause does.
pub fn pause_image(name: &str, work: &Path) -> RootfsImage {
    let src = work.join("pause.c");
    let bin = work.join("pause");
    std::fs::write(
        &src,
        "#include <signal.h>\n#include <unistd.h>\n\
         static void done(int s) { (void)s; _exit(0); }\n\
         int main(void) { signal(SIGTERM, done); signal(SIGINT, done); for (;;) pause(); }\n",
    )
    .unwrap();
    let out = Command::new("clang")
        .args(["-static", "-Os", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("clang (the test bed installs it)");
    assert!(
        out.status.success(),
        "clang -static pause.c: {}",
        describe(&out)
    );
    RootfsImage::new(name)
        .file("/pause", std::fs::read(&bin).unwrap(), 0o755)
        .entrypoint(&["/pause"])
}

/// Appends one JSON line of figures to `$INSTALLER_BENCH_OUT` (set by `cargo xtask bench
/// installer`); the test prints them either way.
pub fn record_bench(figures: &serde_json::Value) {
    println!("figures: {figures}");
    if let Some(path) = std::env::var_os("INSTALLER_BENCH_OUT") {
        use std::io::Write as _;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{figures}").unwrap();
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn unique_suffix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
