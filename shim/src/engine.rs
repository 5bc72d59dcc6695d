//! Compile and run one guest: a WASI preview 1 core module (`_start`) or a WASI preview 2
//! component exporting `wasi:cli/run`.
//!
//! `run_wasi` in [`crate::shim`] is a thin adapter over [`WasmEngine::run`]; the tests call
//! `run` directly with captured stdio, so they go through the same linking, preopens,
//! limits and stop logic as a container does.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig, Precompiled,
    Store, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::error::{BoxError, Error};
use crate::limits::MemoryLimiter;
use crate::mounts::Preopen;

/// After a stop request, how long a guest blocked in a host call (sleep, read) may take
/// before it is abandoned. A spinning guest stops at the next epoch check, well before.
/// Kept under a second so SIGTERM -> exit 143 stays within the 1 s promise.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// What the two kinds of Wasm binary look like; decided from the header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    Module,
    Component,
}

impl WasmKind {
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        match bytes.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(Self::Module),
            [0, b'a', b's', b'm', 0x0d, 0, 1, 0] => Some(Self::Component),
            _ => None,
        }
    }
}

/// Checks the header and names the file in the error, so a user who put a shell script or
/// a native binary behind a `.wasm` entrypoint learns what is wrong from the error alone.
pub fn check_wasm(origin: &str, bytes: &[u8]) -> Result<WasmKind, Error> {
    WasmKind::detect(bytes).ok_or_else(|| Error::NotWasm {
        origin: origin.to_string(),
        found: describe_header(bytes),
    })
}

fn describe_header(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".to_string();
    }
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let kind = match head {
        [0x7f, b'E', b'L', b'F', ..] => " (an ELF executable)",
        [b'#', b'!', ..] => " (a script)",
        [0, b'a', b's', b'm', ..] => " (Wasm magic with an unknown version)",
        _ => "",
    };
    format!("{}{kind}", hex.join(" "))
}

/// A compiled guest, ready to instantiate.
#[derive(Clone)]
pub enum Guest {
    Module(Module),
    Component(Component),
}

/// How a guest ended, and the container exit code a runc user would expect for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `proc_exit(n)` / `wasi:cli/exit`, or returning from `_start`/`run` (0, or 1 when a
    /// component's `run` returns an error).
    Exited(i32),
    /// The resource limiter refused a `memory.grow`; exit 137 like an OOM kill.
    MemoryLimitExceeded { limit: u64, requested: u64 },
    /// Stopped after a stop request (SIGTERM); exit 143 = 128 + SIGTERM.
    Stopped,
    /// The guest trapped (unreachable, out-of-bounds, stack overflow: a Rust panic ends
    /// here). Exit 134 = 128 + SIGABRT, as for a crashing native program and the Wasmtime
    /// CLI.
    Trapped(String),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::MemoryLimitExceeded { .. } => 137,
            Outcome::Stopped => 143,
            Outcome::Trapped(_) => 134,
        }
    }
}

/// Guest network access (`wasi:sockets`, outgoing `wasi:http`). Preview 1 modules have no
/// way to create sockets at all, so this only matters for components. Listening on the
/// container's HTTP port is the host's doing and always allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkPolicy {
    #[default]
    Deny,
    Allow,
}

impl NetworkPolicy {
    /// The container decides with `WASMRUNTIME_NETWORK=allow|deny` in its env, the pod
    /// with the annotation `wasmruntime.dev/network` ([`crate::knobs`]); without either
    /// (or with another value, logged) the node's default applies, which is the
    /// WasmRuntime's `spec.wasm.network` from `options.json`.
    pub fn resolve(
        env: &[(String, String)],
        annotations: &HashMap<String, String>,
        default: NetworkPolicy,
    ) -> Self {
        match crate::knobs::NETWORK.lookup(env, annotations) {
            Some(s) if s.value.eq_ignore_ascii_case("allow") => NetworkPolicy::Allow,
            Some(s) if s.value.eq_ignore_ascii_case("deny") => NetworkPolicy::Deny,
            Some(s) => {
                tracing::warn!(value = %s.value, origin = %s.origin, ?default, "unknown network setting (allow|deny), the node default applies");
                default
            }
            None => default,
        }
    }
}

/// Where the guest's stdout/stderr go.
#[derive(Clone)]
pub enum Stdio {
    /// The process's own fds: in the container these are containerd's log pipes/FIFOs.
    Inherit,
    /// In-memory pipes, for tests.
    Capture(Captured),
}

#[derive(Clone)]
pub struct Captured {
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

impl Default for Captured {
    fn default() -> Self {
        Self {
            stdout: MemoryOutputPipe::new(1 << 20),
            stderr: MemoryOutputPipe::new(1 << 20),
        }
    }
}

impl Captured {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.contents()).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }
}

/// Everything about one run that comes from the container.
#[derive(Clone)]
pub struct RunConfig {
    /// argv, `args[0]` included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Guest-visible working directory (components get it as `initial-cwd`; modules get
    /// it as a `.` preopen, see [`crate::mounts::cwd_preopen`]).
    pub cwd: Option<String>,
    pub preopens: Vec<Preopen>,
    /// Cap on the sum of guest linear memories, in bytes.
    pub memory_limit: Option<u64>,
    pub network: NetworkPolicy,
    /// The container spec's annotations (the pod's `wasmruntime.dev/*` ones under CRI).
    pub annotations: HashMap<String, String>,
    pub stdio: Stdio,
    /// Export to call on a core module (`path#func` in the entrypoint); default `_start`.
    pub func: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            preopens: Vec::new(),
            memory_limit: None,
            network: NetworkPolicy::Deny,
            annotations: HashMap::new(),
            stdio: Stdio::Inherit,
            func: "_start".to_string(),
        }
    }
}

/// Asks a running guest to stop: sets a flag the epoch callback checks, then bumps the
/// engine epoch so every store on the engine runs its callback at the next check.
/// Stores that were not asked to stop simply continue.
#[derive(Clone)]
pub struct StopHandle {
    requested: Arc<watch::Sender<bool>>,
    engine: Engine,
}

impl StopHandle {
    pub fn stop(&self) {
        self.requested.send_replace(true);
        self.engine.increment_epoch();
    }

    pub fn is_requested(&self) -> bool {
        *self.requested.borrow()
    }

    pub(crate) async fn requested(&self) {
        let mut rx = self.requested.subscribe();
        // Err only if the sender is gone, and we hold it.
        let _ = rx.wait_for(|r| *r).await;
    }
}

/// The Wasmtime engine with the settings every compile and run uses. The settings are part
/// of the cache key ([`WasmEngine::compatibility_key`]).
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
}

impl WasmEngine {
    pub fn new() -> Result<Self, Error> {
        Self::with_config(Self::config())
    }

    /// The same engine with the pooling instance allocator `pool`, for servers that
    /// instantiate once per request (`wasi:http`, see [`crate::http::pool_config`]):
    /// linear memories, tables and stacks are reused from a pool reserved up front instead
    /// of being mmap'd and unmapped per request, which is what `wasmtime serve` does too.
    /// The pool costs address space (terabytes, reserved, not committed), so one-shot
    /// guests do not get it. The allocation strategy does not change compiled code:
    /// artifacts move between the two engines (see [`WasmEngine::adopt`]) and share cache
    /// entries.
    pub fn pooling(pool: PoolingAllocationConfig) -> Result<Self, Error> {
        let mut config = Self::config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        Self::with_config(config)
    }

    fn config() -> Config {
        let mut config = Config::new();
        config
            // how SIGTERM reaches a guest that never calls the host
            .epoch_interruption(true)
            .wasm_component_model(true)
            // real-world toolchains already emit exception-handling code
            .wasm_exceptions(true);
        config
    }

    fn with_config(config: Config) -> Result<Self, Error> {
        let engine = Engine::new(&config).map_err(|e| Error::Engine(e.into()))?;
        Ok(Self { engine })
    }

    /// `component`, compiled for another engine of the same settings, as this engine's:
    /// serialized and loaded again (a copy of the compiled code, no compilation).
    pub fn adopt(&self, component: &Component) -> Result<Component, Error> {
        let bytes = self.serialize(&Guest::Component(component.clone()))?;
        match self.deserialize("the component", &bytes)? {
            Guest::Component(c) => Ok(c),
            Guest::Module(_) => Err(Error::Deserialize {
                origin: "the component".to_string(),
                source: "a serialized component loaded as a core module".into(),
            }),
        }
    }

    pub fn inner(&self) -> &Engine {
        &self.engine
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            requested: Arc::new(watch::Sender::new(false)),
            engine: self.engine.clone(),
        }
    }

    /// A stable string naming the Wasmtime version and every engine setting that affects
    /// compiled code: precompiled artifacts are only valid under the same key.
    /// SHA-256 rather than `DefaultHasher`, whose output may change between Rust releases.
    pub fn compatibility_key(&self) -> String {
        let mut hasher = ShaHasher(Sha256::new());
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let digest = hasher.0.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn compile(&self, origin: &str, bytes: &[u8]) -> Result<Guest, Error> {
        let compiled = match check_wasm(origin, bytes)? {
            WasmKind::Module => Module::new(&self.engine, bytes).map(Guest::Module),
            WasmKind::Component => Component::new(&self.engine, bytes).map(Guest::Component),
        };
        compiled.map_err(|e| Error::Compile {
            origin: origin.to_string(),
            source: e.into(),
        })
    }

    /// Ahead-of-time compilation to Wasmtime's native artifact format.
    pub fn precompile(&self, origin: &str, bytes: &[u8]) -> Result<Vec<u8>, Error> {
        let compiled = match check_wasm(origin, bytes)? {
            WasmKind::Module => self.engine.precompile_module(bytes),
            WasmKind::Component => self.engine.precompile_component(bytes),
        };
        compiled.map_err(|e| Error::Compile {
            origin: origin.to_string(),
            source: e.into(),
        })
    }

    pub fn serialize(&self, guest: &Guest) -> Result<Vec<u8>, Error> {
        match guest {
            Guest::Module(m) => m.serialize(),
            Guest::Component(c) => c.serialize(),
        }
        .map_err(|e| Error::Compile {
            origin: "serializing compiled code".to_string(),
            source: e.into(),
        })
    }

    /// Loads a precompiled artifact. Only ever fed bytes this shim produced (the root-only
    /// cache directory). Wasmtime itself rejects artifacts from another version or engine
    /// configuration.
    pub fn deserialize(&self, origin: &str, bytes: &[u8]) -> Result<Guest, Error> {
        let err = |source: BoxError| Error::Deserialize {
            origin: origin.to_string(),
            source,
        };
        // SAFETY: `deserialize` trusts that the bytes are Wasmtime output (it maps them as
        // code). Callers only pass artifacts produced by `precompile`/`serialize` of this
        // binary, stored where only root can write (see `crate::cache`).
        #[allow(unsafe_code)]
        let guest = match Engine::detect_precompiled(bytes) {
            Some(Precompiled::Module) => unsafe { Module::deserialize(&self.engine, bytes) }
                .map(Guest::Module)
                .map_err(|e| err(e.into()))?,
            Some(Precompiled::Component) => unsafe { Component::deserialize(&self.engine, bytes) }
                .map(Guest::Component)
                .map_err(|e| err(e.into()))?,
            None => return Err(err("not a Wasmtime precompiled artifact".into())),
        };
        Ok(guest)
    }

    /// Runs the guest to completion, or until `stop` is used.
    pub async fn run(
        &self,
        guest: &Guest,
        cfg: RunConfig,
        stop: &StopHandle,
    ) -> Result<Outcome, Error> {
        let run = async {
            match guest {
                Guest::Module(m) => self.run_module(m, &cfg, stop).await,
                Guest::Component(c) => self.run_component(c, &cfg, stop).await,
            }
        };
        tokio::select! {
            outcome = run => outcome,
            // A guest inside a blocking host call never reaches an epoch check: drop its
            // future (Wasmtime supports cancelling async calls) once the grace is over.
            () = async { stop.requested().await; tokio::time::sleep(STOP_GRACE).await } => {
                tracing::warn!("guest did not stop within {STOP_GRACE:?} of the request; abandoning it");
                Ok(Outcome::Stopped)
            }
        }
    }

    async fn run_module(
        &self,
        module: &Module,
        cfg: &RunConfig,
        stop: &StopHandle,
    ) -> Result<Outcome, Error> {
        let mut linker = wasmtime::Linker::<ModuleState>::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi)
            .map_err(|e| Error::Instantiate(e.into()))?;
        let state = ModuleState {
            wasi: wasi_builder(cfg)?.build_p1(),
            limiter: MemoryLimiter::new(cfg.memory_limit),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm_stop(&mut store, stop);

        let instance = match linker.instantiate_async(&mut store, module).await {
            Ok(i) => i,
            Err(e) => return settle(e, Error::Instantiate),
        };
        let func = instance
            .get_typed_func::<(), ()>(&mut store, &cfg.func)
            .map_err(|_| Error::Unsupported {
                origin: "the module".to_string(),
                reason: format!(
                    "no exported function `{}` taking and returning nothing (a WASI command \
                     module exports `_start`)",
                    cfg.func
                ),
            })?;
        match func.call_async(&mut store, ()).await {
            Ok(()) => Ok(Outcome::Exited(0)),
            Err(e) => settle(e, Error::Run),
        }
    }

    async fn run_component(
        &self,
        component: &Component,
        cfg: &RunConfig,
        stop: &StopHandle,
    ) -> Result<Outcome, Error> {
        let exports = self.component_exports(component);
        if !exports.iter().any(|e| e.starts_with("wasi:cli/run@")) {
            if exports
                .iter()
                .any(|e| e.starts_with(crate::http::INCOMING_HANDLER))
            {
                let port = crate::http::port(&cfg.env, &cfg.annotations)?;
                let listener = crate::http::bind(port).await?;
                return crate::http::serve(self, component, cfg, stop, listener).await;
            }
            return Err(Error::Unsupported {
                origin: "the component".to_string(),
                reason: format!(
                    "the component exports neither wasi:cli/run nor \
                     wasi:http/incoming-handler (exports: {exports:?})"
                ),
            });
        }

        let mut linker = wasmtime::component::Linker::<ComponentState>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Instantiate(e.into()))?;
        let state = ComponentState {
            wasi: wasi_builder(cfg)?.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(cfg.memory_limit),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm_stop(&mut store, stop);

        let command = match Command::instantiate_async(&mut store, component, &linker).await {
            Ok(c) => c,
            Err(e) => return settle(e, Error::Instantiate),
        };
        match command.wasi_cli_run().call_run(&mut store).await {
            Ok(Ok(())) => Ok(Outcome::Exited(0)),
            Ok(Err(())) => Ok(Outcome::Exited(1)),
            Err(e) => settle(e, Error::Run),
        }
    }

    /// Names of the component's top-level exports (`wasi:cli/run@0.2.x`, ...).
    pub fn component_exports(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }
}

struct ModuleState {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
}

struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

pub(crate) fn wasi_builder(cfg: &RunConfig) -> Result<WasiCtxBuilder, Error> {
    let mut b = WasiCtxBuilder::new();
    b.args(&cfg.args).envs(&cfg.env);
    match &cfg.stdio {
        Stdio::Inherit => {
            b.inherit_stdio();
        }
        Stdio::Capture(c) => {
            b.stdout(c.stdout.clone()).stderr(c.stderr.clone());
        }
    }
    if let Some(cwd) = &cfg.cwd {
        b.initial_cwd(cwd);
    }
    for p in &cfg.preopens {
        let perms = if p.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        if let Err(e) = b.preopened_dir(&p.host, &p.guest, perms) {
            // a mount that went away after the mount table was read cannot be offered
            // (the root always can)
            let gone = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound);
            if gone && p.guest != "/" {
                tracing::debug!(host = %p.host.display(), "mount gone before the guest started");
                continue;
            }
            return Err(Error::Preopen {
                host: p.host.clone(),
                guest: p.guest.clone(),
                source: e.into(),
            });
        }
    }
    match cfg.network {
        // The builder's default address check already denies every address; switching
        // the protocols and name lookup off too makes the denial explicit and early.
        NetworkPolicy::Deny => {
            b.allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false);
        }
        NetworkPolicy::Allow => {
            b.inherit_network()
                .allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true);
        }
    }
    Ok(b)
}

/// Epoch deadline one tick ahead: the first `increment_epoch` makes every store on the
/// engine run this callback, which traps only if this run was asked to stop.
fn arm_stop<T: 'static>(store: &mut Store<T>, stop: &StopHandle) {
    let stop = stop.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if stop.is_requested() {
            Err(Error::Stopped.into())
        } else {
            Ok(UpdateDeadline::Continue(1))
        }
    });
}

/// Sorts a Wasmtime error into a normal ending (exit, limit, stop, trap) or a failure of
/// the shim, wrapped with `fail` (instantiation vs. run).
fn settle(e: wasmtime::Error, fail: fn(BoxError) -> Error) -> Result<Outcome, Error> {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Ok(Outcome::Exited(exit.0));
    }
    let ours = e.chain().find_map(|cause| cause.downcast_ref::<Error>());
    match ours {
        Some(Error::MemoryLimitExceeded { limit, requested }) => {
            return Ok(Outcome::MemoryLimitExceeded {
                limit: *limit,
                requested: *requested,
            });
        }
        Some(Error::Stopped) => return Ok(Outcome::Stopped),
        _ => {}
    }
    if e.downcast_ref::<wasmtime::Trap>().is_some() {
        return Ok(Outcome::Trapped(format!("{e:?}")));
    }
    Err(fail(e.into()))
}

/// Feeds `Hash` output into SHA-256 (see [`WasmEngine::compatibility_key`]).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::Preopen;

    #[test]
    fn a_mount_gone_before_the_guest_starts_is_skipped_but_not_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let cfg = |guest: &str| RunConfig {
            preopens: vec![Preopen {
                host: gone.clone(),
                guest: guest.to_string(),
                writable: false,
            }],
            ..Default::default()
        };
        assert!(wasi_builder(&cfg("/data")).is_ok());
        assert!(matches!(
            wasi_builder(&cfg("/")),
            Err(Error::Preopen { .. })
        ));
    }
}
