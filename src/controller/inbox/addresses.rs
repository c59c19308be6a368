//! What an inbox's identity and address must be, pure: the spec compared with a bound inbox,
//! the address a create names, and which inbox of an account an interrupted create made
//! (the recovery matching).

use std::collections::HashSet;
use std::time::Duration;

use crate::agentsend::{CreateInbox, RemoteInbox, SHARED_DOMAIN};
use crate::api::inbox::InboxSpec;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
