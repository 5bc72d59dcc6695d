//! The WasmRuntime controller: fetch, validate, build, apply, status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::Error;
use crate::api::WasmRuntime;
use crate::metrics::Metrics;
use crate::observe::{self, NodeLabels};
use crate::planner::{self, NodeState, Plan, Rollout, Transition};
use crate::resources::{self, Role, Settings};
use crate::status::{self, Blocker, StatusInput};

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "wasm-operator";
/// Finalizer that holds a WasmRuntime until its nodes are clean.
pub const FINALIZER: &str = "wasmruntime.dev/cleanup";
/// How often a rollout in flight is looked at even without events (verify timeouts).
const IN_FLIGHT_REQUEUE: Duration = Duration::from_secs(10);
const STEADY_REQUEUE: Duration = Duration::from_secs(300);
/// How long to wait for the node cache to show a label we wrote before trusting it again.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub pods: Store<Pod>,
    /// Every WasmRuntime, readable or not: one object the operator cannot deserialize (say,
    /// stored under an older schema) must not stop the watch for all the others.
    pub runtimes: Store<DeserializeGuard<WasmRuntime>>,
    /// Per unreadable runtime, the generation and error already reported, so reporting it
    /// (a status write, which is itself a change) happens once, not in a loop.
    pub unreadable: Mutex<HashMap<String, (Option<i64>, String)>>,
    /// Consecutive failed reconciles per runtime, for the retry back-off.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Hash of what we last applied, per object, so a reconcile does not re-send unchanged
    /// objects (O(reconciles) writes otherwise). Cleared for a runtime whenever its
    /// DaemonSets or RuntimeClass change, so drift is still repaired.
    pub applied: Arc<Mutex<HashMap<String, u64>>>,
    /// Label values we wrote that the node cache may not show yet, per runtime and node.
    /// Planning on a cache older than our own writes would repeat transitions (the same
    /// "expectations" idea as the ReplicaSet controller's).
    pub expected: Mutex<HashMap<String, Expectations>>,
}

/// Per node: the label value we wrote and when.
pub type Expectations = HashMap<String, (Option<NodeState>, Instant)>;

/// Retry delays of the watches whose caches every plan reads (nodes, pods) and of our
/// children's: kube's default shape, but at most 5 s apart and calm again after 10 s.
/// kube's default (up to 30 s apart, escalating for 2 min) adds up to 30 s of a stale
/// cache after every apiserver outage, during which a rollout waits on pods it cannot see.
fn cache_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter();
    ResetTimerBackoff::new(delays.into(), Duration::from_secs(10))
}

/// Our children of one kind (DaemonSets or RuntimeClasses), as the changes a reconcile must
/// see ([`observe::ChildChanges`]: not their status).
fn child_changes<K>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=wasm-operator");
    let mut filter = observe::ChildChanges::default();
    watcher::watcher(api, owned)
        .backoff(cache_backoff())
        .flat_map(move |event| {
            let objects = match event {
                Ok(event) => filter.on(event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(objects)
        })
}

/// A watch event in a few words, for the debug log (which watch relisted when).
fn brief<K: Resource>(e: &watcher::Event<K>) -> String {
    match e {
        watcher::Event::Apply(o) => format!("apply {:?}", o.meta().resource_version),
        watcher::Event::Delete(o) => format!("delete {:?}", o.meta().resource_version),
        watcher::Event::Init => "init".into(),
        watcher::Event::InitApply(_) => "initapply".into(),
        watcher::Event::InitDone => "initdone".into(),
    }
}

/// Run the controller until shutdown.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Result<(), Error> {
    let runtimes: Api<DeserializeGuard<WasmRuntime>> = Api::all(client.clone());
    // Fail fast with a clear message when the CRD is not installed.
    runtimes
        .list(&ListParams::default().limit(1))
        .await
        .map_err(Error::CrdMissing)?;

    // The node and pod caches every plan reads are kept by tasks of their own, not polled
    // as the controller's input: after an apiserver restart the controller was seen leaving
    // its input streams unpolled for minutes (responses to the watches' relists read 13 to
    // 90 s after they arrived) while reconciles ran, so plans ran on stale caches and a
    // rollout waited up to 4 min. The tasks only signal the controller, coalesced.
    let (nodes, node_writer) = reflector::store();
    let node_changed = Arc::new(tokio::sync::Notify::new());
    let node_cache = watcher::watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
    )
    .backoff(cache_backoff())
    .inspect(|e| tracing::debug!(watch = "nodes", event = ?e.as_ref().map(brief), "watch"))
    // Only names and labels are read; managed fields dominate a node's metadata.
    .modify(|node| {
        node.metadata.managed_fields = None;
        node.metadata.annotations = None;
    })
    .reflect(node_writer)
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default());
    let node_task = tokio::spawn(signal_changes(node_cache, "nodes", {
        let node_changed = node_changed.clone();
        move |_| node_changed.notify_one()
    }));
    let installer_pods =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=wasm-operator");
    let (pods, pod_writer) = reflector::store();
    let pod_changed = Arc::new(ChangedRuntimes::default());
    let pod_cache = watcher::watcher(
        Api::<Pod>::namespaced(client.clone(), &settings.installer_namespace),
        installer_pods,
    )
    .backoff(cache_backoff())
    .inspect(|e| tracing::debug!(watch = "pods", event = ?e.as_ref().map(brief), "watch"))
    .modify(observe::prune_pod)
    .reflect(pod_writer)
    .applied_objects();
    let pod_task = tokio::spawn(signal_changes(pod_cache, "pods", {
        let pod_changed = pod_changed.clone();
        move |pod: Pod| {
            if let Some(name) = pod.labels().get(resources::RUNTIME_LABEL) {
                pod_changed.add(name);
            }
        }
    }));

    let applied: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let forget = applied.clone();
    // A change to a child (ours or anyone's) must reach the API again on the next apply.
    let child_changed = move |labels: &std::collections::BTreeMap<String, String>| {
        let name = labels.get(resources::RUNTIME_LABEL)?;
        let prefix = format!("{name}/");
        forget
            .lock()
            .expect("applied lock")
            .retain(|key, _| !key.starts_with(&prefix));
        Some(ObjectRef::<DeserializeGuard<WasmRuntime>>::new(name))
    };
    let child_changed_too = child_changed.clone();
    let controller = Controller::new(runtimes, watcher::Config::default());
    let runtime_store = controller.store();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        nodes,
        pods,
        runtimes: runtime_store,
        applied,
        expected: Mutex::default(),
        unreadable: Mutex::default(),
        failures: Mutex::default(),
    });
    controller
        // Not `owns`: that maps a namespaced child to an owner in the child's namespace, and
        // our owner is cluster-scoped.
        .watches_stream(
            child_changes(Api::<DaemonSet>::namespaced(
                client.clone(),
                &settings.installer_namespace,
            )),
            move |ds| child_changed(ds.labels()),
        )
        .watches_stream(
            child_changes(Api::<RuntimeClass>::all(client.clone())),
            move |rc| child_changed_too(rc.labels()),
        )
        // A node's labels matter to every runtime (selection and our state labels).
        .reconcile_all_on(futures::stream::unfold(
            node_changed,
            |changed| async move {
                changed.notified().await;
                Some(((), changed))
            },
        ))
        .reconcile_on(pod_changed.stream())
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile failed");
            }
        })
        .await;
    node_task.abort();
    pod_task.abort();
    Ok(())
}

/// Drives a cache's watch for good, calling `changed` for every object it applies.
async fn signal_changes<K>(
    cache: impl futures::Stream<Item = Result<K, watcher::Error>>,
    watch: &'static str,
    mut changed: impl FnMut(K),
) {
    let mut cache = std::pin::pin!(cache);
    while let Some(event) = cache.next().await {
        match event {
            Ok(object) => changed(object),
            // retried with the cache's backoff
            Err(error) => warn!(watch, %error, "watch failed"),
        }
    }
}

/// Runtimes whose installer pods changed, until the controller takes them: a set, so a
/// controller that takes them late gets each name once and never holds up the cache.
#[derive(Default)]
struct ChangedRuntimes {
    names: Mutex<std::collections::BTreeSet<String>>,
    added: tokio::sync::Notify,
}

impl ChangedRuntimes {
    fn add(&self, name: &str) {
        self.names
            .lock()
            .expect("changed runtimes lock")
            .insert(name.to_string());
        self.added.notify_one();
    }

    fn take(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.names.lock().expect("changed runtimes lock"))
    }

    /// The names as they come, for [`Controller::reconcile_on`].
    fn stream(
        self: Arc<Self>,
    ) -> impl futures::Stream<Item = ObjectRef<DeserializeGuard<WasmRuntime>>> + Send + 'static
    {
        futures::stream::unfold(self, |changed| async move {
            changed.added.notified().await;
            let names = changed.take();
            Some((names, changed))
        })
        .flat_map(|names| futures::stream::iter(names.into_iter().map(|n| ObjectRef::new(&n))))
    }
}

#[instrument(skip_all, fields(runtime = %guard.name_any()))]
async fn reconcile(
    guard: Arc<DeserializeGuard<WasmRuntime>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    // Until the node and pod watches have listed once, the caches are empty: a plan made on
    // them would report 0/0 Ready, and a deletion would see no pods and uninstall under them.
    if !caches_listed(&ctx) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let runtime = match &guard.0 {
        Ok(runtime) => Arc::new(runtime.clone()),
        Err(invalid) => return report_unreadable(&guard, invalid, &ctx).await,
    };
    // A selector no node can satisfy is reported before anything is written to the object,
    // not even our finalizer: nothing was installed for it yet.
    let ours = runtime.finalizers().iter().any(|f| f == FINALIZER);
    if !ours
        && runtime.metadata.deletion_timestamp.is_none()
        && let Err(Error::InvalidSpec(msg)) = observe::node_selector(&runtime)
    {
        return invalid_spec(&runtime, &ctx, msg).await;
    }
    let api: Api<WasmRuntime> = Api::all(ctx.client.clone());
    let name = runtime.name_any();
    let result = finalizer(&api, FINALIZER, runtime, |event| async {
        match event {
            Finalizer::Apply(runtime) => apply(&runtime, &ctx).await,
            Finalizer::Cleanup(runtime) => cleanup(&runtime, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer);
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&name);
    }
    result
}

/// Exponential back-off for a runtime's `attempt`-th consecutive failure: 1 s, 2 s, 4 s, ...
/// up to 256 s, so a broken apiserver or webhook is not hammered.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

fn error_policy(
    runtime: Arc<DeserializeGuard<WasmRuntime>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.reconcile_failed(error.category());
    match error {
        Error::InvalidSpec(_) => Action::await_change(),
        Error::DeletionBlocked(_) => Action::requeue(IN_FLIGHT_REQUEUE),
        Error::CacheBehind => Action::requeue(Duration::from_millis(200)),
        _ => {
            let attempt = {
                let mut failures = ctx.failures.lock().expect("failures lock");
                let n = failures.entry(runtime.name_any()).or_default();
                *n = n.saturating_add(1);
                *n
            };
            let delay = retry_delay(attempt);
            warn!(runtime = %runtime.name_any(), %error, attempt, ?delay, "reconcile error; retrying");
            Action::requeue(delay)
        }
    }
}

/// A WasmRuntime the apiserver holds but this operator cannot read (typically stored before
/// a schema change). Reported once per generation and error as a Warning Event and, where
/// the apiserver accepts it, Degraded status; nothing else is touched (its nodes stay as
/// they are) until it is fixed.
async fn report_unreadable(
    guard: &DeserializeGuard<WasmRuntime>,
    invalid: &kube::core::error_boundary::InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let name = guard.name_any();
    let msg = format!(
        "the object cannot be read ({}); fix it with `kubectl edit wasmruntime {name}`{}",
        invalid.error,
        if guard.meta().deletion_timestamp.is_some() {
            format!(", or remove the finalizer {FINALIZER} by hand (its nodes keep the runtime)")
        } else {
            String::new()
        }
    );
    let generation = guard.meta().generation;
    let reported = ctx
        .unreadable
        .lock()
        .expect("unreadable lock")
        .get(&name)
        .cloned();
    if reported != Some((generation, msg.clone())) {
        warn!(error = %invalid.error, "cannot read the WasmRuntime");
        let mut status = status::status(
            &Plan::default(),
            StatusInput {
                generation,
                handler: String::new(),
                previous: None,
                deleting: false,
                blocker: Some(Blocker::InvalidSpec(msg.clone())),
                shim_version: None,
                now: Timestamp::now(),
            },
        );
        status.handler = None;
        // A merge patch: server-side apply must type the live object, which fails for
        // exactly these objects. The apiserver may refuse even that (CEL rules that cannot
        // evaluate on the stored data): then the Event below is the report.
        let api: Api<DeserializeGuard<WasmRuntime>> = Api::all(ctx.client.clone());
        if let Err(error) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            warn!(%error, "the apiserver refused the status of the unreadable WasmRuntime");
        }
        publish(
            ctx,
            guard.object_ref(&()),
            EventType::Warning,
            "Unreadable",
            &msg,
        )
        .await;
        ctx.unreadable
            .lock()
            .expect("unreadable lock")
            .insert(name, (generation, msg.clone()));
    }
    Err(Error::InvalidSpec(msg))
}

/// Everything the planner needs, read from the caches.
fn observe_plan(runtime: &WasmRuntime, ctx: &Context, deleting: bool) -> Result<Plan, Error> {
    let nodes = ctx.nodes.state();
    let empty = Default::default();
    let labels: Vec<NodeLabels<'_>> = nodes
        .iter()
        .map(|n| NodeLabels {
            name: n.metadata.name.as_deref().unwrap_or_default(),
            labels: n.metadata.labels.as_ref().unwrap_or(&empty),
        })
        .collect();
    let pods = ctx.pods.state();
    let by_node = observe::pods_by_node(&runtime.name_any(), pods.iter().map(|p| &**p));
    let views = observe::node_views(runtime, &labels, &by_node, deleting, Timestamp::now())?;
    let selected = views.iter().filter(|v| v.selected).count();
    let rollout = Rollout {
        revision: resources::revision(runtime, &ctx.settings),
        max_unavailable: planner::resolve_max_unavailable(
            &runtime.spec.rollout.max_unavailable,
            selected,
        ),
        verify_timeout_seconds: i64::from(runtime.spec.rollout.verify_timeout_seconds),
    };
    Ok(planner::plan(&views, &rollout))
}

/// Whether the node cache shows every label this runtime wrote recently.
/// Whether the node and pod caches hold a first complete list.
fn caches_listed(ctx: &Context) -> bool {
    let listed =
        |ready: Option<Result<(), reflector::store::WriterDropped>>| matches!(ready, Some(Ok(())));
    listed(ctx.nodes.wait_until_ready().now_or_never())
        && listed(ctx.pods.wait_until_ready().now_or_never())
}

fn cache_caught_up(runtime: &WasmRuntime, ctx: &Context) -> bool {
    let mut expected = ctx.expected.lock().expect("expectations lock");
    let Some(nodes) = expected.get_mut(&runtime.name_any()) else {
        return true;
    };
    let key = runtime.node_label_key();
    nodes.retain(|node, (value, since)| {
        let seen = ctx.nodes.get(&ObjectRef::new(node)).map(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(&key))
                .and_then(|v| NodeState::parse(v))
        });
        // Keep waiting while the cache shows something else, but not forever: someone else
        // may have changed the label since.
        seen != Some(*value) && since.elapsed() < EXPECTATION_TIMEOUT
    });
    nodes.is_empty()
}

/// Degraded/InvalidSpec in status, and the error for the retry policy.
async fn invalid_spec(runtime: &WasmRuntime, ctx: &Context, msg: String) -> Result<Action, Error> {
    publish_status(
        runtime,
        ctx,
        &Plan::default(),
        false,
        Some(Blocker::InvalidSpec(msg.clone())),
    )
    .await?;
    Err(Error::InvalidSpec(msg))
}

async fn apply(runtime: &WasmRuntime, ctx: &Context) -> Result<Action, Error> {
    if !cache_caught_up(runtime, ctx) {
        tracing::debug!("the node cache does not show our last label writes yet");
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if let Some(conflict) = handler_conflict(runtime, ctx).await? {
        let plan = observe_plan(runtime, ctx, false)?;
        publish_status(
            runtime,
            ctx,
            &plan,
            false,
            Some(Blocker::HandlerConflict(conflict.clone())),
        )
        .await?;
        warn_event(ctx, runtime, "HandlerConflict", &conflict).await;
        return Ok(Action::requeue(STEADY_REQUEUE));
    }
    let plan = match observe_plan(runtime, ctx, false) {
        Ok(plan) => plan,
        Err(Error::InvalidSpec(msg)) => return invalid_spec(runtime, ctx, msg).await,
        Err(e) => return Err(e),
    };
    tracing::debug!(
        counts = ?plan.counts,
        transitions = plan.transitions.len(),
        cached_nodes = ctx.nodes.len(),
        cached_pods = ctx.pods.len(),
        "plan"
    );
    let classes: Api<RuntimeClass> = Api::all(ctx.client.clone());
    let class = resources::runtime_class(runtime);
    apply_child(ctx, runtime, &classes, &runtime.handler(), class).await?;
    let daemonsets: Api<DaemonSet> =
        Api::namespaced(ctx.client.clone(), &ctx.settings.installer_namespace);
    for role in [Role::Install, Role::Uninstall] {
        let ds = resources::daemonset(runtime, role, &ctx.settings);
        apply_child(
            ctx,
            runtime,
            &daemonsets,
            &resources::daemonset_name(runtime, role),
            ds,
        )
        .await?;
    }
    execute(runtime, ctx, &plan).await?;
    publish_status(runtime, ctx, &plan, false, None).await?;
    Ok(Action::requeue(if plan.is_complete() {
        STEADY_REQUEUE
    } else {
        IN_FLIGHT_REQUEUE
    }))
}

async fn cleanup(runtime: &WasmRuntime, ctx: &Context) -> Result<Action, Error> {
    if !cache_caught_up(runtime, ctx) {
        return Err(Error::CacheBehind);
    }
    let users = pods_using(runtime, ctx).await?;
    if !users.is_empty() {
        let msg = format!(
            "deletion waits: {} pod(s) still use RuntimeClass {}: {}",
            users.len(),
            runtime.handler(),
            users.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
        let plan = observe_plan(runtime, ctx, false)?;
        publish_status(runtime, ctx, &plan, true, Some(Blocker::InUse(msg.clone()))).await?;
        warn_event(ctx, runtime, "DeletionBlocked", &msg).await;
        return Err(Error::DeletionBlocked(msg));
    }
    let plan = observe_plan(runtime, ctx, true)?;
    execute(runtime, ctx, &plan).await?;
    let c = &plan.counts;
    if c.pending + c.provisioned + c.failed + c.uninstalling > 0 {
        publish_status(runtime, ctx, &plan, true, None).await?;
        return Err(Error::DeletionBlocked(format!(
            "{} node(s) still being uninstalled",
            c.uninstalling
        )));
    }
    let daemonsets: Api<DaemonSet> =
        Api::namespaced(ctx.client.clone(), &ctx.settings.installer_namespace);
    for role in [Role::Install, Role::Uninstall] {
        delete_if_present(&daemonsets, &resources::daemonset_name(runtime, role)).await?;
    }
    let classes: Api<RuntimeClass> = Api::all(ctx.client.clone());
    if owned_by(
        classes
            .get_opt(&runtime.handler())
            .await
            .map_err(Error::kube("get RuntimeClass"))?
            .as_ref(),
        runtime,
    ) {
        delete_if_present(&classes, &runtime.handler()).await?;
    }
    info!("every node uninstalled; removing the finalizer");
    Ok(Action::await_change())
}

/// Server-side apply of a child object, skipped when it is what we last applied.
async fn apply_child<K>(
    ctx: &Context,
    runtime: &WasmRuntime,
    api: &Api<K>,
    name: &str,
    object: K,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    use std::hash::{Hash, Hasher};
    let text = serde_json::to_string(&object)
        .map_err(|e| Error::InvalidSpec(format!("rendering {name}: {e}")))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let hash = hasher.finish();
    let key = format!("{}/{}/{name}", runtime.name_any(), K::kind(&()));
    if ctx.applied.lock().expect("applied lock").get(&key) == Some(&hash) {
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::kube("apply child object"))?;
    ctx.applied.lock().expect("applied lock").insert(key, hash);
    Ok(())
}

/// Carry out a plan: node labels, then old installer pods to replace.
async fn execute(runtime: &WasmRuntime, ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let key = runtime.node_label_key();
    for Transition {
        node,
        from,
        to,
        reason,
    } in &plan.transitions
    {
        let value = to.map(|s| json!(s.as_str())).unwrap_or(json!(null));
        let patch = json!({"metadata": {"labels": {key.clone(): value}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube("label node"))?;
        ctx.expected
            .lock()
            .expect("expectations lock")
            .entry(runtime.name_any())
            .or_default()
            .insert(node.clone(), (*to, Instant::now()));
        info!(node, from = ?from.map(NodeState::as_str), to = ?to.map(NodeState::as_str), reason, "node transition");
        ctx.metrics
            .node_transition(to.map_or("removed", NodeState::as_str));
        if *to == Some(NodeState::Failed) {
            warn_event(ctx, runtime, "NodeFailed", &format!("{node}: {reason}")).await;
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.installer_namespace);
    let by_node = ctx.pods.state();
    for node in &plan.restart_installer_on {
        let stale = by_node.iter().filter(|p| {
            p.labels().get(resources::RUNTIME_LABEL) == Some(&runtime.name_any())
                && p.labels().get(resources::ROLE_LABEL).map(String::as_str) == Some("install")
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
        });
        for pod in stale {
            delete_if_present(&pods, &pod.name_any()).await?;
        }
    }
    Ok(())
}

async fn publish_status(
    runtime: &WasmRuntime,
    ctx: &Context,
    plan: &Plan,
    deleting: bool,
    blocker: Option<Blocker>,
) -> Result<(), Error> {
    let image = resources::installer_image(runtime, &ctx.settings);
    let shim_version = (plan.is_complete() && plan.counts.selected > 0).then(|| {
        image
            .rsplit_once(':')
            .map_or(image.clone(), |(_, tag)| tag.to_string())
    });
    let status = status::status(
        plan,
        StatusInput {
            generation: runtime.metadata.generation,
            handler: runtime.handler(),
            previous: runtime.status.as_ref(),
            deleting,
            blocker,
            shim_version,
            now: Timestamp::now(),
        },
    );
    ctx.metrics.record_nodes(&runtime.name_any(), &plan.counts);
    if runtime.status.as_ref() == Some(&status) {
        return Ok(());
    }
    // One Normal Event per completed rollout, not one per node or per loop.
    let was_ready =
        runtime.status.as_ref().and_then(|s| s.state) == Some(crate::api::RuntimeState::Ready);
    if status.state == Some(crate::api::RuntimeState::Ready) && !was_ready {
        let note = format!(
            "{} node(s) provisioned with revision {}",
            plan.counts.provisioned,
            resources::revision(runtime, &ctx.settings)
        );
        normal_event(ctx, runtime, "RolloutComplete", &note).await;
    }
    let api: Api<WasmRuntime> = Api::all(ctx.client.clone());
    let patch =
        json!({"apiVersion": "wasmruntime.dev/v1alpha1", "kind": "WasmRuntime", "status": status});
    api.patch_status(
        &runtime.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(Error::kube("patch status"))?;
    Ok(())
}

/// Another WasmRuntime (created earlier) or a RuntimeClass we do not own holds our handler.
async fn handler_conflict(runtime: &WasmRuntime, ctx: &Context) -> Result<Option<String>, Error> {
    let handler = runtime.handler();
    let all = ctx.runtimes.state();
    let rival = all
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|r| r.name_any() != runtime.name_any() && r.handler() == handler)
        .find(|r| {
            (r.metadata.creation_timestamp.as_ref(), r.name_any())
                < (
                    runtime.metadata.creation_timestamp.as_ref(),
                    runtime.name_any(),
                )
        });
    if let Some(rival) = rival {
        return Ok(Some(format!(
            "handler {handler} is already used by WasmRuntime {}",
            rival.name_any()
        )));
    }
    let classes: Api<RuntimeClass> = Api::all(ctx.client.clone());
    let existing = classes
        .get_opt(&handler)
        .await
        .map_err(Error::kube("get RuntimeClass"))?;
    if existing.is_some() && !owned_by(existing.as_ref(), runtime) {
        return Ok(Some(format!(
            "RuntimeClass {handler} already exists and is not managed by this WasmRuntime; nothing was changed"
        )));
    }
    Ok(None)
}

fn owned_by(object: Option<&RuntimeClass>, runtime: &WasmRuntime) -> bool {
    let uid = runtime.uid();
    object.is_some_and(|o| {
        o.owner_references()
            .iter()
            .any(|r| Some(&r.uid) == uid.as_ref())
    })
}

/// Pods (any namespace) that use the runtime's RuntimeClass and have not finished.
async fn pods_using(runtime: &WasmRuntime, ctx: &Context) -> Result<Vec<String>, Error> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let handler = runtime.handler();
    let mut users = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = pods.list(&params).await.map_err(Error::kube("list pods"))?;
        users.extend(
            page.items
                .iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.runtime_class_name.as_deref())
                        == Some(handler.as_str())
                        && !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                })
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())),
        );
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    Ok(users)
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            action: "delete",
            source: e,
        }),
    }
}

async fn normal_event(ctx: &Context, runtime: &WasmRuntime, reason: &str, note: &str) {
    publish(
        ctx,
        runtime.object_ref(&()),
        EventType::Normal,
        reason,
        note,
    )
    .await;
}

async fn warn_event(ctx: &Context, runtime: &WasmRuntime, reason: &str, note: &str) {
    publish(
        ctx,
        runtime.object_ref(&()),
        EventType::Warning,
        reason,
        note,
    )
    .await;
}

async fn publish(
    ctx: &Context,
    object: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are best effort: status already says the same.
    if let Err(error) = ctx.recorder.publish(&event, &object).await {
        warn!(%error, reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_runtimes_come_once_each_however_often_their_pods_change() {
        let changed = Arc::new(ChangedRuntimes::default());
        for name in ["b", "a", "b", "b", "a"] {
            changed.add(name);
        }
        let mut stream = std::pin::pin!(changed.clone().stream());
        let first: Vec<String> = stream.as_mut().take(2).map(|r| r.name).collect().await;
        assert_eq!(first, ["a", "b"]);
        // nothing more until another change; then just that one
        let idle = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(idle.is_err(), "a runtime came without a change: {idle:?}");
        changed.add("c");
        assert_eq!(stream.next().await.map(|r| r.name).as_deref(), Some("c"));
    }
}
