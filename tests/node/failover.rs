//! Two replicas with leader election (the chart's `replicas: 2`): deleting the leader's Pod in
//! the middle of a bulk create hands the Lease to another Pod within the lease duration, and
//! every Inbox ends Ready with exactly one inbox each — none created twice, none lost. The
//! Deployment starts a replacement at once, and it may win the released Lease before the
//! standby's next read (every eighth of the duration): either way the next leader is another
//! Pod; the test says which.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use inbox_operator::api::inbox::InboxSpec;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};

use crate::node::shared;
use crate::release::{INBOX_READY, Release, inbox_id, is_ready};
use crate::support::wait_for;

/// The shipped `--lease-duration` (its default; neither the chart nor deploy/ sets it).
const LEASE_DURATION: Duration = Duration::from_secs(15);
const INBOXES: usize = 40;

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn deleting_the_leader_pod_mid_bulk_create_hands_over_within_the_lease_without_duplicates() {
    let _node = shared().await;
    let r = Release::install("failover", &["replicas=2"]).await;
    let pods = r.wait_pods_ready(2).await;
    let names: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let leader = wait_for(
        "a leader among the two Pods",
        Duration::from_secs(60),
        || async { r.leader().await.filter(|l| names.contains(l)) },
    )
    .await;
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();

    // A slow AgentSend, so that the bulk create is still going when the leader goes.
    r.sim.set_latency(Duration::from_millis(150));
    let api = r.inboxes();
    let all: Vec<String> = (0..INBOXES).map(|i| format!("bulk-{i:02}")).collect();
    for name in &all {
        api.create(&PostParams::default(), &r.inbox(name, InboxSpec::default()))
            .await
            .unwrap();
    }
    let ready_count = || async {
        let list = api
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.iter().filter(|i| is_ready(i)).count()
    };
    wait_for("the bulk create under way", INBOX_READY, || async {
        (ready_count().await >= 3).then_some(())
    })
    .await;
    let ready_then = ready_count().await;
    assert!(
        ready_then < INBOXES,
        "the bulk create is still going ({ready_then} Ready)"
    );

    let deleted = Instant::now();
    Api::<Pod>::namespaced(r.client.clone(), r.home.name())
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    // The old leader releases the Lease on SIGTERM after its in-flight requests; the standby
    // reads the Lease every eighth of its duration. Within the duration itself, on a busy host.
    let next = wait_for(
        "another Pod holding the Lease",
        LEASE_DURATION * 2,
        || async { r.leader().await.filter(|holder| *holder != leader) },
    )
    .await;
    let took = deleted.elapsed();
    println!(
        "leader Pod deleted with {ready_then}/{INBOXES} Inboxes Ready; the {} led after {:.1}s",
        if next == standby {
            "standby"
        } else {
            "replacement Pod"
        },
        took.as_secs_f64()
    );
    assert!(
        took < LEASE_DURATION,
        "takeover after {took:?}, more than the lease duration"
    );

    r.sim.set_latency(Duration::ZERO);
    let mut ids = BTreeSet::new();
    for name in &all {
        ids.insert(inbox_id(&r.wait_ready(name).await));
    }
    let remote: BTreeSet<String> = r.sim.inboxes("acct").into_iter().map(|i| i.id).collect();
    assert_eq!(
        ids.len(),
        INBOXES,
        "every Inbox bound to an inbox of its own"
    );
    assert_eq!(
        remote, ids,
        "exactly the bound inboxes exist in AgentSend: no duplicate, none lost"
    );

    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    r.delete_inboxes(&refs).await;
    r.uninstall();
}
