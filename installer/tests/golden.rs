//! Golden tests: each fixture becomes exactly its committed golden; applying twice is
//! applying once; install then uninstall gives the original bytes back, with or
//! without a backup.

mod common;

use std::path::PathBuf;

use common::*;
use rstest::rstest;
use wasm_installer::distro::{CONTAINERD_CONFIG, K3S_CONTAINERD_DIR};
use wasm_installer::{
    Backup, ConfigTarget, Distro, FileChange, SystemdCgroupMode, plan_install, plan_uninstall,
};

use SystemdCgroupMode::{Auto, Disabled, Enabled};

#[rstest]
#[case::default_1_6(
    "default-1.6.20.toml",
    Distro::Containerd,
    "1.6.20",
    Some("defaults/containerd-1.6.20.toml"),
    None,
    Auto
)]
#[case::default_1_7(
    "default-1.7.24.toml",
    Distro::Containerd,
    "1.7.24",
    Some("defaults/containerd-1.7.24.toml"),
    None,
    Auto
)]
#[case::default_2_1(
    "default-2.1.9.toml",
    Distro::Containerd,
    "2.1.9",
    Some("defaults/containerd-2.1.9.toml"),
    None,
    Auto
)]
#[case::missing_1_6("missing-1.6.20.toml", Distro::Containerd, "1.6.20", None, None, Auto)]
#[case::missing_1_7(
    "missing-1.7.24.toml",
    Distro::Containerd,
    "1.7.24",
    None,
    None,
    Enabled
)]
#[case::missing_2_1("missing-2.1.9.toml", Distro::Containerd, "2.1.9", None, None, Auto)]
#[case::mirrors(
    "mirrors-1.7.toml",
    Distro::Containerd,
    "1.7.24",
    Some("mirrors-1.7.toml"),
    None,
    Auto
)]
#[case::nvidia(
    "nvidia-2.1.toml",
    Distro::Containerd,
    "2.1.9",
    Some("nvidia-2.1.toml"),
    None,
    Auto
)]
#[case::spin(
    "spin-1.7.toml",
    Distro::Containerd,
    "1.7.24",
    Some("spin-1.7.toml"),
    None,
    Auto
)]
#[case::comments(
    "comments-2.1.toml",
    Distro::Containerd,
    "2.1.9",
    Some("comments-2.1.toml"),
    None,
    Enabled
)]
#[case::unversioned(
    "unversioned-1.6.toml",
    Distro::Containerd,
    "1.6.20",
    Some("unversioned-1.6.toml"),
    None,
    Auto
)]
#[case::v2_on_2_1(
    "v2-on-2.1.toml",
    Distro::Containerd,
    "2.1.9",
    Some("v2-on-2.1.toml"),
    None,
    Auto
)]
#[case::microk8s(
    "microk8s-1.7.toml",
    Distro::MicroK8s,
    "1.7.24",
    Some("microk8s-template-1.7.toml"),
    None,
    Auto
)]
#[case::k3s_existing(
    "k3s-v3-existing.toml.tmpl",
    Distro::K3s,
    "2.1.9",
    Some("k3s-v3.toml.tmpl"),
    Some("k3s-v3-rendered.toml"),
    Auto
)]
#[case::k3s_create(
    "k3s-v3-create.toml.tmpl",
    Distro::K3s,
    "2.1.9",
    None,
    Some("k3s-v3-rendered.toml"),
    Auto
)]
#[case::rke2_full(
    "rke2-full-1.7.toml.tmpl",
    Distro::Rke2,
    "1.7.24",
    Some("rke2-full.toml.tmpl"),
    Some("rke2-rendered-1.7.toml"),
    Auto
)]
#[case::rke2_create_explicit(
    "rke2-create-1.7.toml.tmpl",
    Distro::Rke2,
    "1.7.24",
    None,
    None,
    Disabled
)]
#[case::k0s(
    "k0s-dropin-2.1.toml",
    Distro::K0s,
    "2.1.9",
    None,
    Some("k0s-cri-rendered-2.1.toml"),
    Auto
)]
fn install_matches_golden_and_reverses(
    #[case] golden: &str,
    #[case] distro: Distro,
    #[case] version: &str,
    #[case] input: Option<&str>,
    #[case] rendered: Option<&str>,
    #[case] mode: SystemdCgroupMode,
) {
    let version = v(version);
    let rt = spec("wasmtime", mode);
    let target = target_path(distro, &version, "wasmtime");
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    if let Some(input) = input {
        files.push((target.clone(), fixture(input)));
    }
    if let Some(rendered) = rendered {
        files.push((rendered_path(distro), fixture(rendered)));
    }
    let original = input.map(fixture);

    let plan = plan_install(&facts(&files), version, distro, &rt).unwrap();
    assert_eq!(plan.decision.target.path(), target);
    let FileChange::Write(new) = plan.change.clone() else {
        panic!("expected a write, got {:?}", plan.change)
    };
    assert!(
        plan.restart.is_some(),
        "a change must restart (or be picked up)"
    );
    assert_golden(golden, &new);
    assert!(new.contains("# wasm-installer: managed runtime handler \"wasmtime\""));

    // Applying twice equals applying once: nothing to write, no restart.
    let mut installed = files.clone();
    installed.retain(|(p, _)| *p != target);
    installed.push((target.clone(), new.clone()));
    let again = plan_install(&facts(&installed), version, distro, &rt).unwrap();
    assert_eq!(
        again.change,
        FileChange::Nothing,
        "second install must be a no-op"
    );
    assert_eq!(again.restart, None);

    // Uninstall with the backup: original bytes (or no file) come back.
    let backup = match &original {
        Some(text) => Backup::Original(text),
        None => Backup::FileWasAbsent,
    };
    let undo = plan_uninstall(&facts(&installed), version, distro, &rt, Some(backup)).unwrap();
    match &original {
        Some(text) => assert_eq!(undo.change, FileChange::Write(text.clone())),
        None => assert_eq!(undo.change, FileChange::Delete),
    }

    // Uninstall without a backup removes exactly our entry: for a file that existed,
    // that is the original bytes again.
    let undo = plan_uninstall(&facts(&installed), version, distro, &rt, None).unwrap();
    match (&original, &undo.decision.target) {
        (_, ConfigTarget::DropIn { .. }) => assert_eq!(undo.change, FileChange::Delete),
        (Some(text), _) => assert_eq!(undo.change, FileChange::Write(text.clone())),
        (None, _) => {
            let FileChange::Write(left) = &undo.change else {
                panic!("expected our entry removed, got {:?}", undo.change)
            };
            assert!(!left.contains("wasm-installer"), "{left}");
        }
    }
}

#[test]
fn containerd_2_with_imported_dir_uses_a_dropin() {
    let version = v("2.1.9");
    let rt = spec("wasmtime", Auto);
    let main = fixture("conf-d-main-2.1.toml");
    let files = vec![(PathBuf::from(CONTAINERD_CONFIG), main)];
    let plan = plan_install(&facts(&files), version, Distro::Containerd, &rt).unwrap();
    assert_eq!(
        plan.decision.target.path(),
        PathBuf::from("/etc/containerd/conf.d/wasmruntime-wasmtime.toml")
    );
    let FileChange::Write(new) = &plan.change else {
        panic!("{:?}", plan.change)
    };
    assert_golden("conf-d-dropin-2.1.toml", new);
}

#[test]
fn containerd_1_never_uses_a_dropin() {
    let rt = spec("wasmtime", Auto);
    let main = "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n".to_owned();
    let files = vec![(PathBuf::from(CONTAINERD_CONFIG), main)];
    let plan = plan_install(&facts(&files), v("1.7.24"), Distro::Containerd, &rt).unwrap();
    assert_eq!(
        plan.decision.target.path(),
        PathBuf::from(CONTAINERD_CONFIG)
    );
    assert!(plan.decision.why.contains("5837"));
}

/// Someone edits the file after our install: uninstall keeps their edit and removes
/// only our table, even though a backup exists.
#[rstest]
#[case(
    "mirrors-1.7.toml",
    "1.7.24",
    "sandbox_image = \"registry.internal.example/pause:3.9\"",
    "sandbox_image = \"registry.internal.example/pause:3.10\""
)]
#[case(
    "comments-2.1.toml",
    "2.1.9",
    "# bottom comment",
    "# bottom comment, edited by the admin\n[ttrpc]\n  address = ''"
)]
#[case(
    "defaults/containerd-1.6.20.toml",
    "1.6.20",
    "SystemdCgroup = false",
    "SystemdCgroup = true"
)]
fn uninstall_keeps_other_edits(
    #[case] input: &str,
    #[case] version: &str,
    #[case] from: &str,
    #[case] to: &str,
) {
    let version = v(version);
    let rt = spec("wasmtime", Auto);
    let path = PathBuf::from(CONTAINERD_CONFIG);
    let original = fixture(input);
    let plan = plan_install(
        &facts(&[(path.clone(), original.clone())]),
        version,
        Distro::Containerd,
        &rt,
    )
    .unwrap();
    let FileChange::Write(installed) = plan.change else {
        panic!()
    };
    assert!(installed.contains(from));
    let edited = installed.replacen(from, to, 1);
    let undo = plan_uninstall(
        &facts(&[(path, edited)]),
        version,
        Distro::Containerd,
        &rt,
        Some(Backup::Original(&original)),
    )
    .unwrap();
    assert_eq!(
        undo.change,
        FileChange::Write(original.replacen(from, to, 1))
    );
}

#[test]
fn template_uninstall_keeps_other_edits() {
    let version = v("2.1.9");
    let rt = spec("wasmtime", Auto);
    let dir = PathBuf::from(K3S_CONTAINERD_DIR);
    let tmpl = dir.join("config-v3.toml.tmpl");
    let rendered = (dir.join("config.toml"), fixture("k3s-v3-rendered.toml"));
    let original = fixture("k3s-v3.toml.tmpl");
    let plan = plan_install(
        &facts(&[(tmpl.clone(), original.clone()), rendered.clone()]),
        version,
        Distro::K3s,
        &rt,
    )
    .unwrap();
    let FileChange::Write(installed) = plan.change else {
        panic!()
    };
    let edited = format!(
        "{installed}\n# admin's later addition\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_cdi = true\n"
    );
    let undo = plan_uninstall(
        &facts(&[(tmpl, edited), rendered]),
        version,
        Distro::K3s,
        &rt,
        Some(Backup::Original(&original)),
    )
    .unwrap();
    let FileChange::Write(left) = undo.change else {
        panic!()
    };
    assert!(!left.contains("wasm-installer"));
    assert!(left.starts_with(&original));
    assert!(left.ends_with(
        "# admin's later addition\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_cdi = true\n"
    ));
}

/// Our table drifted (someone changed a value inside it): install repairs it in place.
#[test]
fn drifted_entry_is_repaired_in_place() {
    let version = v("1.7.24");
    let rt = spec("wasmtime", Auto);
    let path = PathBuf::from(CONTAINERD_CONFIG);
    let plan = plan_install(
        &facts(&[(path.clone(), fixture("mirrors-1.7.toml"))]),
        version,
        Distro::Containerd,
        &rt,
    )
    .unwrap();
    let FileChange::Write(good) = plan.change else {
        panic!()
    };
    let drifted = good.replacen(
        "runtime_path = \"/opt/wasmruntime/wasmtime/containerd-shim-wasmtime-v1\"",
        "runtime_path = \"/usr/local/bin/other\"",
        1,
    );
    assert_ne!(drifted, good);
    let repaired =
        plan_install(&facts(&[(path, drifted)]), version, Distro::Containerd, &rt).unwrap();
    assert_eq!(repaired.change, FileChange::Write(good));
}

/// containerd 1.6 -> 1.7 on the same node: the 1.6 form of our entry counts as drifted
/// and becomes the 1.7 form in place (runc's SystemdCgroup copied again); everything
/// else stays.
#[test]
fn containerd_upgrade_from_1_6_rewrites_the_entry() {
    let rt = spec("wasmtime", Auto);
    let on_1_6 =
        std::fs::read_to_string(fixtures_dir().join("golden/default-1.6.20.toml")).unwrap();
    let files = vec![(PathBuf::from(CONTAINERD_CONFIG), on_1_6.clone())];
    let plan = plan_install(&facts(&files), v("1.7.24"), Distro::Containerd, &rt).unwrap();
    let FileChange::Write(new) = &plan.change else {
        panic!("expected a rewrite, got {:?}", plan.change)
    };
    assert!(plan.restart.is_some());
    let shim = "/opt/wasmruntime/wasmtime/containerd-shim-wasmtime-v1";
    assert!(
        new.contains("runtime_type = \"io.containerd.wasmtime.v1\""),
        "{new}"
    );
    assert!(new.contains(&format!("runtime_path = \"{shim}\"")), "{new}");
    let ours = new.split("managed runtime handler").nth(1).unwrap();
    assert!(ours.contains("SystemdCgroup = false"), "{new}");
    // the lines before our table are untouched
    let ours = "# wasm-installer: managed runtime handler";
    assert_eq!(
        new.split(ours).next().unwrap(),
        on_1_6.split(ours).next().unwrap()
    );
}

/// runc with the systemd cgroup driver on containerd 1.6: our entry cannot pass that on
/// (see EntryForm), so the install is refused with what to do, and nothing is written.
#[test]
fn containerd_1_6_with_systemd_cgroups_is_refused() {
    let rt = spec("wasmtime", Auto);
    let files = vec![(
        PathBuf::from(CONTAINERD_CONFIG),
        fixture("systemd-runc-1.6.toml"),
    )];
    let err = plan_install(&facts(&files), v("1.6.20"), Distro::Containerd, &rt).unwrap_err();
    assert!(
        matches!(err, wasm_installer::Error::SystemdCgroupUnsupported { .. })
            && err.to_string().contains("upgrade containerd to 1.7"),
        "{err}"
    );
    // The same file on 1.7 installs with SystemdCgroup = true.
    let plan = plan_install(&facts(&files), v("1.7.24"), Distro::Containerd, &rt).unwrap();
    let FileChange::Write(new) = &plan.change else {
        panic!("{:?}", plan.change)
    };
    assert!(new.contains("SystemdCgroup = true"), "{new}");
}
