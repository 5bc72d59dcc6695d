//! wasm-installer's pure core: from host facts and config text to the exact new text,
//! with no I/O. Effects (copying the shim, atomic writes, restarts, CRI checks) come
//! in a thin host layer on top of this.
//!
//! - [`version`]: `containerd --version` -> [`ContainerdVersion`]
//! - [`schema`]: config `version = N` -> [`Schema`], where CRI runtimes live, runc's
//!   `SystemdCgroup`
//! - [`distro`]: which paths exist -> [`Distro`], restart target
//! - [`edit`]: [`add_runtime`] / [`remove_runtime`] on a whole TOML config
//! - [`template`]: k3s/RKE2 Go templates; [`dropin`]: whole-file drop-ins
//! - [`plan`]: the explicit target decision and the install/uninstall [`Plan`]

pub mod defaults;
pub mod distro;
mod doc;
pub mod dropin;
pub mod edit;
pub mod error;
pub mod ownership;
pub mod plan;
pub mod schema;
pub mod spec;
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
