//! The in-process controller environment shared by the controller and fault test binaries:
//! a real kube-apiserver (from `support`), a namespace, a simulator and a controller scoped to
//! that namespace.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use inbox_operator::agentsend::{AgentSendClient, ClientOptions};
use inbox_operator::controller::{self, DefaultKey, Settings};
use inbox_operator::crd::{Inbox, InboxSpec};
use inbox_operator::metrics::Metrics;
use inbox_sim::{Simulator, SimulatorHandle};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use crate::support::{TestNamespace, control_plane, wait_for};

pub const KEY: &str = "sk_test_default_key_0123456789";
pub const ACCOUNT: &str = "acct-main";
pub const T: Duration = Duration::from_secs(30);

pub struct Env {
    pub client: Client,
    pub ns: TestNamespace,
    pub sim: Simulator,
    _sim_handle: SimulatorHandle,
    stop: tokio::sync::watch::Sender<bool>,
    ctrl: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    _dump: Box<dyn Send>,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Env {
        Env::start_tuned(|_| {}, tweak).await
    }

    /// Like [`Env::start_with`], also tuning the AgentSend client.
    pub async fn start_tuned(
        tweak_client: impl FnOnce(&mut ClientOptions),
        tweak: impl FnOnce(&mut Settings),
    ) -> Env {
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
        let cp = control_plane();
        let client = cp.client().await;
        let ns = TestNamespace::new(&client, "ctl").await;
        let sim = Simulator::new();
        sim.add_account(ACCOUNT, KEY);
        sim.add_domain(ACCOUNT, "dom_example", "example.com");
        let handle = sim.spawn().await.expect("simulator starts");
        let mut opts = ClientOptions {
            timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        tweak_client(&mut opts);
        let api = AgentSendClient::new(&handle.url(), opts).expect("client");
        let mut settings = Settings {
            sync_interval: Duration::from_secs(2),
            concurrency: 4,
            namespaces: vec![ns.name().to_string()],
            default_key: DefaultKey::Fixed(
                inbox_operator::agentsend::ApiKey::new(KEY).expect("key"),
            ),
            ..Settings::default()
        };
        tweak(&mut settings);
        let metrics = Arc::new(Metrics::new());
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let ctrl = tokio::spawn(controller::run(
            client.clone(),
            api,
            settings,
            metrics.clone(),
            async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            },
            || {},
        ));
        Env {
            client,
            ns,
            sim,
            _sim_handle: handle,
            stop,
            ctrl,
            metrics,
            _dump: dump,
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

    /// Wait until the Inbox's Ready condition has this status and reason; on timeout, the
    /// panic shows what the Inbox looked like.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> Inbox {
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
            if start.elapsed() > T {
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

    pub async fn wait_gone(&self, name: &str) {
        let api = self.inboxes();
        wait_for(&format!("{name} deleted"), T, || {
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
        !self.ctrl.is_finished()
    }

    /// Stop the controller (as a crashed or scaled-down operator), keeping the namespace.
    pub async fn halt(&self) {
        let _ = self.stop.send(true);
        wait_for("the controller to stop", T, || async {
            self.ctrl.is_finished().then_some(())
        })
        .await
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.ctrl).await;
    }
}

pub fn ready(i: &Inbox) -> Option<&inbox_operator::crd::Condition> {
    i.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn cond<'a>(i: &'a Inbox, t: &str) -> Option<&'a inbox_operator::crd::Condition> {
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
            let i = self.wait_ready(name, "True", "Ready").await;
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
