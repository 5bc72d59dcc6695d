//! The installer binary against REAL containerd 1.6, 1.7 and 2.1 from the test bed,
//! each in a temp root under a supervisor that restarts it (tests/support). The
//! restart strategy is `signal`: SIGTERM the daemon found through /proc by its
//! `--config`, wait for the supervisor's new process, verify over CRI.
//!
//! The "shim" installed here is a small stand-in executable, except in
//! `real_shim_installed_runs_wasm`, which installs the Wasmtime shim of this workspace
//! and runs a Wasm container through the installed file.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rstest::rstest;
use support::{Containerd, OutageProbe, Run};

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
    let (pid, restarts) = (c.pid(), c.restarts());
    let (config_mtime, shim_mtime) = (mtime(&c.config), mtime(&r.shim_dest()));
    let t = Instant::now();
    let report = r.ok("install");
    let noop_time = t.elapsed();
    assert_eq!(report["config"], "unchanged", "{report}");
    assert_eq!(report["shim"], "unchanged");
    assert_eq!(report["restarted"], false);
    assert_eq!(c.pid(), pid, "a no-op run restarted containerd");
    assert_eq!(c.restarts(), restarts, "a no-op run restarted containerd");
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
    testbed::reliability::record(
        "installer",
        &format!(
            "an entry containerd rejects at load (wrong type in our table), containerd {version}"
        ),
        "verify fails; the previous bytes are restored and containerd serves again; the termination message says so",
        msg.trim(),
    );
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
    testbed::reliability::record(
        "installer",
        &format!(
            "install SIGKILLed at each of its 7 steps (shim copied, before each rename, after backup, after config, after restart), containerd {version}"
        ),
        "the config is the original or our complete result at every kill; a re-run converges; uninstall restores the original bytes",
        "7 kills: config whole every time, 7 re-runs converged (handler served), original bytes back after each uninstall",
    );
}

/// The real Wasmtime shim of this workspace (built in this test's profile), installed
/// by the real installer: copied and hash-verified, our handler served over CRI, then a
/// Wasm container runs through the INSTALLED file. `ctr run --runtime <absolute path>`
/// makes containerd start exactly that binary (an absolute runtime name is the shim's
/// path on every version here), and no other copy is on containerd's PATH or beside it.
/// (`ctr` sends no runtime options, so this works on 1.6 too, where CRI pods from our
/// entry do not yet: see uninstall_real.rs.) A re-run changes and restarts nothing. The
/// figures feed `cargo xtask bench installer`.
#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn real_shim_installed_runs_wasm(#[case] version: &'static str) {
    let built = support::real_shim();
    let c = Containerd::start(version);
    let r = Run::with_shim(&c, "real", &built);
    for dir in c.shim_search_dirs() {
        assert!(
            !dir.join(support::SHIM_NAME).exists(),
            "{} would let containerd find a shim other than the installed one",
            dir.display()
        );
    }

    let restarts = c.restarts();
    let probe = OutageProbe::start(&c.socket);
    let t = Instant::now();
    let report = r.ok("install");
    let install_time = t.elapsed();
    let outage = probe.finish();
    let install_reported_ms = report["elapsed_ms"].clone();
    assert_eq!(report["shim"], "copied", "{report}");
    assert_eq!(report["config"], "written", "{report}");
    assert_eq!(report["restarted"], true, "{report}");
    assert_eq!(c.restarts(), restarts + 1);
    assert!(
        r.knows_handler(),
        "containerd {version} does not serve our handler"
    );
    assert!(
        std::fs::read(r.shim_dest()).unwrap() == std::fs::read(&r.shim).unwrap(),
        "the installed shim differs from the source"
    );

    // A Wasm container through the installed binary: its stdout and its exit code.
    let ns = format!("{}-ctr", r.name);
    c.import(
        &ns,
        &support::wasm_image(
            "hello",
            &support::hello_wasm("hello from the installed shim\n", 7),
        ),
    );
    let out = c
        .ctr(&ns)
        .args(["run", "--rm", "--runtime"])
        .arg(r.shim_dest())
        .arg(support::wasm_image_name("hello"))
        .arg(format!("hello-{}", std::process::id()))
        .output()
        .unwrap();
    // ctr's default cgroup is /<namespace>/<id>; the shim's state is per namespace.
    support::remove_cgroups(&ns);
    let _ = std::fs::remove_dir_all(Path::new("/run/containerd/wasmtime").join(&ns));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the installed shim\n",
        "containerd {version}: {}\ncontainerd log:\n{}",
        support::describe(&out),
        c.log_tail()
    );
    assert_eq!(out.status.code(), Some(7), "{}", support::describe(&out));

    // No-op re-run: nothing written, no restart.
    let restarts = c.restarts();
    let (config_mtime, shim_mtime) = (mtime(&c.config), mtime(&r.shim_dest()));
    let t = Instant::now();
    let report = r.ok("install");
    let noop_time = t.elapsed();
    let noop_restarts = c.restarts() - restarts;
    assert_eq!(report["shim"], "unchanged", "{report}");
    assert_eq!(report["config"], "unchanged", "{report}");
    assert_eq!(report["restarted"], false, "{report}");
    assert_eq!(noop_restarts, 0, "a no-op run restarted containerd");
    assert_eq!(mtime(&c.config), config_mtime);
    assert_eq!(mtime(&r.shim_dest()), shim_mtime);

    r.ok("uninstall");
    assert!(!r.shim_dest().exists());
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!r.knows_handler());

    support::record_bench(&serde_json::json!({
        "containerd": version,
        "shim_bytes": std::fs::metadata(&r.shim).unwrap().len(),
        "install_ms": install_time.as_secs_f64() * 1e3,
        "installer_reported_ms": install_reported_ms,
        "cri_gap_ms": outage.as_secs_f64() * 1e3,
        "noop_ms": noop_time.as_secs_f64() * 1e3,
        "noop_restarts": noop_restarts,
    }));
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
    testbed::reliability::record(
        "installer",
        "the config put back to its pre-install text behind a running installer (drift), containerd 2.1.9",
        "the stay-running installer notices within its check interval, writes our entry again, containerd serves it, Ready again; SIGTERM exits 0",
        "repaired and served again within the 20 s bound (1 s interval); exit 0 on SIGTERM",
    );
}
