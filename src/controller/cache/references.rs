//! Which Inbox events can change the set of credentials Secrets the Inboxes reference, so
//! that the key-Secret watch set ([`crate::controller::accounts::key_secrets`]) is recomputed — a walk over every
//! cached Inbox — only after those, not after every Inbox event (which made a bulk apply of
//! N Inboxes cost O(N²)).

use std::collections::HashMap;

use kube::runtime::watcher;

use crate::controller::cache::inbox::CachedInbox;

/// The credentials Secret each Inbox that names one references, by UID.
#[derive(Default)]
pub struct ReferenceTracker {
    named: HashMap<String, String>,
}

impl ReferenceTracker {
    /// Follow one watch event; `true` when the referenced Secrets may have changed.
    pub fn changed_by(&mut self, event: &watcher::Event<CachedInbox>) -> bool {
        match event {
            watcher::Event::Apply(i) | watcher::Event::InitApply(i) => {
                let Some(uid) = i.metadata.uid.clone() else {
                    return true;
                };
                let name = i.spec.credentials.as_ref().map(|c| &c.secret_ref.name);
                match name {
                    Some(n) if self.named.get(&uid) == Some(n) => false,
                    Some(n) => {
                        self.named.insert(uid, n.clone());
                        true
                    }
                    None => self.named.remove(&uid).is_some(),
                }
            }
            watcher::Event::Delete(i) => i
                .metadata
                .uid
                .as_ref()
                .is_none_or(|uid| self.named.remove(uid).is_some()),
            watcher::Event::Init | watcher::Event::InitDone => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::SecretKeyRef;
    use crate::api::inbox::{CredentialsSpec, Inbox, InboxSpec};

    fn inbox(uid: &str, secret: Option<&str>) -> CachedInbox {
        let mut i = Inbox::new(
            "x",
            InboxSpec {
                credentials: secret.map(|s| {
                    Box::new(CredentialsSpec {
                        secret_ref: SecretKeyRef {
                            name: s.into(),
                            ..Default::default()
                        },
                    })
                }),
                ..Default::default()
            },
        );
        i.metadata.uid = Some(uid.into());
        i.into()
    }

    #[test]
    fn only_reference_changes_count() {
        let mut t = ReferenceTracker::default();
        let apply = |t: &mut ReferenceTracker, i| t.changed_by(&watcher::Event::Apply(i));
        assert!(!apply(&mut t, inbox("u1", None)), "no credentials");
        assert!(apply(&mut t, inbox("u2", Some("key"))), "a new reference");
        assert!(
            !apply(&mut t, inbox("u2", Some("key"))),
            "status write: same"
        );
        assert!(apply(&mut t, inbox("u2", Some("other"))), "switched");
        assert!(apply(&mut t, inbox("u2", None)), "dropped");
        assert!(apply(&mut t, inbox("u3", Some("key"))));
        assert!(!t.changed_by(&watcher::Event::Delete(inbox("u1", None))));
        assert!(t.changed_by(&watcher::Event::Delete(inbox("u3", Some("key")))));
        assert!(t.changed_by(&watcher::Event::<CachedInbox>::Init));
    }
}
