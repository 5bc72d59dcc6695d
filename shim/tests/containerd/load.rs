//! Load: many Wasm containers running at once through the shim on one containerd, then
//! many start/stop cycles; afterwards nothing may be left that was not there before:
//! shim processes, mounts, cgroups, youki state, cache files beyond one per module.
//!
//! `LOAD_RUNNING` / `LOAD_CYCLES` set the sizes (default 200 running and 200 cycles: the CI
//! run); `cargo xtask bench load` runs 200 and 1,000 with the release shim and writes the
//! figures (which the test prints as a `load:` line) into docs/reliability.md.

use std::time::{Duration, Instant};

use testbed::containerd::{WASMTIME_RUNTIME, runtime_root};
use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, image_name, wasm_image};

mod load_containerd_2 {
    #[test]
    fn many_running_and_many_cycles_leak_nothing() {
        super::many_running_and_many_cycles_leak_nothing(testbed::versions::CONTAINERD_2)
    }
}

#[derive(Debug, PartialEq)]
struct Counts {
    shim_processes: usize,
    mounts: usize,
    cgroups: usize,
    youki_state: usize,
    cache_files: usize,
}

/// cgroup directories of this containerd's namespace (`ctr` puts a container in
/// `/<namespace>/<id>` of every hierarchy).
fn cgroups(namespace: &str) -> usize {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return 0;
    };
    controllers
        .filter_map(|c| c.ok())
        .map(|c| c.path().join(namespace))
        .chain(std::iter::once(
            std::path::Path::new("/sys/fs/cgroup").join(namespace),
        ))
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .count()
        })
        .sum()
}

fn counts(bed: &Bed) -> Counts {
    let ns = bed.ctrd.namespace();
    Counts {
        shim_processes: bed.ctrd.shim_pids().len(),
        mounts: bed.ctrd.mounts().len(),
        cgroups: cgroups(ns),
        youki_state: std::fs::read_dir(runtime_root("wasmtime", ns))
            .map(|d| d.count())
            .unwrap_or(0),
        cache_files: bed.cache_entries().len(),
    }
}

/// A memory figure of a process in KiB: `field` of `/proc/<pid>/<file>` (e.g. `VmRSS:` of
/// `status`, `Pss:` of `smaps_rollup`).
fn kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn many_running_and_many_cycles_leak_nothing(v: DebPackage) {
    let (running, cycles) = (env_or("LOAD_RUNNING", 200), env_or("LOAD_CYCLES", 200));
    let bed = Bed::start(v);
    bed.import(&wasm_image("sleep", &fixtures::wat("sleep")));
    bed.import(&wasm_image("hello", &fixtures::wat("hello")));
    let before = counts(&bed);
    let ctr = || bed.ctrd.ctr();

    // Many at once: one shim each (`ctr run -d`), all blocked in a host call.
    let started = Instant::now();
    let ids: Vec<String> = (0..running).map(|i| format!("load-{i}")).collect();
    for id in &ids {
        let out = ctr()
            .args(["run", "-d", "--runtime", WASMTIME_RUNTIME])
            .arg(image_name("sleep"))
            .arg(id)
            .output()
            .unwrap();
        assert!(out.status.success(), "{id}: {out:?}");
    }
    let all_running = || {
        let out = ctr().args(["tasks", "ls"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("RUNNING"))
            .count()
    };
    while all_running() < running {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {running} running",
            all_running()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let start_took = started.elapsed();
    let shims = bed.ctrd.shim_pids();
    // PSS: shared pages (the binary, the zygote's copy-on-write memory) divided among sharers
    let shims_pss: u64 = shims.iter().map(|&p| kib(p, "smaps_rollup", "Pss:")).sum();
    let at_peak = counts(&bed);
    assert!(at_peak.shim_processes >= running, "{at_peak:?}");
    for id in &ids {
        let kill = ctr()
            .args(["tasks", "kill", "-s", "SIGKILL", id])
            .output()
            .unwrap();
        assert!(kill.status.success(), "{id}: {kill:?}");
    }
    for id in &ids {
        // `tasks delete` waits for the exit; then the container and its snapshot go
        let start = Instant::now();
        while !ctr()
            .args(["tasks", "delete", id])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} never stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let rm = ctr().args(["containers", "rm", id]).output().unwrap();
        assert!(rm.status.success(), "{id}: {rm:?}");
    }

    // Many cycles: start, run to completion, remove.
    let daemon_rss_before = kib(bed.ctrd.daemon_pid(), "status", "VmRSS:");
    let cycles_started = Instant::now();
    for i in 0..cycles {
        let run = bed.run_wasm(&[], &image_name("hello"), &[]);
        assert_eq!(run.code(), 0, "cycle {i}: {}", run.describe());
    }
    let cycles_took = cycles_started.elapsed();
    let daemon_rss_after = kib(bed.ctrd.daemon_pid(), "status", "VmRSS:");

    // Shims exit right after their last task is deleted; allow them a moment.
    let settle = Instant::now();
    let mut after = counts(&bed);
    while after.shim_processes > 0 && settle.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        after = counts(&bed);
    }
    let expected = Counts {
        // one precompiled module per distinct module: sleep and hello
        cache_files: 2,
        ..before
    };
    println!(
        "load: {running} running at once (started in {:.1} s, {} shim processes, {:.1} MiB PSS in all, {:.1} MiB per container), \
         {cycles} start/stop cycles in {:.1} s, containerd RSS {:.1} -> {:.1} MiB; left after: {after:?}",
        start_took.as_secs_f64(),
        shims.len(),
        shims_pss as f64 / 1024.0,
        shims_pss as f64 / 1024.0 / running as f64,
        cycles_took.as_secs_f64(),
        daemon_rss_before as f64 / 1024.0,
        daemon_rss_after as f64 / 1024.0,
    );
    assert_eq!(after, expected, "left behind (before: {before:?})");
}
