//! Bad input is refused with a clear error, and nothing is produced to write.

mod common;

use std::path::PathBuf;

use common::*;
use rstest::rstest;
use wasm_installer::distro::{CONTAINERD_CONFIG, K3S_CONTAINERD_DIR};
use wasm_installer::{Distro, SystemdCgroupMode, add_runtime, plan_install, remove_runtime};

#[rstest]
#[case::not_toml("version = 2\n[plugins\n", "1.7.24", "not_toml")]
#[case::unknown_schema("version = 7\n", "2.1.9", "unknown_schema_version")]
#[case::schema_as_string("version = \"2\"\n", "1.7.24", "unexpected_type")]
#[case::v3_on_1x("version = 3\n", "1.7.24", "schema_not_accepted")]
#[case::v4_on_2_1("version = 4\n", "2.1.9", "schema_not_accepted")]
#[case::unversioned_on_2x("[plugins.cri]\n", "2.1.9", "unversioned_config")]
#[case::cri_not_a_table(
    "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = \"off\"\n",
    "1.7.24",
    "unexpected_type"
)]
#[case::containerd_not_a_table(
    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\ncontainerd = 1\n",
    "1.7.24",
    "unexpected_type"
)]
#[case::runtimes_inline(
    "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\nruntimes = { runc = { runtime_type = 'io.containerd.runc.v2' } }\n",
    "2.1.9",
    "unexpected_type"
)]
#[case::runc_cgroup_string(
    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = \"true\"\n",
    "1.7.24",
    "unexpected_type"
)]
#[case::foreign_handler(
    "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\nruntime_type = \"io.containerd.wasmtime.v1\"\n",
    "1.7.24",
    "handler_not_owned"
)]
#[case::foreign_handler_inline(
    "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]\nwasmtime = { runtime_type = 'x' }\n",
    "2.1.9",
    "handler_not_owned"
)]
#[case::other_handlers_marker(
    "version = 2\n# wasm-installer: managed runtime handler \"wasm\"; do not edit, uninstall removes it\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\nruntime_type = \"x\"\n",
    "1.7.24",
    "handler_not_owned"
)]
#[case::no_defaults_for_2_0("", "2.0.4", "no_embedded_defaults")]
fn add_refuses(#[case] text: &str, #[case] version: &str, #[case] category: &str) {
    let rt = spec("wasmtime", SystemdCgroupMode::Auto);
    let err = add_runtime(text, &rt, &v(version)).unwrap_err();
    assert_eq!(err.category(), category, "{err}");
    assert!(!err.to_string().is_empty());
}

#[test]
fn remove_refuses_a_foreign_handler() {
    let rt = spec("wasmtime", SystemdCgroupMode::Auto);
    let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\nruntime_type = \"io.containerd.wasmtime.v1\"\n";
    let err = remove_runtime(text, None, &rt, &v("1.7.24")).unwrap_err();
    assert_eq!(err.category(), "handler_not_owned");
    assert!(err.to_string().contains("runtimes.wasmtime"), "{err}");
}

#[test]
fn k3s_template_with_a_foreign_handler_is_refused() {
    let rt = spec("wasmtime", SystemdCgroupMode::Enabled);
    let tmpl = "{{ template \"base\" . }}\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.\"wasmtime\"]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n";
    let path = PathBuf::from(K3S_CONTAINERD_DIR).join("config-v3.toml.tmpl");
    let err =
        plan_install(&facts(&[(path, tmpl.into())]), v("2.1.9"), Distro::K3s, &rt).unwrap_err();
    assert_eq!(err.category(), "handler_not_owned");
}

/// k3s auto-adds a `wasmtime` runtime when it finds such a shim on PATH; appending a
/// second table of that name would make the rendered config invalid.
#[test]
fn k3s_rendered_config_with_an_autodetected_handler_is_refused() {
    let rt = spec("wasmtime", SystemdCgroupMode::Auto);
    let rendered = format!(
        "{}\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.'wasmtime']\n  runtime_type = \"io.containerd.wasmtime.v1\"\n",
        fixture("k3s-v3-rendered.toml")
    );
    let dir = PathBuf::from(K3S_CONTAINERD_DIR);
    let err = plan_install(
        &facts(&[(dir.join("config.toml"), rendered)]),
        v("2.1.9"),
        Distro::K3s,
        &rt,
    )
    .unwrap_err();
    assert_eq!(err.category(), "handler_not_owned");
}

#[test]
fn k3s_v2_template_on_containerd_2_is_refused() {
    let rt = spec("wasmtime", SystemdCgroupMode::Enabled);
    let path = PathBuf::from(K3S_CONTAINERD_DIR).join("config.toml.tmpl");
    let err = plan_install(
        &facts(&[(path, "{{ template \"base\" . }}\n".into())]),
        v("2.1.9"),
        Distro::K3s,
        &rt,
    )
    .unwrap_err();
    assert_eq!(err.category(), "template_conflict");
}

#[test]
fn k3s_auto_cgroup_without_rendered_config_is_refused() {
    let rt = spec("wasmtime", SystemdCgroupMode::Auto);
    let err = plan_install(&facts(&[]), v("2.1.9"), Distro::K3s, &rt).unwrap_err();
    assert_eq!(err.category(), "systemd_cgroup_unknown");
}

#[test]
fn damaged_block_is_refused() {
    let rt = spec("wasmtime", SystemdCgroupMode::Enabled);
    let tmpl = "{{ template \"base\" . }}\n# wasm-installer: managed runtime handler \"wasmtime\"; do not edit, uninstall removes it\n[x]\n";
    let path = PathBuf::from(K3S_CONTAINERD_DIR).join("config-v3.toml.tmpl");
    let err =
        plan_install(&facts(&[(path, tmpl.into())]), v("2.1.9"), Distro::K3s, &rt).unwrap_err();
    assert_eq!(err.category(), "damaged_managed_block");
}

#[test]
fn foreign_dropin_file_is_refused() {
    let rt = spec("wasmtime", SystemdCgroupMode::Enabled);
    let path = PathBuf::from("/etc/k0s/containerd.d/wasmruntime-wasmtime.toml");
    let err = plan_install(
        &facts(&[(path, "version = 3\n".into())]),
        v("2.1.9"),
        Distro::K0s,
        &rt,
    )
    .unwrap_err();
    assert_eq!(err.category(), "foreign_file");
}

#[test]
fn foreign_handler_in_main_config_blocks_a_dropin() {
    let rt = spec("wasmtime", SystemdCgroupMode::Auto);
    let main = format!(
        "{}[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime]\n  runtime_type = 'x'\n",
        fixture("conf-d-main-2.1.toml")
    );
    let err = plan_install(
        &facts(&[(PathBuf::from(CONTAINERD_CONFIG), main)]),
        v("2.1.9"),
        Distro::Containerd,
        &rt,
    )
    .unwrap_err();
    assert_eq!(err.category(), "handler_not_owned");
}
