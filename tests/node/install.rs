//! Installing as the docs say — `helm install` of the chart and `kubectl apply -k` of
//! `deploy/base` with the image set by an overlay — gives an operator Pod that the kubelet
//! reports Ready through its readiness probe, that keeps passing its liveness probe, and whose
//! process runs as the kernel was told by the shipped securityContext and limits; it binds an
//! Inbox. `helm upgrade` with a changed value rolls the Pod without re-creating anything, and
//! `helm uninstall` removes the release but leaves the CRD and the orphaned inboxes, as
//! docs/install.md ("Uninstalling") says.

use std::time::{Duration, Instant};

use inbox_operator::api::inbox::{DeletionPolicy, InboxSpec};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::node::{
    CRDS, ContainerProcess, NODE_IP, NodeDump, NodeNamespace, OPERATOR_REPOSITORY, OPERATOR_TAG,
    POD_READY, exclusive, node, pod_ready, pods, repo, shared,
};
use crate::release::{INBOX_READY, KEY, Release, inbox_id, is_ready};
use crate::support::wait_for;

/// What deploy/common/deployment.yaml and the chart's values ship.
const MEMORY_LIMIT: u64 = 256 * 1024 * 1024;
const CPU_LIMIT_MILLIS: u64 = 500;
const NONROOT: &str = "65532";

/// The operator's container is Ready and not restarted; its process runs as the shipped
/// securityContext and limits say, as the host's kernel sees it.
fn assert_runs_as_shipped(pod: &Pod) {
    assert!(pod_ready(pod), "the Pod is Ready");
    let status = &pod
        .status
        .as_ref()
        .expect("status")
        .container_statuses
        .as_ref()
        .expect("statuses")[0];
    assert_eq!(status.restart_count, 0, "never restarted: {status:?}");
    let uid = pod.metadata.uid.as_deref().expect("uid");
    let p = ContainerProcess::find(uid, "inbox-operator")
        .unwrap_or_else(|| panic!("no inbox-operator process of Pod {uid} on this host"));
    // runAsUser/runAsGroup 65532 (the image's user too), no privilege escalation, every
    // capability dropped, seccomp RuntimeDefault, read-only root filesystem.
    assert_eq!(p.status_field("Uid"), [NONROOT; 4].join(" "), "uid");
    assert_eq!(p.status_field("Gid"), [NONROOT; 4].join(" "), "gid");
    assert_eq!(
        p.status_field("NoNewPrivs"),
        "1",
        "allowPrivilegeEscalation: false"
    );
    assert_eq!(
        p.status_field("CapEff"),
        "0000000000000000",
        "capabilities dropped"
    );
    assert_eq!(
        p.status_field("CapBnd"),
        "0000000000000000",
        "capabilities dropped"
    );
    assert_eq!(
        p.status_field("Seccomp"),
        "2",
        "seccomp RuntimeDefault (a filter)"
    );
    let root = p.root_mount_options().expect("the container's root mount");
    assert!(
        root.split(',').any(|o| o == "ro"),
        "readOnlyRootFilesystem: / is {root}"
    );
    // limits: memory 256Mi, cpu 500m (a CFS quota of half a period).
    let memory: u64 = p
        .cgroup_file("memory", "memory.limit_in_bytes")
        .expect("memory limit")
        .parse()
        .unwrap();
    assert_eq!(memory, MEMORY_LIMIT, "memory limit");
    let quota: u64 = p
        .cgroup_file("cpu", "cpu.cfs_quota_us")
        .unwrap()
        .parse()
        .unwrap();
    let period: u64 = p
        .cgroup_file("cpu", "cpu.cfs_period_us")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(quota * 1000 / period, CPU_LIMIT_MILLIS, "cpu limit");
}

/// `/healthz` and `/readyz` on the probe port answer 200, as the kubelet sees them.
async fn probes_answer(pod: &Pod) {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("Pod IP");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            http_status(&ip, 8081, path).await,
            Some(200),
            "GET http://{ip}:8081{path}"
        );
    }
}

/// The status code of a plain HTTP/1.0 GET; `None` if nothing answers within 5 s.
pub async fn http_status(ip: &str, port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
}

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn helm_install_runs_a_ready_operator_under_the_shipped_security_context_and_limits() {
    let _node = shared().await;
    let r = Release::install("chart", &[]).await;
    let started = Instant::now();
    let pod = r.wait_pods_ready(1).await.remove(0);
    println!(
        "operator Pod Ready {:.1}s after helm install",
        started.elapsed().as_secs_f64()
    );
    assert_runs_as_shipped(&pod);
    probes_answer(&pod).await;
    r.create("first", InboxSpec::default()).await;
    let inbox = r.wait_ready("first").await;
    assert!(
        r.sim.inbox(&inbox_id(&inbox)).is_some(),
        "the inbox exists in AgentSend"
    );
    r.delete_inboxes(&["first"]).await;
    assert_eq!(
        r.sim.inboxes("acct").len(),
        0,
        "deleting the Inbox deleted its inbox"
    );
    r.uninstall();
}

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn kubectl_apply_k_deploy_base_runs_a_ready_operator() {
    // deploy/base is cluster-wide (every namespace, fixed names): no other test meanwhile.
    let _node = exclusive().await;
    let node = node();
    let client = node.client().await;
    let sim = inbox_sim::Simulator::new();
    sim.add_account("acct", KEY);
    let handle = sim.spawn_on((NODE_IP, 0).into()).await.unwrap();
    // docs/install.md: the namespace and the key first, then the base with your image (an
    // overlay, as docs/local-cluster.md's `kustomize edit set image`). The simulator stands in
    // for AgentSend: the overlay also points the operator at it.
    node.kubectl_ok(&["create", "namespace", "inbox-operator"]);
    let _dump = NodeDump {
        namespaces: vec!["inbox-operator".into()],
        selector: "app.kubernetes.io/name=inbox-operator".into(),
    };
    Api::<Secret>::namespaced(client.clone(), "inbox-operator")
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("inbox-operator-credentials".into()),
                    ..Default::default()
                },
                string_data: Some([("apiKey".to_string(), KEY.to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let overlay = tempfile::Builder::new()
        .prefix("overlay-")
        .tempdir_in(repo().join("target"))
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let base = pathdiff(overlay.path(), &repo().join("deploy/base"));
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\n\
             kind: Kustomization\n\
             resources:\n- {base}\n\
             images:\n\
             - name: ghcr.io/inbox-operator/inbox-operator\n  newName: {OPERATOR_REPOSITORY}\n  newTag: {OPERATOR_TAG}\n\
             patches:\n\
             - target: {{kind: Deployment, name: inbox-operator}}\n  patch: |-\n    \
               - op: add\n      path: /spec/template/spec/containers/0/args/-\n      value: --agentsend-url={}\n",
            handle.url()
        ),
    )
    .unwrap();
    let dir = overlay.path().display().to_string();
    let started = Instant::now();
    node.kubectl_ok(&["apply", "--server-side", "-k", &dir]);
    let pod = wait_for("the deploy/base operator Pod Ready", POD_READY, || async {
        let pods = pods(
            &client,
            "inbox-operator",
            "app.kubernetes.io/name=inbox-operator",
        )
        .await;
        (pods.len() == 1 && pod_ready(&pods[0])).then(|| pods[0].clone())
    })
    .await;
    println!(
        "operator Pod Ready {:.1}s after kubectl apply -k",
        started.elapsed().as_secs_f64()
    );
    assert_runs_as_shipped(&pod);
    probes_answer(&pod).await;

    // It watches every namespace: an Inbox anywhere becomes Ready.
    let work = NodeNamespace::new(&client, "base-apps", &[]).await;
    let inboxes: Api<inbox_operator::api::inbox::Inbox> =
        Api::namespaced(client.clone(), work.name());
    inboxes
        .create(
            &PostParams::default(),
            &inbox_operator::api::inbox::Inbox::new("bot", InboxSpec::default()),
        )
        .await
        .unwrap();
    let inbox = wait_for("Inbox bot Ready", INBOX_READY, || async {
        let i = inboxes.get("bot").await.ok()?;
        is_ready(&i).then_some(i)
    })
    .await;
    assert!(sim.inbox(&inbox_id(&inbox)).is_some());

    // docs/install.md, Uninstalling: the Inboxes first, then everything but the CRDs (the
    // other tests of this run use them).
    inboxes.delete("bot", &Default::default()).await.unwrap();
    wait_for("Inbox bot gone", INBOX_READY, || async {
        matches!(inboxes.get_opt("bot").await, Ok(None)).then_some(())
    })
    .await;
    let rendered = node.kubectl_ok(&["kustomize", &dir]);
    let without_crds: Vec<&str> = rendered
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: CustomResourceDefinition"))
        .collect();
    node.kubectl_stdin(
        &["delete", "--wait=true", "--timeout=120s", "-f", "-"],
        &without_crds.join("\n---\n"),
    );
}

/// A relative path from `from` to `to` (kustomize wants relative resource paths).
fn pathdiff(from: &std::path::Path, to: &std::path::Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn helm_upgrade_rolls_the_pod_and_uninstall_leaves_crds_and_orphans() {
    // The chart as a cluster's first release, with its defaults: it installs the CRDs, which
    // are cluster-wide, so the node is this test's alone while the CRDs change hands.
    let _node = exclusive().await;
    let node = node();
    node.kubectl_ok(&[&["delete", "--wait=true", "--timeout=60s"], &CRDS[..]].concat());
    let r = Release::install_owning_crds("upgrade", &[]).await;
    let managed_by = || {
        let jsonpath = "jsonpath={.items[*].metadata.labels.app\\.kubernetes\\.io/managed-by}";
        node.kubectl_ok(&[&["get", "-o", jsonpath], &CRDS[..]].concat())
    };
    assert_eq!(
        managed_by(),
        "Helm Helm Helm",
        "the release installed the CRDs"
    );
    let before = r.wait_pods_ready(1).await.remove(0);
    let kept = r.create("kept", InboxSpec::default()).await;
    let kept = r.wait_ready(kept.metadata.name.as_deref().unwrap()).await;
    let kept_id = inbox_id(&kept);

    // A changed value: a new Pod with the new flag replaces the old one, and takes the Lease
    // as soon as the old one lets it go on SIGTERM.
    r.upgrade(&["syncInterval=30s"]);
    let old = before.metadata.name.clone().unwrap();
    let after = wait_for(
        "the upgraded Pod Ready, the old one gone",
        POD_READY,
        || async {
            let pods = r.pods().await;
            (pods.len() == 1 && pods[0].metadata.name.as_ref() != Some(&old) && pod_ready(&pods[0]))
                .then(|| pods[0].clone())
        },
    )
    .await;
    let args = after.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(
        args.contains(&"--sync-interval=30s".to_string()),
        "{args:?}"
    );
    let new = after.metadata.name.clone().unwrap();
    wait_for(
        "the new Pod holds the Lease",
        Duration::from_secs(60),
        || async { (r.leader().await.as_ref() == Some(&new)).then_some(()) },
    )
    .await;
    let history = node.helm_ok(&["history", &r.name, "--namespace", r.home.name()]);
    assert_eq!(
        history.lines().count(),
        3,
        "header + two revisions: {history}"
    );
    // Nothing re-created: the Inbox keeps its inbox, and the new Pod binds new ones.
    r.create("later", InboxSpec::default()).await;
    r.wait_ready("later").await;
    let kept = r.wait_ready("kept").await;
    assert_eq!(inbox_id(&kept), kept_id, "the same inbox after the upgrade");
    assert_eq!(r.sim.inboxes("acct").len(), 2);

    // Uninstalling as documented: Orphan what is to be kept, delete the Inboxes, uninstall.
    r.inboxes()
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": DeletionPolicy::Orphan}})),
        )
        .await
        .unwrap();
    wait_for("the Orphan policy in status", INBOX_READY, || async {
        let i = r.inboxes().get("kept").await.ok()?;
        (i.status?.deletion_policy == Some(DeletionPolicy::Orphan)).then_some(())
    })
    .await;
    r.delete_inboxes(&["kept", "later"]).await;
    let left: Vec<String> = r.sim.inboxes("acct").into_iter().map(|i| i.id).collect();
    assert_eq!(
        left,
        vec![kept_id.clone()],
        "the orphan's inbox stays in AgentSend, the other is deleted"
    );
    r.uninstall();
    let gone = |kind: &str, name: &str, ns: Option<&str>| {
        let mut cmd = node.kubectl();
        cmd.args(["get", kind, name, "-o", "name", "--ignore-not-found"]);
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        cmd.output()
            .map(|o| o.status.success() && o.stdout.is_empty())
            .unwrap_or(false)
    };
    wait_for("the release's objects and Pod gone", POD_READY, || async {
        let all_gone = gone("deployment", &r.name, Some(r.home.name()))
            && gone("serviceaccount", &r.name, Some(r.home.name()))
            && gone(
                "service",
                &format!("{}-metrics", r.name),
                Some(r.home.name()),
            )
            && gone("clusterrole", &r.name, None)
            && gone("clusterrolebinding", &r.name, None)
            && r.pods().await.is_empty();
        all_gone.then_some(())
    })
    .await;
    // crds.keep: the CRDs stay, and with them the Inboxes of the other tests to come.
    assert_eq!(
        managed_by(),
        "Helm Helm Helm",
        "helm uninstall leaves the CRDs"
    );
}
