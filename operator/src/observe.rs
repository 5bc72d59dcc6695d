//! Reading what the cluster reports into the planner's terms: installer pods into
//! [`PodReport`]s, nodes into [`NodeView`]s. Pure functions over objects from the caches.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::core::{Expression, Selector, SelectorExt};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::Error;
use crate::api::WasmRuntime;
use crate::planner::{NodeState, NodeView, PodReport};
use crate::resources::{REVISION_LABEL, ROLE_LABEL, RUNTIME_LABEL};

/// Filters the watch events of our children (DaemonSets, RuntimeClasses) down to the
/// changes a reconcile must see: anything but the status, and deletions. The
/// controller-manager rewrites a DaemonSet's status on every installer pod change; each
/// such event used to trigger a reconcile that re-applied every child (under 1000 flapping
/// nodes, 19 DaemonSet and 12 RuntimeClass writes a second that changed nothing).
pub struct ChildChanges<K> {
    /// Per child name: the hash of what counts, and the last object seen.
    seen: HashMap<String, (u64, K)>,
    /// During a relist, the names listed so far.
    relisted: Option<Vec<String>>,
}

impl<K> Default for ChildChanges<K> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
            relisted: None,
        }
    }
}

impl<K: Resource + Clone> ChildChanges<K> {
    /// The objects to pass on for one watch event. After a relist, children that were not
    /// listed again (deleted while the watch was down) are passed on as well.
    pub fn on(&mut self, event: watcher::Event<K>) -> Vec<K> {
        match event {
            watcher::Event::Apply(object) => self.applied(object).into_iter().collect(),
            watcher::Event::InitApply(object) => {
                if let Some(names) = self.relisted.as_mut() {
                    names.push(object.name_any());
                }
                self.applied(object).into_iter().collect()
            }
            watcher::Event::Delete(object) => {
                self.seen.remove(&object.name_any());
                vec![object]
            }
            watcher::Event::Init => {
                self.relisted = Some(Vec::new());
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.relisted.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|name| !listed.contains(name))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|name| self.seen.remove(name))
                    .map(|(_, object)| object)
                    .collect()
            }
        }
    }

    fn applied(&mut self, object: K) -> Option<K> {
        let hash = content_hash(object.meta());
        let previous = self.seen.insert(object.name_any(), (hash, object.clone()));
        (previous.map(|(h, _)| h) != Some(hash)).then_some(object)
    }
}

/// What of a child's metadata tells a change worth a reconcile: the generation (bumped by
/// every spec change), labels, annotations and a pending deletion. Not the status, the
/// resource version or managed fields.
fn content_hash(meta: &ObjectMeta) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    hasher.finish()
}

/// Reasons a container waits that will not fix themselves: report them at once instead of
/// waiting for the verify timeout.
const PERMANENT_WAITING: &[&str] = &[
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Drop what [`pod_report`] and the controller never read from an installer pod before it
/// enters the cache: managed fields, annotations, the pod spec but its node, all containers
/// statuses but the first. At 1000 nodes this is most of the operator's memory.
pub fn prune_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        node_name,
        ..Default::default()
    });
    if let Some(status) = pod.status.as_mut() {
        if let Some(cs) = status.container_statuses.as_mut() {
            cs.truncate(1);
        }
        for c in status.container_statuses.iter_mut().flatten() {
            c.image = String::new();
            c.image_id = String::new();
            c.container_id = None;
            c.resources = None;
            c.volume_mounts = None;
            c.allocated_resources = None;
        }
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
        status.host_ips = None;
        status.pod_ips = None;
        status.pod_ip = None;
        status.host_ip = None;
        status.qos_class = None;
    }
}

/// What an installer pod says about its node.
pub fn pod_report(pod: &Pod, now: Timestamp) -> PodReport {
    let revision = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .cloned()
        .unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        return PodReport::Absent;
    }
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if ready {
        return PodReport::Ready { revision };
    }
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first());
    if let Some(container) = container {
        let state = container.state.as_ref();
        if let Some(terminated) = state
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
        {
            return PodReport::Failed {
                revision,
                message: termination_message(terminated),
            };
        }
        // After a failed run the kubelet restarts the container with back-off: the reason is
        // in the last termination.
        let last = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0);
        if let Some(terminated) = last {
            return PodReport::Failed {
                revision,
                message: termination_message(terminated),
            };
        }
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref())
            && let Some(reason) = waiting
                .reason
                .as_deref()
                .filter(|r| PERMANENT_WAITING.contains(r))
        {
            let detail = waiting.message.clone().unwrap_or_default();
            return PodReport::Failed {
                revision,
                message: format!("{reason}: {detail}").trim_end_matches(": ").into(),
            };
        }
    }
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        let message = status
            .and_then(|s| s.message.clone())
            .unwrap_or_else(|| "installer pod failed".into());
        return PodReport::Failed { revision, message };
    }
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    PodReport::Starting {
        revision,
        age_seconds: now.duration_since(created).as_secs(),
    }
}

fn termination_message(terminated: &ContainerStateTerminated) -> String {
    let text = terminated
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    match text {
        Some(text) => text.to_string(),
        None => format!(
            "installer exited with code {}{}",
            terminated.exit_code,
            terminated
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    }
}

/// The node selector of a runtime; unset selects every node. A key or value no node label
/// can have is an error, not a selector that quietly matches nothing (a typo would
/// otherwise look like a finished rollout of zero nodes).
pub fn node_selector(runtime: &WasmRuntime) -> Result<Selector, Error> {
    let invalid = |e: String| Error::InvalidSpec(format!("spec.nodeSelector: {e}"));
    let Some(selector) = &runtime.spec.node_selector else {
        return Ok(Selector::from_iter(std::iter::empty::<Expression>()));
    };
    for (key, value) in selector.match_labels.iter().flatten() {
        label_key(key).map_err(invalid)?;
        label_value(key, value).map_err(invalid)?;
    }
    for e in selector.match_expressions.iter().flatten() {
        label_key(&e.key).map_err(invalid)?;
        for value in e.values.iter().flatten() {
            label_value(&e.key, value).map_err(invalid)?;
        }
    }
    Selector::try_from(selector.clone()).map_err(|e| invalid(e.to_string()))
}

/// Kubernetes' label name syntax: up to 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn label_name_ok(name: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && alnum(name.chars().next())
        && alnum(name.chars().last())
}

/// `[prefix/]name`, the prefix a DNS subdomain of at most 253 characters.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = prefix.is_empty()
        || (prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && !part.starts_with('-')
                    && !part.ends_with('-')
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            }));
    if prefix_ok && label_name_ok(name) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid label key ([DNS-subdomain prefix/]name, the name at most 63 \
             characters of letters, digits, '-', '_', '.', beginning and ending with a letter \
             or digit)",
            shorten(key)
        ))
    }
}

fn label_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || label_name_ok(value) {
        Ok(())
    } else {
        Err(format!(
            "the value {:?} of {:?} is not a valid label value (at most 63 characters of \
             letters, digits, '-', '_', '.', beginning and ending with a letter or digit), so \
             no node can match it",
            shorten(value),
            shorten(key)
        ))
    }
}

/// At most 80 characters of a user's string, for messages (a value may be megabytes).
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((at, _)) => format!("{}... ({} bytes)", &s[..at], s.len()),
        None => s.to_owned(),
    }
}

/// One entry per node: its name and labels.
pub struct NodeLabels<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Installer and uninstaller pods of one runtime, by node.
#[derive(Default)]
pub struct PodsByNode<'a> {
    pub installers: BTreeMap<&'a str, &'a Pod>,
    pub uninstallers: BTreeMap<&'a str, &'a Pod>,
}

/// Sort a runtime's pods by node and role. When a node has two pods of one role (an old one
/// terminating), the newest wins.
pub fn pods_by_node<'a>(runtime: &str, pods: impl Iterator<Item = &'a Pod>) -> PodsByNode<'a> {
    let mut out = PodsByNode::default();
    for pod in pods {
        let labels = pod.metadata.labels.as_ref();
        if labels
            .and_then(|l| l.get(RUNTIME_LABEL))
            .map(String::as_str)
            != Some(runtime)
        {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let map = match labels.and_then(|l| l.get(ROLE_LABEL)).map(String::as_str) {
            Some("uninstall") => &mut out.uninstallers,
            _ => &mut out.installers,
        };
        let newer = map
            .get(node)
            .is_none_or(|old| old.metadata.creation_timestamp < pod.metadata.creation_timestamp);
        if newer {
            map.insert(node, pod);
        }
    }
    out
}

/// The planner's view of every node.
pub fn node_views(
    runtime: &WasmRuntime,
    nodes: &[NodeLabels<'_>],
    pods: &PodsByNode<'_>,
    deleting: bool,
    now: Timestamp,
) -> Result<Vec<NodeView>, Error> {
    let selector = node_selector(runtime)?;
    let key = runtime.node_label_key();
    let report = |map: &BTreeMap<&str, &Pod>, node: &str| {
        map.get(node)
            .map_or(PodReport::Absent, |p| pod_report(p, now))
    };
    Ok(nodes
        .iter()
        .map(|n| NodeView {
            name: n.name.to_string(),
            selected: !deleting && selector.matches(n.labels),
            state: n.labels.get(&key).and_then(|v| NodeState::parse(v)),
            installer: report(&pods.installers, n.name),
            uninstaller: report(&pods.uninstallers, n.name),
        })
        .collect())
}
