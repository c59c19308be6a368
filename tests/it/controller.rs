//! The Inbox lifecycle against a real kube-apiserver + etcd and the AgentSend simulator.
//! Each test runs its own controller (scoped to its own namespace) and its own simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::wait_for;
use inbox_operator::api::common::SecretKeyRef;
use inbox_operator::api::inbox::{
    CredentialsSpec, DeletionPolicy, Inbox, InboxSpec, Reason, SecretSpec,
};
use inbox_operator::controller::DefaultKey;
use inbox_sim::Route;
use inbox_sim::{CreateInbox, InboxState};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::ctl::{ACCOUNT, Env, Ready, T, cond, data, ready, status_id};

#[tokio::test]
async fn create_binds_writes_secret_and_mirrors_status() {
    let env = Env::start().await;
    let i = env
        .create_ready(
            "support",
            InboxSpec {
                display_name: Some("Support Bot".into()),
                ..Default::default()
            },
        )
        .await;

    // Finalizer, binding annotation, no pending mark.
    assert!(i.finalizers().iter().any(|f| f == "agentsend.io/finalizer"));
    let id = status_id(&i);
    assert!(!id.is_empty());
    assert_eq!(i.annotations().get("agentsend.io/inbox-id"), Some(&id));
    assert!(!i.annotations().contains_key("agentsend.io/create-pending"));
    let st = i.status.clone().unwrap();
    assert_eq!(st.state.as_deref(), Some("active"));
    assert_eq!(st.display_name.as_deref(), Some("Support Bot"));
    assert_eq!(
        st.sends_remaining,
        Some(st.daily_send_limit.unwrap() - st.sends_today.unwrap())
    );
    assert_eq!(st.secret_name.as_deref(), Some("support"));
    for t in ["Reconciling", "Stalled"] {
        assert_eq!(cond(&i, t).unwrap().status, "False", "{t}");
    }

    // Exactly one inbox, created by one request.
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);
    assert_eq!(env.sim.request_count(Route::Create), 1);
    let remote = env.sim.inbox(&id).unwrap();
    assert_eq!(st.address.as_deref(), Some(remote.address.as_str()));

    // The Secret per the contract.
    let s = env.secret("support").await.expect("secret");
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    assert_eq!(data(&s, "address"), remote.address);
    assert_eq!(data(&s, "inboxId"), id);
    assert!(!s.data.as_ref().unwrap().contains_key("domainId"));
    let labels = s.labels();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("inbox-operator")
    );
    assert_eq!(
        labels.get("agentsend.io/inbox").map(String::as_str),
        Some("support")
    );
    let owner = &s.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Inbox", Some(true))
    );
    assert_eq!(Some(owner.uid.clone()), i.metadata.uid);

    // One event for a new Inbox (SecretWritten is for restores: see the test below).
    env.wait_event("Created").await;

    // Per-Inbox metrics use namespace and name only.
    let text = env.metrics.encode();
    assert!(
        text.contains(&format!(
            "inbox_operator_inbox_ready{{namespace=\"{}\",name=\"support\"}} 1",
            env.ns.name()
        )),
        "{text}"
    );
    assert!(!text.contains(&remote.address) && !text.contains(&id));
    env.stop().await;
}

/// Kubernetes names go up to 253 characters, label values only to 63: an Inbox with a long
/// name still gets its Secret, labelled with a shortened name plus hash, the full name in the
/// `agentsend.io/inbox-name` annotation, and the Secret is found again by that label.
#[tokio::test]
async fn long_inbox_name_gets_its_secret() {
    let env = Env::start().await;
    let name = format!("{}-end", "a-very-long-inbox-name".repeat(8));
    assert!(name.len() > 70 && name.len() <= 253);
    let i = env.create_ready(&name, InboxSpec::default()).await;
    let remote = env.sim.inbox(&status_id(&i)).expect("remote inbox");
    let s = wait_for("the Secret holds the address", T, || async {
        env.secret(&name)
            .await
            .filter(|s| data(s, "address") == remote.address)
    })
    .await;
    let label = s
        .labels()
        .get("agentsend.io/inbox")
        .cloned()
        .unwrap_or_default();
    assert!(
        label.len() <= 63 && label.starts_with(&name[..50]),
        "{label}"
    );
    assert_eq!(
        s.annotations().get("agentsend.io/inbox-name"),
        Some(&name),
        "the full name is annotated"
    );
    let by_label = env
        .secrets()
        .list(&kube::api::ListParams::default().labels(&format!("agentsend.io/inbox={label}")))
        .await
        .expect("list by label");
    assert_eq!(by_label.items.len(), 1, "the label selects the Secret");
    // The label is stable: no rewrite loop.
    let rv = s.resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.secret(&name).await.and_then(|s| s.resource_version()),
        rv
    );
    env.stop().await;
}

/// A label key the CRD's CEL rule lets through (its size check is approximate) but the API
/// server would refuse on the Secret: a prefix over 253 characters. The Inbox says so in its
/// Ready condition and no Secret is written; fixing the spec writes it.
#[tokio::test]
async fn secret_label_kubernetes_refuses_is_a_condition() {
    let env = Env::start().await;
    let prefix = vec!["p".repeat(63); 4].join("."); // 255 characters, each part valid
    let key = format!("{prefix}/team");
    let spec = InboxSpec {
        secret: Some(Box::new(SecretSpec {
            labels: Some(BTreeMap::from([(key, "care".into())])),
            ..Default::default()
        })),
        ..Default::default()
    };
    env.create("badlabel", spec).await;
    let i = env
        .wait_ready("badlabel", Ready::False(Reason::Rejected))
        .await;
    let msg = ready(&i).map(|c| c.message.clone()).unwrap_or_default();
    assert!(msg.contains("spec.secret.labels"), "{msg}");
    assert_eq!(cond(&i, "Stalled").map(|c| c.status.as_str()), Some("True"));
    assert!(env.secret("badlabel").await.is_none(), "no Secret written");
    env.inboxes()
        .patch(
            "badlabel",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"secret": {"labels": null}}})),
        )
        .await
        .expect("fix the spec");
    env.wait_ready("badlabel", Ready::True).await;
    assert!(env.secret("badlabel").await.is_some());
    env.stop().await;
}

#[tokio::test]
async fn custom_domain_address_lands_in_secret() {
    let env = Env::start().await;
    let spec = InboxSpec {
        address: Some("support".into()),
        domain_id: Some("dom_example".into()),
        secret: Some(Box::new(SecretSpec {
            name: Some("support-mail".into()),
            labels: Some(BTreeMap::from([("team".into(), "care".into())])),
            annotations: Some(BTreeMap::from([("note".into(), "x".into())])),
            ..Default::default()
        })),
        ..Default::default()
    };
    env.create_ready("care", spec).await;
    let s = env.secret("support-mail").await.expect("secret");
    assert_eq!(data(&s, "address"), "support@example.com");
    assert_eq!(data(&s, "domainId"), "dom_example");
    assert_eq!(s.labels().get("team").map(String::as_str), Some("care"));
    assert_eq!(s.annotations().get("note").map(String::as_str), Some("x"));
    env.stop().await;
}

/// `spec.secret.template` renders every field into extra keys; a template that does not render
/// is `Rejected` naming its key, and the Secret keeps what it had until the spec is fixed.
#[tokio::test]
async fn secret_template_renders_every_field_and_a_bad_one_writes_nothing() {
    let env = Env::start().await;
    let template = BTreeMap::from([
        (
            "SMTP_FROM".into(),
            "{{ displayName }} <{{ address }}>".into(),
        ),
        (
            "PARTS".into(),
            "{{ localPart }}|{{ domain }}|{{ inboxId }}".into(),
        ),
    ]);
    let spec = InboxSpec {
        address: Some("shaped".into()),
        domain_id: Some("dom_example".into()),
        display_name: Some("Care Team".into()),
        secret: Some(Box::new(SecretSpec {
            template: Some(template),
            ..Default::default()
        })),
        ..Default::default()
    };
    let i = env.create_ready("shaped", spec).await;
    let id = status_id(&i);
    let s = env.secret("shaped").await.expect("secret");
    assert_eq!(data(&s, "SMTP_FROM"), "Care Team <shaped@example.com>");
    assert_eq!(data(&s, "PARTS"), format!("shaped|example.com|{id}"));
    assert_eq!(data(&s, "address"), "shaped@example.com");

    let bad = json!({"spec": {"secret": {"template": {"BROKEN": "{{ adress }}"}}}});
    env.inboxes()
        .patch("shaped", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .expect("patch the template");
    let i = env
        .wait_ready("shaped", Ready::False(Reason::Rejected))
        .await;
    let msg = ready(&i).map(|c| c.message.clone()).unwrap_or_default();
    assert!(
        msg.contains("\"BROKEN\"") && msg.contains("localPart"),
        "{msg}"
    );
    let s = env.secret("shaped").await.expect("secret");
    assert!(!s.data.as_ref().is_some_and(|d| d.contains_key("BROKEN")));
    assert_eq!(data(&s, "SMTP_FROM"), "Care Team <shaped@example.com>");

    let fixed =
        json!({"spec": {"secret": {"template": {"BROKEN": null, "FIXED": "{{ address }}"}}}});
    env.inboxes()
        .patch("shaped", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .expect("fix the template");
    env.wait_ready("shaped", Ready::True).await;
    let s = env.secret("shaped").await.expect("secret");
    assert_eq!(data(&s, "FIXED"), "shaped@example.com");
    env.stop().await;
}

#[tokio::test]
async fn lost_create_response_recovers_without_second_inbox() {
    let env = Env::start().await;
    env.sim.drop_next_create_responses(1);
    let i = env
        .create_ready(
            "lost",
            InboxSpec {
                display_name: Some("Lost".into()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1, "exactly one inbox");
    assert_eq!(env.sim.request_count(Route::Create), 1, "no second create");
    assert!(
        env.sim.request_count(Route::List) >= 1,
        "recovery listed the account"
    );
    assert_eq!(env.sim.inboxes(ACCOUNT)[0].id, status_id(&i));
    env.stop().await;
}

/// Recovery looks up exactly the address it asked for: an inbox that already had that address,
/// or one that merely looks alike, is never bound, and so never deleted with the Inbox.
#[tokio::test]
async fn recovery_never_binds_an_inbox_it_did_not_create() {
    let env = Env::start().await;
    let bot = |address: Option<&str>| CreateInbox {
        address: address.map(Into::into),
        display_name: Some("Bot".into()),
        ..Default::default()
    };
    let taken = env
        .sim
        .insert_inbox(ACCOUNT, bot(Some("support@agentsend.io")))
        .unwrap();
    let lookalike = env.sim.insert_inbox(ACCOUNT, bot(None)).unwrap();
    for id in [&taken.id, &lookalike.id] {
        env.sim.update_inbox(id, |r| {
            r.created_at = Some("2026-01-01T00:00:00.000Z".into());
        });
    }
    // The first POST of each Inbox fails with a 503: its outcome is unknown, so each recovers.
    env.sim.fail_next(Route::Create, 2, 503);
    let spec = |address: Option<&str>| InboxSpec {
        address: address.map(Into::into),
        display_name: Some("Bot".into()),
        ..Default::default()
    };
    env.create("named", spec(Some("support@agentsend.io")))
        .await;
    env.create("random", spec(None)).await;
    let named = env
        .wait_ready("named", Ready::False(Reason::Rejected))
        .await;
    let msg = &ready(&named).unwrap().message;
    assert!(
        msg.contains(&taken.id) && msg.contains("spec.inboxId"),
        "{msg}"
    );
    let random = env.wait_ready("random", Ready::True).await;
    let made = status_id(&random);
    assert!(made != taken.id && made != lookalike.id);
    assert!(
        env.secret("named").await.is_none(),
        "no Secret for a refusal"
    );
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 3);

    for name in ["named", "random"] {
        env.inboxes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        env.wait_gone(name).await;
    }
    assert!(env.sim.inbox(&taken.id).is_some(), "not ours: kept");
    assert!(env.sim.inbox(&lookalike.id).is_some(), "not ours: kept");
    assert!(env.sim.inbox(&made).is_none(), "ours: deleted");
    env.stop().await;
}

/// A create that AgentSend commits after the client gave up never leaves a second inbox: the
/// retry names the same address, so the server refuses whichever of the two comes second.
#[tokio::test]
async fn a_late_commit_never_duplicates() {
    let env = Env::start().await;
    // The client gives up after 2 s; these creates commit 3 s after that.
    env.sim.commit_next_creates_late(2, Duration::from_secs(5));
    env.create("late-random", InboxSpec::default()).await;
    env.create(
        "late-named",
        InboxSpec {
            address: Some("late@agentsend.io".into()),
            ..Default::default()
        },
    )
    .await;
    let mut bound = Vec::new();
    for name in ["late-random", "late-named"] {
        let i = env.wait_ready(name, Ready::True).await;
        let s = env.secret(name).await.unwrap();
        assert_eq!(data(&s, "inboxId"), status_id(&i));
        bound.push(status_id(&i));
    }
    wait_for("both late commits reached the server", T, || async {
        (env.sim.late_commits_settled() == 2).then_some(())
    })
    .await;
    let mut ids: Vec<String> = env.sim.inboxes(ACCOUNT).into_iter().map(|r| r.id).collect();
    ids.sort();
    bound.sort();
    assert_eq!(ids, bound, "exactly one inbox per Inbox");
    env.stop().await;
}

/// A create interrupted by an earlier operator version (a timestamp mark: AgentSend chose the
/// address) is never bound on a guess: a human chooses.
#[tokio::test]
async fn ambiguous_recovery_stalls_with_creation_uncertain() {
    let env = Env::start().await;
    // Two unbound inboxes that both look like the interrupted create.
    for _ in 0..2 {
        env.sim
            .insert_inbox(
                ACCOUNT,
                CreateInbox {
                    display_name: Some("Twin".into()),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    let mut inbox = Inbox::new(
        "twin",
        InboxSpec {
            display_name: Some("Twin".into()),
            ..Default::default()
        },
    );
    let past = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(60))
        .unwrap();
    inbox.metadata.annotations = Some(BTreeMap::from([(
        "agentsend.io/create-pending".to_string(),
        past.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )]));
    env.inboxes()
        .create(&PostParams::default(), &inbox)
        .await
        .unwrap();
    let i = env
        .wait_ready("twin", Ready::False(Reason::CreationUncertain))
        .await;
    assert!(ready(&i).unwrap().message.contains("spec.inboxId"));
    assert_eq!(cond(&i, "Stalled").unwrap().status, "True");
    assert_eq!(
        env.sim.request_count(Route::Create),
        0,
        "never a blind create"
    );
    env.wait_event("CreationUncertain").await;
    env.stop().await;
}

#[tokio::test]
async fn owned_secret_is_restored_and_foreign_secret_untouched() {
    let env = Env::start().await;
    let i = env.create_ready("keep", InboxSpec::default()).await;
    let addr = i.status.unwrap().address.unwrap();

    // Deleted: restored promptly (watched).
    env.secrets()
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    let s = wait_for("secret recreated", Duration::from_secs(10), || async {
        env.secret("keep").await
    })
    .await;
    assert_eq!(data(&s, "address"), addr);
    env.wait_event("SecretWritten").await;

    // Edited: restored.
    let patch = json!({"data": {"address": base64("evil@example.com")}});
    env.secrets()
        .patch("keep", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let restored = wait_for("secret restored", Duration::from_secs(10), || async {
        env.secret("keep")
            .await
            .filter(|s| data(s, "address") == addr)
    })
    .await;
    // The operator decides from metadata alone: a digest of the data it wrote.
    let digest = restored.annotations().get("agentsend.io/data-digest");
    assert!(
        digest.is_some_and(|d| d.starts_with("sha256:")),
        "{digest:?}"
    );

    // A key removed: restored too.
    let patch = json!({"data": {"inboxId": null}});
    env.secrets()
        .patch("keep", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("removed key restored", Duration::from_secs(10), || async {
        env.secret("keep")
            .await
            .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("inboxId")))
    })
    .await;

    // A Secret of the requested name that we do not own is never modified.
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("theirs".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "address".to_string(),
            ByteString(b"mine@example.com".to_vec()),
        )])),
        ..Default::default()
    };
    env.secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.create(
        "clash",
        InboxSpec {
            secret: Some(Box::new(SecretSpec {
                name: Some("theirs".into()),
                ..Default::default()
            })),
            ..Default::default()
        },
    )
    .await;
    let i = env
        .wait_ready("clash", Ready::False(Reason::SecretConflict))
        .await;
    assert_eq!(cond(&i, "Stalled").unwrap().status, "True");
    let s = env.secret("theirs").await.unwrap();
    assert_eq!(data(&s, "address"), "mine@example.com");
    assert!(s.owner_references().is_empty());
    env.wait_event("SecretConflict").await;
    env.stop().await;
}

fn base64(s: &str) -> String {
    serde_json::to_value(ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn renaming_the_secret_moves_it() {
    let env = Env::start().await;
    env.create_ready("mover", InboxSpec::default()).await;
    let patch = json!({"spec": {"secret": {"name": "moved"}}});
    env.inboxes()
        .patch("mover", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let i = env.wait_ready("mover", Ready::True).await;
    assert_eq!(i.status.unwrap().secret_name.as_deref(), Some("moved"));
    assert!(env.secret("moved").await.is_some());
    wait_for("old secret removed", T, || async {
        env.secret("mover").await.is_none().then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn counters_refresh_and_send_limit_is_flagged() {
    let env = Env::start().await;
    let i = env.create_ready("busy", InboxSpec::default()).await;
    let id = status_id(&i);
    env.sim.update_inbox(&id, |r| {
        r.daily_send_limit = Some(50);
        r.sends_today = Some(50);
        r.total_sent = Some(500);
        r.bounce_count = Some(3);
        r.complaint_count = Some(1);
    });
    let api = env.inboxes();
    let i = wait_for("counters mirrored", T, || async {
        let i = api.get("busy").await.ok()?;
        (i.status.as_ref()?.sends_today == Some(50)).then_some(i)
    })
    .await;
    let st = i.status.clone().unwrap();
    assert_eq!(
        (
            st.sends_remaining,
            st.total_sent,
            st.bounce_count,
            st.complaint_count
        ),
        (Some(0), Some(500), Some(3), Some(1))
    );
    assert_eq!(cond(&i, "SendLimitReached").unwrap().status, "True");
    assert_eq!(
        ready(&i).unwrap().status,
        "True",
        "Ready is unaffected by the send limit"
    );
    env.wait_event("SendLimitReached").await;
    // Counters came from list scans, not per-inbox GETs.
    assert_eq!(env.sim.request_count(Route::Get), 0);
    env.stop().await;
}

/// While the operator keeps creating inboxes in the account (a bulk apply that never ends),
/// the counter sync skips up to two scans in a row, never three: an existing Inbox's new
/// counters still reach its status, within three sync intervals, however long the creates go
/// on.
#[tokio::test]
async fn counters_are_mirrored_while_creates_never_stop() {
    let env = Env::start().await;
    let id = status_id(&env.create_ready("steady", InboxSpec::default()).await);
    let api = env.inboxes();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let creator = tokio::spawn({
        let api = api.clone();
        async move {
            let mut n = 0;
            // One new Inbox every 200 ms until told to stop: creates are always in flight.
            while !*stopped.borrow_and_update() {
                let spec = InboxSpec::default();
                let _ = api
                    .create(
                        &PostParams::default(),
                        &Inbox::new(&format!("new-{n}"), spec),
                    )
                    .await;
                n += 1;
                // Paced, and woken at once when told to stop.
                let _ = tokio::time::timeout(Duration::from_millis(200), stopped.changed()).await;
            }
        }
    });
    env.sim.update_inbox(&id, |r| r.sends_today = Some(9));
    wait_for("counters mirrored during creates", T, || async {
        let i = api.get("steady").await.ok()?;
        (i.status.as_ref()?.sends_today == Some(9)).then_some(())
    })
    .await;
    let _ = stop.send(true);
    creator.await.expect("creator");
    assert!(
        env.sim.request_count(Route::Create) > 5,
        "the operator was creating inboxes all along"
    );
    env.stop().await;
}

/// `agentsend.io/refresh` set on 50 Inboxes at once refreshes all their counters within
/// seconds with one list request (ceil(50/100)), no GET per Inbox: the periodic sync is an
/// hour away, so only the refresh can have brought the new counters.
#[tokio::test]
async fn refresh_on_demand_folds_into_one_scan() {
    // A starved machine may split the requests into a few windows (see below): their scans
    // are let 2 s apart here, not the production 30 s, so waiting stays within the timeout.
    let env = Env::start_with(|s| {
        s.sync_interval = Duration::from_secs(3600);
        s.refresh_min_interval = Duration::from_secs(2);
    })
    .await;
    let names = env.create_many("fresh", 50).await;
    let mut ids = Vec::new();
    for name in &names {
        ids.push(status_id(&env.wait_ready(name, Ready::True).await));
    }
    for id in &ids {
        env.sim.update_inbox(id, |r| r.sends_today = Some(42));
    }
    env.sim.reset_counters();
    let api = env.inboxes();
    let patch = json!({"metadata": {"annotations": {"agentsend.io/refresh": "2026-11-28T10:00"}}});
    let started = std::time::Instant::now();
    futures::future::join_all(names.iter().map(|n| {
        let api = api.clone();
        let patch = patch.clone();
        async move {
            api.patch(n, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotate")
        }
    }))
    .await;
    for name in &names {
        wait_for(&format!("{name} refreshed"), T, || async {
            let st = api.get(name).await.ok()?.status?;
            (st.sends_today == Some(42)
                && st.observed_refresh.as_deref() == Some("2026-11-28T10:00"))
            .then_some(())
        })
        .await;
    }
    println!("50 Inboxes refreshed in {:?}", started.elapsed());
    // One scan serves every request that came within a quiet window of the one before
    // (refresh::QUIET): ceil(50/100) = 1 list request on a quiet machine. A starved machine
    // may split the 50 passes into a few windows; one list per Inbox would be 50.
    let lists = env.sim.request_count(Route::List);
    assert!(
        (1..=3).contains(&lists),
        "50 refreshes folded into one scan per quiet window, not one per Inbox: {lists} list requests"
    );
    assert_eq!(env.sim.request_count(Route::Get), 0, "no GET per Inbox");
    env.stop().await;
}

#[tokio::test]
async fn vanished_inbox_is_recreated_and_suspension_is_surfaced() {
    let env = Env::start().await;
    let i = env.create_ready("drift", InboxSpec::default()).await;
    let old = status_id(&i);
    let address = i.status.as_ref().unwrap().address.clone().unwrap();

    env.sim
        .update_inbox(&old, |r| r.status = InboxState::Suspended);
    env.wait_ready("drift", Ready::False(Reason::InboxSuspended))
        .await;
    env.wait_event("Suspended").await;
    env.sim
        .update_inbox(&old, |r| r.status = InboxState::Active);
    env.wait_ready("drift", Ready::True).await;

    assert!(env.sim.delete_out_of_band(&old));
    let api = env.inboxes();
    let i = wait_for("recreated", T, || async {
        let i = api.get("drift").await.ok()?;
        let id = status_id(&i);
        (id != old && !id.is_empty() && ready(&i)?.status == "True").then_some(i)
    })
    .await;
    let new = status_id(&i);
    assert_eq!(i.annotations().get("agentsend.io/inbox-id"), Some(&new));
    env.wait_event("Recreated").await;
    let s = env.secret("drift").await.unwrap();
    assert_eq!(data(&s, "inboxId"), new);
    assert_eq!(
        data(&s, "address"),
        address,
        "re-created with the address it had"
    );
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);
    env.stop().await;
}

/// Immutable fields: the server refuses changes with the CRD's CEL rule message (nothing reaches
/// the controller); the one change CEL lets through, a first `spec.inboxId` that names another
/// inbox than the bound one, is held by the controller without API calls.
#[tokio::test]
async fn immutable_fields_are_held_without_api_calls() {
    let env = Env::start().await;
    let bound = env
        .create_ready(
            "fixed",
            InboxSpec {
                display_name: Some("A".into()),
                ..Default::default()
            },
        )
        .await;
    let creates = env.sim.request_count(Route::Create);
    let deletes = env.sim.request_count(Route::Delete);

    for (patch, field) in [
        (json!({"spec": {"displayName": "B"}}), "displayName"),
        (json!({"spec": {"address": "someone-else"}}), "address"),
        (json!({"spec": {"domainId": "dom_example"}}), "domainId"),
    ] {
        let refused = env
            .inboxes()
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("the CEL rule refuses the change");
        assert!(
            refused
                .to_string()
                .contains(&format!("{field} is immutable")),
            "{refused}"
        );
    }

    // Pinning the bound ID is allowed and changes nothing.
    let id = status_id(&bound);
    let patch = json!({"spec": {"inboxId": id}});
    env.inboxes()
        .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_ready("fixed", Ready::True).await;

    // A first inboxId naming another inbox: the server accepts it, the controller holds it.
    env.create_ready("moved", InboxSpec::default()).await;
    let patch = json!({"spec": {"inboxId": "ibx_not_the_bound_one"}});
    env.inboxes()
        .patch("moved", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let i = env
        .wait_ready("moved", Ready::False(Reason::ImmutableFieldChanged))
        .await;
    assert!(
        ready(&i).unwrap().message.contains("inboxId"),
        "{}",
        ready(&i).unwrap().message
    );
    assert_eq!(cond(&i, "Stalled").unwrap().status, "True");
    assert_eq!(env.sim.request_count(Route::Create), creates + 1);
    assert_eq!(env.sim.request_count(Route::Delete), deletes);
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn adoption_binds_existing_and_refuses_bad_ids() {
    let env = Env::start().await;
    let existing = env
        .sim
        .insert_inbox(
            ACCOUNT,
            CreateInbox {
                address: Some("sales".into()),
                domain_id: Some("dom_example".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let i = env
        .create_ready(
            "adopt",
            InboxSpec {
                inbox_id: Some(existing.id.clone()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        i.status.unwrap().address.as_deref(),
        Some("sales@example.com")
    );
    env.wait_event("Adopted").await;
    assert_eq!(env.sim.request_count(Route::Create), 0);

    // Same inbox claimed again: refused.
    env.create(
        "thief",
        InboxSpec {
            inbox_id: Some(existing.id.clone()),
            ..Default::default()
        },
    )
    .await;
    let t = env
        .wait_ready("thief", Ready::False(Reason::Rejected))
        .await;
    assert!(ready(&t).unwrap().message.contains("already bound"));

    // Identity mismatch: refused.
    let other = env
        .sim
        .insert_inbox(ACCOUNT, CreateInbox::default())
        .unwrap();
    env.create(
        "mismatch",
        InboxSpec {
            inbox_id: Some(other.id),
            address: Some("nope@agentsend.io".into()),
            ..Default::default()
        },
    )
    .await;
    env.wait_ready("mismatch", Ready::False(Reason::Rejected))
        .await;

    // Unknown ID: clear condition, nothing created.
    env.create(
        "ghost",
        InboxSpec {
            inbox_id: Some("inb_does_not_exist".into()),
            ..Default::default()
        },
    )
    .await;
    env.wait_ready("ghost", Ready::False(Reason::InboxNotFound))
        .await;
    assert_eq!(env.sim.request_count(Route::Create), 0);
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn deletion_policies() {
    let env = Env::start().await;
    env.create("gone", InboxSpec::default()).await;
    env.create(
        "kept",
        InboxSpec {
            deletion_policy: Some(DeletionPolicy::Orphan),
            ..Default::default()
        },
    )
    .await;
    let gone = env.wait_ready("gone", Ready::True).await;
    let kept = env.wait_ready("kept", Ready::True).await;

    env.inboxes()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    env.inboxes()
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("gone").await;
    env.wait_gone("kept").await;
    assert!(
        env.sim.inbox(&status_id(&gone)).is_none(),
        "Delete removes the AgentSend inbox"
    );
    assert!(
        env.sim.inbox(&status_id(&kept)).is_some(),
        "Orphan leaves it"
    );
    assert!(env.secret("gone").await.is_none());
    assert!(env.secret("kept").await.is_none());
    env.wait_event("Deleted").await;
    env.wait_event("Orphaned").await;
    let text = env.metrics.encode();
    assert!(!text.contains("name=\"gone\""), "series removed");
    env.stop().await;
}

/// The namespace annotation `agentsend.io/default-deletion-policy: Orphan` applies to the
/// Inboxes that do not set `spec.deletionPolicy` (their AgentSend inbox outlives them); an
/// Inbox's own field wins; status shows which applied, and follows the annotation (watched).
#[tokio::test]
async fn namespace_default_deletion_policy() {
    use inbox_operator::api::inbox::DeletionPolicySource;
    use k8s_openapi::api::core::v1::Namespace;
    let env = Env::start().await;
    let defaulted = env.create_ready("defaulted", InboxSpec::default()).await;
    let explicit = env
        .create_ready(
            "explicit",
            InboxSpec {
                deletion_policy: Some(DeletionPolicy::Delete),
                ..Default::default()
            },
        )
        .await;
    let shown = |i: &Inbox| {
        let st = i.status.clone().unwrap_or_default();
        (st.deletion_policy, st.deletion_policy_source)
    };
    assert_eq!(
        shown(&defaulted),
        (
            Some(DeletionPolicy::Delete),
            Some(DeletionPolicySource::Default)
        )
    );
    assert_eq!(
        shown(&explicit),
        (
            Some(DeletionPolicy::Delete),
            Some(DeletionPolicySource::Spec)
        )
    );

    let namespaces: kube::Api<Namespace> = kube::Api::all(env.client.clone());
    let patch =
        json!({"metadata": {"annotations": {"agentsend.io/default-deletion-policy": "Orphan"}}});
    namespaces
        .patch(
            env.ns.name(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let api = env.inboxes();
    wait_for("the namespace default shown", T, || async {
        let i = api.get("defaulted").await.ok()?;
        (shown(&i)
            == (
                Some(DeletionPolicy::Orphan),
                Some(DeletionPolicySource::Namespace),
            ))
            .then_some(())
    })
    .await;
    let i = api.get("explicit").await.unwrap();
    assert_eq!(
        shown(&i),
        (
            Some(DeletionPolicy::Delete),
            Some(DeletionPolicySource::Spec)
        ),
        "the Inbox's own field wins"
    );

    for name in ["defaulted", "explicit"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    env.wait_gone("defaulted").await;
    env.wait_gone("explicit").await;
    assert!(
        env.sim.inbox(&status_id(&defaulted)).is_some(),
        "the namespace default Orphan keeps the AgentSend inbox"
    );
    assert!(
        env.sim.inbox(&status_id(&explicit)).is_none(),
        "deletionPolicy: Delete on the Inbox deletes it"
    );
    env.stop().await;
}

/// `managementPolicy: Observe` never POSTs or DELETEs, on any path: binding by address (an
/// exact lookup) and by `spec.inboxId`, a missing inbox (`InboxNotFound`, nothing created),
/// an out-of-band deletion (not re-created), and the Inbox's deletion, even with
/// `deletionPolicy: Delete` (only released). The address still reaches the Secret.
#[tokio::test]
async fn observe_only_never_creates_or_deletes() {
    use inbox_operator::api::inbox::ManagementPolicy;
    let env = Env::start().await;
    let existing = |address: &str| {
        env.sim
            .insert_inbox(
                ACCOUNT,
                CreateInbox {
                    address: Some(address.into()),
                    ..Default::default()
                },
            )
            .expect("inbox")
    };
    let by_address = existing("watched@agentsend.io");
    let by_id = existing("pinned@agentsend.io");
    let observe = |f: &dyn Fn(&mut InboxSpec)| {
        let mut spec = InboxSpec {
            management_policy: ManagementPolicy::Observe,
            deletion_policy: Some(DeletionPolicy::Delete),
            ..Default::default()
        };
        f(&mut spec);
        spec
    };
    let i = env
        .create_ready(
            "watched",
            observe(&|s| s.address = Some("watched@agentsend.io".into())),
        )
        .await;
    assert_eq!(status_id(&i), by_address.id);
    let secret = env.secret("watched").await.expect("Secret");
    assert_eq!(data(&secret, "address"), "watched@agentsend.io");
    let i = env
        .create_ready("pinned", observe(&|s| s.inbox_id = Some(by_id.id.clone())))
        .await;
    assert_eq!(status_id(&i), by_id.id);
    env.create(
        "missing",
        observe(&|s| s.address = Some("nobody@agentsend.io".into())),
    )
    .await;
    env.wait_ready("missing", Ready::False(Reason::InboxNotFound))
        .await;

    // Deleted out of band: reported, never re-created.
    env.sim.delete_out_of_band(&by_address.id);
    let i = env
        .wait_ready("watched", Ready::False(Reason::InboxNotFound))
        .await;
    assert_eq!(
        status_id(&i),
        by_address.id,
        "still bound to what it observed"
    );

    for name in ["watched", "pinned", "missing"] {
        env.inboxes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in ["watched", "pinned", "missing"] {
        env.wait_gone(name).await;
    }
    assert!(env.sim.inbox(&by_id.id).is_some(), "deletion only releases");
    assert!(env.secret("pinned").await.is_none(), "its Secret goes");
    assert_eq!(env.sim.request_count(Route::Create), 0, "no POST");
    assert_eq!(env.sim.request_count(Route::Delete), 0, "no DELETE");
    env.stop().await;
}

#[tokio::test]
async fn rejected_spec_is_not_retried_and_deletes_cleanly() {
    let env = Env::start().await;
    env.create(
        "bad",
        InboxSpec {
            address: Some("dup".into()),
            domain_id: Some("dom_unknown".into()),
            ..Default::default()
        },
    )
    .await;
    let i = env.wait_ready("bad", Ready::False(Reason::Rejected)).await;
    assert!(
        ready(&i).unwrap().message.contains("422"),
        "{}",
        ready(&i).unwrap().message
    );
    assert!(!i.annotations().contains_key("agentsend.io/create-pending"));
    env.wait_event("Rejected").await;
    let creates = env.sim.request_count(Route::Create);
    // Several sync intervals pass: no retry of the same spec.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.sim.request_count(Route::Create), creates);
    env.inboxes()
        .delete("bad", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("bad").await;
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 0);
    env.stop().await;
}

#[tokio::test]
async fn taken_address_is_rejected_with_the_api_message() {
    let env = Env::start().await;
    env.create_ready(
        "first",
        InboxSpec {
            address: Some("shared@agentsend.io".into()),
            ..Default::default()
        },
    )
    .await;
    env.create(
        "second",
        InboxSpec {
            address: Some("shared@agentsend.io".into()),
            ..Default::default()
        },
    )
    .await;
    let i = env
        .wait_ready("second", Ready::False(Reason::Rejected))
        .await;
    let msg = &ready(&i).unwrap().message;
    assert!(msg.contains("already belongs to inbox"), "{msg}");
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);

    // Held by another account: the API's 409 message, and nothing listed as ours.
    env.sim.add_account("acct-other", "sk_other");
    env.sim
        .insert_inbox(
            "acct-other",
            CreateInbox {
                address: Some("theirs@agentsend.io".into()),
                ..Default::default()
            },
        )
        .unwrap();
    env.create(
        "third",
        InboxSpec {
            address: Some("theirs@agentsend.io".into()),
            ..Default::default()
        },
    )
    .await;
    let i = env
        .wait_ready("third", Ready::False(Reason::Rejected))
        .await;
    let msg = &ready(&i).unwrap().message;
    assert!(
        msg.contains("409") && msg.contains("not in this AgentSend account"),
        "{msg}"
    );
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn pause_stops_calls_and_holds_deletion() {
    let env = Env::start().await;
    let i = env.create_ready("nap", InboxSpec::default()).await;
    let id = status_id(&i);
    let patch = json!({"metadata": {"annotations": {"agentsend.io/paused": "true"}}});
    env.inboxes()
        .patch("nap", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let i = env.wait_ready("nap", Ready::False(Reason::Paused)).await;
    assert_eq!(cond(&i, "Stalled").unwrap().status, "False");
    assert_eq!(cond(&i, "Reconciling").unwrap().status, "False");

    // While paused: no Secret writes.
    env.secrets()
        .delete("nap", &DeleteParams::default())
        .await
        .unwrap();
    // Deletion waits: the Inbox stays (terminating) and the AgentSend inbox is kept.
    env.inboxes()
        .delete("nap", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let i = env
        .inboxes()
        .get("nap")
        .await
        .expect("still there while paused");
    assert!(i.metadata.deletion_timestamp.is_some());
    assert!(env.sim.inbox(&id).is_some());
    assert!(
        env.secret("nap").await.is_none(),
        "no Secret write while paused"
    );
    assert_eq!(env.sim.request_count(Route::Delete), 0);

    // Unpause: deletion completes.
    let patch = json!({"metadata": {"annotations": {"agentsend.io/paused": null}}});
    env.inboxes()
        .patch("nap", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_gone("nap").await;
    assert!(env.sim.inbox(&id).is_none());
    env.stop().await;
}

/// Another controller's finalizer (an archiver exporting the mail) holds the AgentSend delete:
/// `Deleting` names it and nothing is deleted; once it is removed the inbox is deleted.
#[tokio::test]
async fn deletion_waits_for_foreign_finalizers() {
    let env = Env::start().await;
    let i = env.create_ready("archived", InboxSpec::default()).await;
    let id = status_id(&i);
    let archiver = "example.com/archive-mail";
    let mut finalizers = i.finalizers().to_vec();
    finalizers.push(archiver.to_string());
    let patch = json!({"metadata": {"finalizers": finalizers}});
    env.inboxes()
        .patch("archived", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.inboxes()
        .delete("archived", &DeleteParams::default())
        .await
        .unwrap();
    let i = env
        .wait_ready("archived", Ready::False(Reason::Deleting))
        .await;
    let message = &ready(&i).unwrap().message;
    assert!(message.contains(archiver), "{message}");
    // The condition is written by the pass that decided to wait: nothing was deleted.
    assert_eq!(env.sim.request_count(Route::Delete), 0);
    assert!(env.sim.inbox(&id).is_some());
    assert!(
        env.secret("archived").await.is_some(),
        "the Secret stays too"
    );

    // The archiver is done: its finalizer goes, and so does the inbox.
    let ours: Vec<String> = i
        .finalizers()
        .iter()
        .filter(|f| *f != archiver)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": ours}});
    env.inboxes()
        .patch("archived", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.wait_gone("archived").await;
    assert!(env.sim.inbox(&id).is_none());
    assert_eq!(env.sim.request_count(Route::Delete), 1);
    assert!(env.secret("archived").await.is_none());
    env.stop().await;
}

/// An Inbox that reads its key from the namespace Secret `team-key` (key `apiKey`).
fn team_key_spec() -> InboxSpec {
    InboxSpec {
        credentials: Some(Box::new(CredentialsSpec {
            secret_ref: SecretKeyRef {
                name: "team-key".into(),
                key: "apiKey".into(),
            },
        })),
        ..Default::default()
    }
}

#[tokio::test]
async fn per_namespace_credentials_missing_invalid_and_rotated() {
    let env = Env::start_with(|s| s.default_key = DefaultKey::None).await;
    env.sim.add_account("acct-team", "sk_team_old");
    let spec = team_key_spec();
    env.create("team", spec).await;
    env.wait_ready("team", Ready::False(Reason::CredentialsMissing))
        .await;

    env.secrets()
        .create(
            &PostParams::default(),
            &crate::ctl::key_secret("team-key", "sk_team_old"),
        )
        .await
        .unwrap();
    let i = env.wait_ready("team", Ready::True).await;
    assert_eq!(env.sim.inboxes("acct-team").len(), 1);
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 0);

    // Key revoked: CredentialsInvalid (the next scan notices).
    env.sim.revoke_key("sk_team_old");
    let bad = env
        .wait_ready("team", Ready::False(Reason::CredentialsInvalid))
        .await;
    assert!(
        !serde_json::to_string(&bad.status)
            .unwrap()
            .contains("sk_team_old")
    );
    env.wait_event("CredentialsInvalid").await;

    // Rotated: picked up without a restart (the Secret is watched).
    env.sim.add_account("acct-team", "sk_team_new");
    env.secrets()
        .replace(
            "team-key",
            &PostParams::default(),
            &crate::ctl::key_secret("team-key", "sk_team_new"),
        )
        .await
        .unwrap();
    let j = env.wait_ready("team", Ready::True).await;
    assert_eq!(status_id(&i), status_id(&j));

    // Namespace teardown order: the credentials Secret goes first, the Inbox's cleanup must
    // still delete the AgentSend inbox (with the key last used) instead of stalling.
    env.secrets()
        .delete("team-key", &DeleteParams::default())
        .await
        .unwrap();
    env.inboxes()
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("team").await;
    assert!(
        env.sim.inbox(&status_id(&j)).is_none(),
        "deleted in AgentSend"
    );
    env.stop().await;
}

#[tokio::test]
async fn transient_errors_and_rate_limits_are_retried_with_bounded_requests() {
    let env = Env::start().await;
    env.sim.fail_next(Route::Create, 2, 503);
    env.create_ready("flaky", InboxSpec::default()).await;
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);
    assert!(env.sim.request_count(Route::Create) <= 3);

    // 429 with Retry-After: nothing is sent to the account before it elapses.
    env.sim.reset_counters();
    env.sim
        .rate_limit_for(ACCOUNT, Duration::from_secs(3), false);
    env.create_ready("limited", InboxSpec::default()).await;
    let reqs = env.sim.requests();
    let first_429 = reqs
        .iter()
        .find(|r| r.status == 429)
        .expect("a 429 was answered")
        .at;
    let after: Vec<_> = reqs.iter().filter(|r| r.at > first_429).collect();
    assert!(!after.is_empty());
    // Requests already in flight when the 429 was sent may land within a few milliseconds.
    let early = after
        .iter()
        .filter(|r| {
            let d = r.at.duration_since(first_429);
            d > Duration::from_millis(200) && d < Duration::from_millis(2500)
        })
        .count();
    assert_eq!(
        early, 0,
        "requests sent before Retry-After elapsed: {early}"
    );
    assert!(reqs.len() < 20, "bounded: {} requests", reqs.len());
    env.stop().await;
}

/// "Delete the namespace" — the usual teardown — finishes: every Inbox goes, its AgentSend inbox
/// is deleted or kept as its policy says (also when the namespace's credentials Secret is
/// deleted in the same sweep), and nothing is left Terminating.
#[tokio::test]
async fn deleting_the_namespace_honours_each_deletion_policy() {
    let env = Env::start().await;
    env.sim.add_account("acct-team", "sk_team_ns");
    env.secrets()
        .create(
            &PostParams::default(),
            &crate::ctl::key_secret("team-key", "sk_team_ns"),
        )
        .await
        .unwrap();
    let orphan = InboxSpec {
        deletion_policy: Some(DeletionPolicy::Orphan),
        ..Default::default()
    };
    let team = team_key_spec();
    for (name, spec) in [
        ("deleted-1", InboxSpec::default()),
        ("deleted-2", InboxSpec::default()),
        ("kept", orphan),
        ("team", team),
    ] {
        env.create(name, spec).await;
    }
    let mut ids = BTreeMap::new();
    for name in ["deleted-1", "deleted-2", "kept", "team"] {
        ids.insert(name, status_id(&env.wait_ready(name, Ready::True).await));
    }

    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(env.client.clone());
    namespaces
        .delete(env.ns.name(), &DeleteParams::default())
        .await
        .unwrap();
    // The namespace controller of kube-controller-manager retries a namespace whose content
    // still has finalizers after a delay of its own, and serves every test's namespace with
    // a few workers: on a starved machine (load 16) 90 s was once not enough. What is
    // asserted is the outcome per deletion policy, not the controller-manager's pace.
    wait_for(
        "the namespace to be gone",
        Duration::from_secs(180),
        || async { matches!(namespaces.get_opt(env.ns.name()).await, Ok(None)).then_some(()) },
    )
    .await;

    assert!(
        env.sim.inbox(&ids["kept"]).is_some(),
        "Orphan keeps the inbox"
    );
    for name in ["deleted-1", "deleted-2", "team"] {
        assert!(
            env.sim.inbox(&ids[name]).is_none(),
            "{name}: Delete deletes"
        );
    }
    assert_eq!(env.sim.inboxes(ACCOUNT).len(), 1);
    assert_eq!(env.sim.inboxes("acct-team").len(), 0);
    env.stop().await;
}

/// The Secret's controller ownerReference is a real one: with the operator gone and the
/// finalizer removed by hand, the garbage collector deletes the Secret with its Inbox.
#[tokio::test]
async fn owned_secret_is_garbage_collected_with_its_inbox() {
    let env = Env::start().await;
    env.create_ready("collected", InboxSpec::default()).await;
    assert!(env.secret("collected").await.is_some());
    env.halt().await;

    env.delete_without_finalizers("collected").await;
    wait_for("the Secret to be collected", T, || async {
        env.secret("collected").await.is_none().then_some(())
    })
    .await;
    env.stop().await;
}

/// A created Inbox reaches Ready with at most 4 writes to Inboxes and Secrets — finalizer and
/// pending mark in one patch, the binding (clearing the mark), the Secret, the status — and
/// one event (`Created`). Counted by watching both objects from before the create; after Ready
/// a bounded window (two sync intervals) lets any late write show up.
#[tokio::test]
async fn a_created_inbox_costs_four_writes_and_one_event() {
    let env = Env::start().await;
    let (inbox_writes, inbox_watch) = count_writes(&env, "lean");
    let (secret_writes, secret_watch) = count_secret_writes(&env, "lean");
    env.create("lean", InboxSpec::default()).await;
    env.wait_ready("lean", Ready::True).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    inbox_watch.abort();
    secret_watch.abort();
    let inbox = inbox_writes.load(std::sync::atomic::Ordering::SeqCst);
    let secret = secret_writes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(secret, 1, "the Secret is written once");
    assert!(
        inbox + secret <= 4,
        "{inbox} Inbox writes + {secret} Secret writes"
    );
    assert_eq!(env.events("Created").await.len(), 1);
    assert!(
        env.events("SecretWritten").await.is_empty(),
        "no second event on the happy path"
    );
    env.stop().await;
}

/// Counts the writes to one Inbox (each new resourceVersion after the first seen) while it is
/// watched.
fn count_writes(
    env: &Env,
    name: &str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    count_versions(env.inboxes(), name, false)
}

/// Counts the writes to one Secret, its creation included, while it is watched.
fn count_secret_writes(
    env: &Env,
    name: &str,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    count_versions(env.secrets(), name, true)
}

/// Counts the resourceVersions of the object `name` that a watch of `api` sees (the first
/// one only with `count_first`).
fn count_versions<K>(
    api: kube::Api<K>,
    name: &str,
    count_first: bool,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = writes.clone();
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, cfg).applied_objects();
    let task = tokio::spawn(async move {
        let mut last: Option<Option<String>> = None;
        futures::pin_mut!(stream);
        while let Some(Ok(o)) = stream.next().await {
            let version = o.meta().resource_version.clone();
            let new = last.as_ref() != Some(&version);
            if new && (last.is_some() || count_first) {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            last = Some(version);
        }
    });
    (writes, task)
}

/// A wrong key in a credentials Secret costs a handful of creates, not one per pass: the pass
/// is not restarted by its own writes (pending mark, Creating, CredentialsInvalid). Fixing
/// the key resumes at once.
#[tokio::test]
async fn a_bad_key_never_loops_creates() {
    let env = Env::start_with(|s| s.default_key = DefaultKey::None).await;
    env.secrets()
        .create(
            &PostParams::default(),
            &crate::ctl::key_secret("bad-key", "sk_wrong"),
        )
        .await
        .unwrap();
    let spec = InboxSpec {
        credentials: Some(Box::new(CredentialsSpec {
            secret_ref: SecretKeyRef {
                name: "bad-key".into(),
                key: "apiKey".into(),
            },
        })),
        ..Default::default()
    };
    let (writes, watch) = count_writes(&env, "badkey");
    env.create("badkey", spec).await;
    env.wait_ready("badkey", Ready::False(Reason::CredentialsInvalid))
        .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let posts = env.sim.request_count(Route::Create);
    let written = writes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(posts <= 3, "{posts} creates with a bad key in 15 s");
    assert!(written <= 8, "{written} writes to the Inbox in 15 s");
    watch.abort();

    env.sim.add_account("acct-fixed", "sk_fixed");
    env.secrets()
        .replace(
            "bad-key",
            &PostParams::default(),
            &crate::ctl::key_secret("bad-key", "sk_fixed"),
        )
        .await
        .unwrap();
    env.wait_ready("badkey", Ready::True).await;
    assert_eq!(env.sim.inboxes("acct-fixed").len(), 1);
    env.stop().await;
}

/// A deletion that keeps failing (503) backs off: bounded DELETEs and status writes, the
/// finalizer stays, and the deletion finishes once the API is back.
#[tokio::test]
async fn a_failing_deletion_backs_off() {
    let env = Env::start().await;
    let i = env.create_ready("stuck", InboxSpec::default()).await;
    let id = status_id(&i);
    env.sim.reset_counters();
    env.sim.fail_next(Route::Delete, 10_000, 503);
    let (writes, watch) = count_writes(&env, "stuck");
    env.inboxes()
        .delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let deletes = env.sim.request_count(Route::Delete);
    let written = writes.load(std::sync::atomic::Ordering::SeqCst);
    // ~5 attempts in 15 s (1 s doubling), each with the client's own retries.
    assert!(deletes <= 6 * 4, "{deletes} DELETE requests in 15 s");
    assert!(written <= 6, "{written} writes to the Inbox in 15 s");
    assert!(env.inboxes().get_opt("stuck").await.unwrap().is_some());
    watch.abort();
    env.sim.clear_faults();
    // The next attempt follows the backoff (up to 32 s by now).
    let api = env.inboxes();
    wait_for("stuck deleted", Duration::from_secs(60), || {
        let api = api.clone();
        async move { matches!(api.get_opt("stuck").await, Ok(None)).then_some(()) }
    })
    .await;
    assert!(env.sim.inbox(&id).is_none());
    env.stop().await;
}

/// "Orphan, delete, re-create with spec.inboxId" adopts at once (the deleted Inbox's binding
/// is released with it), and an adoption refused because another Inbox owned the inbox is
/// looked at again as soon as that owner goes.
#[tokio::test]
async fn orphan_delete_and_readopt_at_once() {
    let env = Env::start().await;
    env.create(
        "first",
        InboxSpec {
            deletion_policy: Some(DeletionPolicy::Orphan),
            ..Default::default()
        },
    )
    .await;
    let id = status_id(&env.wait_ready("first", Ready::True).await);
    env.inboxes()
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("first").await;
    let adopt = InboxSpec {
        inbox_id: Some(id.clone()),
        ..Default::default()
    };
    env.create("second", adopt.clone()).await;
    let second = env.wait_ready("second", Ready::True).await;
    assert_eq!(status_id(&second), id);

    // A third claimant is refused, naming the owner; when the owner goes, it adopts.
    env.create("third", adopt).await;
    let t = env
        .wait_ready("third", Ready::False(Reason::Rejected))
        .await;
    let msg = &ready(&t).unwrap().message;
    assert!(msg.contains(&format!("{}/second", env.ns.name())), "{msg}");
    let orphan = json!({"spec": {"deletionPolicy": "Orphan"}});
    env.inboxes()
        .patch("second", &PatchParams::default(), &Patch::Merge(&orphan))
        .await
        .unwrap();
    env.wait_ready("second", Ready::True).await;
    let started = std::time::Instant::now();
    env.inboxes()
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_ready("third", Ready::True).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "re-evaluated when the owner went, not on a timer: {:?}",
        started.elapsed()
    );
    assert!(env.sim.inbox(&id).is_some());
    assert_eq!(env.sim.request_count(Route::Delete), 0);
    env.stop().await;
}

/// A manifest copied with its `agentsend.io/inbox-id` annotation into another namespace does
/// not take the inbox over: the copy is Rejected naming the owner, writes no Secret, and its
/// deletion leaves the original's inbox alone.
#[tokio::test]
async fn a_copied_manifest_never_takes_over() {
    let client = crate::support::control_plane().client().await;
    let other = crate::support::TestNamespace::new(&client, "copy").await;
    let other_ns = other.name().to_string();
    let env = Env::start_with(|s| s.namespaces.push(other_ns.clone())).await;
    let orig = env.create_ready("orig", InboxSpec::default()).await;
    let id = status_id(&orig);
    let address = orig.status.as_ref().unwrap().address.clone().unwrap();

    let mut copy = Inbox::new("orig", orig.spec.clone());
    copy.metadata.annotations = Some(BTreeMap::from([(
        "agentsend.io/inbox-id".to_string(),
        id.clone(),
    )]));
    let copies: kube::Api<Inbox> = kube::Api::namespaced(client.clone(), &other_ns);
    copies.create(&PostParams::default(), &copy).await.unwrap();
    let rejected = wait_for("the copy to be Rejected", T, || {
        let copies = copies.clone();
        async move {
            let i = copies.get_opt("orig").await.ok().flatten()?;
            let c = ready(&i)?;
            (c.reason == "Rejected").then(|| c.message.clone())
        }
    })
    .await;
    assert!(
        rejected.contains(&format!("{}/orig", env.ns.name())),
        "{rejected}"
    );
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &other_ns);
    assert!(
        secrets.get_opt("orig").await.unwrap().is_none(),
        "no Secret for the copy"
    );

    copies
        .delete("orig", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the copy to go", T, || {
        let copies = copies.clone();
        async move { matches!(copies.get_opt("orig").await, Ok(None)).then_some(()) }
    })
    .await;
    assert_eq!(env.sim.request_count(Route::Delete), 0);
    assert!(env.sim.inbox(&id).is_some(), "the original keeps its inbox");
    let kept = env.wait_ready("orig", Ready::True).await;
    assert_eq!(status_id(&kept), id);
    assert_eq!(data(&env.secret("orig").await.unwrap(), "address"), address);
    env.stop().await;
    drop(other);
}

/// A shard (`--selector`) sees claims outside its selector: a copy, inside its shard, of an
/// Inbox that another shard owns is Rejected naming the owner (whose binding carries the
/// proof the other shard wrote), gets no Secret, and its deletion never calls AgentSend.
#[tokio::test]
async fn a_shard_sees_claims_outside_its_selector() {
    let env = Env::start_with(|s| s.selector = Some("shard=b".into())).await;
    let remote = env
        .sim
        .insert_inbox(ACCOUNT, CreateInbox::default())
        .unwrap();
    // The owner carries the binding and its proof as the other shard wrote them (the proof
    // key is shared by every shard); the copy carries the annotation only, as a copy would
    // (a copied proof names the owner's name, not the copy's).
    let account = env
        .proof
        .fingerprint(&inbox_operator::agentsend::ApiKey::new(env.key).unwrap());
    let claimed = |name: &str, shard: &str| {
        let mut i = Inbox::new(name, InboxSpec::default());
        i.metadata.labels = Some(BTreeMap::from([("shard".into(), shard.into())]));
        let proof = env
            .proof
            .binding_proof(env.ns.name(), "owner", &remote.id, &account);
        i.metadata.annotations = Some(BTreeMap::from([
            ("agentsend.io/inbox-id".to_string(), remote.id.clone()),
            ("agentsend.io/inbox-id-proof".to_string(), proof),
        ]));
        i
    };
    // The owner, in shard a (another instance's: nothing here reconciles it).
    let owner = env
        .inboxes()
        .create(&PostParams::default(), &claimed("owner", "a"))
        .await
        .unwrap();
    // creationTimestamp has a resolution of one second: let the copy be visibly younger.
    let created = owner.metadata.creation_timestamp.clone().unwrap().0;
    wait_for("the next second", T, || async {
        (jiff::Timestamp::now().as_second() > created.as_second()).then_some(())
    })
    .await;
    env.inboxes()
        .create(&PostParams::default(), &claimed("copy", "b"))
        .await
        .unwrap();
    let copy = env.wait_ready("copy", Ready::False(Reason::Rejected)).await;
    let msg = &ready(&copy).unwrap().message;
    assert!(msg.contains(&format!("{}/owner", env.ns.name())), "{msg}");
    assert!(env.secret("copy").await.is_none(), "no Secret for the copy");

    env.inboxes()
        .delete("copy", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("copy").await;
    assert_eq!(env.sim.request_count(Route::Delete), 0);
    assert!(
        env.sim.inbox(&remote.id).is_some(),
        "the owner keeps its inbox"
    );
    env.stop().await;
}

/// The write gate (leader election) stops every write. While it is closed, a new Inbox gets
/// no finalizer, annotation, status or AgentSend inbox, and a deleted one keeps its finalizer
/// and its inbox; its passes are counted as `not_leading`. Absence is observed for a bounded
/// window after the controller has provably run passes (the metric). Once the gate opens
/// (a renewal is confirmed) the Inbox converges, and the deletion completes.
#[tokio::test]
async fn a_closed_write_gate_stops_every_write() {
    use inbox_operator::runtime::leader::WriteGate;
    const WINDOW: Duration = Duration::from_secs(2);
    let gate = WriteGate::leased(Duration::from_secs(60));
    let shared = gate.clone();
    let env = Env::start_with(move |s| s.gate = shared).await;
    let not_leading = |min: u64| {
        let m = env.metrics.clone();
        move || {
            let text = m.encode();
            let line = r#"inbox_operator_reconcile_errors_total{reason="not_leading"} "#;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            std::future::ready((n >= min).then_some(n))
        }
    };
    env.create("gated", InboxSpec::default()).await;
    let seen = wait_for("a pass stopped by the gate", T, not_leading(1)).await;
    tokio::time::sleep(WINDOW).await;
    let i = env.inboxes().get("gated").await.expect("gated");
    assert!(i.finalizers().is_empty(), "finalizer written: {i:?}");
    assert!(i.status.is_none() && i.annotations().is_empty(), "{i:?}");
    assert_eq!(env.sim.request_count(Route::Create), 0);
    // Retried after a short delay, not backed off.
    wait_for("a retry", T, not_leading(seen + 1)).await;

    gate.confirm(std::time::Instant::now());
    env.wait_ready("gated", Ready::True).await;

    gate.revoke();
    let before = not_leading(0)().into_inner().unwrap_or(0);
    env.inboxes()
        .delete("gated", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(
        "the deletion stopped by the gate",
        T,
        not_leading(before + 1),
    )
    .await;
    tokio::time::sleep(WINDOW).await;
    let i = env.inboxes().get("gated").await.expect("still there");
    assert!(!i.finalizers().is_empty());
    assert_eq!(env.sim.request_count(Route::Delete), 0);

    gate.confirm(std::time::Instant::now());
    env.wait_gone("gated").await;
    assert_eq!(env.sim.request_count(Route::Delete), 1);
    env.stop().await;
}

/// Per-Inbox metric series go when an Inbox leaves the watch however it goes: moved out of
/// this shard's `--selector` (its inbox stays, another shard takes it), or deleted after an
/// admin removed its finalizer by hand (no cleanup pass of its own). Before, both series
/// stayed until the operator restarted.
#[tokio::test]
async fn metrics_go_when_an_inbox_leaves_the_watch() {
    let env = Env::start_with(|s| s.selector = Some("shard=a".into())).await;
    let ns = env.ns.name().to_string();
    let series =
        |name: &str| format!("inbox_operator_inbox_ready{{namespace=\"{ns}\",name=\"{name}\"}}");
    for name in ["moved", "forced"] {
        env.create_labelled(name, &[("shard", "a")]).await;
        env.wait_ready(name, Ready::True).await;
        let s = series(name);
        wait_for("the Inbox's series", T, || async {
            env.metrics.encode().contains(&s).then_some(())
        })
        .await;
    }
    let patch = json!({"metadata": {"labels": {"shard": "b"}}});
    env.inboxes()
        .patch("moved", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.delete_without_finalizers("forced").await;
    for name in ["moved", "forced"] {
        let s = series(name);
        wait_for(&format!("{name}'s series to go"), T, || async {
            (!env.metrics.encode().contains(&s)).then_some(())
        })
        .await;
    }
    // The moved Inbox is another shard's now: put it back to let this one clean up.
    let back = json!({"metadata": {"labels": {"shard": "a"}}});
    env.inboxes()
        .patch("moved", &PatchParams::default(), &Patch::Merge(&back))
        .await
        .unwrap();
    env.wait_ready("moved", Ready::True).await;
    env.inboxes()
        .delete("moved", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("moved").await;
    env.stop().await;
}

/// Another tool applying the same values to a managed Secret (a GitOps tool that renders the
/// Secret too, with its own field manager) shares those fields without changing them: the
/// operator's next pass settles instead of writing again and again until the planner's step
/// limit (before, every pass failed with "did not finish within 64 steps", forever).
#[tokio::test]
async fn a_secret_applied_with_the_same_values_by_another_tool_is_not_drift() {
    let env = Env::start().await;
    env.create_ready("shared", InboxSpec::default()).await;
    let s = env.secret("shared").await.expect("secret");
    let same = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "shared"},
        "data": s.data.clone().unwrap_or_default(),
    });
    env.secrets()
        .patch(
            "shared",
            &PatchParams::apply("gitops-tool"),
            &Patch::Apply(&same),
        )
        .await
        .expect("the same values apply without conflict");
    // A refresh makes the next pass record its value: proof that a whole pass ran.
    let patch = json!({"metadata": {"annotations": {"agentsend.io/refresh": "after-shared"}}});
    env.inboxes()
        .patch("shared", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let api = env.inboxes();
    wait_for("a pass that settles after the shared apply", T, || async {
        let st = api.get("shared").await.ok()?.status?;
        (st.observed_refresh.as_deref() == Some("after-shared")).then_some(())
    })
    .await;
    env.wait_ready("shared", Ready::True).await;
    let text = env.metrics.encode();
    assert!(
        !text.contains("reason=\"internal\""),
        "no pass hit the step limit: {text}"
    );
    env.inboxes()
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("shared").await;
    env.stop().await;
}
