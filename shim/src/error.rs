use std::path::PathBuf;

/// `wasmtime::Error` is not a `std::error::Error` (it is an anyhow-like type), so it is
/// kept as a boxed source, which preserves its message and chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every error this crate returns.
///
/// Two variants are not failures of the shim but signals carried through Wasmtime as trap
/// payloads: [`Error::MemoryLimitExceeded`] (raised by the resource limiter) and
/// [`Error::Stopped`] (raised by the epoch callback after SIGTERM). The engine turns them
/// into an `Outcome` with the exit code a runc container would have.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating the Wasmtime engine")]
    Engine(#[source] BoxError),

    #[error("entrypoint {path} not found in the container")]
    EntrypointNotFound { path: String },

    #[error("reading entrypoint {path}")]
    ReadEntrypoint {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{origin} is not a WebAssembly module or component: expected the Wasm magic bytes \
         00 61 73 6d (\"\\0asm\") followed by version 01 00 00 00 (core module) or \
         0d 00 01 00 (component), found {found}"
    )]
    NotWasm { origin: String, found: String },

    #[error("the image has {count} Wasm layers; this shim runs exactly one module or component")]
    LayerCount { count: usize },

    #[error("compiling {origin}")]
    Compile {
        origin: String,
        #[source]
        source: BoxError,
    },

    #[error("loading precompiled code for {origin}")]
    Deserialize {
        origin: String,
        #[source]
        source: BoxError,
    },

    #[error("{origin}: {reason}")]
    Unsupported { origin: String, reason: String },

    #[error("preopening {host} as {guest}")]
    Preopen {
        host: PathBuf,
        guest: String,
        #[source]
        source: BoxError,
    },

    #[error("instantiating the guest")]
    Instantiate(#[source] BoxError),

    #[error("running the guest")]
    Run(#[source] BoxError),

    #[error("module cache: {op} {name}")]
    Cache {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "guest linear memory would grow to {requested} bytes, above the container memory \
         limit of {limit} bytes"
    )]
    MemoryLimitExceeded { limit: u64, requested: u64 },

    #[error("listening on port {port} for wasi:http requests")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("guest options {path}")]
    Options {
        path: PathBuf,
        #[source]
        source: BoxError,
    },

    #[error("guest stopped on request (SIGTERM)")]
    Stopped,

    #[error("reading the Wasm layers of container {id}'s image from containerd: {reason}")]
    Artifact { id: String, reason: String },
}

/// An error with all its sources, `: `-separated (for logs and the container's stderr).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
