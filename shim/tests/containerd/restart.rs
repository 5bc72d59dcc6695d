//! A running Wasm task survives a containerd restart: containerd reloads the shim, asks it
//! for the task's processes (`Pids`) and keeps the task; the guest is never duplicated and
//! its exit later reaches the new containerd as an event.

use std::time::{Duration, Instant};

use testbed::versions::DebPackage;

use crate::fixtures;
use crate::harness::{Bed, image_name, unique, wasm_image};
use crate::http::{free_port, get};

crate::on_every_containerd!(running_task_survives_a_containerd_restart);

fn running_task_survives_a_containerd_restart(v: DebPackage) {
    let mut bed = Bed::start(v);
    bed.import(&wasm_image("http", &fixtures::http_component()));
    let port = free_port();
    let id = unique("kept");
    let env = format!("WASMRUNTIME_HTTP_PORT={port}");
    bed.run_detached(&["--net-host", "--env", &env], &image_name("http"), &id);
    let start = Instant::now();
    while get(port, "/ready").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never listened\n{}",
            bed.ctrd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the shim, its zygote and the container's init
    let shims = bed.ctrd.shim_pids();

    bed.ctrd.restart().unwrap_or_else(|e| panic!("{e}"));

    // containerd reloads shims right after it answers; let it finish that
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        bed.task_status(&id).as_deref(),
        Some("RUNNING"),
        "task lost by the restart\n{}",
        bed.ctrd.log()
    );
    assert_eq!(
        bed.ctrd.shim_pids(),
        shims,
        "the same shim, zygote and init"
    );
    let resp = get(port, "/after-restart").expect("still serving");
    assert!(
        resp.contains("hello from wasi:http /after-restart"),
        "{resp}"
    );
    assert!(
        !bed.ctrd.log().contains("cleaning leaked shim process"),
        "{}",
        bed.ctrd.log()
    );

    // The exit reaches the new containerd as an event (the old event connection is gone).
    let events = bed.watch_events();
    bed.sigterm(&id);
    let exit = events.wait_for("/tasks/exit", &id, Duration::from_secs(10));
    let exit =
        exit.unwrap_or_else(|| panic!("no exit event:\n{}\n{}", events.text(), bed.ctrd.log()));
    assert!(exit.contains("\"exit_status\":143"), "{exit}");
    drop(events); // `ctr events` names the socket too: it would count as a shim below
    let delete = bed
        .ctrd
        .ctr()
        .args(["tasks", "delete", &id])
        .output()
        .unwrap();
    assert!(delete.status.success(), "{delete:?}");
    let rm = bed
        .ctrd
        .ctr()
        .args(["containers", "rm", &id])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{rm:?}");
    let start = Instant::now();
    while !bed.ctrd.shim_pids().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "shim did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
