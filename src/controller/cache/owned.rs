//! The cache of the objects this operator owns (Secrets, ConfigMaps), fed by their
//! metadata-only watch. It keeps per object only what decisions read — its UID, owner
//! references, labels, annotations and who owns which data key — as boxed slices, the
//! strings every object repeats (the operator's keys, field manager and data fields, the
//! owner's kind) as shared [`Words`]: ≈ 0.7 KB per object where a cached `PartialObjectMeta`
//! took ≈ 2.3 KB (an `ObjectMeta` is 17 optional fields, and each label or annotation map is
//! a ≈ 0.5 KB `BTreeMap` node whatever its size). A lookup rebuilds the `ObjectMeta` the
//! planner reads.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference,
};
use kube::Resource;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use crate::api::inbox::{self, Inbox};
use crate::controller::cache::compact::Words;
use crate::controller::inbox::outputs::secret;

/// Label or annotation pairs, in key order.
type Pairs = Box<[(Arc<str>, Arc<str>)]>;

/// A field manager and the data fields it owns.
type Manager = (Arc<str>, Box<[Arc<str>]>);

/// The strings every owned object repeats.
static WORDS: LazyLock<Words> = LazyLock::new(|| {
    let keys = [
        inbox::LABEL_MANAGED_BY,
        inbox::MANAGED_BY,
        inbox::LABEL_INBOX,
        inbox::ANNOTATION_INBOX_NAME,
        inbox::ANNOTATION_DATA_DIGEST,
        inbox::FIELD_MANAGER,
    ];
    let fields = ["f:address", "f:inboxId", "f:domainId"];
    let owner = [Inbox::kind(&()), Inbox::api_version(&())];
    let owner = owner.iter().map(|w| w.to_string());
    Words::new(
        keys.into_iter()
            .chain(fields)
            .map(str::to_string)
            .chain(owner),
    )
});

/// An owner reference, its API version and kind shared.
#[derive(Clone, Debug, PartialEq)]
struct Owner {
    api_version: Arc<str>,
    kind: Arc<str>,
    name: Box<str>,
    uid: Box<str>,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

impl From<OwnerReference> for Owner {
    fn from(o: OwnerReference) -> Owner {
        Owner {
            api_version: WORDS.get(&o.api_version),
            kind: WORDS.get(&o.kind),
            name: o.name.into_boxed_str(),
            uid: o.uid.into_boxed_str(),
            controller: o.controller,
            block_owner_deletion: o.block_owner_deletion,
        }
    }
}

impl Owner {
    fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.to_string(),
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            uid: self.uid.to_string(),
            controller: self.controller,
            block_owner_deletion: self.block_owner_deletion,
        }
    }
}

/// What decisions read of one owned object.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    uid: Option<Box<str>>,
    owners: Box<[Owner]>,
    labels: Pairs,
    annotations: Pairs,
    /// Per field manager, the data fields it owns (`f:address`, ...), as
    /// [`secret::trim_managed_fields`] leaves them.
    managers: Box<[Manager]>,
}

fn pairs(map: Option<std::collections::BTreeMap<String, String>>) -> Pairs {
    map.into_iter()
        .flatten()
        .map(|(k, v)| (WORDS.get(&k), WORDS.get(&v)))
        .collect()
}

fn map(pairs: &Pairs) -> Option<std::collections::BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

impl Kept {
    fn new(mut meta: ObjectMeta) -> Kept {
        secret::trim_managed_fields(&mut meta);
        let managers = meta
            .managed_fields
            .into_iter()
            .flatten()
            .map(|e| {
                let fields = match e.fields_v1.map(|f| f.0) {
                    Some(serde_json::Value::Array(owned)) => owned
                        .into_iter()
                        .filter_map(|f| match f {
                            serde_json::Value::String(s) => Some(WORDS.get(&s)),
                            _ => None,
                        })
                        .collect(),
                    _ => Box::default(),
                };
                (WORDS.get(&e.manager.unwrap_or_default()), fields)
            })
            .collect();
        Kept {
            uid: meta.uid.map(String::into_boxed_str),
            owners: meta
                .owner_references
                .into_iter()
                .flatten()
                .map(Owner::from)
                .collect(),
            labels: pairs(meta.labels),
            annotations: pairs(meta.annotations),
            managers,
        }
    }

    fn meta(&self, namespace: &str, name: &str) -> ObjectMeta {
        let managed_fields = self.managers.iter().map(|(manager, fields)| {
            let owned = fields.iter().map(|f| serde_json::Value::from(f.as_ref()));
            ManagedFieldsEntry {
                manager: Some(manager.to_string()),
                fields_v1: Some(FieldsV1(serde_json::Value::Array(owned.collect()))),
                ..ManagedFieldsEntry::default()
            }
        });
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: self.uid.as_deref().map(str::to_string),
            owner_references: (!self.owners.is_empty())
                .then(|| self.owners.iter().map(Owner::reference).collect()),
            labels: map(&self.labels),
            annotations: map(&self.annotations),
            managed_fields: (!self.managers.is_empty()).then(|| managed_fields.collect()),
            ..ObjectMeta::default()
        }
    }
}

/// Namespace → name → what is kept.
type Objects = HashMap<Box<str>, HashMap<Box<str>, Kept>>;

#[derive(Default)]
struct Maps {
    live: Objects,
    /// Filled while the watch relists; replaces `live` once the list is complete.
    relisting: Option<Objects>,
}

/// Whether an Inbox is among the object's owners: only such objects are cached. The watch
/// selects by the `managed-by` label, which anyone who can write a Secret can set; an object
/// that merely carries it is left out (a lookup of its name reads it with a GET, and finds
/// it not owned), so tenants cannot grow this cache with labelled objects.
fn owned_by_an_inbox(meta: &ObjectMeta) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == Inbox::kind(&()) && o.api_version == Inbox::api_version(&()))
}

fn insert(objects: &mut Objects, meta: &ObjectMeta) {
    let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
        return;
    };
    if !owned_by_an_inbox(meta) {
        remove(objects, ns, name);
        return;
    }
    let kept = Kept::new(meta.clone());
    match objects.get_mut(ns.as_str()) {
        Some(names) => {
            names.insert(name.as_str().into(), kept);
        }
        None => {
            let names = HashMap::from([(name.as_str().into(), kept)]);
            objects.insert(ns.as_str().into(), names);
        }
    }
}

fn remove(objects: &mut Objects, ns: &str, name: &str) {
    if let Some(names) = objects.get_mut(ns) {
        names.remove(name);
        if names.is_empty() {
            objects.remove(ns);
        }
    }
}

/// The cache of one kind of owned object in one watched scope. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct OwnedCache {
    maps: Arc<RwLock<Maps>>,
}

impl OwnedCache {
    /// The metadata of `namespace/name` as decisions read it, if cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<ObjectMeta> {
        let maps = self.maps.read();
        let kept = maps.live.get(namespace)?.get(name)?;
        Some(kept.meta(namespace, name))
    }

    /// Follow one watch event (as kube-runtime's reflector does: a relist replaces the
    /// cache's contents once complete, and the old contents serve lookups until then).
    pub fn apply<K>(&self, event: &watcher::Event<PartialObjectMeta<K>>) {
        let mut maps = self.maps.write();
        match event {
            watcher::Event::Apply(o) => insert(&mut maps.live, &o.metadata),
            watcher::Event::Delete(o) => {
                if let (Some(ns), Some(name)) = (&o.metadata.namespace, &o.metadata.name) {
                    remove(&mut maps.live, ns, name);
                }
            }
            watcher::Event::Init => maps.relisting = Some(Objects::new()),
            watcher::Event::InitApply(o) => {
                insert(maps.relisting.get_or_insert_default(), &o.metadata);
            }
            watcher::Event::InitDone => {
                if let Some(listed) = maps.relisting.take() {
                    maps.live = listed;
                }
            }
        }
    }

    /// How many objects are cached.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let maps = self.maps.read();
        maps.live.values().map(HashMap::len).sum()
    }

    /// Whether nothing is cached.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::inbox;
    use crate::controller::inbox::outputs::secret::testing::owning;
    use k8s_openapi::api::core::v1::Secret;

    fn secret(name: &str, digest: &str) -> PartialObjectMeta<Secret> {
        let metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("team".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("7".into()),
            labels: Some([(inbox::LABEL_MANAGED_BY.into(), inbox::MANAGED_BY.into())].into()),
            annotations: Some([(inbox::ANNOTATION_DATA_DIGEST.into(), digest.into())].into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "agentsend.io/v1alpha1".into(),
                kind: "Inbox".into(),
                name: "support".into(),
                uid: "inbox-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            managed_fields: Some(vec![
                owning(inbox::FIELD_MANAGER, &["address", "inboxId"]),
                owning("kubectl-edit", &["extra"]),
            ]),
            ..ObjectMeta::default()
        };
        PartialObjectMeta {
            metadata,
            ..Default::default()
        }
    }

    #[test]
    fn a_lookup_gives_what_decisions_read() {
        let cache = OwnedCache::default();
        let s = secret("a", "sha256:1");
        cache.apply(&watcher::Event::Apply(s.clone()));
        let got = cache.get("team", "a").unwrap();
        let want = &s.metadata;
        assert_eq!(
            (&got.name, &got.namespace, &got.uid),
            (&want.name, &want.namespace, &want.uid)
        );
        assert_eq!(got.owner_references, want.owner_references);
        assert_eq!(
            (&got.labels, &got.annotations),
            (&want.labels, &want.annotations)
        );
        assert!(secret::data_as_written(
            &got,
            ["address", "inboxId"].into_iter()
        ));
        assert!(!secret::data_as_written(&got, ["extra"].into_iter()));
        assert!(secret::is_owned_by(&got, "inbox-uid"));
        assert!(cache.get("team", "b").is_none() && cache.get("other", "a").is_none());
    }

    #[test]
    fn the_strings_every_object_repeats_are_held_once() {
        let cache = OwnedCache::default();
        cache.apply(&watcher::Event::Apply(secret("a", "sha256:1")));
        cache.apply(&watcher::Event::Apply(secret("b", "sha256:2")));
        let maps = cache.maps.read();
        let (a, b) = (&maps.live["team"]["a"], &maps.live["team"]["b"]);
        assert!(Arc::ptr_eq(&a.labels[0].0, &b.labels[0].0));
        assert!(Arc::ptr_eq(&a.annotations[0].0, &b.annotations[0].0));
        assert!(Arc::ptr_eq(&a.managers[0].0, &b.managers[0].0));
        assert!(Arc::ptr_eq(&a.managers[0].1[0], &b.managers[0].1[0]));
        assert!(Arc::ptr_eq(&a.owners[0].kind, &b.owners[0].kind));
        assert!(Arc::ptr_eq(
            &a.owners[0].api_version,
            &b.owners[0].api_version
        ));
        assert_ne!(
            a.annotations[0].1, b.annotations[0].1,
            "values stay each object's"
        );
    }

    /// Objects that only carry the operator's label (anyone who can write a Secret can set
    /// it) are not kept: the cache cannot be grown with them, and one that loses its Inbox
    /// owner leaves it.
    #[test]
    fn only_objects_an_inbox_owns_are_kept() {
        let cache = OwnedCache::default();
        let mut labelled = secret("labelled", "sha256:1");
        labelled.metadata.owner_references = None;
        cache.apply(&watcher::Event::Apply(labelled.clone()));
        assert!(cache.is_empty(), "label only: not kept");
        let mut foreign_owner = secret("deployment-owned", "sha256:1");
        if let Some(o) = foreign_owner.metadata.owner_references.as_mut() {
            o[0].kind = "Deployment".into();
            o[0].api_version = "apps/v1".into();
        }
        cache.apply(&watcher::Event::Apply(foreign_owner));
        assert!(cache.is_empty(), "owned by something else: not kept");
        let owned = secret("labelled", "sha256:1");
        cache.apply(&watcher::Event::Apply(owned));
        assert_eq!(cache.len(), 1);
        cache.apply(&watcher::Event::Apply(labelled));
        assert!(
            cache.is_empty(),
            "its Inbox owner removed: gone from the cache"
        );
    }

    #[test]
    fn it_follows_applies_deletes_and_relists() {
        let cache = OwnedCache::default();
        cache.apply(&watcher::Event::Apply(secret("a", "sha256:1")));
        cache.apply(&watcher::Event::Apply(secret("a", "sha256:2")));
        let digest = |m: ObjectMeta| m.annotations.unwrap()[inbox::ANNOTATION_DATA_DIGEST].clone();
        assert_eq!(digest(cache.get("team", "a").unwrap()), "sha256:2");
        cache.apply(&watcher::Event::Apply(secret("b", "sha256:3")));
        cache.apply(&watcher::Event::Delete(secret("a", "sha256:2")));
        assert!(cache.get("team", "a").is_none());
        assert_eq!(cache.len(), 1);
        // A relist: the old contents serve lookups until it is complete.
        cache.apply(&watcher::Event::<PartialObjectMeta<Secret>>::Init);
        cache.apply(&watcher::Event::InitApply(secret("c", "sha256:4")));
        assert!(cache.get("team", "b").is_some() && cache.get("team", "c").is_none());
        cache.apply(&watcher::Event::<PartialObjectMeta<Secret>>::InitDone);
        assert!(cache.get("team", "b").is_none() && cache.get("team", "c").is_some());
        cache.apply(&watcher::Event::Delete(secret("c", "sha256:4")));
        assert!(cache.is_empty());
    }
}
