//! The outputs: the ConfigMap (`spec.configMap`) row by row, and the Secret written with the
//! binding and by converging.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::inbox::{self, InboxSpec};
use crate::controller::inbox::plan::pass::plan;
use crate::controller::inbox::plan::step::Step;

use super::{B, foreign_secret, inb1, obs, owned_secret, written_config_map};
use crate::controller::inbox::outputs::secret;

/// The ConfigMap output (`spec.configMap`): the Secret's rules, one rule per row.
pub(super) fn output_rows() -> Vec<(&'static str, B, &'static str)> {
    let with_cm = || obs().config_map(None).converged(inb1());
    let ours = written_config_map(&with_cm(), &inb1());
    let foreign = ObjectMeta {
        owner_references: None,
        ..ours.clone()
    };
    let edited = ObjectMeta {
        managed_fields: Some(vec![
            crate::controller::inbox::outputs::secret::testing::owning(
                "kubectl-edit",
                &["address"],
            ),
        ]),
        ..ours.clone()
    };
    let renamed = ObjectMeta {
        name: Some("old".into()),
        ..ours.clone()
    };
    let template = |t: &str| {
        let t = t.to_string();
        move |s: &mut InboxSpec| {
            s.secret.get_or_insert_default().template = Some([("FROM".to_string(), t)].into());
        }
    };
    vec![
        (
            "unbound, a template that does not parse: Rejected before any AgentSend call",
            obs().key().spec(template("{{ address ")),
            "done Rejected +Rejected; settle",
        ),
        (
            "unbound, a template bomb: Rejected before any AgentSend call",
            obs().key().spec(template("{{ address * 99999999 }}")),
            "done Rejected +Rejected; settle",
        ),
        (
            "unbound, a ConfigMap template naming an unknown field: Rejected, nothing created",
            obs().key().spec(|s| {
                s.config_map = Some(Box::new(inbox::ConfigMapSpec {
                    template: Some([("X".to_string(), "{{ adress }}".to_string())].into()),
                    ..Default::default()
                }))
            }),
            "done Rejected +Rejected; settle",
        ),
        (
            "mid-create, a template turned bad: the create is resumed first (the inbox may exist)",
            obs().key().pending().spec(template("{{ address ")),
            "progress Creating",
        ),
        (
            "unbound, a good template: the create goes on",
            obs().key().spec(template("<{{ address }}>")),
            "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
        ),
        (
            "configMap wanted, Secret in place: read the ConfigMap's metadata",
            with_cm(),
            "read configmaps mail",
        ),
        (
            "configMap absent: create it",
            with_cm().config_maps(&[("mail", None)]),
            "create configmap mail",
        ),
        (
            "configMap ours and as written: Ready, and status records it",
            with_cm().config_maps(&[("mail", Some(ours.clone()))]),
            "done Ready; settle; reset failures",
        ),
        (
            "configMap edited by someone else: restored",
            with_cm().config_maps(&[("mail", Some(edited))]),
            "update configmap mail",
        ),
        (
            "a ConfigMap of that name this Inbox does not own: SecretConflict, never touched",
            with_cm().config_maps(&[("mail", Some(foreign))]),
            "done SecretConflict +SecretConflict; requeue 30s; reset failures",
        ),
        (
            "configMap template that does not render: Rejected, nothing written",
            with_cm().spec(|s| {
                s.config_map.get_or_insert_default().template =
                    Some([("FROM".into(), "{{ nope }}".into())].into());
            }),
            "done Rejected +Rejected; settle",
        ),
        (
            "configMap renamed: both names read",
            obs()
                .config_map(Some("new"))
                .converged(inb1())
                .recorded_config_map("old"),
            "read configmaps new,old",
        ),
        (
            "configMap renamed, the new one written: the old one goes",
            obs()
                .config_map(Some("mail"))
                .converged(inb1())
                .recorded_config_map("old")
                .config_maps(&[("mail", Some(ours.clone())), ("old", Some(renamed.clone()))]),
            "delete configmap old",
        ),
        (
            "spec.configMap removed: the recorded one goes",
            obs()
                .converged(inb1())
                .recorded_config_map("old")
                .config_maps(&[("old", Some(renamed.clone()))]),
            "delete configmap old",
        ),
        (
            "spec.configMap removed, the recorded one gone: Ready",
            obs()
                .converged(inb1())
                .recorded_config_map("old")
                .config_maps(&[("old", None)]),
            "done Ready; settle; reset failures",
        ),
        (
            "no configMap wanted or recorded: no ConfigMap read",
            obs().converged(inb1()),
            "done Ready; settle; reset failures",
        ),
        (
            "deleting with a configMap: read it",
            obs().config_map(None).deleting().secret("mail", None),
            "read configmaps mail",
        ),
        (
            "deleting: the owned ConfigMap goes with the Secret",
            obs()
                .config_map(None)
                .deleting()
                .secret("mail", None)
                .config_maps(&[("mail", Some(ours.clone()))]),
            "delete configmap mail",
        ),
        (
            "Orphan + secret.retainOnOrphan: the owned Secret is released, not deleted",
            obs()
                .orphan()
                .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", Some(owned_secret("mail"))),
            "release secret mail",
        ),
        (
            "Orphan + secret.retainOnOrphan, released: nothing more to do",
            obs()
                .orphan()
                .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", Some(foreign_secret("mail"))),
            "done; settle; reset failures; release",
        ),
        (
            "the namespace default Orphan + retainOnOrphan: released too",
            obs()
                .with(|o| o.namespace_default = Some(Some("Orphan".into())))
                .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", Some(owned_secret("mail"))),
            "release secret mail",
        ),
        (
            "Delete + secret.retainOnOrphan: no effect, the Secret is deleted",
            obs()
                .spec(|s| s.secret.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", Some(owned_secret("mail"))),
            "delete secret mail",
        ),
        (
            "Orphan + configMap.retainOnOrphan: the owned ConfigMap is released",
            obs()
                .orphan()
                .config_map(None)
                .spec(|s| s.config_map.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", None)
                .config_maps(&[("mail", Some(ours.clone()))]),
            "release configmap mail",
        ),
        (
            "Orphan without configMap.retainOnOrphan: the ConfigMap is deleted",
            obs()
                .orphan()
                .config_map(None)
                .deleting()
                .secret("mail", None)
                .config_maps(&[("mail", Some(ours.clone()))]),
            "delete configmap mail",
        ),
        (
            "observe-only + configMap.retainOnOrphan: released (deletion only releases)",
            obs()
                .observe()
                .config_map(None)
                .spec(|s| s.config_map.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", None)
                .config_maps(&[("mail", Some(ours.clone()))]),
            "release configmap mail",
        ),
        (
            "Delete + configMap.retainOnOrphan: no effect, deleted",
            obs()
                .config_map(None)
                .spec(|s| s.config_map.get_or_insert_default().retain_on_orphan = Some(true))
                .deleting()
                .secret("mail", None)
                .config_maps(&[("mail", Some(ours.clone()))]),
            "delete configmap mail",
        ),
        (
            "deleting: a foreign ConfigMap of that name is left alone",
            obs()
                .config_map(None)
                .deleting()
                .secret("mail", None)
                .config_maps(&[(
                    "mail",
                    Some(ObjectMeta {
                        owner_references: None,
                        ..ours
                    }),
                )]),
            "done; settle; reset failures; release",
        ),
    ]
}

#[test]
fn status_records_the_config_map_once_in_place_and_forgets_it_once_gone() {
    let name_in = |b: B| match plan(&b.0) {
        Step::Done(d) => d.report.and_then(|r| r.status.config_map_name),
        other => panic!("{other}"),
    };
    let b = obs().config_map(None).converged(inb1());
    let ours = written_config_map(&b, &inb1());
    let b = b.config_maps(&[("mail", Some(ours))]);
    assert_eq!(name_in(b).as_deref(), Some("mail"));
    let removed = obs()
        .converged(inb1())
        .recorded_config_map("old")
        .config_maps(&[("old", None)]);
    assert_eq!(name_in(removed), None);
}

/// The Secret written with the binding is the one converging would write after it.
#[test]
fn the_secret_written_with_the_binding_is_the_converged_one() {
    let template = |s: &mut InboxSpec| {
        s.secret.get_or_insert_default().template =
            Some([("FROM".into(), "<{{ address }}>".into())].into());
    };
    let at_bind = obs()
        .key()
        .pending()
        .secret("mail", None)
        .spec(template)
        .created(Ok(inb1()));
    let Step::BindWithSecret { secret: early, .. } = plan(&at_bind.0) else {
        panic!("expected bind with secret, got {}", plan(&at_bind.0));
    };
    let after = obs()
        .key()
        .bound("inb_1")
        .found(inb1())
        .registered()
        .secret("mail", None)
        .spec(template);
    let Step::WriteSecret { secret: late, .. } = plan(&after.0) else {
        panic!("expected a Secret write, got {}", plan(&after.0));
    };
    assert_eq!(early, late);
}

#[test]
fn a_rendered_template_joins_the_secrets_default_keys() {
    let b = obs()
        .key()
        .bound("inb_1")
        .found(inb1())
        .registered()
        .secret("mail", None)
        .spec(|s| {
            s.secret.get_or_insert_default().template =
                Some([("FROM".into(), "<{{ address }}>".into())].into());
        });
    let Step::WriteSecret { secret, create, .. } = plan(&b.0) else {
        panic!("expected a Secret write, got {}", plan(&b.0));
    };
    assert!(create);
    let digest = secret.metadata.annotations.clone().unwrap_or_default()
        [inbox::ANNOTATION_DATA_DIGEST]
        .clone();
    let data = secret.data.unwrap_or_default();
    assert_eq!(
        digest,
        secret::data_digest(&data),
        "the digest covers the template keys"
    );
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["FROM", "address", "inboxId"]);
    assert_eq!(data["FROM"].0, format!("<{}>", inb1().address).into_bytes());
}
