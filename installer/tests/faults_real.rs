//! Faults around the installer, each injected into REAL containerd 1.6, 1.7 and 2.1 from the
//! test bed (under the restarting supervisor of tests/support): kills at every uninstall
//! step, a power cut mid-install, a full disk, a containerd that does not come back, an
//! admin's hand edits, a replaced shim, and two installers at once. After each, the config
//! on disk is a complete old or new version, and a plain re-run converges or the failure
//! is reported. Every test ends by recording its row of docs/reliability.md.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rstest::rstest;
use support::{Containerd, Run};
use testbed::reliability::record;
use toml_edit::{DocumentMut, value};
use wasm_installer::{Backup, ContainerdVersion, Removal, RuntimeName, RuntimeSpec};

/// The install fault points, in the order an install passes them.
const INSTALL_FAULTS: [&str; 7] = [
    "after-shim",
    "before-rename=containerd-shim-wasmtime-v1",
    "before-rename=config.toml.wasmruntime-NAME.orig",
    "after-backup",
    "before-rename=config.toml",
    "after-config",
    "after-restart",
];

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn killed(out: &std::process::Output, fault: &str) {
    assert_eq!(
        out.status.signal(),
        Some(9),
        "fault {fault} did not kill the installer: {}",
        stderr(out)
    );
}

/// The config is the original or our complete result, nothing in between.
fn whole(r: &Run, original: &str, installed: &str, when: &str) {
    let now = r.config();
    assert!(
        now == original || now == installed,
        "{when}: the config is neither the original nor ours:\n{now}"
    );
}

#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn killed_at_each_uninstall_step_converges(#[case] version: &'static str) {
    let c = Containerd::start(version);
    let r = Run::new(&c, "ukill");
    let original = r.config();
    let installed = r.installed_text(&original);
    let faults = [
        "before-rename=config.toml",
        "after-config",
        "after-restart",
        "after-shim-removed",
    ];
    for fault in faults {
        r.ok("install");
        killed(&r.run("uninstall", Some(fault)), fault);
        whole(&r, &original, &installed, &format!("killed at {fault}"));
        let report = r.ok("uninstall");
        assert_eq!(r.config(), original, "uninstall after a kill at {fault}");
        assert!(!r.shim_dest().exists(), "shim left after {fault}");
        assert!(!r.backup().exists(), "backup left after {fault}");
        c.wait_serving(Duration::from_secs(10)).unwrap();
        assert!(
            !r.knows_handler(),
            "containerd still serves our handler after {fault}: {report}"
        );
    }
    record(
        "installer",
        &format!(
            "uninstall SIGKILLed at each of its steps ({}), containerd {version}",
            faults.join(", ")
        ),
        "the config is the installed or the original text at every kill; a re-run restores the original bytes, removes shim and backup, and containerd stops serving the handler (restarted even when the file was already clean)",
        &format!(
            "{} kills, {} clean re-runs, original bytes back each time",
            faults.len(),
            faults.len()
        ),
    );
}

/// A node losing power mid-install: the installer and containerd die together, the
/// "boot" starts containerd on whatever is on disk.
#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn power_cut_mid_install_boots_and_converges(#[case] version: &'static str) {
    let c = Containerd::start(version);
    let r = Run::new(&c, "boot");
    let original = r.config();
    let installed = r.installed_text(&original);
    let mut booted_with_ours = 0;
    for fault in INSTALL_FAULTS {
        let fault = fault.replace("NAME", &r.name);
        killed(&r.run("install", Some(&fault)), &fault);
        c.kill_and_boot();
        whole(
            &r,
            &original,
            &installed,
            &format!("boot after a cut at {fault}"),
        );
        if r.knows_handler() {
            booted_with_ours += 1;
        }
        let report = r.ok("install");
        assert!(
            r.knows_handler(),
            "not converged after a cut at {fault}: {report}"
        );
        assert_eq!(r.config(), installed);
        assert_eq!(std::fs::read_to_string(r.backup()).unwrap(), original);
        r.ok("uninstall");
        assert_eq!(r.config(), original, "uninstall after a cut at {fault}");
    }
    record(
        "installer",
        &format!(
            "power cut mid-install (installer and containerd SIGKILLed together at each of {} steps, containerd started again), containerd {version}",
            INSTALL_FAULTS.len()
        ),
        "containerd boots on a complete config (original or ours); the next install converges; uninstall restores the original bytes",
        &format!(
            "{} cuts: containerd booted every time ({booted_with_ours} with our handler already, {} on the original); every re-run converged",
            INSTALL_FAULTS.len(),
            INSTALL_FAULTS.len() - booted_with_ours
        ),
    );
}

/// A tmpfs of a few pages holds the config; it is filled up to a given free space.
struct SmallDisk;

impl SmallDisk {
    fn mount(dir: &Path) {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "wasm-installer-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
    }

    /// Fills `dir` until the device is full, then frees `free` bytes (rounded to pages).
    fn fill(dir: &Path, free: u64) {
        use std::io::Write as _;
        let filler = dir.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let page = vec![0u8; 4096];
        loop {
            match f.write_all(&page) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", dir.display()),
            }
        }
        f.sync_all().ok();
        let len = f.metadata().unwrap().len() / 4096 * 4096;
        f.set_len(len.saturating_sub(free.div_ceil(4096) * 4096))
            .unwrap();
    }

    fn empty(dir: &Path) {
        std::fs::remove_file(dir.join("filler")).unwrap();
    }
}

#[test]
fn disk_full_while_writing_keeps_the_config_whole() {
    let c = Containerd::start_with("2.1.9", SmallDisk::mount);
    let r = Run::new(&c, "full");
    let etc = c.config.parent().unwrap().to_owned();
    let original = r.config();
    let pages = |n: usize| n.div_ceil(4096) as u64 * 4096;
    // Nothing free: the backup cannot be written. The backup's pages free: the backup
    // is written, the new config's temp file is not.
    let cases = [
        ("no space for the backup", 0),
        (
            "space for the backup, not the new config",
            pages(original.len()),
        ),
    ];
    let mut messages = Vec::new();
    for (case, free) in cases {
        SmallDisk::fill(&etc, free);
        let pid = c.pid();
        let out = r.run("install", None);
        assert!(
            !out.status.success(),
            "{case}: install succeeded on a full disk"
        );
        let msg = std::fs::read_to_string(r.term_log()).unwrap();
        assert!(
            msg.contains("No space left on device"),
            "{case}: the message does not say why: {msg}\n{}",
            stderr(&out)
        );
        assert_eq!(r.config(), original, "{case}: config changed");
        assert_eq!(c.pid(), pid, "{case}: containerd restarted");
        let temps: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            temps.is_empty(),
            "{case}: temp files left on the full disk: {temps:?}"
        );
        SmallDisk::empty(&etc);
        let root = c.dir.path().display().to_string();
        messages.push(format!("{case}: {}", msg.trim().replace(&root, "<root>")));
    }
    let report = r.ok("install");
    assert_eq!(report["config"], "written", "{report}");
    assert!(r.knows_handler());
    assert_eq!(r.config(), r.installed_text(&original));
    r.ok("uninstall");
    assert_eq!(r.config(), original);
    record(
        "installer",
        "disk full while writing (config on a 256 KiB tmpfs, filled to 0 bytes free, then to just the backup's size), containerd 2.1.9",
        "install fails before any restart with the reason; the config keeps its original bytes; no temp file left eating space; once space is freed the install succeeds",
        &format!(
            "{}; containerd never restarted; 0 temp files left; install after freeing space: written + verified",
            messages.join("; ")
        ),
    );
}

#[test]
fn containerd_that_never_comes_back_is_reported_with_the_config_whole() {
    let c = Containerd::start("2.1.9");
    let r = Run::new(&c, "gone");
    let original = r.config();
    let installed = r.installed_text(&original);
    c.hold_restarts(true);
    let t = Instant::now();
    let out = r.run_with("install", None, &["--restart-timeout", "5"]);
    let took = t.elapsed();
    assert!(
        !out.status.success(),
        "install succeeded without containerd"
    );
    let msg = std::fs::read_to_string(r.term_log()).unwrap();
    assert!(
        msg.contains("containerd"),
        "the message does not name containerd: {msg}"
    );
    whole(&r, &original, &installed, "containerd gone");
    assert_eq!(
        r.config(),
        original,
        "the rollback restores the file even while containerd is down"
    );
    // The admin brings containerd back: it runs the original config, the node is as before.
    c.hold_restarts(false);
    c.wait_serving(Duration::from_secs(30)).unwrap();
    assert!(!r.knows_handler());
    let report = r.ok("install");
    assert!(r.knows_handler(), "{report}");
    r.ok("uninstall");
    assert_eq!(r.config(), original);
    record(
        "installer",
        "containerd never comes back after the installer's restart (supervisor holds it), containerd 2.1.9",
        "install gives up within its timeouts and says so; the config on disk is restored to the original bytes; containerd started later runs the original config; a later install succeeds",
        &format!(
            "failed after {:.1} s with: {}; config = original bytes; later install verified",
            took.as_secs_f64(),
            msg.trim()
                .replace(&c.dir.path().display().to_string(), "<root>")
        ),
    );
}

/// An admin edits the config between installs (a setting of their own, and once our
/// entry away too): every edit outside our table survives install and uninstall.
#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn hand_edits_between_installs_survive_install_and_uninstall(#[case] version: &'static str) {
    let c = Containerd::start(version);
    let r = Run::new(&c, "edit");
    let original = r.config();
    r.ok("install");
    // The admin's own change, outside our table, in the installed file.
    let mut doc: DocumentMut = r.config().parse().unwrap();
    doc["oom_score"] = value(-555);
    doc["debug"]["level"] = value("debug");
    let edited = format!("# kept by hand\n{doc}");
    std::fs::write(&c.config, &edited).unwrap();
    let report = r.ok("install");
    assert_eq!(report["config"], "unchanged", "{report}");
    assert_eq!(r.config(), edited, "a re-install touched the admin's edit");

    // The admin also deletes our entry: the re-install puts it back, keeps the rest.
    let without_ours = remove_ours(&r, &edited);
    std::fs::write(&c.config, &without_ours).unwrap();
    let report = r.ok("install");
    assert_eq!(report["config"], "written", "{report}");
    assert!(r.knows_handler());
    let reinstalled = r.config();
    assert_eq!(reinstalled, r.installed_text(&without_ours));

    // Uninstall removes exactly our table: the admin's text stays, not the old backup.
    r.ok("uninstall");
    let after = r.config();
    assert_eq!(after, without_ours, "uninstall lost the admin's edits");
    assert_ne!(after, original);
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!r.knows_handler());
    record(
        "installer",
        &format!(
            "config edited by hand between installs (own settings changed, a comment added, later our entry deleted), containerd {version}"
        ),
        "re-install leaves the edited file alone while our entry is intact, puts our entry back when it is gone, and uninstall removes only our table: every hand edit survives",
        "re-install 1: unchanged (no write); re-install 2: our entry written back, edits kept; uninstall: the admin's text byte for byte, not the pre-install backup",
    );
}

/// What uninstall should make of `text`: exactly our table removed (the pure core).
fn remove_ours(r: &Run, text: &str) -> String {
    let rt = RuntimeSpec::for_runtime(
        &RuntimeName::new(&r.name).unwrap(),
        r.handler(),
        wasm_installer::SystemdCgroupMode::Auto,
    );
    let v = ContainerdVersion::parse(r.c.version).unwrap();
    match wasm_installer::remove_runtime(text, None::<Backup<'_>>, &rt, &v).unwrap() {
        Removal::Changed(t) | Removal::RestoreOriginal(t) => t,
        other => panic!("removing our entry: {other:?}"),
    }
}

#[test]
fn shim_replaced_by_hand_is_restored_without_a_restart() {
    let c = Containerd::start("2.1.9");
    let r = Run::new(&c, "tamper");
    r.ok("install");
    let good = std::fs::read(r.shim_dest()).unwrap();
    std::fs::write(r.shim_dest(), "#!/bin/sh\necho someone else's shim\n").unwrap();
    let (pid, restarts) = (c.pid(), c.restarts());
    let report = r.ok("install");
    assert_eq!(report["shim"], "copied", "{report}");
    assert_eq!(report["config"], "unchanged", "{report}");
    assert_eq!(report["restarted"], false, "{report}");
    assert_eq!(std::fs::read(r.shim_dest()).unwrap(), good);
    assert_eq!((c.pid(), c.restarts()), (pid, restarts));
    r.ok("uninstall");
    record(
        "installer",
        "shim binary replaced by hand on the node (drift), containerd 2.1.9",
        "the next install (or the stay-running drift check) copies ours back, hash-verified; the config is untouched and containerd not restarted",
        "shim: copied (sha256 verified), config: unchanged, containerd pid and restart count unchanged",
    );
}

/// Two WasmRuntimes' installers on one node at the same moment: one at a time through the
/// node lock, so neither write is lost; both handlers are served; the uninstalls, also at
/// once, give back the original bytes.
#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn two_installers_at_once_lose_no_update(#[case] version: &'static str) {
    let c = Containerd::start(version);
    let a = Run::new(&c, "pa");
    let b = Run::new(&c, "pb");
    let original = a.config();
    let restarts = c.restarts();
    let both = |sub: &str| {
        let mut ca = a.cmd(sub, None);
        let mut cb = b.cmd(sub, None);
        if sub == "install" {
            ca.arg("--once");
            cb.arg("--once");
        }
        let (pa, pb) = (ca.output_async(), cb.output_async());
        let (oa, ob) = (pa.join().unwrap(), pb.join().unwrap());
        for (name, out) in [(&a.name, &oa), (&b.name, &ob)] {
            assert!(out.status.success(), "{sub} of {name}: {}", stderr(out));
        }
        [&oa, &ob]
            .iter()
            .filter(|o| stderr(o).contains("waiting for another installer"))
            .count()
    };
    let waited_install = both("install");
    let text = a.config();
    let a_then_b = b.installed_text(&a.installed_text(&original));
    let b_then_a = a.installed_text(&b.installed_text(&original));
    assert!(
        text == a_then_b || text == b_then_a,
        "an installer's entry was lost:\n{text}"
    );
    assert!(a.knows_handler() && b.knows_handler());
    let install_restarts = c.restarts() - restarts;
    let waited_uninstall = both("uninstall");
    assert_eq!(a.config(), original, "uninstalls at once");
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!a.knows_handler() && !b.knows_handler());
    record(
        "installer",
        &format!(
            "two WasmRuntimes' installers run at the same moment on one node, install then uninstall, containerd {version}"
        ),
        "one at a time through the node lock (flock beside containerd's socket): both entries written, both handlers served, each restart verified; uninstalls at once restore the original bytes",
        &format!(
            "both entries present, both handlers served, {install_restarts} containerd restarts for the two installs; installers that waited for the lock: {waited_install} of 2 (install), {waited_uninstall} of 2 (uninstall); original bytes back"
        ),
    );
}

trait OutputAsync {
    fn output_async(self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for Command {
    fn output_async(mut self) -> std::thread::JoinHandle<std::process::Output> {
        std::thread::spawn(move || self.output().unwrap())
    }
}
