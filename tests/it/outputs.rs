//! The Inbox's outputs besides the Secret: the ConfigMap (`spec.configMap`), with the Secret's
//! ownership, conflict and restore rules.

use std::collections::BTreeMap;

use inbox_operator::api::inbox::{ConfigMapSpec, DeletionPolicy, InboxSpec, Reason, SecretSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::ctl::{Env, Ready, T};
use crate::support::wait_for;

fn config_maps(env: &Env) -> Api<ConfigMap> {
    Api::namespaced(env.client.clone(), env.ns.name())
}

async fn config_map(env: &Env, name: &str) -> Option<ConfigMap> {
    config_maps(env).get_opt(name).await.expect("get ConfigMap")
}

fn value(c: &ConfigMap, key: &str) -> Option<String> {
    c.data.as_ref().and_then(|d| d.get(key)).cloned()
}

/// The ConfigMap holds the address, the inbox ID and the template's keys; it is owned by the
/// Inbox, restored when edited or deleted, and removed when `spec.configMap` is removed.
#[tokio::test]
async fn config_map_output_is_written_restored_and_removed() {
    let env = Env::start().await;
    let spec = InboxSpec {
        display_name: Some("Support".into()),
        config_map: Some(Box::new(ConfigMapSpec {
            name: Some("support-mail".into()),
            template: Some(BTreeMap::from([(
                "SMTP_FROM".to_string(),
                "{{ displayName }} <{{ address }}>".to_string(),
            )])),
            labels: Some(BTreeMap::from([("team".to_string(), "a".to_string())])),
            ..Default::default()
        })),
        ..Default::default()
    };
    let i = env.create_ready("support", spec).await;
    let status = i.status.clone().unwrap();
    let address = status.address.clone().unwrap();
    assert_eq!(status.config_map_name.as_deref(), Some("support-mail"));

    let c = config_map(&env, "support-mail")
        .await
        .expect("ConfigMap written");
    assert_eq!(value(&c, "address").as_deref(), Some(address.as_str()));
    assert_eq!(value(&c, "inboxId"), status.inbox_id);
    assert_eq!(value(&c, "SMTP_FROM"), Some(format!("Support <{address}>")));
    assert_eq!(c.owner_references().len(), 1);
    assert_eq!(c.owner_references()[0].uid, i.uid().unwrap());
    assert_eq!(c.labels()["app.kubernetes.io/managed-by"], "inbox-operator");
    assert_eq!(c.labels()["team"], "a");
    env.wait_event("ConfigMapWritten").await;

    // Edited: restored (watched, metadata only).
    let patch = json!({"data": {"address": "evil@example.com"}});
    config_maps(&env)
        .patch(
            "support-mail",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    wait_for("edited ConfigMap restored", T, || async {
        config_map(&env, "support-mail")
            .await
            .filter(|c| value(c, "address").as_deref() == Some(address.as_str()))
    })
    .await;

    // Deleted: restored.
    config_maps(&env)
        .delete("support-mail", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("deleted ConfigMap restored", T, || async {
        config_map(&env, "support-mail")
            .await
            .filter(|c| c.metadata.deletion_timestamp.is_none() && value(c, "address").is_some())
    })
    .await;

    // spec.configMap removed: the ConfigMap goes (the Secret stays).
    let patch = json!({"spec": {"configMap": null}});
    env.inboxes()
        .patch("support", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("ConfigMap removed with spec.configMap", T, || async {
        config_map(&env, "support-mail")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let i = wait_for("status forgets the ConfigMap", T, || async {
        let i = env.inboxes().get("support").await.ok()?;
        let s = i.status.as_ref()?;
        s.config_map_name.is_none().then_some(i)
    })
    .await;
    assert!(env.secret("support").await.is_some());
    assert_eq!(crate::ctl::ready(&i).unwrap().status, "True");
    env.stop().await;
}

/// A ConfigMap of the wanted name that the Inbox does not own is never modified: the Inbox
/// reports `SecretConflict` (as for a Secret), and its deletion leaves the ConfigMap alone.
#[tokio::test]
async fn a_foreign_config_map_is_a_conflict_and_left_untouched() {
    let env = Env::start().await;
    let theirs = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("theirs".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "address".to_string(),
            "mine@example.com".to_string(),
        )])),
        ..Default::default()
    };
    config_maps(&env)
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let spec = InboxSpec {
        config_map: Some(Box::new(ConfigMapSpec {
            name: Some("theirs".into()),
            ..Default::default()
        })),
        ..Default::default()
    };
    env.create("clash", spec).await;
    let i = env
        .wait_ready("clash", Ready::False(Reason::SecretConflict))
        .await;
    let msg = &crate::ctl::ready(&i).unwrap().message;
    assert!(msg.contains("ConfigMap \"theirs\""), "{msg}");
    env.wait_event("SecretConflict").await;

    env.inboxes()
        .delete("clash", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("clash").await;
    let c = config_map(&env, "theirs")
        .await
        .expect("foreign ConfigMap kept");
    assert_eq!(value(&c, "address").as_deref(), Some("mine@example.com"));
    assert!(c.owner_references().is_empty());
    assert!(c.labels().is_empty());
    env.stop().await;
}

/// `retainOnOrphan` with `deletionPolicy: Orphan`: the Secret and the ConfigMap outlive the
/// Inbox, released (no ownerReference, no managed labels) so the garbage collector — which the
/// test control plane runs — keeps them. With `Delete`, retain has no effect: both go.
#[tokio::test]
async fn retain_on_orphan_keeps_the_secret_and_config_map() {
    let env = Env::start().await;
    let spec = |policy| InboxSpec {
        deletion_policy: Some(policy),
        secret: Some(Box::new(SecretSpec {
            retain_on_orphan: Some(true),
            ..Default::default()
        })),
        config_map: Some(Box::new(ConfigMapSpec {
            retain_on_orphan: Some(true),
            ..Default::default()
        })),
        ..Default::default()
    };
    let kept = env.create_ready("kept", spec(DeletionPolicy::Orphan)).await;
    let dropped = env
        .create_ready("dropped", spec(DeletionPolicy::Delete))
        .await;
    let address = kept.status.clone().unwrap().address.unwrap();
    assert!(config_map(&env, "kept").await.is_some());
    assert!(config_map(&env, "dropped").await.is_some());

    for name in ["kept", "dropped"] {
        env.inboxes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    env.wait_gone("kept").await;
    env.wait_gone("dropped").await;

    // Released before the finalizer went: nothing refers to the deleted Inbox, so the
    // garbage collector has nothing to collect.
    let s = env.secret("kept").await.expect("retained Secret");
    assert_eq!(crate::ctl::data(&s, "address"), address);
    assert!(
        s.owner_references().is_empty(),
        "{:?}",
        s.owner_references()
    );
    assert!(!s.labels().contains_key("app.kubernetes.io/managed-by"));
    let c = config_map(&env, "kept").await.expect("retained ConfigMap");
    assert_eq!(value(&c, "address").as_deref(), Some(address.as_str()));
    assert!(
        c.owner_references().is_empty(),
        "{:?}",
        c.owner_references()
    );
    assert!(!c.labels().contains_key("app.kubernetes.io/managed-by"));
    let orphaned = env.wait_event("Orphaned").await;
    let note = orphaned.note.unwrap_or_default();
    assert!(
        note.contains("kept Secret kept and ConfigMap kept"),
        "{note}"
    );
    assert!(
        env.sim.inbox(&crate::ctl::status_id(&kept)).is_some(),
        "Orphan leaves the AgentSend inbox"
    );

    // Delete: retain has no effect.
    assert!(env.secret("dropped").await.is_none());
    assert!(config_map(&env, "dropped").await.is_none());
    assert!(env.sim.inbox(&crate::ctl::status_id(&dropped)).is_none());
    env.stop().await;
}

/// An Orphan Inbox without `retainOnOrphan` takes its Secret and ConfigMap with it; with the
/// operator halted (finalizer removed by hand), the garbage collector does the same.
#[tokio::test]
async fn without_retain_the_outputs_go_with_the_inbox() {
    let env = Env::start().await;
    let spec = InboxSpec {
        deletion_policy: Some(DeletionPolicy::Orphan),
        config_map: Some(Box::default()),
        ..Default::default()
    };
    env.create_ready("plain", spec.clone()).await;
    env.create_ready("collected", spec).await;
    env.inboxes()
        .delete("plain", &DeleteParams::default())
        .await
        .unwrap();
    env.wait_gone("plain").await;
    assert!(env.secret("plain").await.is_none());
    assert!(config_map(&env, "plain").await.is_none());

    env.halt().await;
    env.delete_without_finalizers("collected").await;
    wait_for("the ConfigMap to be collected", T, || async {
        config_map(&env, "collected").await.is_none().then_some(())
    })
    .await;
    wait_for("the Secret to be collected", T, || async {
        env.secret("collected").await.is_none().then_some(())
    })
    .await;
    env.stop().await;
}

/// One tenant's template cannot wedge the operator: short templates that allocated gigabytes
/// inside a reconcile (`indent(99999999999)` aborted the process; `address * 5000000` and its
/// repetitions built hundreds of MB) are refused before any AgentSend call — no inbox, nothing
/// written but the status — while the other Inboxes, created at the same moment, become Ready,
/// and the process's peak memory grows by far less than the shipped 256 Mi limit.
#[tokio::test]
async fn template_bombs_create_nothing_and_others_stay_served() {
    let env = Env::start().await;
    let before = crate::support::peak_rss_of("self").unwrap_or(0);
    let bombs = [
        "{{ address|indent(99999999999) }}",
        "{{ (address * 5000000) ~ (address * 5000000) ~ (address * 5000000) }}",
        "{{ address * 99999999 }}",
        "{% for i in range(99999) %}{{ address }}{% endfor %}",
        "{{ address | replace('', '0123456789abcdef0123456789abcdef') | replace('', '0123456789abcdef0123456789abcdef') | replace('', '0123456789abcdef0123456789abcdef') }}",
        "{{ address ",
    ];
    let api = env.inboxes();
    let mut names = Vec::new();
    for (i, bomb) in bombs.iter().enumerate() {
        let name = format!("bomb-{i}");
        let spec = InboxSpec {
            secret: Some(Box::new(SecretSpec {
                template: Some(BTreeMap::from([("BOOM".to_string(), bomb.to_string())])),
                ..Default::default()
            })),
            ..Default::default()
        };
        let inbox = inbox_operator::api::inbox::Inbox::new(&name, spec);
        api.create(&PostParams::default(), &inbox)
            .await
            .expect("create");
        names.push(name);
    }
    let ordinary = env.create_many("plain", 4).await;
    for name in &names {
        let i = env.wait_ready(name, Ready::False(Reason::Rejected)).await;
        let msg = &crate::ctl::ready(&i).unwrap().message;
        assert!(
            msg.contains("\"BOOM\"") && msg.contains("no inbox is created"),
            "{name}: {msg}"
        );
        assert!(env.secret(name).await.is_none(), "{name}: no Secret");
    }
    env.assert_converged(&ordinary).await;
    assert_eq!(
        env.sim.request_count(inbox_sim::Route::Create),
        ordinary.len() as u64,
        "one create per ordinary Inbox, none for a bomb"
    );
    let grew = crate::support::peak_rss_of("self")
        .unwrap_or(0)
        .saturating_sub(before);
    assert!(grew < 128 * 1024 * 1024, "peak memory grew by {grew} bytes");
    names.extend(ordinary);
    env.delete_all_and_check(&names).await;
    env.stop().await;
}

/// What the operator's writes over an owned Secret or ConfigMap rely on: a server-side apply
/// that names a UID is refused when the object of that name now has another UID (it was
/// replaced meanwhile, someone else's), so the operator never takes over an object it read as
/// its own but that is no longer the same object.
#[tokio::test]
async fn an_apply_naming_another_uid_is_refused() {
    let env = Env::bare("uidpre", "acct-uidpre", "uidpre-key").await;
    let api = config_maps(&env);
    let theirs = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("replaced".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "theirs".to_string())])),
        ..Default::default()
    };
    api.create(&PostParams::default(), &theirs).await.unwrap();
    let ours = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "replaced", "uid": "00000000-0000-0000-0000-000000000000"},
        "data": {"k": "ours"},
    });
    let applied = api
        .patch(
            "replaced",
            &PatchParams::apply("inbox-operator").force(),
            &Patch::Apply(&ours),
        )
        .await;
    assert!(applied.is_err(), "applied over another object: {applied:?}");
    let kept = config_map(&env, "replaced").await.unwrap();
    assert_eq!(value(&kept, "k").as_deref(), Some("theirs"));
    api.delete("replaced", &DeleteParams::default())
        .await
        .unwrap();
    env.stop().await;
}
