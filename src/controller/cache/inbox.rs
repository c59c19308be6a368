//! The Inbox as the watch cache holds it ([`CachedInbox`]): what decisions read, in
//! less memory than an [`Inbox`] (1.5 KB against 2.8 KB for a Ready one). The operator's
//! annotations are a short list instead of a map (a `BTreeMap` allocates an 11-slot node for
//! one entry), the status is packed (strings boxed, numbers in one array), a condition the
//! operator wrote is four positions in a list of shared words and two numbers instead of
//! five strings, and whatever the operator never reads is dropped (managed fields, labels,
//! foreign annotations). A pass rebuilds the full [`Inbox`] ([`CachedInbox::to_inbox`]);
//! readers of the whole cache (account changes, quotas, key Secrets) read it in place,
//! through [`InboxView`].

use std::borrow::Cow;
use std::sync::LazyLock;

use kube::api::ObjectMeta;
use kube::core::object::HasSpec;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, core::NamespaceResourceScope};
use serde::Deserialize;

use crate::api::inbox::{self, Condition, Inbox, InboxSpec, InboxStatus, InboxView};
use crate::controller::cache::compact::{Numbers, Words};

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
    deletion_policy: Option<inbox::DeletionPolicy>,
    deletion_policy_source: Option<inbox::DeletionPolicySource>,
    conditions: Box<[CachedCondition]>,
}

/// A condition. One the operator wrote with a fixed message (type, status, reason and message
/// all [`WORDS`], the transition time a whole second in UTC: a Ready Inbox's `Ready`,
/// `Reconciling` and `Stalled`) is four word positions and two numbers, 32 bytes and no
/// allocation; any other (a message with a count or an error in it, a status another tool
/// wrote) is kept whole.
#[derive(Clone, Debug)]
enum CachedCondition {
    Common {
        /// `type`, `status`, `reason`, `message`: positions in [`WORDS`].
        words: [u8; 4],
        /// `observedGeneration`, and `lastTransitionTime` in seconds since the Unix epoch.
        numbers: Numbers<2>,
    },
    Other(Box<Condition>),
}

/// The words every Inbox's conditions repeat: condition types, statuses, the contract's
/// reasons, the messages of a Ready Inbox's conditions.
static WORDS: LazyLock<Words> = LazyLock::new(|| {
    use inbox::condition::*;
    let types = [READY, RECONCILING, STALLED, SEND_LIMIT_REACHED];
    let statuses = ["True", "False", "Unknown"];
    let reasons = inbox::Reason::ALL.map(inbox::Reason::as_str);
    let messages = [
        crate::controller::inbox::status::READY,
        crate::controller::inbox::status::UP_TO_DATE,
        "",
    ];
    Words::new(
        types
            .into_iter()
            .chain(statuses)
            .chain(reasons)
            .chain(messages),
    )
});

/// How the operator writes a condition's `lastTransitionTime`.
const TRANSITION_TIME: &str = "%Y-%m-%dT%H:%M:%SZ";

/// `t` in seconds since the Unix epoch, when [`TRANSITION_TIME`] writes it back unchanged.
fn whole_seconds(t: &str) -> Option<i64> {
    let at: jiff::Timestamp = t.parse().ok()?;
    (at.strftime(TRANSITION_TIME).to_string() == t).then(|| at.as_second())
}

impl From<Condition> for CachedCondition {
    fn from(c: Condition) -> Self {
        let words = [&c.type_, &c.status, &c.reason, &c.message].map(|w| WORDS.index(w));
        match (words, whole_seconds(&c.last_transition_time)) {
            ([Some(t), Some(s), Some(r), Some(m)], Some(at)) => CachedCondition::Common {
                words: [t, s, r, m],
                numbers: Numbers::new([c.observed_generation, Some(at)]),
            },
            _ => CachedCondition::Other(Box::new(c)),
        }
    }
}

impl CachedCondition {
    fn type_(&self) -> &str {
        match self {
            CachedCondition::Common { words, .. } => WORDS.at(words[0]),
            CachedCondition::Other(c) => &c.type_,
        }
    }

    fn reason(&self) -> &str {
        match self {
            CachedCondition::Common { words, .. } => WORDS.at(words[2]),
            CachedCondition::Other(c) => &c.reason,
        }
    }

    fn to_condition(&self) -> Condition {
        let (words, numbers) = match self {
            CachedCondition::Common { words, numbers } => (words, numbers),
            CachedCondition::Other(c) => return (**c).clone(),
        };
        let [type_, status, reason, message] = words.map(|i| WORDS.at(i).to_string());
        let [observed_generation, at] = numbers.all();
        let at = at.and_then(|s| jiff::Timestamp::from_second(s).ok());
        Condition {
            type_,
            status,
            observed_generation,
            last_transition_time: at
                .map(|t| t.strftime(TRANSITION_TIME).to_string())
                .unwrap_or_default(),
            reason,
            message,
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
        let c = status.conditions.iter().find(|c| c.type_() == type_)?;
        Some(c.reason())
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
        i.metadata.finalizers = Some(vec![inbox::FINALIZER.into()]);
        i.metadata.annotations = Some(
            [
                (inbox::ANNOTATION_INBOX_ID, "inb_1"),
                (inbox::ANNOTATION_REFRESH, "r1"),
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
            deletion_policy: Some(inbox::DeletionPolicy::Orphan),
            deletion_policy_source: Some(inbox::DeletionPolicySource::Namespace),
            observed_refresh: Some("r0".into()),
            conditions: vec![
                condition(
                    "Ready",
                    "True",
                    "Ready",
                    crate::controller::inbox::status::READY,
                ),
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
        assert_eq!(cached.named_inbox_id().as_deref(), Some("inb_1"));
        assert_eq!(cached.annotation(inbox::ANNOTATION_REFRESH), Some("r1"));
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
            CachedInbox::from(restored).named_inbox_id().as_deref(),
            Some("inb_1")
        );
    }

    #[test]
    fn the_operators_conditions_are_kept_without_strings_of_their_own() {
        let cached = CachedInbox::from(ready());
        let kept = &cached.status.as_ref().unwrap().conditions;
        let common = |c: &CachedCondition| matches!(c, CachedCondition::Common { .. });
        assert_eq!(
            kept.iter().map(common).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(size_of::<CachedCondition>(), 32);

        // A time the operator would not have written stays as it came.
        let mut other = ready();
        let conditions = &mut other.status.as_mut().unwrap().conditions;
        conditions[0].last_transition_time = "2026-12-06T02:00:00.5Z".into();
        conditions[1].last_transition_time = "2026-12-06T03:00:00+01:00".into();
        conditions[2].last_transition_time = "not a time".into();
        let cached = CachedInbox::from(other.clone());
        let kept = &cached.status.as_ref().unwrap().conditions;
        assert!(!kept.iter().any(common));
        assert_eq!(cached.to_inbox().status, other.status);
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
