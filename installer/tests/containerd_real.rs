//! The configs we produce, fed to the real containerd binaries of the test bed:
//! `containerd --config <file> config dump` exits non-zero on a config it rejects, and
//! its output shows whether containerd sees our runtime under the right plugin.
//!
//! The binaries come from the test bed (`cargo xtask testbed`); these tests fail (never skip)
//! when they are missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rstest::rstest;
use toml_edit::DocumentMut;

fn containerd_bin(version: &str) -> PathBuf {
    let pkg = testbed::versions::containerd_package(version)
        .unwrap_or_else(|| panic!("the test bed has no containerd {version}"));
    let bin = testbed::paths::deb_root(&pkg).join("usr/bin/containerd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask testbed` to unpack the test bed's containerd packages",
        bin.display()
    );
    let unpacked = testbed::paths::deb_version(&pkg).unwrap_or_default();
    assert!(
        unpacked.starts_with(version),
        "the test bed's {} holds containerd {unpacked}, these fixtures were made for {version}",
        pkg.dir
    );
    bin
}

struct Dump {
    doc: DocumentMut,
    stderr: String,
}

fn config_dump(version: &str, config: &Path) -> Dump {
    let out = Command::new(containerd_bin(version))
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .expect("run containerd");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "containerd {version} rejected {}: {stderr}",
        config.display()
    );
    let doc = String::from_utf8(out.stdout)
        .unwrap()
        .parse::<DocumentMut>()
        .expect("config dump is TOML");
    Dump { doc, stderr }
}

/// Our runtime as containerd sees it: `config dump` always prints the native schema.
/// `for_1_6`: the entry was written for containerd 1.6 (its own form, see EntryForm),
/// whichever containerd reads it now.
fn assert_sees_runtime(version: &str, dump: &Dump, systemd_cgroup: bool, for_1_6: bool) {
    let plugin = if version.starts_with('1') {
        "io.containerd.grpc.v1.cri"
    } else {
        "io.containerd.cri.v1.runtime"
    };
    let rt = &dump.doc["plugins"][plugin]["containerd"]["runtimes"]["wasmtime"];
    let shim = "/opt/wasmruntime/wasmtime/containerd-shim-wasmtime-v1";
    if for_1_6 {
        // 1.6 ignores runtime_path, and any options table reaches the shim empty
        // (see EntryForm): the shim's path as the type, no options
        assert_eq!(
            rt["runtime_type"].as_str(),
            Some(shim),
            "containerd {version} does not see our runtime under {plugin}"
        );
        assert!(
            rt["options"].as_table_like().is_none_or(|t| t.is_empty()),
            "{:?}",
            rt["options"]
        );
        let _ = systemd_cgroup;
    } else {
        assert_eq!(
            rt["runtime_type"].as_str(),
            Some("io.containerd.wasmtime.v1"),
            "containerd {version} does not see our runtime under {plugin}"
        );
        assert_eq!(rt["runtime_path"].as_str(), Some(shim));
        assert_eq!(
            rt["options"]["SystemdCgroup"].as_bool(),
            Some(systemd_cgroup)
        );
    }
    // the pod annotations the shim reads reach its container specs (CRI passes them)
    let annotations: Vec<_> = rt["pod_annotations"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        annotations,
        ["wasmruntime.dev/*"],
        "containerd {version}: pod_annotations of our runtime"
    );
    assert!(
        !dump.stderr.contains("unknown key"),
        "containerd {version} warned about unknown keys: {}",
        dump.stderr
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join("golden").join(name)).unwrap()
}

#[rstest]
#[case("default-1.6.20.toml", "1.6.20", false)]
#[case("default-1.7.24.toml", "1.7.24", false)]
#[case("default-2.1.9.toml", "2.1.9", false)]
#[case("missing-1.6.20.toml", "1.6.20", false)]
#[case("missing-1.7.24.toml", "1.7.24", true)]
#[case("missing-2.1.9.toml", "2.1.9", false)]
#[case("mirrors-1.7.toml", "1.7.24", true)]
#[case("mirrors-1.7.toml", "1.6.20", true)]
#[case("nvidia-2.1.toml", "2.1.9", true)]
#[case("spin-1.7.toml", "1.7.24", false)]
#[case("comments-2.1.toml", "2.1.9", true)]
#[case("unversioned-1.6.toml", "1.6.20", false)]
#[case("unversioned-1.6.toml", "1.7.24", false)]
#[case("v2-on-2.1.toml", "2.1.9", true)]
fn golden_configs_are_accepted(#[case] name: &str, #[case] version: &str, #[case] cgroup: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", &golden(name));
    let for_1_6 = name.contains("1.6");
    assert_sees_runtime(version, &config_dump(version, &path), cgroup, for_1_6);
}

/// MicroK8s substitutes `${VAR}`s before containerd reads the file; do the same.
#[test]
fn microk8s_template_renders_to_an_accepted_config() {
    let text = golden("microk8s-1.7.toml")
        .replace("${SNAPSHOTTER}", "overlayfs")
        .replace("${RUNTIME}", "runc")
        .replace("${RUNTIME_TYPE}", "io.containerd.runc.v2")
        .replace("${SNAP_DATA}", "/var/snap/microk8s/current");
    assert!(!text.contains("${"));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "containerd.toml", &text);
    assert_sees_runtime("1.7.24", &config_dump("1.7.24", &path), false, false);
}

/// k3s/RKE2 render `{{ template "base" . }}` to their generated config; substitute the
/// fixture of that rendered config and check the result.
#[rstest]
#[case("k3s-v3-create.toml.tmpl", "k3s-v3-rendered.toml", "2.1.9", true)]
#[case("k3s-v3-existing.toml.tmpl", "k3s-v3-rendered.toml", "2.1.9", true)]
#[case("rke2-create-1.7.toml.tmpl", "rke2-rendered-1.7.toml", "1.7.24", false)]
fn rendered_templates_are_accepted(
    #[case] tmpl: &str,
    #[case] base: &str,
    #[case] version: &str,
    #[case] cgroup: bool,
) {
    let text = golden(tmpl).replace("{{ template \"base\" . }}", &fixture(base));
    assert!(!text.contains("{{"));
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", &text);
    let dump = config_dump(version, &path);
    assert_sees_runtime(version, &dump, cgroup, version.starts_with("1.6"));
}

/// Main config importing a directory with our drop-in: containerd 2.1 merges it and
/// keeps the main file's CRI settings (runc's SystemdCgroup = true).
#[rstest]
#[case("conf-d-main-2.1.toml", "conf-d-dropin-2.1.toml", true)]
#[case("k0s-cri-rendered-2.1.toml", "k0s-dropin-2.1.toml", false)]
fn dropins_merge_on_containerd_2(
    #[case] main: &str,
    #[case] dropin: &str,
    #[case] runc_cgroup: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    write(&conf_d, "wasmruntime-wasmtime.toml", &golden(dropin));
    let mut doc: DocumentMut = fixture(main).parse().unwrap();
    let mut imports = toml_edit::Array::new();
    imports.push(format!("{}/*.toml", conf_d.display()));
    doc["imports"] = toml_edit::value(imports);
    let path = write(dir.path(), "config.toml", &doc.to_string());
    let dump = config_dump("2.1.9", &path);
    assert_sees_runtime("2.1.9", &dump, runc_cgroup, false);
    let runc =
        &dump.doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"];
    assert_eq!(
        runc["options"]["SystemdCgroup"].as_bool(),
        Some(runc_cgroup)
    );
}

/// Why containerd 1.x gets the main file edited: a drop-in with one runtime table
/// replaces the whole CRI table (containerd#5837), dropping the main file's settings.
#[test]
fn dropin_on_containerd_1_7_wipes_the_cri_table() {
    let dir = tempfile::tempdir().unwrap();
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir(&conf_d).unwrap();
    write(
        &conf_d,
        "ours.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n",
    );
    let main = format!(
        "version = 2\nimports = [\"{}/*.toml\"]\n{}",
        conf_d.display(),
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n"
    );
    let path = write(dir.path(), "config.toml", &main);
    let dump = config_dump("1.7.24", &path);
    let runtimes = &dump.doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert!(runtimes["wasmtime"].is_table(), "drop-in runtime is there");
    let runc_cgroup = runtimes
        .get("runc")
        .and_then(|r| r.get("options"))
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(|v| v.as_bool());
    assert_ne!(
        runc_cgroup,
        Some(true),
        "containerd 1.7 merged the CRI table; the 5837 rationale no longer holds"
    );
}

/// The installer refuses what containerd refuses: a config it rejects stays rejected,
/// and our error names it (checked on the same input).
#[rstest]
#[case("version = 2\n[plugins\n", "1.7.24")]
#[case("version = 5\n", "2.1.9")]
#[case("version = 3\n", "1.7.24")]
fn rejected_inputs_are_refused_by_both(#[case] text: &str, #[case] version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", text);
    let out = Command::new(containerd_bin(version))
        .arg("--config")
        .arg(&path)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "containerd {version} accepted {text:?}"
    );
    let rt = spec("wasmtime", wasm_installer::SystemdCgroupMode::Auto);
    assert!(wasm_installer::add_runtime(text, &rt, &v(version)).is_err());
}
