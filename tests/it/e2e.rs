//! End-to-end tests of the `inbox-operator` binary against a real kube-apiserver and the
//! AgentSend simulator: logs, signals, crashes, leader election, sharding, startup errors.

use std::time::Duration;

use inbox_sim::{Route, Simulator};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};

use crate::ctl::{Env, Fault, Ready};
use crate::support::{control_plane, free_port, http_get, operator_command, wait_for};

const KEY: &str = "sk_live_e2e_SECRET_4f9a1c77d2";
const ACCOUNT: &str = "acct-e2e";
const T: Duration = Duration::from_secs(40);

/// The environment of these tests: a namespace and a simulator, no in-process controller
/// (each test runs the operator binary with [`Env::operator`]); waits of [`T`].
/// Flags of an operator that takes part in leader election on the Lease `lease` in `ns`,
/// followed by `extra`.
fn leader_args<'a>(ns: &'a str, lease: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--leader-elect",
        "--lease-name",
        lease,
        "--lease-namespace",
        ns,
    ];
    args.extend_from_slice(extra);
    args
}

async fn start(prefix: &str) -> Env {
    let mut env = Env::bare(prefix, ACCOUNT, KEY).await;
    env.timeout = T;
    env
}

#[tokio::test]
async fn api_key_never_appears_in_logs_events_status_or_metrics() {
    let env = start("leak").await;
    let op = env.operator(&[]);
    env.create_labelled("secretive", &[]).await;
    let i = env.wait_ready("secretive", Ready::True).await;
    // Some failures too, so error paths are logged.
    env.sim.fail_next(Route::List, 2, 503);
    env.inboxes()
        .delete("secretive", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("secretive").await;

    let logs = op.logs();
    assert!(!logs.is_empty());
    assert!(!logs.contains(KEY), "API key found in logs");
    let id = i.status.as_ref().and_then(|s| s.inbox_id.clone()).unwrap();
    // Spans carry namespace, name and inbox ID; output is JSON.
    let line = logs
        .lines()
        .find(|l| l.contains("created inbox"))
        .expect("a 'created inbox' log line");
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    let text = v.to_string();
    assert!(
        text.contains(env.ns.name()) && text.contains("secretive") && text.contains(&id),
        "{text}"
    );

    let events: Api<Event> = Api::namespaced(env.client.clone(), env.ns.name());
    let evs =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    assert!(evs.contains("Created") && !evs.contains(KEY));
    assert!(!serde_json::to_string(&i).unwrap().contains(KEY));
    let m = op.metrics().await.expect("metrics");
    assert!(m.contains("inbox_operator_reconciles_total") && !m.contains(KEY));
    accounts_never_show_their_key(&env, &op).await;
}

/// The hygiene of the account objects: an Account's key is in none of the logs, events,
/// Inbox or Account objects and metrics — through a bind, a refusal and a revoked key.
async fn accounts_never_show_their_key(env: &Env, op: &crate::support::Operator) {
    use inbox_operator::api::account::{Account, AccountSpec};
    use inbox_operator::api::common::SecretKeyRef;
    use inbox_operator::api::common::{AccountKind, AccountRef};
    use inbox_operator::api::inbox::{InboxSpec, Reason};
    use kube::api::PostParams;
    const TEAM_KEY: &str = "sk_live_team_SECRET_9b3e0d41aa";
    env.sim.add_account("acct-team", TEAM_KEY);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "team-key"},
        "stringData": {"apiKey": TEAM_KEY},
    }))
    .unwrap();
    env.secrets()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let accounts: Api<Account> = Api::namespaced(env.client.clone(), env.ns.name());
    let account = Account::new(
        "team",
        AccountSpec {
            secret_ref: SecretKeyRef {
                name: "team-key".into(),
                key: "apiKey".into(),
            },
        },
    );
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let via = |name: &str| InboxSpec {
        account_ref: Some(Box::new(AccountRef {
            kind: AccountKind::Account,
            name: name.into(),
        })),
        ..Default::default()
    };
    let bound = env.create_ready("via-account", via("team")).await;
    env.create("refused", via("missing")).await;
    let refused = env
        .wait_ready("refused", Ready::False(Reason::AccountRefused))
        .await;
    env.sim.revoke_key(TEAM_KEY);
    let invalid = env
        .wait_ready("via-account", Ready::False(Reason::CredentialsInvalid))
        .await;

    let events: Api<Event> = Api::namespaced(env.client.clone(), env.ns.name());
    let evs = serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items);
    let objects = [
        ("logs", op.logs()),
        ("events", evs.unwrap()),
        ("bound Inbox", serde_json::to_string(&bound).unwrap()),
        ("refused Inbox", serde_json::to_string(&refused).unwrap()),
        (
            "CredentialsInvalid Inbox",
            serde_json::to_string(&invalid).unwrap(),
        ),
        (
            "Account",
            serde_json::to_string(&accounts.get("team").await.unwrap()).unwrap(),
        ),
        ("metrics", op.metrics().await.expect("metrics")),
    ];
    for (what, text) in objects {
        assert!(
            !text.contains(TEAM_KEY),
            "the Account's key found in {what}"
        );
    }
}

#[tokio::test]
async fn sigkill_between_create_and_bookkeeping_leaves_one_inbox() {
    let env = start("crash").await;
    // The create happens but its response is lost; the operator then dies before it can
    // look for the inbox. A new process must find it instead of creating a second one.
    env.sim.drop_next_create_responses(1);
    let mut op = env.operator(&[]);
    env.create_labelled("phoenix", &[]).await;
    wait_for("create attempted", T, || async {
        (env.sim.request_count(Route::Create) >= 1).then_some(())
    })
    .await;
    op.kill9();
    let pending = env.inboxes().get("phoenix").await.unwrap();
    assert!(
        pending
            .annotations()
            .contains_key("agentsend.io/create-pending"),
        "mark persisted before the call"
    );
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);

    let _op2 = env.operator(&[]);
    let i = env.wait_ready("phoenix", Ready::True).await;
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1, "exactly one inbox");
    assert_eq!(env.sim.request_count(Route::Create), 1, "no second create");
    assert_eq!(
        env.sim.inboxes(ACCOUNT)[0].id,
        i.status.unwrap().inbox_id.unwrap()
    );
}

#[tokio::test]
async fn sigkill_mid_bulk_run_converges() {
    let env = start("bulkcrash").await;
    let _slow = env.inject(Fault::Latency(Duration::from_millis(50)));
    env.sim.drop_next_create_responses(2);
    let mut op = env.operator(&[]);
    let names: Vec<String> = (0..10).map(|i| format!("bulk-{i}")).collect();
    for n in &names {
        env.create_labelled(n, &[]).await;
    }
    wait_for("some creates", T, || async {
        (env.sim.request_count(Route::Create) >= 4).then_some(())
    })
    .await;
    op.kill9();
    let _op2 = env.operator(&[]);
    let mut ids = std::collections::HashSet::new();
    for n in &names {
        let i = env.wait_ready(n, Ready::True).await;
        assert!(
            ids.insert(i.status.unwrap().inbox_id.unwrap()),
            "{n} shares an inbox"
        );
    }
    assert_eq!(
        env.sim.inboxes(ACCOUNT).len(),
        names.len(),
        "exactly one inbox per Inbox"
    );
    for n in &names {
        env.inboxes()
            .delete(n, &DeleteParams::default())
            .await
            .unwrap();
    }
    for n in &names {
        env.wait_gone(n).await;
    }
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 0);
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let env = start("term").await;
    let lease = format!("lease-{}", env.ns.name());
    let mut op = env.operator(&leader_args(env.ns.name(), &lease, &[]));
    env.create_labelled("calm", &[]).await;
    env.wait_ready("calm", Ready::True).await;
    // Health endpoints: alive, and ready once caches are synced and leadership is known.
    let port = op.metrics_port();
    assert_eq!(http_get(port, "/healthz").await.as_deref(), Some("ok"));
    wait_for("readyz", T, || async {
        (http_get(port, "/readyz").await.as_deref() == Some("ready")).then_some(())
    })
    .await;
    let m = op.metrics().await.unwrap_or_default();
    for name in [
        "inbox_operator_reconcile_duration_seconds",
        "inbox_operator_agentsend_requests_total{route=\"create\",status=\"201\"}",
        "inbox_operator_agentsend_request_duration_seconds",
        "inbox_operator_inboxes{state=\"active\",ready=\"true\"} 1",
        "inbox_operator_inbox_sends_remaining{namespace=",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(op.terminate(), Some(0));
    // The Lease was released, so a successor need not wait for it to expire.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), env.ns.name());
    let l = leases.get(&lease).await.expect("lease exists");
    let holder = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert!(holder.is_empty(), "lease still held by {holder:?}");
}

#[tokio::test]
async fn leader_election_one_reconciles_and_hands_over() {
    let env = start("lead").await;
    let lease = format!("lease-{}", env.ns.name());
    let args = leader_args(env.ns.name(), &lease, &["--lease-duration", "6s"]);
    let mut a = env.operator(&args);
    let mut b = env.operator(&args);
    let (leader, _follower) = wait_for("a leader", T, || async {
        match (a.is_leader().await, b.is_leader().await) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        }
    })
    .await;
    for n in 0..3 {
        env.create_labelled(&format!("hand-{n}"), &[]).await;
    }
    for n in 0..3 {
        env.wait_ready(&format!("hand-{n}"), Ready::True).await;
    }
    // Only the leader talked to AgentSend.
    let (leader_op, other_op) = if leader == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let other_metrics = other_op.metrics().await.unwrap_or_default();
    assert!(
        !other_metrics.contains("inbox_operator_agentsend_requests_total{"),
        "follower made AgentSend requests"
    );

    // Stop the leader: the other takes over within the lease duration.
    let stopped = std::time::Instant::now();
    leader_op.kill9();
    wait_for("takeover", Duration::from_secs(20), || async {
        other_op.is_leader().await.then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "takeover took {:?}",
        stopped.elapsed()
    );
    env.create_labelled("after", &[]).await;
    env.wait_ready("after", Ready::True).await;
    assert_eq!(
        env.sim.inboxes(ACCOUNT).len(),
        4,
        "no duplicate inbox during the handover"
    );
}

/// A leader dies while its create is in flight; AgentSend commits that create long after the
/// new leader has taken over and retried. The retry names the address the dead leader
/// persisted, so the server refuses the second of the two: exactly one inbox.
#[tokio::test]
async fn handover_mid_create_leaves_one_inbox() {
    let env = start("midc").await;
    let lease = format!("lease-{}", env.ns.name());
    let args = leader_args(
        env.ns.name(),
        &lease,
        &["--lease-duration", "6s", "--agentsend-timeout", "30s"],
    );
    let mut a = env.operator(&args);
    wait_for("a leads", T, || async { a.is_leader().await.then_some(()) }).await;
    let mut b = env.operator(&args);
    // Well after the takeover (lease 6 s) and the new leader's retry.
    env.sim.commit_next_creates_late(1, Duration::from_secs(20));
    env.create_labelled("mid", &[]).await;
    wait_for("the create is in flight", T, || async {
        (env.sim.request_count(Route::Create) == 1).then_some(())
    })
    .await;
    a.kill9();
    let i = env.wait_ready("mid", Ready::True).await;
    let id = i.status.as_ref().and_then(|s| s.inbox_id.clone());
    wait_for("the late commit reached the server", T, || async {
        (env.sim.late_commits_settled() == 1).then_some(())
    })
    .await;
    let inboxes = env.sim.inboxes(ACCOUNT);
    assert_eq!(inboxes.len(), 1, "one inbox: {inboxes:?}");
    assert_eq!(Some(inboxes[0].id.clone()), id);
    b.kill9();
}

/// Take the Lease as a competing instance would: another holder, renewed now, for `secs`.
async fn take_lease(client: &Client, ns: &str, name: &str, holder: &str, secs: i32) {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let now = MicroTime(jiff::Timestamp::now());
    let patch = serde_json::json!({ "spec": {
        "holderIdentity": holder,
        "acquireTime": now,
        "renewTime": now,
        "leaseDurationSeconds": secs,
    }});
    Api::<Lease>::namespaced(client.clone(), ns)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("take the Lease");
}

/// Renew the Lease `name` as `holder` would, whose clock runs `skew` behind: read it, and
/// write a new renewTime on the read resourceVersion. Fails when someone else holds it.
async fn renew_as(
    client: &Client,
    ns: &str,
    name: &str,
    holder: &str,
    skew: jiff::SignedDuration,
) -> Result<(), String> {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let api = Api::<Lease>::namespaced(client.clone(), ns);
    let now = MicroTime(jiff::Timestamp::now() - skew);
    let mut l = match api.get_opt(name).await.map_err(|e| e.to_string())? {
        Some(l) => l,
        None => {
            let mut l = Lease::default();
            l.metadata.name = Some(name.into());
            l.spec = Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                acquire_time: Some(now.clone()),
                ..LeaseSpec::default()
            });
            l
        }
    };
    let spec = l.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        return Err(format!("taken by {:?}", spec.holder_identity));
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(6);
    let pp = kube::api::PostParams::default();
    let written = if l.metadata.resource_version.is_some() {
        api.replace(name, &pp, &l).await
    } else {
        api.create(&pp, &l).await
    };
    written.map(drop).map_err(|e| e.to_string())
}

/// A standby judges whether the Lease expired by when it last saw the holder renew, on its
/// own clock, never by comparing the holder's renewTime with its own wall clock: a holder
/// whose clock runs a minute behind keeps the Lease while it renews, and a standby takes over
/// only once the renewals stop.
#[tokio::test]
async fn a_standby_ignores_the_holders_clock() {
    let env = start("skew").await;
    let lease = format!("lease-{}", env.ns.name());
    let (client, ns) = (&env.client, env.ns.name());
    let behind = jiff::SignedDuration::from_secs(60);
    renew_as(client, ns, &lease, "behind", behind)
        .await
        .expect("hold the Lease");
    let op = env.operator(&leader_args(ns, &lease, &["--lease-duration", "6s"]));
    wait_for("the standby is ready", T, || async {
        (http_get(op.metrics_port(), "/readyz").await.as_deref() == Some("ready")).then_some(())
    })
    .await;
    // Renew every second for twice the lease duration: the standby must not take it.
    for n in 0..12 {
        if let Err(e) = renew_as(client, ns, &lease, "behind", behind).await {
            panic!("the standby took a Lease renewed {n}s ago by a holder with a slow clock: {e}");
        }
        assert!(
            !op.is_leader().await,
            "the standby leads while the holder renews"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The renewals stop: the standby takes over after one lease duration of silence.
    let stopped = std::time::Instant::now();
    wait_for("takeover", Duration::from_secs(30), || async {
        op.is_leader().await.then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(5),
        "took over {:?} after the last renewal, before the Lease could expire",
        stopped.elapsed()
    );
}

/// A leader whose lease is taken stops writing within its renew deadline: an AgentSend create
/// in flight at the takeover is not bound, and an Inbox created once the gate closed gets no
/// inbox, finalizer or status from it. It exits non-zero without releasing the new holder's Lease; a new
/// instance then takes over and converges without duplicates.
#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_writing() {
    let env = start("gate").await;
    let lease = format!("lease-{}", env.ns.name());
    let args = |id: &'static str| {
        leader_args(
            env.ns.name(),
            &lease,
            &["--lease-duration", "6s", "--identity", id],
        )
    };
    let mut old = env.operator(&args("old"));
    wait_for("old leads", T, || async {
        old.is_leader().await.then_some(())
    })
    .await;
    env.create_labelled("before", &[]).await;
    env.wait_ready("before", Ready::True).await;

    // Slow AgentSend: the create of `slow` is in flight when the Lease is taken.
    let latency = env.inject(Fault::Latency(Duration::from_secs(4)));
    env.create_labelled("slow", &[]).await;
    let api = env.inboxes();
    wait_for("slow marked create-pending", T, || async {
        let i = api.get_opt("slow").await.ok()??;
        i.annotations()
            .contains_key(inbox_operator::api::inbox::ANNOTATION_CREATE_PENDING)
            .then_some(())
    })
    .await;
    take_lease(&env.client, env.ns.name(), &lease, "usurper", 8).await;
    let taken = std::time::Instant::now();
    // The old leader's last renewal is older than the takeover, so its renew deadline
    // (3/4 of 6s) is at most 4.5s away: by then its gate must be closed. (A usurper takes a
    // valid Lease; a real competitor waits the full 6s after the last renewal.)
    wait_for("the old leader's write gate closed", T, || async {
        old.logs().contains("writes stop").then_some(())
    })
    .await;
    assert!(
        taken.elapsed() < Duration::from_millis(4_500),
        "the gate closed {:?} after the takeover",
        taken.elapsed()
    );
    env.create_labelled("after", &[]).await;

    let code = old.wait_exit(T).await;
    assert!(code.is_some_and(|c| c != 0), "old leader exit: {code:?}");
    let slow = api.get("slow").await.expect("slow");
    assert!(
        slow.named_inbox_id().is_none(),
        "the old leader bound slow after losing the lease"
    );
    let after = api.get("after").await.expect("after");
    assert!(
        after.finalizers().is_empty() && after.status.is_none(),
        "the old leader wrote to an Inbox created after the takeover"
    );
    let names = |sim: &Simulator| -> Vec<String> {
        let all = sim.inboxes(ACCOUNT);
        all.into_iter().filter_map(|i| i.display_name).collect()
    };
    assert!(!names(&env.sim).contains(&"Agent after".to_string()));
    // The new holder's Lease was left alone.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client.clone(), env.ns.name());
    let l = leases.get(&lease).await.expect("lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("usurper")
    );

    // A proper successor takes over once the usurper's Lease expires, and converges.
    drop(latency);
    let new = env.operator(&args("new"));
    for name in ["before", "slow", "after"] {
        env.wait_ready(name, Ready::True).await;
    }
    assert!(new.is_leader().await);
    let mut all = names(&env.sim);
    all.sort();
    assert_eq!(
        all,
        ["Agent after", "Agent before", "Agent slow"],
        "one inbox each"
    );
}

#[tokio::test]
async fn disjoint_selectors_share_a_namespace() {
    let env = start("shard").await;
    let a = env.operator(&["--selector", "shard=a"]);
    let b = env.operator(&["--selector", "shard=b"]);
    env.create_labelled("in-a", &[("shard", "a")]).await;
    env.create_labelled("in-b", &[("shard", "b")]).await;
    env.create_labelled("in-none", &[("shard", "c")]).await;
    env.wait_ready("in-a", Ready::True).await;
    env.wait_ready("in-b", Ready::True).await;
    let none = env.inboxes().get("in-none").await.unwrap();
    assert!(
        none.status.is_none() && none.finalizers().is_empty(),
        "no operator touched shard c"
    );
    let ma = a.metrics().await.unwrap_or_default();
    let mb = b.metrics().await.unwrap_or_default();
    assert!(ma.contains("name=\"in-a\"") && !ma.contains("name=\"in-b\""));
    assert!(mb.contains("name=\"in-b\"") && !mb.contains("name=\"in-a\""));
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 2);
}

fn run_expecting_failure(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = operator_command();
    cmd.arg("run")
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(args);
    cmd.env_remove("AGENTSEND_API_KEY").env_remove("KUBECONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn startup_errors_are_one_clear_line() {
    let kubeconfig = control_plane().kubeconfig.to_string_lossy().into_owned();
    let e = run_expecting_failure(&[], &[("KUBECONFIG", &kubeconfig)]);
    assert!(
        e.contains("no default AgentSend API key") && e.contains("AGENTSEND_API_KEY"),
        "{e}"
    );
    assert!(!e.contains("panicked"));

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("kubeconfig");
    let port = free_port();
    std::fs::write(
        &bogus,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"),
    )
    .unwrap();
    let e = run_expecting_failure(
        &[],
        &[
            ("KUBECONFIG", bogus.to_str().unwrap()),
            ("AGENTSEND_API_KEY", "k"),
        ],
    );
    assert!(e.contains("cannot reach the Kubernetes API server"), "{e}");
    assert!(!e.contains("panicked"));

    let e = run_expecting_failure(
        &["--leader-elect", "--lease-duration", "3s"],
        &[("KUBECONFIG", &kubeconfig), ("AGENTSEND_API_KEY", "k")],
    );
    assert!(
        e.contains("--lease-duration") && e.contains("3s is too short: at least 4s"),
        "{e}"
    );
    assert!(!e.contains("panicked"));
}

/// `inbox-operator import` with its environment (kubeconfig, simulator URL, key) and `args`:
/// (success, stdout, stderr).
async fn import(env: &Env, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_inbox-operator"));
    cmd.arg("import")
        .args(["--namespace", env.ns.name()])
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("AGENTSEND_API_URL", env.handle.url())
        .env("AGENTSEND_API_KEY", env.key)
        .env_remove("AGENTSEND_API_KEY_FILE");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run import"))
        .await
        .expect("import finished");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `import` prints Inboxes for the account's unclaimed inboxes only (never the key); applied
/// back with kubectl they become Ready without a single create (zero POSTs). `--domain`
/// narrows the list; `--observe` makes them observe-only.
#[tokio::test]
async fn import_output_applied_back_adopts_without_creating() {
    let env = Env::start().await;
    let add = |address: &str, domain: Option<&str>| {
        env.sim
            .insert_inbox(
                crate::ctl::ACCOUNT,
                inbox_sim::CreateInbox {
                    address: Some(address.into()),
                    display_name: None,
                    domain_id: domain.map(str::to_string),
                },
            )
            .expect("inbox")
    };
    let sales = add("sales", Some("dom_example"));
    let team = add("Support.Team@agentsend.io", None);
    let claimed = add("claimed@agentsend.io", None);
    env.create_ready(
        "already-here",
        inbox_operator::api::inbox::InboxSpec {
            inbox_id: Some(claimed.id.clone()),
            ..Default::default()
        },
    )
    .await;

    let (ok, yaml, err) = import(&env, &[]).await;
    assert!(ok, "{err}");
    assert!(
        !yaml.contains(env.key) && !err.contains(env.key),
        "never the key"
    );
    assert!(
        yaml.contains(&sales.id) && yaml.contains(&team.id),
        "{yaml}"
    );
    assert!(
        !yaml.contains(&claimed.id),
        "claimed inboxes are left out: {yaml}"
    );

    let (ok, only_custom, err) = import(&env, &["--domain", "example.com"]).await;
    assert!(ok, "{err}");
    assert!(only_custom.contains(&sales.id) && !only_custom.contains(&team.id));

    let (ok, observed, err) = import(&env, &["--observe"]).await;
    assert!(ok, "{err}");
    assert!(observed.contains("managementPolicy: Observe"), "{observed}");

    env.sim.reset_counters();
    let mut apply = control_plane().kubectl();
    apply.args(["apply", "-f", "-"]);
    let applied =
        tokio::task::spawn_blocking(move || crate::support::output_with_stdin(&mut apply, &yaml))
            .await
            .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for (name, remote) in [
        ("sales-example-com", &sales),
        ("support-team-agentsend-io", &team),
    ] {
        let i = env.wait_ready(name, Ready::True).await;
        assert_eq!(crate::ctl::status_id(&i), remote.id);
        assert_eq!(
            i.spec.deletion_policy,
            Some(inbox_operator::api::inbox::DeletionPolicy::Orphan)
        );
    }
    assert_eq!(env.sim.request_count(Route::Create), 0, "zero POSTs");
    env.stop().await;
}
