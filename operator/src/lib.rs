//! wasm-operator: reconciles `WasmRuntime` objects (see [`api`]) into RuntimeClasses, node
//! labels and a verified, rolling installer rollout.

pub mod api;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod metrics;
pub mod observe;
pub mod planner;
pub mod resources;
pub mod server;
pub mod status;

pub use error::Error;
