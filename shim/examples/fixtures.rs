//! Writes the test programs the real-containerd tests use into a directory, for
//! `cargo xtask bench shim` and `cargo xtask e2e`: `hello.wasm` (p1 module),
//! `hello-component.wasm` (the same as a `wasi:cli/run` component), `sleep.wasm` (idle
//! guest), `exit3.wasm`, `grow.wasm` (grows memory to 64 MiB), `fs.wasm` (`fs read|write
//! PATH`, from C) and `http.wasm` (wasi:http component, from C).
//!
//! `cargo run -p containerd-shim-wasmtime --example fixtures -- OUT_DIR`

#[path = "../tests/containerd/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: fixtures OUT_DIR"));
    std::fs::create_dir_all(&out).expect("create OUT_DIR");
    for (name, bytes) in [
        ("hello.wasm", fixtures::wat("hello")),
        (
            "hello-component.wasm",
            fixtures::command_component(&fixtures::wat("hello")),
        ),
        ("sleep.wasm", fixtures::wat("sleep")),
        ("exit3.wasm", fixtures::wat("exit3")),
        ("grow.wasm", fixtures::wat("grow")),
        ("fs.wasm", fixtures::fs_module()),
        ("http.wasm", fixtures::http_component()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}", path.display());
    }
}
