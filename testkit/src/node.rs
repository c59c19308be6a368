//! The real node of the real-node tests (`tests/node/`): a one-node Kubernetes 1.37 cluster on
//! this machine — kubelet, containerd, kube-proxy, a CNI bridge, the control plane with every
//! controller — brought up by `hack/node/node.sh` once per test binary, with the operator's
//! image built by `hack/image/build.py` and imported. The operator runs in Pods as users run
//! it, installed with the chart or `deploy/`; a simulator in the test process listens on the
//! node's bridge address ([`NODE_IP`]), where Pods reach it.
//!
//! The node belongs to one process, `hack/node/node.sh guard`: it waits while another run's
//! node is up, brings this one up, and takes it down when the test process ends however it
//! ends (it reads a pipe whose only write end this process holds, as the control plane's
//! watchdog in `support` does), then checks the host is as it was and says so on stderr.
//!
//! The operator image is `INBOX_NODE_OPERATOR_IMAGE` (an OCI archive; `hack/test.sh` builds
//! it first), else built here.

use std::any::Any;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::support::{
    assets_dir, client_from, keep_tool_caches_in, output_with_stdin, random_suffix, stdout_ok, tool,
};

/// The node's address: the bridge's, where kube-apiserver and kubelet listen and where Pods
/// reach the host.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// The operator's CRDs, as `kubectl` names them.
pub const CRDS: [&str; 3] = [
    "crd/inboxes.agentsend.io",
    "crd/accounts.agentsend.io",
    "crd/clusteraccounts.agentsend.io",
];

/// The operator's image as `docs/local-cluster.md` names it: `inbox-operator:dev`.
pub const OPERATOR_REPOSITORY: &str = "inbox-operator";
/// See [`OPERATOR_REPOSITORY`].
pub const OPERATOR_TAG: &str = "dev";
/// A shell image (Debian's busybox-static), imported with the node: `sh`, `cat`, `wget`.
pub const SHELL_IMAGE: &str = "localhost/inbox-node/shell:busybox";

/// The node of this test binary.
pub struct Node {
    /// Admin kubeconfig (a token in `system:masters`).
    pub kubeconfig: PathBuf,
    assets: PathBuf,
    /// `hack/node/node.sh guard`; we hold its stdin's write end until this process ends.
    _guard: Mutex<Child>,
}

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();

/// Tests that install cluster-wide things no other test may see at the same time (the
/// `deploy/base` install watches every namespace) take it exclusively, the others shared.
static USE: RwLock<()> = RwLock::const_new(());

/// The node, brought up on first use (once per test binary). A failed start is remembered:
/// every later test fails at once with its reason.
pub fn node() -> &'static Node {
    match NODE.get_or_init(|| std::panic::catch_unwind(Node::start).map_err(panic_message)) {
        Ok(n) => n,
        Err(e) => panic!("the node failed to start: {e}"),
    }
}

static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// What a caught panic said.
fn panic_message(e: Box<dyn Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

/// The operator's image, an OCI archive: `INBOX_NODE_OPERATOR_IMAGE` (`hack/test.sh` builds
/// it before the tests), else built once by this binary with `hack/image/build.py operator`
/// (a release build of the operator for musl, as the Dockerfile makes it).
pub fn operator_image() -> &'static Path {
    let built = IMAGE.get_or_init(|| {
        std::panic::catch_unwind(|| match std::env::var_os("INBOX_NODE_OPERATOR_IMAGE") {
            Some(a) if !a.is_empty() => PathBuf::from(a),
            _ => {
                eprintln!("node: building the operator image (INBOX_NODE_OPERATOR_IMAGE unset)");
                let out = stdout_ok(
                    Command::new("python3")
                        .arg(repo().join("hack/image/build.py"))
                        .arg("operator"),
                    "hack/image/build.py operator",
                );
                PathBuf::from(out.trim())
            }
        })
        .map_err(panic_message)
    });
    match built {
        Ok(path) => {
            assert!(path.is_file(), "no image archive at {}", path.display());
            path
        }
        Err(e) => panic!("the operator image could not be built: {e}"),
    }
}

/// Share the node with the other tests running now.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    USE.read().await
}

/// Have the node to yourself: no other test runs meanwhile.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    USE.write().await
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is in the repository")
        .to_path_buf()
}

impl Node {
    fn start() -> Node {
        let repo = repo();
        let archive = operator_image();
        // Its own session: a Ctrl-C of the tests reaches it only through the closed pipe.
        let mut guard = Command::new("setsid")
            .arg(repo.join("hack/node/node.sh"))
            .arg("guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hack/node/node.sh guard (setsid, bash)");
        let stdout = guard.stdout.take().expect("the guard's stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the guard's answer");
        let kubeconfig = match line.trim().strip_prefix("ready ") {
            Some(path) => PathBuf::from(path),
            None => panic!(
                "hack/node/node.sh guard: {} (its log is above)",
                if line.is_empty() {
                    "exited"
                } else {
                    line.trim()
                }
            ),
        };
        stdout_ok(
            Command::new(repo.join("hack/node/node.sh"))
                .arg("import")
                .arg(archive),
            "importing the operator image",
        );
        let node = Node {
            kubeconfig,
            assets: assets_dir(),
            _guard: Mutex::new(guard),
        };
        // The CRDs, managed apart from any release (docs/install.md, "CRD upgrades": `kubectl
        // apply --server-side -k crds`), as for a cluster's second and later releases: the
        // tests' releases install with `crds.enabled=false`, so that they can run side by side.
        let crds = repo.join("crds").display().to_string();
        node.kubectl_ok(&["apply", "--server-side", "-k", &crds]);
        node.kubectl_ok(
            &[
                &["wait", "--for=condition=Established", "--timeout=60s"],
                &CRDS[..],
            ]
            .concat(),
        );
        node
    }

    /// Where kubectl and helm keep their caches: in the node's directory, which goes with it.
    fn caches(&self, c: &mut Command) {
        keep_tool_caches_in(c, self.kubeconfig.parent().unwrap_or(Path::new("/tmp")));
    }

    /// `kubectl --kubeconfig ADMIN` (`KUBECTL`, else the one built with the control plane).
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(tool("KUBECTL", "kubectl", &self.assets));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        self.caches(&mut c);
        c
    }

    /// `helm --kubeconfig ADMIN` (`HELM`, else the one built with the control plane).
    pub fn helm(&self) -> Command {
        let mut c = Command::new(tool("HELM", "helm", &self.assets));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        self.caches(&mut c);
        c
    }

    /// `kubectl ARGS` that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_ok(
            self.kubectl().args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// `kubectl ARGS` with `input` on stdin, which must succeed.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        let out = output_with_stdin(self.kubectl().args(args), input);
        assert!(
            out.status.success(),
            "kubectl {}: {}\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm ARGS` that must succeed; its stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        stdout_ok(self.helm().args(args), &format!("helm {}", args.join(" ")))
    }

    /// A new admin client (each test makes its own: clients are bound to a runtime).
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }
}

/// A namespace of the node for one test; deleted (without waiting) when dropped.
pub struct NodeNamespace {
    name: String,
}

impl NodeNamespace {
    /// `PREFIX-xxxxxx`, with `labels`.
    pub async fn new(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> NodeNamespace {
        let name = format!("{prefix}-{}", random_suffix(6));
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        NodeNamespace { name }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NodeNamespace {
    fn drop(&mut self) {
        if let Some(Ok(node)) = NODE.get() {
            let _ = node
                .kubectl()
                .args(["delete", "namespace", &self.name, "--wait=false"])
                .args(["--ignore-not-found", "--request-timeout=10s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether the Pod's `Ready` condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Pods in `ns` matching `selector`, not being deleted.
pub async fn pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// A container's process as the host sees it: how the kubelet and the runtime confined it.
#[derive(Debug)]
pub struct ContainerProcess {
    pub pid: u32,
    /// `/proc/PID/status`.
    pub status: String,
    /// The process's cgroup path in each hierarchy (`memory` → `/kubepods/.../CONTAINER`).
    cgroups: Vec<(String, String)>,
    /// `/proc/PID/mountinfo`.
    pub mountinfo: String,
}

impl ContainerProcess {
    /// The process named `comm` (at most 15 characters, as the kernel keeps it) in the Pod
    /// with this UID, if it runs on this host (the node is this machine).
    pub fn find(pod_uid: &str, comm: &str) -> Option<ContainerProcess> {
        let marker = format!("pod{pod_uid}/");
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = entry.path();
            let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else {
                continue;
            };
            if !cgroup.contains(&marker) {
                continue;
            }
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if name.trim() != comm {
                continue;
            }
            let cgroups = cgroup
                .lines()
                .filter_map(|l| {
                    let mut parts = l.splitn(3, ':');
                    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                    Some((controllers.to_string(), path.to_string()))
                })
                .collect();
            return Some(ContainerProcess {
                pid,
                status: std::fs::read_to_string(dir.join("status")).unwrap_or_default(),
                cgroups,
                mountinfo: std::fs::read_to_string(dir.join("mountinfo")).unwrap_or_default(),
            });
        }
        None
    }

    /// A `Key:` line of `/proc/PID/status`, e.g. `Uid` → `65532 65532 65532 65532`.
    pub fn status_field(&self, key: &str) -> String {
        self.status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// `FILE` of the process's cgroup in the `controller` hierarchy (cgroup v1), trimmed.
    pub fn cgroup_file(&self, controller: &str, file: &str) -> Option<String> {
        let (_, path) = self
            .cgroups
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c == controller))?;
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{file}"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The options of the container's root mount (`/`), e.g. `ro,relatime`.
    pub fn root_mount_options(&self) -> Option<String> {
        self.mountinfo.lines().find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(4) == Some(&"/")).then(|| fields.get(5).unwrap_or(&"").to_string())
        })
    }
}

/// On a panic, print what the node shows of `namespaces`: Pods, Inboxes, events, and the
/// operator's logs (`selector`).
pub struct NodeDump {
    pub namespaces: Vec<String>,
    pub selector: String,
}

impl Drop for NodeDump {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(Ok(node)) = NODE.get() else { return };
        for ns in &self.namespaces {
            let show = |args: &[&str]| {
                let out = node
                    .kubectl()
                    .args(args)
                    .args(["-n", ns, "--request-timeout=10s"])
                    .output();
                if let Ok(o) = out {
                    eprintln!(
                        "--- kubectl {} -n {ns} ---\n{}{}",
                        args.join(" "),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            };
            show(&["get", "pods,inboxes,leases", "-o", "wide"]);
            show(&["get", "events", "--sort-by=.lastTimestamp"]);
            show(&["logs", "-l", &self.selector, "--tail=40", "--prefix"]);
        }
    }
}

/// A fresh suffix for names that must not clash between tests (cluster-wide objects).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix(5))
}

/// How long a Pod may take from its creation to Ready on a busy two-core machine.
pub const POD_READY: Duration = Duration::from_secs(120);
