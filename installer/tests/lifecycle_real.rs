//! The installer binary against REAL containerd 1.6, 1.7 and 2.1 from the test bed,
//! each in a temp root under a supervisor that restarts it (tests/support). The
//! restart strategy is `signal`: SIGTERM the daemon found through /proc by its
//! `--config`, wait for the supervisor's new process, verify over CRI.
//!
//! The "shim" installed here is a small stand-in executable, except in
//! `real_shim_binary_is_copied_and_verified`, which installs the Wasmtime shim built in
//! the cache when it exists. No container is run through it (not in scope here).

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rstest::rstest;
use support::{Containerd, OutageProbe};
use wasm_installer::{ContainerdVersion, Edit, HandlerName, RuntimeName, RuntimeSpec};

struct Run<'a> {
    c: &'a Containerd,
    name: String,
    shim: PathBuf,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/opt/wasmruntime/{}", self.name));
    }
}

impl<'a> Run<'a> {
    fn new(c: &'a Containerd, case: &str) -> Self {
        let name = format!("t-{}-{case}", c.version.replace('.', ""));
        let shim = c.dir.path().join("shim-source");
        std::fs::write(&shim, format!("#!/bin/sh\necho stand-in shim {name}\n")).unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let _ = std::fs::remove_dir_all(format!("/opt/wasmruntime/{name}"));
        Self { c, name, shim }
    }

    fn handler(&self) -> HandlerName {
        HandlerName::new(&self.name).unwrap()
    }

    fn shim_dest(&self) -> PathBuf {
        PathBuf::from(format!(
            "/opt/wasmruntime/{}/containerd-shim-wasmtime-v1",
            self.name
        ))
    }

    fn status_file(&self) -> PathBuf {
        self.c.dir.path().join("status")
    }

    fn term_log(&self) -> PathBuf {
        self.c.dir.path().join("termination-log")
    }

    fn cmd(&self, sub: &str, fault: Option<&str>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasm-installer"));
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

    fn run(&self, sub: &str, fault: Option<&str>) -> Output {
        let mut cmd = self.cmd(sub, fault);
        if sub == "install" {
            cmd.arg("--once");
        }
        cmd.output().unwrap()
    }

    fn ready(&self) -> bool {
        Command::new(env!("CARGO_BIN_EXE_wasm-installer"))
            .arg("ready")
            .arg("--status-file")
            .arg(self.status_file())
            .output()
            .unwrap()
            .status
            .success()
    }

    fn ok(&self, sub: &str) -> serde_json::Value {
        let out = self.run(sub, None);
        assert!(
            out.status.success(),
            "{sub} failed on containerd {}: {}\ncontainerd log:\n{}",
            self.c.version,
            String::from_utf8_lossy(&out.stderr),
            self.c.log_tail()
        );
        serde_json::from_slice(&out.stdout).expect("one JSON report line")
    }

    fn config(&self) -> String {
        std::fs::read_to_string(&self.c.config).unwrap()
    }

    fn knows_handler(&self) -> bool {
        self.c.cri().status().unwrap().knows(&self.handler())
    }

    /// What a finished install makes of `original` (the pure core's answer).
    fn installed_text(&self, original: &str) -> String {
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

    fn backup(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}.wasmruntime-{}.orig",
            self.c.config.display(),
            self.name
        ))
    }
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn install_rerun_uninstall(#[case] version: &'static str) {
    let started = Instant::now();
    let c = Containerd::start(version);
    let containerd_up = started.elapsed();
    let r = Run::new(&c, "life");
    let original = r.config();
    assert!(!r.knows_handler());
    let pid_before = c.pid();

    // Install: written, restarted (new PID), our handler over CRI.
    let probe = OutageProbe::start(&c.socket);
    let t = Instant::now();
    let report = r.ok("install");
    let install_time = t.elapsed();
    let reported_ms = report["elapsed_ms"].clone();
    let outage = probe.finish();
    assert_eq!(report["config"], "written", "{report}");
    assert_eq!(report["shim"], "copied");
    assert_eq!(report["restarted"], true);
    assert!(
        r.knows_handler(),
        "containerd {version} does not list our handler"
    );
    assert_ne!(c.pid(), pid_before, "containerd was not restarted");
    assert_eq!(r.config(), r.installed_text(&original));
    assert_eq!(std::fs::read_to_string(r.backup()).unwrap(), original);
    assert_eq!(
        std::fs::read(r.shim_dest()).unwrap(),
        std::fs::read(&r.shim).unwrap()
    );
    assert!(r.ready(), "readiness probe after a good install");

    // Re-run: nothing written, containerd untouched.
    let pid = c.pid();
    let (config_mtime, shim_mtime) = (mtime(&c.config), mtime(&r.shim_dest()));
    let t = Instant::now();
    let report = r.ok("install");
    let noop_time = t.elapsed();
    assert_eq!(report["config"], "unchanged", "{report}");
    assert_eq!(report["shim"], "unchanged");
    assert_eq!(report["restarted"], false);
    assert_eq!(c.pid(), pid, "a no-op run restarted containerd");
    assert_eq!(
        mtime(&c.config),
        config_mtime,
        "a no-op run wrote the config"
    );
    assert_eq!(
        mtime(&r.shim_dest()),
        shim_mtime,
        "a no-op run wrote the shim"
    );

    // Uninstall: original bytes back, shim and backup gone, handler gone.
    let report = r.ok("uninstall");
    assert_eq!(report["config_changed"], true);
    assert_eq!(r.config(), original);
    assert!(!r.shim_dest().exists());
    assert!(!r.backup().exists());
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!r.knows_handler());

    println!(
        "MEASURE containerd {version}: daemon start->CRI ready {containerd_up:?}; \
         install (copy+edit+restart+verify) {install_time:?} (installer-reported {} ms); \
         longest CRI gap during it {outage:?}; no-op re-run {noop_time:?}",
        reported_ms
    );
}

#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn rejected_config_rolls_back(#[case] version: &'static str) {
    let c = Containerd::start(version);
    let r = Run::new(&c, "bad");
    let original = r.config();
    let out = r.run("install", Some("bad-entry"));
    assert!(
        !out.status.success(),
        "install with a rejected config succeeded"
    );
    let msg = std::fs::read_to_string(r.term_log()).unwrap();
    assert!(msg.contains("[rolled_back]"), "termination message: {msg}");
    assert!(msg.contains("restored the previous bytes"), "{msg}");
    assert!(msg.contains("containerd serves again"), "{msg}");
    assert_eq!(
        r.config(),
        original,
        "rollback did not restore the original bytes"
    );
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!r.knows_handler());
    println!("containerd {version} rejected it; termination message: {msg}");
}

/// SIGKILL at every step, then a clean run: it converges, and at no point is the
/// config anything but the original or our complete result.
#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn killed_at_each_step_converges(#[case] version: &'static str) {
    let c = Containerd::start(version);
    let r = Run::new(&c, "kill");
    let original = r.config();
    let installed = r.installed_text(&original);
    for fault in [
        "after-shim",
        "before-rename=containerd-shim-wasmtime-v1",
        "before-rename=config.toml.wasmruntime-t-kill.orig",
        "after-backup",
        "before-rename=config.toml",
        "after-config",
        "after-restart",
    ] {
        let fault = fault.replace("t-kill", &r.name);
        let out = r.run("install", Some(&fault));
        assert_eq!(
            out.status.signal(),
            Some(9),
            "fault {fault} did not kill the installer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let now = r.config();
        assert!(
            now == original || now == installed,
            "after a kill at {fault} the config is neither the original nor ours:\n{now}"
        );
        let report = r.ok("install");
        assert!(r.knows_handler(), "not converged after {fault}: {report}");
        assert_eq!(r.config(), installed);
        assert_eq!(std::fs::read_to_string(r.backup()).unwrap(), original);
        r.ok("uninstall");
        assert_eq!(r.config(), original, "uninstall after {fault}");
        println!("{version} {fault}: recovered with {report}");
    }
}

/// The real Wasmtime shim binary (from the shim crate's build cache) as the payload:
/// copied, hash-verified, skipped when identical. Only when that build exists.
#[test]
fn real_shim_binary_is_copied_and_verified() {
    let cache = testbed::paths::cache_root();
    let Some(real) = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("target"))
        .flat_map(|e| {
            ["debug", "release"].map(|p| e.path().join(p).join("containerd-shim-wasmtime-v1"))
        })
        .find(|p| p.is_file())
    else {
        println!(
            "no built containerd-shim-wasmtime-v1 in {}: nothing to check",
            cache.display()
        );
        return;
    };
    let c = Containerd::start("1.7.24");
    let r = Run::new(&c, "real");
    // A private copy: the shim build may replace the cached file meanwhile.
    std::fs::copy(&real, &r.shim).unwrap();
    let report = r.ok("install");
    assert_eq!(report["shim"], "copied");
    assert_eq!(
        wasm_installer::host::sha256_file(&r.shim_dest()).unwrap(),
        wasm_installer::host::sha256_file(&r.shim).unwrap()
    );
    let report = r.ok("install");
    assert_eq!(report["shim"], "unchanged");
    r.ok("uninstall");
    assert!(!r.shim_dest().exists());
}

/// `install` stays running: Ready through the probe, repairs a config that lost our
/// entry, and exits 0 on SIGTERM.
#[test]
fn stays_running_repairs_drift_and_exits_on_sigterm() {
    let c = Containerd::start("2.1.9");
    let r = Run::new(&c, "watch");
    let original = r.config();
    let mut child = r
        .cmd("install", None)
        .args(["--check-interval", "1", "--on-drift", "repair"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("ready", &|| r.ready());
    let installed = r.config();
    // Drift: an admin (or config management) puts the old file back.
    std::fs::write(&c.config, &original).unwrap();
    wait("the repair", &|| r.config() == installed);
    wait("containerd to serve our handler again", &|| {
        r.c.cri().status().is_ok_and(|s| s.knows(&r.handler()))
    });
    wait("ready after the repair", &|| r.ready());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "SIGTERM exit: {status:?}");
    r.ok("uninstall");
    assert_eq!(r.config(), original);
}
