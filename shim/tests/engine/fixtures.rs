use containerd_shim_wasmtime::engine::{Captured, Guest, Outcome, RunConfig, Stdio, WasmEngine};

/// Assembles `tests/fixtures/<name>.wat` into a core module.
pub fn wasm(name: &str) -> Vec<u8> {
    let path = testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Wraps a preview 1 command module into a preview 2 component with the WASI adapter
/// that ships with Wasmtime 48 (the same path `cargo component`/`wasm-tools` take).
pub fn component(core: &[u8]) -> Vec<u8> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .expect("core module")
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .expect("adapter")
        .validate(true)
        .encode()
        .expect("component encoding")
}

pub fn compile(engine: &WasmEngine, name: &str, bytes: &[u8]) -> Guest {
    engine
        .compile(name, bytes)
        .unwrap_or_else(|e| panic!("compiling {name}: {e}"))
}

/// A config with captured stdio and the given argv.
pub fn config(args: &[&str]) -> (RunConfig, Captured) {
    let captured = Captured::default();
    let cfg = RunConfig {
        args: args.iter().map(|a| a.to_string()).collect(),
        stdio: Stdio::Capture(captured.clone()),
        ..RunConfig::default()
    };
    (cfg, captured)
}

pub async fn run(engine: &WasmEngine, guest: &Guest, cfg: RunConfig) -> Outcome {
    let stop = engine.stop_handle();
    engine.run(guest, cfg, &stop).await.expect("run")
}
