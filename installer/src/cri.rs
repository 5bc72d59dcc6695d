//! containerd's CRI `RuntimeService` over its unix socket, with the maintained
//! `k8s-cri` bindings and tonic (no hand-rolled gRPC). Blocking wrappers, because the
//! installer's steps are plain sequential code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerState, ListContainersRequest, ListPodSandboxRequest, PodSandboxState, StatusRequest,
    StatusResponse, VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};
use crate::host::CriStatus;

/// A CRI client bound to one socket; each call connects afresh, because the calls
/// that matter happen across containerd restarts.
pub struct Cri {
    socket: PathBuf,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
}

impl Cri {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Result<Self> {
        let socket = socket.into();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting the CRI client runtime for", &socket))?;
        Ok(Self {
            socket,
            timeout,
            rt,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn err(&self, call: &'static str) -> impl Fn(String) -> Error + '_ {
        move |reason| Error::Cri {
            call,
            socket: self.socket.clone(),
            reason,
        }
    }

    /// One RuntimeService exchange `f` on a fresh connection, under this client's
    /// timeout; `call` names it in the error. Public so tests and tools can drive pods
    /// (RunPodSandbox etc.) through the same connection code.
    pub fn call<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let socket = self.socket.clone();
        let out = self.rt.block_on(async {
            tokio::time::timeout(self.timeout, async {
                let client = connect(socket).await.map_err(|e| e.to_string())?;
                f(client)
                    .await
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            })
            .await
        });
        match out {
            Ok(r) => r.map_err(self.err(call)),
            Err(_) => Err(self.err(call)(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    pub fn version(&self) -> Result<String> {
        self.call("Version", |mut c| async move {
            let v = c.version(VersionRequest::default()).await?.into_inner();
            Ok(v.runtime_version)
        })
    }

    pub fn status(&self) -> Result<CriStatus> {
        self.call("Status", |mut c| async move {
            let resp = c.status(StatusRequest { verbose: true }).await?;
            Ok(status_from(&resp.into_inner()))
        })
    }

    /// Sandboxes of `handler` that are ready, and containers in them not exited.
    pub fn running(&self, handler: &str) -> Result<Vec<String>> {
        let handler = handler.to_owned();
        self.call("ListPodSandbox/ListContainers", |mut c| async move {
            let sandboxes = c
                .list_pod_sandbox(ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            let ours: Vec<_> = sandboxes
                .into_iter()
                .filter(|s| s.runtime_handler == handler)
                .collect();
            let mut ids: Vec<String> = ours
                .iter()
                .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
                .map(|s| format!("sandbox/{}", s.id))
                .collect();
            if !ours.is_empty() {
                let containers = c
                    .list_containers(ListContainersRequest::default())
                    .await?
                    .into_inner()
                    .containers;
                ids.extend(
                    containers
                        .iter()
                        .filter(|ct| ours.iter().any(|s| s.id == ct.pod_sandbox_id))
                        .filter(|ct| ct.state != ContainerState::ContainerExited as i32)
                        .map(|ct| format!("container/{}", ct.id)),
                );
            }
            Ok(ids)
        })
    }
}

async fn connect(
    socket: PathBuf,
) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
    // The URI is required by tonic but unused: the connector always dials the socket.
    let channel = Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

/// RuntimeReady, and the handlers containerd knows. containerd 2.x lists them in
/// `runtimeHandlers`; 1.x only shows its CRI config (JSON) in the verbose `info`.
pub fn status_from(resp: &StatusResponse) -> CriStatus {
    let runtime_ready = resp.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    });
    let mut handlers: std::collections::BTreeSet<String> = resp
        .runtime_handlers
        .iter()
        .map(|h| h.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(config) = resp.info.get("config")
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(config)
        && let Some(runtimes) = json
            .pointer("/containerd/runtimes")
            .and_then(|r| r.as_object())
    {
        handlers.extend(runtimes.keys().cloned());
    }
    CriStatus {
        runtime_ready,
        handlers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{RuntimeCondition, RuntimeHandler, RuntimeStatus};

    fn ready(status: bool) -> Option<RuntimeStatus> {
        Some(RuntimeStatus {
            conditions: vec![RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status,
                ..Default::default()
            }],
        })
    }

    #[test]
    fn handlers_from_containerd_2_runtime_handlers() {
        let resp = StatusResponse {
            status: ready(true),
            runtime_handlers: vec![
                RuntimeHandler {
                    name: String::new(),
                    features: None,
                },
                RuntimeHandler {
                    name: "wasm".into(),
                    features: None,
                },
            ],
            ..Default::default()
        };
        let s = status_from(&resp);
        assert!(s.runtime_ready);
        assert_eq!(s.handlers.iter().collect::<Vec<_>>(), ["wasm"]);
    }

    #[test]
    fn handlers_from_containerd_1_verbose_config() {
        let mut resp = StatusResponse {
            status: ready(false),
            ..Default::default()
        };
        resp.info.insert(
            "config".into(),
            r#"{"containerd":{"runtimes":{"runc":{},"wasm":{"runtimeType":"io.containerd.wasmtime.v1"}}}}"#
                .into(),
        );
        let s = status_from(&resp);
        assert!(!s.runtime_ready);
        assert_eq!(s.handlers.iter().collect::<Vec<_>>(), ["runc", "wasm"]);
    }
}
