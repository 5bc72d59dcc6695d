//! Every pinned version of the test bed, in one place. `cargo xtask testbed` builds exactly
//! these; the cluster helper finds them by the same constants.

/// A Go program built from the module proxy: `go build` of `packages` inside a wrapper module
/// that requires `module@version` and maps each `replace` module to a published version
/// (upstream `go.mod`s point those at sibling directories, which `go install` refuses).
#[derive(Debug, Clone, Copy)]
pub struct GoBuild {
    /// Cache directory name under `<cache>/go/`.
    pub name: &'static str,
    /// The main module and its version.
    pub module: &'static str,
    pub version: &'static str,
    /// Modules replaced by `<module> <version>` from the proxy.
    pub replace: &'static [(&'static str, &'static str)],
    /// Main packages to build, with the binary name each becomes.
    pub packages: &'static [(&'static str, &'static str)],
    /// Extra `-ldflags` (version stamping).
    pub ldflags: &'static str,
}

/// Kubernetes release of the test bed. It matches the `v1_37` feature of k8s-openapi.
pub const KUBERNETES: &str = "v1.37.2";
/// The published version of Kubernetes' staging modules (`k8s.io/api` etc.) for that release.
const KUBERNETES_STAGING: &str = "v0.37.2";

const fn staging(module: &'static str) -> (&'static str, &'static str) {
    (module, KUBERNETES_STAGING)
}

/// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl.
pub const KUBERNETES_BUILD: GoBuild = GoBuild {
    name: "kubernetes",
    module: "k8s.io/kubernetes",
    version: KUBERNETES,
    replace: &[
        staging("k8s.io/api"),
        staging("k8s.io/apiextensions-apiserver"),
        staging("k8s.io/apimachinery"),
        staging("k8s.io/apiserver"),
        staging("k8s.io/cli-runtime"),
        staging("k8s.io/client-go"),
        staging("k8s.io/cloud-provider"),
        staging("k8s.io/cluster-bootstrap"),
        staging("k8s.io/code-generator"),
        staging("k8s.io/component-base"),
        staging("k8s.io/component-helpers"),
        staging("k8s.io/controller-manager"),
        staging("k8s.io/cri-api"),
        staging("k8s.io/cri-client"),
        staging("k8s.io/cri-streaming"),
        staging("k8s.io/csi-translation-lib"),
        staging("k8s.io/dynamic-resource-allocation"),
        staging("k8s.io/endpointslice"),
        staging("k8s.io/externaljwt"),
        staging("k8s.io/kms"),
        staging("k8s.io/kube-aggregator"),
        staging("k8s.io/kube-controller-manager"),
        staging("k8s.io/kube-proxy"),
        staging("k8s.io/kube-scheduler"),
        staging("k8s.io/kubectl"),
        staging("k8s.io/kubelet"),
        staging("k8s.io/metrics"),
        staging("k8s.io/mount-utils"),
        staging("k8s.io/pod-security-admission"),
        staging("k8s.io/sample-apiserver"),
        staging("k8s.io/streaming"),
    ],
    packages: &[
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        (
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-controller-manager",
        ),
        ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
    ],
    ldflags: concat!(
        "-X k8s.io/component-base/version.gitVersion=v1.37.2 ",
        "-X k8s.io/component-base/version.gitMajor=1 ",
        "-X k8s.io/component-base/version.gitMinor=37 ",
        "-X k8s.io/component-base/version.gitTreeState=clean ",
        "-X k8s.io/client-go/pkg/version.gitVersion=v1.37.2 ",
        "-X k8s.io/client-go/pkg/version.gitMajor=1 ",
        "-X k8s.io/client-go/pkg/version.gitMinor=37 ",
        "-X k8s.io/client-go/pkg/version.gitTreeState=clean"
    ),
};

/// etcd, the release line Kubernetes 1.37 is built against.
pub const ETCD: &str = "v3.7.3";

/// The etcd server.
pub const ETCD_BUILD: GoBuild = GoBuild {
    name: "etcd",
    module: "go.etcd.io/etcd/server/v3",
    version: ETCD,
    replace: &[
        ("go.etcd.io/etcd/api/v3", ETCD),
        ("go.etcd.io/etcd/client/pkg/v3", ETCD),
        ("go.etcd.io/etcd/client/v3", ETCD),
        ("go.etcd.io/etcd/pkg/v3", ETCD),
    ],
    packages: &[("go.etcd.io/etcd/server/v3", "etcd")],
    ldflags: "",
};

/// helm, for the chart tests and `xtask up`.
pub const HELM_BUILD: GoBuild = GoBuild {
    name: "helm",
    module: "helm.sh/helm/v3",
    version: "v3.22.0",
    replace: &[],
    packages: &[("helm.sh/helm/v3/cmd/helm", "helm")],
    ldflags: "-X helm.sh/helm/v3/internal/version.version=v3.22.0",
};

/// kwok, which simulates nodes and pod lifecycles for operator tests at scale.
pub const KWOK_BUILD: GoBuild = GoBuild {
    name: "kwok",
    module: "sigs.k8s.io/kwok",
    version: "v0.8.0",
    replace: &[],
    packages: &[("sigs.k8s.io/kwok/cmd/kwok", "kwok")],
    ldflags: "",
};

/// kwok's own "fast" node stages (what `kwokctl` uses): nodes become Ready at once and keep a
/// heartbeat lease. Taken from the kwok module's `kustomize/stage/` in the Go module cache.
pub const KWOK_NODE_STAGE_DIRS: &[&str] = &["node/fast", "node/heartbeat-with-lease"];
/// kwok's "fast" pod stages: pods run, complete and delete at once. Tests that need other pod
/// behaviour (e.g. an installer that fails on some nodes) bring their own instead.
pub const KWOK_POD_STAGE_DIRS: &[&str] = &["pod/fast"];

/// Every Go program of the test bed.
pub const GO_BUILDS: &[GoBuild] = &[KUBERNETES_BUILD, ETCD_BUILD, HELM_BUILD, KWOK_BUILD];

/// A Debian package unpacked side by side (`apt-get download` + `dpkg -x`), never installed
/// system-wide, so several containerd versions coexist.
#[derive(Debug, Clone, Copy)]
pub struct DebPackage {
    /// Directory name under `<cache>/deb/`.
    pub dir: &'static str,
    pub package: &'static str,
    /// Debian suite it comes from.
    pub suite: &'static str,
}

pub const CONTAINERD_1_6: DebPackage = DebPackage {
    dir: "containerd-1.6",
    package: "containerd",
    suite: "bookworm",
};
pub const CONTAINERD_1_7: DebPackage = DebPackage {
    dir: "containerd-1.7",
    package: "containerd",
    suite: "trixie",
};
pub const CONTAINERD_2: DebPackage = DebPackage {
    dir: "containerd-2",
    package: "containerd",
    suite: "sid",
};

/// The test bed's containerd package for a version such as "1.7.24" or "2.1": by major.minor
/// for 1.x, any 2.x for 2.
pub fn containerd_package(version: &str) -> Option<DebPackage> {
    let mut parts = version.split('.');
    match (parts.next()?, parts.next()) {
        ("1", Some("6")) => Some(CONTAINERD_1_6),
        ("1", Some("7")) => Some(CONTAINERD_1_7),
        ("2", _) => Some(CONTAINERD_2),
        _ => None,
    }
}

/// containerd 1.6 (Debian 12), 1.7 (Debian 13) and 2.x (Debian unstable), plus runc and the
/// CNI plugins. Unstable moves; the unpacked version is recorded in `<dir>/VERSION`.
pub const DEB_PACKAGES: &[DebPackage] = &[
    CONTAINERD_1_6,
    CONTAINERD_1_7,
    CONTAINERD_2,
    DebPackage {
        dir: "runc",
        package: "runc",
        suite: "bookworm",
    },
    DebPackage {
        dir: "cni",
        package: "containernetworking-plugins",
        suite: "bookworm",
    },
];

/// Debian packages installed system-wide: what the Rust build needs (protoc for
/// containerd-client, libseccomp for libcontainer), what the tests run, and tools.
pub const APT_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "libseccomp-dev",
    "pkg-config",
    "iptables",
    "iproute2",
    "conntrack",
    "socat",
    "lua5.4",
    // Test programs built from C for WASI (shim tests and benchmarks).
    "clang",
    "lld",
    "wasi-libc",
    "libclang-rt-dev-wasm32",
    // Native baselines and load generator for `cargo xtask bench shim`.
    "busybox-static",
    "wrk",
    // `cargo xtask down` removes the nftables tables kube-proxy and kubelet leave behind.
    "nftables",
];

/// cargo-nextest, the test runner.
pub const NEXTEST: &str = "0.9.151";

/// wit-bindgen-cli, whose C generator builds the shim's C test components (any release
/// reading WASI 0.2.x WIT would do; this one is tested).
pub const WIT_BINDGEN: &str = "0.63.0";
