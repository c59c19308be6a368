//! The Inbox as the watch cache holds it ([`CachedInbox`]): what decisions read, in
//! less memory than an [`Inbox`] (1.6 KB against 2.8 KB for a Ready one). The operator's
//! annotations are a short list instead of a map (a `BTreeMap` allocates an 11-slot node for
//! one entry), the status is packed (strings boxed, numbers in one array), the words of the
//! conditions (type, status, reason, a Ready Inbox's messages) are shared instead of one
//! string each, and whatever the operator never reads is dropped (managed fields, labels,
//! foreign annotations). A pass rebuilds the full [`Inbox`] ([`CachedInbox::to_inbox`]);
//! readers of the whole cache (account changes, quotas, key Secrets) read it in place,
//! through [`InboxView`].

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use kube::api::ObjectMeta;
use kube::core::object::HasSpec;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, core::NamespaceResourceScope};
use serde::Deserialize;

use crate::compact::{Numbers, Words};
use crate::crd::{self, Condition, Inbox, InboxSpec, InboxStatus, InboxView};

/// The prefix of every annotation the operator reads on an Inbox.
const OPERATOR_ANNOTATIONS: &str = "agentsend.io/";

/// An [`Inbox`] as the watch cache keeps it. Built from the watched object
/// ([`From<Inbox>`], also what deserialising one gives); the kind, group and version are the
/// Inbox's, so owner references and object references match.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Inbox")]
pub struct CachedInbox {
    /// The metadata, without managed fields, labels and annotations.
    pub metadata: ObjectMeta,
    /// The spec, whole.
    pub spec: InboxSpec,
    /// The `agentsend.io/` annotations, in key order.
    annotations: Box<[(Box<str>, Box<str>)]>,
    status: Option<CachedStatus>,
}

/// The status, compact: its strings boxed, its numbers as [`Numbers`], its conditions as
/// [`CachedCondition`]s (224 bytes inline where an `InboxStatus` takes 360). Built and
/// rebuilt by destructuring every field, so a field added to `InboxStatus` does not compile
/// until it is kept here too.
#[derive(Clone, Debug)]
struct CachedStatus {
    /// `inboxId`, `address`, `displayName`, `domainId`, `state`, `createdAt`, `secretName`,
    /// `configMapName`, `observedRefresh`.
    text: [Option<Box<str>>; 9],
    /// `dailySendLimit`, `sendsToday`, `sendsRemaining`, `totalSent`, `bounceCount`,
    /// `complaintCount`, `observedGeneration`.
    numbers: Numbers<7>,
    deletion_policy: Option<crd::DeletionPolicy>,
    deletion_policy_source: Option<crd::DeletionPolicySource>,
    conditions: Box<[CachedCondition]>,
}

/// A condition whose type, status, reason and (when it is a common one) message are shared
/// words ([`word`]).
#[derive(Clone, Debug)]
struct CachedCondition {
    type_: Arc<str>,
    status: Arc<str>,
    reason: Arc<str>,
    observed_generation: Option<i64>,
    last_transition_time: Box<str>,
    message: Arc<str>,
}

/// The words every Inbox's conditions repeat: condition types, statuses, the contract's
/// reasons, the message of a Ready Inbox's kstatus conditions. One allocation each for the
/// whole process.
static WORDS: LazyLock<Words> = LazyLock::new(|| {
    use crd::condition::*;
    let types = [READY, RECONCILING, STALLED, SEND_LIMIT_REACHED];
    let statuses = ["True", "False", "Unknown"];
    let reasons = crd::Reason::ALL.map(crd::Reason::as_str);
    let messages = [super::status::READY, super::status::UP_TO_DATE];
    Words::new(
        types
            .into_iter()
            .chain(statuses)
            .chain(reasons)
            .chain(messages),
    )
});

/// `s` as a shared word when it is one of [`WORDS`], else a string of its own (a status
/// someone else wrote).
fn word(s: &str) -> Arc<str> {
    WORDS.get(s)
}

impl From<Condition> for CachedCondition {
    fn from(c: Condition) -> Self {
        CachedCondition {
            type_: word(&c.type_),
            status: word(&c.status),
            reason: word(&c.reason),
            observed_generation: c.observed_generation,
            last_transition_time: c.last_transition_time.into_boxed_str(),
            message: word(&c.message),
        }
    }
}

impl CachedCondition {
    fn to_condition(&self) -> Condition {
        Condition {
            type_: self.type_.to_string(),
            status: self.status.to_string(),
            observed_generation: self.observed_generation,
            last_transition_time: self.last_transition_time.to_string(),
            reason: self.reason.to_string(),
            message: self.message.to_string(),
        }
    }
}

impl From<InboxStatus> for CachedStatus {
    fn from(status: InboxStatus) -> Self {
        let InboxStatus {
            inbox_id,
            address,
            display_name,
            domain_id,
            state,
            daily_send_limit,
            sends_today,
            sends_remaining,
            total_sent,
            bounce_count,
            complaint_count,
            created_at,
            secret_name,
            config_map_name,
            observed_generation,
            deletion_policy,
            deletion_policy_source,
            observed_refresh,
            conditions,
        } = status;
        let text = [
            inbox_id,
            address,
            display_name,
            domain_id,
            state,
            created_at,
            secret_name,
            config_map_name,
            observed_refresh,
        ];
        CachedStatus {
            text: text.map(|t| t.map(String::into_boxed_str)),
            numbers: Numbers::new([
                daily_send_limit,
                sends_today,
                sends_remaining,
                total_sent,
                bounce_count,
                complaint_count,
                observed_generation,
            ]),
            deletion_policy,
            deletion_policy_source,
            conditions: conditions.into_iter().map(CachedCondition::from).collect(),
        }
    }
}

impl CachedStatus {
    fn to_status(&self) -> InboxStatus {
        let [
            inbox_id,
            address,
            display_name,
            domain_id,
            state,
            created_at,
            secret_name,
            config_map_name,
            observed_refresh,
        ] = self.text.clone().map(|t| t.map(String::from));
        let [
            daily_send_limit,
            sends_today,
            sends_remaining,
            total_sent,
            bounce_count,
            complaint_count,
            observed_generation,
        ] = self.numbers.all();
        InboxStatus {
            inbox_id,
            address,
            display_name,
            domain_id,
            state,
            daily_send_limit,
            sends_today,
            sends_remaining,
            total_sent,
            bounce_count,
            complaint_count,
            created_at,
            secret_name,
            config_map_name,
            observed_generation,
            deletion_policy: self.deletion_policy,
            deletion_policy_source: self.deletion_policy_source,
            observed_refresh,
            conditions: self
                .conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect(),
        }
    }
}

impl From<Inbox> for CachedInbox {
    fn from(inbox: Inbox) -> Self {
        let Inbox {
            mut metadata,
            spec,
            status,
        } = inbox;
        metadata.managed_fields = None;
        metadata.labels = None;
        let annotations = metadata
            .annotations
            .take()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(OPERATOR_ANNOTATIONS))
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect();
        CachedInbox {
            metadata,
            spec,
            annotations,
            status: status.map(CachedStatus::from),
        }
    }
}

impl CachedInbox {
    /// The full Inbox, as a pass reads it (the cache's trim aside: no managed fields, labels
    /// or foreign annotations; the operator only ever patches, so nothing is lost).
    pub fn to_inbox(&self) -> Inbox {
        let mut metadata = self.metadata.clone();
        if !self.annotations.is_empty() {
            metadata.annotations = Some(
                self.annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        Inbox {
            metadata,
            spec: self.spec.clone(),
            status: self.status.as_ref().map(CachedStatus::to_status),
        }
    }

    /// The reason of the condition of type `type_`, if the status has one.
    pub fn condition_reason(&self, type_: &str) -> Option<&str> {
        let status = self.status.as_ref()?;
        let c = status.conditions.iter().find(|c| &*c.type_ == type_)?;
        Some(&c.reason)
    }

    /// The reference the controller and its wake-ups use.
    pub fn inbox_ref(&self) -> ObjectRef<Inbox> {
        inbox_ref(self)
    }
}

/// The reference to the Inbox `i` (full or cached), as the controller queues it.
pub fn inbox_ref<I: InboxView>(i: &I) -> ObjectRef<Inbox> {
    let meta = i.meta();
    let r = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    match meta.namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// A watch event of the Inbox watch, its object as the cache keeps it.
pub fn from_watched(event: watcher::Event<Inbox>) -> watcher::Event<CachedInbox> {
    match event {
        watcher::Event::Apply(i) => watcher::Event::Apply(i.into()),
        watcher::Event::InitApply(i) => watcher::Event::InitApply(i.into()),
        watcher::Event::Delete(i) => watcher::Event::Delete(i.into()),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The same reference, typed for the controller of the cache.
pub fn cached_ref(r: ObjectRef<Inbox>) -> ObjectRef<CachedInbox> {
    r.into_kind_unchecked(())
}

impl Resource for CachedInbox {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Inbox::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Inbox::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Inbox::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Inbox::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasSpec for CachedInbox {
    type Spec = InboxSpec;

    fn spec(&self) -> &InboxSpec {
        &self.spec
    }

    fn spec_mut(&mut self) -> &mut InboxSpec {
        &mut self.spec
    }
}

impl InboxView for CachedInbox {
    fn annotation(&self, key: &str) -> Option<&str> {
        let found = self.annotations.iter().find(|(k, _)| &**k == key);
        found.map(|(_, v)| &**v)
    }

    fn status_inbox_id(&self) -> Option<&str> {
        self.status.as_ref()?.text[0].as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Ready Inbox as the operator leaves it, with what users and tools add.
    fn ready() -> Inbox {
        let condition = |type_: &str, status: &str, reason: &str, message: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            observed_generation: Some(2),
            last_transition_time: "2026-12-06T02:00:00Z".into(),
            reason: reason.into(),
            message: message.into(),
        };
        let mut i = Inbox::new(
            "a",
            InboxSpec {
                display_name: Some("A".into()),
                ..Default::default()
            },
        );
        i.metadata.namespace = Some("ns".into());
        i.metadata.uid = Some("u-1".into());
        i.metadata.finalizers = Some(vec![crd::FINALIZER.into()]);
        i.metadata.annotations = Some(
            [
                (crd::ANNOTATION_INBOX_ID, "inb_1"),
                (crd::ANNOTATION_REFRESH, "r1"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
                ("argocd.argoproj.io/tracking-id", "app:..."),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        // Every field set, each to a value of its own: the round trip must keep them all.
        i.status = Some(InboxStatus {
            inbox_id: Some("inb_1".into()),
            address: Some("a@agentsend.dev".into()),
            display_name: Some("A".into()),
            domain_id: Some("dom_1".into()),
            state: Some("active".into()),
            daily_send_limit: Some(100),
            sends_today: Some(3),
            sends_remaining: Some(97),
            total_sent: Some(40),
            bounce_count: Some(0),
            complaint_count: Some(-1),
            created_at: Some("2026-12-06T01:00:00.123Z".into()),
            secret_name: Some("a-secret".into()),
            config_map_name: Some("a-config".into()),
            observed_generation: Some(2),
            deletion_policy: Some(crd::DeletionPolicy::Orphan),
            deletion_policy_source: Some(crd::DeletionPolicySource::Namespace),
            observed_refresh: Some("r0".into()),
            conditions: vec![
                condition("Ready", "True", "Ready", "inbox is ready"),
                condition("Stalled", "False", "Ready", ""),
                condition("Custom", "Maybe", "SomeoneElses", "written by another tool"),
            ],
        });
        i
    }

    #[test]
    fn a_pass_reads_what_the_watch_delivered_minus_what_no_decision_reads() {
        let mut watched = ready();
        watched.metadata.managed_fields = Some(vec![Default::default()]);
        watched.metadata.labels = Some([("app".to_string(), "mail".to_string())].into());
        let cached = CachedInbox::from(watched.clone());
        let rebuilt = cached.to_inbox();

        let mut expected = watched;
        expected.metadata.managed_fields = None;
        expected.metadata.labels = None;
        expected
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .retain(|k, _| k.starts_with("agentsend.io/"));
        assert_eq!(rebuilt, expected);
        assert_eq!(expected.metadata.annotations.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn numbers_that_are_not_set_stay_unset() {
        let mut partial = ready();
        let status = partial.status.as_mut().unwrap();
        (
            status.sends_today,
            status.bounce_count,
            status.observed_generation,
        ) = (None, Some(0), None);
        let annotations = partial.metadata.annotations.as_mut().unwrap();
        annotations.retain(|k, _| k.starts_with("agentsend.io/"));
        assert_eq!(CachedInbox::from(partial.clone()).to_inbox(), partial);
    }

    #[test]
    fn an_inbox_without_status_or_annotations_stays_without() {
        let mut bare = Inbox::new("b", InboxSpec::default());
        bare.metadata.namespace = Some("ns".into());
        assert_eq!(CachedInbox::from(bare.clone()).to_inbox(), bare);
    }

    #[test]
    fn readers_of_the_cache_see_the_binding_and_conditions() {
        let cached = CachedInbox::from(ready());
        assert_eq!(cached.bound_inbox_id().as_deref(), Some("inb_1"));
        assert_eq!(cached.annotation(crd::ANNOTATION_REFRESH), Some("r1"));
        assert_eq!(
            cached.annotation("argocd.argoproj.io/tracking-id"),
            None,
            "foreign annotations are not kept"
        );
        assert_eq!(cached.condition_reason("Ready"), Some("Ready"));
        assert_eq!(cached.condition_reason("Custom"), Some("SomeoneElses"));
        assert_eq!(cached.condition_reason("SendLimitReached"), None);

        // The status keeps the binding when the annotation is gone (a restore).
        let mut restored = ready();
        restored.metadata.annotations = None;
        assert_eq!(
            CachedInbox::from(restored).bound_inbox_id().as_deref(),
            Some("inb_1")
        );
    }

    #[test]
    fn condition_words_are_shared_between_inboxes() {
        let (a, b) = (CachedInbox::from(ready()), CachedInbox::from(ready()));
        let ready_of = |c: &CachedInbox| c.status.as_ref().unwrap().conditions[0].clone();
        assert!(Arc::ptr_eq(&ready_of(&a).type_, &ready_of(&b).type_));
        assert!(Arc::ptr_eq(&ready_of(&a).reason, &ready_of(&b).reason));
        let custom = |c: &CachedInbox| c.status.as_ref().unwrap().conditions[2].clone();
        assert!(!Arc::ptr_eq(&custom(&a).reason, &custom(&b).reason));
    }

    #[test]
    fn the_cached_kind_is_the_inboxs() {
        let cached = CachedInbox::from(ready());
        assert_eq!(CachedInbox::kind(&()), "Inbox");
        assert_eq!(CachedInbox::api_version(&()), Inbox::api_version(&()));
        assert_eq!(CachedInbox::plural(&()), "inboxes");
        assert_eq!(cached.inbox_ref(), ObjectRef::from_obj(&ready()));
        let json = serde_json::to_value(ready()).unwrap();
        let decoded: CachedInbox = serde_json::from_value(json).unwrap();
        assert_eq!(decoded.to_inbox(), cached.to_inbox());
    }
}
