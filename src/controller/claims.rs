//! Which Inbox names which AgentSend inbox ID, indexed by ID: fed by the same watch events as
//! an Inbox cache (so it agrees with it), so that "does another Inbox claim this ID?" costs one
//! hash lookup instead of a walk over every cached Inbox in every reconcile pass — a walk
//! that made the CPU per Inbox grow with the number of Inboxes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use kube::Resource;
use kube::runtime::watcher;

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

#[derive(Default)]
struct Index {
    /// UID → (the ID it names, the claimant).
    by_uid: HashMap<String, (String, Claimant)>,
    /// ID → UIDs naming it (almost always one).
    by_id: HashMap<String, Vec<String>>,
    /// During a relist: the UIDs listed so far (the others are dropped when it ends).
    relisting: Option<HashSet<String>>,
}

impl Index {
    fn remove(&mut self, uid: &str) {
        let Some((id, _)) = self.by_uid.remove(uid) else {
            return;
        };
        if let Some(uids) = self.by_id.get_mut(&id) {
            uids.retain(|u| u != uid);
            if uids.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }

    fn upsert(&mut self, id: Option<String>, claimant: Claimant) {
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(claimant.uid.clone());
        }
        if let (Some(id), Some((current, c))) = (&id, self.by_uid.get(&claimant.uid))
            && current == id
            && *c == claimant
        {
            return;
        }
        self.remove(&claimant.uid);
        if let Some(id) = id {
            self.by_id
                .entry(id.clone())
                .or_default()
                .push(claimant.uid.clone());
            self.by_uid.insert(claimant.uid.clone(), (id, claimant));
        }
    }
}

/// The claims of the Inboxes one watch sees, by inbox ID. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ClaimIndex {
    inner: Arc<Mutex<Index>>,
}

impl ClaimIndex {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follow one event of the watch (`claimed`: the ID an object names, if any).
    pub fn apply<K: Resource>(&self, event: &watcher::Event<K>, claimed: fn(&K) -> Option<String>) {
        let mut index = self.lock();
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
                    let gone: Vec<String> = index
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
        let index = self.lock();
        index
            .by_id
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|uid| index.by_uid.get(uid).map(|(_, c)| c.clone()))
            .collect()
    }

    /// How many Inboxes name an ID.
    pub fn len(&self) -> usize {
        self.lock().by_uid.len()
    }

    /// Whether no Inbox names an ID.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ID the `agentsend.io/inbox-id` annotation names (the claim a metadata-only view of an
/// Inbox shows).
pub fn annotated_id<K: Resource>(obj: &K) -> Option<String> {
    obj.meta()
        .annotations
        .as_ref()?
        .get(crate::crd::ANNOTATION_INBOX_ID)
        .filter(|id| !id.is_empty())
        .cloned()
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
