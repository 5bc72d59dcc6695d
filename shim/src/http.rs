//! Serves a component exporting `wasi:http/incoming-handler` over HTTP/1.1: one fresh
//! instance per request (what `wasmtime serve` does), on the container's port.
//!
//! The port is `WASMRUNTIME_HTTP_PORT` from the container env, else the pod annotation
//! `wasmruntime.dev/http-port` ([`crate::knobs`]), else 8080, on all addresses
//! of the container's network namespace (a pod's, or the host's with `ctr run --net-host`).
//! Listening is always allowed; outgoing `wasi:http` requests and `wasi:sockets` follow the
//! container's [`NetworkPolicy`].
//!
//! Shutdown: when the [`StopHandle`] fires (SIGTERM) the listener closes, idle keep-alive
//! connections are closed, in-flight requests may finish; [`WasmEngine::run`] abandons
//! whatever is still running after [`crate::engine::STOP_GRACE`]. The outcome is
//! [`Outcome::Stopped`] either way (exit 143, like a native server ended by SIGTERM).

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hyper::server::conn::http1;
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Enabled, PoolingAllocationConfig, Store, UpdateDeadline};
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::{NetworkPolicy, Outcome, RunConfig, StopHandle, WasmEngine, wasi_builder};
use crate::error::Error;
use crate::limits::MemoryLimiter;

pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// The export that makes a component an HTTP handler (any 0.2.x).
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// The port from the container env (`WASMRUNTIME_HTTP_PORT`), else the pod annotation
/// (`wasmruntime.dev/http-port`), else the default. A value that is not a port is an
/// error naming where it came from: serving elsewhere than asked would look like a hang.
pub fn port(env: &[(String, String)], annotations: &HashMap<String, String>) -> Result<u16, Error> {
    match crate::knobs::HTTP_PORT.lookup(env, annotations) {
        None => Ok(DEFAULT_HTTP_PORT),
        Some(s) => s
            .value
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::Unsupported {
                origin: s.origin,
                reason: format!("{:?} is not a TCP port number (1-65535)", s.value),
            }),
    }
}

/// Binds the container's HTTP port on every address (IPv6 socket that also takes IPv4,
/// falling back to IPv4 only where IPv6 is off).
pub async fn bind(port: u16) -> Result<TcpListener, Error> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match TcpListener::bind(v6).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .map_err(|e| Error::Listen { port, source: e }),
    }
}

struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    hooks: Hooks,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Default hooks, except that outgoing requests are refused (as an unsupported scheme)
/// unless the network is allowed.
struct Hooks {
    network: NetworkPolicy,
}

impl WasiHttpHooks for Hooks {
    fn is_supported_scheme(&mut self, scheme: &http::uri::Scheme) -> bool {
        self.network == NetworkPolicy::Allow
            && (*scheme == http::uri::Scheme::HTTP || *scheme == http::uri::Scheme::HTTPS)
    }
}

struct Server {
    pre: ProxyPre<RequestState>,
    /// The container's config without preopens: those are opened once, in `preopens`.
    cfg: RunConfig,
    preopens: WasiFilesystemCtx,
}

impl Server {
    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, std::io::Error> {
        // hyper needs a concrete error type here; the reason is logged and the client
        // sees the connection fail, as with `wasmtime serve`.
        let fail = |why: String| {
            tracing::warn!(error = %why, "request failed");
            std::io::Error::other(why)
        };
        let state = RequestState {
            wasi: {
                let mut wasi = wasi_builder(&self.cfg)
                    .map_err(|e| fail(e.to_string()))?
                    .build();
                *wasi.filesystem() = self.preopens.clone();
                wasi
            },
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.cfg.memory_limit),
            hooks: Hooks {
                network: self.cfg.network,
            },
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // In-flight requests are not interrupted by a stop request (they get the grace
        // period instead), so the epoch callback only keeps them going.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Continue(1)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| fail(format!("{e:?}")))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(|e| fail(format!("{e:?}")))?;
        let pre = self.pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(store, req, out)
                .await
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(fail(format!("guest answered with error {code:?}"))),
            Err(_) => {
                let why = match task.await {
                    Ok(Ok(())) => "the guest returned without setting a response".to_string(),
                    Ok(Err(e)) => format!("{e:?}"),
                    Err(e) => e.to_string(),
                };
                Err(fail(why))
            }
        }
    }
}

/// Bytes of each pooled linear memory (and table) kept resident between the requests
/// that reuse its slot, when the kernel reports which pages a request touched
/// (`PAGEMAP_SCAN`, Linux 6.7+): only those are reset, with `memset`. The next request
/// in the slot then takes no page faults, and freeing the slot needs no `madvise` and no
/// TLB shootdown across the runtime's threads. (With Wasmtime's default of 0 every
/// request paid for all three: over a quarter of the server's CPU time in a `perf`
/// profile of `cargo xtask bench shim`, as much as `wasmtime serve` spends on them.)
const KEEP_RESIDENT: u64 = 1 << 20;
/// Without `PAGEMAP_SCAN` the whole kept amount is reset with `memset` on every
/// release, touched or not, so keep only about what a small handler touches.
const KEEP_RESIDENT_MEMSET: u64 = 64 << 10;
/// Idle slots the pool keeps warm for reuse (Wasmtime's default).
const WARM_SLOTS: u32 = 100;
const PAGE: u64 = 4096;

/// The pooling allocator of the HTTP server, sized from the container memory limit:
/// memory kept resident in idle slots stays within a quarter of the limit (it counts
/// against the container's cgroup). Everything else is Wasmtime's default, so the pool's
/// capacity (1000 concurrent instances) and the per-store memory cap are unchanged.
pub fn pool_config(memory_limit: Option<u64>, pagemap: bool) -> PoolingAllocationConfig {
    let most = if pagemap {
        KEEP_RESIDENT
    } else {
        KEEP_RESIDENT_MEMSET
    };
    let keep = memory_limit.map_or(most, |limit| (limit / 4 / u64::from(WARM_SLOTS)).min(most));
    let keep = usize::try_from(keep - keep % PAGE).unwrap_or(0);
    let mut pool = PoolingAllocationConfig::default();
    pool.max_unused_warm_slots(WARM_SLOTS)
        .linear_memory_keep_resident(keep)
        .table_keep_resident(keep)
        .pagemap_scan(if pagemap { Enabled::Yes } else { Enabled::No });
    pool
}

/// Serves until `stop` fires; see the module docs.
pub async fn serve(
    engine: &WasmEngine,
    component: &Component,
    cfg: &RunConfig,
    stop: &StopHandle,
    listener: TcpListener,
) -> Result<Outcome, Error> {
    // One instance per request: use the pooling allocator (see `WasmEngine::pooling` and
    // `pool_config`), with `PAGEMAP_SCAN` where the kernel has it. Without a pool (no
    // address space for it, e.g. under `ulimit -v`) requests are served all the same,
    // just with an mmap per instance.
    let limit = cfg.memory_limit;
    let pooled = WasmEngine::pooling(pool_config(limit, true))
        .or_else(|_| WasmEngine::pooling(pool_config(limit, false)))
        .and_then(|p| Ok((p.adopt(component)?, p)));
    let (component, engine) = match &pooled {
        Ok((c, p)) => (c, p),
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(e), "pooling allocator unavailable");
            (component, engine)
        }
    };
    let mut linker = Linker::<RequestState>::new(engine.inner());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker))
        .map_err(|e| Error::Instantiate(e.into()))?;
    let pre = linker
        .instantiate_pre(component)
        .and_then(ProxyPre::new)
        .map_err(|e| Error::Instantiate(e.into()))?;
    // The preopened directories are opened once and shared by every request's WASI
    // context (same directories, same modes): opening and closing each of them per
    // request was the largest cost of a request above `wasmtime serve`'s, which has none.
    let preopens = wasi_builder(cfg)?.build().filesystem().clone();
    let server = Arc::new(Server {
        pre,
        cfg: RunConfig {
            preopens: Vec::new(),
            ..cfg.clone()
        },
        preopens,
    });
    tracing::info!(addr = ?listener.local_addr().ok(), "serving wasi:http");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (socket, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = stop.requested() => break,
        };
        // Small response chunks go out at once (no Nagle delay), as with `wasmtime serve`.
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let server = server.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { server.handle(req).await }
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(socket), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => drop(res),
                () = stop.requested() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(Outcome::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_pool_memory_follows_the_memory_limit() {
        let keep = |limit, pagemap| {
            let c = pool_config(limit, pagemap);
            assert_eq!(c.get_memory_keep_resident(), c.get_table_keep_resident());
            assert_eq!(
                c.get_total_memories(),
                PoolingAllocationConfig::default().get_total_memories()
            );
            c.get_memory_keep_resident() as u64
        };
        assert_eq!(keep(None, true), 1 << 20);
        assert_eq!(keep(None, false), 64 << 10);
        // 128 MiB: a quarter over 100 slots is 335,544 bytes, rounded down to 81 pages
        assert_eq!(keep(Some(128 << 20), true), 81 * 4096);
        assert_eq!(keep(Some(128 << 20), false), 64 << 10);
        assert_eq!(keep(Some(1 << 30), true), 1 << 20);
        assert_eq!(keep(Some(1 << 20), true), 0);
    }

    #[test]
    fn port_comes_from_env_annotation_or_default() {
        let env = |v: &str| vec![(crate::knobs::HTTP_PORT.env.to_string(), v.to_string())];
        let ann = |v: &str| {
            HashMap::from([(
                crate::knobs::HTTP_PORT.annotation.to_string(),
                v.to_string(),
            )])
        };
        let none = HashMap::new();
        type Env = Vec<(String, String)>;
        type Annotations = HashMap<String, String>;
        let cases: [(Env, Annotations, Result<u16, &str>); 7] = [
            (vec![], none.clone(), Ok(8080)),
            (env("9000"), none.clone(), Ok(9000)),
            (vec![], ann("9001"), Ok(9001)),
            (env("9000"), ann("9001"), Ok(9000)),
            (
                env("http"),
                none.clone(),
                Err("env WASMRUNTIME_HTTP_PORT: \"http\" is not"),
            ),
            (
                vec![],
                ann("0"),
                Err("annotation wasmruntime.dev/http-port: \"0\" is not"),
            ),
            (
                vec![],
                ann("70000"),
                Err("\"70000\" is not a TCP port number"),
            ),
        ];
        for (env, ann, want) in cases {
            match (port(&env, &ann), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{env:?} {ann:?}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
                (got, want) => panic!("{env:?} {ann:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
