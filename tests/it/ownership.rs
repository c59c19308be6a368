//! Ownership on proof: an Inbox binds (and so may delete) an AgentSend inbox only when the
//! operator can prove it made or was given that binding — never on user-writable annotations
//! alone (`agentsend.io/create-pending`, `agentsend.io/inbox-id`), never on a guess about an
//! older inbox that happens to hold the address, never through credentials that now reach
//! another account, never past a ClusterAccount's quota or adoption policy. The guards here
//! pin what must keep working meanwhile: recovery of our own lost create, key rotation in the
//! same account, objects left by today's version, GitOps replaces, and restores.
//!
//! Each defect test failed on the version before ownership on proof (the operator bound,
//! created or deleted what it must not); the guards passed there and pass here. Reasons are
//! compared by their contract names, as `kubectl` shows them, and `adoptionPolicy` is set with
//! a merge patch, as a platform team's `kubectl patch` would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use inbox_operator::api::account::{ClusterAccount, ClusterAccountSpec};
use inbox_operator::api::common::SecretKeyRef;
use inbox_operator::api::common::{AccountKind, AccountRef};
use inbox_operator::api::inbox::{CredentialsSpec, Inbox, InboxSpec, ManagementPolicy};
use inbox_operator::controller::Settings;
use inbox_operator::controller::StatusWriter;
use inbox_sim::{CreateInbox, RemoteInbox, Route};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::ctl::{ACCOUNT, Env, KEY, Ready, T, data, ready, status_id};
use crate::support::{TestNamespace, random_suffix, wait_for};

const PENDING: &str = "agentsend.io/create-pending";
const PENDING_SINCE: &str = "agentsend.io/create-pending-since";
const INBOX_ID: &str = "agentsend.io/inbox-id";
const REFRESH: &str = "agentsend.io/refresh";
const FINALIZER: &str = "agentsend.io/finalizer";

/// A second simulator account, and its key.
const OTHER: &str = "acct-other";
const OTHER_KEY: &str = "sk_test_other_account_key_0001";
/// A second key of [`ACCOUNT`].
const SECOND_KEY: &str = "sk_test_second_key_same_acct_01";
/// The account of the ClusterAccounts here (key Secret `shared-key`).
const SHARED: &str = "acct-shared";
const SHARED_KEY: &str = "sk_test_shared_key_ownership_01";

// ----------------------------------------------------------------------------- helpers

/// An Inbox `name` with `spec` and these annotations.
fn annotated(name: &str, spec: InboxSpec, annotations: &[(&str, &str)]) -> Inbox {
    let mut i = Inbox::new(name, spec);
    i.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    i
}

/// The Ready condition's reason and message (empty when there is none).
fn reason_of(i: &Inbox) -> (String, String) {
    ready(i)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// What an Inbox looks like, for failure messages.
fn show(i: &Inbox) -> String {
    json!({"annotations": i.metadata.annotations, "finalizers": i.metadata.finalizers,
        "deletionTimestamp": i.metadata.deletion_timestamp, "status": i.status})
    .to_string()
}

/// An inbox made in AgentSend by someone else (no Inbox claims it).
fn foreign(env: &Env, account: &str, address: Option<&str>) -> RemoteInbox {
    env.sim
        .insert_inbox(
            account,
            CreateInbox {
                address: address.map(Into::into),
                ..Default::default()
            },
        )
        .expect("out-of-band inbox")
}

/// Poll Inbox `name` until its Ready condition, for its current generation, has one of the
/// reasons `until` (`Ready` for True). Panics at once if it is ever seen bound to `victim`
/// (its `status.inboxId`, or its Secret holding the victim's address).
async fn settle_in(
    inboxes: &Api<Inbox>,
    secrets: &Api<Secret>,
    name: &str,
    victim: Option<&RemoteInbox>,
    until: &[&str],
) -> Inbox {
    let start = Instant::now();
    loop {
        let current = inboxes.get_opt(name).await.ok().flatten();
        if let (Some(v), Some(i)) = (victim, &current) {
            assert_ne!(
                status_id(i),
                v.id,
                "{name} is bound to inbox {} ({}), which it never owned: {}",
                v.id,
                v.address,
                show(i)
            );
            if let Ok(Some(s)) = secrets.get_opt(&i.secret_name()).await {
                assert_ne!(
                    data(&s, "address"),
                    v.address,
                    "{name}'s Secret holds the address of inbox {}, which it never owned: {}",
                    v.id,
                    show(i)
                );
            }
        }
        if let Some(i) = &current
            && let Some(c) = ready(i)
            && until.contains(&c.reason.as_str())
            && c.observed_generation == i.metadata.generation
        {
            return i.clone();
        }
        if start.elapsed() > T {
            panic!(
                "timed out waiting for {name} to reach one of {until:?}: {:?}",
                current.as_ref().map(show)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`settle_in`] in the env's namespace.
async fn settle(env: &Env, name: &str, victim: Option<&RemoteInbox>, until: &[&str]) -> Inbox {
    settle_in(&env.inboxes(), &env.secrets(), name, victim, until).await
}

/// Delete an Inbox and wait until it is gone.
async fn delete_and_wait(env: &Env, name: &str) {
    env.inboxes()
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete the Inbox");
    env.wait_gone(name).await;
}

async fn merge_inbox(env: &Env, name: &str, patch: Value) {
    env.inboxes()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch the Inbox");
}

fn base64(s: &str) -> String {
    serde_json::to_value(ByteString(s.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An Inbox `team` reading its key from the Secret `team-key`, which holds [`KEY`]
/// ([`ACCOUNT`]); waits until it is Ready and returns its inbox.
async fn team_inbox_ready(env: &Env) -> RemoteInbox {
    env.secrets()
        .create(
            &PostParams::default(),
            &crate::ctl::key_secret("team-key", KEY),
        )
        .await
        .expect("create the key Secret");
    let spec = InboxSpec {
        credentials: Some(Box::new(CredentialsSpec {
            secret_ref: SecretKeyRef {
                name: "team-key".into(),
                key: "apiKey".into(),
            },
        })),
        ..Default::default()
    };
    let i = env.create_ready("team", spec).await;
    env.sim.inbox(&status_id(&i)).expect("its inbox")
}

/// Put `key` into the Secret `team-key` (a merge patch: the operator's finalizer stays).
async fn set_team_key(env: &Env, key: &str) {
    let patch = json!({ "data": { "apiKey": base64(key) } });
    env.secrets()
        .patch("team-key", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("change the key Secret");
}

/// After `team-key` changed to [`OTHER`]'s key: wait until the operator acted on it (Ready
/// reason `AccountChanged`, or any Create sent / inbox made in the other account), then check
/// that it created nothing.
/// The team Inbox Ready, then its key Secret pointed at another account's key (counters
/// reset), until it reports `AccountChanged`; its original inbox.
async fn moved_to_another_account(env: &Env) -> RemoteInbox {
    let original = team_inbox_ready(env).await;
    env.sim.add_account(OTHER, OTHER_KEY);
    env.sim.reset_counters();
    set_team_key(env, OTHER_KEY).await;
    wait_account_changed(env).await;
    original
}

/// Delete Inbox `name` (waiting until it is gone); inbox `id`, never its own, must survive.
async fn deleting_leaves(env: &Env, name: &str, id: &str) {
    delete_and_wait(env, name).await;
    assert!(
        env.sim.inbox(id).is_some(),
        "deleting {name} deleted inbox {id}, which it never owned"
    );
}

async fn wait_account_changed(env: &Env) -> Inbox {
    let i = wait_for(
        "the Inbox to react to a key of another account",
        T,
        || async {
            let i = env.inboxes().get_opt("team").await.ok().flatten()?;
            let created =
                env.sim.request_count(Route::Create) > 0 || !env.sim.inboxes(OTHER).is_empty();
            (reason_of(&i).0 == "AccountChanged" || created).then_some(i)
        },
    )
    .await;
    let made: Vec<String> = env.sim.inboxes(OTHER).into_iter().map(|r| r.id).collect();
    assert!(
        made.is_empty(),
        "inboxes created in {OTHER} with the new key: {made:?}; Inbox: {}",
        show(&i)
    );
    assert_eq!(
        env.sim.request_count(Route::Create),
        0,
        "a Create was sent after the key changed account: {}",
        show(&i)
    );
    assert_eq!(reason_of(&i).0, "AccountChanged", "{}", show(&i));
    i
}

/// An env whose controller has the env's namespace as the operator's (ClusterAccount key
/// Secrets live there), holding `shared-key` ([`SHARED`]'s key).
async fn account_env(tweak: impl FnOnce(&mut Settings)) -> Env {
    let mut env = Env::bare("own", ACCOUNT, KEY).await;
    env.sim.add_account(SHARED, SHARED_KEY);
    env.secrets()
        .create(
            &PostParams::default(),
            &crate::ctl::key_secret("shared-key", SHARED_KEY),
        )
        .await
        .expect("create the shared key Secret");
    let ns = env.ns.name().to_string();
    env.spawn_controller(
        |_| {},
        move |s| {
            s.operator_namespace = ns;
            tweak(s);
        },
    );
    env
}

/// A ClusterAccount on `shared-key` for the env's namespace, `tweak`ed; its name.
async fn cluster_account(env: &Env, tweak: impl FnOnce(&mut ClusterAccountSpec)) -> String {
    let name = format!("own-{}", random_suffix(6));
    let mut spec = ClusterAccountSpec {
        secret_ref: SecretKeyRef {
            name: "shared-key".into(),
            key: "apiKey".into(),
        },
        namespaces: Some(vec![env.ns.name().to_string()]),
        ..Default::default()
    };
    tweak(&mut spec);
    Api::<ClusterAccount>::all(env.client.clone())
        .create(&PostParams::default(), &ClusterAccount::new(&name, spec))
        .await
        .expect("create ClusterAccount");
    name
}

async fn delete_cluster_account(env: &Env, name: &str) {
    let _ = Api::<ClusterAccount>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// A spec using the ClusterAccount `name`.
fn via(name: &str) -> InboxSpec {
    InboxSpec {
        account_ref: Some(Box::new(AccountRef {
            kind: AccountKind::ClusterAccount,
            name: name.into(),
        })),
        ..Default::default()
    }
}

// ------------------------------------------------------------- forged annotations

/// Defect: a user-written `agentsend.io/create-pending` mark (with or without
/// `agentsend.io/create-pending-since`) naming an existing address is taken for the operator's
/// own interrupted create: the Inbox binds someone else's inbox, publishes its address, and
/// deletes it when the Inbox is deleted.
#[tokio::test]
async fn forged_pending_mark_binds_and_deletes_nothing() {
    let env = Env::start().await;
    let since = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(5))
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let cases = [
        ("forged-mark", "victim@agentsend.io", None),
        (
            "forged-mark-since",
            "victim2@agentsend.io",
            Some(since.as_str()),
        ),
    ];
    let mut victims = Vec::new();
    for (name, address, since) in cases {
        let victim = foreign(&env, ACCOUNT, Some(address));
        let mut marks = vec![(PENDING, address)];
        marks.extend(since.map(|s| (PENDING_SINCE, s)));
        env.inboxes()
            .create(
                &PostParams::default(),
                &annotated(name, InboxSpec::default(), &marks),
            )
            .await
            .expect("create Inbox");
        victims.push((name, victim));
    }
    let until = ["Ready", "CreationUncertain", "Rejected"];
    for (name, victim) in &victims {
        let i = settle(&env, name, Some(victim), &until).await;
        let (reason, message) = reason_of(&i);
        assert_eq!(reason, "CreationUncertain", "{name}: {message}");
        assert!(message.contains(&victim.id), "{name}: {message}");
    }
    for (name, victim) in &victims {
        deleting_leaves(&env, name, &victim.id).await;
    }
    env.stop().await;
}

/// Defect: a user-written `agentsend.io/inbox-id` annotation (no `spec.inboxId`) is taken for
/// a binding the operator recorded: the Inbox takes over an unclaimed inbox of the account,
/// and deletes it when the Inbox is deleted.
#[tokio::test]
async fn forged_inbox_id_annotation_binds_and_deletes_nothing() {
    let env = Env::start().await;
    let victim = foreign(&env, ACCOUNT, Some("victim@agentsend.io"));
    let forged = annotated("forged-id", InboxSpec::default(), &[(INBOX_ID, &victim.id)]);
    env.inboxes()
        .create(&PostParams::default(), &forged)
        .await
        .expect("create Inbox");
    let until = ["Ready", "Rejected", "CreationUncertain", "InboxNotFound"];
    let i = settle(&env, "forged-id", Some(&victim), &until).await;
    let (reason, message) = reason_of(&i);
    assert_eq!(reason, "Rejected", "{message}");
    assert!(message.contains("spec.inboxId"), "{message}");
    assert_eq!(env.sim.request_count(Route::Create), 0, "nothing created");

    deleting_leaves(&env, "forged-id", &victim.id).await;
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1, "no second inbox");
    assert_eq!(env.sim.request_count(Route::Create), 0, "nothing created");
    env.stop().await;
}

// ------------------------------------------------------------------ ambiguous creates

/// Defect: a create of a chosen address whose outcome is unknown (503) is "recovered" by
/// binding whatever inbox holds that address if it was created within the clock-skew window
/// before the mark — here someone else's inbox made a moment earlier.
#[tokio::test]
async fn ambiguous_create_never_binds_an_older_foreign_inbox() {
    let env = Env::start().await;
    let theirs = foreign(&env, ACCOUNT, Some("sales@agentsend.io"));
    env.sim.fail_next(Route::Create, 1, 503);
    let spec = InboxSpec {
        address: Some("sales@agentsend.io".into()),
        ..Default::default()
    };
    env.create("sales", spec).await;
    let until = ["Ready", "Rejected", "CreationUncertain"];
    let i = settle(&env, "sales", Some(&theirs), &until).await;
    let (reason, message) = reason_of(&i);
    assert!(
        reason == "Rejected" || reason == "CreationUncertain",
        "{reason}: {message}"
    );
    assert!(message.contains(&theirs.id), "{message}");

    deleting_leaves(&env, "sales", &theirs.id).await;
    env.stop().await;
}

/// Guard for the fix of the defect above: our own create of a chosen address whose response
/// was lost is still recovered — bound, and no second inbox.
#[tokio::test]
async fn ambiguous_create_of_a_chosen_address_recovers_its_own_inbox() {
    let env = Env::start().await;
    env.sim.drop_next_create_responses(1);
    let spec = InboxSpec {
        address: Some("orders@agentsend.io".into()),
        ..Default::default()
    };
    let i = env.create_ready("orders", spec).await;
    let same: Vec<RemoteInbox> = env
        .sim
        .inboxes(ACCOUNT)
        .into_iter()
        .filter(|r| r.address == "orders@agentsend.io")
        .collect();
    assert_eq!(same.len(), 1, "exactly one inbox with the address");
    assert_eq!(status_id(&i), same[0].id);
    let s = env.secret("orders").await.expect("its Secret");
    assert_eq!(data(&s, "address"), "orders@agentsend.io");

    delete_and_wait(&env, "orders").await;
    assert!(env.sim.inbox(&same[0].id).is_none(), "ours: deleted");
    env.stop().await;
}

// -------------------------------------------------------------- changed credentials

/// Defect: when the key Secret's key is changed to one of another account, the inbox looks
/// vanished (404 in that account) and is "re-created" there; and the deletion would go to
/// the wrong account. Expected: `AccountChanged`, no create, deletion held until a key of
/// the binding's account is back, then the original inbox deleted.
#[tokio::test]
async fn changed_account_never_creates_and_delete_waits() {
    let env = Env::start().await;
    let original = moved_to_another_account(&env).await;

    env.inboxes()
        .delete("team", &DeleteParams::default())
        .await
        .expect("delete the Inbox");
    let held = wait_for("the deletion held with AccountChanged", T, || async {
        let i = env.inboxes().get_opt("team").await.ok().flatten()?;
        let c = ready(&i)?;
        (i.metadata.deletion_timestamp.is_some()
            && c.reason == "AccountChanged"
            && c.observed_generation == i.metadata.generation)
            .then_some(i)
    })
    .await;
    assert!(
        held.finalizers().iter().any(|f| f == FINALIZER),
        "{}",
        show(&held)
    );
    assert!(env.sim.inbox(&original.id).is_some(), "not deleted yet");
    assert_eq!(env.sim.request_count(Route::Delete), 0);

    set_team_key(&env, KEY).await;
    env.wait_gone("team").await;
    assert!(
        env.sim.inbox(&original.id).is_none(),
        "deleted with a key of its account"
    );
    assert!(env.sim.inboxes(OTHER).is_empty());
    assert_eq!(env.sim.request_count(Route::Create), 0);
    env.stop().await;
}

/// Defect (as above), with `deletionPolicy: Orphan`: the Inbox is released without any call,
/// its inbox left in AgentSend, and a Warning event `Orphaned` names the inbox.
#[tokio::test]
async fn changed_account_orphan_releases_with_warning() {
    let env = Env::start().await;
    let original = moved_to_another_account(&env).await;

    merge_inbox(&env, "team", json!({"spec": {"deletionPolicy": "Orphan"}})).await;
    delete_and_wait(&env, "team").await;
    let orphaned = wait_for("a Warning event Orphaned", T, || async {
        env.events("Orphaned")
            .await
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning"))
    })
    .await;
    let note = orphaned.note.unwrap_or_default();
    assert!(note.contains(&original.id), "{note}");
    assert!(env.sim.inbox(&original.id).is_some(), "left in AgentSend");
    assert!(env.sim.inboxes(OTHER).is_empty());
    assert_eq!(env.sim.request_count(Route::Create), 0);
    assert_eq!(env.sim.request_count(Route::Delete), 0);
    env.stop().await;
}

/// Guard: a new key of the same account (the old one revoked) keeps the binding — no
/// `AccountChanged`, no create — and a refresh is served with it.
#[tokio::test]
async fn rotated_key_in_same_account_keeps_working() {
    let env = Env::start().await;
    let original = team_inbox_ready(&env).await;
    env.sim.add_account(ACCOUNT, SECOND_KEY);
    env.sim.reset_counters();
    set_team_key(&env, SECOND_KEY).await;
    env.sim.revoke_key(KEY);

    merge_inbox(
        &env,
        "team",
        json!({"metadata": {"annotations": {REFRESH: "1"}}}),
    )
    .await;
    let i = wait_for("the refresh served with the new key", T, || async {
        let i = env.inboxes().get_opt("team").await.ok().flatten()?;
        let served = i.status.as_ref()?.observed_refresh.as_deref() == Some("1");
        (served && reason_of(&i).0 == "Ready").then_some(i)
    })
    .await;
    assert_eq!(status_id(&i), original.id, "same inbox");
    assert_eq!(env.sim.request_count(Route::Create), 0);
    let i = env.wait_ready("team", Ready::True).await;
    assert_eq!(status_id(&i), original.id, "same inbox");
    env.sim.restore_key(KEY);
    delete_and_wait(&env, "team").await;
    assert!(env.sim.inbox(&original.id).is_none(), "deleted");
    env.stop().await;
}

// ------------------------------------------------------------------ account rules

/// Defect: the per-namespace quota counts an Inbox as holding a slot — and never refuses it —
/// on its user-writable annotations (`agentsend.io/create-pending`, `agentsend.io/inbox-id`):
/// `quota_refusal` returns early when `holds_inbox` is true. A fresh pending mark or the ID of
/// a vanished inbox thus gets a second inbox past `maxInboxesPerNamespace: 1`. Also checks
/// that Inboxes created at once never exceed the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_only_proven_bindings_and_is_atomic() {
    let env = account_env(|_| {}).await;
    let ca = cluster_account(&env, |s| s.max_inboxes_per_namespace = Some(1)).await;
    let names = ["q-0", "q-1", "q-2"];
    futures::future::join_all(names.map(|n| env.create(n, via(&ca)))).await;
    let mut states = BTreeMap::new();
    for n in names {
        let i = settle(&env, n, None, &["Ready", "AccountRefused"]).await;
        states.insert(n, (reason_of(&i).0, status_id(&i)));
    }
    assert_eq!(
        env.sim.inboxes(SHARED).len(),
        1,
        "3 Inboxes at once past maxInboxesPerNamespace: 1: {states:?}"
    );
    let holders: Vec<&str> = names
        .into_iter()
        .filter(|n| states[n].0 == "Ready")
        .collect();
    assert_eq!(holders.len(), 1, "{states:?}");
    let held = env.sim.inbox(&states[holders[0]].1).expect("its inbox");

    forged_marks_get_no_slot(&env, &ca, &held).await;
    for n in names {
        delete_and_wait(&env, n).await;
    }
    delete_cluster_account(&env, &ca).await;
    env.stop().await;
}

/// With the quota full (`held` holds the one slot): Inboxes with forged marks get no inbox
/// and bind nothing, and a plain Inbox after them is still refused.
async fn forged_marks_get_no_slot(env: &Env, ca: &str, held: &RemoteInbox) {
    let fresh = format!("{}@agentsend.io", random_suffix(16));
    let ghost = format!("inb_{}", random_suffix(16));
    let forged = [
        ("f-pending", PENDING, fresh.as_str()),
        ("f-ghost-id", INBOX_ID, ghost.as_str()),
        ("f-copied-id", INBOX_ID, held.id.as_str()),
    ];
    for (name, key, value) in forged {
        env.inboxes()
            .create(
                &PostParams::default(),
                &annotated(name, via(ca), &[(key, value)]),
            )
            .await
            .expect("create Inbox");
    }
    let until = [
        "Ready",
        "AccountRefused",
        "Rejected",
        "CreationUncertain",
        "InboxNotFound",
    ];
    for (name, key, value) in forged {
        let i = settle(env, name, Some(held), &until).await;
        assert_ne!(
            reason_of(&i).0,
            "Ready",
            "{name} ({key}: {value}) got an inbox past maxInboxesPerNamespace: 1; {SHARED} has {:?}; {}",
            env.sim
                .inboxes(SHARED)
                .iter()
                .map(|r| &r.id)
                .collect::<Vec<_>>(),
            show(&i)
        );
    }
    env.create("q-late", via(ca)).await;
    let late = settle(env, "q-late", Some(held), &["Ready", "AccountRefused"]).await;
    assert_eq!(reason_of(&late).0, "AccountRefused", "{}", show(&late));
    assert_eq!(
        env.sim.inboxes(SHARED).len(),
        1,
        "one inbox for a quota of 1"
    );
    for (name, _, _) in forged {
        delete_and_wait(env, name).await;
    }
    delete_and_wait(env, "q-late").await;
    assert!(env.sim.inbox(&held.id).is_some(), "the holder's inbox kept");
}

/// Defect: `ClusterAccount.spec.adoptionPolicy: Deny` is not honoured (the field does not
/// exist yet): adopting by `spec.inboxId`, and binding by `spec.address` with
/// `managementPolicy: Observe`, go through that account. Expected: `AccountRefused`, decided
/// without any AgentSend request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_policy_deny_refuses_adoption_without_api_call() {
    let env = account_env(|s| {
        s.account_status = StatusWriter::None;
        s.sync_interval = Duration::from_secs(3600);
    })
    .await;
    let ca = cluster_account(&env, |_| {}).await;
    let deny = json!({ "spec": { "adoptionPolicy": "Deny" } });
    Api::<ClusterAccount>::all(env.client.clone())
        .patch(&ca, &PatchParams::default(), &Patch::Merge(&deny))
        .await
        .expect("set adoptionPolicy: Deny");
    let by_id = foreign(&env, SHARED, None);
    let by_address = foreign(&env, SHARED, Some("observed@agentsend.io"));
    env.sim.reset_counters();

    let adopt = InboxSpec {
        inbox_id: Some(by_id.id.clone()),
        ..via(&ca)
    };
    let observe = InboxSpec {
        address: Some(by_address.address.clone()),
        management_policy: ManagementPolicy::Observe,
        ..via(&ca)
    };
    for (name, spec) in [("adopt", adopt), ("observe", observe)] {
        env.create(name, spec).await;
        let until = ["Ready", "AccountRefused", "Rejected", "InboxNotFound"];
        let i = settle(&env, name, None, &until).await;
        let (get, list) = (
            env.sim.request_count(Route::Get),
            env.sim.request_count(Route::List),
        );
        assert_eq!(
            reason_of(&i).0,
            "AccountRefused",
            "{name} through adoptionPolicy: Deny ({get} GET, {list} list requests): {}",
            show(&i)
        );
        assert_eq!((get, list), (0, 0), "{name}: (GET, list) requests");
    }
    for name in ["adopt", "observe"] {
        delete_and_wait(&env, name).await;
    }
    assert!(env.sim.inbox(&by_id.id).is_some() && env.sim.inbox(&by_address.id).is_some());
    delete_cluster_account(&env, &ca).await;
    env.stop().await;
}

// ------------------------------------------------------------- objects of before the fix

/// The Inbox annotations, status fields and finalizers today's version writes: what an
/// object left by it holds (anything else the fix adds is removed to mimic one).
const OLD_ANNOTATIONS: [&str; 5] = [
    INBOX_ID,
    PENDING,
    PENDING_SINCE,
    REFRESH,
    "agentsend.io/paused",
];
const OLD_STATUS: [&str; 19] = [
    "inboxId",
    "address",
    "displayName",
    "domainId",
    "state",
    "dailySendLimit",
    "sendsToday",
    "sendsRemaining",
    "totalSent",
    "bounceCount",
    "complaintCount",
    "createdAt",
    "secretName",
    "configMapName",
    "observedGeneration",
    "deletionPolicy",
    "deletionPolicySource",
    "observedRefresh",
    "conditions",
];

/// A merge patch setting to null every `agentsend.io/` key of `map` not in `keep`.
fn drop_new_keys(map: Option<&BTreeMap<String, String>>, keep: &[&str]) -> Value {
    let drop = map.into_iter().flatten().map(|(k, _)| k.as_str());
    let drop = drop.filter(|k| k.starts_with("agentsend.io/") && !keep.contains(k));
    Value::Object(drop.map(|k| (k.to_string(), Value::Null)).collect())
}

/// Status JSON of `i` with only the fields today's version writes.
fn old_status(i: &Inbox) -> serde_json::Map<String, Value> {
    let status = serde_json::to_value(i.status.as_ref()).expect("status as JSON");
    let mut status = status.as_object().cloned().unwrap_or_default();
    status.retain(|k, _| OLD_STATUS.contains(&k.as_str()));
    status
}

/// With the controller halted: make Inbox `name` (and its Secret) look exactly as today's
/// version leaves it — drop any annotation, label, finalizer and status field it does not
/// write. Returns the Inbox as it then is.
async fn as_left_by_today(env: &Env, name: &str) -> Inbox {
    let i = env.inboxes().get(name).await.expect("get Inbox");
    let finalizers: Vec<&String> = i
        .finalizers()
        .iter()
        .filter(|f| !f.starts_with("agentsend.io/") || *f == FINALIZER)
        .collect();
    let meta = json!({"metadata": {"finalizers": finalizers,
        "annotations": drop_new_keys(i.metadata.annotations.as_ref(), &OLD_ANNOTATIONS),
        "labels": drop_new_keys(i.metadata.labels.as_ref(), &[])}});
    merge_inbox(env, name, meta).await;
    let mut status = serde_json::to_value(i.status.as_ref()).expect("status as JSON");
    for (k, v) in status.as_object_mut().into_iter().flatten() {
        if !OLD_STATUS.contains(&k.as_str()) {
            *v = Value::Null;
        }
    }
    env.inboxes()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .expect("patch status");
    let s = env.secret(&i.secret_name()).await.expect("its Secret");
    let keep = ["agentsend.io/data-digest"];
    let patch =
        json!({"metadata": {"annotations": drop_new_keys(s.metadata.annotations.as_ref(), &keep)}});
    env.secrets()
        .patch(
            &s.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patch the Secret");
    env.inboxes().get(name).await.expect("get Inbox")
}

/// With the controller halted: an Inbox `name` bound to `remote` as today's version would
/// have left it — finalizer, `agentsend.io/inbox-id`, status and owned Secret shaped like
/// `model`'s (one such Inbox), with `remote`'s identity.
async fn legacy_inbox(env: &Env, model: &Inbox, name: &str, remote: &RemoteInbox) {
    let mut i = annotated(name, InboxSpec::default(), &[(INBOX_ID, &remote.id)]);
    i.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    let created = env
        .inboxes()
        .create(&PostParams::default(), &i)
        .await
        .expect("create Inbox");
    let mut status = old_status(model);
    for (k, v) in [
        ("inboxId", &remote.id),
        ("address", &remote.address),
        ("secretName", &name.to_string()),
    ] {
        status.insert(k.into(), json!(v));
    }
    status.insert("createdAt".into(), json!(remote.created_at));
    status.insert(
        "observedGeneration".into(),
        json!(created.metadata.generation),
    );
    for c in status
        .get_mut("conditions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        c["observedGeneration"] = json!(created.metadata.generation);
    }
    env.inboxes()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .expect("write status");
    let model_secret = env
        .secret(&model.secret_name())
        .await
        .expect("model Secret");
    let mut owner = model_secret
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    for o in &mut owner {
        (o.name, o.uid) = (name.to_string(), created.uid().unwrap_or_default());
    }
    let mut labels = model_secret.metadata.labels.clone().unwrap_or_default();
    labels.insert("agentsend.io/inbox".into(), name.into());
    let mut secret = crate::ctl::key_secret(name, "");
    (secret.metadata.labels, secret.metadata.owner_references) = (Some(labels), Some(owner));
    secret.type_ = Some("Opaque".into());
    secret.data = Some(BTreeMap::from([
        (
            "address".to_string(),
            ByteString(remote.address.clone().into_bytes()),
        ),
        (
            "inboxId".to_string(),
            ByteString(remote.id.clone().into_bytes()),
        ),
    ]));
    // Written by the operator's field manager, as today's version does: it reads its keys as
    // intact only while it alone owns them (`decide::data_as_written`).
    let pp = PostParams {
        field_manager: Some(inbox_operator::api::inbox::FIELD_MANAGER.into()),
        ..Default::default()
    };
    env.secrets()
        .create(&pp, &secret)
        .await
        .expect("create Secret");
}

/// Guard: Inboxes exactly as today's version leaves them (binding in `agentsend.io/inbox-id`
/// and status, no proof the fix may add) stay bound after an upgrade: Ready, same inbox, no
/// create and no delete.
#[tokio::test]
async fn upgrade_keeps_inboxes_bound_without_proof() {
    let mut env = Env::start().await;
    env.create_ready("made", InboxSpec::default()).await;
    env.halt().await;
    let made = as_left_by_today(&env, "made").await;
    let remote = foreign(&env, ACCOUNT, None);
    legacy_inbox(&env, &made, "legacy", &remote).await;
    env.sim.reset_counters();
    env.spawn_controller(|_| {}, |_| {});

    for (name, id) in [("made", status_id(&made)), ("legacy", remote.id.clone())] {
        // A refresh proves a pass of the upgraded controller went over it.
        merge_inbox(
            &env,
            name,
            json!({"metadata": {"annotations": {REFRESH: "1"}}}),
        )
        .await;
        let i = wait_for(&format!("{name} refreshed"), T, || async {
            let i = env.inboxes().get_opt(name).await.ok().flatten()?;
            let served = i.status.as_ref()?.observed_refresh.as_deref() == Some("1");
            (served && reason_of(&i).0 == "Ready").then_some(i)
        })
        .await;
        assert_eq!(status_id(&i), id, "{name}: same inbox; {}", show(&i));
        let address = env.sim.inbox(&id).expect("its inbox").address;
        assert_eq!(
            data(&env.secret(name).await.expect("Secret"), "address"),
            address
        );
    }
    assert_eq!(env.sim.request_count(Route::Create), 0, "no create");
    assert_eq!(env.sim.request_count(Route::Delete), 0, "no delete");
    for name in ["made", "legacy"] {
        delete_and_wait(&env, name).await;
    }
    assert_eq!(env.sim.inbox_count(), 0, "both deleted with their Inboxes");
    env.stop().await;
}

/// Guard: a GitOps replace (PUT with the same spec, no annotations, no finalizers, as
/// `kubectl replace` or Argo CD `Replace=true` do) keeps the binding: the finalizer comes
/// back, Ready on the same inbox, no create and no delete.
#[tokio::test]
async fn gitops_replace_keeps_the_binding() {
    let env = Env::start().await;
    let i = env.create_ready("applied", InboxSpec::default()).await;
    let id = status_id(&i);
    env.sim.reset_counters();
    let mut attempts = 0;
    loop {
        let current = env.inboxes().get("applied").await.expect("get Inbox");
        let mut manifest = Inbox::new("applied", current.spec.clone());
        manifest.metadata.resource_version = current.metadata.resource_version.clone();
        match env
            .inboxes()
            .replace("applied", &PostParams::default(), &manifest)
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 10 => attempts += 1,
            Err(e) => panic!("replace: {e}"),
        }
    }
    let j = wait_for("the finalizer back, Ready", T, || async {
        let j = env.inboxes().get_opt("applied").await.ok().flatten()?;
        let finalized = j.finalizers().iter().any(|f| f == FINALIZER);
        (finalized && reason_of(&j).0 == "Ready").then_some(j)
    })
    .await;
    assert_eq!(status_id(&j), id, "same inbox: {}", show(&j));
    let j = env.wait_ready("applied", Ready::True).await;
    assert_eq!(status_id(&j), id, "same inbox: {}", show(&j));
    let address = env.sim.inbox(&id).expect("its inbox").address;
    assert_eq!(
        data(&env.secret("applied").await.expect("Secret"), "address"),
        address
    );
    assert_eq!(env.sim.request_count(Route::Create), 0, "no create");
    assert_eq!(env.sim.request_count(Route::Delete), 0, "no delete");
    delete_and_wait(&env, "applied").await;
    assert!(env.sim.inbox(&id).is_none(), "deleted with its Inbox");
    env.stop().await;
}

/// Defect: the backup of an Inbox (its `agentsend.io/inbox-id` annotation and spec) restored
/// into another namespace while no Inbox holds the inbox — its original was deleted with
/// `deletionPolicy: Orphan` — binds that inbox: any namespace can take over an orphaned inbox
/// by naming its ID in an annotation. Expected: not bound there (and its deletion deletes
/// nothing); the same backup restored into the original namespace and name binds it again.
#[tokio::test]
async fn restore_into_same_name_rebinds_other_namespace_does_not() {
    let client = crate::support::control_plane().client().await;
    let other = TestNamespace::new(&client, "own-restore").await;
    let other_ns = other.name().to_string();
    let env = Env::start_with(|s| s.namespaces.push(other_ns.clone())).await;
    let i = env.create_ready("kept", InboxSpec::default()).await;
    let remote = env.sim.inbox(&status_id(&i)).expect("its inbox");
    let backup = |i: &Inbox| {
        let mut b = Inbox::new("kept", i.spec.clone());
        b.metadata.annotations = i.metadata.annotations.clone();
        b
    };
    merge_inbox(&env, "kept", json!({"spec": {"deletionPolicy": "Orphan"}})).await;
    env.wait_ready("kept", Ready::True).await;
    delete_and_wait(&env, "kept").await;
    assert!(env.sim.inbox(&remote.id).is_some(), "orphaned: kept");
    env.sim.reset_counters();

    let copies: Api<Inbox> = Api::namespaced(client.clone(), &other_ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &other_ns);
    copies
        .create(&PostParams::default(), &backup(&i))
        .await
        .expect("restore elsewhere");
    let until = ["Ready", "Rejected", "CreationUncertain"];
    let copy = settle_in(&copies, &secrets, "kept", Some(&remote), &until).await;
    let (reason, message) = reason_of(&copy);
    assert!(
        reason == "Rejected" || reason == "CreationUncertain",
        "{reason}: {message}"
    );
    copies
        .delete("kept", &DeleteParams::default())
        .await
        .expect("delete the copy");
    wait_for("the copy to go", T, || async {
        matches!(copies.get_opt("kept").await, Ok(None)).then_some(())
    })
    .await;
    assert!(
        env.sim.inbox(&remote.id).is_some(),
        "the copy's deletion kept it"
    );
    assert_eq!(env.sim.request_count(Route::Delete), 0);

    env.inboxes()
        .create(&PostParams::default(), &backup(&i))
        .await
        .expect("restore");
    let restored = env.wait_ready("kept", Ready::True).await;
    assert_eq!(status_id(&restored), remote.id, "{}", show(&restored));
    assert_eq!(
        data(&env.secret("kept").await.expect("Secret"), "address"),
        remote.address
    );
    assert_eq!(env.sim.request_count(Route::Create), 0, "no create");
    delete_and_wait(&env, "kept").await;
    assert!(
        env.sim.inbox(&remote.id).is_none(),
        "deleted with its Inbox"
    );
    env.stop().await;
    drop(other);
}

// ------------------------------------------------- fail closed without the cluster view

/// `deploy/namespaced/roles.yaml`'s Role: what the operator needs in a watched namespace.
fn watched_namespace_rules() -> Value {
    json!([
        {"apiGroups": ["agentsend.io"], "resources": ["inboxes"],
         "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["agentsend.io"], "resources": ["inboxes/status"], "verbs": ["patch"]},
        {"apiGroups": ["agentsend.io"], "resources": ["inboxes/finalizers"], "verbs": ["update"]},
        {"apiGroups": ["agentsend.io"], "resources": ["accounts"],
         "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["agentsend.io"], "resources": ["accounts/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}
    ])
}

/// `deploy/namespaced/clusteraccounts-rbac.yaml`'s ClusterRole: all a namespaced install may
/// do cluster-wide (no Inboxes).
fn namespaced_install_cluster_rules() -> Value {
    json!([
        {"apiGroups": ["agentsend.io"], "resources": ["clusteraccounts"],
         "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["agentsend.io"], "resources": ["clusteraccounts/status"],
         "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}
    ])
}

/// `deploy/namespaced/binding-check-rbac.yaml`'s ClusterRole: list/watch Inboxes everywhere.
fn binding_check_rules() -> Value {
    json!([{"apiGroups": ["agentsend.io"], "resources": ["inboxes"], "verbs": ["list", "watch"]}])
}

/// Grant the user `user` the `rules`: as the Role `name` and a RoleBinding `name` in the
/// env's namespace or, `cluster`, as the ClusterRole `name` and a ClusterRoleBinding `name`.
async fn grant(env: &Env, user: &str, name: &str, cluster: bool, rules: Value) {
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
    };
    let metadata = kube::api::ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let rules = Some(serde_json::from_value(rules).expect("policy rules"));
    let role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: if cluster { "ClusterRole" } else { "Role" }.into(),
        name: name.into(),
    };
    let subjects = Some(vec![Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "User".into(),
        name: user.into(),
        namespace: None,
    }]);
    let (pp, client, ns) = (PostParams::default(), &env.client, env.ns.name());
    let meta = metadata.clone();
    if cluster {
        let role = ClusterRole {
            metadata,
            rules,
            ..Default::default()
        };
        let roles = Api::<ClusterRole>::all(client.clone());
        roles.create(&pp, &role).await.expect("create ClusterRole");
        let binding = ClusterRoleBinding {
            metadata: meta,
            role_ref,
            subjects,
        };
        let bindings = Api::<ClusterRoleBinding>::all(client.clone());
        bindings
            .create(&pp, &binding)
            .await
            .expect("create binding");
    } else {
        let role = Role { metadata, rules };
        let roles = Api::<Role>::namespaced(client.clone(), ns);
        roles.create(&pp, &role).await.expect("create Role");
        let binding = RoleBinding {
            metadata: meta,
            role_ref,
            subjects,
        };
        let bindings = Api::<RoleBinding>::namespaced(client.clone(), ns);
        bindings
            .create(&pp, &binding)
            .await
            .expect("create RoleBinding");
    }
}

/// Remove what [`grant`] made as `name` (best effort).
async fn revoke(env: &Env, name: &str, cluster: bool) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let (dp, client, ns) = (DeleteParams::default(), &env.client, env.ns.name());
    if cluster {
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(name, &dp)
            .await;
        let _ = Api::<ClusterRole>::all(client.clone())
            .delete(name, &dp)
            .await;
    } else {
        let _ = Api::<RoleBinding>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await;
        let _ = Api::<Role>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await;
    }
}

/// List Inbox metadata as `client` does: in `namespace`, or (`None`) cluster-wide.
async fn list_inboxes(client: &kube::Client, namespace: Option<&str>) -> Result<(), kube::Error> {
    let api: Api<Inbox> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let one = kube::api::ListParams::default().limit(1);
    api.list_metadata(&one).await.map(|_| ())
}

/// An in-process controller as [`Env::spawn_controller`] starts one, but on another client
/// and set up as a namespaced install runs: the watched namespace as the operator's, only
/// `Account` status written. Retries are capped at 2 s.
struct Restricted {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Restricted {
    /// Start it on `client`; returns once its caches have listed.
    async fn start(env: &Env, client: kube::Client) -> Restricted {
        use inbox_operator::agentsend::{AgentSendClient, ApiKey, ClientOptions};
        use inbox_operator::controller::DefaultKey;
        let opts = ClientOptions {
            timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let api = AgentSendClient::new(&env.handle.url(), opts).expect("client");
        let settings = Settings {
            sync_interval: Duration::from_secs(2),
            concurrency: 4,
            namespaces: vec![env.ns.name().to_string()],
            default_key: DefaultKey::Fixed(ApiKey::new(KEY).expect("key")),
            proof_key: Some(env.proof.clone()),
            operator_namespace: env.ns.name().to_string(),
            account_status: StatusWriter::Accounts,
            max_retry_delay: Duration::from_secs(2),
            ..Settings::default()
        };
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let (ready, listed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(inbox_operator::controller::run(
            client,
            api,
            settings,
            env.metrics.clone(),
            async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            },
            move || {
                let _ = ready.send(());
            },
        ));
        let listed = tokio::time::timeout(T, listed).await;
        assert!(
            matches!(listed, Ok(Ok(()))),
            "the restricted controller's caches never listed"
        );
        Restricted { stop, task }
    }

    /// Stop it and wait (up to 20 s) until it has stopped.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

/// The restricted user `user` as a namespaced install grants it (no binding-check role), once
/// the grants apply: it may list Inboxes in the env's namespace and ClusterAccounts, not
/// Inboxes cluster-wide. Its client.
async fn restricted_user(env: &Env, user: &str) -> kube::Client {
    grant(env, user, user, false, watched_namespace_rules()).await;
    grant(env, user, user, true, namespaced_install_cluster_rules()).await;
    let kubeconfig = crate::support::control_plane().kubeconfig_as(user, &[]);
    let client = crate::support::client_from(&kubeconfig).await;
    let accounts = Api::<ClusterAccount>::all(client.clone());
    wait_for("the restricted user's roles to apply", T, || async {
        let here = list_inboxes(&client, Some(env.ns.name())).await.is_ok();
        let one = kube::api::ListParams::default().limit(1);
        let accounts = accounts.list_metadata(&one).await.is_ok();
        (here && accounts).then_some(())
    })
    .await;
    let everywhere = list_inboxes(&client, None).await;
    assert!(
        matches!(&everywhere, Err(kube::Error::Api(e)) if e.code == 403),
        "{user} must not list Inboxes cluster-wide: {everywhere:?}"
    );
    client
}

/// Case a: an Inbox adopting an unclaimed inbox by `spec.inboxId` waits, `OwnershipUnverified`
/// naming the failed list: no `status.inboxId`, no Secret. Returns the inbox.
async fn adoption_waits(env: &Env) -> RemoteInbox {
    use inbox_operator::api::inbox::Reason;
    let theirs = foreign(env, ACCOUNT, None);
    let spec = InboxSpec {
        inbox_id: Some(theirs.id.clone()),
        ..Default::default()
    };
    env.create("adopt", spec).await;
    let unverified = Ready::False(Reason::OwnershipUnverified);
    let i = env.wait_ready("adopt", unverified).await;
    let (_, message) = reason_of(&i);
    assert!(
        message.contains("listing Inboxes cluster-wide failed") && message.contains("forbidden"),
        "the message names the failed list: {message}"
    );
    assert_ne!(status_id(&i), theirs.id, "bound unchecked: {}", show(&i));
    assert!(
        env.secret(&i.secret_name()).await.is_none(),
        "a Secret was written for an unchecked adoption: {}",
        show(&i)
    );
    theirs
}

/// Case b: a Ready Inbox (a new random address needs no cluster-wide check), deleted, waits
/// with its finalizer, `OwnershipUnverified`: its inbox is neither deleted nor sent a Delete.
/// Returns the inbox ID.
async fn deletion_waits(env: &Env) -> String {
    use inbox_operator::api::inbox::Reason;
    let id = status_id(&env.create_ready("made", InboxSpec::default()).await);
    env.inboxes()
        .delete("made", &DeleteParams::default())
        .await
        .expect("delete the Inbox");
    let unverified = Ready::False(Reason::OwnershipUnverified);
    let i = env.wait_ready("made", unverified).await;
    assert!(i.metadata.deletion_timestamp.is_some(), "{}", show(&i));
    assert!(
        i.finalizers().iter().any(|f| f == FINALIZER),
        "the finalizer stays while the check cannot be made: {}",
        show(&i)
    );
    assert!(env.sim.inbox(&id).is_some(), "inbox {id} deleted unchecked");
    assert_eq!(
        env.sim.request_count(Route::Delete),
        0,
        "a Delete was sent unchecked: {}",
        show(&i)
    );
    id
}

/// Defect: an operator watching only some namespaces, whose identity may not list Inboxes
/// cluster-wide (a namespaced install without the binding-check role), "fails open": the
/// one-owner check behind adoption (`spec.inboxId`), recovery and deletion logs a warning and
/// goes ahead on the watched namespaces alone — it adopts an inbox another namespace's Inbox
/// may own, and deletes an inbox in AgentSend, unchecked. Expected: fail closed — `Ready=False`,
/// reason `OwnershipUnverified` naming the failed list, nothing bound, written or deleted, the
/// finalizer kept; retried with backoff, so granting the binding-check role lets both finish.
#[tokio::test]
async fn ownership_check_fails_closed_without_cluster_wide_list() {
    let env = Env::bare("own-closed", ACCOUNT, KEY).await;
    env.sim.add_domain(ACCOUNT, "dom_example", "example.com");
    let user = format!("ownership-restricted-{}", random_suffix(6));
    let check = format!("{user}-binding-check");
    let restricted = restricted_user(&env, &user).await;
    let controller = Restricted::start(&env, restricted.clone()).await;

    let theirs = adoption_waits(&env).await;
    let made = deletion_waits(&env).await;

    // The binding-check role: the check can be made, and both go through.
    grant(&env, &user, &check, true, binding_check_rules()).await;
    wait_for("cluster-wide Inbox lists allowed", T, || async {
        list_inboxes(&restricted, None).await.ok()
    })
    .await;
    env.wait_gone("made").await;
    assert!(env.sim.inbox(&made).is_none(), "inbox {made} kept");
    let adopted = env.wait_ready("adopt", Ready::True).await;
    assert_eq!(status_id(&adopted), theirs.id, "{}", show(&adopted));
    delete_and_wait(&env, "adopt").await;
    assert_eq!(env.sim.inbox_count(), 0, "deleted with their Inboxes");

    controller.stop().await;
    for (name, cluster) in [(&check, true), (&user, true), (&user, false)] {
        revoke(&env, name, cluster).await;
    }
    env.stop().await;
}
