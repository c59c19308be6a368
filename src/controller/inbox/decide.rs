//! Pure building blocks of the planner ([`crate::controller::inbox::plan`]): identity comparison, recovery
//! matching of an interrupted create, the Secret's layout and drift check, and the backoff
//! curves. No IO here; every function is unit-tested without a cluster or a network.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference,
};
use kube::Resource;

use crate::agentsend::{CreateInbox, RemoteInbox, SHARED_DOMAIN};
use crate::api::inbox::{self, DeletionPolicy, DeletionPolicySource, Inbox, InboxSpec};
use crate::controller::ownership::proof::Origin;

/// A spec field that no longer matches the bound inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMismatch {
    /// The spec field's JSON name (`address`, `displayName`, `domainId`, `inboxId`).
    pub field: &'static str,
    /// What the user should know.
    pub message: String,
}

/// Whether `spec_address` (local part or full address) denotes `actual`.
pub fn address_matches(spec_address: &str, actual: &str) -> bool {
    if spec_address.contains('@') {
        spec_address.eq_ignore_ascii_case(actual)
    } else {
        actual
            .split_once('@')
            .is_some_and(|(local, _)| local.eq_ignore_ascii_case(spec_address))
    }
}

/// Compare the spec's identity fields with the inbox.
///
/// `strict` (inboxes this operator created): a display name or domain present on one side
/// only is a change too. Not strict (adopted inboxes): only fields set in the spec must match.
pub fn identity_mismatch(
    spec: &InboxSpec,
    remote: &RemoteInbox,
    strict: bool,
) -> Option<FieldMismatch> {
    if let Some(a) = &spec.address
        && !address_matches(a, &remote.address)
    {
        return Some(FieldMismatch {
            field: "address",
            message: format!(
                "spec.address is {a:?} but the inbox's address is {:?}",
                remote.address
            ),
        });
    }
    let opt_differs = |want: &Option<String>, have: &Option<String>| match (want, have) {
        (Some(w), Some(h)) => w != h,
        (Some(_), None) => true,
        (None, Some(_)) => strict,
        (None, None) => false,
    };
    let optional_fields = [
        (
            "displayName",
            "display name",
            &spec.display_name,
            &remote.display_name,
        ),
        ("domainId", "domain", &spec.domain_id, &remote.domain_id),
    ];
    for (field, what, want, have) in optional_fields {
        if opt_differs(want, have) {
            return Some(FieldMismatch {
                field,
                message: format!("spec.{field} is {want:?} but the inbox's {what} is {have:?}"),
            });
        }
    }
    None
}

/// The inbox an observe-only Inbox names by `spec.address`: exactly that address (a local
/// part on `spec.domainId`, the shared domain without one), matching the other identity
/// fields set in the spec; never a deleted one.
pub fn observed_by_address<'r>(
    spec: &InboxSpec,
    candidates: &'r [RemoteInbox],
) -> Option<&'r RemoteInbox> {
    let address = spec.address.as_deref()?;
    candidates.iter().find(|r| {
        r.status != crate::agentsend::InboxState::Deleted
            && identity_mismatch(spec, r, false).is_none()
            && (address.contains('@') || r.domain_id == spec.domain_id)
    })
}

/// A change of `spec.inboxId` away from the inbox already bound.
pub fn inbox_id_changed(spec: &InboxSpec, bound: &str) -> Option<FieldMismatch> {
    match &spec.inbox_id {
        Some(want) if want != bound => Some(FieldMismatch {
            field: "inboxId",
            message: format!("spec.inboxId is {want:?} but this Inbox is bound to {bound:?}"),
        }),
        _ => None,
    }
}

/// The message for an immutable-field change: what happened and what to do.
pub fn immutable_message(m: &FieldMismatch) -> String {
    format!(
        "{}. {} cannot change after creation (AgentSend has no update call, and recreating would destroy mail): revert the field, or create a new Inbox",
        m.message, m.field
    )
}

/// The create request for a spec, naming the `address` persisted in the pending mark.
pub fn create_request(spec: &InboxSpec, address: &str) -> CreateInbox {
    CreateInbox {
        address: Some(address.to_string()),
        display_name: spec.display_name.clone(),
        domain_id: spec.domain_id.clone(),
    }
}

/// Length of the local parts the operator generates: 16 of `a-z0-9` ≈ 82 bits, unguessable.
pub const RANDOM_LOCAL_LEN: usize = 16;

/// A random local part of [`RANDOM_LOCAL_LEN`] lowercase letters and digits, drawn from `pick`
/// (each call returns an index below its argument).
pub fn random_local_part(mut pick: impl FnMut(usize) -> usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..RANDOM_LOCAL_LEN)
        .map(|_| char::from(ALPHABET[pick(ALPHABET.len()) % ALPHABET.len()]))
        .collect()
}

/// The address a new create names: `spec.address` as written; otherwise `previous` (the
/// address of a vanished inbox being re-created); otherwise the random `local` part — the full
/// address on the shared domain, or the local part alone with a `domainId`.
pub fn address_to_create(spec: &InboxSpec, previous: Option<&str>, local: &str) -> String {
    if let Some(a) = &spec.address {
        return a.clone();
    }
    if let Some(p) = previous {
        return p.to_string();
    }
    match &spec.domain_id {
        Some(_) => local.to_string(),
        None => format!("{local}@{SHARED_DOMAIN}"),
    }
}

/// Where the address of a pending create stands in the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressLookup {
    /// The account holds it, and the mark's proof shows it cannot have existed before this
    /// Inbox's create: our create.
    Ours(RemoteInbox),
    /// The account holds it, and nothing proves it is ours (it existed before the listing that
    /// found the address absent, or was created after the create could have been sent):
    /// someone else's inbox, never bound.
    Older(RemoteInbox),
    /// Not in the account: the create did not happen (yet).
    Absent,
}

/// How long after the listing that found a chosen address absent an inbox of that address
/// can still be this Inbox's create: the create is sent in the same pass, seconds later;
/// the margin covers a slow API that commits late. An inbox of the address created later
/// was not created by this Inbox.
pub const CREATE_WINDOW: Duration = Duration::from_secs(600);

/// The inbox of the account that holds `address` (exact match, same domain), if any.
pub fn holder_of<'c>(
    spec: &InboxSpec,
    address: &str,
    candidates: &'c [RemoteInbox],
) -> Option<&'c RemoteInbox> {
    candidates
        .iter()
        .find(|c| address_matches(address, &c.address) && c.domain_id == spec.domain_id)
}

/// Look up the pending create's `address` among the account's inboxes, and decide from the
/// mark's proven `origin` whether an inbox found there is this Inbox's: a generated address
/// is nobody else's; a chosen one is ours only if it was created within [`CREATE_WINDOW`]
/// after the listing that found it absent (both times from the API's clock, so no skew).
pub fn find_address(
    spec: &InboxSpec,
    address: &str,
    origin: Origin,
    candidates: &[RemoteInbox],
) -> AddressLookup {
    let Some(found) = holder_of(spec, address, candidates) else {
        return AddressLookup::Absent;
    };
    let ours = match origin {
        Origin::Random | Origin::SeenAbsent(None) => true,
        Origin::SeenAbsent(Some(listed)) => found
            .created_at
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|created| {
                let window = i64::try_from(CREATE_WINDOW.as_secs()).unwrap_or(i64::MAX);
                let second = created.as_second();
                second >= listed && second <= listed.saturating_add(window)
            }),
    };
    if ours {
        AddressLookup::Ours(found.clone())
    } else {
        AddressLookup::Older(found.clone())
    }
}

/// What a create started by an earlier version (AgentSend chose the address) may have made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Exactly one inbox matches.
    One(RemoteInbox),
    /// No inbox matches: the create did not happen.
    None,
    /// Several inboxes match.
    Ambiguous(Vec<String>),
}

/// Clock skew tolerated between the operator (pending mark) and AgentSend (`createdAt`).
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// Find the inbox a lost create of an earlier version may have made (a legacy timestamp
/// mark): same address (when the spec names one), or same display name and domain created
/// after the mark (minus clock skew); bound to no other Inbox in the cluster. The planner
/// never binds or deletes on this guess; a human decides.
pub fn recover_legacy(
    spec: &InboxSpec,
    pending_since: jiff::Timestamp,
    candidates: &[RemoteInbox],
    bound_elsewhere: &HashSet<String>,
) -> Recovery {
    let not_before = jiff::SignedDuration::try_from(CLOCK_SKEW)
        .ok()
        .and_then(|skew| pending_since.checked_sub(skew).ok());
    let matches: Vec<&RemoteInbox> = candidates
        .iter()
        .filter(|c| !bound_elsewhere.contains(&c.id))
        .filter(|c| match &spec.address {
            Some(a) => {
                address_matches(a, &c.address)
                    && (spec.domain_id.is_none() || c.domain_id == spec.domain_id)
            }
            None => {
                c.display_name == spec.display_name
                    && c.domain_id == spec.domain_id
                    && match (
                        not_before,
                        c.created_at
                            .as_deref()
                            .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
                    ) {
                        (Some(nb), Some(created)) => created >= nb,
                        // No usable time on either side: cannot exclude it.
                        _ => true,
                    }
            }
        })
        .collect();
    match matches.as_slice() {
        [] => Recovery::None,
        [one] => Recovery::One((*one).clone()),
        many => Recovery::Ambiguous(many.iter().map(|c| c.id.clone()).collect()),
    }
}

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

/// Delay before deciding again after a write was refused because this pass read a stale
/// cache view: 0.5–1 s the first time, then [`backoff`] (the watch may be down for a while).
pub fn stale_view_delay(failures: u32, jitter: f64, max: Duration) -> Duration {
    match failures {
        0 => Duration::from_millis(500).mul_f64(1.0 + jitter.clamp(0.0, 1.0)),
        n => backoff(n, jitter, max),
    }
}

/// The default cap of [`backoff`] (`--max-retry-delay`).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// Exponential backoff from 1 s, doubling per failure, capped at `max` (and at
/// [`MAX_RETRY_DELAY`]'s 5 minutes at most); full jitter on the upper half so retries never
/// bunch up yet never get shorter than half the step.
pub fn backoff(failures: u32, jitter: f64, max: Duration) -> Duration {
    let step = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.min(9))
        .min(max)
        .min(MAX_RETRY_DELAY);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// The deletion policy that applies, and where it comes from: the spec's own field wins;
/// else the namespace's `agentsend.io/default-deletion-policy` annotation (`namespace`:
/// `None` while not read, `Some(None)` when absent); else `Delete`. An annotation that is
/// neither `Delete` nor `Orphan` counts as `Orphan`: a typo never destroys mail.
pub fn deletion_policy(
    spec: Option<DeletionPolicy>,
    namespace: Option<Option<&str>>,
) -> Option<(DeletionPolicy, DeletionPolicySource)> {
    if let Some(p) = spec {
        return Some((p, DeletionPolicySource::Spec));
    }
    Some(match namespace? {
        None => (DeletionPolicy::Delete, DeletionPolicySource::Default),
        Some(v) => (
            DeletionPolicy::parse(v).unwrap_or(DeletionPolicy::Orphan),
            DeletionPolicySource::Namespace,
        ),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::inbox::SecretSpec;

    fn remote(id: &str, address: &str) -> RemoteInbox {
        RemoteInbox::fixture(id, address)
    }

    #[test]
    fn address_matching() {
        assert!(address_matches("support", "support@example.com"));
        assert!(address_matches(
            "Support@Example.com",
            "support@example.com"
        ));
        assert!(!address_matches("sales", "support@example.com"));
        assert!(!address_matches("support@other.com", "support@example.com"));
    }

    #[test]
    fn identity_strict_and_adopted() {
        let mut r = remote("i", "support@example.com");
        r.display_name = Some("Support".into());
        r.domain_id = Some("dom_1".into());
        let spec = InboxSpec {
            address: Some("support".into()),
            display_name: Some("Support".into()),
            domain_id: Some("dom_1".into()),
            ..Default::default()
        };
        assert_eq!(identity_mismatch(&spec, &r, true), None);
        let changed = InboxSpec {
            display_name: Some("Help".into()),
            ..spec.clone()
        };
        assert_eq!(
            identity_mismatch(&changed, &r, true).unwrap().field,
            "displayName"
        );
        let removed = InboxSpec {
            display_name: None,
            ..spec.clone()
        };
        assert_eq!(
            identity_mismatch(&removed, &r, true).unwrap().field,
            "displayName"
        );
        assert_eq!(
            identity_mismatch(&removed, &r, false),
            None,
            "adoption only checks set fields"
        );
        let moved = InboxSpec {
            address: Some("sales".into()),
            ..spec.clone()
        };
        let m = identity_mismatch(&moved, &r, false).unwrap();
        assert_eq!(m.field, "address");
        assert!(immutable_message(&m).contains("revert"));
        let dom = InboxSpec {
            domain_id: Some("dom_2".into()),
            ..spec
        };
        assert_eq!(
            identity_mismatch(&dom, &r, false).unwrap().field,
            "domainId"
        );
    }

    #[test]
    fn inbox_id_change() {
        let spec = InboxSpec {
            inbox_id: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(inbox_id_changed(&spec, "a"), None);
        assert_eq!(inbox_id_changed(&spec, "b").unwrap().field, "inboxId");
        assert_eq!(inbox_id_changed(&InboxSpec::default(), "b"), None);
    }

    fn at(id: &str, address: &str, created: &str) -> RemoteInbox {
        RemoteInbox {
            created_at: Some(created.into()),
            ..remote(id, address)
        }
    }

    #[test]
    fn every_create_names_its_address() {
        let mut spec = InboxSpec::default();
        assert_eq!(address_to_create(&spec, None, "k3x9"), "k3x9@agentsend.io");
        // A vanished inbox comes back with the address the app already uses.
        assert_eq!(
            address_to_create(&spec, Some("old@agentsend.io"), "k3x9"),
            "old@agentsend.io"
        );
        spec.domain_id = Some("dom_1".into());
        assert_eq!(address_to_create(&spec, None, "k3x9"), "k3x9");
        spec.address = Some("support".into());
        assert_eq!(
            address_to_create(&spec, Some("old@x.com"), "k3x9"),
            "support"
        );
        let req = create_request(&spec, "support");
        assert_eq!(req.address.as_deref(), Some("support"));
        assert_eq!(req.domain_id.as_deref(), Some("dom_1"));
    }

    #[test]
    fn random_local_parts_are_lowercase_alphanumeric() {
        let mut n = 0;
        let local = random_local_part(|len| {
            n += 7;
            n % len
        });
        assert_eq!(local.len(), RANDOM_LOCAL_LEN);
        assert!(
            local
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }

    #[test]
    fn a_pending_address_is_ours_only_as_its_proof_says() {
        let listed: i64 = "2026-11-24T10:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let named = InboxSpec {
            address: Some("support".into()),
            ..Default::default()
        };
        let new = at("new", "support@agentsend.io", "2026-11-24T10:00:01.000Z");
        let same_second = at("s", "support@agentsend.io", "2026-11-24T10:00:00.500Z");
        let before = at("b", "support@agentsend.io", "2026-11-24T09:59:59.000Z");
        let late = at("l", "support@agentsend.io", "2026-11-24T10:10:00.000Z");
        let too_late = at("t", "support@agentsend.io", "2026-11-24T10:10:01.000Z");
        let timeless = RemoteInbox {
            created_at: None,
            ..new.clone()
        };
        let other = at("x", "other@agentsend.io", "2026-11-24T10:00:01.000Z");
        let seen = Origin::SeenAbsent(Some(listed));
        let generated = InboxSpec::default();
        let ours = |r: &RemoteInbox| AddressLookup::Ours(r.clone());
        let older = |r: &RemoteInbox| AddressLookup::Older(r.clone());
        let rows: Vec<(&str, &InboxSpec, Origin, Vec<RemoteInbox>, AddressLookup)> = vec![
            (
                "created after the listing",
                &named,
                seen,
                vec![other.clone(), new.clone()],
                ours(&new),
            ),
            (
                "in the listing's second",
                &named,
                seen,
                vec![same_second.clone()],
                ours(&same_second),
            ),
            (
                "existed before the listing (a clock-skew window no longer admits it)",
                &named,
                seen,
                vec![before.clone()],
                older(&before),
            ),
            (
                "at the window's end",
                &named,
                seen,
                vec![late.clone()],
                ours(&late),
            ),
            (
                "after the window: not this Inbox's create",
                &named,
                seen,
                vec![too_late.clone()],
                older(&too_late),
            ),
            (
                "no createdAt: cannot be proven",
                &named,
                seen,
                vec![timeless.clone()],
                older(&timeless),
            ),
            (
                "absent",
                &named,
                seen,
                vec![other.clone()],
                AddressLookup::Absent,
            ),
            (
                "seen absent, the server gave no time",
                &named,
                Origin::SeenAbsent(None),
                vec![before.clone()],
                ours(&before),
            ),
            (
                "generated: nobody else's",
                &generated,
                Origin::Random,
                vec![before.clone()],
                ours(&before),
            ),
        ];
        for (what, spec, origin, candidates, want) in rows {
            assert_eq!(
                find_address(spec, "support@agentsend.io", origin, &candidates),
                want,
                "{what}"
            );
        }
        // Same local part on another domain is not it.
        let on_domain = InboxSpec {
            domain_id: Some("dom_1".into()),
            ..named.clone()
        };
        assert_eq!(
            find_address(&on_domain, "support", seen, std::slice::from_ref(&new)),
            AddressLookup::Absent
        );
        assert_eq!(
            holder_of(&named, "support", std::slice::from_ref(&new)),
            Some(&new)
        );
    }

    #[test]
    fn legacy_marks_are_matched_by_address_or_name_and_time() {
        let none = HashSet::new();
        let named = InboxSpec {
            address: Some("support@agentsend.io".into()),
            ..Default::default()
        };
        let pending: jiff::Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let cands = vec![
            remote("1", "other@agentsend.io"),
            remote("2", "support@agentsend.io"),
        ];
        assert_eq!(
            recover_legacy(&named, pending, &cands, &none),
            Recovery::One(cands[1].clone())
        );
        let bound: HashSet<String> = ["2".to_string()].into();
        assert_eq!(
            recover_legacy(&named, pending, &cands, &bound),
            Recovery::None
        );

        let bot = InboxSpec {
            display_name: Some("Bot".into()),
            ..Default::default()
        };
        let named_bot = |id: &str, created: &str| RemoteInbox {
            display_name: Some("Bot".into()),
            ..at(id, &format!("{id}@agentsend.io"), created)
        };
        let old = named_bot("old", "2026-11-24T09:00:00.000Z");
        let new = named_bot("new", "2026-11-24T10:00:01.000Z");
        assert_eq!(
            recover_legacy(&bot, pending, &[new.clone(), old.clone()], &none),
            Recovery::One(new.clone())
        );
        assert_eq!(recover_legacy(&bot, pending, &[old], &none), Recovery::None);
        let new2 = named_bot("new2", "2026-11-24T10:00:02.000Z");
        assert_eq!(
            recover_legacy(&bot, pending, &[new, new2], &none),
            Recovery::Ambiguous(vec!["new".into(), "new2".into()])
        );
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

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = MAX_RETRY_DELAY;
        assert!(backoff(0, 0.0, max) >= Duration::from_millis(500));
        assert!(backoff(3, 0.0, max) > backoff(0, 0.0, max));
        assert!(backoff(30, 1.0, max) <= Duration::from_secs(300));
        // A lower cap (--max-retry-delay) bounds every step, jitter included; never a
        // higher one than 5 minutes.
        let two = Duration::from_secs(2);
        for failures in [0, 1, 5, 30] {
            assert!(backoff(failures, 0.99, two) <= two);
            assert!(backoff(failures, 0.0, two) >= Duration::from_millis(500));
        }
        assert!(backoff(30, 1.0, Duration::MAX) <= Duration::from_secs(300));
    }

    #[test]
    fn stale_views_are_retried_soon_then_backed_off() {
        for j in [0.0, 0.5, 1.0] {
            let first = stale_view_delay(0, j, MAX_RETRY_DELAY);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        }
        // A watch that stays down must not cost a write attempt per second per Inbox.
        assert!(stale_view_delay(5, 0.0, MAX_RETRY_DELAY) >= Duration::from_secs(16));
        assert!(stale_view_delay(50, 1.0, MAX_RETRY_DELAY) <= Duration::from_secs(300));
    }

    #[test]
    fn the_spec_wins_then_the_namespace_then_delete() {
        use DeletionPolicy::{Delete, Orphan};
        use DeletionPolicySource::{Default, Namespace, Spec};
        let cases = [
            (Some(Delete), Some(Some("Orphan")), Some((Delete, Spec))),
            (Some(Orphan), None, Some((Orphan, Spec))),
            (None, None, None),
            (None, Some(None), Some((Delete, Default))),
            (None, Some(Some("Orphan")), Some((Orphan, Namespace))),
            (None, Some(Some(" delete ")), Some((Delete, Namespace))),
            (None, Some(Some("keep")), Some((Orphan, Namespace))),
            (None, Some(Some("")), Some((Orphan, Namespace))),
        ];
        for (spec, ns, want) in cases {
            assert_eq!(deletion_policy(spec, ns), want, "{spec:?} {ns:?}");
        }
    }
}
