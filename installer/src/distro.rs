//! Which Kubernetes distribution runs containerd on this node, from host facts (which
//! paths exist), and what that means for config location and restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const K3S_CONTAINERD_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
pub const RKE2_CONTAINERD_DIR: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
pub const MICROK8S_TEMPLATE: &str = "/var/snap/microk8s/current/args/containerd-template.toml";
pub const K0S_CONFIG: &str = "/etc/k0s/containerd.toml";
pub const K0S_BINARY: &str = "/var/lib/k0s/bin/containerd";
pub const K0S_DROPIN_DIR: &str = "/etc/k0s/containerd.d";
/// k0s merges CRI drop-ins into this file and runs containerd with it.
pub const K0S_RENDERED_CRI: &str = "/run/k0s/containerd-cri.toml";

const SYSTEMD_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Everything the pure planner may know about the host: which paths exist and the
/// text of the config files it needs. The effects layer gathers it (see
/// [`probe_paths`]); tests write it by hand.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub existing: BTreeSet<PathBuf>,
    pub files: BTreeMap<PathBuf, String>,
}

impl HostFacts {
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        self.existing.contains(path) || self.files.contains_key(path)
    }

    pub fn file(&self, path: impl AsRef<Path>) -> Option<&str> {
        self.files.get(path.as_ref()).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distro {
    /// containerd installed on its own (kubeadm and friends).
    Containerd,
    K3s,
    Rke2,
    MicroK8s,
    K0s,
}

impl Distro {
    pub const ALL: [Distro; 5] = [
        Distro::Containerd,
        Distro::K3s,
        Distro::Rke2,
        Distro::MicroK8s,
        Distro::K0s,
    ];

    /// The path whose existence marks this distro (none for plain containerd).
    fn signals(self) -> &'static [&'static str] {
        match self {
            Distro::Containerd => &[],
            Distro::K3s => &[K3S_CONTAINERD_DIR],
            Distro::Rke2 => &[RKE2_CONTAINERD_DIR],
            Distro::MicroK8s => &[MICROK8S_TEMPLATE],
            Distro::K0s => &[K0S_CONFIG, K0S_BINARY],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Distro::Containerd => "containerd",
            Distro::K3s => "k3s",
            Distro::Rke2 => "rke2",
            Distro::MicroK8s => "microk8s",
            Distro::K0s => "k0s",
        }
    }

    /// Detects the distro. Two distros' marks on one node is a real possibility (a
    /// k3s left over next to RKE2) and guessing wrong edits the wrong containerd, so
    /// that is an error asking for an explicit choice.
    pub fn detect(facts: &HostFacts) -> Result<Distro> {
        let found: Vec<Distro> = Distro::ALL
            .into_iter()
            .filter(|d| d.signals().iter().any(|p| facts.exists(p)))
            .collect();
        match found.as_slice() {
            [] => Ok(Distro::Containerd),
            [one] => Ok(*one),
            many => Err(Error::AmbiguousDistro {
                found: many.iter().map(|d| d.name()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// containerd's CRI socket on this distro (host path).
    pub fn socket(self) -> &'static str {
        match self {
            Distro::Containerd => "/run/containerd/containerd.sock",
            // RKE2 runs its containerd on k3s's socket path (shared agent code).
            Distro::K3s | Distro::Rke2 => "/run/k3s/containerd/containerd.sock",
            Distro::MicroK8s => "/var/snap/microk8s/common/run/containerd.sock",
            Distro::K0s => "/run/k0s/containerd.sock",
        }
    }

    /// How containerd picks up a new config on this distro.
    pub fn restart(self, facts: &HostFacts) -> Restart {
        let unit_exists = |name: &str| {
            SYSTEMD_DIRS
                .iter()
                .any(|dir| facts.exists(Path::new(dir).join(name)))
        };
        match self {
            Distro::Containerd => Restart::Unit(Unit::Containerd),
            Distro::K3s if unit_exists("k3s-agent.service") => Restart::Unit(Unit::K3sAgent),
            Distro::K3s => Restart::Unit(Unit::K3s),
            Distro::Rke2 if unit_exists("rke2-agent.service") => Restart::Unit(Unit::Rke2Agent),
            Distro::Rke2 => Restart::Unit(Unit::Rke2Server),
            Distro::MicroK8s => Restart::Unit(Unit::MicroK8sContainerd),
            Distro::K0s => Restart::SelfReloading,
        }
    }
}

impl fmt::Display for Distro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Distro {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Distro::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown distro {s:?} (containerd, k3s, rke2, microk8s, k0s)"))
    }
}

/// The systemd unit that owns containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Containerd,
    K3s,
    K3sAgent,
    Rke2Server,
    Rke2Agent,
    MicroK8sContainerd,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Containerd => "containerd.service",
            Unit::K3s => "k3s.service",
            Unit::K3sAgent => "k3s-agent.service",
            Unit::Rke2Server => "rke2-server.service",
            Unit::Rke2Agent => "rke2-agent.service",
            Unit::MicroK8sContainerd => "snap.microk8s.daemon-containerd.service",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Restart this unit after a config change.
    Unit(Unit),
    /// k0s watches `containerd.d` and reloads containerd itself.
    SelfReloading,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restart::Unit(u) => write!(f, "restart {}", u.name()),
            Restart::SelfReloading => write!(f, "none (k0s reloads containerd itself)"),
        }
    }
}

/// Paths whose existence the effects layer should report in [`HostFacts::existing`].
pub fn probe_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Distro::ALL
        .iter()
        .flat_map(|d| d.signals().iter().map(PathBuf::from))
        .collect();
    for dir in SYSTEMD_DIRS {
        for unit in ["k3s-agent.service", "rke2-agent.service"] {
            paths.push(Path::new(dir).join(unit));
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn facts(paths: &[&str]) -> HostFacts {
        HostFacts {
            existing: paths.iter().map(PathBuf::from).collect(),
            files: BTreeMap::new(),
        }
    }

    #[rstest]
    #[case(&[], Distro::Containerd)]
    #[case(&[CONTAINERD_CONFIG], Distro::Containerd)]
    #[case(&[K3S_CONTAINERD_DIR], Distro::K3s)]
    #[case(&[RKE2_CONTAINERD_DIR, CONTAINERD_CONFIG], Distro::Rke2)]
    #[case(&[MICROK8S_TEMPLATE], Distro::MicroK8s)]
    #[case(&[K0S_BINARY], Distro::K0s)]
    #[case(&[K0S_CONFIG], Distro::K0s)]
    fn detects(#[case] paths: &[&str], #[case] want: Distro) {
        assert_eq!(Distro::detect(&facts(paths)).unwrap(), want);
    }

    #[test]
    fn two_distros_is_an_error() {
        let err = Distro::detect(&facts(&[K3S_CONTAINERD_DIR, RKE2_CONTAINERD_DIR])).unwrap_err();
        assert!(err.to_string().contains("k3s, rke2"), "{err}");
    }

    #[rstest]
    #[case(Distro::K3s, &[], Restart::Unit(Unit::K3s))]
    #[case(Distro::K3s, &["/etc/systemd/system/k3s-agent.service"], Restart::Unit(Unit::K3sAgent))]
    #[case(Distro::Rke2, &["/usr/local/lib/systemd/system/rke2-agent.service"], Restart::Unit(Unit::Rke2Agent))]
    #[case(Distro::Rke2, &[], Restart::Unit(Unit::Rke2Server))]
    #[case(Distro::MicroK8s, &[], Restart::Unit(Unit::MicroK8sContainerd))]
    #[case(Distro::K0s, &[], Restart::SelfReloading)]
    fn restart_targets(#[case] d: Distro, #[case] paths: &[&str], #[case] want: Restart) {
        assert_eq!(d.restart(&facts(paths)), want);
    }
}
