//! Which Inbox names which AgentSend inbox ID, indexed by ID: fed by the same watch events as
//! an Inbox cache (so it agrees with it), so that "does another Inbox claim this ID?" costs one
//! hash lookup instead of a walk over every cached Inbox in every reconcile pass — a walk
//! that made the CPU per Inbox grow with the number of Inboxes.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::Resource;
use kube::runtime::watcher;

use crate::controller::ownership::proof::ProofKey;

/// One Inbox naming an inbox ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// Its UID.
    pub uid: String,
    /// `namespace/name`.
    pub owner: String,
    /// Creation time and UID: the older Inbox holds a contested ID.
    pub seniority: (Option<jiff::Timestamp>, String),
}

/// What the index keeps of one claiming Inbox (its UID is the key).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// The ID it names (shared with `by_id`'s key).
    id: Arc<str>,
    /// `namespace/name`.
    owner: Box<str>,
    created: Option<jiff::Timestamp>,
}

/// UIDs and IDs are shared between the two maps (`Arc<str>`): one allocation each per Inbox.
#[derive(Default)]
struct Index {
    /// UID → what it claims.
    by_uid: HashMap<Arc<str>, Entry>,
    /// ID → UIDs naming it (almost always one: a boxed slice, 16 bytes, where a `Vec`'s
    /// first push reserves four).
    by_id: HashMap<Arc<str>, Box<[Arc<str>]>>,
    /// During a relist: the UIDs listed so far (the others are dropped when it ends).
    relisting: Option<HashSet<Arc<str>>>,
}

impl Index {
    fn remove(&mut self, uid: &str) {
        let Some(entry) = self.by_uid.remove(uid) else {
            return;
        };
        if let Some(uids) = self.by_id.get_mut(&entry.id) {
            *uids = uids.iter().filter(|u| u.as_ref() != uid).cloned().collect();
            if uids.is_empty() {
                self.by_id.remove(&entry.id);
            }
        }
    }

    fn upsert(&mut self, id: Option<String>, claimant: Claimant) {
        let uid: Arc<str> = match self.by_uid.get_key_value(claimant.uid.as_str()) {
            Some((uid, _)) => uid.clone(),
            None => claimant.uid.as_str().into(),
        };
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(uid.clone());
        }
        let owner = claimant.owner.into_boxed_str();
        let created = claimant.seniority.0;
        if let (Some(id), Some(e)) = (&id, self.by_uid.get(&uid))
            && e.id.as_ref() == id.as_str()
            && (&e.owner, e.created) == (&owner, created)
        {
            return;
        }
        self.remove(&uid);
        if let Some(id) = id {
            let id: Arc<str> = match self.by_id.get_key_value(id.as_str()) {
                Some((shared, _)) => shared.clone(),
                None => id.into(),
            };
            let uids = self.by_id.entry(id.clone()).or_default();
            *uids = uids.iter().chain([&uid]).cloned().collect();
            let entry = Entry { id, owner, created };
            self.by_uid.insert(uid, entry);
        }
    }
}

/// The claims of the Inboxes one watch sees, by inbox ID. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ClaimIndex {
    inner: Arc<Mutex<Index>>,
}

impl ClaimIndex {
    /// Follow one event of the watch (`claimed`: the ID an object is bound to, if any).
    pub fn apply<K: Resource>(
        &self,
        event: &watcher::Event<K>,
        claimed: impl Fn(&K) -> Option<String>,
    ) {
        let mut index = self.inner.lock();
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                if let Some(c) = claimant(obj) {
                    index.upsert(claimed(obj), c);
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(uid) = obj.meta().uid.as_deref() {
                    index.remove(uid);
                }
            }
            watcher::Event::Init => index.relisting = Some(HashSet::new()),
            watcher::Event::InitDone => {
                if let Some(seen) = index.relisting.take() {
                    let gone: Vec<Arc<str>> = index
                        .by_uid
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        index.remove(&uid);
                    }
                }
            }
        }
    }

    /// The Inboxes naming inbox `id`.
    pub fn claimants(&self, id: &str) -> Vec<Claimant> {
        let index = self.inner.lock();
        let uids = index.by_id.get(id).into_iter().flatten();
        uids.filter_map(|uid| {
            let e = index.by_uid.get(uid)?;
            Some(Claimant {
                uid: uid.to_string(),
                owner: e.owner.to_string(),
                seniority: (e.created, uid.to_string()),
            })
        })
        .collect()
    }

    /// How many Inboxes name an ID.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().by_uid.len()
    }

    /// Whether no Inbox names an ID.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ID a metadata-only view of an Inbox is bound to on proof: its
/// `agentsend.io/inbox-id` annotation with a valid proof (status is not in that view). An
/// annotation a tenant wrote claims nothing.
pub fn proven_id<K: Resource>(proof: &ProofKey, obj: &K) -> Option<String> {
    let m = obj.meta();
    let annotations = m.annotations.as_ref()?;
    let id = annotations
        .get(crate::api::inbox::ANNOTATION_INBOX_ID)
        .filter(|id| !id.is_empty())?;
    let given = annotations.get(crate::api::inbox::ANNOTATION_INBOX_ID_PROOF)?;
    proof
        .verify_binding(
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
            id,
            given,
        )
        .map(|_| id.clone())
}

fn claimant<K: Resource>(obj: &K) -> Option<Claimant> {
    let m = obj.meta();
    let uid = m.uid.clone()?;
    Some(Claimant {
        owner: format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default()
        ),
        seniority: (m.creation_timestamp.as_ref().map(|t| t.0), uid.clone()),
        uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    /// An object naming inbox `id` in its `id` label (the test's own claim extractor).
    fn obj(uid: &str, name: &str, id: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: id.map(|id| [("id".to_string(), id.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn id_label(c: &ConfigMap) -> Option<String> {
        c.metadata.labels.as_ref()?.get("id").cloned()
    }

    fn owners(index: &ClaimIndex, id: &str) -> Vec<String> {
        let mut o: Vec<String> = index.claimants(id).into_iter().map(|c| c.owner).collect();
        o.sort();
        o
    }

    #[test]
    fn follows_binds_rebinds_deletes_and_relists() {
        let index = ClaimIndex::default();
        let apply = |o: ConfigMap| index.apply(&watcher::Event::Apply(o), id_label);
        apply(obj("u1", "a", None));
        assert!(index.is_empty(), "unbound: no claim");
        apply(obj("u1", "a", Some("i1")));
        apply(obj("u2", "b", Some("i1")));
        assert_eq!(owners(&index, "i1"), ["ns/a", "ns/b"], "a contested ID");
        apply(obj("u1", "a", Some("i2")));
        assert_eq!(
            owners(&index, "i1"),
            ["ns/b"],
            "rebound: the old ID is free"
        );
        assert_eq!(owners(&index, "i2"), ["ns/a"]);
        index.apply(
            &watcher::Event::Delete(obj("u2", "b", Some("i1"))),
            id_label,
        );
        assert!(index.claimants("i1").is_empty(), "deleted");
        apply(obj("u1", "a", None));
        assert!(index.claimants("i2").is_empty(), "unbound again");

        apply(obj("u1", "a", Some("i1")));
        apply(obj("u3", "c", Some("i3")));
        // A relist that no longer shows u3 (deleted while the watch was down).
        index.apply(&watcher::Event::Init, id_label);
        index.apply(
            &watcher::Event::InitApply(obj("u1", "a", Some("i1"))),
            id_label,
        );
        assert_eq!(owners(&index, "i3"), ["ns/c"], "kept until the relist ends");
        index.apply(&watcher::Event::<ConfigMap>::InitDone, id_label);
        assert!(index.claimants("i3").is_empty(), "gone after the relist");
        assert_eq!(owners(&index, "i1"), ["ns/a"]);
        assert_eq!(index.len(), 1);
    }
}
