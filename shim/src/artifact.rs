//! OCI Wasm artifacts: the module is not in a rootfs but in the image's layers, which only
//! containerd's content store holds. The shim reads them over containerd's gRPC API when
//! the container is created.
//!
//! Beyond containerd-shim-wasm: an image index is followed to its Wasm manifest (runwasi
//! reads the image target as a manifest and fails on an index), and the lookup is skipped
//! when the entrypoint is a file in the rootfs (classic images, the pause container), which
//! saves a gRPC connection on every such start.

use std::path::Path;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use containerd_shim_wasm::sandbox::context::WasmLayer;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};
use oci_spec::runtime::Spec;

use crate::error::Error;
use crate::shim::SUPPORTED_LAYER_TYPES;

/// The CNCF TAG Runtime Wasm artifact config type.
pub const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// Does the container need its image's layers? Not when `process.args[0]` is a file of the
/// rootfs (found as runc would: as given, or in the spec's `PATH`).
pub fn needs_lookup(spec: &Spec, bundle: &Path) -> bool {
    let Some(root) = spec.root().as_ref().map(|r| bundle.join(r.path())) else {
        return true;
    };
    let Some(process) = spec.process().as_ref() else {
        return true;
    };
    let Some(arg0) = process.args().as_ref().and_then(|a| a.first()) else {
        return true;
    };
    // `module.wasm#func` names a function of the file
    let arg0 = arg0.split_once('#').map_or(arg0.as_str(), |(p, _)| p);
    let in_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p)).is_file();
    let path = Path::new(arg0);
    if arg0.contains('/') {
        let cwd = Path::new(process.cwd());
        return !(in_root(path) || in_root(&cwd.join(path)));
    }
    let search = process
        .env()
        .iter()
        .flatten()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    !search
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| in_root(&Path::new(d).join(path)))
}

/// The manifest to use from an index: the one for the `wasm` architecture (or a WASI os).
pub fn pick_manifest(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform().as_ref().is_some_and(|p| {
            *p.architecture() == Arch::Wasm
                || matches!(p.os(), Os::Other(os) if os.starts_with("wasi"))
        })
    })
}

/// The layers to load, given the manifest and its config blob: none unless the image is a
/// Wasm artifact (config media type, or `architecture: wasm` in the config, which is what
/// `docker buildx --platform wasi/wasm` and runwasi's tools write).
pub fn wasm_layer_descriptors(manifest: &ImageManifest, config: &[u8]) -> Vec<Descriptor> {
    let config_type = manifest.config().media_type().to_string();
    let wasm_arch = serde_json::from_slice::<serde_json::Value>(config)
        .ok()
        .and_then(|v| v.get("architecture")?.as_str().map(|a| a == "wasm"))
        .unwrap_or(false);
    if config_type != WASM_CONFIG_TYPE && !wasm_arch {
        return Vec::new();
    }
    manifest
        .layers()
        .iter()
        .filter(|l| SUPPORTED_LAYER_TYPES.contains(&l.media_type().to_string().as_str()))
        .cloned()
        .collect()
}

fn is_index(media_type: &str) -> bool {
    media_type == MediaType::ImageIndex.to_string()
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// Reads the Wasm layers of container `id`'s image from containerd at `address`.
pub async fn load_layers(
    address: &str,
    namespace: &str,
    id: &str,
) -> Result<Vec<WasmLayer>, Error> {
    let err = |reason: String| Error::Artifact {
        id: id.to_string(),
        reason,
    };
    let channel = containerd_client::connect(address)
        .await
        .map_err(|e| err(format!("connecting to {address}: {e}")))?;
    let container = ContainersClient::new(channel.clone())
        .get(with_namespace!(
            GetContainerRequest { id: id.to_string() },
            namespace
        ))
        .await
        .map_err(|e| err(format!("getting the container: {}", e.message())))?
        .into_inner()
        .container
        .ok_or_else(|| err("containerd returned no container".into()))?;
    if container.image.is_empty() {
        return Ok(Vec::new());
    }
    let image = ImagesClient::new(channel.clone())
        .get(with_namespace!(
            GetImageRequest {
                name: container.image.clone()
            },
            namespace
        ))
        .await
        .map_err(|e| {
            err(format!(
                "getting image {}: {}",
                container.image,
                e.message()
            ))
        })?
        .into_inner()
        .image
        .and_then(|i| i.target)
        .ok_or_else(|| err(format!("image {} has no target", container.image)))?;

    let content = Content {
        client: ContentClient::new(channel),
        namespace,
    };
    let mut manifest_digest = image.digest;
    if is_index(&image.media_type) {
        let index: ImageIndex =
            serde_json::from_slice(&content.read(&manifest_digest).await.map_err(&err)?)
                .map_err(|e| err(format!("image index {manifest_digest}: {e}")))?;
        let Some(m) = pick_manifest(&index) else {
            return Ok(Vec::new());
        };
        manifest_digest = m.digest().to_string();
    }
    let manifest: ImageManifest =
        serde_json::from_slice(&content.read(&manifest_digest).await.map_err(&err)?)
            .map_err(|e| err(format!("manifest {manifest_digest}: {e}")))?;
    let config = content
        .read(manifest.config().digest().as_ref())
        .await
        .map_err(&err)?;
    let mut layers = Vec::new();
    for descriptor in wasm_layer_descriptors(&manifest, &config) {
        let layer = content
            .read(descriptor.digest().as_ref())
            .await
            .map_err(&err)?;
        layers.push(WasmLayer {
            config: descriptor,
            precompiled: false,
            layer,
        });
    }
    tracing::info!(image = %container.image, layers = layers.len(), "Wasm layers from the image");
    Ok(layers)
}

struct Content<'a> {
    client: ContentClient<containerd_client::tonic::transport::Channel>,
    namespace: &'a str,
}

impl Content<'_> {
    async fn read(&self, digest: &str) -> Result<Vec<u8>, String> {
        let mut stream = self
            .client
            .clone()
            .read(with_namespace!(
                ReadContentRequest {
                    digest: digest.to_string(),
                    ..Default::default()
                },
                self.namespace
            ))
            .await
            .map_err(|e| format!("reading {digest}: {}", e.message()))?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| format!("reading {digest}: {}", e.message()))?
        {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &[&str], env: &[&str], cwd: &str) -> Spec {
        use oci_spec::runtime::{ProcessBuilder, RootBuilder, SpecBuilder};
        SpecBuilder::default()
            .root(RootBuilder::default().path("rootfs").build().unwrap())
            .process(
                ProcessBuilder::default()
                    .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .cwd(cwd)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn lookup_is_skipped_only_for_an_entrypoint_in_the_rootfs() {
        let bundle = tempfile::tempdir().unwrap();
        let root = bundle.path().join("rootfs");
        std::fs::create_dir_all(root.join("app/bin")).unwrap();
        std::fs::write(root.join("hello.wasm"), b"\0asm").unwrap();
        std::fs::write(root.join("app/bin/tool.wasm"), b"\0asm").unwrap();
        let cases: &[(&[&str], &[&str], &str, bool)] = &[
            (&["/hello.wasm"], &[], "/", false),
            (&["/hello.wasm#main"], &[], "/", false),
            (&["hello.wasm"], &["PATH=/"], "/", false),
            (&["tool.wasm"], &["PATH=/usr/bin:/app/bin"], "/", false),
            (&["./tool.wasm"], &[], "/app/bin", false),
            // OCI artifacts: nothing in the rootfs
            (&["app.wasm"], &["PATH=/usr/bin"], "/", true),
            (&["/missing.wasm"], &[], "/", true),
            (&[], &[], "/", true),
        ];
        for (args, env, cwd, want) in cases {
            assert_eq!(
                needs_lookup(&spec(args, env, cwd), bundle.path()),
                *want,
                "{args:?} {env:?} {cwd}"
            );
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            testbed::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/oci")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn index_leads_to_the_wasm_manifest() {
        let index: ImageIndex =
            serde_json::from_slice(&fixture("index-multi-platform.json")).unwrap();
        let m = pick_manifest(&index).unwrap();
        assert!(m.digest().to_string().ends_with("b2"), "{}", m.digest());
        let index: ImageIndex = serde_json::from_slice(&fixture("index-linux-only.json")).unwrap();
        assert!(pick_manifest(&index).is_none());
    }

    #[test]
    fn layers_only_of_wasm_artifacts_and_supported_types() {
        let cases = [
            // (manifest, config, expected layer media types)
            (
                "manifest-cncf.json",
                r#"{"architecture":"wasm","os":"wasip2"}"#,
                vec!["application/vnd.wasm.content.layer.v1+wasm"],
            ),
            (
                "manifest-runwasi.json",
                r#"{"architecture":"wasm","os":"wasip1"}"#,
                vec!["application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"],
            ),
            (
                "manifest-runwasi.json",
                r#"{"architecture":"amd64","os":"linux"}"#,
                vec![],
            ),
            (
                "manifest-cncf.json",
                r#"not json"#,
                vec!["application/vnd.wasm.content.layer.v1+wasm"],
            ),
        ];
        for (file, config, want) in cases {
            let manifest: ImageManifest = serde_json::from_slice(&fixture(file)).unwrap();
            let got: Vec<String> = wasm_layer_descriptors(&manifest, config.as_bytes())
                .iter()
                .map(|d| d.media_type().to_string())
                .collect();
            assert_eq!(got, want, "{file} {config}");
        }
    }
}
