//! OCI image-layout tarballs (`oci-layout`, `index.json`, `blobs/sha256/…`) that
//! `ctr images import` accepts, written reproducibly: fixed mtimes, owners and modes, sorted
//! entries, no timestamps in configs, so the same input always gives the same digests.
//!
//! Two shapes:
//! - [`RootfsImage`]: a classic image with one uncompressed tar layer holding files (a
//!   `.wasm` entrypoint for crun/WasmEdge-style Wasm images, or a static native binary for
//!   runc) and an image config with entrypoint/cmd/env/working dir;
//! - [`WasmArtifact`]: an OCI Wasm artifact whose single layer *is* the Wasm binary, with a
//!   config whose `architecture` is `wasm` (what containerd-shim-wasm checks first).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, DescriptorBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, Platform, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// The annotation crun/WasmEdge image builders put on Wasm images.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// containerd reads the image name from this index annotation on import.
const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The media types OCI Wasm artifacts come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// runwasi's default for components (wkg/oci-wasm).
    ComponentLayer,
    /// runwasi's other default: `application/wasm`.
    ApplicationWasm,
    /// Older tools' module layer type (`application/vnd.w3c.wasm.module.v1+wasm`).
    W3cModule,
    /// CNCF TAG Runtime Wasm artifact: content layer + `application/vnd.wasm.config.v0+json`.
    Cncf,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 4] = [
        Self::ComponentLayer,
        Self::ApplicationWasm,
        Self::W3cModule,
        Self::Cncf,
    ];

    pub fn layer_media_type(self) -> &'static str {
        match self {
            Self::ComponentLayer => "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            Self::ApplicationWasm => "application/wasm",
            Self::W3cModule => "application/vnd.w3c.wasm.module.v1+wasm",
            Self::Cncf => "application/vnd.wasm.content.layer.v1+wasm",
        }
    }

    /// runwasi's artifacts use a plain OCI image config (with `architecture: wasm`); the
    /// CNCF format has its own config media type.
    pub fn config_media_type(self) -> &'static str {
        match self {
            Self::Cncf => "application/vnd.wasm.config.v0+json",
            Self::ComponentLayer | Self::ApplicationWasm | Self::W3cModule => {
                "application/vnd.oci.image.config.v1+json"
            }
        }
    }
}

/// A file in a [`RootfsImage`] layer.
#[derive(Debug, Clone)]
struct File {
    bytes: Vec<u8>,
    mode: u32,
}

/// A classic single-layer image. Paths are absolute inside the rootfs; parent directories
/// are created (0755).
#[derive(Debug, Clone)]
pub struct RootfsImage {
    name: String,
    files: BTreeMap<String, File>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl RootfsImage {
    /// `name` is the full reference containerd files it under, e.g. `docker.io/test/hello:1`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            files: BTreeMap::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            user: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// The user the container runs as, e.g. `65532:65532`.
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// An image config label, e.g. `org.opencontainers.image.version`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Every file of the rootfs with its mode, in layer order.
    pub fn files(&self) -> impl Iterator<Item = (&str, u32)> {
        self.files.iter().map(|(p, f)| (p.as_str(), f.mode))
    }

    pub fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Self {
        let path = path.trim_start_matches('/').to_string();
        self.files.insert(
            path,
            File {
                bytes: bytes.into(),
                mode,
            },
        );
        self
    }

    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds `K=V` entries after the default `PATH`.
    pub fn env(mut self, kv: &[&str]) -> Self {
        self.env.extend(kv.iter().map(|s| s.to_string()));
        self
    }

    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// A manifest annotation, e.g. [`VARIANT_ANNOTATION`] = `compat-smart`.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Writes the image-layout tarball; returns the manifest digest (`sha256:…`).
    pub fn write_tar(&self, out: &Path) -> Result<String, Error> {
        let layer = self.layer_tar()?;
        let layer_digest = sha256(&layer);
        let mut config = ConfigBuilder::default()
            .entrypoint(self.entrypoint.clone())
            .cmd(self.cmd.clone())
            .env(self.env.clone());
        if let Some(dir) = &self.working_dir {
            config = config.working_dir(dir.clone());
        }
        if let Some(user) = &self.user {
            config = config.user(user.clone());
        }
        if !self.labels.is_empty() {
            config = config.labels(
                self.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        let config = ImageConfigurationBuilder::default()
            .architecture(host_arch())
            .os(Os::Linux)
            .config(config.build().map_err(oci_err)?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![layer_digest.clone()])
                    .build()
                    .map_err(oci_err)?,
            )
            .build()
            .map_err(oci_err)?;
        let config = canonical_json(&config)?;
        let platform = PlatformBuilder::default()
            .architecture(host_arch())
            .os(Os::Linux)
            .build()
            .map_err(oci_err)?;
        Layout {
            name: &self.name,
            platform,
            config: (MediaType::ImageConfig, config),
            layer: (MediaType::ImageLayer, layer),
            annotations: &self.annotations,
        }
        .write(out)
    }

    /// One uncompressed tar: directories first (sorted), then files, all owned by 0:0 with
    /// mtime 0.
    fn layer_tar(&self) -> Result<Vec<u8>, Error> {
        let mut dirs = std::collections::BTreeSet::new();
        for path in self.files.keys() {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(format!("{}/", d.display()));
                p = d.parent();
            }
        }
        let mut tar = tar::Builder::new(Vec::new());
        for dir in &dirs {
            append(&mut tar, dir, &[], 0o755, tar::EntryType::Directory)?;
        }
        for (path, f) in &self.files {
            append(&mut tar, path, &f.bytes, f.mode, tar::EntryType::Regular)?;
        }
        tar.into_inner()
            .map_err(|e| Error::io(Path::new("layer.tar"), e))
    }
}

/// An OCI Wasm artifact: the Wasm binary is the only layer.
#[derive(Debug, Clone)]
pub struct WasmArtifact {
    name: String,
    kind: ArtifactKind,
    wasm: Vec<u8>,
}

impl WasmArtifact {
    pub fn new(name: &str, kind: ArtifactKind, wasm: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.to_string(),
            kind,
            wasm: wasm.into(),
        }
    }

    /// Writes the image-layout tarball; returns the manifest digest.
    pub fn write_tar(&self, out: &Path) -> Result<String, Error> {
        let layer_digest = sha256(&self.wasm);
        let is_component = self.wasm.get(4..8) == Some(&[0x0d, 0, 1, 0]);
        let os = if is_component { "wasip2" } else { "wasip1" };
        // Both config shapes carry `architecture: wasm`, `os` and an empty rootfs: the
        // image has no filesystem layers for containerd to unpack.
        let config = match self.kind.config_media_type() {
            "application/vnd.wasm.config.v0+json" => serde_json::json!({
                "architecture": "wasm",
                "os": os,
                "layerDigests": [layer_digest],
                "rootfs": {"type": "layers", "diff_ids": []},
            }),
            _ => serde_json::json!({
                "architecture": "wasm",
                "os": os,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
            }),
        };
        let config = canonical_json(&config)?;
        let platform = PlatformBuilder::default()
            .architecture(Arch::Wasm)
            .os(Os::Other("wasi".into()))
            .build()
            .map_err(oci_err)?;
        Layout {
            name: &self.name,
            platform,
            config: (MediaType::from(self.kind.config_media_type()), config),
            layer: (
                MediaType::from(self.kind.layer_media_type()),
                self.wasm.clone(),
            ),
            annotations: &BTreeMap::new(),
        }
        .write(out)
    }
}

/// The platform `ctr` must be told (`--platform`) to import and run a [`WasmArtifact`].
pub const WASM_PLATFORM: &str = "wasi/wasm";

/// One manifest with one config and one layer, as an image-layout tarball.
struct Layout<'a> {
    name: &'a str,
    platform: Platform,
    config: (MediaType, Vec<u8>),
    layer: (MediaType, Vec<u8>),
    annotations: &'a BTreeMap<String, String>,
}

impl Layout<'_> {
    fn write(self, out: &Path) -> Result<String, Error> {
        let descriptor = |media: MediaType, bytes: &[u8]| {
            DescriptorBuilder::default()
                .media_type(media)
                .digest(
                    sha256(bytes)
                        .parse::<oci_spec::image::Digest>()
                        .map_err(oci_err)?,
                )
                .size(bytes.len() as u64)
                .build()
                .map_err(oci_err)
        };
        let mut manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(self.config.0.clone(), &self.config.1)?)
            .layers(vec![descriptor(self.layer.0.clone(), &self.layer.1)?]);
        if !self.annotations.is_empty() {
            manifest = manifest.annotations(
                self.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        let manifest = manifest.build().map_err(oci_err)?;
        let manifest = canonical_json(&manifest)?;
        let manifest_digest = sha256(&manifest);
        let mut manifest_desc = descriptor(MediaType::ImageManifest, &manifest)?;
        manifest_desc.set_platform(Some(self.platform));
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, t)| t);
        manifest_desc.set_annotations(Some(
            [
                (IMAGE_NAME_ANNOTATION.to_string(), self.name.to_string()),
                (REF_NAME_ANNOTATION.to_string(), tag.to_string()),
            ]
            .into(),
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest_desc])
            .build()
            .map_err(oci_err)?;
        let index = canonical_json(&index)?;

        let mut blobs = BTreeMap::new();
        for blob in [self.config.1, self.layer.1, manifest] {
            blobs.insert(sha256(&blob), blob);
        }
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, "blobs/", &[], 0o755, tar::EntryType::Directory)?;
        append(
            &mut tar,
            "blobs/sha256/",
            &[],
            0o755,
            tar::EntryType::Directory,
        )?;
        for (digest, blob) in &blobs {
            let hex = digest.trim_start_matches("sha256:");
            append(
                &mut tar,
                &format!("blobs/sha256/{hex}"),
                blob,
                0o644,
                tar::EntryType::Regular,
            )?;
        }
        append(
            &mut tar,
            "index.json",
            &index,
            0o644,
            tar::EntryType::Regular,
        )?;
        append(
            &mut tar,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            0o644,
            tar::EntryType::Regular,
        )?;
        let bytes = tar.into_inner().map_err(|e| Error::io(out, e))?;
        let mut f = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
        f.write_all(&bytes).map_err(|e| Error::io(out, e))?;
        Ok(manifest_digest)
    }
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    bytes: &[u8],
    mode: u32,
    kind: tar::EntryType,
) -> Result<(), Error> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
        .map_err(|e| Error::io(Path::new(path), e))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        other => Arch::Other(other.to_string()),
    }
}

fn oci_err(e: impl std::fmt::Display) -> Error {
    Error::io(Path::new("OCI image"), std::io::Error::other(e.to_string()))
}

/// JSON with object keys sorted (`serde_json::Value` maps are ordered), so maps that
/// oci-spec keeps as `HashMap` (labels, annotations) serialize the same in every process.
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let value = serde_json::to_value(value).map_err(oci_err)?;
    serde_json::to_vec(&value).map_err(oci_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_path: &Path) -> Vec<(String, u64, u64)> {
        let mut a = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn same_input_same_bytes_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let image = || {
            RootfsImage::new("docker.io/test/hello:1")
                .file("/hello.wasm", b"\0asm\x01\0\0\0".to_vec(), 0o755)
                .entrypoint(&["/hello.wasm"])
                .env(&["A=1"])
                .annotation(VARIANT_ANNOTATION, "compat-smart")
        };
        let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        let da = image().write_tar(&a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let db = image().write_tar(&b).unwrap();
        assert_eq!(da, db);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // a different file gives a different manifest
        let dc = image()
            .file("/x", b"x".to_vec(), 0o644)
            .write_tar(&dir.path().join("c.tar"))
            .unwrap();
        assert_ne!(da, dc);
        for (path, mtime, uid) in entries(&a) {
            assert_eq!((mtime, uid), (0, 0), "{path}");
        }
    }

    #[test]
    fn layout_is_complete_and_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.tar");
        let digest =
            WasmArtifact::new("docker.io/test/a:1", ArtifactKind::Cncf, b"\0asm\x01\0\0\0")
                .write_tar(&out)
                .unwrap();
        let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut files = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
            files.insert(e.path().unwrap().display().to_string(), bytes);
        }
        for (path, bytes) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256(bytes), format!("sha256:{hex}"));
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        assert_eq!(index["manifests"][0]["digest"], digest.as_str());
        assert_eq!(index["manifests"][0]["platform"]["architecture"], "wasm");
        let hex = digest.trim_start_matches("sha256:");
        let manifest: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{hex}")]).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.wasm.config.v0+json"
        );
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.wasm.content.layer.v1+wasm"
        );
        assert!(files.contains_key("oci-layout"));
    }
}
