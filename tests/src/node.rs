//! A real single-node cluster on this machine, for `cargo xtask up` / `down` and the
//! end-to-end tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
//! containerd (2.x, 1.7 or 1.6) with runc, kubelet and kube-proxy (iptables), all from the
//! test bed, run by the [`crate::supervisor`] so they outlive the command that started them
//! and containerd comes back when the installer restarts it.
//!
//! Everything lives in one directory ([`Node::dir`], `<cache>/cluster`): certificates,
//! kubeconfigs, configs, etcd data, containerd root and state, kubelet root, logs. Outside
//! it the cluster uses the bridge and iptables chains of [`crate::cni`], containerd's
//! standard socket `/run/containerd/containerd.sock` (where the installer looks for it), the
//! kubelet's fixed `/var/log/containers`, and whatever the product itself writes on a node
//! (`/opt/wasmruntime`, `/var/lib/wasmruntime`). Before it changes anything, [`Node::start`]
//! records what of that existed and the kernel settings it may change ([`Baseline`]);
//! [`Node::down`] puts all of it back and removes the directory.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::cni::{self, NODE_IP};
use crate::paths;
use crate::pki::{self, Pki};
use crate::supervisor::{self, Plan, Ready, Service, State, Status};
use crate::versions::{DEB_PACKAGES, DebPackage, ETCD_BUILD, HELM_BUILD, KUBERNETES_BUILD};

/// The node's name.
pub const NODE_NAME: &str = "wasm-node";
/// containerd's socket: the standard path, where the installer finds it.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The containerd namespace of the CRI.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The sandbox image, built by [`pause_image`] and pinned in containerd's config.
pub const PAUSE_IMAGE: &str = "localhost/wasmruntime/pause:1";
/// Pod addresses.
pub const POD_CIDR: &str = crate::cluster::POD_CIDR;
/// Service addresses.
pub const SERVICE_CIDR: &str = crate::cluster::SERVICE_CIDR;
/// The `kubernetes` Service address.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

const APISERVER_PORT: u16 = 6443;
const ETCD_CLIENT: &str = "127.0.0.1:12379";
const ETCD_PEER: &str = "127.0.0.1:12380";
const LOCALHOST: &str = "127.0.0.1";

/// Kernel settings the cluster (kubelet, kube-proxy, the CNI bridge plugin) may change;
/// `down` restores them.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Host paths the cluster or the product may create outside [`Node::dir`]. `true`: ours
/// alone, removed with everything in it when it did not exist before; `false`: shared with
/// other containerds of this machine, removed only when it did not exist before and is empty.
const HOST_PATHS: &[(&str, bool)] = &[
    ("/run/containerd/containerd.sock", true),
    ("/run/containerd/containerd.sock.ttrpc", true),
    // Shared with every other containerd serving the CRI on this machine (tests): our own
    // containers' entries in them are removed by id.
    ("/run/containerd/runc/k8s.io", false),
    ("/run/containerd/wasmtime/k8s.io", false),
    ("/run/containerd/runc", false),
    ("/run/containerd/wasmtime", false),
    ("/run/containerd/s", false),
    ("/run/containerd/fifo", false),
    ("/run/containerd", false),
    ("/var/log/containers", true),
    ("/var/log/pods", true),
    ("/var/lib/cni", true),
    ("/var/lib/kubelet", true),
    ("/opt/wasmruntime/wasmtime", true),
    ("/opt/wasmruntime", false),
    ("/var/lib/wasmruntime", true),
    ("/run/netns", false),
    ("/etc/cni/net.d", false),
    ("/etc/cni", false),
];

/// Which containerd the node runs.
#[derive(Debug, Clone, Copy)]
pub struct NodeOptions {
    pub containerd: DebPackage,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            containerd: crate::versions::CONTAINERD_2,
        }
    }
}

/// What the machine looked like before the cluster started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// `/proc/sys/<key>` values.
    pub sysctls: Vec<(String, String)>,
    /// Host paths of [`HOST_PATHS`] and whether each existed.
    pub paths: Vec<(String, bool)>,
    /// iptables chains with our prefixes that already existed (front end, table, chain).
    pub chains: Vec<(String, String, String)>,
    /// Directories of cgroup hierarchies holding `kubepods` already.
    pub cgroups: Vec<String>,
    /// iptables tables (front end, table) that existed.
    #[serde(default)]
    pub tables: Vec<(String, String)>,
}

/// What [`Node::start`] wrote about the running cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub containerd_dir: String,
    pub containerd_version: String,
    pub supervisor_pid: u32,
}

/// The cluster in its directory; cheap to construct, it only knows paths.
#[derive(Debug, Clone)]
pub struct Node {
    dir: PathBuf,
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

fn other(path: &Path, msg: String) -> Error {
    Error::io(path, std::io::Error::other(msg))
}

impl Node {
    /// The cluster at `<cache>/cluster`.
    pub fn new() -> Self {
        Self::at(paths::cache_root().join("cluster"))
    }

    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig (group system:masters).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// containerd's config file: the WasmRuntime's `spec.containerd.configPath` on this node.
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd/config.toml")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    fn info_file(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    fn baseline_file(&self) -> PathBuf {
        self.dir.join("baseline.json")
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The apiserver's URL.
    pub fn server(&self) -> String {
        format!("https://{NODE_IP}:{APISERVER_PORT}")
    }

    /// Information about the running cluster, when [`Node::start`] finished once.
    pub fn info(&self) -> Option<NodeInfo> {
        serde_json::from_slice(&std::fs::read(self.info_file()).ok()?).ok()
    }

    /// The supervisor's status, when its process is alive.
    pub fn status(&self) -> Option<Status> {
        let status = Status::read(&self.status_file())?;
        let pid = status.supervisor_pid;
        let ours = supervisor::cmdline(pid)
            .iter()
            .any(|a| a.contains("--supervise"));
        (supervisor::alive(pid) && ours).then_some(status)
    }

    /// Whether the supervisor runs and reports every service running.
    pub fn is_running(&self) -> bool {
        self.status().is_some_and(|s| s.state == State::Running)
    }

    /// `kubectl --kubeconfig <admin>` (with its cache inside the cluster dir).
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(paths::go_bin(&KUBERNETES_BUILD, "kubectl"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"));
        cmd
    }

    /// `helm` with the admin kubeconfig and its cache/config/data homes inside the cluster dir.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(paths::go_bin(&HELM_BUILD, "helm"));
        let home = self.dir.join("helm");
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    /// `ctr --address <socket> --namespace k8s.io` of the running containerd.
    pub fn ctr(&self) -> Command {
        let dir = self
            .info()
            .map(|i| PathBuf::from(i.containerd_dir))
            .unwrap_or_else(|| paths::deb_root(&crate::versions::CONTAINERD_2));
        let mut cmd = Command::new(dir.join("usr/bin/ctr"));
        cmd.args(["--address", CONTAINERD_SOCKET, "--namespace", K8S_NAMESPACE]);
        cmd
    }

    /// `ctr images import` of an image-layout tarball into the CRI's namespace.
    pub fn import(&self, tar: &Path) -> Result<(), Error> {
        let out = self
            .ctr()
            .args(["images", "import"])
            .arg(tar)
            .output()
            .map_err(io(tar))?;
        if !out.status.success() {
            return Err(other(
                tar,
                format!(
                    "ctr images import failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        Ok(())
    }

    /// Starts the cluster from scratch: records the [`Baseline`], writes certificates and
    /// configs, sets up the network, starts the supervisor (`supervisor_cmd` is a program and
    /// its arguments that run [`supervisor::run`] on the plan file given as the last
    /// argument) and waits until every component is ready and the pause image is imported.
    /// `progress` gets one line per step. Call [`Node::down`] first when a cluster exists.
    pub fn start(
        &self,
        options: NodeOptions,
        supervisor_cmd: (&Path, &[String]),
        progress: &dyn Fn(&str),
    ) -> Result<NodeInfo, Error> {
        if self.dir.exists() {
            return Err(other(
                &self.dir,
                "a cluster directory exists; run down first".into(),
            ));
        }
        check_binaries(options.containerd)?;
        std::fs::create_dir_all(self.log_dir()).map_err(io(&self.dir))?;
        let baseline = record_baseline();
        write(
            &self.baseline_file(),
            serde_json::to_vec_pretty(&baseline).expect("baseline serializes"),
        )?;

        progress("certificates and configs");
        let pki = pki::write(
            &self.dir.join("pki"),
            &[
                IpAddr::V4(NODE_IP),
                IpAddr::V4(KUBERNETES_SERVICE_IP),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
        )?;
        self.write_kubeconfigs(&pki)?;
        self.link_binaries(options.containerd)?;
        let pause = self.dir.join("images/pause.tar");
        pause_image(&self.dir.join("images"), &pause)?;
        write(
            &self.dir.join("cni/net.d/10-wasmruntime.conflist"),
            cni::conflist(POD_CIDR, &self.dir.join("cni/ipam")),
        )?;
        write(
            &self.containerd_config(),
            containerd_config(&self.dir, options.containerd),
        )?;
        write(
            &self.dir.join("kubelet/config.yaml"),
            kubelet_config(&self.dir, &pki, cgroup_v1()),
        )?;
        write(
            &self.dir.join("kube-proxy/config.yaml"),
            kube_proxy_config(&self.dir),
        )?;
        let drain = self.dir.join("bin/drain-containerd");
        write(&drain, drain_script(options.containerd))?;
        set_mode(&drain, 0o755)?;

        progress("network: bridge wasmrt0 198.18.0.1/16, service route, forward rules");
        cni::setup(SERVICE_CIDR)?;

        let plan = self.plan(&pki, options.containerd);
        let plan_file = self.dir.join("plan.json");
        write(
            &plan_file,
            serde_json::to_vec_pretty(&plan).expect("plan serializes"),
        )?;
        let (program, args) = supervisor_cmd;
        // Its own link to (or copy of) the program: a rebuild, which replaces the file, must
        // not matter to the running supervisor.
        let copy = self.bin_dir().join("wasmruntime-supervisor");
        if std::fs::hard_link(program, &copy).is_err() {
            std::fs::copy(program, &copy).map_err(io(&copy))?;
        }
        let mut args = args.to_vec();
        args.push(plan_file.display().to_string());
        let pid = supervisor::spawn_detached(&copy, &args, &self.log_dir().join("supervisor.log"))?;
        progress(&format!("supervisor started (pid {pid})"));
        self.wait_running(pid, progress)?;

        let info = NodeInfo {
            containerd_dir: paths::deb_root(&options.containerd).display().to_string(),
            containerd_version: paths::deb_version(&options.containerd).unwrap_or_default(),
            supervisor_pid: pid,
        };
        // Written first: `ctr()` takes the ctr of the running containerd from it (a 2.x ctr
        // imports through the transfer service, which a 1.7 CRI does not see).
        write(
            &self.info_file(),
            serde_json::to_vec_pretty(&info).expect("info serializes"),
        )?;
        progress("importing the pause image");
        self.import(&pause)?;
        Ok(info)
    }

    fn wait_running(&self, pid: u32, progress: &dyn Fn(&str)) -> Result<(), Error> {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            let status = Status::read(&self.status_file());
            if let Some(s) = &status {
                if s.message != last {
                    progress(&s.message);
                    last = s.message.clone();
                }
                match s.state {
                    State::Running => return Ok(()),
                    State::Failed => {
                        return Err(Error::NotReady {
                            component: "cluster".into(),
                            seconds: started.elapsed().as_secs(),
                            log: s.message.clone(),
                        });
                    }
                    _ => {}
                }
            }
            if !supervisor::alive(pid) {
                let log = std::fs::read_to_string(self.log_dir().join("supervisor.log"))
                    .unwrap_or_default();
                return Err(Error::Exited {
                    component: "supervisor".into(),
                    status: "gone".into(),
                    log,
                });
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(Error::NotReady {
                    component: "cluster".into(),
                    seconds: 300,
                    log: last,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_kubeconfigs(&self, pki: &Pki) -> Result<(), Error> {
        let dir = self.dir.join("pki");
        let (node_cert, node_key) = client_cert(
            pki,
            &dir,
            "node",
            &format!("system:node:{NODE_NAME}"),
            "system:nodes",
        )?;
        let (proxy_cert, proxy_key) = client_cert(
            pki,
            &dir,
            "kube-proxy",
            "system:kube-proxy",
            "system:node-proxier",
        )?;
        let server = self.server();
        for (file, cert, key) in [
            (self.kubeconfig(), &pki.admin_cert, &pki.admin_key),
            (self.dir.join("kubelet.kubeconfig"), &node_cert, &node_key),
            (
                self.dir.join("kube-proxy.kubeconfig"),
                &proxy_cert,
                &proxy_key,
            ),
        ] {
            write(&file, kubeconfig_yaml(&server, &pki.ca_cert, cert, key))?;
        }
        Ok(())
    }

    fn link_binaries(&self, containerd: DebPackage) -> Result<(), Error> {
        let bin = self.bin_dir();
        std::fs::create_dir_all(&bin).map_err(io(&bin))?;
        let root = paths::deb_root(&containerd);
        let links = [
            ("runc", runc()),
            (
                "containerd-shim-runc-v2",
                root.join("usr/bin/containerd-shim-runc-v2"),
            ),
            ("ctr", root.join("usr/bin/ctr")),
            ("kubectl", paths::go_bin(&KUBERNETES_BUILD, "kubectl")),
        ];
        for (name, target) in links {
            let link = bin.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
        }
        Ok(())
    }

    fn plan(&self, pki: &Pki, containerd: DebPackage) -> Plan {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let f = |p: &Path| p.display().to_string();
        let k8s = |b: &str| paths::go_bin(&KUBERNETES_BUILD, b).display().to_string();
        let admin = f(&self.kubeconfig());
        let tcp = |s: &str| Ready::Tcp(s.parse::<SocketAddr>().expect("static address"));
        let service = |name: &str, argv: Vec<String>, ready: Ready| Service {
            name: name.into(),
            argv,
            ready,
            ready_timeout_secs: 120,
            stop_timeout_secs: 15,
            pre_stop: Vec::new(),
        };
        let etcd = service(
            "etcd",
            vec![
                paths::go_bin(&ETCD_BUILD, "etcd").display().to_string(),
                "--name=wasm-node".into(),
                format!("--data-dir={}", d("etcd")),
                format!("--listen-client-urls=http://{ETCD_CLIENT}"),
                format!("--advertise-client-urls=http://{ETCD_CLIENT}"),
                format!("--listen-peer-urls=http://{ETCD_PEER}"),
                format!("--initial-advertise-peer-urls=http://{ETCD_PEER}"),
                format!("--initial-cluster=wasm-node=http://{ETCD_PEER}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            tcp(ETCD_CLIENT),
        );
        let apiserver = service(
            "kube-apiserver",
            vec![
                k8s("kube-apiserver"),
                format!("--etcd-servers=http://{ETCD_CLIENT}"),
                format!("--bind-address={NODE_IP}"),
                format!("--advertise-address={NODE_IP}"),
                format!("--secure-port={APISERVER_PORT}"),
                format!("--cert-dir={}", d("pki")),
                format!("--tls-cert-file={}", f(&pki.serving_cert)),
                format!("--tls-private-key-file={}", f(&pki.serving_key)),
                format!("--client-ca-file={}", f(&pki.ca_cert)),
                format!("--kubelet-client-certificate={}", f(&pki.admin_cert)),
                format!("--kubelet-client-key={}", f(&pki.admin_key)),
                // The node's name resolves nowhere; its InternalIP is the bridge address.
                "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                format!("--service-account-key-file={}", f(&pki.service_account_pub)),
                format!(
                    "--service-account-signing-key-file={}",
                    f(&pki.service_account_key)
                ),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
            ],
            Ready::Command(vec![
                k8s("kubectl"),
                "--kubeconfig".into(),
                admin.clone(),
                "--cache-dir".into(),
                d("kubectl-cache"),
                "get".into(),
                "--raw=/readyz".into(),
            ]),
        );
        let kcm = service(
            "kube-controller-manager",
            vec![
                k8s("kube-controller-manager"),
                format!("--kubeconfig={admin}"),
                format!("--authentication-kubeconfig={admin}"),
                format!("--authorization-kubeconfig={admin}"),
                format!("--bind-address={LOCALHOST}"),
                "--secure-port=10257".into(),
                format!("--cert-dir={}", d("pki/kcm")),
                "--leader-elect=false".into(),
                format!(
                    "--service-account-private-key-file={}",
                    f(&pki.service_account_key)
                ),
                format!("--root-ca-file={}", f(&pki.ca_cert)),
                format!("--cluster-signing-cert-file={}", f(&pki.ca_cert)),
                format!("--cluster-signing-key-file={}", f(&pki.ca_key)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--use-service-account-credentials=true".into(),
            ],
            tcp("127.0.0.1:10257"),
        );
        let scheduler = service(
            "kube-scheduler",
            vec![
                k8s("kube-scheduler"),
                format!("--kubeconfig={admin}"),
                format!("--authentication-kubeconfig={admin}"),
                format!("--authorization-kubeconfig={admin}"),
                format!("--bind-address={LOCALHOST}"),
                "--secure-port=10259".into(),
                format!("--cert-dir={}", d("pki/scheduler")),
                "--leader-elect=false".into(),
            ],
            tcp("127.0.0.1:10259"),
        );
        let root = paths::deb_root(&containerd);
        let ctr = root.join("usr/bin/ctr").display().to_string();
        let mut containerd_svc = service(
            "containerd",
            vec![
                root.join("usr/bin/containerd").display().to_string(),
                "--config".into(),
                f(&self.containerd_config()),
            ],
            Ready::Command(vec![
                ctr,
                "--address".into(),
                CONTAINERD_SOCKET.into(),
                "version".into(),
            ]),
        );
        containerd_svc.stop_timeout_secs = 20;
        containerd_svc.pre_stop = vec![
            self.bin_dir()
                .join("drain-containerd")
                .display()
                .to_string(),
        ];
        let kubelet = service(
            "kubelet",
            vec![
                k8s("kubelet"),
                format!("--config={}", d("kubelet/config.yaml")),
                format!("--kubeconfig={}", d("kubelet.kubeconfig")),
                format!("--root-dir={}", d("kubelet/root")),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
            ],
            tcp("127.0.0.1:10248"),
        );
        let proxy = service(
            "kube-proxy",
            vec![
                k8s("kube-proxy"),
                format!("--config={}", d("kube-proxy/config.yaml")),
            ],
            tcp("127.0.0.1:10256"),
        );
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.bin_dir().display()
        );
        Plan {
            services: vec![
                etcd,
                apiserver,
                kcm,
                scheduler,
                containerd_svc,
                kubelet,
                proxy,
            ],
            status_file: self.status_file(),
            log_dir: self.log_dir(),
            env: vec![("PATH".into(), path)],
        }
    }

    /// Stops everything the cluster started and puts the machine back as [`Baseline`]
    /// recorded it; removes the cluster directory. Safe to run when nothing runs, and after
    /// a crash. Returns what could not be undone (empty: all clean).
    pub fn down(&self, progress: &dyn Fn(&str)) -> Vec<String> {
        let mut problems = Vec::new();
        let baseline: Baseline = std::fs::read(self.baseline_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| {
                // No record (never started, or a partial start): treat everything of ours
                // as created by the cluster, but leave shared paths that exist alone.
                Baseline {
                    sysctls: Vec::new(),
                    paths: HOST_PATHS
                        .iter()
                        .map(|(p, owned)| (p.to_string(), !owned && Path::new(p).exists()))
                        .collect(),
                    chains: Vec::new(),
                    cgroups: Vec::new(),
                    tables: Vec::new(),
                }
            });

        // 1. The supervisor stops kube-proxy, the kubelet, then drains containerd (every
        // task killed and deleted, so shims exit and unmount) and stops the control plane.
        if let Some(status) = Status::read(&self.status_file()) {
            let pid = status.supervisor_pid;
            if supervisor::alive(pid)
                && supervisor::cmdline(pid)
                    .iter()
                    .any(|a| a.contains("--supervise"))
            {
                progress(&format!(
                    "stopping the supervisor (pid {pid}) and its services"
                ));
                supervisor::send_signal(pid, libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(180);
                while supervisor::alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if supervisor::alive(pid) {
                    problems.push(format!("supervisor {pid} did not stop; killed it"));
                    supervisor::send_signal(pid, libc::SIGKILL);
                }
            }
        }

        // 2. Leftovers of a crash: daemons started from our dir, shims of our socket, and
        // the containers in the kubelet's cgroups.
        let dir = self.dir.display().to_string();
        let daemons = crate::containerd::pids_with_cmdline(|argv| {
            argv.iter().any(|a| a.contains(&dir))
                && argv.first().is_some_and(|p| {
                    [
                        "etcd",
                        "kube-",
                        "kubelet",
                        "containerd",
                        "wasmruntime-supervisor",
                    ]
                    .iter()
                    .any(|n| p.rsplit('/').next().unwrap_or(p).starts_with(n))
                })
        });
        for pid in daemons {
            if pid != std::process::id() {
                progress(&format!("killing leftover daemon {pid}"));
                supervisor::send_signal(pid, libc::SIGKILL);
            }
        }
        let shims = crate::containerd::pids_with_cmdline(|argv| {
            argv.first().is_some_and(|p| p.contains("containerd-shim"))
                && argv.contains(&CONTAINERD_SOCKET)
        });
        if !shims.is_empty() {
            let sockets = unix_socket_paths(&shims);
            progress(&format!("killing {} leftover shims", shims.len()));
            for pid in &shims {
                supervisor::send_signal(*pid, libc::SIGKILL);
            }
            wait_gone(&shims, Duration::from_secs(10));
            for s in sockets {
                if s.starts_with("/run/containerd/s/") {
                    let _ = std::fs::remove_file(&s);
                }
            }
        }
        problems.extend(kill_and_remove_cgroups(&baseline.cgroups, progress));

        // Runtime state the shims keep outside our dir, for our containers only.
        let bundles = self
            .dir
            .join("containerd/state/io.containerd.runtime.v2.task")
            .join(K8S_NAMESPACE);
        if let Ok(entries) = std::fs::read_dir(&bundles) {
            for id in entries.flatten().map(|e| e.file_name()) {
                for runtime in ["runc", "wasmtime"] {
                    let state = crate::containerd::runtime_root(runtime, K8S_NAMESPACE).join(&id);
                    if state.exists() {
                        let _ = remove_tree(&state);
                    }
                }
            }
        }

        // 3. Mounts below our dir (rootfs, shm, netns, kubelet volumes).
        let mut mounts = crate::containerd::mounts_below(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        mounts.dedup();
        if !mounts.is_empty() {
            progress(&format!("unmounting {} mounts", mounts.len()));
        }
        for m in &mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let left = crate::containerd::mounts_below(&self.dir);
        if !left.is_empty() {
            problems.push(format!(
                "mounts left below {}: {left:?}",
                self.dir.display()
            ));
        }

        // 4. Network: iptables chains, the bridge.
        let existing: BTreeSet<_> = baseline.chains.iter().cloned().collect();
        let remove: Vec<_> = cni::our_chains()
            .into_iter()
            .filter(|c| !existing.contains(c))
            .collect();
        if !remove.is_empty() {
            progress(&format!("removing {} iptables chains", remove.len()));
            problems.extend(cni::remove_chains(&remove));
        }
        let had: BTreeSet<_> = baseline.tables.iter().cloned().collect();
        let new_tables: Vec<_> = cni::tables()
            .into_iter()
            .filter(|t| !had.contains(t))
            .collect();
        let left = cni::delete_empty_tables(&new_tables);
        if !left.is_empty() {
            problems.push(format!(
                "empty iptables tables left ({}): `nft` is missing (apt-get install nftables)",
                left.join(", ")
            ));
        }
        if cni::bridge_exists() {
            progress("deleting the bridge");
            if let Err(e) = cni::delete_bridge() {
                problems.push(e.to_string());
            }
        }

        // 5. Kernel settings.
        for (key, value) in &baseline.sysctls {
            let path = Path::new("/proc/sys").join(key);
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != value.trim() {
                progress(&format!("restoring {key} = {value} (was {})", now.trim()));
                if let Err(e) = std::fs::write(&path, value) {
                    problems.push(format!("restoring {key}: {e}"));
                }
            }
        }

        // 6. Files outside our dir, then the dir.
        for (path, existed) in &baseline.paths {
            if *existed {
                continue;
            }
            let owned = HOST_PATHS
                .iter()
                .find(|(p, _)| p == path)
                .is_some_and(|(_, o)| *o);
            let p = Path::new(path);
            if std::fs::symlink_metadata(p).is_err() {
                continue;
            }
            if owned {
                progress(&format!("removing {path}"));
                if let Err(e) = remove_tree(p) {
                    problems.push(e.to_string());
                }
            } else {
                // Shared: only when empty.
                let _ = std::fs::remove_dir(p);
            }
        }
        if self.dir.exists() {
            if crate::containerd::mounts_below(&self.dir).is_empty() {
                progress(&format!("removing {}", self.dir.display()));
                if let Err(e) = remove_tree(&self.dir) {
                    problems.push(e.to_string());
                }
            } else {
                problems.push(format!(
                    "kept {}: something is still mounted below it",
                    self.dir.display()
                ));
            }
        }
        problems
    }
}

fn runc() -> PathBuf {
    DEB_PACKAGES
        .iter()
        .find(|p| p.package == "runc")
        .map(|p| paths::deb_root(p).join("usr/sbin/runc"))
        .unwrap_or_default()
}

fn cni_bin() -> PathBuf {
    DEB_PACKAGES
        .iter()
        .find(|p| p.package == "containernetworking-plugins")
        .map(|p| paths::deb_root(p).join("usr/lib/cni"))
        .unwrap_or_default()
}

fn check_binaries(containerd: DebPackage) -> Result<(), Error> {
    let root = paths::deb_root(&containerd);
    let mut wanted = vec![
        ("etcd".to_string(), paths::go_bin(&ETCD_BUILD, "etcd")),
        ("containerd".into(), root.join("usr/bin/containerd")),
        ("runc".into(), runc()),
        ("CNI bridge".into(), cni_bin().join("bridge")),
        ("helm".into(), paths::go_bin(&HELM_BUILD, "helm")),
    ];
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ] {
        wanted.push((b.into(), paths::go_bin(&KUBERNETES_BUILD, b)));
    }
    for (binary, path) in wanted {
        if !path.exists() {
            return Err(Error::MissingBinary { binary, path });
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has a capability in its effective set.
pub fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|bits| bits & (1 << cap) != 0)
}

/// Whether the host runs cgroup v1 (no unified hierarchy at /sys/fs/cgroup).
pub fn cgroup_v1() -> bool {
    !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A client certificate signed by the cluster CA, written as `<name>.crt` / `<name>.key`.
fn client_cert(
    pki: &Pki,
    dir: &Path,
    name: &str,
    user: &str,
    group: &str,
) -> Result<(PathBuf, PathBuf), Error> {
    let ca_key_pem = std::fs::read_to_string(&pki.ca_key).map_err(io(&pki.ca_key))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // The issuer is identified by its name and key: the CA that pki::write made.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wasmruntime-testbed-ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, user);
    params
        .distinguished_name
        .push(DnType::OrganizationName, group);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let (crt, keyf) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write(&crt, cert.pem())?;
    write(&keyf, key.serialize_pem())?;
    Ok((crt, keyf))
}

fn kubeconfig_yaml(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: wasmruntime
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: user
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: wasmruntime
  context:
    cluster: wasmruntime
    user: user
current-context: wasmruntime
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// containerd's config: private root, state and plugin dirs, the standard socket, runc by
/// its full path with cgroupfs, our CNI dirs, the pinned pause image, NRI and CDI off (they
/// would use machine-wide paths).
pub fn containerd_config(dir: &Path, containerd: DebPackage) -> String {
    let root = dir.join("containerd/root").display().to_string();
    let state = dir.join("containerd/state").display().to_string();
    let opt = dir.join("containerd/opt").display().to_string();
    let runc = runc().display().to_string();
    let cni_bin = cni_bin().display().to_string();
    let cni_conf = dir.join("cni/net.d").display().to_string();
    // Without CAP_SYS_RESOURCE (sandboxed hosts) no process may lower its OOM score, and
    // runc fails every container with a negative oomScoreAdj (the kubelet asks -998 for
    // sandboxes): then containerd must clamp the score at its own.
    let restrict_oom = !has_capability(CAP_SYS_RESOURCE);
    let v1 = containerd.dir.starts_with("containerd-1");
    if v1 {
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = {restrict_oom}
    stream_server_address = "127.0.0.1"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          SystemdCgroup = false

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni_bin}"
      conf_dir = "{cni_conf}"
"#
        )
    } else {
        format!(
            r#"version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"

  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"

    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{PAUSE_IMAGE}"

  [plugins."io.containerd.cri.v1.runtime"]
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = {restrict_oom}
    enable_cdi = false

    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          SystemdCgroup = false

    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"

  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
"#
        )
    }
}

fn kubelet_config(dir: &Path, pki: &Pki, cgroup_v1: bool) -> String {
    let fail_v1 = if cgroup_v1 {
        // Kubernetes 1.35+ refuses cgroup v1 unless told otherwise.
        "failCgroupV1: false\n"
    } else {
        ""
    };
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
{fail_v1}failSwapOn: false
containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}
podLogsDir: {logs}
volumePluginDir: {plugins}
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
protectKernelDefaults: false
rotateCertificates: false
",
        ca = pki.ca_cert.display(),
        logs = dir.join("pod-logs").display(),
        plugins = dir.join("kubelet/volume-plugins").display(),
    )
}

fn kube_proxy_config(dir: &Path) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: {POD_CIDR}
detectLocalMode: ClusterCIDR
nodePortAddresses: [\"{NODE_IP}/32\"]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  minSyncPeriod: 1s
  syncPeriod: 30s
",
        kubeconfig = dir.join("kube-proxy.kubeconfig").display(),
    )
}

/// Run before containerd is stopped (the kubelet is already gone): kill and delete every
/// task of the CRI's namespace, so each shim exits cleanly (unmounting rootfs, removing its
/// socket) instead of being orphaned.
fn drain_script(containerd: DebPackage) -> String {
    let ctr = paths::deb_root(&containerd).join("usr/bin/ctr");
    format!(
        "#!/bin/sh\n\
         # Written by the test bed: stop every container of the cluster through containerd.\n\
         ctr='{ctr} --address {CONTAINERD_SOCKET} --namespace {K8S_NAMESPACE}'\n\
         for t in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks kill -s SIGKILL \"$t\" >/dev/null 2>&1; done\n\
         for t in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks delete -f \"$t\" >/dev/null 2>&1; done\n\
         exit 0\n",
        ctr = ctr.display()
    )
}

/// The pause image: a static C program that sleeps until SIGTERM/SIGINT and reaps orphans,
/// built with the host's C compiler (`clang`, else `cc`) and written as an OCI tarball.
pub fn pause_image(work: &Path, out: &Path) -> Result<String, Error> {
    std::fs::create_dir_all(work).map_err(io(work))?;
    let src = work.join("pause.c");
    write(&src, PAUSE_C)?;
    let bin = work.join("pause");
    let mut built = false;
    let mut errors = String::new();
    for cc in ["clang", "cc", "gcc"] {
        match Command::new(cc)
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
        {
            Ok(o) if o.status.success() => {
                built = true;
                break;
            }
            Ok(o) => errors.push_str(&String::from_utf8_lossy(&o.stderr)),
            Err(e) => errors.push_str(&format!("{cc}: {e}\n")),
        }
    }
    if !built {
        return Err(other(
            &src,
            format!("compiling the pause program: {errors}"),
        ));
    }
    let bytes = std::fs::read(&bin).map_err(io(&bin))?;
    crate::oci::RootfsImage::new(PAUSE_IMAGE)
        .file("/pause", bytes, 0o755)
        .entrypoint(&["/pause"])
        .user("65535:65535")
        .write_tar(out)
}

const PAUSE_C: &str = r#"/* The pod sandbox's process: holds the namespaces, reaps orphans, exits on SIGTERM/SIGINT. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction q = {0}, r = {0};
    q.sa_handler = quit;
    r.sa_handler = reap;
    r.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGINT, &q, 0);
    sigaction(SIGTERM, &q, 0);
    sigaction(SIGCHLD, &r, 0);
    for (;;) pause();
}
"#;

fn record_baseline() -> Baseline {
    Baseline {
        sysctls: SYSCTLS
            .iter()
            .filter_map(|k| {
                std::fs::read_to_string(Path::new("/proc/sys").join(k))
                    .ok()
                    .map(|v| (k.to_string(), v.trim().to_string()))
            })
            .collect(),
        paths: HOST_PATHS
            .iter()
            .map(|(p, _)| (p.to_string(), std::fs::symlink_metadata(p).is_ok()))
            .collect(),
        chains: cni::our_chains(),
        tables: cni::tables(),
        cgroups: kubepods_cgroups()
            .into_iter()
            .map(|p| p.display().to_string())
            .collect(),
    }
}

/// `kubepods` directories in every cgroup hierarchy.
fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    roots.extend(entries.flatten().map(|e| e.path()));
    for root in roots {
        for name in ["kubepods", "kubepods.slice"] {
            let p = root.join(name);
            if p.is_dir() {
                found.push(p);
            }
        }
    }
    found
}

/// Kills every process in the kubelet's cgroups (that were not there before) and removes
/// the cgroups, deepest first.
fn kill_and_remove_cgroups(before: &[String], progress: &dyn Fn(&str)) -> Vec<String> {
    let mut problems = Vec::new();
    let ours: Vec<PathBuf> = kubepods_cgroups()
        .into_iter()
        .filter(|p| !before.contains(&p.display().to_string()))
        .collect();
    if ours.is_empty() {
        return problems;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut pids = BTreeSet::new();
        for root in &ours {
            for dir in dirs_below(root) {
                if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                }
            }
        }
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!("processes left in the kubelet's cgroups: {pids:?}"));
            break;
        }
        progress(&format!(
            "killing {} processes left in kubepods cgroups",
            pids.len()
        ));
        for pid in &pids {
            supervisor::send_signal(*pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for root in &ours {
        let mut dirs = dirs_below(root);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d) {
                problems.push(format!("removing cgroup {}: {e}", d.display()));
            }
        }
    }
    problems
}

/// `dir` and every directory below it.
fn dirs_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

fn wait_gone(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|p| supervisor::alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Paths of the unix sockets the processes hold open (from `/proc/<pid>/fd` and
/// `/proc/net/unix`).
fn unix_socket_paths(pids: &[u32]) -> Vec<PathBuf> {
    let mut inodes = BTreeSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.display().to_string();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 8 && inodes.contains(cols[6])).then(|| PathBuf::from(cols[7]))
        })
        .collect()
}

/// Removes a file or a directory tree without crossing into other filesystems or following
/// symlinks.
pub fn remove_tree(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path).map_err(io(path));
    }
    let dev = meta.dev();
    fn walk(dir: &Path, dev: u64) -> Result<(), Error> {
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let p = entry.path();
            let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(other(&p, "another filesystem is mounted here".into()));
                }
                walk(&p, dev)?;
                std::fs::remove_dir(&p).map_err(io(&p))?;
            } else {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        Ok(())
    }
    walk(path, dev)?;
    std::fs::remove_dir(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_configs_keep_the_pause_image_and_our_socket() {
        let dir = Path::new("/x/cluster");
        for pkg in [
            crate::versions::CONTAINERD_1_6,
            crate::versions::CONTAINERD_1_7,
            crate::versions::CONTAINERD_2,
        ] {
            let text = containerd_config(dir, pkg);
            assert!(text.contains(PAUSE_IMAGE), "{text}");
            assert!(
                text.contains(&format!("address = \"{CONTAINERD_SOCKET}\"")),
                "{text}"
            );
            assert!(text.contains("SystemdCgroup = false"));
            assert!(text.contains("/x/cluster/containerd/root"));
        }
        assert!(containerd_config(dir, crate::versions::CONTAINERD_2).starts_with("version = 3"));
        assert!(containerd_config(dir, crate::versions::CONTAINERD_1_7).starts_with("version = 2"));
    }

    #[test]
    fn remove_tree_removes_nested_dirs_and_not_symlink_targets() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), tree.join("link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.path().join("keep").exists());
    }
}
