//! Runs real Wasm, built here from the WAT sources in `tests/fixtures`, through
//! `WasmEngine::run`: the function `run_wasi` calls inside the container.

mod cache;
mod component;
mod fixtures;
mod fs;
mod run;
mod sandbox;
