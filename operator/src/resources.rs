//! Building the objects a WasmRuntime owns: the RuntimeClass and the installer and
//! uninstaller DaemonSets. Pure: no client calls; the reconciler applies what these return.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, ExecAction, HostPathVolumeSource, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::{RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{NetworkAccess, RestartStrategy, SystemdCgroup, WasmRuntime};
use crate::planner::NodeState;

/// Where the host's root filesystem is mounted in installer pods.
pub const HOST_ROOT: &str = "/host";
/// Label on installer pods naming their WasmRuntime.
pub const RUNTIME_LABEL: &str = "wasmruntime.dev/runtime";
/// Label on installer pods carrying the revision of the spec they install.
pub const REVISION_LABEL: &str = "wasmruntime.dev/revision";
/// Label telling installer pods from uninstaller pods.
pub const ROLE_LABEL: &str = "wasmruntime.dev/role";
/// The installer's readiness file lives in the pod; `wasm-installer ready` reads it.
const READY_COMMAND: [&str; 2] = ["wasm-installer", "ready"];

/// Settings of the operator itself that shape what it builds.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the installer DaemonSets (the only namespace that needs `privileged`).
    pub installer_namespace: String,
    /// Installer image used when `spec.shim.image` is unset: the one matching this operator.
    pub default_installer_image: String,
}

/// What an installer pod does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Install,
    Uninstall,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Uninstall => "uninstall",
        }
    }

    /// Node label values whose nodes run this role's pods. Failed nodes keep their failed
    /// installer pod, so its termination message and logs stay visible.
    fn node_states(self) -> &'static [NodeState] {
        match self {
            Self::Install => &[
                NodeState::Pending,
                NodeState::Provisioned,
                NodeState::Failed,
            ],
            Self::Uninstall => &[NodeState::Uninstalling],
        }
    }
}

/// Name of the DaemonSet of a role.
pub fn daemonset_name(runtime: &WasmRuntime, role: Role) -> String {
    match role {
        Role::Install => format!("wasm-installer-{}", runtime.name_any()),
        Role::Uninstall => format!("wasm-uninstaller-{}", runtime.name_any()),
    }
}

/// Labels every object owned by a WasmRuntime carries.
pub fn owned_labels(runtime: &WasmRuntime) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "wasm-operator".to_string(),
        ),
        (RUNTIME_LABEL.to_string(), runtime.name_any()),
    ])
}

fn owner_meta(runtime: &WasmRuntime, name: String, namespace: Option<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(owned_labels(runtime)),
        owner_references: runtime.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The RuntimeClass: schedules only onto nodes labelled provisioned for this runtime.
pub fn runtime_class(runtime: &WasmRuntime) -> RuntimeClass {
    let spec = &runtime.spec.runtime_class;
    RuntimeClass {
        metadata: owner_meta(runtime, runtime.handler(), None),
        handler: runtime.handler(),
        overhead: spec.overhead.clone(),
        scheduling: Some(Scheduling {
            node_selector: Some(BTreeMap::from([(
                runtime.node_label_key(),
                NodeState::Provisioned.as_str().to_string(),
            )])),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        }),
    }
}

/// The installer's command line for a role: the contract with `wasm-installer`.
pub fn installer_args(runtime: &WasmRuntime, role: Role) -> Vec<String> {
    let spec = &runtime.spec;
    let mut args = vec![
        role.as_str().to_string(),
        format!("--name={}", runtime.name_any()),
        format!("--handler={}", runtime.handler()),
        format!("--host-root={HOST_ROOT}"),
        format!(
            "--restart={}",
            restart_str(spec.containerd.restart.strategy)
        ),
    ];
    if let Some(path) = &spec.containerd.config_path {
        args.push(format!("--config={path}"));
    }
    for arg in spec.containerd.restart.command.iter().flatten() {
        args.push(format!("--restart-command={arg}"));
    }
    match role {
        Role::Install => {
            args.push(format!(
                "--systemd-cgroup={}",
                systemd_cgroup_str(spec.containerd.systemd_cgroup)
            ));
            // The installer's own wait for containerd after a restart: half of the node's
            // budget, so a failing install still has time to roll back within it.
            args.push(format!(
                "--verify-timeout={}",
                (spec.rollout.verify_timeout_seconds / 2).max(10)
            ));
            if !spec.rollout.auto_rollback {
                args.push("--no-rollback".into());
            }
            let network = match spec.wasm.network {
                NetworkAccess::Deny => "deny",
                NetworkAccess::Allow => "allow",
            };
            args.push(format!("--guest-network={network}"));
            args.push(format!("--precompile={}", spec.wasm.precompile));
            if let Some(Quantity(limit)) = &spec.wasm.default_memory_limit {
                args.push(format!("--guest-memory-limit={limit}"));
            }
        }
        // The uninstaller stays Ready after a clean uninstall, which is how the operator
        // learns it is done (it has no API credentials to say so).
        Role::Uninstall => args.push("--stay".into()),
    }
    args
}

fn restart_str(strategy: RestartStrategy) -> &'static str {
    match strategy {
        RestartStrategy::Auto => "auto",
        RestartStrategy::Systemd => "systemd",
        RestartStrategy::Signal => "signal",
        RestartStrategy::Command => "command",
        RestartStrategy::None => "none",
    }
}

fn systemd_cgroup_str(value: SystemdCgroup) -> &'static str {
    match value {
        SystemdCgroup::Auto => "auto",
        SystemdCgroup::True => "true",
        SystemdCgroup::False => "false",
    }
}

/// The installer image for a runtime.
pub fn installer_image(runtime: &WasmRuntime, settings: &Settings) -> String {
    runtime
        .spec
        .shim
        .image
        .clone()
        .unwrap_or_else(|| settings.default_installer_image.clone())
}

/// A short digest of everything an installer pod does on the node: a spec change that
/// changes it re-rolls the nodes; one that does not (e.g. rollout settings) does not.
pub fn revision(runtime: &WasmRuntime, settings: &Settings) -> String {
    let mut hash = Sha256::new();
    hash.update(installer_image(runtime, settings));
    for arg in installer_args(runtime, Role::Install) {
        hash.update([0]);
        hash.update(arg);
    }
    let digest = hash.finalize();
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The installer (or uninstaller) DaemonSet. Update strategy OnDelete: the operator, not the
/// DaemonSet controller, decides when each node gets the new revision.
pub fn daemonset(runtime: &WasmRuntime, role: Role, settings: &Settings) -> DaemonSet {
    let name = daemonset_name(runtime, role);
    let mut selector = owned_labels(runtime);
    selector.insert(ROLE_LABEL.into(), role.as_str().into());
    let mut pod_labels = selector.clone();
    pod_labels.insert(REVISION_LABEL.into(), revision(runtime, settings));

    let states = role
        .node_states()
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let affinity = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: runtime.node_label_key(),
                        operator: "In".into(),
                        values: Some(states),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    };
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let container = Container {
        name: role.as_str().into(),
        image: Some(installer_image(runtime, settings)),
        image_pull_policy: Some(format!("{:?}", runtime.spec.shim.image_pull_policy)),
        args: Some(installer_args(runtime, role)),
        env: Some(vec![
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_UID", "metadata.uid"),
        ]),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "host-root".into(),
            mount_path: HOST_ROOT.into(),
            ..VolumeMount::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(READY_COMMAND.iter().map(|s| s.to_string()).collect()),
            }),
            period_seconds: Some(2),
            failure_threshold: Some(1),
            ..Probe::default()
        }),
        // The installer explains a failure in its termination message; if it dies without
        // writing one, the log tail is used instead.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    DaemonSet {
        metadata: owner_meta(runtime, name, Some(settings.installer_namespace.clone())),
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..DaemonSetUpdateStrategy::default()
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    affinity: Some(affinity),
                    tolerations: (!runtime.spec.tolerations.is_empty())
                        .then(|| runtime.spec.tolerations.clone()),
                    host_pid: Some(true),
                    // A privileged pod with an API token could take over the cluster; ours
                    // reports through readiness and its termination message instead.
                    automount_service_account_token: Some(false),
                    priority_class_name: Some("system-node-critical".into()),
                    termination_grace_period_seconds: Some(30),
                    volumes: Some(vec![Volume {
                        name: "host-root".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/".into(),
                            type_: Some("Directory".into()),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    }
}
