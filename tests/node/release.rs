//! One test's install of the operator with the Helm chart, as `docs/local-cluster.md` does it
//! (`image.repository=inbox-operator`, `image.tag=dev`): a release namespace of its own under
//! the `restricted` Pod Security Standard (as `deploy/base`'s namespace), with the API key
//! Secret the chart expects; a namespace for the test's Inboxes and Pods; a simulator on the
//! node's address; and the release's name as `fullnameOverride` and as the value of the label
//! its `selector` matches, so releases of tests running at once never touch each other's
//! Inboxes and their cluster-wide objects never clash. Like a cluster's second release
//! (docs/install.md, "Sharding"), they leave the CRDs (installed with the node) and the
//! aggregated roles to others — except [`Release::install_owning_crds`], the chart with its
//! defaults.

use std::time::Duration;

use inbox_operator::api::inbox::{Inbox, InboxSpec};
use inbox_sim::{Simulator, SimulatorHandle};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::node::{
    NODE_IP, NodeDump, NodeNamespace, OPERATOR_REPOSITORY, OPERATOR_TAG, POD_READY, node,
    pod_ready, pods, repo, unique,
};
use crate::support::wait_for;

/// The simulator account's API key, the release's default key.
pub const KEY: &str = "sk_node_test_key_0123456789";
/// The label the release's `selector` matches; its value is the release's name.
pub const LABEL: &str = "inbox-operator-test/release";
/// How long an Inbox may take to become Ready, or to go, on a busy two-core machine.
pub const INBOX_READY: Duration = Duration::from_secs(90);

pub struct Release {
    pub client: Client,
    /// The release's name, also its `fullnameOverride`: the Deployment, ServiceAccount,
    /// ClusterRoles, Service (`NAME-metrics`) and Lease are named after it.
    pub name: String,
    /// The release namespace.
    pub home: NodeNamespace,
    /// The namespace of the test's Inboxes and application Pods.
    pub work: NodeNamespace,
    pub sim: Simulator,
    /// The simulator's server, listening on the node's address while the release lives.
    _server: SimulatorHandle,
    /// The `--set` arguments of the install, repeated by [`Release::upgrade`].
    values: Vec<String>,
    _dump: NodeDump,
}

impl Release {
    /// `helm install` with `extra` values (`key=value`), next to the other tests' releases
    /// (`crds.enabled=false`, `aggregatedClusterRoles=false`); does not wait for the Pods.
    pub async fn install(prefix: &str, extra: &[&str]) -> Release {
        let mut values = vec!["crds.enabled=false", "aggregatedClusterRoles=false"];
        values.extend(extra);
        Release::install_with(prefix, &values).await
    }

    /// `helm install` with the chart's defaults but for the image, the AgentSend URL and the
    /// selector: it installs the CRDs and owns them. Only with the node to oneself, after
    /// deleting the CRDs the node came with.
    pub async fn install_owning_crds(prefix: &str, extra: &[&str]) -> Release {
        Release::install_with(prefix, extra).await
    }

    async fn install_with(prefix: &str, extra: &[&str]) -> Release {
        let node = node();
        let client = node.client().await;
        let name = unique(prefix);
        let home = NodeNamespace::new(
            &client,
            &name,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
        let work = NodeNamespace::new(&client, &format!("{name}-apps"), &[]).await;
        let sim = Simulator::new();
        sim.add_account("acct", KEY);
        let handle = sim
            .spawn_on((NODE_IP, 0).into())
            .await
            .expect("serve the simulator on the node's address");
        let key = Secret {
            metadata: ObjectMeta {
                name: Some("inbox-operator-credentials".into()),
                ..Default::default()
            },
            string_data: Some([("apiKey".to_string(), KEY.to_string())].into()),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), home.name())
            .create(&PostParams::default(), &key)
            .await
            .expect("create the API key Secret");
        let mut values = vec![
            format!("fullnameOverride={name}"),
            format!("image.repository={OPERATOR_REPOSITORY}"),
            format!("image.tag={OPERATOR_TAG}"),
            "image.pullPolicy=IfNotPresent".to_string(),
            format!("agentsendUrl={}", handle.url()),
            format!("selector={LABEL}={name}"),
        ];
        values.extend(extra.iter().map(|v| v.to_string()));
        let dump = NodeDump {
            namespaces: vec![home.name().to_string(), work.name().to_string()],
            selector: format!("app.kubernetes.io/instance={name}"),
        };
        let release = Release {
            client,
            name,
            home,
            work,
            sim,
            _server: handle,
            values,
            _dump: dump,
        };
        release.helm(&["install"], &[]);
        release
    }

    /// `helm SUBCOMMAND NAME CHART -n HOME --set ...` with the install's values and `extra`.
    fn helm(&self, subcommand: &[&str], extra: &[&str]) -> String {
        let chart = repo().join("charts/inbox-operator");
        let mut args: Vec<String> = subcommand.iter().map(|s| s.to_string()).collect();
        args.push(self.name.clone());
        args.push(chart.display().to_string());
        args.extend(["--namespace".to_string(), self.home.name().to_string()]);
        for v in self
            .values
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            args.extend(["--set".to_string(), v.to_string()]);
        }
        node().helm_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `helm upgrade` with the install's values and `changed` ones.
    pub fn upgrade(&self, changed: &[&str]) -> String {
        self.helm(&["upgrade"], changed)
    }

    /// `helm uninstall`.
    pub fn uninstall(&self) -> String {
        node().helm_ok(&["uninstall", &self.name, "--namespace", self.home.name()])
    }

    /// The label selector of the release's Pods.
    pub fn pod_selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.name)
    }

    /// The release's operator Pods (not being deleted).
    pub async fn pods(&self) -> Vec<Pod> {
        pods(&self.client, self.home.name(), &self.pod_selector()).await
    }

    /// Wait until exactly `n` operator Pods exist, all Ready (the readiness probe passed).
    pub async fn wait_pods_ready(&self, n: usize) -> Vec<Pod> {
        wait_for(
            &format!("{n} Ready operator Pod(s) of {}", self.name),
            POD_READY,
            || async {
                let pods = self.pods().await;
                (pods.len() == n && pods.iter().all(pod_ready)).then_some(pods)
            },
        )
        .await
    }

    /// The Lease's holder (a Pod's name), if any.
    pub async fn leader(&self) -> Option<String> {
        Api::<Lease>::namespaced(self.client.clone(), self.home.name())
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()?
            .spec?
            .holder_identity
    }

    /// The Inboxes of the test's namespace.
    pub fn inboxes(&self) -> Api<Inbox> {
        Api::namespaced(self.client.clone(), self.work.name())
    }

    /// An Inbox this release reconciles (labelled for its `selector`).
    pub fn inbox(&self, name: &str, spec: InboxSpec) -> Inbox {
        let mut inbox = Inbox::new(name, spec);
        inbox.metadata.labels = Some([(LABEL.to_string(), self.name.clone())].into());
        inbox
    }

    /// Create an Inbox this release reconciles.
    pub async fn create(&self, name: &str, spec: InboxSpec) -> Inbox {
        self.inboxes()
            .create(&PostParams::default(), &self.inbox(name, spec))
            .await
            .unwrap_or_else(|e| panic!("create Inbox {name}: {e}"))
    }

    /// Wait until the Inbox is Ready; it, then.
    pub async fn wait_ready(&self, name: &str) -> Inbox {
        let api = self.inboxes();
        wait_for(&format!("Inbox {name} Ready"), INBOX_READY, || async {
            let inbox = api.get(name).await.ok()?;
            is_ready(&inbox).then_some(inbox)
        })
        .await
    }

    /// Delete the Inboxes and wait until they are gone (the operator removes its finalizer).
    pub async fn delete_inboxes(&self, names: &[&str]) {
        let api = self.inboxes();
        for name in names {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
        for name in names {
            wait_for(&format!("Inbox {name} gone"), INBOX_READY, || async {
                matches!(api.get_opt(name).await, Ok(None)).then_some(())
            })
            .await;
        }
    }
}

/// Whether the Inbox is Ready.
pub fn is_ready(inbox: &Inbox) -> bool {
    inbox.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The Inbox's bound inbox ID.
pub fn inbox_id(inbox: &Inbox) -> String {
    inbox
        .status
        .as_ref()
        .and_then(|s| s.inbox_id.clone())
        .expect("a Ready Inbox has an inbox ID")
}
