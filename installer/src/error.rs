//! The crate's one error type. Every variant names what failed and carries enough
//! context (handler, table path, versions, file) for the termination message the
//! operator shows as the node's failure reason.

use std::path::PathBuf;
use std::time::Duration;

use crate::schema::Schema;
use crate::version::ContainerdVersion;

/// Everything the pure core can refuse. No variant is ever returned after a partial
/// change: the functions compute new text and only hand it out on success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find a containerd version in `containerd --version` output {output:?}")]
    VersionUnparsable { output: String },

    #[error("{what} is not valid TOML")]
    NotToml {
        what: String,
        #[source]
        source: Box<toml_edit::TomlError>,
    },

    #[error(
        "containerd config `version = {found}` is not a schema this installer knows (1, 2, 3, 4)"
    )]
    UnknownSchemaVersion { found: String },

    #[error(
        "containerd {containerd} does not accept config schema {schema} (it accepts {accepted})"
    )]
    SchemaNotAccepted {
        schema: Schema,
        containerd: ContainerdVersion,
        accepted: &'static str,
    },

    #[error(
        "the config has no `version` key, so containerd {containerd} reads it as schema 1 and \
         ignores CRI runtimes written in it; run `containerd config migrate` and retry"
    )]
    UnversionedConfigOnV2 { containerd: ContainerdVersion },

    #[error("`{path}` in the containerd config is {found}, expected {expected}")]
    UnexpectedType {
        path: String,
        expected: &'static str,
        found: &'static str,
    },

    #[error(
        "runtime handler {handler:?} already exists at `{path}` and is not managed by wasm-installer; \
         refusing to touch it (rename our handler or remove that entry)"
    )]
    HandlerNotOwned { handler: String, path: String },

    #[error("no embedded `containerd config default` output for containerd {containerd}")]
    NoEmbeddedDefaults { containerd: ContainerdVersion },

    #[error("invalid runtime handler name {name:?}: {reason}")]
    InvalidHandler { name: String, reason: &'static str },

    #[error("invalid shim path {path:?}: {reason}")]
    InvalidShimPath { path: PathBuf, reason: &'static str },

    #[error("invalid runtime name {name:?}: {reason}")]
    InvalidRuntimeName { name: String, reason: &'static str },

    #[error("the wasm-installer block for handler {handler:?} in {file} is damaged: {reason}")]
    DamagedManagedBlock {
        handler: String,
        file: PathBuf,
        reason: &'static str,
    },

    #[error(
        "{file} exists but is not a file wasm-installer created; refusing to overwrite or delete it"
    )]
    ForeignFile { file: PathBuf },

    #[error("{0}")]
    TemplateConflict(String),

    #[error(
        "cannot tell whether runc uses SystemdCgroup: {reason}; pass the cgroup mode explicitly \
         (systemd-cgroup true|false)"
    )]
    SystemdCgroupUnknown { reason: String },

    #[error(
        "containerd {version} cannot pass SystemdCgroup to the Wasm shim (its CRI plugin \
         sends a non-runc runtime no usable options), and runc here uses the systemd cgroup \
         driver; upgrade containerd to 1.7 or later, or run kubelet and runc with cgroupfs"
    )]
    SystemdCgroupUnsupported { version: String },

    #[error("more than one distribution detected ({found}); choose one explicitly")]
    AmbiguousDistro { found: String },

    // ---- host effects ----
    // The OS error in the message itself: the termination message shows only this line.
    #[error("{op} {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("the shim copied to {path} has sha256 {found}, expected {expected}")]
    ShimHashMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error(
        "another wasm-installer ({holder}) has held {path} for {waited:?}, longer than an \
         install may take; if no installer runs on this node, report a bug"
    )]
    NodeBusy {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },

    #[error("no restart strategy fits this node: {reason}")]
    NoRestartStrategy { reason: String },

    #[error("restarting containerd ({strategy}) failed: {reason}")]
    Restart { strategy: String, reason: String },

    #[error("CRI {call} on {socket} failed: {reason}")]
    Cri {
        call: &'static str,
        socket: PathBuf,
        reason: String,
    },

    #[error("containerd did not verify within {timeout:?}: {reason}")]
    Verify { timeout: Duration, reason: String },

    #[error(
        "{} container(s)/sandbox(es) of runtime handler {handler:?} still run ({}); \
         stop them first or pass --force",
        ids.len(), ids.join(", ")
    )]
    ContainersRunning { handler: String, ids: Vec<String> },

    #[error("{failed}; rolled back: {restored}")]
    RolledBack {
        failed: Box<Error>,
        restored: String,
    },

    #[error(
        "{failed}; automatic rollback is disabled (spec.rollout.autoRollback: false), the new config stays in place"
    )]
    NotRolledBack { failed: Box<Error> },
    #[error(
        "{failed}; rolled back: {restored}, but containerd does not serve again: {after}; \
         it will start on that restored config"
    )]
    RestoredNotServing {
        failed: Box<Error>,
        restored: String,
        after: Box<Error>,
    },

    #[error("{failed}; the rollback failed too: {rollback}")]
    RollbackFailed {
        failed: Box<Error>,
        rollback: Box<Error>,
    },
}

impl Error {
    /// A short, stable label for metrics and the termination-message reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::VersionUnparsable { .. } => "version_unparsable",
            Error::NotToml { .. } => "not_toml",
            Error::UnknownSchemaVersion { .. } => "unknown_schema_version",
            Error::SchemaNotAccepted { .. } => "schema_not_accepted",
            Error::UnversionedConfigOnV2 { .. } => "unversioned_config",
            Error::UnexpectedType { .. } => "unexpected_type",
            Error::HandlerNotOwned { .. } => "handler_not_owned",
            Error::NoEmbeddedDefaults { .. } => "no_embedded_defaults",
            Error::InvalidHandler { .. } => "invalid_handler",
            Error::InvalidShimPath { .. } => "invalid_shim_path",
            Error::InvalidRuntimeName { .. } => "invalid_runtime_name",
            Error::DamagedManagedBlock { .. } => "damaged_managed_block",
            Error::ForeignFile { .. } => "foreign_file",
            Error::TemplateConflict(_) => "template_conflict",
            Error::SystemdCgroupUnknown { .. } => "systemd_cgroup_unknown",
            Error::SystemdCgroupUnsupported { .. } => "systemd_cgroup_unsupported",
            Error::AmbiguousDistro { .. } => "ambiguous_distro",
            Error::Io { .. } => "io",
            Error::ShimHashMismatch { .. } => "shim_hash_mismatch",
            Error::NodeBusy { .. } => "node_busy",
            Error::NoRestartStrategy { .. } => "no_restart_strategy",
            Error::Restart { .. } => "restart",
            Error::Cri { .. } => "cri",
            Error::Verify { .. } => "verify",
            Error::ContainersRunning { .. } => "containers_running",
            Error::RolledBack { .. } => "rolled_back",
            Error::NotRolledBack { .. } => "not_rolled_back",
            Error::RestoredNotServing { .. } => "restored_not_serving",
            Error::RollbackFailed { .. } => "rollback_failed",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |cause| Error::Io { op, path, cause }
    }
}
