//! Precompiled-module cache: one file cache for rootfs modules and OCI layers.

use containerd_shim_wasmtime::cache::{ModuleCache, load_or_compile};
use containerd_shim_wasmtime::engine::{Outcome, WasmEngine};

use crate::fixtures::{config, run, wasm};

#[tokio::test]
async fn second_load_uses_the_cached_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModuleCache::open(&tmp.path().join("cache")).unwrap();
    let engine = WasmEngine::new().unwrap();
    let hello = wasm("hello");
    let key = ModuleCache::key(&engine, &hello);

    // miss: compiles, stores
    let guest = load_or_compile(&engine, Some(&cache), "/hello.wasm", &hello).unwrap();
    assert_eq!(
        run(&engine, &guest, config(&["h"]).0).await,
        Outcome::Exited(0)
    );
    let stored = cache.get(&key).expect("entry written on miss");
    assert!(wasmtime::Engine::detect_precompiled(&stored).is_some());

    // hit: prove the artifact is what runs (not a fresh compile) by planting the
    // artifact of exit3.wasm under hello's key
    let planted = engine.precompile("exit3", &wasm("exit3")).unwrap();
    cache.put(&key, &planted).unwrap();
    let guest = load_or_compile(&engine, Some(&cache), "/hello.wasm", &hello).unwrap();
    assert_eq!(
        run(&engine, &guest, config(&["h"]).0).await,
        Outcome::Exited(3)
    );

    // an unusable entry is recompiled and replaced
    cache.put(&key, b"garbage").unwrap();
    let guest = load_or_compile(&engine, Some(&cache), "/hello.wasm", &hello).unwrap();
    assert_eq!(
        run(&engine, &guest, config(&["h"]).0).await,
        Outcome::Exited(0)
    );
    assert_ne!(cache.get(&key).unwrap(), b"garbage");

    // one entry, no temp files
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
}

#[test]
fn non_wasm_is_rejected_before_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModuleCache::open(tmp.path()).unwrap();
    let engine = WasmEngine::new().unwrap();
    let err = load_or_compile(&engine, Some(&cache), "/bin/app.wasm", b"hello world")
        .err()
        .unwrap();
    assert!(err.to_string().contains("/bin/app.wasm"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn engine_key_is_stable_and_settings_sensitive() {
    let a = WasmEngine::new().unwrap().compatibility_key();
    assert_eq!(a, WasmEngine::new().unwrap().compatibility_key());
    assert_eq!(a.len(), 16);
    // a different engine configuration has a different precompile hash
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(false);
    let other = wasmtime::Engine::new(&cfg).unwrap();
    let mut h1 = std::collections::hash_map::DefaultHasher::new();
    let mut h2 = std::collections::hash_map::DefaultHasher::new();
    use std::hash::{Hash, Hasher};
    other.precompile_compatibility_hash().hash(&mut h1);
    WasmEngine::new()
        .unwrap()
        .inner()
        .precompile_compatibility_hash()
        .hash(&mut h2);
    assert_ne!(h1.finish(), h2.finish());
}
