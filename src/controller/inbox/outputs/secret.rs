//! The Secret an Inbox owns, pure: its layout (default keys, labels, annotations, the
//! owner reference), the digest of what was written, and whether the one in the cluster
//! needs a write ([`SecretPlan`]) — without ever reading its data.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference,
};
use kube::Resource;

use crate::agentsend::RemoteInbox;
use crate::api::inbox::{self, Inbox};

/// The Secret this Inbox should own for `remote`; `None` when the Inbox has no name or UID
/// (never true for an object read from the API server).
pub fn desired_secret(inbox: &Inbox, remote: &RemoteInbox) -> Option<Secret> {
    let spec = inbox.spec.secret.as_ref();
    let mut metadata = owned_metadata(
        inbox,
        inbox.secret_name(),
        spec.and_then(|s| s.labels.clone()),
        spec.and_then(|s| s.annotations.clone()),
    )?;
    let data: BTreeMap<String, ByteString> = default_data(remote)
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect();
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(inbox::ANNOTATION_DATA_DIGEST.into(), data_digest(&data));
    Some(Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    })
}

/// The default keys every output of the Inbox holds: `address`, `inboxId`, and `domainId`
/// when the inbox has one.
pub fn default_data(remote: &RemoteInbox) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    data.insert("address".to_string(), remote.address.clone());
    data.insert("inboxId".to_string(), remote.id.clone());
    if let Some(d) = &remote.domain_id {
        data.insert("domainId".to_string(), d.clone());
    }
    data
}

/// The metadata of an object (Secret, ConfigMap) named `name` that this Inbox owns: the
/// spec's `labels` and `annotations`, the operator's label, the Inbox's label and name
/// annotation, and the controller ownerReference. `None` when the Inbox has no name or UID.
pub fn owned_metadata(
    inbox: &Inbox,
    name: String,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
) -> Option<ObjectMeta> {
    let owner = owner_reference(inbox)?;
    let inbox_name = inbox.metadata.name.clone()?;
    let mut labels = labels.unwrap_or_default();
    labels.insert(inbox::LABEL_MANAGED_BY.into(), inbox::MANAGED_BY.into());
    labels.insert(
        inbox::LABEL_INBOX.into(),
        crate::controller::inbox::outputs::meta::label_value_for_name(&inbox_name),
    );
    let mut annotations = annotations.unwrap_or_default();
    annotations.insert(inbox::ANNOTATION_INBOX_NAME.into(), inbox_name);
    Some(ObjectMeta {
        name: Some(name),
        namespace: inbox.metadata.namespace.clone(),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// Add rendered template values to a desired Secret's data (the default keys stay as they are:
/// templates cannot name them), and record the digest of the whole data.
pub fn add_string_data(secret: &mut Secret, values: BTreeMap<String, String>) {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (k, v) in values {
        data.entry(k).or_insert(ByteString(v.into_bytes()));
    }
    let digest = data_digest(data);
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(inbox::ANNOTATION_DATA_DIGEST.into(), digest);
}

/// Controller ownerReference to the Inbox (blocking its foreground deletion).
pub fn owner_reference(inbox: &Inbox) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..inbox.controller_owner_ref(&())?
    })
}

/// Whether the Secret with metadata `meta` is controlled by the Inbox with `owner_uid`.
pub fn is_owned_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    !owner_uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid && o.kind == "Inbox" && o.controller == Some(true))
}

/// The digest of a Secret's data that [`inbox::ANNOTATION_DATA_DIGEST`] records: SHA-256 over
/// the keys and values in key order, hex-encoded.
pub fn data_digest(data: &BTreeMap<String, ByteString>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_be_bytes());
        h.update(&v.0);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Whether the data keys in `keys` still hold what this operator wrote, read from the
/// Secret's `managedFields` alone: each is owned by this operator's field manager. Kubernetes
/// moves a field to whoever changes its value, and drops it from every manager when it is
/// removed, so an edit or removal of one of our keys shows up here. Another manager that
/// applied the same value shares the field without changing it: that is not drift (and
/// applying again would leave it shared, so counting it as drift made every pass write
/// again, forever).
pub fn data_as_written<'a>(meta: &ObjectMeta, mut keys: impl Iterator<Item = &'a str>) -> bool {
    let entries = meta.managed_fields.as_deref().unwrap_or_default();
    let owns = |e: &ManagedFieldsEntry, key: &str| {
        let field = format!("f:{key}");
        match e.fields_v1.as_ref().map(|f| &f.0) {
            // As the API server sends it.
            Some(serde_json::Value::Object(f)) => {
                f.get("f:data").and_then(|d| d.get(&field)).is_some()
            }
            // As the cache keeps it ([`trim_managed_fields`]).
            Some(serde_json::Value::Array(owned)) => owned.iter().any(|k| k == field.as_str()),
            _ => false,
        }
    };
    let ours = |e: &ManagedFieldsEntry| e.manager.as_deref() == Some(inbox::FIELD_MANAGER);
    keys.all(|key| entries.iter().any(|e| ours(e) && owns(e, key)))
}

/// Trim a managed Secret's cached `managedFields` to what [`data_as_written`] reads: who owns
/// which key of `data`, as a flat list of the owned field names (`["f:address", ...]`) —
/// the API server's nested `{"f:data": {"f:address": {}}}` costs two JSON map nodes (≈ 1.3 KB)
/// per entry, for every cached Secret. Entries that own no data go.
pub fn trim_managed_fields(meta: &mut ObjectMeta) {
    let Some(entries) = meta.managed_fields.take() else {
        return;
    };
    let kept: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .filter_map(|e| {
            let serde_json::Value::Object(mut fields) = e.fields_v1?.0 else {
                return None;
            };
            let serde_json::Value::Object(data) = fields.remove("f:data")? else {
                return None;
            };
            let owned = data.into_iter().map(|(k, _)| serde_json::Value::String(k));
            Some(ManagedFieldsEntry {
                manager: e.manager,
                fields_v1: Some(FieldsV1(serde_json::Value::Array(owned.collect()))),
                ..ManagedFieldsEntry::default()
            })
        })
        .collect();
    meta.managed_fields = (!kept.is_empty()).then_some(kept);
}

/// What to do with the Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum SecretPlan {
    /// Absent: create it.
    Create,
    /// Ours, but out of date (edited, or spec labels changed): rewrite our fields.
    Update,
    /// Ours and correct: no write.
    UpToDate,
    /// A Secret of that name that this Inbox does not own: never touch it.
    Conflict,
}

/// Compare the existing Secret's metadata (if any) with the desired Secret. Its data is never
/// read: the digest annotation says what data was last written, its `managedFields` whether
/// anyone changed our keys since ([`data_as_written`]).
pub fn plan_secret(existing: Option<&ObjectMeta>, desired: &Secret, owner_uid: &str) -> SecretPlan {
    let keys = desired.data.iter().flatten().map(|(k, _)| k.as_str());
    plan_owned(existing, &desired.metadata, keys, owner_uid)
}

/// [`plan_secret`] for any object this Inbox owns whose `data` holds the data `keys`
/// (a Secret, a ConfigMap): create, conflict, up to date or update, from metadata alone.
pub fn plan_owned<'a>(
    existing: Option<&ObjectMeta>,
    desired: &ObjectMeta,
    keys: impl Iterator<Item = &'a str>,
    owner_uid: &str,
) -> SecretPlan {
    let Some(s) = existing else {
        return SecretPlan::Create;
    };
    if !is_owned_by(s, owner_uid) {
        return SecretPlan::Conflict;
    }
    let contains = |have: &Option<BTreeMap<String, String>>,
                    want: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    if data_as_written(s, keys)
        && contains(&s.labels, &desired.labels)
        && contains(&s.annotations, &desired.annotations)
    {
        SecretPlan::UpToDate
    } else {
        SecretPlan::Update
    }
}

/// Fixtures for the tests of the modules that handle owned objects.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// `managedFields` that give each of `keys` (and `metadata`) to `manager`.
    pub(crate) fn owning(manager: &str, keys: &[&str]) -> ManagedFieldsEntry {
        let data: serde_json::Map<_, _> = keys
            .iter()
            .map(|k| (format!("f:{k}"), serde_json::json!({})))
            .collect();
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:data": data,
                "f:metadata": { "f:labels": {} },
            }))),
            ..Default::default()
        }
    }

    /// The metadata of `secret` as the API server returns it after this operator wrote it.
    pub(crate) fn as_written(secret: &Secret) -> ObjectMeta {
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        ObjectMeta {
            managed_fields: Some(vec![owning(inbox::FIELD_MANAGER, &keys)]),
            ..secret.metadata.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::api::inbox::{InboxSpec, SecretSpec};

    fn remote(id: &str, address: &str) -> RemoteInbox {
        RemoteInbox::fixture(id, address)
    }

    fn inbox() -> Inbox {
        let mut i = Inbox::new("support", InboxSpec::default());
        i.metadata.namespace = Some("team".into());
        i.metadata.uid = Some("uid-1".into());
        i
    }

    #[test]
    fn owner_reference_is_a_blocking_controller_reference() {
        let o = owner_reference(&inbox()).unwrap();
        assert_eq!(
            (o.api_version.as_str(), o.kind.as_str(), o.uid.as_str()),
            ("agentsend.io/v1alpha1", "Inbox", "uid-1")
        );
        assert_eq!(
            (o.controller, o.block_owner_deletion),
            (Some(true), Some(true))
        );
        let mut no_uid = inbox();
        no_uid.metadata.uid = None;
        assert_eq!(owner_reference(&no_uid), None);
    }

    #[test]
    fn secret_layout() {
        let mut i = inbox();
        i.spec.secret = Some(Box::new(SecretSpec {
            name: Some("mail".into()),
            labels: Some([("team".to_string(), "a".to_string())].into()),
            ..Default::default()
        }));
        let mut r = remote("inb_1", "x@example.com");
        r.domain_id = Some("dom".into());
        let s = desired_secret(&i, &r).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("mail"));
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "inbox-operator");
        assert_eq!(labels["agentsend.io/inbox"], "support");
        assert_eq!(labels["team"], "a");
        let annotations = s.metadata.annotations.clone().unwrap();
        assert_eq!(annotations["agentsend.io/inbox-name"], "support");
        let data = s.data.clone().unwrap();
        assert_eq!(data["address"].0, b"x@example.com");
        assert_eq!(data["inboxId"].0, b"inb_1");
        assert_eq!(data["domainId"].0, b"dom");
        assert_eq!(data.len(), 3);
        assert!(is_owned_by(&s.metadata, "uid-1"));
        assert!(!is_owned_by(&s.metadata, "uid-2"));
        let digest = &annotations["agentsend.io/data-digest"];
        assert_eq!(digest, &data_digest(&data));
        assert!(digest.starts_with("sha256:") && digest.len() == 7 + 64);
    }

    #[test]
    fn long_inbox_names_get_a_valid_label_and_the_full_name_annotated() {
        let mut i = inbox();
        let long = format!("{}-inbox", "very-long-name".repeat(5));
        i.metadata.name = Some(long.clone());
        let s = desired_secret(&i, &remote("inb_1", "x@example.com")).unwrap();
        let label = &s.metadata.labels.clone().unwrap()["agentsend.io/inbox"];
        assert!(
            label.len() <= 63 && crate::controller::inbox::outputs::meta::is_label_value(label),
            "{label}"
        );
        assert_eq!(
            s.metadata.annotations.clone().unwrap()["agentsend.io/inbox-name"],
            long
        );
        assert_eq!(s.metadata.name.as_deref(), Some(long.as_str()));
    }
    #[test]
    fn secret_plans() {
        let i = inbox();
        let r = remote("inb_1", "x@agentsend.io");
        let want = desired_secret(&i, &r).unwrap();
        assert_eq!(plan_secret(None, &want, "uid-1"), SecretPlan::Create);
        let written = as_written(&want);
        let with = |f: &dyn Fn(&mut ObjectMeta)| {
            let mut m = written.clone();
            f(&mut m);
            m
        };
        let managers = |entries: Vec<ManagedFieldsEntry>| {
            with(&move |m: &mut ObjectMeta| m.managed_fields = Some(entries.clone()))
        };
        let ours = |keys: &[&str]| owning(inbox::FIELD_MANAGER, keys);
        let cases = [
            ("as written", written.clone(), SecretPlan::UpToDate),
            (
                "not ours",
                with(&|m| m.owner_references = None),
                SecretPlan::Conflict,
            ),
            (
                "address edited by someone else",
                managers(vec![
                    ours(&["inboxId"]),
                    owning("kubectl-edit", &["address"]),
                ]),
                SecretPlan::Update,
            ),
            (
                "address removed",
                managers(vec![ours(&["inboxId"])]),
                SecretPlan::Update,
            ),
            (
                "the same values applied by another manager too (shared): not drift",
                managers(vec![
                    ours(&["address", "inboxId"]),
                    owning("gitops-tool", &["address", "inboxId"]),
                ]),
                SecretPlan::UpToDate,
            ),
            (
                "a key of someone else's added",
                managers(vec![
                    ours(&["address", "inboxId"]),
                    owning("kubectl-edit", &["note"]),
                ]),
                SecretPlan::UpToDate,
            ),
            (
                "written for another inbox (digest differs)",
                with(&|m| {
                    m.annotations
                        .get_or_insert_default()
                        .insert(inbox::ANNOTATION_DATA_DIGEST.into(), "sha256:old".into());
                }),
                SecretPlan::Update,
            ),
            (
                "written before digests existed",
                with(&|m| {
                    m.annotations
                        .get_or_insert_default()
                        .remove(inbox::ANNOTATION_DATA_DIGEST);
                }),
                SecretPlan::Update,
            ),
            (
                "no managedFields: cannot tell, restore",
                with(&|m| m.managed_fields = None),
                SecretPlan::Update,
            ),
        ];
        for (case, existing, plan) in cases {
            assert_eq!(plan_secret(Some(&existing), &want, "uid-1"), plan, "{case}");
        }
    }

    #[test]
    fn digests_differ_with_any_key_or_value() {
        let d = |pairs: &[(&str, &str)]| {
            data_digest(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            )
        };
        let base = d(&[("address", "a@x"), ("inboxId", "inb_1")]);
        assert_eq!(base, d(&[("inboxId", "inb_1"), ("address", "a@x")]));
        assert_ne!(base, d(&[("address", "b@x"), ("inboxId", "inb_1")]));
        assert_ne!(base, d(&[("address", "a@x"), ("inboxId", "inb_2")]));
        // Length prefixes: moving bytes between key and value changes the digest.
        assert_ne!(d(&[("ab", "c")]), d(&[("a", "bc")]));
    }

    #[test]
    fn the_cached_managed_fields_keep_only_data_ownership() {
        let mut m = ObjectMeta {
            managed_fields: Some(vec![
                owning(inbox::FIELD_MANAGER, &["address"]),
                ManagedFieldsEntry {
                    manager: Some("labeler".into()),
                    fields_v1: Some(FieldsV1(serde_json::json!({"f:metadata": {}}))),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        trim_managed_fields(&mut m);
        let kept = m.managed_fields.clone().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].fields_v1.as_ref().unwrap().0,
            serde_json::json!(["f:address"])
        );
        assert!(data_as_written(&m, ["address"].into_iter()));
        assert!(!data_as_written(&m, ["inboxId"].into_iter()));
    }
}
