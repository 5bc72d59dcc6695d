//! The project's test bed: pinned versions and cache paths of the real parts (used by
//! `cargo xtask testbed`), and [`TestCluster`], which starts a real etcd + kube-apiserver (and on request controller-manager, scheduler and kwok) for a test.

pub mod cni;
pub mod containerd;
pub mod ldd;
pub mod node;
pub mod oci;
pub mod paths;
pub mod reliability;
pub mod supervisor;
pub mod versions;
pub mod workloads;

mod cluster;
mod error;
mod pki;
mod process;

pub use cluster::{ClusterOptions, POD_CIDR, SERVICE_CIDR, TestCluster};
pub use error::Error;
