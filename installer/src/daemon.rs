//! What the running containerd tells about a node whose setup the WasmRuntime leaves to
//! `auto`: which config it really reads, and whether something restarts it when it exits.
//! Pure decisions over what /proc showed (the installer runs with hostPID).

use std::path::{Path, PathBuf};

use crate::distro::{
    CONTAINERD_CONFIG, K0S_CONFIG, K3S_CONTAINERD_DIR, MICROK8S_TEMPLATE, RKE2_CONTAINERD_DIR,
};

/// Process names of supervisors that start a service again when it exits: runit, s6,
/// daemontools (and the test bed's supervisor, which is one), OpenRC's supervise-daemon,
/// supervisord, monit.
pub const SUPERVISORS: &[&str] = &[
    "runsv",
    "s6-supervise",
    "supervise",
    "supervise-daemon",
    "supervisord",
    "monit",
];

/// A running containerd daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub pid: i32,
    /// The config it was started with (`--config`, else containerd's default).
    pub config: PathBuf,
    /// The `comm` of its parent, unless that is PID 1.
    pub parent: Option<String>,
}

/// The config to edit when none was given: that of the one running containerd, when it is
/// not the default path and not a file a distribution renders (k3s, RKE2, MicroK8s and
/// k0s have their own handling). `None`: keep the usual detection.
pub fn adopted_config(daemons: &[Daemon]) -> Option<PathBuf> {
    let [daemon] = daemons else {
        return None;
    };
    let config = &daemon.config;
    let distro_owned = [
        K3S_CONTAINERD_DIR,
        RKE2_CONTAINERD_DIR,
        "/var/snap/microk8s",
        K0S_CONFIG,
        "/etc/k0s",
        "/run/k0s",
    ]
    .iter()
    .any(|p| config.starts_with(p))
        || config.starts_with(
            Path::new(MICROK8S_TEMPLATE)
                .parent()
                .unwrap_or(Path::new("/")),
        );
    (config != Path::new(CONTAINERD_CONFIG) && !distro_owned).then(|| config.clone())
}

/// The supervisor of the containerd serving `config`, if its parent is a known one: then
/// SIGTERM is a restart (the installer still verifies that a new containerd serves).
pub fn supervisor<'a>(daemons: &'a [Daemon], config: &Path) -> Option<&'a str> {
    daemons
        .iter()
        .filter(|d| d.config == config)
        .find_map(|d| d.parent.as_deref())
        .filter(|comm| SUPERVISORS.contains(comm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn d(config: &str, parent: Option<&str>) -> Daemon {
        Daemon {
            pid: 42,
            config: config.into(),
            parent: parent.map(str::to_owned),
        }
    }

    #[rstest]
    #[case::none(&[], None)]
    #[case::default_path(&[d(CONTAINERD_CONFIG, None)], None)]
    #[case::custom(&[d("/srv/containerd/config.toml", None)], Some("/srv/containerd/config.toml"))]
    #[case::two_daemons(&[d("/a.toml", None), d("/b.toml", None)], None)]
    #[case::k3s(&[d("/var/lib/rancher/k3s/agent/etc/containerd/config.toml", None)], None)]
    #[case::rke2(&[d("/var/lib/rancher/rke2/agent/etc/containerd/config.toml", None)], None)]
    #[case::microk8s(&[d("/var/snap/microk8s/current/args/containerd.toml", None)], None)]
    #[case::k0s(&[d("/etc/k0s/containerd.toml", None)], None)]
    fn adopts_only_a_single_custom_config(#[case] daemons: &[Daemon], #[case] want: Option<&str>) {
        assert_eq!(adopted_config(daemons), want.map(PathBuf::from));
    }

    #[rstest]
    #[case::runit(Some("runsv"), Some("runsv"))]
    #[case::test_bed(Some("supervise"), Some("supervise"))]
    #[case::orphan_of_init(None, None)]
    #[case::a_shell(Some("bash"), None)]
    #[case::k3s_agent(Some("k3s-agent"), None)]
    fn trusts_only_known_supervisors(#[case] parent: Option<&str>, #[case] want: Option<&str>) {
        let daemons = [d("/srv/c.toml", parent)];
        assert_eq!(supervisor(&daemons, Path::new("/srv/c.toml")), want);
        assert_eq!(supervisor(&daemons, Path::new("/other.toml")), None);
    }
}
