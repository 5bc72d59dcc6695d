//! Test programs, built here from source: WAT (the `wat` crate), C (Debian's clang +
//! wasi-libc, bindings from `wit-bindgen c`), components via `wit-component` and
//! Wasmtime 48's WASI preview 1 adapters. Shared with `examples/fixtures.rs` (benchmarks).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
};

fn manifest_dir() -> PathBuf {
    testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
}

/// Assembles `tests/fixtures/<name>.wat`.
pub fn wat(name: &str) -> Vec<u8> {
    let path = manifest_dir().join(format!("tests/fixtures/{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A preview 1 command module wrapped as a `wasi:cli/run` component.
pub fn command_component(core: &[u8]) -> Vec<u8> {
    componentize(core, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER)
}

fn componentize(core: &[u8], adapter: &[u8]) -> Vec<u8> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .expect("core module")
        .adapter("wasi_snapshot_preview1", adapter)
        .expect("adapter")
        .validate(true)
        .encode()
        .expect("component encoding")
}

/// `tests/fixtures/c/fs.c` as a preview 1 command module.
pub fn fs_module() -> Vec<u8> {
    static FS: OnceLock<Vec<u8>> = OnceLock::new();
    FS.get_or_init(|| {
        let out = scratch().join("fs.wasm");
        clang(&[manifest_dir().join("tests/fixtures/c/fs.c")], &[], &out);
        std::fs::read(&out).expect("fs.wasm")
    })
    .clone()
}

/// `tests/fixtures/c/http_hello.c` as a `wasi:http/proxy` component (incoming handler).
pub fn http_component() -> Vec<u8> {
    static HTTP: OnceLock<Vec<u8>> = OnceLock::new();
    HTTP.get_or_init(|| {
        let dir = scratch().join("http");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let gen_dir = dir.join("gen");
        run(Command::new(wit_bindgen())
            .args(["c", "--world", "wasi:http/proxy@0.2.12"])
            .arg(wasi_http_wit())
            .arg("--out-dir")
            .arg(&gen_dir));
        let out = dir.join("http_hello.core.wasm");
        clang(
            &[
                manifest_dir().join("tests/fixtures/c/http_hello.c"),
                gen_dir.join("proxy.c"),
                gen_dir.join("proxy_component_type.o"),
            ],
            &[
                "-mexec-model=reactor".into(),
                format!("-I{}", gen_dir.display()),
            ],
            &out,
        );
        componentize(
            &std::fs::read(&out).expect("core module"),
            WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        )
    })
    .clone()
}

/// `tests/fixtures/c/net_probe.c` as a `wasi:cli/run` component that connects with
/// `wasi:sockets` TCP (wasi-libc for the rest, through the preview 1 command adapter).
pub fn net_probe_component() -> Vec<u8> {
    static NET: OnceLock<Vec<u8>> = OnceLock::new();
    NET.get_or_init(|| {
        let dir = scratch().join("net_probe");
        let wit = dir.join("wit");
        copy_dir(&wasi_wit().join("deps"), &wit.join("deps"));
        std::fs::copy(
            manifest_dir().join("tests/fixtures/c/net_probe.wit"),
            wit.join("net_probe.wit"),
        )
        .expect("copy net_probe.wit");
        let gen_dir = dir.join("gen");
        run(Command::new(wit_bindgen())
            .args(["c", "--world", "wasmruntime:fixtures/net-probe"])
            .arg(&wit)
            .arg("--out-dir")
            .arg(&gen_dir));
        let out = dir.join("net_probe.core.wasm");
        clang(
            &[
                manifest_dir().join("tests/fixtures/c/net_probe.c"),
                gen_dir.join("net_probe.c"),
                gen_dir.join("net_probe_component_type.o"),
            ],
            &[format!("-I{}", gen_dir.display())],
            &out,
        );
        command_component(&std::fs::read(&out).expect("core module"))
    })
    .clone()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A per-process scratch dir under the target dir (never in the source tree).
fn scratch() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join("../target"));
        let dir = target.join(format!("shim-fixtures/{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
    .clone()
}

fn clang(sources: &[PathBuf], flags: &[String], out: &Path) {
    if !Path::new("/usr/lib/wasm32-wasi/libc.a").exists() {
        panic!(
            "wasi-libc is missing: `apt-get install clang lld wasi-libc libclang-rt-dev-wasm32` \
             (Debian's C toolchain for wasm32-wasi builds the C test programs)"
        );
    }
    let mut cmd = Command::new("clang");
    cmd.args(["--target=wasm32-wasi", "-O2"])
        .args(flags)
        .args(sources)
        .arg("-o")
        .arg(out);
    run(&mut cmd);
}

/// The `wit-bindgen` binary: `$WIT_BINDGEN`, else the one `cargo xtask testbed` installs.
fn wit_bindgen() -> PathBuf {
    if let Some(p) = std::env::var_os("WIT_BINDGEN") {
        return p.into();
    }
    let bin = testbed::paths::wit_bindgen();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask testbed` (it installs wit-bindgen-cli {})",
        bin.display(),
        testbed::versions::WIT_BINDGEN
    );
    bin
}

/// The WASI 0.2 WIT files shipped inside the wasmtime-wasi-http crate we link, so the
/// guest is built against exactly the interfaces the host implements.
fn wasi_http_wit() -> PathBuf {
    crate_dir("wasmtime-wasi-http").join("wit")
}

/// wasmtime-wasi's own WASI 0.2 WIT files (cli, io, sockets, ...).
fn wasi_wit() -> PathBuf {
    crate_dir("wasmtime-wasi").join("src/p2/wit")
}

/// Source dir of a Wasmtime 48.0.8 crate in our dependency graph.
fn crate_dir(name: &str) -> PathBuf {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest_dir().join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name && p["version"] == "48.0.8")
        .unwrap_or_else(|| panic!("{name} 48.0.8 in the dependency graph"));
    let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    manifest.parent().expect("crate dir").to_path_buf()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
