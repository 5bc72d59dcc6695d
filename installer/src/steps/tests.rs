//! The steps over the recording fake host. The `systemd` strategy is only tested
//! here (no systemd runs as PID 1 on our machines): these tests check that it is
//! chosen and invoked with the right unit, not that systemd restarts anything.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::distro::Unit;
use crate::error::Error;
use crate::host::fake::{Call, CriScript, FakeHost};
use crate::host::{CriStatus, RestartAction};
use crate::spec::{HandlerName, RuntimeName, RuntimeSpec, SystemdCgroupMode};

const CONFIG: &str = "/etc/containerd/config.toml";
const ORIGINAL: &str = "version = 2\n# the admin's comment\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";

fn setup(shim_dir: &Path, strategy: Strategy) -> Setup {
    let source = shim_dir.join("shim");
    std::fs::write(&source, "shim v1").unwrap();
    let name = RuntimeName::new("wasm").unwrap();
    Setup {
        node: "node-1".into(),
        spec: RuntimeSpec::for_runtime(
            &name,
            HandlerName::new("wasm").unwrap(),
            SystemdCgroupMode::Auto,
        ),
        name,
        source_shim: source,
        distro: None,
        containerd: None,
        config: None,
        strategy,
        verify_timeout: Duration::from_secs(1),
        poll: Duration::from_millis(100),
        rollback: true,
        guest: Default::default(),
    }
}

fn host() -> FakeHost {
    let h = FakeHost::new("1.7.24~ds1", Path::new(CONFIG));
    h.put(CONFIG, ORIGINAL);
    h.boot();
    h
}

fn writes(h: &FakeHost) -> Vec<PathBuf> {
    h.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Write(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn install_backs_up_writes_restarts_through_systemd_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let h = host();
    let s = setup(dir.path(), Strategy::Auto);
    let report = install(&h, &s).unwrap();
    assert_eq!(report.config, ConfigOutcome::Written);
    assert_eq!(
        writes(&h),
        [
            PathBuf::from("/opt/wasmruntime/wasm/options.json"),
            PathBuf::from("/etc/containerd/config.toml.wasmruntime-wasm.orig"),
            PathBuf::from(CONFIG)
        ]
    );
    // auto on a systemd host = the distro's unit, over D-Bus (recorded, not run).
    assert_eq!(h.restarts(), [RestartAction::Systemd(Unit::Containerd)]);
    assert_eq!(
        h.text("/etc/containerd/config.toml.wasmruntime-wasm.orig")
            .unwrap(),
        ORIGINAL
    );
    assert!(h.text(CONFIG).unwrap().contains("runtimes.wasm]"));
    assert!(h.exists(s.spec.shim_path.as_path()));
}

#[test]
fn rerun_writes_nothing_and_restarts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = host();
    let s = setup(dir.path(), Strategy::Auto);
    install(&h, &s).unwrap();
    let before = h.calls().len();
    let report = install(&h, &s).unwrap();
    assert_eq!(report.config, ConfigOutcome::Unchanged);
    assert!(matches!(
        report.shim,
        crate::host::ShimCopy::Unchanged { .. }
    ));
    assert_eq!(h.calls().len(), before, "{:?}", &h.calls()[before..]);
}

#[test]
fn reinstall_keeps_the_first_backup() {
    let dir = tempfile::tempdir().unwrap();
    let h = host();
    let s = setup(dir.path(), Strategy::Auto);
    install(&h, &s).unwrap();
    // Someone edits the file around our entry; a repair must not re-backup it.
    let edited = h
        .text(CONFIG)
        .unwrap()
        .replace("# the admin's comment", "# edited");
    h.put(
        CONFIG,
        &edited.replace("SystemdCgroup = false", "SystemdCgroup = true"),
    );
    install(&h, &s).unwrap();
    assert_eq!(
        h.text("/etc/containerd/config.toml.wasmruntime-wasm.orig")
            .unwrap(),
        ORIGINAL
    );
}

#[test]
fn auto_on_a_host_without_systemd_refuses_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = host();
    h.systemd = false;
    let err = install(&h, &setup(dir.path(), Strategy::Auto)).unwrap_err();
    assert_eq!(err.category(), "no_restart_strategy", "{err}");
    assert!(h.calls().is_empty(), "{:?}", h.calls());
}

#[test]
fn k3s_restarts_its_own_unit_and_k0s_restarts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = FakeHost::new("v2.1.9", Path::new("/x"));
    h.put(
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        "version = 3\n",
    );
    h.put("/etc/systemd/system/k3s-agent.service", "");
    let s = setup(dir.path(), Strategy::Auto);
    let r = resolve(&h, &s).unwrap();
    assert_eq!(r.restart, RestartAction::Systemd(Unit::K3sAgent));
    assert!(r.file.ends_with("config-v3.toml.tmpl"));

    let h = FakeHost::new("v2.1.9", Path::new("/x"));
    h.put("/etc/k0s/containerd.toml", "");
    h.put("/run/k0s/containerd-cri.toml", "version = 3\n");
    let r = resolve(&h, &s).unwrap();
    assert_eq!(r.restart, RestartAction::None);
    let err = resolve(&h, &setup(dir.path(), Strategy::Systemd)).unwrap_err();
    assert_eq!(err.category(), "no_restart_strategy");
}

#[test]
fn rejected_config_is_rolled_back_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = host();
    // This fake containerd stops serving when its config has our entry.
    h.rejects = Some("runtimes.wasm]".into());
    let err = install(&h, &setup(dir.path(), Strategy::Signal)).unwrap_err();
    let Error::RolledBack { failed, restored } = &err else {
        panic!("{err}");
    };
    assert_eq!(failed.category(), "verify");
    assert!(
        restored.contains("restored the previous bytes"),
        "{restored}"
    );
    assert_eq!(h.text(CONFIG).unwrap(), ORIGINAL);
    assert_eq!(
        h.restarts().len(),
        2,
        "restart, then restart after restoring"
    );
}

#[test]
fn a_rollback_whose_containerd_stays_down_says_what_it_restored() {
    let dir = tempfile::tempdir().unwrap();
    let h = host();
    *h.cri.lock().unwrap() = CriScript::Queue(VecDeque::from([Err("refused".into())]));
    let err = install(&h, &setup(dir.path(), Strategy::Signal)).unwrap_err();
    assert_eq!(err.category(), "restored_not_serving", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("rolled back: restored the previous bytes")
            && msg.contains("does not serve again"),
        "{msg}"
    );
    // The bytes are back even though containerd never answered.
    assert_eq!(h.text(CONFIG).unwrap(), ORIGINAL);
}

#[test]
fn killed_between_write_and_restart_restarts_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let h = host();
    let s = setup(dir.path(), Strategy::Signal);
    install(&h, &s).unwrap();
    // containerd "forgot" the new config, as if the restart never happened.
    *h.loaded.lock().unwrap() = Some(ORIGINAL.into());
    let report = install(&h, &s).unwrap();
    assert_eq!(report.config, ConfigOutcome::RestartedOnly);
    assert_eq!(h.restarts().len(), 2);
}

#[test]
fn uninstall_refuses_while_our_containers_run_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = host();
    let s = setup(dir.path(), Strategy::Signal);
    install(&h, &s).unwrap();
    h.running = vec!["sandbox/abc".into()];
    let err = uninstall(&h, &s, false).unwrap_err();
    assert_eq!(err.category(), "containers_running");
    assert!(err.to_string().contains("sandbox/abc"), "{err}");
    assert_ne!(h.text(CONFIG).unwrap(), ORIGINAL, "refusal changed nothing");
    let report = uninstall(&h, &s, true).unwrap();
    assert!(report.config_changed && report.shim_removed);
    assert_eq!(h.text(CONFIG).unwrap(), ORIGINAL);
    assert!(!h.exists(Path::new(
        "/etc/containerd/config.toml.wasmruntime-wasm.orig"
    )));
}

#[test]
fn drift_is_detected_per_part() {
    let dir = tempfile::tempdir().unwrap();
    let h = host();
    let s = setup(dir.path(), Strategy::Signal);
    install(&h, &s).unwrap();
    assert!(!check_drift(&h, &s).unwrap().any());
    h.put(CONFIG, ORIGINAL);
    h.put(s.spec.shim_path.as_str(), "tampered");
    let d = check_drift(&h, &s).unwrap();
    assert!(d.shim && d.config && !d.handler, "{d:?}");
    *h.cri.lock().unwrap() = CriScript::Queue(VecDeque::from([Ok(CriStatus::default())]));
    assert!(check_drift(&h, &s).unwrap().handler);
}

#[test]
fn k0s_drop_in_waits_for_the_self_reload_without_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let h = FakeHost::new("v2.1.9", Path::new("/x"));
    h.put("/etc/k0s/containerd.toml", "");
    h.put("/run/k0s/containerd-cri.toml", "version = 3\n");
    let old = CriStatus {
        runtime_ready: true,
        handlers: ["runc".to_owned()].into(),
    };
    let reloaded = CriStatus {
        runtime_ready: true,
        handlers: ["runc".to_owned(), "wasm".to_owned()].into(),
    };
    *h.cri.lock().unwrap() =
        CriScript::Queue(VecDeque::from([Ok(old.clone()), Ok(old), Ok(reloaded)]));
    let report = install(&h, &setup(dir.path(), Strategy::Auto)).unwrap();
    assert_eq!(report.config, ConfigOutcome::Written);
    // k0s reloads containerd itself: the only "restart" is the no-op action.
    assert_eq!(h.restarts(), [RestartAction::None]);
    assert_eq!(
        writes(&h),
        [
            PathBuf::from("/opt/wasmruntime/wasm/options.json"),
            PathBuf::from("/etc/k0s/containerd.d/wasmruntime-wasm.toml")
        ]
    );
}

/// A node without systemd whose one containerd reads `CUSTOM_CONFIG` and whose parent
/// process is named `parent`.
const CUSTOM_CONFIG: &str = "/srv/node/containerd.toml";

fn host_without_systemd(parent: &str) -> FakeHost {
    let mut h = FakeHost::new("2.1.9", Path::new(CUSTOM_CONFIG));
    h.systemd = false;
    h.daemons = vec![crate::daemon::Daemon {
        pid: 7,
        config: CUSTOM_CONFIG.into(),
        parent: Some(parent.into()),
    }];
    h.put(CUSTOM_CONFIG, "version = 3\n");
    h.boot();
    h
}

/// No systemd, no config given: the one running containerd reads a config elsewhere and
/// a supervisor runs it (the test bed's node): auto edits that file and restarts by signal.
#[test]
fn auto_without_systemd_follows_the_running_supervised_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let custom = CUSTOM_CONFIG;
    let h = host_without_systemd("supervise");
    let s = setup(dir.path(), Strategy::Auto);
    let report = install(&h, &s).unwrap();
    assert_eq!(report.config, ConfigOutcome::Written);
    assert!(h.text(custom).unwrap().contains("runtimes.wasm]"));
    assert!(h.text(CONFIG).is_none(), "the default path stays untouched");
    assert_eq!(
        h.restarts(),
        [RestartAction::Signal {
            config: custom.into()
        }]
    );
}

/// The same node, but containerd's parent is a shell: SIGTERM could leave the node
/// without containerd, so auto refuses (before writing anything) and says what to set.
#[test]
fn auto_without_systemd_refuses_an_unsupervised_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let custom = CUSTOM_CONFIG;
    let h = host_without_systemd("bash");
    let err = install(&h, &setup(dir.path(), Strategy::Auto)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::NoRestartStrategy { .. })
            && msg.contains("/srv/node/containerd.toml")
            && msg.contains("runsv"),
        "{msg}"
    );
    assert!(writes(&h).is_empty(), "{:?}", h.calls());
    assert_eq!(h.text(custom).unwrap(), "version = 3\n");
}
