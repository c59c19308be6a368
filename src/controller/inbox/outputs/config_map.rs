//! The ConfigMap output (`spec.configMap`): its layout and its drift check, pure. It follows
//! the Secret's rules (see [`crate::controller::inbox::outputs::secret`]): owned by the Inbox (controller ownerReference
//! and the operator's label), decided from metadata alone (the data digest annotation and
//! `managedFields`; no ConfigMap data is cached), never taken over when someone else's.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::agentsend::RemoteInbox;
use crate::api::inbox::{self, Inbox};
use crate::controller::inbox::outputs::meta::MetaError;
use crate::controller::inbox::outputs::secret::{self, SecretPlan};
use crate::controller::inbox::outputs::template::{self, TemplateError};

/// Why the ConfigMap the spec asks for cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapSpecError {
    /// A label or annotation Kubernetes would refuse.
    #[error("{0}; Kubernetes would refuse the ConfigMap, so it is not written")]
    Metadata(#[from] MetaError),
    /// A template key that does not render.
    #[error("spec.configMap.template: {0}; nothing is written")]
    Template(#[from] TemplateError),
}

/// The ConfigMap's data for `remote`: the default keys (`address`, `inboxId`, `domainId`)
/// plus `spec.configMap.template` rendered, after checking its labels and annotations.
/// `Ok(None)` when the spec asks for no ConfigMap.
pub fn checked_data(
    inbox: &Inbox,
    remote: &RemoteInbox,
) -> Result<Option<BTreeMap<String, String>>, ConfigMapSpecError> {
    let Some(spec) = inbox.spec.config_map.as_ref() else {
        return Ok(None);
    };
    crate::controller::inbox::outputs::meta::check_metadata(
        ("spec.configMap.labels", "spec.configMap.annotations"),
        spec.labels.as_ref(),
        spec.annotations.as_ref(),
    )?;
    let mut data = match &spec.template {
        Some(t) => template::render(t, &template::Fields::of(remote))?,
        None => BTreeMap::new(),
    };
    // Templates cannot name the default keys (checked while rendering).
    data.extend(secret::default_data(remote));
    Ok(Some(data))
}

/// Why the outputs the spec asks for can never be written, whatever the inbox: labels or
/// annotations Kubernetes would refuse, or a template that is not allowed, does not parse or
/// names an unknown field (checked on sample fields). Asked before an unbound Inbox's first
/// AgentSend call, so such a spec creates nothing.
pub fn spec_refusal(inbox: &Inbox) -> Option<String> {
    let secret = inbox.spec.secret.as_deref();
    if let Err(e) = crate::controller::inbox::outputs::meta::check_secret_metadata(
        secret.and_then(|s| s.labels.as_ref()),
        secret.and_then(|s| s.annotations.as_ref()),
    ) {
        return Some(format!(
            "{e}; Kubernetes would refuse the Secret, so no inbox is created"
        ));
    }
    if let Some(Err(e)) = secret
        .and_then(|s| s.template.as_ref())
        .map(template::check)
    {
        return Some(format!("spec.secret.template: {e}; no inbox is created"));
    }
    let config_map = inbox.spec.config_map.as_deref()?;
    if let Err(e) = crate::controller::inbox::outputs::meta::check_metadata(
        ("spec.configMap.labels", "spec.configMap.annotations"),
        config_map.labels.as_ref(),
        config_map.annotations.as_ref(),
    ) {
        return Some(format!(
            "{e}; Kubernetes would refuse the ConfigMap, so no inbox is created"
        ));
    }
    match config_map.template.as_ref().map(template::check) {
        Some(Err(e)) => Some(format!("spec.configMap.template: {e}; no inbox is created")),
        _ => None,
    }
}

/// The ConfigMap this Inbox should own, holding `data`; `None` without `spec.configMap`, or
/// when the Inbox has no name or UID.
pub fn desired_config_map(inbox: &Inbox, data: BTreeMap<String, String>) -> Option<ConfigMap> {
    let spec = inbox.spec.config_map.as_ref()?;
    let mut metadata = secret::owned_metadata(
        inbox,
        inbox.config_map_name()?,
        spec.labels.clone(),
        spec.annotations.clone(),
    )?;
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(inbox::ANNOTATION_DATA_DIGEST.into(), digest(&data));
    Some(ConfigMap {
        metadata,
        data: Some(data),
        ..Default::default()
    })
}

/// The data digest of a ConfigMap: the Secret's digest over the same bytes, so one key set
/// has one digest whichever object holds it.
pub fn digest(data: &BTreeMap<String, String>) -> String {
    let bytes = data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    secret::data_digest(&bytes)
}

/// Compare the existing ConfigMap's metadata (if any) with the desired one, as
/// [`secret::plan_secret`] does for the Secret.
pub fn plan_config_map(
    existing: Option<&ObjectMeta>,
    desired: &ConfigMap,
    owner_uid: &str,
) -> SecretPlan {
    let keys = desired.data.iter().flatten().map(|(k, _)| k.as_str());
    secret::plan_owned(existing, &desired.metadata, keys, owner_uid)
}

/// The ConfigMaps among `known` this Inbox owns but no longer wants (`spec.configMap` was
/// removed or renamed): their names and UIDs, to delete.
pub fn unwanted<'a>(
    known: &'a BTreeMap<String, Option<ObjectMeta>>,
    wanted: Option<&str>,
    owner_uid: &str,
) -> impl Iterator<Item = (&'a str, Option<&'a String>)> {
    known
        .iter()
        .filter(move |(name, _)| Some(name.as_str()) != wanted)
        .filter_map(move |(name, meta)| {
            let meta = meta
                .as_ref()
                .filter(|m| secret::is_owned_by(m, owner_uid))?;
            Some((name.as_str(), meta.uid.as_ref()))
        })
}

/// Which output of the Inbox a step is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// The Secret (`spec.secret`).
    Secret,
    /// The ConfigMap (`spec.configMap`).
    ConfigMap,
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputKind::Secret => "secret",
            OutputKind::ConfigMap => "configmap",
        })
    }
}

/// The merge patch that lets an output outlive its Inbox (`retainOnOrphan`): without this
/// Inbox's ownerReference (the garbage collector then keeps it; other owners' references
/// stay), without the operator's labels and data digest (it is no longer "managed": no
/// watch sees it, no Inbox restores it). The UID makes it apply to this object only.
pub fn release_patch(meta: &ObjectMeta, owner_uid: &str) -> serde_json::Value {
    let others: Vec<_> = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.uid != owner_uid)
        .collect();
    let mut patch = serde_json::json!({ "metadata": {
        "ownerReferences": if others.is_empty() { None } else { Some(others) },
        "labels": { inbox::LABEL_MANAGED_BY: null, inbox::LABEL_INBOX: null },
        "annotations": { inbox::ANNOTATION_DATA_DIGEST: null },
    }});
    if let Some(uid) = &meta.uid {
        patch["metadata"]["uid"] = serde_json::json!(uid);
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::inbox::{ConfigMapSpec, InboxSpec};
    use crate::controller::inbox::outputs::secret::testing::owning;

    fn inbox(spec: ConfigMapSpec) -> Inbox {
        let mut i = Inbox::new("support", InboxSpec::default());
        i.metadata.namespace = Some("team".into());
        i.metadata.uid = Some("uid-1".into());
        i.spec.config_map = Some(Box::new(spec));
        i
    }

    fn remote() -> RemoteInbox {
        RemoteInbox {
            domain_id: Some("dom".into()),
            display_name: Some("Support".into()),
            ..RemoteInbox::fixture("inb_1", "help@example.com")
        }
    }

    fn written(c: &ConfigMap) -> ObjectMeta {
        let keys: Vec<&str> = c.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
        ObjectMeta {
            managed_fields: Some(vec![owning(inbox::FIELD_MANAGER, &keys)]),
            ..c.metadata.clone()
        }
    }

    #[test]
    fn layout_holds_the_default_keys_and_the_template() {
        let i = inbox(ConfigMapSpec {
            name: Some("mail-config".into()),
            labels: Some([("team".to_string(), "a".to_string())].into()),
            template: Some(
                [(
                    "FROM".to_string(),
                    "{{ displayName }} <{{ address }}>".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        });
        let data = checked_data(&i, &remote()).unwrap().unwrap();
        let c = desired_config_map(&i, data).unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("mail-config"));
        let labels = c.metadata.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "inbox-operator");
        assert_eq!(labels["agentsend.io/inbox"], "support");
        assert_eq!(labels["team"], "a");
        let data = c.data.clone().unwrap();
        assert_eq!(data["address"], "help@example.com");
        assert_eq!(data["inboxId"], "inb_1");
        assert_eq!(data["domainId"], "dom");
        assert_eq!(data["FROM"], "Support <help@example.com>");
        assert_eq!(data.len(), 4);
        assert!(secret::is_owned_by(&c.metadata, "uid-1"));
        let annotations = c.metadata.annotations.unwrap();
        assert_eq!(annotations["agentsend.io/data-digest"], digest(&data));
        assert_eq!(annotations["agentsend.io/inbox-name"], "support");
    }

    #[test]
    fn name_defaults_to_the_inbox_and_no_spec_means_no_config_map() {
        let i = inbox(ConfigMapSpec::default());
        assert_eq!(i.config_map_name().as_deref(), Some("support"));
        let mut none = i.clone();
        none.spec.config_map = None;
        assert_eq!(none.config_map_name(), None);
        assert!(checked_data(&none, &remote()).unwrap().is_none());
    }

    #[test]
    fn bad_templates_and_labels_are_refused_naming_the_field() {
        let bad_template = inbox(ConfigMapSpec {
            template: Some([("X".to_string(), "{{ nope }}".to_string())].into()),
            ..Default::default()
        });
        let e = checked_data(&bad_template, &remote()).unwrap_err();
        assert!(e.to_string().starts_with("spec.configMap.template"), "{e}");
        let bad_label = inbox(ConfigMapSpec {
            labels: Some([("bad key!".to_string(), "a".to_string())].into()),
            ..Default::default()
        });
        let e = checked_data(&bad_label, &remote()).unwrap_err();
        assert!(e.to_string().contains("spec.configMap.labels"), "{e}");
    }

    #[test]
    fn plans_follow_the_secret_rules() {
        let i = inbox(ConfigMapSpec::default());
        let want = desired_config_map(&i, checked_data(&i, &remote()).unwrap().unwrap()).unwrap();
        let ours = written(&want);
        let mut foreign = ours.clone();
        foreign.owner_references = None;
        let mut edited = ours.clone();
        edited.managed_fields = Some(vec![
            owning(inbox::FIELD_MANAGER, &["inboxId", "domainId"]),
            owning("kubectl-edit", &["address"]),
        ]);
        let cases = [
            ("absent: create", None, SecretPlan::Create),
            ("as written", Some(&ours), SecretPlan::UpToDate),
            (
                "someone else's: conflict",
                Some(&foreign),
                SecretPlan::Conflict,
            ),
            ("edited: restore", Some(&edited), SecretPlan::Update),
        ];
        for (case, existing, plan) in cases {
            assert_eq!(plan_config_map(existing, &want, "uid-1"), plan, "{case}");
        }
    }

    #[test]
    fn release_drops_only_our_reference_and_the_managed_marks() {
        let i = inbox(ConfigMapSpec::default());
        let c = desired_config_map(&i, checked_data(&i, &remote()).unwrap().unwrap()).unwrap();
        let mut meta = c.metadata.clone();
        meta.uid = Some("cm-1".into());
        let patch = release_patch(&meta, "uid-1");
        assert_eq!(patch["metadata"]["uid"], "cm-1");
        let no_uid = ObjectMeta {
            uid: None,
            ..meta.clone()
        };
        assert!(
            release_patch(&no_uid, "uid-1")["metadata"]
                .get("uid")
                .is_none()
        );
        assert!(patch["metadata"]["ownerReferences"].is_null());
        assert!(patch["metadata"]["labels"]["app.kubernetes.io/managed-by"].is_null());
        assert!(patch["metadata"]["labels"]["agentsend.io/inbox"].is_null());
        assert!(patch["metadata"]["annotations"]["agentsend.io/data-digest"].is_null());
        let other = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            uid: "app-1".into(),
            kind: "Deployment".into(),
            name: "app".into(),
            api_version: "apps/v1".into(),
            ..Default::default()
        };
        meta.owner_references.get_or_insert_default().push(other);
        let patch = release_patch(&meta, "uid-1");
        let kept = patch["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["uid"], "app-1");
    }

    #[test]
    fn unwanted_are_the_owned_ones_not_wanted() {
        let i = inbox(ConfigMapSpec::default());
        let want = desired_config_map(&i, checked_data(&i, &remote()).unwrap().unwrap()).unwrap();
        let mut old = written(&want);
        old.uid = Some("cm-old".into());
        let mut foreign = old.clone();
        foreign.owner_references = None;
        let known = BTreeMap::from([
            ("support".to_string(), Some(written(&want))),
            ("old".to_string(), Some(old)),
            ("theirs".to_string(), Some(foreign)),
            ("deleted".to_string(), None),
        ]);
        let uid = "cm-old".to_string();
        let got: Vec<_> = unwanted(&known, Some("support"), "uid-1").collect();
        assert_eq!(got, vec![("old", Some(&uid))]);
        let all: Vec<_> = unwanted(&known, None, "uid-1").map(|(n, _)| n).collect();
        assert_eq!(all, vec!["old", "support"]);
    }
}
