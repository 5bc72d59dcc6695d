//! Writes the test programs the real-containerd tests use into a directory, for
//! `cargo xtask bench shim`: `hello.wasm` (p1 module), `sleep.wasm` (idle guest),
//! `http.wasm` (wasi:http component, built from C).
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
        ("sleep.wasm", fixtures::wat("sleep")),
        ("http.wasm", fixtures::http_component()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}", path.display());
    }
}
