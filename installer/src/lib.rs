//! wasm-installer's pure core: from host facts and config text to the exact new text,
//! with no I/O, plus the thin effects layer on top of it.
//!
//! - [`version`]: `containerd --version` -> [`ContainerdVersion`]
//! - [`schema`]: config `version = N` -> [`Schema`], where CRI runtimes live, runc's
//!   `SystemdCgroup`
//! - [`distro`]: which paths exist -> [`Distro`], restart target
//! - [`daemon`]: the running containerd -> its config and supervisor, for `auto`
//! - [`edit`]: [`add_runtime`] / [`remove_runtime`] on a whole TOML config
//! - [`template`]: k3s/RKE2 Go templates; [`dropin`]: whole-file drop-ins
//! - [`plan`]: the explicit target decision and the install/uninstall [`Plan`]
//!
//! The edge: [`host`] (the `Host` trait and the real node), [`cri`] (containerd's
//! CRI client), [`steps`] (install / verify / rollback / uninstall / drift as
//! functions over a `Host`), [`status`] (readiness file), [`fault`] (crash tests).

pub mod cri;
pub mod daemon;
pub mod defaults;
pub mod distro;
mod doc;
pub mod dropin;
pub mod edit;
pub mod error;
pub mod fault;
pub mod host;
pub mod ownership;
pub mod plan;
pub mod schema;
pub mod spec;
pub mod status;
pub mod steps;
pub mod template;
pub mod version;

pub use distro::{Distro, HostFacts, Restart, Unit};
pub use edit::{Backup, Edit, Removal, add_runtime, remove_runtime};
pub use error::{Error, Result};
pub use plan::{
    ConfigTarget, Decision, FileChange, Plan, decide_target, plan_install, plan_uninstall,
};
pub use schema::Schema;
pub use spec::{HandlerName, RuntimeName, RuntimeSpec, ShimPath, SystemdCgroupMode};
pub use version::ContainerdVersion;
