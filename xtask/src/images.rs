//! `cargo xtask images`: OCI image tarballs of the operator and of the installer (which
//! carries the shim), assembled from our binaries without a Docker daemon (oci-spec + tar +
//! sha2, through the test bed's `oci` module). Minimal and reproducible: the binaries, the
//! shared libraries `ldd` names, CA certificates and a non-root user for the operator, fixed
//! mtimes and owners, so the same sources give the same digests. `images/Dockerfile` builds
//! the same file set for users with Docker; `tests/tests/images.rs` keeps the two equal.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use testbed::oci::RootfsImage;

use crate::cmd;

/// Where the images are published; tags are the workspace version.
pub const REGISTRY: &str = "ghcr.io/wasmruntime";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const SOURCE: &str = "https://github.com/wasmruntime/wasm-runtime-operator";
/// The operator's user: the conventional "nonroot" of distroless images.
pub const NONROOT: &str = "65532:65532";
const CA_CERTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the installer finds the shim it copies (its `--shim-source` default).
pub const SHIM_IN_IMAGE: &str = "/usr/local/lib/wasmruntime/containerd-shim-wasmtime-v1";

/// One file of an image: where it goes and where its bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dest: String,
    pub source: Source,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A binary of this workspace from the build's target dir.
    Binary(&'static str),
    /// A file of the build machine (in the Dockerfile: of the build stage).
    Host(&'static str),
    /// A file of this repository.
    Repo(&'static str),
}

/// What one image holds, besides the libraries its binaries need.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: &'static str,
    pub entries: Vec<Entry>,
    pub user: Option<&'static str>,
    pub entrypoint: Vec<String>,
    pub description: &'static str,
}

impl Spec {
    pub fn reference(&self) -> String {
        format!("{REGISTRY}/{}:{VERSION}", self.name)
    }

    pub fn labels(&self) -> Vec<(String, String)> {
        [
            ("org.opencontainers.image.title", self.name),
            ("org.opencontainers.image.description", self.description),
            ("org.opencontainers.image.version", VERSION),
            ("org.opencontainers.image.source", SOURCE),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn binaries(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().filter_map(|e| match e.source {
            Source::Binary(b) => Some(b),
            _ => None,
        })
    }
}

fn bin(name: &'static str, dest: &str) -> Entry {
    Entry {
        dest: dest.into(),
        source: Source::Binary(name),
        mode: 0o755,
    }
}

/// The two images. Pure: the same for xtask and for the Dockerfile check.
pub fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "wasm-operator",
            entries: vec![
                bin("wasm-operator", "/usr/local/bin/wasm-operator"),
                Entry {
                    dest: CA_CERTS.into(),
                    source: Source::Host(CA_CERTS),
                    mode: 0o644,
                },
                Entry {
                    dest: "/etc/passwd".into(),
                    source: Source::Repo("images/passwd"),
                    mode: 0o644,
                },
                Entry {
                    dest: "/etc/group".into(),
                    source: Source::Repo("images/group"),
                    mode: 0o644,
                },
            ],
            user: Some(NONROOT),
            entrypoint: vec!["/usr/local/bin/wasm-operator".into()],
            description: "WasmRuntime operator: RuntimeClasses, node labels and a verified rollout",
        },
        Spec {
            name: "wasm-installer",
            entries: vec![
                bin("wasm-installer", "/usr/local/bin/wasm-installer"),
                bin("containerd-shim-wasmtime-v1", SHIM_IN_IMAGE),
            ],
            // Root: it edits the host's containerd config from a privileged pod.
            user: None,
            entrypoint: vec!["/usr/local/bin/wasm-installer".into()],
            description: "WasmRuntime node installer, carrying the Wasmtime containerd shim",
        },
    ]
}

/// Shared libraries a dynamically linked binary loads, as `ldd` prints them (absolute paths,
/// the loader included, the vDSO left out).
pub fn parse_ldd(output: &str) -> Vec<String> {
    let mut libs: Vec<String> = output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

fn ldd(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    // a static binary (the release shim) needs nothing
    if testbed::ldd::says_static(&out) {
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_ldd(&text))
}

/// A copy of a dev binary without its debug info (hundreds of MB that no container needs),
/// next to the tarballs.
fn stripped(binary: &Path, out: &Path) -> Result<PathBuf> {
    let name = binary.file_name().context("binary name")?;
    let copy = out.join(name);
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&copy),
    )?;
    Ok(copy)
}

/// Written images: (reference, tarball, manifest digest).
pub type Written = Vec<(String, PathBuf, String)>;

/// Build the binaries (release, or dev with `dev`) and write `<out>/<name>.tar` for each
/// image.
pub fn build(dev: bool, out: &Path) -> Result<Written> {
    let target = build_binaries(dev)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for spec in specs() {
        let reference = spec.reference();
        let image = assemble(&spec, &reference, &target, dev, out)?;
        let tar = out.join(format!("{}.tar", spec.name));
        let digest = image
            .write_tar(&tar)
            .with_context(|| format!("writing {}", tar.display()))?;
        written.push((reference, tar, digest));
    }
    Ok(written)
}

/// `cargo build` of the three binaries (the release shim static, [`cmd::STATIC_SHIM`]);
/// returns the directory they are in.
pub fn build_binaries(dev: bool) -> Result<PathBuf> {
    let mut args = vec![
        "build",
        "--locked",
        "-p",
        "wasm-operator",
        "-p",
        "wasm-installer",
    ];
    if dev {
        args.extend(["-p", "containerd-shim-wasmtime"]);
    } else {
        args.push("--release");
    }
    cmd::cargo(&args)?;
    if !dev {
        cmd::release_shim()?;
    }
    Ok(
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").context("CARGO_TARGET_DIR")?)
            .join(if dev { "debug" } else { "release" }),
    )
}

/// One image of `spec` under `reference`, from the binaries in `target` (dev binaries lose
/// their debug info on the way, through a scratch copy in `scratch`).
pub fn assemble(
    spec: &Spec,
    reference: &str,
    target: &Path,
    dev: bool,
    scratch: &Path,
) -> Result<RootfsImage> {
    let entrypoint: Vec<&str> = spec.entrypoint.iter().map(String::as_str).collect();
    let mut image = RootfsImage::new(reference).entrypoint(&entrypoint);
    if let Some(user) = spec.user {
        image = image.user(user);
    }
    for (k, v) in spec.labels() {
        image = image.label(&k, &v);
    }
    let mut libs = Vec::new();
    for b in spec.binaries() {
        libs.extend(ldd(&target.join(b))?);
    }
    libs.sort();
    libs.dedup();
    for lib in &libs {
        let bytes = std::fs::read(lib).with_context(|| format!("reading {lib}"))?;
        image = image.file(lib, bytes, 0o755);
    }
    for e in &spec.entries {
        let path = match &e.source {
            Source::Binary(b) if dev => stripped(&target.join(b), scratch)?,
            Source::Binary(b) => target.join(b),
            Source::Host(p) => PathBuf::from(p),
            Source::Repo(p) => cmd::workspace_root().join(p),
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if dev && matches!(e.source, Source::Binary(_)) {
            std::fs::remove_file(&path)?;
        }
        image = image.file(&e.dest, bytes, e.mode);
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A static binary (as the release shim is) needs no library in the image; the test
    /// bed's busybox-static stands for it.
    #[test]
    fn a_static_binary_needs_no_library() {
        assert_eq!(
            ldd(Path::new("/bin/busybox")).unwrap(),
            Vec::<String>::new()
        );
        assert!(!ldd(Path::new("/bin/ls")).unwrap().is_empty());
    }

    #[test]
    fn ldd_lines_become_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd5a1f0000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1a000000)\n\
                   \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0c19f00000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c19c00000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1a100000)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    /// What a final stage of images/Dockerfile declares besides the ldd libraries.
    #[derive(Debug, Default)]
    struct Stage {
        files: Vec<String>,
        user: Option<String>,
        entrypoint: String,
        labels: Vec<(String, String)>,
    }

    fn stage(dockerfile: &str, name: &str) -> Stage {
        // Join continuation lines, then take the lines of `FROM scratch AS <name>`.
        let joined = dockerfile.replace("\\\n", " ");
        let mut lines = joined
            .lines()
            .skip_while(|l| l.trim() != format!("FROM scratch AS {name}"))
            .skip(1)
            .take_while(|l| !l.starts_with("FROM "));
        let mut st = Stage::default();
        for line in lines.by_ref() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("COPY") if !words[1..].iter().any(|w| w.starts_with("/libs/")) => {
                    st.files.push(words.last().unwrap().to_string());
                }
                Some("USER") => st.user = Some(words[1].to_string()),
                Some("ENTRYPOINT") => {
                    st.entrypoint = line["ENTRYPOINT".len()..].trim().to_string();
                }
                Some("LABEL") => {
                    let rest = &line["LABEL".len()..];
                    for part in rest.split("\" ").map(str::trim).filter(|p| !p.is_empty()) {
                        let (k, v) = part.split_once("=\"").expect("key=\"value\"");
                        st.labels
                            .push((k.to_string(), v.trim_end_matches('"').to_string()));
                    }
                }
                _ => {}
            }
        }
        st.files.sort();
        st.labels.sort();
        st
    }

    #[test]
    fn the_dockerfile_builds_what_xtask_builds() {
        let path = cmd::workspace_root().join("images/Dockerfile");
        let text = std::fs::read_to_string(&path).unwrap();
        let shim = format!("RUN cargo {}\n", cmd::STATIC_SHIM.join(" "));
        assert!(text.contains(&shim), "the shim as xtask builds it: {shim}");
        for (spec, target) in specs().iter().zip(["operator", "installer"]) {
            let st = stage(&text, target);
            let mut want: Vec<String> = spec.entries.iter().map(|e| e.dest.clone()).collect();
            want.sort();
            assert_eq!(st.files, want, "{target}: files");
            assert_eq!(st.user.as_deref(), spec.user, "{target}: user");
            let entrypoint = serde_json::to_string(&spec.entrypoint).unwrap();
            assert_eq!(
                st.entrypoint,
                entrypoint.replace(',', ", "),
                "{target}: entrypoint"
            );
            let mut want = spec.labels();
            want.sort();
            assert_eq!(st.labels, want, "{target}: labels");
        }
    }

    #[test]
    fn the_operator_runs_as_nonroot_and_the_installer_carries_the_shim() {
        let specs = specs();
        assert_eq!(specs[0].user, Some(NONROOT));
        assert!(specs[1].entries.iter().any(|e| e.dest == SHIM_IN_IMAGE
            && e.source == Source::Binary("containerd-shim-wasmtime-v1")));
    }
}
