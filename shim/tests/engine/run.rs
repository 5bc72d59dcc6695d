use std::time::{Duration, Instant};

use containerd_shim_wasmtime::Error;
use containerd_shim_wasmtime::engine::{NetworkPolicy, Outcome, STOP_GRACE, WasmEngine};

use crate::fixtures::{compile, config, run, wasm};

#[tokio::test]
async fn hello_prints_args_and_env() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "hello", &wasm("hello"));
    let (mut cfg, out) = config(&["/hello.wasm", "first", "two words"]);
    cfg.env = vec![
        ("GREETING".into(), "hi there".into()),
        ("EMPTY".into(), String::new()),
    ];
    let outcome = run(&engine, &guest, cfg).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(
        out.stdout(),
        "hello from wasm\n/hello.wasm\nfirst\ntwo words\nGREETING=hi there\nEMPTY=\n"
    );
    assert_eq!(out.stderr(), "");
}

#[tokio::test]
async fn proc_exit_code_is_the_exit_code() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "exit3", &wasm("exit3"));
    let outcome = run(&engine, &guest, config(&["exit3"]).0).await;
    assert_eq!(outcome, Outcome::Exited(3));
    assert_eq!(outcome.exit_code(), 3);
}

#[tokio::test]
async fn growing_past_the_memory_limit_traps_and_exits_137() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "grow", &wasm("grow"));

    let (mut cfg, out) = config(&["grow"]);
    cfg.memory_limit = Some(16 << 20);
    let outcome = run(&engine, &guest, cfg).await;
    // 1 initial page + 15 grows of 1 MiB fit; the 16th would pass 16 MiB and traps.
    assert_eq!(
        outcome,
        Outcome::MemoryLimitExceeded {
            limit: 16 << 20,
            requested: (16 << 20) + 65536
        }
    );
    assert_eq!(outcome.exit_code(), 137);
    assert_eq!(out.stderr(), "", "memory.grow must not have returned -1");

    // control: the same guest without a limit completes
    let (mut cfg, _) = config(&["grow"]);
    cfg.memory_limit = Some(128 << 20);
    assert_eq!(run(&engine, &guest, cfg).await, Outcome::Exited(0));
}

#[tokio::test]
async fn initial_memory_above_the_limit_fails_at_instantiation_with_137() {
    let engine = WasmEngine::new().unwrap();
    let big = wat::parse_str(r#"(module (memory (export "memory") 32) (func (export "_start")))"#)
        .unwrap();
    let guest = compile(&engine, "big", &big);
    let (mut cfg, _) = config(&["big"]);
    cfg.memory_limit = Some(1 << 20);
    let outcome = run(&engine, &guest, cfg).await;
    assert!(
        matches!(outcome, Outcome::MemoryLimitExceeded { requested, .. } if requested == 32 * 65536),
        "{outcome:?}"
    );
}

/// A guest that never calls the host is stopped by epoch interruption, well inside the
/// grace period (so not by abandoning it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guest_is_stopped_by_the_epoch_deadline() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "spin", &wasm("spin"));
    let stop = engine.stop_handle();
    let stopped_at = stop_after(stop.clone(), Duration::from_millis(200));
    let outcome = engine
        .run(&guest, config(&["spin"]).0, &stop)
        .await
        .unwrap();
    let took = stopped_at.join().unwrap().elapsed();
    assert_eq!(outcome, Outcome::Stopped);
    assert_eq!(outcome.exit_code(), 143);
    assert!(took < STOP_GRACE, "stopping took {took:?}");
}

/// A guest blocked in a host call cannot see the epoch; it is abandoned after the grace
/// period, still inside the 1 s SIGTERM budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_blocked_in_a_host_call_is_abandoned_after_the_grace() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "sleep", &wasm("sleep"));
    let stop = engine.stop_handle();
    let stopped_at = stop_after(stop.clone(), Duration::from_millis(100));
    let outcome = engine
        .run(&guest, config(&["sleep"]).0, &stop)
        .await
        .unwrap();
    let took = stopped_at.join().unwrap().elapsed();
    assert_eq!(outcome, Outcome::Stopped);
    assert!(
        took >= STOP_GRACE && took < Duration::from_secs(1),
        "took {took:?}"
    );
}

/// A stop aimed at one run leaves another run on the same engine alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_is_per_run_not_per_engine() {
    let engine = WasmEngine::new().unwrap();
    let spin = compile(&engine, "spin", &wasm("spin"));
    let grow = compile(&engine, "grow", &wasm("grow"));
    let stop = engine.stop_handle();
    let other = engine.stop_handle();
    let stopped_at = stop_after(stop.clone(), Duration::from_millis(50));
    let (a, b) = tokio::join!(engine.run(&spin, config(&["spin"]).0, &stop), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        engine.run(&grow, config(&["grow"]).0, &other).await
    });
    stopped_at.join().unwrap();
    assert_eq!(a.unwrap(), Outcome::Stopped);
    assert_eq!(b.unwrap(), Outcome::Exited(0));
}

fn stop_after(
    stop: containerd_shim_wasmtime::engine::StopHandle,
    after: Duration,
) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let at = Instant::now();
        stop.stop();
        at
    })
}

#[tokio::test]
async fn a_trap_is_a_crash_exit_134() {
    let engine = WasmEngine::new().unwrap();
    let bytes = wat::parse_str(r#"(module (func (export "_start") unreachable))"#).unwrap();
    let guest = compile(&engine, "trap", &bytes);
    let outcome = run(&engine, &guest, config(&["trap"]).0).await;
    assert!(
        matches!(&outcome, Outcome::Trapped(m) if m.contains("unreachable")),
        "{outcome:?}"
    );
    assert_eq!(outcome.exit_code(), 134);
}

#[tokio::test]
async fn missing_start_export_is_a_clear_error() {
    let engine = WasmEngine::new().unwrap();
    let bytes = wat::parse_str(r#"(module (func (export "main")))"#).unwrap();
    let guest = compile(&engine, "nostart", &bytes);
    let stop = engine.stop_handle();
    let err = engine
        .run(&guest, config(&["x"]).0, &stop)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`_start`"), "{err}");

    // `path#main` in the entrypoint selects another export
    let (mut cfg, _) = config(&["x"]);
    cfg.func = "main".into();
    assert_eq!(
        engine.run(&guest, cfg, &stop).await.unwrap(),
        Outcome::Exited(0)
    );
}

#[test]
fn non_wasm_entrypoint_error_names_the_file_and_the_magic() {
    let engine = WasmEngine::new().unwrap();
    let err = engine
        .compile("/app/hello.wasm", b"#!/bin/sh\necho hi\n")
        .err()
        .expect("a script is not Wasm");
    assert!(matches!(err, Error::NotWasm { .. }));
    let msg = err.to_string();
    assert!(msg.contains("/app/hello.wasm"), "{msg}");
    assert!(msg.contains("00 61 73 6d"), "{msg}");
    assert!(msg.contains("23 21 2f 62 69 6e 2f 73 (a script)"), "{msg}");

    let elf = engine
        .compile("/app/a.wasm", b"\x7fELF\x02\x01\x01\0")
        .err()
        .unwrap();
    assert!(elf.to_string().contains("(an ELF executable)"), "{elf}");
    let empty = engine.compile("/app/e.wasm", b"").err().unwrap();
    assert!(empty.to_string().contains("an empty file"), "{empty}");
}

#[test]
fn network_policy_knob() {
    use NetworkPolicy::{Allow, Deny};
    use std::collections::HashMap;
    let env = |v: &str| vec![("WASMRUNTIME_NETWORK".to_string(), v.to_string())];
    let ann = |v: &str| HashMap::from([("wasmruntime.dev/network".to_string(), v.to_string())]);
    let none = HashMap::new();
    // the container's env decides, else the pod's annotation, else the node default
    for default in [Deny, Allow] {
        assert_eq!(NetworkPolicy::resolve(&[], &none, default), default);
        assert_eq!(NetworkPolicy::resolve(&env("allow"), &none, default), Allow);
        assert_eq!(NetworkPolicy::resolve(&env("ALLOW"), &none, default), Allow);
        assert_eq!(NetworkPolicy::resolve(&env("deny"), &none, default), Deny);
        assert_eq!(NetworkPolicy::resolve(&env("yes"), &none, default), default);
        assert_eq!(NetworkPolicy::resolve(&[], &ann("allow"), default), Allow);
        assert_eq!(NetworkPolicy::resolve(&[], &ann("deny"), default), Deny);
        assert_eq!(NetworkPolicy::resolve(&[], &ann("maybe"), default), default);
        assert_eq!(
            NetworkPolicy::resolve(&env("deny"), &ann("allow"), default),
            Deny
        );
        assert_eq!(
            NetworkPolicy::resolve(&env("allow"), &ann("deny"), default),
            Allow
        );
    }
    // the last occurrence wins, as for any env variable
    let twice = vec![
        ("WASMRUNTIME_NETWORK".to_string(), "allow".to_string()),
        ("WASMRUNTIME_NETWORK".to_string(), "deny".to_string()),
    ];
    assert_eq!(NetworkPolicy::resolve(&twice, &none, Allow), Deny);
}
