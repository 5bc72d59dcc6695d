//! `cargo xtask testbed`: install or build every real part the tests run, into the cache.
//!
//! Only the package registries are reachable, so nothing is downloaded prebuilt: Kubernetes,
//! etcd, helm and kwok are `go build` from the Go module proxy; containerd, runc and the CNI
//! plugins are Debian packages unpacked side by side. Each part is skipped when its stamp
//! (the exact build definition) is already in the cache.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use testbed::paths;
use testbed::versions::{self, DebPackage, GoBuild};

use crate::cmd;

/// Everything, in the order the tests need it.
pub fn install_all() -> Result<()> {
    let started = Instant::now();
    apt_packages(versions::APT_PACKAGES)?;
    for build in versions::GO_BUILDS {
        go_build(build)?;
    }
    kwok_stages()?;
    debs(versions::DEB_PACKAGES)?;
    nextest()?;
    wit_bindgen()?;
    eprintln!(
        "xtask: test bed ready in {:.0?} (cache {})",
        started.elapsed(),
        paths::cache_root().display()
    );
    Ok(())
}

fn apt_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// The wrapper module's go.mod: requires the upstream module and pins every replaced module to a
/// published version.
fn wrapper_go_mod(build: &GoBuild) -> String {
    let mut text = format!(
        "module wasmruntime.dev/testbed/{}\n\ngo 1.26.0\n\nrequire {} {}\n",
        build.name, build.module, build.version
    );
    if !build.replace.is_empty() {
        text.push_str("\nreplace (\n");
        for (module, version) in build.replace {
            text.push_str(&format!("\t{module} => {module} {version}\n"));
        }
        text.push_str(")\n");
    }
    text
}

/// A file importing every main package, so `go mod tidy` resolves all their dependencies.
fn wrapper_tools_go(build: &GoBuild) -> String {
    let mut text = String::from("//go:build tools\n\npackage tools\n\nimport (\n");
    for (package, _) in build.packages {
        text.push_str(&format!("\t_ \"{package}\"\n"));
    }
    text.push_str(")\n");
    text
}

fn go_build(build: &GoBuild) -> Result<()> {
    let dir = paths::go_dir(build);
    let stamp = dir.join("bin/.stamp");
    let definition = format!(
        "{}{}{:?}{}",
        wrapper_go_mod(build),
        wrapper_tools_go(build),
        build.packages,
        build.ldflags
    );
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == definition) {
        return Ok(());
    }
    let started = Instant::now();
    eprintln!(
        "xtask: go build {}@{} (cached after this)",
        build.module, build.version
    );
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(src.join("go.mod"), wrapper_go_mod(build))?;
    std::fs::write(src.join("tools.go"), wrapper_tools_go(build))?;
    let go = |args: &[&str]| -> Result<()> {
        cmd::run(
            Command::new("go")
                .args(args)
                .current_dir(&src)
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0")
                .env("GOFLAGS", "-mod=mod"),
        )
    };
    go(&["mod", "tidy"])?;
    let ldflags = format!("-s -w {}", build.ldflags);
    for (package, binary) in build.packages {
        let out = dir.join("bin").join(binary);
        go(&[
            "build",
            "-trimpath",
            "-ldflags",
            &ldflags,
            "-o",
            path_str(&out)?,
            package,
        ])?;
    }
    std::fs::write(&stamp, definition)?;
    eprintln!("xtask: built {} in {:.0?}", build.name, started.elapsed());
    Ok(())
}

/// Concatenate kwok's upstream stage files (from the kwok module just built) into its node
/// and pod stage configs.
fn kwok_stages() -> Result<()> {
    let modcache = cmd::output(Command::new("go").args(["env", "GOMODCACHE"]))?;
    let base = Path::new(modcache.trim())
        .join(format!(
            "{}@{}",
            versions::KWOK_BUILD.module,
            versions::KWOK_BUILD.version
        ))
        .join("kustomize/stage");
    for (dirs, out) in [
        (versions::KWOK_NODE_STAGE_DIRS, paths::kwok_node_stages()),
        (versions::KWOK_POD_STAGE_DIRS, paths::kwok_pod_stages()),
    ] {
        let mut config = String::new();
        for dir in dirs {
            let mut files: Vec<_> = std::fs::read_dir(base.join(dir))
                .with_context(|| format!("kwok stages in {}", base.join(dir).display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
                })
                .collect();
            files.sort();
            for file in files {
                config.push_str("---\n");
                config.push_str(&std::fs::read_to_string(&file)?);
            }
        }
        std::fs::write(&out, config).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// A private apt state under the cache with the Debian suites the packages come from, so
/// downloading from newer suites never touches the machine's own apt sources.
fn private_apt() -> Result<Vec<String>> {
    let root = paths::cache_root().join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    let suites: std::collections::BTreeSet<&str> =
        versions::DEB_PACKAGES.iter().map(|p| p.suite).collect();
    let mut sources = String::new();
    for suite in suites {
        sources.push_str(&format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"
        ));
    }
    std::fs::write(root.join("sources.list"), sources)?;
    let dir = |p: &str| format!("{}", root.join(p).display());
    Ok(vec![
        "-o".into(),
        format!("Dir::Etc::SourceList={}", dir("sources.list")),
        "-o".into(),
        "Dir::Etc::SourceParts=/dev/null".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", dir("lists")),
        "-o".into(),
        format!("Dir::Cache={}", dir("cache")),
        "-o".into(),
        "APT::Sandbox::User=root".into(),
        "-qq".into(),
    ])
}

fn debs(packages: &[DebPackage]) -> Result<()> {
    let todo: Vec<&DebPackage> = packages
        .iter()
        .filter(|p| !paths::deb_root(p).join("VERSION").exists())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let apt = private_apt()?;
    cmd::run(Command::new("apt-get").args(&apt).arg("update"))?;
    let download = tempfile_dir()?;
    for pkg in todo {
        let root = paths::deb_root(pkg);
        eprintln!(
            "xtask: unpack {}/{} into {}",
            pkg.package,
            pkg.suite,
            root.display()
        );
        for old in std::fs::read_dir(&download)? {
            std::fs::remove_file(old?.path())?;
        }
        cmd::run(
            Command::new("apt-get")
                .args(&apt)
                .args(["download", &format!("{}/{}", pkg.package, pkg.suite)])
                .current_dir(&download),
        )?;
        let deb = std::fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {} produced no .deb", pkg.package))?;
        let version =
            cmd::output(Command::new("dpkg-deb").args(["-f", path_str(&deb)?, "Version"]))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        cmd::run(Command::new("dpkg").args(["-x", path_str(&deb)?, path_str(&root)?]))?;
        std::fs::write(root.join("VERSION"), version.trim())?;
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = paths::cache_root().join("apt/download");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn nextest() -> Result<()> {
    let have = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(versions::NEXTEST))
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    eprintln!(
        "xtask: cargo install cargo-nextest {} (a few minutes, once)",
        versions::NEXTEST
    );
    // Its own target dir: installing must not invalidate the workspace build.
    let target = paths::cache_root().join("target-tools");
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-nextest",
                "--locked",
                "--version",
                versions::NEXTEST,
            ])
            .env("CARGO_TARGET_DIR", target)
            // A test runner needs no link-time optimisation: this halves the cold build.
            .env("CARGO_PROFILE_RELEASE_LTO", "off")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1"),
    )
}

/// Installed once here, before any test runs: the shim's fixture builders run in many
/// test processes at once and must find it in place.
fn wit_bindgen() -> Result<()> {
    let bin = paths::wit_bindgen();
    if bin.exists() {
        return Ok(());
    }
    let root = bin
        .parent()
        .and_then(Path::parent)
        .context("wit-bindgen root")?;
    eprintln!(
        "xtask: cargo install wit-bindgen-cli {} (a minute or two, once)",
        versions::WIT_BINDGEN
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "wit-bindgen-cli",
                "--locked",
                "--version",
                versions::WIT_BINDGEN,
                "--root",
            ])
            .arg(root)
            .env("CARGO_TARGET_DIR", paths::cache_root().join("target-tools")),
    )
}

fn path_str(path: &Path) -> Result<&str> {
    match path.to_str() {
        Some(s) => Ok(s),
        None => bail!("non-UTF-8 path {}", path.display()),
    }
}
