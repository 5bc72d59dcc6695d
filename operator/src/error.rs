//! The operator library's error type.

/// Everything the operator library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRD could not be rendered as YAML.
    #[error("rendering the WasmRuntime CRD as YAML: {0}")]
    RenderCrd(#[source] serde_yaml::Error),
    /// The CRD did not survive the JSON round trip used to post-process it.
    #[error("converting the WasmRuntime CRD: {0}")]
    ConvertCrd(#[source] serde_json::Error),
}
