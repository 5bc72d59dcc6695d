//! A real containerd from the test bed in a temp root (own config, root, state,
//! socket), under a small supervisor that starts it again whenever it exits, the way
//! systemd's `Restart=always` would. That is what makes the `signal` strategy real.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use toml_edit::{DocumentMut, value};
use wasm_installer::cri::Cri;

pub struct Containerd {
    pub version: &'static str,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub bin: PathBuf,
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<JoinHandle<()>>,
}

pub fn containerd_bin(version: &str) -> PathBuf {
    let pkg = testbed::versions::containerd_package(version)
        .unwrap_or_else(|| panic!("the test bed has no containerd {version}"));
    let bin = testbed::paths::deb_root(&pkg).join("usr/bin/containerd");
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
        let dir = tempfile::Builder::new().prefix("ctd").tempdir().unwrap();
        let socket = dir.path().join("c.sock");
        let mut doc: DocumentMut = default_config(version).parse().unwrap();
        doc["root"] = value(dir.path().join("root").to_str().unwrap());
        doc["state"] = value(dir.path().join("state").to_str().unwrap());
        doc["grpc"]["address"] = value(socket.to_str().unwrap());
        if version.starts_with('2') {
            // NRI's socket is a fixed host path: parallel daemons would fight over it.
            doc["plugins"]["io.containerd.nri.v1.nri"]["disable"] = value(true);
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, doc.to_string()).unwrap();
        let log = dir.path().join("containerd.log");
        let mut me = Self {
            version,
            bin: containerd_bin(version),
            config,
            socket,
            log,
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            pid: Arc::new(AtomicU32::new(0)),
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

    fn spawn(bin: &Path, config: &Path, log: &Path) -> Child {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn containerd")
    }

    fn supervise(&mut self) {
        let (bin, config, log) = (self.bin.clone(), self.config.clone(), self.log.clone());
        let (stop, pid, slot) = (self.stop.clone(), self.pid.clone(), self.child.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let child = Self::spawn(&bin, &config, &log);
                pid.store(child.id(), Ordering::SeqCst);
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
            }
        }));
    }

    /// The current daemon's PID (0 while being restarted).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
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
}

impl Drop for Containerd {
    fn drop(&mut self) {
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
    }
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
