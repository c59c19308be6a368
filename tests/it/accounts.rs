//! Accounts as resources on a real API server: an Inbox's key comes from the `Account` or
//! `ClusterAccount` it names (or the default `ClusterAccount`); a `ClusterAccount`'s rules
//! (namespaces by name and by label, domains, the per-namespace quota) refuse with
//! `AccountRefused` and no AgentSend call; a rotated account key is picked up without a
//! restart; and the key Secret (and account) carry the credentials-in-use finalizer, so that
//! deleting a namespace deletes its inboxes first and its credentials last — also with an
//! operator restart in the middle.

use std::collections::BTreeMap;
use std::time::Duration;

use inbox_operator::api::account::{
    ANNOTATION_DEFAULT_ACCOUNT, Account, AccountSpec, AccountStatus, ClusterAccount,
    ClusterAccountSpec, FINALIZER_CREDENTIALS_IN_USE,
};
use inbox_operator::api::common::SecretKeyRef;
use inbox_operator::api::common::{AccountKind, AccountRef};
use inbox_operator::api::inbox::{Inbox, InboxSpec, Reason};
use inbox_operator::controller::Settings;
use inbox_operator::controller::StatusWriter;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::ctl::{ACCOUNT, Env, Ready, T, ready};
use crate::support::{TestNamespace, random_suffix, wait_for};

const SHARED: &str = "acct-shared";
const SHARED_KEY: &str = "sk_test_shared_key_0123456789";

/// A Secret `name` in `ns` holding `apiKey: key`.
async fn key_secret(client: &Client, ns: &str, name: &str, key: &str) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &crate::ctl::key_secret(name, key))
        .await
        .expect("create key Secret");
}

/// A ClusterAccount (unique name from `prefix`) on the key Secret `shared-key`, deleted when
/// the guard drops.
struct ClusterAccountGuard {
    client: Client,
    name: String,
}

impl ClusterAccountGuard {
    async fn new(
        client: &Client,
        prefix: &str,
        default: bool,
        f: impl FnOnce(&mut ClusterAccountSpec),
    ) -> Self {
        let mut spec = ClusterAccountSpec {
            secret_ref: SecretKeyRef {
                name: "shared-key".into(),
                key: "apiKey".into(),
            },
            ..Default::default()
        };
        f(&mut spec);
        let name = format!("{prefix}-{}", random_suffix(6));
        let mut ca = ClusterAccount::new(&name, spec);
        if default {
            ca.annotations_mut()
                .insert(ANNOTATION_DEFAULT_ACCOUNT.into(), "true".into());
        }
        Api::<ClusterAccount>::all(client.clone())
            .create(&PostParams::default(), &ca)
            .await
            .expect("create ClusterAccount");
        ClusterAccountGuard {
            client: client.clone(),
            name,
        }
    }

    fn reference(&self) -> Option<AccountRef> {
        Some(AccountRef {
            kind: AccountKind::ClusterAccount,
            name: self.name.clone(),
        })
    }
}

impl Drop for ClusterAccountGuard {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        tokio::spawn(async move {
            let _ = Api::<ClusterAccount>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}

/// An env whose controller watches its namespace and `also`, with its namespace as the
/// operator's (ClusterAccount key Secrets live there) holding `shared-key`.
async fn env_with(also: &[&str]) -> Env {
    env_tuned(also, |_| {}).await
}

/// [`env_with`] with a sync interval of an hour: within a test, only a trigger (a watch)
/// can explain a refused Inbox becoming Ready.
async fn env_without_sync(also: &[&str]) -> Env {
    env_tuned(also, |s| s.sync_interval = Duration::from_secs(3600)).await
}

/// [`env_with`], its settings then changed by `tweak`.
async fn env_tuned(also: &[&str], tweak: impl FnOnce(&mut Settings)) -> Env {
    let also: Vec<String> = also.iter().map(|s| s.to_string()).collect();
    let mut env = Env::bare("acct", ACCOUNT, crate::ctl::KEY).await;
    env.sim.add_account(SHARED, SHARED_KEY);
    key_secret(&env.client, env.ns.name(), "shared-key", SHARED_KEY).await;
    let ns = env.ns.name().to_string();
    env.spawn_controller(
        |_| {},
        move |s| {
            s.namespaces.extend(also);
            s.operator_namespace = ns;
            tweak(s);
        },
    );
    env
}

/// Wait until Inbox `ns/name` is Ready=`want`; returns it.
async fn wait_in(env: &Env, ns: &str, name: &str, want: Ready) -> Inbox {
    let (status, reason) = want.status_reason();
    let api: Api<Inbox> = Api::namespaced(env.client.clone(), ns);
    wait_for(&format!("{ns}/{name} Ready={status} {reason}"), T, || {
        let api = api.clone();
        async move {
            let i = api.get_opt(name).await.ok().flatten()?;
            let c = ready(&i)?;
            (c.status == status && c.reason == reason).then_some(i.clone())
        }
    })
    .await
}

async fn create_in(env: &Env, ns: &str, name: &str, spec: InboxSpec) {
    Api::<Inbox>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &Inbox::new(name, spec))
        .await
        .expect("create Inbox");
}

fn message(i: &Inbox) -> String {
    ready(i).map(|c| c.message.clone()).unwrap_or_default()
}

fn account_of(env: &Env, i: &Inbox) -> Option<String> {
    env.sim.inbox_account(&crate::ctl::status_id(i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_account_namespaces_by_name_and_by_label() {
    let client = crate::support::control_plane().client().await;
    let other = TestNamespace::new(&client, "acct-other").await;
    let env = env_with(&[other.name()]).await;
    let tenant = random_suffix(8);
    let ns_api: Api<Namespace> = Api::all(env.client.clone());
    let labels = serde_json::json!({ "metadata": { "labels": { "tenant": tenant } } });
    ns_api
        .patch(
            env.ns.name(),
            &PatchParams::default(),
            &Patch::Merge(&labels),
        )
        .await
        .unwrap();
    let by_name = ClusterAccountGuard::new(&client, "by-name", false, |s| {
        s.namespaces = Some(vec![env.ns.name().to_string()])
    })
    .await;
    let by_label = ClusterAccountGuard::new(&client, "by-label", false, |s| {
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tenant".to_string(), tenant.clone())])),
            ..Default::default()
        })
    })
    .await;
    let (me, them) = (env.ns.name(), other.name());
    for (ns, name, account) in [
        (me, "named", &by_name),
        (me, "labelled", &by_label),
        (them, "not-named", &by_name),
        (them, "not-labelled", &by_label),
    ] {
        let spec = InboxSpec {
            account_ref: account.reference().map(Box::new),
            ..Default::default()
        };
        create_in(&env, ns, name, spec).await;
    }
    for name in ["named", "labelled"] {
        let i = wait_in(&env, me, name, Ready::True).await;
        assert_eq!(account_of(&env, &i).as_deref(), Some(SHARED), "{name}");
    }
    let refused = Ready::False(Reason::AccountRefused);
    let i = wait_in(&env, them, "not-named", refused).await;
    assert!(
        message(&i).contains("is not in spec.namespaces"),
        "{}",
        message(&i)
    );
    assert!(message(&i).contains(&by_name.name), "{}", message(&i));
    let i = wait_in(&env, them, "not-labelled", refused).await;
    assert!(
        message(&i).contains("do not match spec.namespaceSelector"),
        "{}",
        message(&i)
    );
    assert_eq!(
        env.sim.inboxes(SHARED).len(),
        2,
        "refused Inboxes created nothing"
    );
    assert!(
        env.sim.inboxes(ACCOUNT).is_empty(),
        "nothing on the default key"
    );
    env.stop().await;
}

/// A namespace's labels are re-read when they change: labelled to match a ClusterAccount's
/// selector, its refused Inbox becomes Ready; unlabelled, it is refused again — each at once
/// (no sync interval passes in this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_label_change_is_seen_at_once() {
    let client = crate::support::control_plane().client().await;
    let tenant_ns = TestNamespace::new(&client, "acct-relabel").await;
    let env = env_without_sync(&[tenant_ns.name()]).await;
    let tenant = random_suffix(8);
    let ca = ClusterAccountGuard::new(&client, "relabel", false, |s| {
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tenant".to_string(), tenant.clone())])),
            ..Default::default()
        })
    })
    .await;
    let ns = tenant_ns.name();
    let spec = InboxSpec {
        account_ref: ca.reference().map(Box::new),
        ..Default::default()
    };
    create_in(&env, ns, "waiting", spec).await;
    let refused = Ready::False(Reason::AccountRefused);
    wait_in(&env, ns, "waiting", refused).await;

    let ns_api: Api<Namespace> = Api::all(client.clone());
    let label = |v: Option<&str>| serde_json::json!({ "metadata": { "labels": { "tenant": v } } });
    ns_api
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(&label(Some(&tenant))),
        )
        .await
        .unwrap();
    let i = wait_in(&env, ns, "waiting", Ready::True).await;
    assert_eq!(account_of(&env, &i).as_deref(), Some(SHARED));

    ns_api
        .patch(ns, &PatchParams::default(), &Patch::Merge(&label(None)))
        .await
        .unwrap();
    let i = wait_in(&env, ns, "waiting", refused).await;
    assert!(
        message(&i).contains("do not match spec.namespaceSelector"),
        "{}",
        message(&i)
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_account_domains_and_per_namespace_quota() {
    let env = env_without_sync(&[]).await;
    env.sim.add_domain(SHARED, "dom_shared", "shared.example");
    env.sim.add_domain(SHARED, "dom_other", "other.example");
    let ns = env.ns.name().to_string();
    let ca = ClusterAccountGuard::new(&env.client, "quota", false, |s| {
        s.namespaces = Some(vec![ns.clone()]);
        s.allowed_domain_ids = Some(vec!["dom_shared".into()]);
        s.max_inboxes_per_namespace = Some(1);
    })
    .await;
    let spec = |domain: &str| InboxSpec {
        account_ref: ca.reference().map(Box::new),
        domain_id: Some(domain.into()),
        ..Default::default()
    };
    let first = env.create_ready("first", spec("dom_shared")).await;
    assert_eq!(account_of(&env, &first).as_deref(), Some(SHARED));

    env.create("wrong-domain", spec("dom_other")).await;
    let refused = env
        .wait_ready("wrong-domain", Ready::False(Reason::AccountRefused))
        .await;
    assert!(
        message(&refused).contains(r#"does not allow domainId "dom_other""#),
        "{}",
        message(&refused)
    );

    env.create("second", spec("dom_shared")).await;
    let over = env
        .wait_ready("second", Ready::False(Reason::AccountRefused))
        .await;
    assert!(
        message(&over).contains("maxInboxesPerNamespace") && message(&over).contains("first"),
        "{}",
        message(&over)
    );
    assert_eq!(
        env.sim.inboxes(SHARED).len(),
        1,
        "refused Inboxes created nothing"
    );

    // The slot frees when the first goes: the second gets it without any change of its own,
    // at once (no sync interval passes in this test: the deletion wakes it).
    env.inboxes()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("first").await;
    let second = env.wait_ready("second", Ready::True).await;
    assert_eq!(account_of(&env, &second).as_deref(), Some(SHARED));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_cluster_account_serves_the_namespaces_it_allows() {
    let client = crate::support::control_plane().client().await;
    let other = TestNamespace::new(&client, "acct-nodefault").await;
    let env = env_with(&[other.name()]).await;
    let ns = env.ns.name().to_string();
    let _default = ClusterAccountGuard::new(&client, "default", true, |s| {
        s.namespaces = Some(vec![ns.clone()])
    })
    .await;
    let allowed = env.create_ready("implicit", InboxSpec::default()).await;
    assert_eq!(account_of(&env, &allowed).as_deref(), Some(SHARED));
    // A namespace the default does not allow falls back to the operator's key.
    create_in(&env, other.name(), "implicit", InboxSpec::default()).await;
    let fallback = wait_in(&env, other.name(), "implicit", Ready::True).await;
    assert_eq!(account_of(&env, &fallback).as_deref(), Some(ACCOUNT));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_key_rotation_is_picked_up_without_restart() {
    key_rotation_is_picked_up_without_restart(AccountKind::Account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_account_key_rotation_is_picked_up_without_restart() {
    key_rotation_is_picked_up_without_restart(AccountKind::ClusterAccount).await;
}

/// An Inbox on an account of `kind` whose key is revoked turns `CredentialsInvalid`, and
/// becomes Ready on the same inbox as soon as the key Secret holds a working key.
async fn key_rotation_is_picked_up_without_restart(kind: AccountKind) {
    let env = env_with(&[]).await;
    let ns = env.ns.name().to_string();
    let (old, new) = ("sk_test_team_old_0123456789", "sk_test_team_new_0123456789");
    env.sim.add_account("acct-team", old);
    env.sim.add_account("acct-team", new);
    // A ClusterAccount's key Secret lives in the operator's namespace: here the same one.
    key_secret(&env.client, &ns, "team-key", old).await;
    let _cluster;
    let account_ref = match kind {
        AccountKind::Account => {
            account(&env.client, &ns, "team", "team-key").await;
            Some(AccountRef {
                kind,
                name: "team".into(),
            })
        }
        AccountKind::ClusterAccount => {
            _cluster = ClusterAccountGuard::new(&env.client, "rotating", false, |s| {
                s.secret_ref.name = "team-key".into();
                s.namespaces = Some(vec![ns.clone()]);
            })
            .await;
            _cluster.reference()
        }
    };
    let spec = InboxSpec {
        account_ref: account_ref.map(Box::new),
        ..Default::default()
    };
    let i = env.create_ready("rotating", spec).await;
    assert_eq!(account_of(&env, &i).as_deref(), Some("acct-team"));

    env.sim.revoke_key(old);
    env.wait_ready("rotating", Ready::False(Reason::CredentialsInvalid))
        .await;
    let rotated = serde_json::json!({ "data": { "apiKey": base64(new) } });
    env.secrets()
        .patch("team-key", &PatchParams::default(), &Patch::Merge(&rotated))
        .await
        .unwrap();
    // Well within the 300 s a refused key waits before its next try: the Secret's change did it.
    let back = env.wait_ready("rotating", Ready::True).await;
    assert_eq!(
        crate::ctl::status_id(&back),
        crate::ctl::status_id(&i),
        "same inbox"
    );
    env.stop().await;
}

fn base64(s: &str) -> String {
    serde_json::to_value(ByteString(s.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn finalized(meta: &ObjectMeta) -> bool {
    meta.finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER_CREDENTIALS_IN_USE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_removes_inboxes_first_and_credentials_last_across_a_restart() {
    let mut env = env_with(&[]).await;
    let ns = env.ns.name().to_string();
    let key = "sk_test_doomed_0123456789";
    env.sim.add_account("acct-doomed", key);
    key_secret(&env.client, &ns, "doomed-key", key).await;
    let accounts: Api<Account> = Api::namespaced(env.client.clone(), &ns);
    let account = Account::new(
        "doomed",
        AccountSpec {
            secret_ref: SecretKeyRef {
                name: "doomed-key".into(),
                key: "apiKey".into(),
            },
        },
    );
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let spec = InboxSpec {
        account_ref: Some(Box::new(AccountRef {
            kind: AccountKind::Account,
            name: "doomed".into(),
        })),
        ..Default::default()
    };
    let i = env.create_ready("doomed", spec).await;
    let id = crate::ctl::status_id(&i);
    let secret = env.secret("doomed-key").await.expect("key Secret");
    assert!(
        finalized(&secret.metadata),
        "the key Secret is marked in use"
    );
    assert!(
        finalized(&accounts.get("doomed").await.unwrap().metadata),
        "so is the Account"
    );

    // The operator goes away; the namespace is deleted meanwhile.
    env.halt().await;
    Api::<Namespace>::all(env.client.clone())
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the namespace controller to reach the key Secret",
        T,
        || async {
            let s = env.secret("doomed-key").await?;
            s.metadata.deletion_timestamp.is_some().then_some(())
        },
    )
    .await;
    assert!(env.sim.inbox(&id).is_some(), "nobody deleted the inbox yet");

    // The restarted operator still finds the key: it deletes the inbox, then lets go of the
    // key Secret. (The namespace itself then goes at the pace of the namespace controller's
    // own retry backoff, which is not the operator's doing: not waited for here.)
    env.spawn_controller(|_| {}, |s| s.operator_namespace = ns.clone());
    wait_for(
        "the inbox deleted with the key, then the key Secret released",
        Duration::from_secs(90),
        || async {
            let released = match env.secret("doomed-key").await {
                None => true,
                Some(s) => !finalized(&s.metadata),
            };
            (env.sim.inbox(&id).is_none() && released).then_some(())
        },
    )
    .await;
    env.stop().await;
}

/// An Account named `name` on the key Secret `secret` in `ns`.
async fn account(client: &Client, ns: &str, name: &str, secret: &str) {
    let a = Account::new(
        name,
        AccountSpec {
            secret_ref: SecretKeyRef {
                name: secret.into(),
                key: "apiKey".into(),
            },
        },
    );
    Api::<Account>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &a)
        .await
        .expect("create Account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_inboxes_show_in_status_metrics_and_the_orphans_cli() {
    let env = env_with(&[]).await;
    let ns = env.ns.name().to_string();
    let key = "sk_test_leaky_0123456789";
    env.sim.add_account("acct-leaky", key);
    key_secret(&env.client, &ns, "leaky-key", key).await;
    account(&env.client, &ns, "leaky", "leaky-key").await;
    let spec = InboxSpec {
        account_ref: Some(Box::new(AccountRef {
            kind: AccountKind::Account,
            name: "leaky".into(),
        })),
        ..Default::default()
    };
    let claimed = env.create_ready("claimed", spec).await;
    // Created by hand in AgentSend: no Inbox claims it.
    let leak = env
        .sim
        .insert_inbox(
            "acct-leaky",
            inbox_sim::CreateInbox {
                address: Some("forgotten".into()),
                ..Default::default()
            },
        )
        .expect("out-of-band inbox");

    let accounts: Api<Account> = Api::namespaced(env.client.clone(), &ns);
    let status = wait_for("the Account status to count the leak", T, || async {
        let s = accounts.get("leaky").await.ok()?.status?;
        (s.unclaimed_inboxes == Some(1) && s.inboxes == Some(1)).then_some(s)
    })
    .await;
    let ready = &status.conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str()),
        ("Ready", "True")
    );
    assert!(status.last_scan_time.is_some());
    let series = format!(
        r#"inbox_operator_account_unclaimed_inboxes{{kind="Account",namespace="{ns}",name="leaky"}} 1"#
    );
    assert!(
        env.metrics.encode().contains(&series),
        "{}",
        env.metrics.encode()
    );

    let out = crate::support::operator_command()
        .args(["orphans", "--account", "leaky", "--namespace", &ns])
        .env("KUBECONFIG", &crate::support::control_plane().kubeconfig)
        .env("AGENTSEND_API_URL", env.handle.url())
        .output()
        .expect("run inbox-operator orphans");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}\t{}", leak.id, leak.address)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&crate::ctl::status_id(&claimed)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(key) && !stderr.contains(key),
        "never the key"
    );
    assert!(
        !serde_json::to_string(&status).unwrap().contains(key),
        "no key in the status"
    );
    env.stop().await;
}

/// An account's status shows the requests per second sent with its key over the last sync
/// interval, and how many of them AgentSend answered 429 while its rate limit bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_status_shows_the_request_rate_and_429s() {
    let env = env_with(&[]).await;
    let ns = env.ns.name().to_string();
    let key = "sk_test_busy_0123456789";
    env.sim.add_account("acct-busy", key);
    key_secret(&env.client, &ns, "busy-key", key).await;
    account(&env.client, &ns, "busy", "busy-key").await;
    let spec = InboxSpec {
        account_ref: Some(Box::new(AccountRef {
            kind: AccountKind::Account,
            name: "busy".into(),
        })),
        ..Default::default()
    };
    env.create_ready("busy-0", spec.clone()).await;
    let accounts: Api<Account> = Api::namespaced(env.client.clone(), &ns);
    let status = wait_for("a request rate in the Account status", T, || async {
        let s = accounts.get("busy").await.ok()?.status?;
        s.request_rate.is_some_and(|r| r > 0.0).then_some(s)
    })
    .await;
    assert_eq!(status.rate_limited_requests, Some(0), "no 429 yet");

    // AgentSend now allows half a request per second: creating a few Inboxes at once meets
    // 429s. Every status write is seen through a watch, so a count that holds one interval
    // is not missed.
    env.sim
        .set_account_rate_limit(inbox_sim::RateLimit::new(0.5, 1.0));
    let names: Vec<String> = (1..=4).map(|i| format!("busy-{i}")).collect();
    for n in &names {
        env.create(n, spec.clone()).await;
    }
    let limited =
        kube::runtime::wait::await_condition(accounts.clone(), "busy", |a: Option<&Account>| {
            a.and_then(|a| a.status.as_ref())
                .and_then(|s| s.rate_limited_requests)
                .is_some_and(|n| n > 0)
        });
    let seen = tokio::time::timeout(T, limited)
        .await
        .expect("a 429 count in the Account status in time")
        .expect("watch the Account")
        .and_then(|a| a.status)
        .and_then(|s| s.rate_limited_requests);
    let sent_429 = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    assert!(
        seen.is_some_and(|n| n > 0 && usize::try_from(n).is_ok_and(|n| n <= sent_429)),
        "{seen:?} of {sent_429} 429s"
    );
    env.sim.set_account_rate_limit(None);
    for n in &names {
        env.wait_ready(n, Ready::True).await;
    }
    env.stop().await;
}

/// With `--account-status=accounts` (a shard or install that leaves ClusterAccounts to
/// another), an instance writes its Accounts' status and no ClusterAccount's; the same
/// cluster with the default (`all`) writes both. (The other tests' operators on this API
/// server write every ClusterAccount's status too, as a second install would: the key Secret
/// here has a name of its own, so none of them can find it, and only this test's operator
/// can report the account `Ready`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_chosen_instance_writes_cluster_account_status() {
    let mut env = env_tuned(&[], |s| s.account_status = StatusWriter::Accounts).await;
    let ns = env.ns.name().to_string();
    let (secret, key) = (
        format!("solo-key-{}", random_suffix(6)),
        format!("sk_test_solo_{}", random_suffix(12)),
    );
    env.sim.add_account("acct-solo", &key);
    key_secret(&env.client, &ns, &secret, &key).await;
    let ca = ClusterAccountGuard::new(&env.client, "written", false, |s| {
        s.secret_ref.name = secret.clone();
        s.namespaces = Some(vec![ns.clone()]);
    })
    .await;
    let on_cluster = InboxSpec {
        account_ref: ca.reference().map(Box::new),
        ..Default::default()
    };
    env.create_ready("on-cluster", on_cluster).await;
    // Created once the ClusterAccount is in the operator's cache (an Inbox resolved it):
    // every round that writes the Account has passed the ClusterAccounts, which come first.
    let own_key = "sk_test_own_0123456789";
    env.sim.add_account("acct-own", own_key);
    key_secret(&env.client, &ns, "own-key", own_key).await;
    account(&env.client, &ns, "own", "own-key").await;
    let accounts: Api<Account> = Api::namespaced(env.client.clone(), &ns);
    wait_for("the Account status", T, || async {
        accounts.get("own").await.ok()?.status
    })
    .await;
    let clusters: Api<ClusterAccount> = Api::all(env.client.clone());
    let ready = |s: &AccountStatus| s.conditions.iter().any(|c| c.status == "True");
    let unwritten = clusters.get(&ca.name).await.expect("ClusterAccount");
    assert!(
        !unwritten.status.as_ref().is_some_and(ready),
        "this instance wrote it: {:?}",
        unwritten.status
    );

    env.halt().await;
    env.spawn_controller(|_| {}, |s| s.operator_namespace = ns.clone());
    wait_for("the ClusterAccount status", T, || async {
        let s = clusters.get(&ca.name).await.ok()?.status?;
        (ready(&s) && s.inboxes == Some(1)).then_some(())
    })
    .await;
    env.stop().await;
}

/// The credentials-in-use finalizer follows the live references: an admin removes the
/// finalizer of an Inbox (as people do when AgentSend is down) and deletes it, so it runs no
/// cleanup pass of its own; its key Secret, already being deleted, must not stay
/// `Terminating` for good (before, it did until the operator restarted, and with it the
/// namespace).
#[tokio::test]
async fn a_forced_inbox_deletion_releases_its_credentials() {
    let env = env_with(&[]).await;
    let ns = env.ns.name().to_string();
    let key = "sk_test_forced_0123456789";
    env.sim.add_account("acct-forced", key);
    key_secret(&env.client, &ns, "forced-key", key).await;
    let spec = InboxSpec {
        credentials: Some(Box::new(inbox_operator::api::inbox::CredentialsSpec {
            secret_ref: SecretKeyRef {
                name: "forced-key".into(),
                key: "apiKey".into(),
            },
        })),
        ..Default::default()
    };
    env.create_ready("forced", spec).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let marked = wait_for("the key Secret marked in use", T, || async {
        let s = secrets.get_opt("forced-key").await.ok().flatten()?;
        finalized(&s.metadata).then_some(())
    });
    marked.await;
    // The key Secret is deleted first: the finalizer holds it while the Inbox uses it.
    secrets
        .delete("forced-key", &DeleteParams::default())
        .await
        .unwrap();
    let held = secrets.get("forced-key").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some() && finalized(&held.metadata));
    env.delete_without_finalizers("forced").await;
    wait_for("the key Secret to go with its last user", T, || async {
        matches!(secrets.get_opt("forced-key").await, Ok(None)).then_some(())
    })
    .await;
    env.stop().await;
}
