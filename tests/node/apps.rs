//! An application reads its address as the README shows ("How an application reads its
//! address"): from an environment variable and from the mounted Secret. When the inbox vanishes
//! in AgentSend, the operator re-creates it with the same address and the mounted file shows
//! the new inbox ID; when the Inbox is deleted and created again, it gets a new address, which
//! the mounted file shows while the environment variable keeps the one the container started
//! with — "a volume mount follows changes; an environment variable is read once".

use std::time::Duration;

use inbox_operator::api::inbox::InboxSpec;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::node::{POD_READY, SHELL_IMAGE, node, pod_ready, shared};
use crate::release::{Release, inbox_id};
use crate::support::wait_for;

/// The kubelet refreshes a mounted Secret every `syncFrequency` (10 s on this node), after the
/// operator's counter sync (5 s here) noticed the change: a minute is a wide margin.
const MOUNT_FOLLOWS: Duration = Duration::from_secs(90);

/// `kubectl exec POD -- ARGS` in `ns`; its stdout, trimmed, or `None` if it failed.
fn exec(ns: &str, pod: &str, args: &[&str]) -> Option<String> {
    let out = node()
        .kubectl()
        .args(["exec", "-n", ns, pod, "--request-timeout=20s", "--"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn a_pod_reads_the_address_from_its_env_and_the_mounted_secret_which_follows_changes() {
    let _node = shared().await;
    let r = Release::install("apps", &["syncInterval=5s"]).await;
    r.wait_pods_ready(1).await;
    r.create("support-bot", InboxSpec::default()).await;
    let first = r.wait_ready("support-bot").await;
    let address = first.status.as_ref().unwrap().address.clone().unwrap();
    let id = inbox_id(&first);

    // The README's Pod, as a non-root user.
    let agent: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000},
            "containers": [{
                "name": "agent",
                "image": SHELL_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo my address is $INBOX_ADDRESS; cat /etc/inbox/address; exec sleep 3600"],
                "env": [{"name": "INBOX_ADDRESS",
                         "valueFrom": {"secretKeyRef": {"name": "support-bot", "key": "address"}}}],
                "volumeMounts": [{"name": "inbox", "mountPath": "/etc/inbox", "readOnly": true}]
            }],
            "volumes": [{"name": "inbox", "secret": {"secretName": "support-bot"}}],
            "terminationGracePeriodSeconds": 1
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(r.client.clone(), r.work.name());
    pods.create(&PostParams::default(), &agent).await.unwrap();
    wait_for("the application Pod Ready", POD_READY, || async {
        pod_ready(&pods.get("agent").await.ok()?).then_some(())
    })
    .await;
    let ns = r.work.name();
    assert_eq!(
        exec(ns, "agent", &["sh", "-c", "echo \"$INBOX_ADDRESS\""]).as_deref(),
        Some(address.as_str())
    );
    assert_eq!(
        exec(ns, "agent", &["cat", "/etc/inbox/address"]).as_deref(),
        Some(address.as_str())
    );
    assert_eq!(
        exec(ns, "agent", &["cat", "/etc/inbox/inboxId"]).as_deref(),
        Some(id.as_str())
    );
    let logs = node().kubectl_ok(&["logs", "-n", ns, "agent"]);
    assert!(logs.contains(&format!("my address is {address}")), "{logs}");

    // The inbox vanishes in AgentSend: re-created with the same address (README, Lifecycle,
    // Drift); the mounted file shows the new inbox's ID.
    assert!(r.sim.delete_out_of_band(&id));
    let recreated = wait_for(
        "a new inbox ID in the mounted Secret",
        MOUNT_FOLLOWS,
        || async {
            exec(ns, "agent", &["cat", "/etc/inbox/inboxId"])
                .filter(|now| !now.is_empty() && *now != id)
        },
    )
    .await;
    assert!(
        r.sim.inbox(&recreated).is_some(),
        "the mounted ID is the new inbox's"
    );
    assert_eq!(
        exec(ns, "agent", &["cat", "/etc/inbox/address"]).as_deref(),
        Some(address.as_str())
    );

    // The Inbox deleted and created again: a new address in the mounted file; the environment
    // variable is the one the container started with.
    r.delete_inboxes(&["support-bot"]).await;
    r.create("support-bot", InboxSpec::default()).await;
    let second = r.wait_ready("support-bot").await;
    let new_address = second.status.as_ref().unwrap().address.clone().unwrap();
    assert_ne!(new_address, address, "a new random address");
    wait_for(
        "the new address in the mounted Secret",
        MOUNT_FOLLOWS,
        || async {
            (exec(ns, "agent", &["cat", "/etc/inbox/address"])? == new_address).then_some(())
        },
    )
    .await;
    assert_eq!(
        exec(ns, "agent", &["sh", "-c", "echo \"$INBOX_ADDRESS\""]).as_deref(),
        Some(address.as_str())
    );

    r.delete_inboxes(&["support-bot"]).await;
    r.uninstall();
}
