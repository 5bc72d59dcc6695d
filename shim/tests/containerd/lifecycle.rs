//! The precompiled-module cache across container starts, and what 50 containers leave
//! behind.

use testbed::containerd::{WASMTIME_SHIM, pids_with_cmdline, runtime_root};
use testbed::oci::{ArtifactKind, WasmArtifact};
use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, image_name, unique, wasm_image};

crate::on_every_containerd!(
    second_start_hits_the_file_cache,
    fifty_containers_leave_nothing_behind,
    options_json_turns_the_cache_off_and_caps_unlimited_containers,
    containers_of_a_pod_share_one_shim,
);

/// containerd 1.6 cannot unpack Wasm artifacts at all (see `run::every_oci_artifact_media_type`).
mod artifact_containerd_2 {
    #[test]
    fn oci_artifact_is_precompiled_once() {
        super::oci_artifact_is_precompiled_once(testbed::versions::CONTAINERD_2)
    }
}
mod artifact_containerd_1_7 {
    #[test]
    fn oci_artifact_is_precompiled_once() {
        super::oci_artifact_is_precompiled_once(testbed::versions::CONTAINERD_1_7)
    }
}

/// Evidence without timing: the first run writes exactly one `.cwasm` entry; the second
/// run neither rewrites it (same inode and mtime) nor adds any, and the shim logs a hit.
fn second_start_hits_the_file_cache(v: DebPackage) {
    use std::os::unix::fs::MetadataExt as _;
    let bed = Bed::start(v);
    bed.import(&wasm_image("cached", &fixtures::wat("hello")));
    assert!(bed.cache_entries().is_empty());
    let first = bed.run_wasm(&[], &image_name("cached"), &[]);
    assert_eq!(first.code(), 0, "{}", first.describe());
    let entries = bed.cache_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].ends_with(".cwasm"), "{entries:?}");
    let entry = bed.cache_dir().join(&entries[0]);
    let before = std::fs::metadata(&entry).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = bed.run_wasm(&[], &image_name("cached"), &[]);
    assert_eq!(second.code(), 0, "{}", second.describe());
    let after = std::fs::metadata(&entry).unwrap();
    assert_eq!(bed.cache_entries(), entries);
    assert_eq!(
        (before.ino(), before.mtime_nsec(), before.mtime()),
        (after.ino(), after.mtime_nsec(), after.mtime())
    );
    assert_eq!(
        bed.ctrd
            .log()
            .matches("precompiled module cache hit")
            .count(),
        1,
        "{}",
        bed.ctrd.log()
    );
}

/// The node defaults the installer writes for `--precompile false --guest-memory-limit
/// 32Mi`: no cache entry is written, and a container without a memory limit gets 32 MiB
/// for its guest (grow.wasm wants 64 MiB), while its own limit still wins.
fn options_json_turns_the_cache_off_and_caps_unlimited_containers(v: DebPackage) {
    let bed = Bed::start_with_options(
        v,
        r#"{"network": "deny", "precompile": false, "defaultMemoryLimitBytes": 33554432}"#,
    );
    bed.import(&wasm_image("hello", &fixtures::wat("hello")));
    bed.import(&wasm_image("grow", &fixtures::wat("grow")));
    for _ in 0..2 {
        let run = bed.run_wasm(&[], &image_name("hello"), &[]);
        assert_eq!(run.code(), 0, "{}", run.describe());
    }
    assert_eq!(bed.cache_entries(), Vec::<String>::new());
    assert!(
        !bed.ctrd.log().contains("precompiled module cache hit"),
        "{}",
        bed.ctrd.log()
    );
    let capped = bed.run_wasm(&[], &image_name("grow"), &[]);
    assert_eq!(capped.code(), 137, "{}", capped.describe());
    assert!(
        capped
            .stderr()
            .contains("above the container limit of 33554432 bytes"),
        "{}",
        capped.describe()
    );
    let own_limit = bed.run_wasm(&["--memory-limit", "268435456"], &image_name("grow"), &[]);
    assert_eq!(own_limit.code(), 0, "{}", own_limit.describe());
}

/// OCI artifacts use the same file cache as rootfs modules (runwasi keeps them in
/// containerd's content store instead): the first run stores one entry, the second loads it.
fn oci_artifact_is_precompiled_once(v: DebPackage) {
    let bed = Bed::start(v);
    let name = image_name("art-cached");
    let wasm = fixtures::command_component(&fixtures::wat("hello"));
    bed.import_artifact(&WasmArtifact::new(
        &name,
        ArtifactKind::ComponentLayer,
        wasm,
    ));
    let flags = ["--platform", testbed::oci::WASM_PLATFORM];
    for _ in 0..2 {
        let run = bed.run_wasm(&flags, &name, &["app.wasm"]);
        assert_eq!(run.code(), 0, "{}", run.describe());
    }
    let log = bed.ctrd.log();
    assert_eq!(log.matches("stored precompiled module").count(), 1, "{log}");
    assert_eq!(
        log.matches("precompiled module cache hit").count(),
        1,
        "{log}"
    );
    assert_eq!(bed.cache_entries().len(), 1, "{:?}", bed.cache_entries());
}

fn fifty_containers_leave_nothing_behind(v: DebPackage) {
    let bed = Bed::start(v);
    bed.import(&wasm_image("many", &fixtures::wat("hello")));
    let shims = || pids_with_cmdline(|a| a.first().is_some_and(|p| p.ends_with(WASMTIME_SHIM)));
    let mine = || bed.ctrd.shim_pids();
    let snapshots = || {
        let out = bed.ctrd.ctr().args(["snapshots", "ls"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (mounts_before, shims_before, snapshots_before) = (bed.ctrd.mounts(), mine(), snapshots());
    assert!(shims_before.is_empty(), "{shims_before:?}");
    for i in 0..50 {
        let run = bed.run_wasm(&[], &image_name("many"), &[]);
        assert_eq!(run.code(), 0, "run {i}: {}", run.describe());
    }
    assert_eq!(
        mine(),
        Vec::<u32>::new(),
        "shim processes left: all shims {:?}",
        shims()
    );
    assert_eq!(bed.ctrd.mounts(), mounts_before);
    // one cache entry, no temp files
    assert_eq!(bed.cache_entries().len(), 1, "{:?}", bed.cache_entries());
    // no containers, tasks, container snapshots, or youki state left
    for what in [&["containers", "ls", "-q"][..], &["tasks", "ls", "-q"]] {
        let out = bed.ctrd.ctr().args(what).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim().is_empty(), "ctr {what:?} left {text}");
    }
    assert_eq!(snapshots(), snapshots_before);
    let state = runtime_root("wasmtime", bed.ctrd.namespace());
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{}: {left:?}", state.display());
}

/// Containers with one CRI sandbox id share a shim, as runc's do: the second `start`
/// finds the pod's shim serving and answers with its address; the shim (a fork of the
/// first `start`, showing a daemon's arguments) serves on after the first container goes
/// and leaves with the last.
fn containers_of_a_pod_share_one_shim(v: DebPackage) {
    use std::time::{Duration, Instant};
    let bed = Bed::start(v);
    bed.import(&wasm_image("sleep", &fixtures::wat("sleep")));
    let sandbox = format!("io.kubernetes.cri.sandbox-id={}", unique("pod"));
    let ids = [unique("pa"), unique("pb")];
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let since = Instant::now();
        while !done() {
            assert!(since.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for id in &ids {
        bed.run_detached(&["--annotation", &sandbox], &image_name("sleep"), id);
        until(&format!("{id} running"), &|| {
            bed.task_status(id).as_deref() == Some("RUNNING")
        });
    }
    let parent = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix("PPid:")
                    .map(|p| p.trim().parse::<u32>().unwrap())
            })
    };
    // the shim's processes (daemon, zygote, inits) carry its arguments; the daemon is
    // the one whose parent is none of them
    let daemons = || -> Vec<u32> {
        let pids = bed.ctrd.shim_pids();
        pids.iter()
            .copied()
            .filter(|p| parent(*p).is_some_and(|pp| !pids.contains(&pp)))
            .collect()
    };
    let shims = daemons();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    for id in &ids {
        let pid = bed.task_pid(id).unwrap();
        assert_eq!(
            parent(pid),
            Some(shims[0]),
            "{id}'s init belongs to the pod's shim"
        );
    }
    let args = std::fs::read(format!("/proc/{}/cmdline", shims[0])).unwrap();
    let args: Vec<String> = args
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        args.ends_with(&[
            "-namespace".to_string(),
            bed.ctrd.namespace().to_string(),
            "-id".to_string(),
            ids[0].clone(),
            "-address".to_string(),
            args[args.len() - 1].clone(),
        ]) && !args.iter().any(|a| a == "start"),
        "the daemon shows a daemon's arguments: {args:?}"
    );
    let remove = |id: &str| {
        let _ = bed
            .ctrd
            .ctr()
            .args(["tasks", "kill", "-s", "SIGKILL", id])
            .output();
        until(&format!("{id} stopped"), &|| {
            bed.task_status(id).as_deref() != Some("RUNNING")
        });
        for what in [&["tasks", "delete"][..], &["containers", "delete"]] {
            let out = bed.ctrd.ctr().args(what).arg(id).output().unwrap();
            assert!(out.status.success(), "ctr {what:?} {id}: {out:?}");
        }
    };
    remove(&ids[0]);
    assert_eq!(bed.task_status(&ids[1]).as_deref(), Some("RUNNING"));
    assert_eq!(daemons(), shims, "the pod's shim serves on");
    remove(&ids[1]);
    until("the pod's shim gone", &|| bed.ctrd.shim_pids().is_empty());
}
