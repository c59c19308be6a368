//! Pure building blocks of the planner ([`super::plan`]): identity comparison, recovery
//! matching of an interrupted create, the Secret's layout and drift check, and the backoff
//! curves. No IO here; every function is unit-tested without a cluster or a network.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::agentsend::{CreateInbox, RemoteInbox};
use crate::crd::{self, Inbox, InboxSpec};

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
    if opt_differs(&spec.display_name, &remote.display_name) {
        return Some(FieldMismatch {
            field: "displayName",
            message: format!(
                "spec.displayName is {:?} but the inbox's display name is {:?}",
                spec.display_name, remote.display_name
            ),
        });
    }
    if opt_differs(&spec.domain_id, &remote.domain_id) {
        return Some(FieldMismatch {
            field: "domainId",
            message: format!(
                "spec.domainId is {:?} but the inbox's domain is {:?}",
                spec.domain_id, remote.domain_id
            ),
        });
    }
    None
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

/// The create request for a spec.
pub fn create_request(spec: &InboxSpec) -> CreateInbox {
    CreateInbox {
        address: spec.address.clone(),
        display_name: spec.display_name.clone(),
        domain_id: spec.domain_id.clone(),
    }
}

/// What to do about a create that may or may not have happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Exactly one inbox matches: bind it.
    Bind(RemoteInbox),
    /// No inbox matches: the create did not happen; create now.
    CreateNew,
    /// Several inboxes match: a human must choose (`spec.inboxId`).
    Ambiguous(Vec<String>),
}

/// Clock skew tolerated between the operator (pending mark) and AgentSend (`createdAt`).
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// Find the inbox a lost create may have made.
///
/// With an address in the spec the address decides (addresses are unique). For random
/// addresses: same display name and domain, created after the pending mark (minus clock skew),
/// and bound to no other Inbox in the cluster.
pub fn recover_pending(
    spec: &InboxSpec,
    pending_since: Option<jiff::Timestamp>,
    candidates: &[RemoteInbox],
    bound_elsewhere: &HashSet<String>,
) -> Recovery {
    let not_before = pending_since.and_then(|t| {
        t.checked_sub(jiff::SignedDuration::try_from(CLOCK_SKEW).ok()?)
            .ok()
    });
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
        [] => Recovery::CreateNew,
        [one] => Recovery::Bind((*one).clone()),
        many => Recovery::Ambiguous(many.iter().map(|c| c.id.clone()).collect()),
    }
}

/// The Secret this Inbox should own for `remote`; `None` when the Inbox has no name or UID
/// (never true for an object read from the API server).
pub fn desired_secret(inbox: &Inbox, remote: &RemoteInbox) -> Option<Secret> {
    let owner = owner_reference(inbox)?;
    let name = inbox.secret_name();
    let inbox_name = inbox.metadata.name.clone()?;
    let mut labels = inbox
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.labels.clone())
        .unwrap_or_default();
    labels.insert(crd::LABEL_MANAGED_BY.into(), crd::MANAGED_BY.into());
    labels.insert(
        crd::LABEL_INBOX.into(),
        crate::meta::label_value_for_name(&inbox_name),
    );
    let mut annotations = inbox
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.annotations.clone())
        .unwrap_or_default();
    annotations.insert(crd::ANNOTATION_INBOX_NAME.into(), inbox_name.clone());
    let mut data = BTreeMap::new();
    data.insert(
        "address".to_string(),
        ByteString(remote.address.clone().into_bytes()),
    );
    data.insert(
        "inboxId".to_string(),
        ByteString(remote.id.clone().into_bytes()),
    );
    if let Some(d) = &remote.domain_id {
        data.insert("domainId".to_string(), ByteString(d.clone().into_bytes()));
    }
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: inbox.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Default::default()
    })
}

/// Controller ownerReference to the Inbox (blocking its foreground deletion).
pub fn owner_reference(inbox: &Inbox) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..inbox.controller_owner_ref(&())?
    })
}

/// Whether `secret` is controlled by the Inbox with `owner_uid`.
pub fn is_owned_by(secret: &Secret, owner_uid: &str) -> bool {
    !owner_uid.is_empty()
        && secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid && o.kind == "Inbox" && o.controller == Some(true))
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

/// Compare the existing Secret (if any) with the desired one.
pub fn plan_secret(existing: Option<&Secret>, desired: &Secret, owner_uid: &str) -> SecretPlan {
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
    let data_ok = desired
        .data
        .iter()
        .flatten()
        .all(|(k, v)| s.data.as_ref().and_then(|d| d.get(k)) == Some(v));
    let type_ok = s.type_.as_deref().unwrap_or("Opaque") == "Opaque";
    if data_ok
        && type_ok
        && contains(&s.metadata.labels, &desired.metadata.labels)
        && contains(&s.metadata.annotations, &desired.metadata.annotations)
    {
        SecretPlan::UpToDate
    } else {
        SecretPlan::Update
    }
}

/// Delay before deciding again after a write was refused because this pass read a stale
/// cache view: 0.5–1 s the first time, then [`backoff`] (the watch may be down for a while).
pub fn stale_view_delay(failures: u32, jitter: f64) -> Duration {
    match failures {
        0 => Duration::from_millis(500).mul_f64(1.0 + jitter.clamp(0.0, 1.0)),
        n => backoff(n, jitter),
    }
}

/// Exponential backoff from 1 s, doubling per failure, capped at 5 minutes; full jitter on
/// the upper half so retries never bunch up yet never get shorter than half the step.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let step = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.min(9))
        .min(Duration::from_secs(300));
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretSpec;

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

    #[test]
    fn recovery_by_address() {
        let spec = InboxSpec {
            address: Some("support@agentsend.io".into()),
            ..Default::default()
        };
        let cands = vec![
            remote("1", "other@agentsend.io"),
            remote("2", "support@agentsend.io"),
        ];
        assert_eq!(
            recover_pending(&spec, None, &cands, &HashSet::new()),
            Recovery::Bind(cands[1].clone())
        );
        let bound: HashSet<String> = ["2".to_string()].into();
        assert_eq!(
            recover_pending(&spec, None, &cands, &bound),
            Recovery::CreateNew
        );
    }

    #[test]
    fn recovery_random_address() {
        let spec = InboxSpec {
            display_name: Some("Bot".into()),
            ..Default::default()
        };
        let pending: jiff::Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        let mut old = remote("old", "a@agentsend.io");
        old.display_name = Some("Bot".into());
        old.created_at = Some("2026-11-24T09:00:00.000Z".into());
        let mut new = remote("new", "b@agentsend.io");
        new.display_name = Some("Bot".into());
        new.created_at = Some("2026-11-24T10:00:01.000Z".into());
        let mut other_name = remote("x", "c@agentsend.io");
        other_name.created_at = new.created_at.clone();
        let none = HashSet::new();
        let cands = vec![new.clone(), other_name, old.clone()];
        assert_eq!(
            recover_pending(&spec, Some(pending), &cands, &none),
            Recovery::Bind(new.clone())
        );
        // Nothing created after the mark: create.
        assert_eq!(
            recover_pending(&spec, Some(pending), &[old.clone()], &none),
            Recovery::CreateNew
        );
        // Two candidates: a human decides.
        let mut new2 = new.clone();
        new2.id = "new2".into();
        match recover_pending(&spec, Some(pending), &[new.clone(), new2], &none) {
            Recovery::Ambiguous(ids) => assert_eq!(ids, ["new", "new2"]),
            other => panic!("{other:?}"),
        }
        // Small clock skew is tolerated.
        let mut skewed = new.clone();
        skewed.created_at = Some("2026-11-24T09:59:30.000Z".into());
        assert_eq!(
            recover_pending(&spec, Some(pending), &[skewed.clone()], &none),
            Recovery::Bind(skewed)
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
        i.spec.secret = Some(SecretSpec {
            name: Some("mail".into()),
            labels: Some([("team".to_string(), "a".to_string())].into()),
            annotations: None,
        });
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
        assert!(is_owned_by(&s, "uid-1"));
        assert!(!is_owned_by(&s, "uid-2"));
    }

    #[test]
    fn long_inbox_names_get_a_valid_label_and_the_full_name_annotated() {
        let mut i = inbox();
        let long = format!("{}-inbox", "very-long-name".repeat(5));
        i.metadata.name = Some(long.clone());
        let s = desired_secret(&i, &remote("inb_1", "x@example.com")).unwrap();
        let label = &s.metadata.labels.clone().unwrap()["agentsend.io/inbox"];
        assert!(
            label.len() <= 63 && crate::meta::is_label_value(label),
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
        assert_eq!(
            plan_secret(Some(&want), &want, "uid-1"),
            SecretPlan::UpToDate
        );
        let mut foreign = want.clone();
        foreign.metadata.owner_references = None;
        assert_eq!(
            plan_secret(Some(&foreign), &want, "uid-1"),
            SecretPlan::Conflict
        );
        let mut edited = want.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("address".into(), ByteString(b"evil@x".to_vec()));
        assert_eq!(
            plan_secret(Some(&edited), &want, "uid-1"),
            SecretPlan::Update
        );
        let mut extra = want.clone();
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("note".into(), ByteString(b"hi".to_vec()));
        assert_eq!(
            plan_secret(Some(&extra), &want, "uid-1"),
            SecretPlan::UpToDate
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0, 0.0) >= Duration::from_millis(500));
        assert!(backoff(3, 0.0) > backoff(0, 0.0));
        assert!(backoff(30, 1.0) <= Duration::from_secs(300));
    }

    #[test]
    fn stale_views_are_retried_soon_then_backed_off() {
        for j in [0.0, 0.5, 1.0] {
            let first = stale_view_delay(0, j);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        }
        // A watch that stays down must not cost a write attempt per second per Inbox.
        assert!(stale_view_delay(5, 0.0) >= Duration::from_secs(16));
        assert!(stale_view_delay(50, 1.0) <= Duration::from_secs(300));
    }
}
