//! The one test environment ([`Env`]): a real kube-apiserver (from `support`), a namespace, a
//! simulator and, when asked for, a controller scoped to that namespace; with what the tests
//! share on it: create-and-wait-Ready, typed condition waits ([`Ready`]), simulator faults
//! ([`Fault`]), the operator binary scoped to the namespace, and the end-state invariants.

use std::sync::Arc;
use std::time::Duration;

use inbox_operator::agentsend::{AgentSendClient, ClientOptions};
use inbox_operator::api::inbox::{Inbox, InboxSpec, Reason};
use inbox_operator::controller;
use inbox_operator::controller::ProofKey;
use inbox_operator::controller::{DefaultKey, Settings};
use inbox_operator::metrics::Metrics;
use inbox_sim::{Malformed, Route, Simulator, SimulatorHandle};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::support::{Operator, TestNamespace, control_plane, wait_for};

pub const KEY: &str = "sk_test_default_key_0123456789";
pub const ACCOUNT: &str = "acct-main";
pub const T: Duration = Duration::from_secs(30);

/// One test's environment: a namespace of its own on the shared control plane, a simulator
/// with one account on a free port and, for [`Env::start`] and its variants, an in-process
/// controller scoped to that namespace ([`Env::bare`] has none: the test runs the operator
/// binary with [`Env::operator`], or nothing).
pub struct Env {
    pub client: Client,
    pub ns: TestNamespace,
    pub sim: Simulator,
    /// The simulator's server (its URL is what the operator is given).
    pub handle: SimulatorHandle,
    /// The API key of the simulator's account, given to the operator as its default key.
    pub key: &'static str,
    /// How long the waits of this environment wait.
    pub timeout: Duration,
    /// The proof key every in-process controller of the run uses: the one in the Secret
    /// `inbox-operator-proof-key` of namespace `default`, as the operator binary run without
    /// `--operator-namespace` reads it (tests that move the operator namespace keep it).
    pub proof: ProofKey,
    controller: Option<Controller>,
    pub metrics: Arc<Metrics>,
    _dump: Box<dyn Send>,
}

/// The in-process controller task and its stop signal.
struct Controller {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The Ready condition an Inbox is waited into: `True` (reason `Ready`) or `False` with a
/// reason, typed (the reasons are the operator's own [`Reason`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// `Ready=True`, reason `Ready`.
    True,
    /// `Ready=False` with this reason.
    False(Reason),
}

impl Ready {
    /// The condition's `status` and `reason` as written in the Inbox.
    pub fn status_reason(self) -> (&'static str, &'static str) {
        match self {
            Ready::True => ("True", Reason::Ready.as_str()),
            Ready::False(r) => ("False", r.as_str()),
        }
    }
}

/// A simulator fault, set up by [`Env::inject`] and undone when its guard drops.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Latency added to every API request.
    Latency(Duration),
    /// A fraction of API requests answers this status.
    ErrorRate(f64, u16),
    /// Successful answers on the route are malformed in this way.
    Malformed(Route, Malformed),
}

/// Undoes its [`Fault`] when dropped.
pub struct FaultGuard {
    sim: Simulator,
    fault: Fault,
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        match self.fault {
            Fault::Latency(_) => self.sim.set_latency(Duration::ZERO),
            Fault::ErrorRate(_, status) => self.sim.set_error_rate(0.0, status),
            Fault::Malformed(route, _) => self.sim.set_malformed(route, None),
        }
    }
}

impl Env {
    /// A namespace `PREFIX-xxxxxx` and a simulator whose `account` accepts `key`; no
    /// controller.
    pub async fn bare(prefix: &str, account: &str, key: &'static str) -> Env {
        inbox_operator::ensure_crypto_provider();
        // Controller logs go to the test's captured output (shown when a test fails).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_else(|_| "inbox_operator=debug".into()),
            ))
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        let dump = Box::new(crate::support::on_failure_dump_logs());
        let client = control_plane().client().await;
        let ns = TestNamespace::new(&client, prefix).await;
        let sim = Simulator::new();
        sim.add_account(account, key);
        let handle = sim.spawn().await.expect("simulator starts");
        let proof = inbox_operator::controller::load_or_create_proof_key(&client, "default")
            .await
            .expect("the proof key");
        Env {
            proof,
            client,
            ns,
            sim,
            handle,
            key,
            timeout: T,
            controller: None,
            metrics: Arc::new(Metrics::new()),
            _dump: dump,
        }
    }

    /// [`Env::bare`] (account [`ACCOUNT`], key [`KEY`], the domain `dom_example`) plus an
    /// in-process controller with the test settings.
    pub async fn start() -> Env {
        Env::start_with(|_| {}).await
    }

    /// Like [`Env::start`], tuning the controller's settings.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Env {
        Env::start_tuned(|_| {}, tweak).await
    }

    /// Like [`Env::start_with`], also tuning the AgentSend client.
    pub async fn start_tuned(
        tweak_client: impl FnOnce(&mut ClientOptions),
        tweak: impl FnOnce(&mut Settings),
    ) -> Env {
        let mut env = Env::bare("ctl", ACCOUNT, KEY).await;
        env.sim.add_domain(ACCOUNT, "dom_example", "example.com");
        env.spawn_controller(tweak_client, tweak);
        env
    }

    /// Start an in-process controller (again, after [`Env::halt`]: as a restarted operator)
    /// with the test settings, tuned.
    pub fn spawn_controller(
        &mut self,
        tweak_client: impl FnOnce(&mut ClientOptions),
        tweak: impl FnOnce(&mut Settings),
    ) {
        let mut opts = ClientOptions {
            timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        tweak_client(&mut opts);
        let api = AgentSendClient::new(&self.handle.url(), opts).expect("client");
        let mut settings = Settings {
            sync_interval: Duration::from_secs(2),
            concurrency: 4,
            namespaces: vec![self.ns.name().to_string()],
            default_key: DefaultKey::Fixed(
                inbox_operator::agentsend::ApiKey::new(KEY).expect("key"),
            ),
            proof_key: Some(self.proof.clone()),
            ..Settings::default()
        };
        tweak(&mut settings);
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(controller::run(
            self.client.clone(),
            api,
            settings,
            self.metrics.clone(),
            async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            },
            || {},
        ));
        self.controller = Some(Controller { stop, task });
    }

    /// The operator binary, scoped to this namespace (`--namespace`), with the test settings
    /// (`--sync-interval 2s`, JSON logs at debug) and `extra` flags, on this simulator.
    pub fn operator(&self, extra: &[&str]) -> Operator {
        let mut args = vec!["--namespace", self.ns.name()];
        args.extend_from_slice(&["--sync-interval", "2s", "--log-format", "json"]);
        args.extend_from_slice(extra);
        Operator::start(
            &control_plane().kubeconfig,
            &self.handle.url(),
            self.key,
            &args,
            "debug,hyper=info,h2=info,tower=info,rustls=info",
        )
    }

    /// Set up a simulator fault; it lasts until the guard drops.
    pub fn inject(&self, fault: Fault) -> FaultGuard {
        match fault {
            Fault::Latency(d) => self.sim.set_latency(d),
            Fault::ErrorRate(rate, status) => self.sim.set_error_rate(rate, status),
            Fault::Malformed(route, kind) => self.sim.set_malformed(route, Some(kind)),
        }
        FaultGuard {
            sim: self.sim.clone(),
            fault,
        }
    }

    pub fn inboxes(&self) -> Api<Inbox> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    pub async fn create(&self, name: &str, spec: InboxSpec) -> Inbox {
        self.inboxes()
            .create(&PostParams::default(), &Inbox::new(name, spec))
            .await
            .expect("create Inbox")
    }

    /// Create an Inbox and wait until it is Ready.
    pub async fn create_ready(&self, name: &str, spec: InboxSpec) -> Inbox {
        self.create(name, spec).await;
        self.wait_ready(name, Ready::True).await
    }

    /// Create an Inbox with these labels and a display name of its own (`Agent NAME`, as real
    /// agents have: recovery tells lost creates apart by it).
    pub async fn create_labelled(&self, name: &str, labels: &[(&str, &str)]) -> Inbox {
        let spec = InboxSpec {
            display_name: Some(format!("Agent {name}")),
            ..Default::default()
        };
        let mut i = Inbox::new(name, spec);
        i.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self.inboxes()
            .create(&PostParams::default(), &i)
            .await
            .expect("create Inbox")
    }

    /// Wait until the Inbox's Ready condition is `want`, for its current generation; on
    /// timeout, the panic shows what the Inbox looked like.
    pub async fn wait_ready(&self, name: &str, want: Ready) -> Inbox {
        let (status, reason) = want.status_reason();
        let api = self.inboxes();
        let start = std::time::Instant::now();
        loop {
            let current = api.get_opt(name).await.ok().flatten();
            if let Some(i) = &current
                && let Some(c) = ready(i)
                && c.status == status
                && c.reason == reason
                && c.observed_generation == i.metadata.generation
            {
                return i.clone();
            }
            if start.elapsed() > self.timeout {
                let shown = current.map(|i| {
                    serde_json::json!({"annotations": i.metadata.annotations, "status": i.status}).to_string()
                });
                panic!(
                    "timed out waiting for {name} Ready={status} reason={reason}; simulator has {} inboxes, {} requests; inbox: {shown:?}",
                    self.sim.inbox_count(),
                    self.sim.total_requests()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Delete an Inbox as a user would with the operator gone: remove the finalizers by
    /// hand, delete it, and wait until it is gone (what it owns is left to the garbage
    /// collector).
    pub async fn delete_without_finalizers(&self, name: &str) {
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        self.inboxes()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("remove the finalizers");
        self.inboxes()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete the Inbox");
        self.wait_gone(name).await;
    }

    pub async fn wait_gone(&self, name: &str) {
        let api = self.inboxes();
        wait_for(&format!("{name} deleted"), self.timeout, || {
            let api = api.clone();
            async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
        })
        .await
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets().get_opt(name).await.expect("get secret")
    }

    pub async fn events(&self, reason: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), self.ns.name());
        api.list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    pub async fn wait_event(&self, reason: &str) -> Event {
        wait_for(&format!("event {reason}"), T, || async {
            self.events(reason).await.into_iter().next()
        })
        .await
    }

    /// Whether the controller task is still running (it ends only when stopped or on a panic).
    pub fn controller_running(&self) -> bool {
        self.controller
            .as_ref()
            .is_some_and(|c| !c.task.is_finished())
    }

    /// Stop the controller (as a crashed or scaled-down operator), keeping the namespace.
    pub async fn halt(&self) {
        let Some(c) = &self.controller else { return };
        let _ = c.stop.send(true);
        wait_for("the controller to stop", self.timeout, || async {
            c.task.is_finished().then_some(())
        })
        .await
    }

    /// Stop the controller and wait (up to 20 s) until it has stopped.
    pub async fn stop(mut self) {
        if let Some(c) = self.controller.take() {
            let _ = c.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(20), c.task).await;
        }
    }
}

pub fn ready(i: &Inbox) -> Option<&inbox_operator::api::inbox::Condition> {
    i.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn cond<'a>(i: &'a Inbox, t: &str) -> Option<&'a inbox_operator::api::inbox::Condition> {
    i.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

pub fn data(s: &Secret, k: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(k))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

pub fn status_id(i: &Inbox) -> String {
    i.status
        .as_ref()
        .and_then(|s| s.inbox_id.clone())
        .unwrap_or_default()
}

impl Env {
    /// The invariants every fault scenario must end in: each Inbox Ready and bound to its own
    /// AgentSend inbox, no extra inboxes, every Secret holding its inbox's address.
    pub async fn assert_converged(&self, names: &[String]) {
        let mut ids = std::collections::HashSet::new();
        for name in names {
            let i = self.wait_ready(name, Ready::True).await;
            let id = status_id(&i);
            assert!(ids.insert(id.clone()), "{name}: inbox {id} bound twice");
            let remote = self
                .sim
                .inbox(&id)
                .unwrap_or_else(|| panic!("{name}: inbox {id} missing"));
            let s = wait_for(&format!("{name} secret"), T, || async {
                self.secret(name)
                    .await
                    .filter(|s| data(s, "address") == remote.address)
            })
            .await;
            assert_eq!(data(&s, "inboxId"), id);
        }
        assert_eq!(
            self.sim.inbox_count(),
            names.len(),
            "exactly one AgentSend inbox per Inbox"
        );
    }

    /// Delete every Inbox; afterwards no AgentSend inbox and no managed Secret may remain.
    pub async fn delete_all_and_check(&self, names: &[String]) {
        for name in names {
            let _ = self.inboxes().delete(name, &Default::default()).await;
        }
        for name in names {
            self.wait_gone(name).await;
        }
        assert_eq!(
            self.sim.inbox_count(),
            0,
            "AgentSend inboxes left after deletion"
        );
        let managed = self
            .secrets()
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=inbox-operator"))
            .await
            .expect("list secrets");
        assert!(
            managed.items.is_empty(),
            "managed Secrets left: {}",
            managed.items.len()
        );
    }

    /// Create `n` Inboxes named `{prefix}-{i}` at once.
    pub async fn create_many(&self, prefix: &str, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let api = self.inboxes();
        futures::future::join_all(names.iter().map(|n| {
            let api = api.clone();
            async move {
                // Distinct display names, as real agents have: lets recovery tell apart creates
                // whose responses were lost at the same moment.
                let spec = InboxSpec {
                    display_name: Some(format!("Agent {n}")),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &Inbox::new(n, spec))
                    .await
                    .expect("create Inbox")
            }
        }))
        .await;
        names
    }
}

/// The Secret `name` holding the API key `key` under `apiKey`.
pub fn key_secret(name: &str, key: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            "apiKey".to_string(),
            k8s_openapi::ByteString(key.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}
