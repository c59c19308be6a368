//! The binding registry ([`BindingRegistry`]): which Inbox is bound to which inbox in which
//! account (what the counter sync scans, and the key to delete with once a credentials Secret
//! is gone), and the IDs this process bound recently (the one-owner check, ahead of the watch
//! cache).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::agentsend::ApiKey;
use crate::api::inbox::Inbox;

/// How long IDs bound by this process are remembered beyond the watch cache.
const RECENTLY_BOUND_TTL: Duration = Duration::from_secs(600);

/// Inbox ID → the Inbox bound to it (`namespace/name`, [`owner_key`]), in one account.
type Bound = HashMap<Arc<str>, Arc<str>>;

/// An Inbox as the registry keys it: `namespace/name` (neither may contain a `/`), one
/// shared string where an `ObjectRef` is 96 bytes inline plus two strings.
fn owner_key(obj: &ObjectRef<Inbox>) -> String {
    format!(
        "{}/{}",
        obj.namespace.as_deref().unwrap_or_default(),
        obj.name
    )
}

/// The reference [`owner_key`] stands for.
fn owner_ref(key: &str) -> ObjectRef<Inbox> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let r = ObjectRef::new(name);
    if ns.is_empty() { r } else { r.within(ns) }
}

/// A bind by this process: (owner UID, owner `namespace/name`).
type RecentBind = (Box<str>, Box<str>);

/// Entries remembered for [`RECENTLY_BOUND_TTL`]: expired ones are swept once the map has
/// doubled since the last sweep, so that an insert costs O(1) amortised, not a walk over
/// every entry (which made each bind and release cost O(N) during a bulk apply or delete).
struct Recent<V> {
    entries: HashMap<Box<str>, (V, Instant)>,
    /// Sweep expired entries when `entries` reaches this size.
    sweep_at: usize,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            entries: HashMap::new(),
            sweep_at: 0,
        }
    }
}

impl<V> Recent<V> {
    fn insert(&mut self, key: &str, value: V) {
        if self.entries.len() >= self.sweep_at {
            self.entries
                .retain(|_, (_, at)| at.elapsed() < RECENTLY_BOUND_TTL);
            self.sweep_at = (self.entries.len() * 2).max(1024);
        }
        self.entries.insert(key.into(), (value, Instant::now()));
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < RECENTLY_BOUND_TTL)
            .map(|(v, _)| v)
    }
}

/// The bindings, indexed both ways so that every update and lookup is O(1).
#[derive(Default)]
struct Bindings {
    /// API key → (inbox ID → the Inbox bound to it).
    accounts: HashMap<ApiKey, Bound>,
    /// Inbox ([`owner_key`]) → (API key, inbox ID): its one binding. Both maps share the
    /// strings.
    by_obj: HashMap<Arc<str>, (ApiKey, Arc<str>)>,
}

impl Bindings {
    /// Remove the binding of the Inbox `owner` ([`owner_key`]), if any.
    fn remove(&mut self, owner: &str) {
        let Some((key, id)) = self.by_obj.remove(owner) else {
            return;
        };
        if let Some(bound) = self.accounts.get_mut(&key) {
            if bound.get(&id).is_some_and(|o| &**o == owner) {
                bound.remove(&id);
            }
            if bound.is_empty() {
                self.accounts.remove(&key);
            }
        }
    }
}

/// Which Inbox is bound to which inbox, per account.
#[derive(Clone, Default)]
pub struct BindingRegistry {
    /// Who is bound to what (proportional to the bound Inboxes, O(1) per update).
    bindings: Arc<Mutex<Bindings>>,
    /// Inbox IDs this process bound recently (the watch cache may not show them yet):
    /// ID → (owner UID, owner `namespace/name`, when).
    recently_bound: Arc<Mutex<Recent<RecentBind>>>,
    /// UIDs of Inboxes whose deletion released their binding (the watch cache may still
    /// show them for a moment): they own nothing any more.
    released: Arc<Mutex<Recent<()>>>,
    /// Inbox ID → Inboxes refused because another Inbox owns it; woken when it is released.
    waiters: Arc<Mutex<HashMap<String, HashSet<ObjectRef<Inbox>>>>>,
}

impl BindingRegistry {
    /// Record that `obj` is bound to inbox `id` in the account of `key` (moving it away from
    /// any other key or ID, e.g. after a key rotation). Only the name and namespace of `obj`
    /// are kept (its resourceVersion and UID, which no lookup compares, would be two more
    /// strings per binding, twice).
    pub fn register(&self, key: &ApiKey, id: &str, obj: ObjectRef<Inbox>) {
        let owner = owner_key(&obj);
        let mut b = self.bindings.lock();
        if b.by_obj
            .get(owner.as_str())
            .is_some_and(|(k, i)| k == key && &**i == id)
        {
            return;
        }
        b.remove(&owner);
        let (owner, id): (Arc<str>, Arc<str>) = (owner.into(), id.into());
        let bound = b.accounts.entry(key.clone()).or_default();
        if let Some(previous) = bound.insert(id.clone(), owner.clone())
            && previous != owner
        {
            // The ID changed hands: the previous Inbox is no longer bound to it.
            b.by_obj.remove(&previous);
        }
        b.by_obj.insert(owner, (key.clone(), id));
    }

    /// Forget `obj` (deleted Inbox).
    pub fn unregister(&self, obj: &ObjectRef<Inbox>) {
        self.bindings.lock().remove(&owner_key(obj));
    }

    /// The API key `obj` was last bound under, if this process saw it. Lets deletion finish
    /// when the credentials Secret is already gone (a namespace being deleted removes it
    /// alongside the Inbox).
    pub fn key_for(&self, obj: &ObjectRef<Inbox>) -> Option<ApiKey> {
        let owner = owner_key(obj);
        self.bindings
            .lock()
            .by_obj
            .get(owner.as_str())
            .map(|(k, _)| k.clone())
    }

    /// API keys with bound inboxes, and the inbox IDs bound in each (what the counter sync
    /// scans for): no copy of who they are bound to, which [`bound_to`](Self::bound_to) looks
    /// up for the few that changed.
    pub fn bound_ids(&self) -> Vec<(ApiKey, Vec<String>)> {
        self.bindings
            .lock()
            .accounts
            .iter()
            .map(|(k, b)| (k.clone(), b.keys().map(|id| id.to_string()).collect()))
            .collect()
    }

    /// The Inboxes bound to `ids` in the account of `key` (IDs no longer bound are skipped).
    pub fn bound_to(&self, key: &ApiKey, ids: &[String]) -> Vec<ObjectRef<Inbox>> {
        let b = self.bindings.lock();
        let Some(bound) = b.accounts.get(key) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| bound.get(id.as_str()).map(|o| owner_ref(o)))
            .collect()
    }

    /// Note that this process just bound `id` to the Inbox with UID `owner`, called `name`
    /// (`namespace/name`).
    pub fn note_bound(&self, id: &str, owner: &str, name: &str) {
        self.recently_bound
            .lock()
            .insert(id, (owner.into(), name.into()));
    }

    /// The `namespace/name` of the Inbox other than `owner` this process bound `id` to within
    /// the last minutes, unless that Inbox has released it since.
    pub fn recently_bound_to(&self, id: &str, owner: &str) -> Option<String> {
        let (uid, name) = self
            .recently_bound
            .lock()
            .get(id)
            .filter(|(o, _)| &**o != owner)
            .cloned()?;
        (!self.is_released(&uid)).then(|| name.into())
    }

    /// The Inbox with UID `owner` is gone: its bindings are free at once (a re-created
    /// Inbox may adopt the inbox now). Returns the Inboxes that were waiting for `ids`.
    pub fn release(&self, owner: &str, ids: &[String]) -> Vec<ObjectRef<Inbox>> {
        {
            let mut recent = self.recently_bound.lock();
            for id in ids {
                if recent.get(id).is_some_and(|(o, _)| &**o == owner) {
                    recent.entries.remove(id.as_str());
                }
            }
        }
        // Any other ID it bound is freed by `recently_bound_to`'s check of this mark.
        self.released.lock().insert(owner, ());
        let mut waiters = self.waiters.lock();
        ids.iter()
            .filter_map(|id| waiters.remove(id))
            .flatten()
            .collect()
    }

    /// Whether the Inbox with this UID released its bindings (it is being deleted).
    pub fn is_released(&self, uid: &str) -> bool {
        self.released.lock().get(uid).is_some()
    }

    /// `obj` was refused inbox `id` (another Inbox owns it): wake it when that one goes.
    pub fn wait_for(&self, id: &str, obj: ObjectRef<Inbox>) {
        self.waiters
            .lock()
            .entry(id.to_string())
            .or_default()
            .insert(obj);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectRef<Inbox> {
        ObjectRef::new(name).within("ns")
    }

    /// The Inboxes bound in the account of `key`.
    fn bound_in(b: &BindingRegistry, key: &ApiKey) -> Vec<ObjectRef<Inbox>> {
        let ids = b.bound_ids().into_iter().find(|(k, _)| k == key);
        b.bound_to(key, &ids.map(|(_, ids)| ids).unwrap_or_default())
    }

    #[test]
    fn registration_follows_key_rotation() {
        let b = BindingRegistry::default();
        let old = ApiKey::new("old").unwrap();
        let new = ApiKey::new("new").unwrap();
        b.register(&old, "i1", obj("x"));
        b.register(&old, "i2", obj("y"));
        assert_eq!(b.bound_ids().len(), 1);
        b.register(&new, "i1", obj("x"));
        assert_eq!(bound_in(&b, &old), vec![obj("y")]);
        assert_eq!(bound_in(&b, &new), vec![obj("x")]);
        b.unregister(&obj("y"));
        assert_eq!(b.bound_ids().len(), 1, "empty accounts are dropped");
        assert_eq!(b.key_for(&obj("x")), Some(new.clone()));
        assert_eq!(b.key_for(&obj("y")), None);
    }

    #[test]
    fn the_registry_hands_back_the_namespace_and_name_it_was_given() {
        let b = BindingRegistry::default();
        let k = ApiKey::new("k").unwrap();
        let (a, other) = (
            ObjectRef::<Inbox>::new("mail").within("team-a"),
            ObjectRef::<Inbox>::new("mail").within("team-b"),
        );
        b.register(&k, "i1", a.clone());
        b.register(&k, "i2", other.clone());
        assert_eq!(
            b.bound_to(&k, &["i1".into(), "i2".into()]),
            [a.clone(), other]
        );
        let by_name = b.bound_to(&k, &["i1".into()]);
        assert_eq!(by_name[0].namespace.as_deref(), Some("team-a"));
        b.unregister(&a);
        assert_eq!(b.key_for(&a), None);
        assert_eq!(owner_ref(&owner_key(&a)), a);
    }

    #[test]
    fn rebinding_replaces_the_old_id() {
        let b = BindingRegistry::default();
        let k = ApiKey::new("k").unwrap();
        b.register(&k, "old-id", obj("x"));
        b.register(&k, "new-id", obj("x"));
        assert_eq!(b.bound_ids()[0].1, ["new-id"]);
    }

    #[test]
    fn an_id_that_changes_hands_leaves_the_previous_inbox_unbound() {
        let b = BindingRegistry::default();
        let k = ApiKey::new("k").unwrap();
        b.register(&k, "i1", obj("x"));
        b.register(&k, "i1", obj("y"));
        assert_eq!(b.key_for(&obj("x")), None);
        assert_eq!(b.key_for(&obj("y")), Some(k.clone()));
        // Unregistering the previous owner leaves the new binding alone.
        b.unregister(&obj("x"));
        assert_eq!(bound_in(&b, &k), vec![obj("y")]);
    }

    #[test]
    fn recently_bound_excludes_the_owner() {
        let b = BindingRegistry::default();
        b.note_bound("i1", "uid-a", "ns/a");
        b.note_bound("i2", "uid-b", "ns/b");
        assert_eq!(b.recently_bound_to("i1", "uid-a"), None);
        assert_eq!(b.recently_bound_to("i2", "uid-a").as_deref(), Some("ns/b"));
        assert_eq!(b.recently_bound_to("i3", "uid-a"), None);
    }

    #[test]
    fn a_deleted_owner_frees_its_binding_at_once_and_wakes_waiters() {
        let b = BindingRegistry::default();
        b.note_bound("i1", "uid-a", "ns/a");
        b.wait_for("i1", obj("thief"));
        b.wait_for("i2", obj("other"));
        assert_eq!(b.release("uid-a", &["i1".into()]), vec![obj("thief")]);
        assert_eq!(b.recently_bound_to("i1", "uid-b"), None);
        assert!(b.is_released("uid-a") && !b.is_released("uid-b"));
        assert!(b.release("uid-a", &["i1".into()]).is_empty(), "woken once");
    }
}
