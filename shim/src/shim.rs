//! Glue between containerd-shim-wasm and the [`engine`](crate::engine).
//!
//! containerd-shim-wasm runs `Sandbox::run_wasi` in the container's init process (a youki
//! container whose "executable" is this function) after namespaces, cgroups, mounts,
//! `pivot_root`, `chdir(cwd)` and seccomp are done; its return value becomes the process
//! exit status. Everything here therefore sees the container's view of the world.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_wasm::sandbox::Sandbox;
use containerd_shim_wasm::sandbox::context::{RuntimeContext, Source, WasmLayer};
use tokio::signal::unix::{SignalKind, signal};

use crate::cache;
use crate::engine::{
    Guest, NetworkPolicy, Outcome, RunConfig, Stdio, StopHandle, WasmEngine, WasmKind, check_wasm,
};
use crate::error::{Error, chain};
use crate::{limits, mounts, options};

/// Layer media types taken from OCI Wasm artifacts: runwasi's two, the `w3c` module type
/// some older tools push, and the CNCF TAG Runtime Wasm artifact layer (whose image config
/// `application/vnd.wasm.config.v0+json` carries `architecture: wasm`, which is what
/// containerd-shim-wasm checks before looking at layers).
pub const SUPPORTED_LAYER_TYPES: &[&str] = &[
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.w3c.wasm.module.v1+wasm",
];

/// After SIGTERM, the hard deadline for the whole process: the engine abandons a guest
/// stuck in a host call after [`crate::engine::STOP_GRACE`]; this catches anything else.
const HARD_STOP: Duration = Duration::from_millis(900);

#[derive(Default)]
pub struct WasmtimeSandbox;

impl WasmtimeSandbox {
    /// Runs the container's guest: its exit code, and whether it ended by outgrowing its
    /// memory limit (the caller reports that as an OOM kill). `annotations` are the
    /// container spec's ([`crate::knobs`]).
    pub async fn run(
        ctx: &impl RuntimeContext,
        annotations: &HashMap<String, String>,
    ) -> (i32, bool) {
        match Self::prepare(ctx, annotations) {
            Ok(prepared) => Self::run_prepared(prepared).await,
            Err(code) => (code, false),
        }
    }

    /// The synchronous half of [`WasmtimeSandbox::run`]: loads (or compiles) the guest
    /// and works out its configuration, before any async runtime exists, so the caller can
    /// size one for it ([`Prepared::runtime_workers`]). On failure, the exit code.
    pub fn prepare(
        ctx: &impl RuntimeContext,
        annotations: &HashMap<String, String>,
    ) -> Result<Prepared, i32> {
        prepare(ctx, annotations).map_err(|e| cannot_run(&e))
    }

    /// The asynchronous half of [`WasmtimeSandbox::run`], inside a tokio runtime.
    pub async fn run_prepared(prepared: Prepared) -> (i32, bool) {
        match prepared.run().await {
            Ok(outcome) => {
                report(&outcome);
                let oom = matches!(outcome, Outcome::MemoryLimitExceeded { .. });
                (outcome.exit_code(), oom)
            }
            Err(e) => (cannot_run(&e), false),
        }
    }
}

/// A container that cannot start gets what a shell gives a command it cannot run: 127 not
/// found, 126 not runnable; the reason goes to the container log.
fn cannot_run(e: &Error) -> i32 {
    let code = match e {
        Error::EntrypointNotFound { .. } => 127,
        _ => 126,
    };
    eprintln!("containerd-shim-wasmtime: {}", chain(e));
    tracing::error!(error = %chain(e), code, "container cannot run");
    code
}

/// A loaded guest with its engine and configuration ([`WasmtimeSandbox::prepare`]).
pub struct Prepared {
    engine: WasmEngine,
    guest: Guest,
    cfg: RunConfig,
}

impl Prepared {
    /// Worker threads the guest's async runtime needs: [`runtime_workers`] of its kind.
    pub fn runtime_workers(&self) -> Option<usize> {
        runtime_workers(match self.guest {
            Guest::Module(_) => WasmKind::Module,
            Guest::Component(_) => WasmKind::Component,
        })
    }

    async fn run(self) -> Result<Outcome, Error> {
        let stop = self.engine.stop_handle();
        let watcher = stop_on_sigterm(stop.clone());
        let outcome = self.engine.run(&self.guest, self.cfg, &stop).await;
        if let Some(w) = watcher {
            w.abort();
        }
        outcome
    }
}

/// Worker threads of a container's async runtime, beside the thread that drives the guest
/// (`block_on`). A core module has only the SIGTERM watch and its timers beside it: one
/// worker. A component may be a wasi:http server whose connections run on the workers:
/// tokio's default, one per CPU the container may use (`None`). containerd-shim-wasm's
/// ambient runtime always starts one per CPU, which on a 64-CPU node is 64 idle threads in
/// every Wasm container.
pub fn runtime_workers(kind: WasmKind) -> Option<usize> {
    match kind {
        WasmKind::Module => Some(1),
        WasmKind::Component => None,
    }
}

/// containerd-shim-wasm's engine interface, kept for its test helpers and for embedding
/// the engine elsewhere; the shim itself calls [`WasmtimeSandbox::run`].
impl Sandbox for WasmtimeSandbox {
    async fn run_wasi(&self, ctx: &impl RuntimeContext) -> anyhow::Result<i32> {
        Ok(Self::run(ctx, &HashMap::new()).await.0)
    }

    /// Runs at container start; replaces the library's check (which also accepts `.wat`)
    /// with one whose error names the file and the expected magic bytes. Native
    /// executables never get here: the library runs ELF and `#!` entrypoints as ordinary
    /// Linux processes (the pod's pause container, sidecars).
    async fn can_handle(&self, ctx: &impl RuntimeContext) -> anyhow::Result<()> {
        let Source::File(path) = ctx.entrypoint().source else {
            return Ok(());
        };
        let env = env_pairs(ctx.envs());
        let checked = resolve_entrypoint(&path, &env).and_then(|resolved| {
            let head = read_head(&resolved)?;
            check_wasm(&resolved.display().to_string(), &head).map(|_| ())
        });
        if let Err(e) = &checked {
            // The library only logs "can't handle"; put the reason in the container log.
            eprintln!("containerd-shim-wasmtime: {e}");
        }
        Ok(checked?)
    }
}

fn prepare(
    ctx: &impl RuntimeContext,
    annotations: &HashMap<String, String>,
) -> Result<Prepared, Error> {
    let node = options::loaded();
    if let Some(problem) = &node.problem {
        tracing::warn!(%problem, "options.json unusable; node defaults apply (network denied)");
    }
    let env = env_pairs(ctx.envs());
    let entrypoint = ctx.entrypoint();
    let engine = WasmEngine::new()?;

    let guest = match &entrypoint.source {
        Source::File(path) => {
            let resolved = resolve_entrypoint(path, &env)?;
            let origin = resolved.display().to_string();
            let wasm = std::fs::read(&resolved).map_err(|source| Error::ReadEntrypoint {
                path: origin.clone(),
                source,
            })?;
            // Closed at the end of this block, before any guest code runs (see cache docs).
            let cache = cache::take_inherited();
            cache::load_or_compile(&engine, cache.as_ref(), &origin, &wasm)?
        }
        Source::Oci(layers) => {
            let cache = cache::take_inherited();
            load_oci(&engine, cache.as_ref(), layers)?
        }
    };

    let cwd = std::env::current_dir().ok();
    let mut args = ctx.args().to_vec();
    if let Some(arg0) = args.first_mut()
        && let Some((path, _func)) = arg0.split_once('#')
    {
        *arg0 = path.to_string();
    }
    let cfg = RunConfig {
        args,
        network: NetworkPolicy::resolve(&env, annotations, node.options.network),
        env,
        annotations: annotations.clone(),
        cwd: cwd.as_ref().and_then(|c| c.to_str()).map(str::to_string),
        preopens: mounts::container_preopens(cwd.as_deref()),
        memory_limit: limits::container_memory_limit().or(node.options.default_memory_limit_bytes),
        stdio: Stdio::Inherit,
        func: entrypoint.func,
    };
    tracing::info!(
        kind = match guest { Guest::Module(_) => "module", Guest::Component(_) => "component" },
        preopens = ?cfg.preopens,
        memory_limit = ?cfg.memory_limit,
        network = ?cfg.network,
        "starting guest"
    );
    Ok(Prepared { engine, guest, cfg })
}

/// The one Wasm layer of an OCI artifact, through the same file cache as rootfs modules.
fn load_oci(
    engine: &WasmEngine,
    cache: Option<&cache::ModuleCache>,
    layers: &[WasmLayer],
) -> Result<Guest, Error> {
    let wasm: Vec<&WasmLayer> = layers
        .iter()
        .filter(|l| WasmKind::detect(&l.layer).is_some())
        .collect();
    match wasm.as_slice() {
        [layer] => {
            let origin = format!("OCI layer {}", layer.config.digest());
            cache::load_or_compile(engine, cache, &origin, &layer.layer)
        }
        // Layers of a Wasm media type that hold something else: say what they hold.
        [] if !layers.is_empty() => {
            let first = &layers[0];
            check_wasm(
                &format!("OCI layer {}", first.config.digest()),
                &first.layer,
            )
            .and(Err(Error::LayerCount { count: 0 }))
        }
        other => Err(Error::LayerCount { count: other.len() }),
    }
}

/// SIGTERM: ask the engine to stop the guest (epoch interruption), and exit 143 regardless
/// at [`HARD_STOP`]. The handler matters: the guest runs as PID 1 of the container's PID
/// namespace, where a signal without a handler is ignored, so without it the container
/// would only die at SIGKILL after the grace period.
fn stop_on_sigterm(stop: StopHandle) -> Option<tokio::task::JoinHandle<()>> {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM; the container stops only on SIGKILL");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        term.recv().await;
        tracing::info!("SIGTERM: stopping the guest");
        stop.stop();
        tokio::time::sleep(HARD_STOP).await;
        tracing::warn!("guest still running {HARD_STOP:?} after SIGTERM; exiting 143");
        std::process::exit(143);
    }))
}

fn report(outcome: &Outcome) {
    match outcome {
        Outcome::Exited(code) => tracing::info!(code, "guest exited"),
        Outcome::MemoryLimitExceeded { limit, requested } => {
            eprintln!(
                "containerd-shim-wasmtime: guest memory would grow to {requested} bytes, above \
                 the container limit of {limit} bytes; exiting 137 as an OOM kill would"
            );
            tracing::warn!(limit, requested, "memory limit exceeded");
        }
        Outcome::Stopped => tracing::info!("guest stopped by SIGTERM"),
        Outcome::Trapped(trap) => {
            eprintln!("containerd-shim-wasmtime: guest trapped: {trap}");
            tracing::warn!(%trap, "guest trapped");
        }
    }
}

/// `K=V` strings from the OCI spec into pairs; an entry without `=` is a key with an
/// empty value.
pub fn env_pairs(envs: &[String]) -> Vec<(String, String)> {
    envs.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds the entrypoint as runc would: a path with a `/` is used as is (relative to the
/// working directory); a bare name is looked up in the container's `PATH`, then the
/// working directory.
pub fn resolve_entrypoint(path: &Path, env: &[(String, String)]) -> Result<PathBuf, Error> {
    let not_found = || Error::EntrypointNotFound {
        path: path.display().to_string(),
    };
    if path.as_os_str().is_empty() {
        return Err(Error::EntrypointNotFound {
            path: "(empty process.args[0])".to_string(),
        });
    }
    if path.components().count() > 1 {
        return path
            .is_file()
            .then(|| path.to_path_buf())
            .ok_or_else(not_found);
    }
    let search = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    search
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(path))
        .chain(std::iter::once(path.to_path_buf()))
        .find(|p| p.is_file())
        .ok_or_else(not_found)
}

fn read_head(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read as _;
    let err = |source| Error::ReadEntrypoint {
        path: path.display().to_string(),
        source,
    };
    let mut head = Vec::with_capacity(8);
    std::fs::File::open(path)
        .map_err(err)?
        .take(8)
        .read_to_end(&mut head)
        .map_err(err)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_workers_by_kind() {
        let cases = [(WasmKind::Module, Some(1)), (WasmKind::Component, None)];
        for (kind, want) in cases {
            assert_eq!(runtime_workers(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn env_pairs_split_at_first_equals() {
        let got = env_pairs(&["A=1".into(), "B=x=y".into(), "C".into()]);
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ]
        );
    }

    #[test]
    fn entrypoint_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("app.wasm"), b"x").unwrap();
        let env = vec![("PATH".to_string(), bin.display().to_string())];
        assert_eq!(
            resolve_entrypoint(Path::new("app.wasm"), &env).unwrap(),
            bin.join("app.wasm")
        );
        assert_eq!(
            resolve_entrypoint(&bin.join("app.wasm"), &[]).unwrap(),
            bin.join("app.wasm")
        );
        let missing = resolve_entrypoint(&bin.join("nope.wasm"), &env).unwrap_err();
        assert!(missing.to_string().contains("nope.wasm"), "{missing}");
    }

    #[test]
    fn layer_types_include_cncf_and_runwasi() {
        for t in [
            "application/vnd.wasm.content.layer.v1+wasm",
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            "application/wasm",
        ] {
            assert!(SUPPORTED_LAYER_TYPES.contains(&t), "{t}");
        }
    }
}
