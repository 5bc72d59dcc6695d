//! The operator library's error type.

use kube::runtime::finalizer;

/// Everything the operator library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRD could not be rendered as YAML.
    #[error("rendering the WasmRuntime CRD as YAML: {0}")]
    RenderCrd(#[source] serde_yaml::Error),
    /// The CRD did not survive the JSON round trip used to post-process it.
    #[error("converting the WasmRuntime CRD: {0}")]
    ConvertCrd(#[source] serde_json::Error),
    /// The WasmRuntime CRD is not installed (or not readable by the operator).
    #[error(
        "cannot list WasmRuntimes; is the CRD installed (crds/) and does the operator have RBAC for it? {0}"
    )]
    CrdMissing(#[source] kube::Error),
    /// The spec passed CRD validation but cannot be applied; waits for a change.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Deletion is waiting (pods still use the runtime, or nodes are being uninstalled).
    #[error("deletion waits: {0}")]
    DeletionBlocked(String),
    /// The node cache does not show our latest label writes yet; retried shortly.
    #[error("waiting for the node cache to show our label changes")]
    CacheBehind,
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed, or the object cannot carry one.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The metrics or health endpoint could not be served.
    #[error("serving {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Leader(String),
}

impl Error {
    /// `map_err` helper naming the API call that failed.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self::Kube { action, source }
    }

    /// Collapse the finalizer wrapper into our own variants.
    pub fn from_finalizer(error: finalizer::Error<Self>) -> Self {
        match error {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
                Self::Finalizer(e.to_string())
            }
            finalizer::Error::UnnamedObject => Self::Finalizer("object has no name".into()),
            finalizer::Error::InvalidFinalizer => Self::Finalizer("invalid finalizer name".into()),
        }
    }

    /// A fixed label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::RenderCrd(_) | Self::ConvertCrd(_) => "crd",
            Self::CrdMissing(_) => "crd_missing",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::DeletionBlocked(_) => "deletion_blocked",
            Self::CacheBehind => "cache_behind",
            Self::Kube { .. } => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::Serve { .. } => "serve",
            Self::Leader(_) => "leader",
        }
    }
}
