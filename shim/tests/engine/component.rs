//! WASI preview 2 components (`wasi:cli/run`), made from the preview 1 fixtures with
//! wit-component and Wasmtime 48's preview 1 adapter.

use containerd_shim_wasmtime::Error;
use containerd_shim_wasmtime::engine::{Guest, Outcome, WasmEngine, WasmKind};
use containerd_shim_wasmtime::http::pool_config;
use containerd_shim_wasmtime::mounts::Preopen;

use crate::fixtures::{compile, component, config, run, wasm};

#[tokio::test]
async fn component_prints_args_and_env() {
    let bytes = component(&wasm("hello"));
    assert_eq!(WasmKind::detect(&bytes), Some(WasmKind::Component));
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "hello component", &bytes);
    assert!(matches!(guest, Guest::Component(_)));
    let (mut cfg, out) = config(&["hello", "arg"]);
    cfg.env = vec![("K".into(), "V".into())];
    assert_eq!(run(&engine, &guest, cfg).await, Outcome::Exited(0));
    assert_eq!(out.stdout(), "hello from wasm\nhello\narg\nK=V\n");
}

/// The HTTP server's pooling engine takes a component compiled by the default engine
/// (no recompilation) and runs it the same, memory limit included; both engines share
/// the cache key, so cache entries serve both.
#[tokio::test]
async fn component_moves_to_the_pooling_engine() {
    let engine = WasmEngine::new().unwrap();
    let pooled = WasmEngine::pooling(pool_config(None, true))
        .or_else(|_| WasmEngine::pooling(pool_config(None, false)))
        .unwrap();
    assert_eq!(engine.compatibility_key(), pooled.compatibility_key());
    let Guest::Component(c) = compile(&engine, "hello component", &component(&wasm("hello")))
    else {
        panic!("a component")
    };
    let adopted = Guest::Component(pooled.adopt(&c).unwrap());
    let (cfg, out) = config(&["hello"]);
    assert_eq!(run(&pooled, &adopted, cfg).await, Outcome::Exited(0));
    assert_eq!(out.stdout(), "hello from wasm\nhello\n");

    let Guest::Component(grow) = compile(&engine, "grow", &component(&wasm("grow"))) else {
        panic!("a component")
    };
    let grow = Guest::Component(pooled.adopt(&grow).unwrap());
    let (mut cfg, _) = config(&["grow"]);
    cfg.memory_limit = Some(8 << 20);
    assert!(matches!(
        run(&pooled, &grow, cfg).await,
        Outcome::MemoryLimitExceeded { .. }
    ));
}

/// WASI 0.2 `wasi:cli/exit` carries only ok/err, so the adapter maps any non-zero
/// `proc_exit` to err, which the host reports as exit 1.
#[tokio::test]
async fn component_nonzero_exit_is_1() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "exit3 component", &component(&wasm("exit3")));
    assert_eq!(
        run(&engine, &guest, config(&["x"]).0).await,
        Outcome::Exited(1)
    );
}

#[tokio::test]
async fn component_memory_limit_exits_137() {
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "grow component", &component(&wasm("grow")));
    let (mut cfg, _) = config(&["grow"]);
    cfg.memory_limit = Some(16 << 20);
    let outcome = run(&engine, &guest, cfg).await;
    assert!(
        matches!(outcome, Outcome::MemoryLimitExceeded { limit, .. } if limit == 16 << 20),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn component_reads_preopen_and_cannot_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = tmp.path().join("v");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f.txt"), "from the volume\n").unwrap();
    std::fs::write(tmp.path().join("secret"), "no\n").unwrap();
    let engine = WasmEngine::new().unwrap();
    let guest = compile(&engine, "fs component", &component(&wasm("fs")));

    let (mut cfg, out) = config(&["fs", "read", "f.txt"]);
    cfg.preopens = vec![Preopen::read_only(&vol, "/data")];
    assert_eq!(run(&engine, &guest, cfg).await, Outcome::Exited(0));
    assert_eq!(out.stdout(), "from the volume\n");

    let (mut cfg, out) = config(&["fs", "read", "../secret"]);
    cfg.preopens = vec![Preopen::read_only(&vol, "/data")];
    assert_eq!(run(&engine, &guest, cfg).await, Outcome::Exited(1));
    assert_eq!(out.stdout(), "");

    let (mut cfg, _) = config(&["fs", "write", "new"]);
    cfg.preopens = vec![Preopen::read_only(&vol, "/data")];
    assert_eq!(run(&engine, &guest, cfg).await, Outcome::Exited(1));
    assert!(!vol.join("new").exists());
}

#[tokio::test]
async fn component_without_cli_run_is_refused_clearly() {
    let engine = WasmEngine::new().unwrap();
    let bytes = wat::parse_str("(component)").unwrap();
    let guest = compile(&engine, "empty component", &bytes);
    let stop = engine.stop_handle();
    let err = engine.run(&guest, config(&[]).0, &stop).await.unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("wasi:cli/run"), "{err}");
}
