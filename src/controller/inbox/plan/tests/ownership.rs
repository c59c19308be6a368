//! Ownership on proof: the rows of claims, proofs and accounts, and the per-ID lookup of
//! who else names an inbox.

use std::collections::{HashMap, HashSet};

use crate::agentsend::RemoteInbox;
use crate::api::inbox::{self, Reason};
use crate::controller::inbox::plan::observed::{Claim, Marked, Observed};
use crate::controller::inbox::plan::outcome::stalled;
use crate::controller::inbox::plan::pass::plan;
use crate::controller::inbox::plan::step::Step;
use crate::controller::inbox::status::{self, StatusInput};

use super::{
    B, NOW, inb1, key, listed_at, obs, other_key, owner_claim, proof_key, ready_status,
    rejected_409,
};

/// Ownership on proof: what a tenant can write (annotations) is a claim to check, never
/// proof; the account a binding was made in is checked before a 404 counts as "gone".
pub(super) fn ownership_rows() -> Vec<(&'static str, B, &'static str)> {
    let pk = proof_key();
    let after_listing = RemoteInbox {
        created_at: Some("2026-11-28T09:59:02.000Z".into()),
        ..inb1()
    };
    let unverified = |o: &mut Observed| o.bindings_unavailable = Some("403 forbidden".into());
    let account_changed = status::build_status(StatusInput {
        previous: Some(&ready_status(&inb1())),
        generation: Some(2),
        inbox_id: Some("inb_1".into()),
        remote: None,
        secret_name: Some("mail".into()),
        readiness: stalled(Reason::AccountChanged, "elsewhere"),
        now: NOW,
    });
    vec![
        // ---- the inbox-id annotation
        (
            "an inbox-id annotation without proof (a tenant wrote it): who owns that ID is looked up for the message",
            obs().key().claims_unproven("inb_9"),
            "find bindings",
        ),
        (
            "an inbox-id annotation without proof: not bound, nothing created (the owner, if any, named)",
            obs().key().claims_unproven("inb_9").elsewhere(&["inb_9"]),
            "done Rejected +Rejected; settle",
        ),
        (
            "a proof copied from another Inbox proves nothing here",
            obs()
                .key()
                .claims_unproven("inb_9")
                .ann(
                    inbox::ANNOTATION_INBOX_ID_PROOF,
                    &pk.binding_proof("team", "other", "inb_9", &pk.fingerprint(&key())),
                )
                .elsewhere(&[]),
            "done Rejected +Rejected; settle",
        ),
        (
            "an unproven annotation naming the inbox spec.inboxId names: explicit adoption",
            obs().key().claims_unproven("inb_1").adopting("inb_1"),
            "fetch inb_1",
        ),
        (
            "an empty inbox-id annotation without proof does not unbind: status still binds",
            obs()
                .key()
                .claims_unproven("")
                .status(ready_status(&inb1()))
                .elsewhere(&[]),
            "fetch inb_1",
        ),
        (
            "bound by status alone (a GitOps replace dropped the annotations): the account is checked with a GET",
            obs().key().status(ready_status(&inb1())).elsewhere(&[]),
            "fetch inb_1",
        ),
        (
            "an unproven annotation beside a status binding: status wins, the annotation is rewritten",
            obs()
                .key()
                .claims_unproven("inb_9")
                .status(ready_status(&inb1()))
                .elsewhere(&[])
                .found(inb1()),
            "record binding inb_1",
        ),
        (
            "status-bound, this key does not find it: its account is unknown, so nothing is created",
            obs()
                .key()
                .status(ready_status(&inb1()))
                .elsewhere(&[])
                .gone(),
            "done AccountChanged; requeue 60s",
        ),
        // ---- the account a binding was made in
        (
            "bound in another account than the key's: a GET, not the scan cache, says whether it reaches it",
            obs().key().bound_in("inb_1", &other_key()),
            "fetch inb_1",
        ),
        (
            "another account, not found there: AccountChanged, never created there",
            obs().key().bound_in("inb_1", &other_key()).gone(),
            "done AccountChanged; requeue 60s",
        ),
        (
            "another key of the same account finds it (rotation): re-proven for the new key, no condition",
            obs().key().bound_in("inb_1", &other_key()).found(inb1()),
            "record binding inb_1",
        ),
        // ---- the create-pending mark
        (
            "a pending mark without proof: the account is listed before anything else",
            obs().key().pending_unproven(),
            "list candidates",
        ),
        (
            "a pending mark without proof whose address the account holds: named, never bound",
            obs()
                .key()
                .pending_unproven()
                .candidates(vec![inb1()])
                .elsewhere(&[]),
            "done CreationUncertain +CreationUncertain; settle",
        ),
        (
            "a pending mark without proof whose address the account lacks: start over with a mark of its own",
            obs().key().pending_unproven().candidates(vec![]),
            "mark pending r4nd0mr4nd0mr4nd@agentsend.io",
        ),
        (
            "a chosen address found created after the listing behind the mark: this Inbox's create",
            obs()
                .key()
                .pending_chosen()
                .progress(Reason::Creating)
                .candidates(vec![after_listing.clone()])
                .elsewhere(&[]),
            "bind inb_1 (Created)",
        ),
        (
            "a chosen address still absent at recovery: the proof of absence is renewed before the POST",
            obs()
                .key()
                .pending_chosen()
                .progress(Reason::Creating)
                .candidates(vec![])
                .with(|o| o.listed_at = Some(listed_at() + 60)),
            "mark pending support@agentsend.io (seen absent at Some(1795860000)) again",
        ),
        (
            "409 after a renewed mark: the holder may be the earlier attempt (a late commit), bound if in its window",
            obs()
                .key()
                .pending_chosen()
                .marked(Marked::Yes)
                .with(|o| o.resumed = true)
                .created(Err(rejected_409()))
                .candidates(vec![after_listing])
                .elsewhere(&[]),
            "bind inb_1 (Created)",
        ),
        // ---- deletion
        (
            "deleting, an unproven inbox-id annotation: nothing deleted in AgentSend",
            obs().deleting().key().claims_unproven("inb_9"),
            "read secret mail",
        ),
        (
            "deleting, an unproven pending mark: nothing deleted, not even looked up",
            obs().deleting().key().pending_unproven(),
            "read secret mail",
        ),
        (
            "deleting, bound in another account than the key's: a GET first",
            obs()
                .deleting()
                .key()
                .bound_in("inb_1", &other_key())
                .elsewhere(&[]),
            "fetch inb_1",
        ),
        (
            "deleting, that GET finds it: the same account, delete",
            obs()
                .deleting()
                .key()
                .bound_in("inb_1", &other_key())
                .elsewhere(&[])
                .found(inb1()),
            "delete inbox inb_1",
        ),
        (
            "deleting, this key does not reach it: a 404 from another account is not 'gone', the finalizer stays",
            obs()
                .deleting()
                .key()
                .bound_in("inb_1", &other_key())
                .elsewhere(&[])
                .gone(),
            "done AccountChanged; fail account changed; hold 500ms",
        ),
        (
            "Orphan after AccountChanged: released, with a Warning Orphaned naming the inbox left behind",
            obs()
                .deleting()
                .orphan()
                .bound_in("inb_1", &other_key())
                .status(account_changed),
            "announce warning Orphaned",
        ),
        // ---- fail closed
        (
            "adoption while the cluster-wide one-owner check fails: wait, nothing bound",
            obs().key().adopting("inb_1").found(inb1()).with(unverified),
            "done OwnershipUnverified; fail ownership unverified; hold 500ms",
        ),
        (
            "deletion while the check fails: no AgentSend call",
            obs().deleting().key().bound("inb_1").with(unverified),
            "done OwnershipUnverified; fail ownership unverified; hold 500ms",
        ),
    ]
}

/// Bindings are looked up for the IDs a decision needs, and again for an ID not looked up
/// yet in the same pass (a recovered inbox after a lookup of the vanished one): a claim
/// is never missed because another ID was checked first.
#[test]
fn bindings_are_looked_up_per_id_and_again_for_a_new_one() {
    let find = |b: &B| match plan(&b.0) {
        Step::FindBindings { ids, .. } => ids,
        other => panic!("expected a lookup, got {other}"),
    };
    let fresh = obs().key().bound("inb_1").index_unread();
    assert_eq!(find(&fresh), ["inb_1"], "only the bound ID");
    let checked = |ids: &[&str], claimed: &[&str]| {
        let ids: HashSet<String> = ids.iter().map(|s| s.to_string()).collect();
        let claimed: HashMap<String, Claim> = claimed
            .iter()
            .map(|s| (s.to_string(), owner_claim(true)))
            .collect();
        move |o: &mut Observed| {
            o.bound_elsewhere = Some(claimed);
            o.bindings_checked = Some(ids);
        }
    };
    let looked_up = obs().key().bound("inb_1").with(checked(&["inb_1"], &[]));
    assert_eq!(plan(&looked_up.0).to_string(), "observe inb_1");
    let other_id = obs().key().bound("inb_2").with(checked(&["inb_1"], &[]));
    assert_eq!(
        find(&other_id),
        ["inb_2"],
        "not covered by the first lookup"
    );
    let claimed = obs()
        .key()
        .bound("inb_2")
        .with(checked(&["inb_1", "inb_2"], &["inb_2"]));
    assert!(
        plan(&claimed.0).to_string().contains("Rejected"),
        "{}",
        plan(&claimed.0)
    );
}
