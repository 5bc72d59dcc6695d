//! `wasm-installer uninstall` while a pod of our handler runs, on REAL containerd 1.6,
//! 1.7 and 2.1 (tests/support): the pod is created over CRI the way the kubelet does
//! (RunPodSandbox with runtime_handler = ours, host network so no CNI is needed,
//! CreateContainer + StartContainer of a Wasm image). Its pause container runs through
//! our installed shim too: containerd-shim-wasm runs native ELF entrypoints as ordinary
//! Linux processes. The pause image is a static C program built here and imported under
//! the name the containerd config pins, so nothing is pulled.

mod support;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RunPodSandboxRequest,
    StartContainerRequest,
};
use rstest::rstest;
use support::{Containerd, Run};
use wasm_installer::cri::Cri;

/// What an uninstall must leave alone when it refuses. The installer replaces the shim
/// by rename, so an untouched shim keeps its inode.
#[derive(Debug, PartialEq)]
struct Snapshot {
    config: Vec<u8>,
    backup: Vec<u8>,
    shim: (u64, u64, std::time::SystemTime),
    daemon_pid: u32,
    restarts: u32,
}

fn snapshot(r: &Run) -> Snapshot {
    let shim = std::fs::metadata(r.shim_dest()).unwrap();
    Snapshot {
        config: std::fs::read(&r.c.config).unwrap(),
        backup: std::fs::read(r.backup()).unwrap(),
        shim: (shim.ino(), shim.len(), shim.modified().unwrap()),
        daemon_pid: r.c.pid(),
        restarts: r.c.restarts(),
    }
}

/// Containerd with our runtime installed (the real shim) and the pause and Wasm images
/// in CRI's namespace. Images go in before the install, whose restart makes every CRI
/// version load them.
fn installed<'a>(c: &'a Containerd, case: &str, shim: &Path) -> Run<'a> {
    let pause = support::pause_image(&c.sandbox_image(), c.dir.path());
    c.import("k8s.io", &pause);
    c.import(
        "k8s.io",
        &support::wasm_image("sleep", &support::sleep_wasm()),
    );
    let r = Run::with_shim(c, case, shim);
    let report = r.ok("install");
    assert_eq!(report["config"], "written", "{report}");
    assert!(r.knows_handler());
    r
}

struct Pod {
    sandbox: String,
    container: String,
}

fn cri(c: &Containerd) -> Cri {
    // Pod calls start processes through the shim: far slower than Status.
    Cri::new(&c.socket, Duration::from_secs(60)).unwrap()
}

/// A pod of `handler` with one long-running Wasm container, as the kubelet creates it.
fn start_pod(c: &Containerd, handler: &str, name: &str) -> Pod {
    try_start_pod(c, handler, name).unwrap_or_else(|e| panic!("{e}"))
}

fn try_start_pod(c: &Containerd, handler: &str, name: &str) -> Result<Pod, String> {
    let host_network = NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Pod as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let logs = c.dir.path().join("pods").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        annotations: [
            (POD_ANNOTATION.0.to_string(), POD_ANNOTATION.1.to_string()),
            ("example.com/other".to_string(), "kept out".to_string()),
        ]
        .into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: c.cgroup_parent(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(host_network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let cri = cri(c);
    let describe = |e: wasm_installer::Error| {
        format!(
            "containerd {}: {e}\ncontainerd log:\n{}",
            c.version,
            c.log_tail()
        )
    };
    let (config, runtime_handler) = (sandbox_config.clone(), handler.to_owned());
    let sandbox = cri
        .call("RunPodSandbox", |mut client| async move {
            let resp = client
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler,
                })
                .await?;
            Ok(resp.into_inner().pod_sandbox_id)
        })
        .map_err(describe)?;
    let request = CreateContainerRequest {
        pod_sandbox_id: sandbox.clone(),
        config: Some(ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "sleeper".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: support::wasm_image_name("sleep"),
                ..Default::default()
            }),
            log_path: "sleeper.log".into(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: Some(sandbox_config),
    };
    let container = cri
        .call("CreateContainer", |mut client| async move {
            Ok(client
                .create_container(request)
                .await?
                .into_inner()
                .container_id)
        })
        .map_err(describe)?;
    let container_id = container.clone();
    cri.call("StartContainer", |mut client| async move {
        client
            .start_container(StartContainerRequest { container_id })
            .await?;
        Ok(())
    })
    .map_err(describe)?;
    Ok(Pod { sandbox, container })
}

/// A pod annotation our entry's `pod_annotations` passes to the shim.
const POD_ANNOTATION: (&str, &str) = ("wasmruntime.dev/http-port", "8081");

/// The annotations of the OCI spec containerd wrote for the container (its bundle).
fn spec_annotations(c: &Containerd, container: &str) -> serde_json::Map<String, serde_json::Value> {
    let bundle = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(container);
    let text = std::fs::read_to_string(bundle.join("config.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", bundle.display()));
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    spec["annotations"].as_object().cloned().unwrap_or_default()
}

/// Our pod, started through the installed shim (CRI takes it from our entry; on 1.6
/// from `runtime_type`, the shim's absolute path, with the options in `ConfigBody`).
fn pod_through_installed_shim(r: &Run, name: &str) -> Pod {
    start_pod(r.c, r.handler().as_str(), name)
}

/// Every process serving this containerd runs the installed shim file (CRI started it
/// from our entry, not from a copy on its PATH).
fn assert_runs_installed_shim(r: &Run) {
    let pids = r.c.shim_pids();
    assert!(!pids.is_empty(), "no shim process serves the pod");
    for pid in pids {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.starts_with(r.shim_dest()),
            "shim process {pid} runs {}, not the installed {}",
            exe.display(),
            r.shim_dest().display()
        );
    }
}

#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn uninstall_refuses_while_our_pod_runs(#[case] version: &'static str) {
    let shim = support::real_shim();
    let c = Containerd::start(version);
    let r = installed(&c, "pod", &shim);
    let pod = pod_through_installed_shim(&r, "refused");
    assert_runs_installed_shim(&r);
    // CRI copied our pod annotations, and only ours, into the container's spec
    let annotations = spec_annotations(&c, &pod.container);
    assert_eq!(
        annotations.get(POD_ANNOTATION.0).and_then(|v| v.as_str()),
        Some(POD_ANNOTATION.1),
        "containerd {version}: {annotations:?}"
    );
    assert!(
        !annotations.contains_key("example.com/other"),
        "{annotations:?}"
    );
    let mut running = c.cri().running(r.handler().as_str()).unwrap();
    running.sort();
    assert_eq!(
        running,
        [
            format!("container/{}", pod.container),
            format!("sandbox/{}", pod.sandbox)
        ]
    );

    let before = snapshot(&r);
    let out = r.run("uninstall", None);
    assert!(
        !out.status.success(),
        "uninstall succeeded while a pod of ours runs"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "still run",
        "stop them first or pass --force",
        &pod.sandbox,
        &pod.container,
        r.handler().as_str(),
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in: {stderr}");
    }
    let message = std::fs::read_to_string(r.term_log()).unwrap();
    assert!(message.contains("[containers_running]"), "{message}");
    assert_eq!(
        snapshot(&r),
        before,
        "a refused uninstall changed something"
    );
    assert!(r.knows_handler());

    // Once the pod is gone the same command succeeds.
    assert_eq!(c.remove_all_pods().unwrap(), 1);
    assert!(c.cri().running(r.handler().as_str()).unwrap().is_empty());
    let report = r.ok("uninstall");
    assert_eq!(report["config_changed"], true, "{report}");
    assert_eq!(
        r.config(),
        String::from_utf8(before.backup).unwrap(),
        "uninstall did not restore the original config"
    );
    assert!(!r.shim_dest().exists());
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!r.knows_handler());
}

/// `--force` removes our runtime while the pod runs; the pod's processes keep running
/// (the installer never stops workloads). containerd loses track of such a pod once it
/// restarts without our handler (seen here: 1.7.24 reports the sandbox NotReady and
/// 1.7.24 and 2.1.9 the container exited while both still run, and removing the pod
/// over CRI leaves its processes behind), which is why a plain uninstall refuses.
#[rstest]
#[case("1.6.20")]
#[case("1.7.24")]
#[case("2.1.9")]
fn uninstall_force_overrides_a_running_pod(#[case] version: &'static str) {
    let shim = support::real_shim();
    let c = Containerd::start(version);
    let r = installed(&c, "force", &shim);
    let original = std::fs::read_to_string(r.backup()).unwrap();
    pod_through_installed_shim(&r, "forced");
    let processes = c.shim_pids();
    // The override is only logged (at warn level).
    let out = r
        .cmd("uninstall", None)
        .arg("--force")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uninstall --force: {}",
        support::describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("forced: removing while these still run"),
        "no warning about the pod: {stderr}"
    );
    assert_eq!(r.config(), original);
    assert!(!r.shim_dest().exists());
    assert!(!r.backup().exists());
    c.wait_serving(Duration::from_secs(10)).unwrap();
    assert!(!r.knows_handler());
    let alive: Vec<u32> = processes
        .iter()
        .copied()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert_eq!(
        alive, processes,
        "the forced uninstall stopped pod processes"
    );
}
