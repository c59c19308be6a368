//! Test harness: a real etcd + kube-apiserver + kube-controller-manager (envtest style, plus
//! the garbage collector, the namespace controller and the clusterrole-aggregation controller,
//! so ownerReferences, namespace deletion and the built-in `view`/`edit`/`admin` roles behave
//! as in a cluster), started once per test binary (tests/it: once per run;
//! tests/faults_apiserver.rs: its own) on free loopback ports, with
//! the Inbox CRD installed by `kubectl apply --server-side`; a namespace per test; log dumps on
//! failure; polling helpers; and a watchdog that kills the processes and removes the temp dir
//! when the test process exits, even after a panic or a SIGKILL. Also what the tests share
//! beyond it: free ports, the `inbox-operator` binary run as a process ([`Operator`]), and
//! polling ([`wait_for`]).
//!
//! Every `#[tokio::test]` has its own runtime, so nothing runtime-bound (a `kube::Client`) is
//! kept in a static: the control plane is plain processes and files, and `client()` makes a new
//! client each call.
//!
//! The binaries come from `KUBEBUILDER_ASSETS`, else `~/.cache/inbox-operator/envtest/k8s-1.37.2`
//! (both built/cached by `hack/envtest-assets.sh [VERSION]`). `kubectl` is taken from `KUBECTL`,
//! else the assets dir (the server's own version), else `PATH`.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How long kube-apiserver may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The Kubernetes version tested when `KUBEBUILDER_ASSETS` is unset (`hack/envtest-assets.sh`'s
/// default, the newest supported).
const DEFAULT_K8S_VERSION: &str = "1.37.2";

/// The control plane of this test binary.
pub struct ControlPlane {
    /// Admin kubeconfig (token in `system:masters`).
    pub kubeconfig: PathBuf,
    /// API server URL, `https://127.0.0.1:PORT`.
    pub server: String,
    token: String,
    dir: PathBuf,
    assets: PathBuf,
    api_port: u16,
    etcd_url: String,
    apiserver: Mutex<Option<Child>>,
    etcd: Mutex<Option<Child>>,
    controller_manager: Mutex<Option<Child>>,
    /// `GET /version`'s `gitVersion`, e.g. `v1.37.2`.
    pub version: String,
    /// The cleanup watchdog; it outlives this process on purpose. We hold the write end of its
    /// stdin, never written or closed: the kernel closes it when this process ends (however it
    /// ends), and the watchdog's `read` then returns.
    _watchdog: Child,
}

/// Started once; a failed start is remembered, so every later test fails fast with its reason
/// instead of starting another control plane.
static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The shared control plane, started on first use (once per test binary).
pub fn control_plane() -> &'static ControlPlane {
    match CONTROL_PLANE.get_or_init(|| {
        std::panic::catch_unwind(ControlPlane::start).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into())
        })
    }) {
        Ok(cp) => cp,
        Err(e) => panic!("the test control plane failed to start: {e}"),
    }
}

/// The control plane if it has been started.
fn started() -> Option<&'static ControlPlane> {
    CONTROL_PLANE.get().and_then(|r| r.as_ref().ok())
}

/// Install ring as the process-wide rustls provider (idempotent; an error means one already is).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A free loopback port (released before use: a tiny race, fine on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

pub(crate) fn assets_dir() -> PathBuf {
    let (dir, from) = match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), "KUBEBUILDER_ASSETS"),
        _ => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            (
                home.join(format!(
                    ".cache/inbox-operator/envtest/k8s-{DEFAULT_K8S_VERSION}"
                )),
                "the default cache dir",
            )
        }
    };
    for bin in ["kube-apiserver", "kube-controller-manager", "etcd"] {
        assert!(
            dir.join(bin).is_file(),
            "integration tests need a real control plane, but {bin} is not in {} ({from}).\n\
             Run `hack/envtest-assets.sh` once (it builds etcd, kube-apiserver, \
             kube-controller-manager, kubectl and helm {DEFAULT_K8S_VERSION} into \
             ~/.cache/inbox-operator/envtest/ and prints the dir), or run every test with \
             `hack/test.sh` / `make test`, or set KUBEBUILDER_ASSETS to a dir holding them.",
            dir.display()
        );
    }
    dir
}

/// The tool named by the environment variable `var`, else `name` from the assets dir (built with
/// the control plane, so of the server's version), else `name` on `PATH`.
pub(crate) fn tool(var: &str, name: &str, assets: &Path) -> PathBuf {
    if let Some(t) = std::env::var_os(var).filter(|t| !t.is_empty()) {
        return PathBuf::from(t);
    }
    let built = assets.join(name);
    if built.is_file() {
        built
    } else {
        PathBuf::from(name)
    }
}

/// Keep kubectl's and helm's caches, configuration and data in `dir` (which goes with the
/// cluster it serves), not in `~/.kube/cache`, `~/.cache/helm` and `~/.config/helm`: every
/// test cluster has a port of its own, and the home folders would keep a folder for each.
pub fn keep_tool_caches_in(cmd: &mut Command, dir: &Path) {
    // Helm's Kubernetes client keeps a discovery cache as kubectl does.
    cmd.env("KUBECACHEDIR", dir.join("kubectl-cache"));
    for (var, sub) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        cmd.env(var, dir.join("helm").join(sub));
    }
}

/// Run `cmd` with `input` on its stdin; its output (stdout and stderr captured).
pub fn output_with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    child
        .stdin
        .take()
        .expect("the child's stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("write to {:?}: {e}", cmd.get_program()));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {:?}: {e}", cmd.get_program()))
}

/// Run `cmd`; panic with `what`, its exit status and its output unless it succeeds; its stdout.
pub fn stdout_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Random lowercase alphanumerics (valid in DNS labels).
pub fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The exit status of a started child process, if it has exited.
fn exit_status(child: &Mutex<Option<Child>>) -> Option<std::process::ExitStatus> {
    child
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .and_then(|c| c.try_wait().ok().flatten())
}

/// The last `lines` lines of a log file (read from its last MiB; not necessarily UTF-8).
fn tail(path: &Path, lines: usize) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("({} not found)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(1 << 20)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl ControlPlane {
    fn start() -> ControlPlane {
        install_crypto_provider();
        let started = Instant::now();
        let assets = assets_dir();
        let dir = std::env::temp_dir().join(format!(
            "inbox-operator-test-{}-{}",
            std::process::id(),
            random_suffix(6)
        ));
        std::fs::create_dir_all(dir.join("etcd")).expect("create the control plane's temp dir");
        // First, so that whatever happens next is cleaned up: at exit, or at once if this
        // function panics (unwinding drops the `Child` and with it the pipe's write end).
        let watchdog = spawn_watchdog(&dir);

        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        assert!(
            openssl(&["genrsa", "-out", "sa.key", "2048"])
                && openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]),
            "openssl is needed to make the service-account key pair (apt-get install openssl)"
        );
        let token = random_suffix(32);
        // The controller-manager gets a user of its own (in system:masters, i.e. cluster-admin),
        // so its requests are told apart in the audit and metrics.
        let kcm_token = random_suffix(32);
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{token},admin,admin,system:masters\n\
                 {kcm_token},kube-controller-manager,kcm,system:masters\n"
            ),
        )
        .expect("write the token file");

        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn_logged(
            Command::new(assets.join("etcd"))
                .arg("--data-dir")
                .arg(dir.join("etcd"))
                .args(["--listen-client-urls", &etcd_url])
                .args(["--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .arg("--unsafe-no-fsync"),
            &dir,
            "etcd",
        );
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &token, None);
        write_kubeconfig(&dir.join("kcm.kubeconfig"), &server, &kcm_token, None);
        let cp = ControlPlane {
            kubeconfig,
            server,
            token,
            dir,
            assets,
            api_port,
            etcd_url,
            apiserver: Mutex::new(None),
            etcd: Mutex::new(Some(etcd)),
            controller_manager: Mutex::new(None),
            version: String::new(),
            _watchdog: watchdog,
        };
        cp.start_apiserver();
        let cp = ControlPlane {
            version: cp.server_version(),
            ..cp
        };
        let ready = started.elapsed();
        cp.install_crd();
        // After the CRD: the garbage collector discovers resources at start (then only every
        // 30 s), and must know Inboxes to collect what they own.
        cp.start_controller_manager();
        eprintln!(
            "test control plane: Kubernetes {} at {} ready in {:.1}s, CRD served after {:.1}s (dir {})",
            cp.version,
            cp.server,
            ready.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            cp.dir.display()
        );
        cp
    }

    fn apiserver_command(&self) -> Command {
        let d = &self.dir;
        let mut c = Command::new(self.assets.join("kube-apiserver"));
        c.args(["--etcd-servers", &self.etcd_url])
            .args(["--secure-port", &self.api_port.to_string()])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--advertise-address", "127.0.0.1"])
            // A loopback advertise address is refused by the default endpoint reconciler.
            .args(["--endpoint-reconciler-type", "none"])
            .args(["--authorization-mode", "RBAC"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-cluster-ip-range", "10.0.0.0/24"])
            .arg("--allow-privileged");
        let files = [
            ("--cert-dir", "certs"),
            ("--token-auth-file", "tokens.csv"),
            ("--service-account-key-file", "sa.pub"),
            ("--service-account-signing-key-file", "sa.key"),
        ];
        for (flag, file) in files {
            c.arg(flag).arg(d.join(file));
        }
        c
    }

    /// Start kube-apiserver (again, after [`stop_apiserver`](Self::stop_apiserver): same port,
    /// same etcd, same certificates) and wait until `/readyz` answers 200. A no-op wait if it
    /// is already running.
    pub fn start_apiserver(&self) {
        {
            let mut guard = self.apiserver.lock().unwrap_or_else(|p| p.into_inner());
            let running = matches!(guard.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
            if !running {
                *guard = Some(spawn_logged(
                    &mut self.apiserver_command(),
                    &self.dir,
                    "apiserver",
                ));
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.readyz() {
                return;
            }
            let exited = exit_status(&self.apiserver);
            let etcd_exited = exit_status(&self.etcd);
            if let Some(status) = etcd_exited {
                self.forget_pid("etcd");
                panic!(
                    "etcd exited ({status}) before kube-apiserver was ready.\n\
                     --- etcd log tail ---\n{}",
                    tail(&self.dir.join("etcd.log"), 30)
                );
            }
            if let Some(status) = exited {
                self.forget_pid("apiserver");
                panic!(
                    "kube-apiserver exited ({status}) before it was ready.\n\
                     --- kube-apiserver log tail ---\n{}\n--- etcd log tail ---\n{}",
                    self.apiserver_log_tail(40),
                    tail(&self.dir.join("etcd.log"), 15)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver not ready (GET /readyz) after {READY_TIMEOUT:?}.\n\
                     --- kube-apiserver log tail ---\n{}\n--- etcd log tail ---\n{}",
                    self.apiserver_log_tail(40),
                    tail(&self.dir.join("etcd.log"), 15)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Start kube-controller-manager with the garbage collector, the namespace controller and
    /// the clusterrole-aggregation controller (what a cluster does with ownerReferences, deleted
    /// namespaces, and ClusterRoles labelled to aggregate into `view`, `edit` and `admin`). It
    /// keeps running across [`stop_apiserver`](Self::stop_apiserver) and reconnects by itself.
    fn start_controller_manager(&self) {
        let port = free_port();
        let mut cmd = Command::new(self.assets.join("kube-controller-manager"));
        cmd.arg("--kubeconfig")
            .arg(self.dir.join("kcm.kubeconfig"))
            .args([
                "--controllers",
                "garbagecollector,namespace,clusterrole-aggregation",
            ])
            .args([
                "--leader-elect=false",
                "--use-service-account-credentials=false",
            ])
            .args(["--secure-port", &port.to_string()])
            .args(["--bind-address", "127.0.0.1"])
            .arg("--authentication-skip-lookup=true")
            .arg("--cert-dir")
            .arg(self.dir.join("kcm-certs"));
        let child = spawn_logged(&mut cmd, &self.dir, "controller-manager");
        *self
            .controller_manager
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(child);
    }

    /// `GET /version`'s `gitVersion`.
    fn server_version(&self) -> String {
        let out = self
            .kubectl()
            .args(["get", "--raw", "/version"])
            .output()
            .expect("kubectl get --raw /version");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["gitVersion"].as_str().unwrap_or("unknown").to_string()
    }

    /// The last `lines` lines of the kube-controller-manager log.
    fn controller_manager_log_tail(&self, lines: usize) -> String {
        if let Some(status) = exit_status(&self.controller_manager) {
            return format!(
                "(exited: {status})\n{}",
                tail(&self.dir.join("controller-manager.log"), lines)
            );
        }
        tail(&self.dir.join("controller-manager.log"), lines)
    }

    fn readyz(&self) -> bool {
        self.kubectl()
            .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stop kube-apiserver (SIGTERM, then SIGKILL after 20 s); etcd keeps running. For outage
    /// tests; bring it back with [`start_apiserver`](Self::start_apiserver).
    pub fn stop_apiserver(&self) {
        let child = self
            .apiserver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut c) = child {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            self.forget_pid("apiserver");
        }
    }

    /// Once a child is reaped its PID may be reused: the watchdog must not kill it any more.
    fn forget_pid(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{name}.pid")));
    }

    /// Install the CRDs (Inbox, Account, ClusterAccount) as users do (`kubectl apply
    /// --server-side`, no flags), then wait until they are Established and `inboxes` is served.
    fn install_crd(&self) {
        let files = inbox_operator::commands::crd::crd_files().expect("render the CRDs");
        let crd = files.values().cloned().collect::<Vec<_>>().join("---\n");
        let out = self.kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], &crd);
        assert!(
            out.status.success(),
            "applying the CRD failed: {}\n--- kube-apiserver log tail ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.apiserver_log_tail(30)
        );
        // `kubectl wait` gives up at the first error the just-started apiserver returns (a
        // transient 503 while it installs the CRDs' handlers), so it is retried to a deadline.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self
                .kubectl()
                .args([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    "crd/inboxes.agentsend.io",
                    "crd/accounts.agentsend.io",
                    "crd/clusteraccounts.agentsend.io",
                ])
                .output()
                .expect("kubectl wait");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD not Established: {}\n--- kube-apiserver log tail ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.apiserver_log_tail(30)
            );
            eprintln!(
                "test: kubectl wait for the CRDs: {} (retrying)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .kubectl()
            .args([
                "get",
                "inboxes.agentsend.io,accounts.agentsend.io,clusteraccounts.agentsend.io",
                "-A",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "inboxes.agentsend.io not served 60 s after the CRD was Established"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kubectl` with `--kubeconfig` set to the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = self.kubectl_without_kubeconfig();
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// The kubectl the tests use (`KUBECTL`, else the one built with the control plane), with
    /// its discovery cache in the control plane's directory ([`keep_tool_caches_in`]).
    pub fn kubectl_without_kubeconfig(&self) -> Command {
        let mut c = Command::new(tool("KUBECTL", "kubectl", &self.assets));
        keep_tool_caches_in(&mut c, &self.dir);
        c
    }

    /// `kubectl ARGS` that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_ok(
            self.kubectl().args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// `kubectl ARGS` with `input` on stdin; its output.
    pub fn kubectl_with_stdin(&self, args: &[&str], input: &str) -> Output {
        output_with_stdin(self.kubectl().args(args), input)
    }

    /// `helm` (`HELM`, else the one built with the control plane) with `--kubeconfig` set to the
    /// admin kubeconfig, and its caches, configuration and data in the control plane's
    /// directory ([`keep_tool_caches_in`]).
    pub fn helm(&self) -> Command {
        let mut c = Command::new(tool("HELM", "helm", &self.assets));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        keep_tool_caches_in(&mut c, &self.dir);
        c
    }

    /// A new admin client. Clients are bound to the runtime of the test that makes them, so
    /// every test makes its own.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// A new kubeconfig (admin token) whose user impersonates `user` and `groups` (`as:` and
    /// `as-groups:`), so whatever uses it is authorised exactly as that identity, e.g.
    /// `kubeconfig_as("system:serviceaccount:NS:NAME", &["system:serviceaccounts",
    /// "system:serviceaccounts:NS", "system:authenticated"])`.
    pub fn kubeconfig_as(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-as-{}", random_suffix(8)));
        write_kubeconfig(&path, &self.server, &self.token, Some((user, groups)));
        path
    }

    /// The last `lines` lines of the kube-apiserver log (all its starts, appended).
    fn apiserver_log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("apiserver.log"), lines)
    }

    /// The apiserver's Prometheus metrics (`GET /metrics` as admin), e.g. to count
    /// `apiserver_request_total`.
    pub fn metrics(&self) -> String {
        let out = self
            .kubectl()
            .args(["get", "--raw", "/metrics"])
            .output()
            .expect("kubectl get --raw /metrics");
        assert!(
            out.status.success(),
            "GET /metrics failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A new client from a kubeconfig file (its current context).
pub async fn client_from(path: &Path) -> Client {
    install_crypto_provider();
    let kc = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    // As the operator's own client: no request hangs forever (the in-process operator of the
    // controller tests runs on this client).
    inbox_operator::controller::harden_kube_config(&mut config);
    Client::try_from(config).expect("kube client")
}

fn write_kubeconfig(path: &Path, server: &str, token: &str, impersonate: Option<(&str, &[&str])>) {
    let mut user = serde_json::json!({ "token": token });
    if let Some((name, groups)) = impersonate {
        user["as"] = name.into();
        if !groups.is_empty() {
            user["as-groups"] = groups.into();
        }
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": true}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    });
    // JSON is YAML; both kubectl and kube read it.
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Spawn with stdout+stderr appended to `DIR/NAME.log` and the PID in `DIR/NAME.pid` (which
/// the watchdog reads).
fn spawn_logged(cmd: &mut Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("open log file");
    let err = log.try_clone().expect("clone log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
    std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string())
        .expect("write pid file");
    child
}

/// Cleanup that cannot live in this process: statics are never dropped, and a killed process
/// runs no destructors. A detached shell (own session, so Ctrl-C or a process-group kill of the
/// test does not take it down; signals ignored) blocks reading a pipe whose only write end this
/// process holds (Rust opens every fd close-on-exec, so no other child inherits it). When this
/// process exits for any reason the kernel closes it, `read` returns, and the shell at once
/// SIGKILLs the processes named in `DIR/*.pid` and removes `DIR` (milliseconds after exit).
fn spawn_watchdog(dir: &Path) -> Child {
    let script = r#"
        trap '' INT TERM HUP PIPE
        dir="$1"
        read -r _ || true
        pids=""
        for f in "$dir"/*.pid; do [ -f "$f" ] && pids="$pids $(cat "$f")"; done
        for p in $pids; do kill -9 "$p" 2>/dev/null; done
        rm -rf "$dir"
        # A SIGKILLed process runs no more code, but make sure nothing recreated the dir.
        for p in $pids; do
            n=0
            # Until it is gone, or a zombie waiting for init to reap it.
            while [ $n -lt 200 ] && [ -e "/proc/$p" ] && ! grep -q '^[^)]*) Z' "/proc/$p/stat" 2>/dev/null; do
                sleep 0.01; n=$((n+1))
            done
        done
        rm -rf "$dir"
    "#;
    let spawn = |program: &str, pre: &[&str]| {
        Command::new(program)
            .args(pre)
            .args(["sh", "-c", script, "inbox-operator-test-watchdog"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    spawn("setsid", &[])
        .or_else(|_| spawn("env", &[]))
        .expect("start the cleanup watchdog (sh)")
}

/// A namespace of its own for one test; deleted (best effort, without waiting) when dropped.
/// The namespace controller then deletes what is left in it (an Inbox whose operator has
/// stopped keeps its finalizer, and with it the namespace Terminating: the whole etcd is thrown
/// away with the control plane anyway).
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Create a uniquely named namespace `PREFIX-xxxxxx`.
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(50)
            .collect();
        let name = format!("{}-{}", prefix.trim_matches('-'), random_suffix(6));
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if let Some(cp) = started() {
            let _ = cp
                .kubectl()
                .args(["delete", "namespace", &self.name, "--wait=false"])
                .args(["--ignore-not-found", "--request-timeout=10s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Prints the kube-apiserver log tail to stderr when dropped during a panic.
pub struct FailureDump;

impl Drop for FailureDump {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(cp) = started()
        {
            eprintln!(
                "--- kube-apiserver {} log tail ({}) ---\n{}\n--- end of kube-apiserver log tail ---",
                cp.version,
                cp.dir.join("apiserver.log").display(),
                cp.apiserver_log_tail(40)
            );
            eprintln!(
                "--- kube-controller-manager log tail ---\n{}\n--- end ---",
                cp.controller_manager_log_tail(15)
            );
        }
    }
}

/// Hold the result for the whole test (`let _dump = on_failure_dump_logs();`): if the test
/// panics, the apiserver log tail is printed with its output.
pub fn on_failure_dump_logs() -> FailureDump {
    FailureDump
}

/// Poll `f` every 100 ms until it yields `Some`; panic naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `Command` for the `inbox-operator` binary built with these tests: Cargo builds a package's
/// binaries before its integration tests and puts them next to the `deps/` folder of the test
/// executables (`target/debug/inbox-operator` beside `target/debug/deps/it-HASH`), the path it
/// gives the operator's own tests as `CARGO_BIN_EXE_inbox-operator`. So only the operator's
/// integration tests may run it: another package's tests would find no binary, or a stale one.
pub fn operator_command() -> Command {
    let exe = std::env::current_exe().expect("the test executable's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("inbox-operator"))
        .filter(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no inbox-operator binary beside the deps/ folder of {}: only the operator's \
                 integration tests (tests/) can run it",
                exe.display()
            )
        });
    Command::new(bin)
}

/// The highest resident memory so far (VmHWM) of process `pid` (`self`: this one), in bytes.
pub fn peak_rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// A running `inbox-operator run` process, its stderr in a log file; killed on drop (after
/// printing its log tail if the test is panicking).
pub struct Operator {
    child: Option<Child>,
    log: PathBuf,
    metrics_port: u16,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// `inbox-operator run --metrics-addr 127.0.0.1:FREE ARGS` (plus `--metrics-secure=false`
    /// unless ARGS set `--metrics-secure`) with `KUBECONFIG`,
    /// `AGENTSEND_API_URL`, `AGENTSEND_API_KEY` and `RUST_LOG` set.
    pub fn start(kubeconfig: &Path, api_url: &str, key: &str, args: &[&str], log: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("operator.log");
        let port = free_port();
        let file = std::fs::File::create(&log_path).expect("log file");
        // Plain HTTP unless the test asks otherwise: tests read /metrics without a token.
        let plain = (!args.iter().any(|a| a.starts_with("--metrics-secure")))
            .then_some("--metrics-secure=false");
        let child = operator_command()
            .arg("run")
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(plain)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("AGENTSEND_API_URL", api_url)
            .env("AGENTSEND_API_KEY", key)
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start operator");
        Operator {
            child: Some(child),
            log: log_path,
            metrics_port: port,
            _dir: dir,
        }
    }

    /// Everything it has logged so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Its `/metrics`, `None` if nothing answers.
    pub async fn metrics(&self) -> Option<String> {
        http_get(self.metrics_port, "/metrics").await
    }

    /// Its highest resident memory so far, in bytes; `None` once it has exited.
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_of(&self.child.as_ref()?.id().to_string())
    }

    /// The port of its `/metrics`, `/healthz` and `/readyz`.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Whether its metrics say it leads.
    pub async fn is_leader(&self) -> bool {
        self.metrics()
            .await
            .is_some_and(|m| m.contains("inbox_operator_leader 1"))
    }

    /// SIGKILL (and reap) it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait up to `within` for the process to exit on its own; its exit code (`None`: still
    /// running, or killed by a signal).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return st.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            eprintln!("--- operator log tail ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        self.kill9();
    }
}

/// A plain HTTP/1.0 GET on loopback (the metrics endpoint); `None` if nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}
