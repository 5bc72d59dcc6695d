//! `run_wasi` itself, driven by a hand-made `RuntimeContext` (what containerd-shim-wasm
//! builds from the OCI spec). Outside a container the process's own mounts and cgroup are
//! used; stdio is the test process's.

use std::path::{Path, PathBuf};

use containerd_shim_wasm::sandbox::Sandbox as _;
use containerd_shim_wasm::sandbox::context::{Entrypoint, RuntimeContext, Source, WasmLayer};
use containerd_shim_wasmtime::engine::WasmEngine;
use containerd_shim_wasmtime::shim::WasmtimeSandbox;
use oci_spec::image::{Descriptor, Digest, MediaType};

use crate::fixtures::wasm;

struct Ctx {
    args: Vec<String>,
    envs: Vec<String>,
    layers: Vec<WasmLayer>,
}

impl RuntimeContext for Ctx {
    fn args(&self) -> &[String] {
        &self.args
    }

    fn envs(&self) -> &[String] {
        &self.envs
    }

    fn entrypoint(&self) -> Entrypoint<'_> {
        let arg0 = self.args.first().map(String::as_str).unwrap_or("");
        let (path, func) = arg0.split_once('#').unwrap_or((arg0, "_start"));
        Entrypoint {
            func: func.to_string(),
            name: None,
            arg0: Some(Path::new(arg0)),
            source: if self.layers.is_empty() {
                Source::File(PathBuf::from(path))
            } else {
                Source::Oci(&self.layers)
            },
        }
    }
}

fn file_ctx(path: &Path) -> Ctx {
    Ctx {
        args: vec![path.display().to_string()],
        envs: vec!["PATH=/nowhere".into()],
        layers: vec![],
    }
}

fn layer(bytes: Vec<u8>, precompiled: bool) -> WasmLayer {
    WasmLayer {
        config: Descriptor::new(
            MediaType::Other("application/vnd.wasm.content.layer.v1+wasm".into()),
            bytes.len() as u64,
            Digest::try_from(format!("sha256:{:064x}", 2)).unwrap(),
        ),
        precompiled,
        layer: bytes,
    }
}

#[tokio::test]
async fn rootfs_module_exit_code_reaches_the_container() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("exit3.wasm");
    std::fs::write(&module, wasm("exit3")).unwrap();
    let sandbox = WasmtimeSandbox;
    let ctx = file_ctx(&module);
    sandbox.can_handle(&ctx).await.unwrap();
    assert_eq!(sandbox.run_wasi(&ctx).await.unwrap(), 3);

    // `path#func` picks another export, and argv[0] loses the `#func`
    let mut ctx = file_ctx(&module);
    ctx.args[0].push_str("#_start");
    assert_eq!(sandbox.run_wasi(&ctx).await.unwrap(), 3);
}

#[tokio::test]
async fn non_wasm_entrypoint_is_refused_with_the_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("app.wasm");
    std::fs::write(&script, "echo not wasm\n").unwrap();
    let sandbox = WasmtimeSandbox;
    let err = sandbox.can_handle(&file_ctx(&script)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&script.display().to_string()), "{msg}");
    assert!(msg.contains("00 61 73 6d"), "{msg}");
    // if it gets as far as running: 126, "cannot execute"
    assert_eq!(sandbox.run_wasi(&file_ctx(&script)).await.unwrap(), 126);
}

#[tokio::test]
async fn missing_entrypoint_is_127() {
    let sandbox = WasmtimeSandbox;
    let ctx = file_ctx(Path::new("/definitely/not/here.wasm"));
    let err = sandbox.can_handle(&ctx).await.unwrap_err();
    assert!(
        err.to_string().contains("/definitely/not/here.wasm"),
        "{err}"
    );
    assert_eq!(sandbox.run_wasi(&ctx).await.unwrap(), 127);
}

/// Layers are compiled (or taken from the shim's own cache); precompiled native code in an
/// image is never loaded: it is not Wasm, so the container cannot run (126).
#[tokio::test]
async fn oci_layers_plain_and_precompiled() {
    let sandbox = WasmtimeSandbox;
    let plain = Ctx {
        args: vec!["exit3".into()],
        envs: vec![],
        layers: vec![layer(wasm("exit3"), false), layer(b"{}".to_vec(), false)],
    };
    assert_eq!(sandbox.run_wasi(&plain).await.unwrap(), 3);

    let engine = WasmEngine::new().unwrap();
    let artifact = engine.precompile("exit3", &wasm("exit3")).unwrap();
    let pre = Ctx {
        args: vec!["exit3".into()],
        envs: vec![],
        layers: vec![layer(artifact, true)],
    };
    assert_eq!(sandbox.run_wasi(&pre).await.unwrap(), 126);

    let two = Ctx {
        args: vec!["x".into()],
        envs: vec![],
        layers: vec![layer(wasm("exit3"), false), layer(wasm("hello"), false)],
    };
    assert_eq!(sandbox.run_wasi(&two).await.unwrap(), 126);
}

const CHILD_ENV: &str = "SHIM_TEST_SIGTERM_CHILD";

/// The SIGTERM handler `run_wasi` installs, tested on a real process: this test re-runs
/// itself (its own binary, only this test selected) with `CHILD_ENV` set, where it runs the
/// spinning guest instead; the parent waits for the guest to print "ready", sends SIGTERM
/// with kill(1) and times the exit. (One test with two roles rather than an `#[ignore]`d
/// helper test, so no test is reported as skipped.)
#[test]
fn sigterm_stops_a_spinning_guest_with_143_within_a_second() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    if std::env::var_os(CHILD_ENV).is_some() {
        sigterm_child();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::sigterm_stops_a_spinning_guest_with_143_within_a_second",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().contains("ready") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let sent = Instant::now();
    let exit = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(exit.code(), Some(143), "{exit:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// The child's role: run the spinning guest as a container init would, exit with its code.
fn sigterm_child() -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("spin.wasm");
    std::fs::write(&module, wasm("ready_spin")).unwrap();
    let code = runtime
        .block_on(WasmtimeSandbox.run_wasi(&file_ctx(&module)))
        .unwrap();
    // what containerd-shim-wasm's executor does with the result
    std::process::exit(code);
}
