//! wasm-operator: reconciles `WasmRuntime` objects (see [`api`]) into RuntimeClasses, node
//! labels and a verified, rolling installer rollout.

pub mod api;
pub mod crdgen;
pub mod error;
pub mod planner;

pub use error::Error;
