//! A tenant's template bombs against the operator in its Pod, under the shipped 256 Mi memory
//! limit: each bomb is refused (`Rejected`), the Pod is never OOM-killed nor restarted, its
//! cgroup never reaches the limit, and the other tenants' Inboxes keep becoming Ready.

use std::collections::BTreeMap;

use inbox_operator::api::inbox::{InboxSpec, SecretSpec};

use crate::node::{ContainerProcess, shared};
use crate::release::{INBOX_READY, Release};
use crate::support::wait_for;

/// The template bombs of tests/it/hostile.rs (the review of issue 29), each in its own Inbox.
const BOMBS: [&str; 4] = [
    "{{ address|indent(99999999999) }}",
    "{{ (address * 5000000) ~ (address * 5000000) }}",
    "{% for i in range(99999) %}{{ address }}{% endfor %}",
    "{{ address | replace('', '0123456789abcdef0123456789abcdef') | replace('', '0123456789abcdef0123456789abcdef') | replace('', '0123456789abcdef0123456789abcdef') }}",
];
const LIMIT: u64 = 256 * 1024 * 1024;

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn template_bombs_do_not_oom_the_pod_and_other_inboxes_become_ready() {
    let _node = shared().await;
    let r = Release::install("hostile", &[]).await;
    let pod = r.wait_pods_ready(1).await.remove(0);
    let uid = pod.metadata.uid.clone().unwrap();
    let process = ContainerProcess::find(&uid, "inbox-operator").expect("the operator's process");
    let limit: u64 = process
        .cgroup_file("memory", "memory.limit_in_bytes")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(limit, LIMIT, "the shipped memory limit");

    for (i, template) in BOMBS.iter().enumerate() {
        let spec = InboxSpec {
            secret: Some(Box::new(SecretSpec {
                template: Some(BTreeMap::from([("BOOM".to_string(), template.to_string())])),
                ..Default::default()
            })),
            ..Default::default()
        };
        r.create(&format!("bomb-{i}"), spec).await;
    }
    let ordinary: Vec<String> = (0..8).map(|i| format!("ordinary-{i}")).collect();
    for name in &ordinary {
        r.create(name, InboxSpec::default()).await;
    }
    for name in &ordinary {
        r.wait_ready(name).await;
    }
    let api = r.inboxes();
    for i in 0..BOMBS.len() {
        let name = format!("bomb-{i}");
        wait_for(&format!("{name} Rejected"), INBOX_READY, || async {
            let inbox = api.get(&name).await.ok()?;
            inbox
                .status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "Rejected")
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        r.sim.inboxes("acct").len(),
        ordinary.len(),
        "no inbox for a bomb"
    );

    // The same process, never restarted, never at its limit.
    let pods = r.pods().await;
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0].metadata.uid.as_deref(),
        Some(uid.as_str()),
        "the same Pod"
    );
    let status = &pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        status.restart_count, 0,
        "not restarted: {:?}",
        status.last_state
    );
    let still = ContainerProcess::find(&uid, "inbox-operator").expect("still running");
    assert_eq!(still.pid, process.pid, "the same process");
    let peak: u64 = still
        .cgroup_file("memory", "memory.max_usage_in_bytes")
        .unwrap()
        .parse()
        .unwrap();
    let failcnt = still.cgroup_file("memory", "memory.failcnt").unwrap();
    let oom = still.cgroup_file("memory", "memory.oom_control").unwrap();
    println!(
        "operator Pod's memory peak during the bombs: {:.1} MiB of {} MiB",
        peak as f64 / 1048576.0,
        LIMIT / 1048576
    );
    assert!(peak < LIMIT, "peak {peak} bytes");
    assert_eq!(failcnt, "0", "the cgroup never hit its limit");
    assert!(
        oom.lines().any(|l| l == "oom_kill 0") || !oom.contains("oom_kill"),
        "{oom}"
    );

    let mut names: Vec<String> = (0..BOMBS.len()).map(|i| format!("bomb-{i}")).collect();
    names.extend(ordinary);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    r.delete_inboxes(&refs).await;
    r.uninstall();
}
