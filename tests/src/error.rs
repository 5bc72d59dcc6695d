//! The test bed's error type.

use std::path::{Path, PathBuf};

/// What can go wrong bringing up or using a test control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{binary} is not built at {path}: run `cargo xtask testbed` first")]
    MissingBinary { binary: String, path: PathBuf },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("{component} exited before it was ready ({status}); last log lines:\n{log}")]
    Exited {
        component: String,
        status: String,
        log: String,
    },
    #[error("{component} was not ready within {seconds} s; last log lines:\n{log}")]
    NotReady {
        component: String,
        seconds: u64,
        log: String,
    },
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("building the kube client: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("no free loopback address found for the control plane")]
    NoAddress,
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
