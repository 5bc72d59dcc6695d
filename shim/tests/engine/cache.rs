//! Precompiled-module cache: file cache for rootfs modules, `Compiler` for OCI layers.

use containerd_shim_wasm::sandbox::context::WasmLayer;
use containerd_shim_wasm::shim::Compiler as _;
use containerd_shim_wasmtime::cache::{ModuleCache, OciCompiler, load_or_compile};
use containerd_shim_wasmtime::engine::{Outcome, WasmEngine};
use oci_spec::image::{Descriptor, Digest, MediaType};

use crate::fixtures::{component, config, run, wasm};

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

fn layer(bytes: Vec<u8>, media: &str) -> WasmLayer {
    WasmLayer {
        config: Descriptor::new(
            MediaType::Other(media.to_string()),
            bytes.len() as u64,
            Digest::try_from(format!("sha256:{:064x}", 1)).unwrap(),
        ),
        precompiled: false,
        layer: bytes,
    }
}

#[tokio::test]
async fn oci_compiler_precompiles_wasm_layers_only() {
    let engine = WasmEngine::new().unwrap();
    let compiler = OciCompiler::new(engine.clone());
    let layers = [
        layer(wasm("exit3"), "application/vnd.wasm.content.layer.v1+wasm"),
        layer(b"[runtime]\n".to_vec(), "application/toml"),
        layer(
            component(&wasm("hello")),
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
        ),
    ];
    let out = compiler.compile(&layers).await.unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[1].is_none());

    let module = engine
        .deserialize("layer 0", out[0].as_ref().unwrap())
        .unwrap();
    assert_eq!(
        run(&engine, &module, config(&["x"]).0).await,
        Outcome::Exited(3)
    );
    let comp = engine
        .deserialize("layer 2", out[2].as_ref().unwrap())
        .unwrap();
    let (cfg, captured) = config(&["c"]);
    assert_eq!(run(&engine, &comp, cfg).await, Outcome::Exited(0));
    assert!(captured.stdout().starts_with("hello from wasm\n"));
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
