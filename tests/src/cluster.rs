//! [`TestCluster`]: a real control plane for one test.
//!
//! Each cluster takes a random address in 127.0.0.0/8 (Linux routes the whole block to `lo`),
//! so clusters of tests running in parallel use the standard ports without clashing and all
//! traffic stays on loopback. Everything lives in a fresh temp dir that goes away with the
//! cluster; set `TESTBED_KEEP=1` to keep it (logs, certificates) for debugging.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;
use crate::paths;
use crate::pki::{self, Pki};
use crate::process::Component;
use crate::versions::{ETCD_BUILD, KUBERNETES_BUILD, KWOK_BUILD};

/// Pod addresses of test clusters (198.18.0.0/15 is reserved for network tests like ours).
pub const POD_CIDR: &str = "198.18.0.0/16";
/// Service addresses of test clusters.
pub const SERVICE_CIDR: &str = "198.19.0.0/16";

const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const APISERVER_PORT: u16 = 6443;
const CONTROLLER_MANAGER_PORT: u16 = 10257;
const SCHEDULER_PORT: u16 = 10259;
const KWOK_PORT: u16 = 10247;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Which components beyond etcd + kube-apiserver to start.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// kube-controller-manager (service accounts, DaemonSets, garbage collection, ...).
    pub controller_manager: bool,
    /// kube-scheduler.
    pub scheduler: bool,
    /// kwok, managing nodes annotated `kwok.x-k8s.io/node: fake` and their pods.
    pub kwok: bool,
    /// kwok pod stages to use instead of kwok's "fast" ones (a file of `Stage` documents).
    pub kwok_pod_stages: Option<PathBuf>,
    /// Write an audit log of every write made by the operator identity (see
    /// [`TestCluster::operator_kubeconfig`]) to `audit.log` in the cluster dir.
    pub audit_operator_writes: bool,
    /// Client QPS (burst twice that) of the controller-manager and scheduler instead of their
    /// defaults (20 and 50), as large clusters configure them: at 20 QPS the DaemonSet
    /// controller alone needs 50 s to create 1000 pods, whatever the operator does.
    pub control_plane_qps: Option<u32>,
}

impl ClusterOptions {
    /// Every component: a control plane that runs workloads on kwok nodes.
    pub fn full() -> Self {
        Self {
            controller_manager: true,
            scheduler: true,
            kwok: true,
            kwok_pod_stages: None,
            audit_operator_writes: false,
            control_plane_qps: None,
        }
    }
}

fn qps_args(qps: Option<u32>) -> Vec<String> {
    qps.map(|q| {
        vec![
            format!("--kube-api-qps={q}"),
            format!("--kube-api-burst={}", 2 * q),
        ]
    })
    .unwrap_or_default()
}

/// A running etcd + kube-apiserver (+ options). Dropping it stops every process.
pub struct TestCluster {
    // Field order matters: components stop (in reverse start order, see Drop) before the
    // temp dir holding their data is removed.
    components: Vec<Component>,
    client: kube::Client,
    kubeconfig: PathBuf,
    address: Ipv4Addr,
    pki: Pki,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// What kube-apiserver was started with, for [`TestCluster::restart_apiserver`].
    apiserver_args: Vec<String>,
}

impl TestCluster {
    /// etcd + kube-apiserver only.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(ClusterOptions::default()).await
    }

    /// etcd + kube-apiserver and the requested components, each waited on until it serves.
    pub async fn start_with(options: ClusterOptions) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("testbed-")
            .tempdir()
            .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
        let path = dir.path().to_path_buf();
        let address = free_loopback_address()?;
        let pki = pki::write(&path.join("pki"), &[IpAddr::V4(address), service_ip()])?;
        let kubeconfig = path.join("admin.kubeconfig");
        let yaml = kubeconfig_yaml(address, &pki.ca_cert, &pki.admin_cert, &pki.admin_key);
        std::fs::write(&kubeconfig, yaml).map_err(|e| Error::io(&kubeconfig, e))?;
        let operator = path.join("operator.kubeconfig");
        let yaml = kubeconfig_yaml(address, &pki.ca_cert, &pki.operator_cert, &pki.operator_key);
        std::fs::write(&operator, yaml).map_err(|e| Error::io(&operator, e))?;
        let client = client_for(&kubeconfig).await?;

        let mut cluster = Self {
            components: Vec::new(),
            client,
            kubeconfig,
            address,
            pki,
            dir: Some(dir),
            path,
            apiserver_args: Vec::new(),
        };
        cluster.launch(
            "etcd",
            paths::go_bin(&ETCD_BUILD, "etcd"),
            cluster.etcd_args(),
        )?;
        cluster.wait_tcp(ETCD_CLIENT_PORT).await?;
        let mut apiserver_args = cluster.apiserver_args();
        if options.audit_operator_writes {
            apiserver_args.extend(cluster.audit_args()?);
        }
        cluster.apiserver_args = apiserver_args.clone();
        cluster.launch(
            "kube-apiserver",
            paths::go_bin(&KUBERNETES_BUILD, "kube-apiserver"),
            apiserver_args,
        )?;
        cluster.wait_readyz().await?;
        if options.controller_manager {
            let mut args = cluster.controller_manager_args();
            args.extend(qps_args(options.control_plane_qps));
            cluster.launch(
                "kube-controller-manager",
                paths::go_bin(&KUBERNETES_BUILD, "kube-controller-manager"),
                args,
            )?;
            cluster.wait_tcp(CONTROLLER_MANAGER_PORT).await?;
        }
        if options.scheduler {
            let mut args = cluster.scheduler_args();
            args.extend(qps_args(options.control_plane_qps));
            cluster.launch(
                "kube-scheduler",
                paths::go_bin(&KUBERNETES_BUILD, "kube-scheduler"),
                args,
            )?;
            cluster.wait_tcp(SCHEDULER_PORT).await?;
        }
        if options.kwok {
            let pod_stages = options
                .kwok_pod_stages
                .clone()
                .unwrap_or_else(paths::kwok_pod_stages);
            let args = cluster.kwok_args(&pod_stages);
            cluster.launch("kwok", paths::go_bin(&KWOK_BUILD, "kwok"), args)?;
            cluster.wait_tcp(KWOK_PORT).await?;
        }
        Ok(cluster)
    }

    /// A client authenticated as cluster admin (group system:masters).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig file (certificate paths inside the cluster's temp dir).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig for user `wasm-operator` (group system:masters): run the operator with it
    /// to tell its requests from the test's own.
    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.path.join("operator.kubeconfig")
    }

    /// The audit log written with [`ClusterOptions::audit_operator_writes`].
    pub fn audit_log(&self) -> PathBuf {
        self.path.join("audit.log")
    }

    /// `kubectl --kubeconfig <admin>` from the test bed, ready for more arguments.
    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(paths::go_bin(&KUBERNETES_BUILD, "kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The loopback address every component of this cluster listens on.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The cluster's working directory (data, logs, certificates).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// PID of a running component, e.g. "kube-apiserver".
    pub fn pid(&self, component: &str) -> Option<u32> {
        self.components
            .iter()
            .find(|c| c.name == component)
            .map(Component::pid)
    }

    /// SIGKILL kube-apiserver and start it again on the same address, etcd and arguments;
    /// returns once it is ready. Every client's connections and watches are cut.
    pub async fn restart_apiserver(&mut self) -> Result<(), Error> {
        let at = self
            .components
            .iter()
            .position(|c| c.name == "kube-apiserver")
            .expect("every cluster runs kube-apiserver");
        self.components[at].stop();
        self.components[at] = Component::spawn(
            "kube-apiserver",
            &paths::go_bin(&KUBERNETES_BUILD, "kube-apiserver"),
            &self.apiserver_args,
            &self.path,
        )?;
        self.wait_readyz().await
    }

    /// The CA certificate (PEM) that signed the apiserver's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    fn launch(&mut self, name: &str, binary: PathBuf, args: Vec<String>) -> Result<(), Error> {
        let component = Component::spawn(name, &binary, &args, &self.path)?;
        self.components.push(component);
        Ok(())
    }

    fn url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.address)
    }

    fn file(&self, path: &Path) -> String {
        path.display().to_string()
    }

    fn etcd_args(&self) -> Vec<String> {
        let client = self.url(ETCD_CLIENT_PORT);
        let peer = self.url(ETCD_PEER_PORT);
        vec![
            "--name=testbed".into(),
            format!("--data-dir={}", self.path.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=testbed={peer}"),
            // Durability is pointless for a throwaway cluster; fsync would dominate test time.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ]
    }

    fn apiserver_args(&self) -> Vec<String> {
        let pki = &self.pki;
        vec![
            format!("--etcd-servers={}", self.url(ETCD_CLIENT_PORT)),
            format!("--bind-address={}", self.address),
            format!("--advertise-address={}", self.address),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--cert-dir={}", self.path.join("pki").display()),
            format!("--tls-cert-file={}", self.file(&pki.serving_cert)),
            format!("--tls-private-key-file={}", self.file(&pki.serving_key)),
            format!("--client-ca-file={}", self.file(&pki.ca_cert)),
            format!(
                "--kubelet-client-certificate={}",
                self.file(&pki.admin_cert)
            ),
            format!("--kubelet-client-key={}", self.file(&pki.admin_key)),
            format!(
                "--service-account-key-file={}",
                self.file(&pki.service_account_pub)
            ),
            format!(
                "--service-account-signing-key-file={}",
                self.file(&pki.service_account_key)
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // The `kubernetes` Service endpoint may not be a loopback address; no test needs it.
            "--endpoint-reconciler-type=none".into(),
        ]
    }

    /// Log (metadata only) every mutating request of the operator identity.
    fn audit_args(&self) -> Result<Vec<String>, Error> {
        let policy = self.path.join("audit-policy.yaml");
        let text = format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  users: [{}]\n  verbs: [create, update, patch, delete, deletecollection]\n\
             - level: None\n",
            crate::pki::OPERATOR_USER
        );
        std::fs::write(&policy, text).map_err(|e| Error::io(&policy, e))?;
        Ok(vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", self.audit_log().display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
        ])
    }

    fn controller_manager_args(&self) -> Vec<String> {
        let pki = &self.pki;
        let kubeconfig = self.file(&self.kubeconfig);
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--bind-address={}", self.address),
            format!("--secure-port={CONTROLLER_MANAGER_PORT}"),
            format!("--cert-dir={}", self.path.join("pki/kcm").display()),
            "--leader-elect=false".into(),
            format!(
                "--service-account-private-key-file={}",
                self.file(&pki.service_account_key)
            ),
            format!("--root-ca-file={}", self.file(&pki.ca_cert)),
            format!("--cluster-signing-cert-file={}", self.file(&pki.ca_cert)),
            format!("--cluster-signing-key-file={}", self.file(&pki.ca_key)),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--use-service-account-credentials=true".into(),
        ]
    }

    fn scheduler_args(&self) -> Vec<String> {
        let kubeconfig = self.file(&self.kubeconfig);
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--bind-address={}", self.address),
            format!("--secure-port={SCHEDULER_PORT}"),
            format!("--cert-dir={}", self.path.join("pki/scheduler").display()),
            "--leader-elect=false".into(),
        ]
    }

    fn kwok_args(&self, pod_stages: &Path) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.file(&self.kubeconfig)),
            format!("--config={}", paths::kwok_node_stages().display()),
            format!("--config={}", pod_stages.display()),
            "--node-lease-duration-seconds=40".into(),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            format!("--node-ip={}", self.address),
            format!("--server-address={}:{KWOK_PORT}", self.address),
        ]
    }

    /// Wait until a component accepts TCP connections on this cluster's address.
    async fn wait_tcp(&mut self, port: u16) -> Result<(), Error> {
        let target = SocketAddr::new(IpAddr::V4(self.address), port);
        let started = Instant::now();
        loop {
            self.check_all_running()?;
            if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            self.check_deadline(started)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until kube-apiserver reports every readiness check ok.
    async fn wait_readyz(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            self.check_all_running()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            if let Ok(body) = self.client.request_text(request).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            self.check_deadline(started)?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_all_running(&mut self) -> Result<(), Error> {
        self.components
            .iter_mut()
            .try_for_each(Component::check_running)
    }

    fn check_deadline(&self, started: Instant) -> Result<(), Error> {
        if started.elapsed() < READY_TIMEOUT {
            return Ok(());
        }
        let last = self.components.last().expect("a component is starting");
        Err(Error::NotReady {
            component: last.name.clone(),
            seconds: READY_TIMEOUT.as_secs(),
            log: last.log_tail(40),
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Stop dependents first: apiserver before etcd.
        while let Some(mut component) = self.components.pop() {
            component.stop();
        }
        if std::env::var_os("TESTBED_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("testbed: keeping {}", dir.keep().display());
        }
    }
}

/// The first address of the service range: the `kubernetes` Service, a SAN of the serving cert.
fn service_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1))
}

/// A random 127.x.y.z whose control-plane ports are free. Random rather than sequential so
/// test processes started at the same moment (nextest runs each test in its own process)
/// don't race for the same one.
fn free_loopback_address() -> Result<Ipv4Addr, Error> {
    for _ in 0..64 {
        let [a, b, c]: [u8; 3] = rand::random();
        let address = Ipv4Addr::new(127, a.max(1), b, c.clamp(2, 254));
        let ports = [
            ETCD_CLIENT_PORT,
            ETCD_PEER_PORT,
            APISERVER_PORT,
            CONTROLLER_MANAGER_PORT,
            SCHEDULER_PORT,
            KWOK_PORT,
        ];
        if ports
            .iter()
            .all(|p| TcpListener::bind((address, *p)).is_ok())
        {
            return Ok(address);
        }
    }
    Err(Error::NoAddress)
}

fn kubeconfig_yaml(address: Ipv4Addr, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://{address}:{APISERVER_PORT}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: admin
current-context: testbed
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

async fn client_for(kubeconfig: &Path) -> Result<kube::Client, Error> {
    let config = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
