//! Test harness: a real etcd + kube-apiserver (envtest style), started once per test binary on
//! free loopback ports, with the Inbox CRD installed; a namespace per test; log dumps on
//! failure; and a watchdog that kills the processes and removes the temp dir when the test
//! process exits, even after a panic or a SIGKILL.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The control plane of this test binary.
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// API server URL.
    pub server: String,
    token: String,
    dir: PathBuf,
    assets: PathBuf,
    api_port: u16,
    etcd_url: String,
    apiserver: Mutex<Option<Child>>,
    etcd: Mutex<Option<Child>>,
    /// Outlives this process on purpose: it cleans up after it.
    _watchdog: Child,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

/// The shared control plane, started on first use.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(ControlPlane::start)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

fn assets_dir() -> PathBuf {
    let dir = std::env::var_os("KUBEBUILDER_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/inbox-operator/envtest/k8s-1.20.2")
        });
    for bin in ["kube-apiserver", "etcd"] {
        assert!(
            dir.join(bin).exists(),
            "{bin} not found in {}: run `hack/envtest-assets.sh` (or `make test`), or set KUBEBUILDER_ASSETS",
            dir.display()
        );
    }
    dir
}

fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

impl ControlPlane {
    fn start() -> ControlPlane {
        let assets = assets_dir();
        let dir = std::env::temp_dir().join(format!(
            "inbox-operator-test-{}-{}",
            std::process::id(),
            random_suffix(6)
        ));
        std::fs::create_dir_all(dir.join("etcd")).expect("temp dir");
        let watchdog = spawn_watchdog(&dir);

        let ok = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new("openssl")
                .args(["rsa", "-in"])
                .arg(dir.join("sa.key"))
                .args(["-pubout", "-out"])
                .arg(dir.join("sa.pub"))
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(ok, "openssl is needed to make the service-account key pair");
        let token = random_suffix(32);
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )
        .expect("token file");

        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = spawn_logged(
            Command::new(assets.join("etcd"))
                .arg("--data-dir")
                .arg(dir.join("etcd"))
                .args([
                    "--listen-client-urls",
                    &etcd_url,
                    "--advertise-client-urls",
                    &etcd_url,
                ])
                .args([
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer_port}"),
                ])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer_port}"),
                ])
                .args([
                    "--initial-cluster",
                    &format!("default=http://127.0.0.1:{peer_port}"),
                ])
                .args(["--unsafe-no-fsync"]),
            &dir,
            "etcd",
        );
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &token, None);
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
            _watchdog: watchdog,
        };
        cp.start_apiserver();
        cp.install_crd();
        cp
    }

    fn apiserver_command(&self) -> Command {
        let d = &self.dir;
        let mut c = Command::new(self.assets.join("kube-apiserver"));
        c.args(["--etcd-servers", &self.etcd_url])
            .args([
                "--secure-port",
                &self.api_port.to_string(),
                "--bind-address",
                "127.0.0.1",
                "--insecure-port",
                "0",
            ])
            .arg("--cert-dir")
            .arg(d.join("certs"))
            .arg("--token-auth-file")
            .arg(d.join("tokens.csv"))
            .args(["--authorization-mode", "RBAC"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(d.join("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(d.join("sa.key"))
            .args([
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged",
            ]);
        c
    }

    /// Start (or restart) kube-apiserver and wait until it is ready.
    pub fn start_apiserver(&self) {
        let child = spawn_logged(&mut self.apiserver_command(), &self.dir, "apiserver");
        *self.apiserver.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .kubectl()
                .args(["get", "--raw", "/readyz"])
                .stderr(Stdio::null())
                .output();
            if out.map(|o| o.status.success()).unwrap_or(false) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver not ready after 120 s; log tail:\n{}",
                    self.apiserver_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop kube-apiserver (etcd keeps running), for outage tests.
    pub fn stop_apiserver(&self) {
        if let Some(mut c) = self
            .apiserver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn install_crd(&self) {
        let yaml = inbox_operator::crd::crd_yaml().expect("render CRD");
        let mut child = self
            .kubectl()
            .args(["create", "--validate=false", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("kubectl (install Debian's kubectl package)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write CRD");
        assert!(
            child.wait().expect("kubectl").success(),
            "CRD create failed"
        );
        let ok = self
            .kubectl()
            .args([
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "crd/inboxes.agentsend.io",
            ])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "CRD not established; log tail:\n{}",
            self.apiserver_log_tail(40)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .kubectl()
            .args(["get", "inboxes", "-A"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            assert!(Instant::now() < deadline, "inboxes resource not served");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// A new admin client (clients are bound to the runtime of the test that makes them).
    pub async fn client(&self) -> Client {
        inbox_operator::ensure_crypto_provider();
        client_from(&self.kubeconfig).await
    }

    /// A kubeconfig whose requests impersonate `user` (and `groups`), to run with exactly
    /// that identity's RBAC.
    pub fn kubeconfig_as(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-as-{}", random_suffix(6)));
        write_kubeconfig(&path, &self.server, &self.token, Some((user, groups)));
        path
    }

    /// The last lines of the kube-apiserver log.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The apiserver's Prometheus metrics (e.g. `apiserver_request_total`).
    pub fn metrics(&self) -> String {
        let out = self
            .kubectl()
            .args(["get", "--raw", "/metrics"])
            .output()
            .expect("kubectl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Build a client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

fn write_kubeconfig(path: &Path, server: &str, token: &str, impersonate: Option<(&str, &[&str])>) {
    let mut user = format!("    token: {token}\n");
    if let Some((u, groups)) = impersonate {
        user.push_str(&format!("    as: \"{u}\"\n"));
        if !groups.is_empty() {
            user.push_str("    as-groups:\n");
            for g in groups {
                user.push_str(&format!("    - \"{g}\"\n"));
            }
        }
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n{user}contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n"
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

/// Spawn with output to `DIR/NAME.log` and the PID in `DIR/NAME.pid` (read by the watchdog).
fn spawn_logged(cmd: &mut Command, dir: &Path, name: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file");
    let err = log.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string()).expect("pid file");
    child
}

/// A detached shell that waits for this test process to end, then kills the control plane
/// and removes its directory. Statics are never dropped, and a killed process runs no
/// destructors, so cleanup cannot live in this process.
fn spawn_watchdog(dir: &Path) -> Child {
    let script = r#"
        parent="$1"; dir="$2"
        while kill -0 "$parent" 2>/dev/null; do sleep 0.5; done
        for f in "$dir"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
        sleep 2
        for f in "$dir"/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
        rm -rf "$dir"
    "#;
    Command::new("setsid")
        .args(["sh", "-c", script, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cleanup watchdog (setsid, sh)")
}

/// A namespace of its own for one test; deleted (best effort) when dropped.
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Create a uniquely named namespace.
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{}", random_suffix(6));
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
            .expect("create namespace");
        TestNamespace { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // There is no namespace controller here, so the namespace stays Terminating; the whole
        // etcd is thrown away with the control plane.
        let _ = control_plane()
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Prints the apiserver log tail if the test panics.
pub struct FailureDump;

impl Drop for FailureDump {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(cp) = CONTROL_PLANE.get()
        {
            eprintln!(
                "--- kube-apiserver log tail ---\n{}",
                cp.apiserver_log_tail(30)
            );
        }
    }
}

/// Hold the result for the duration of a test: dumps the apiserver log tail on failure.
pub fn on_failure_dump_logs() -> FailureDump {
    FailureDump
}

/// Poll `f` every 100 ms until it yields `Some`, or panic after `timeout` naming `what`.
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
