//! Prometheus/OpenMetrics metrics: the operator's own health and one series per Inbox for
//! the mirrored counters (labels `namespace` and `name` only — never the address or ID).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::inbox::InboxStatus;
use crate::controller::cache::compact::Numbers;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabel {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// An AgentSend account, named by its key's fingerprint (never the key).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyAccountLabel {
    account: String,
}

/// Labels of the per-account series (never the key).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// `Account` or `ClusterAccount`.
    pub kind: String,
    /// The Account's namespace (empty for a ClusterAccount).
    pub namespace: String,
    /// The account's name.
    pub name: String,
}

/// States exported by `inbox_operator_inbox_state`.
const STATES: [&str; 3] = ["active", "suspended", "deleted"];

/// All metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    reconcile_duration: Histogram,
    errors: Family<ReasonLabel, Counter>,
    api_requests: Family<RouteStatusLabel, Counter>,
    api_latency: Family<RouteLabel, Histogram>,
    account_rate: Family<KeyAccountLabel, Gauge<f64, AtomicU64>>,
    account_throttled: Family<KeyAccountLabel, Counter>,
    invalid_retry_after: Family<RouteLabel, Counter>,
    leader: Gauge,
    last_sync: Gauge<f64, AtomicU64>,
    unclaimed: Family<AccountLabel, Gauge>,
    /// The per-Inbox series and the `inbox_operator_inboxes` aggregate, encoded at scrape time.
    per_inbox: Arc<InboxSeries>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            errors: Family::default(),
            api_requests: Family::default(),
            api_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            account_rate: Family::default(),
            account_throttled: Family::default(),
            invalid_retry_after: Family::default(),
            leader: Gauge::default(),
            last_sync: Gauge::default(),
            unclaimed: Family::default(),
            per_inbox: Arc::default(),
        };
        m.register_operator_health();
        let counts = InboxCounts(m.per_inbox.clone());
        m.registry.register_collector(Box::new(counts));
        m
    }

    /// The operator's own health: reconciles, errors, AgentSend requests, leadership, sync.
    fn register_operator_health(&mut self) {
        let r = &mut self.registry;
        r.register(
            "inbox_operator_reconciles",
            "Reconciles by result: success, error, or skipped (the pass saw a cached Inbox older than the operator's own last write to it and did nothing; it runs again when the watch delivers that write)",
            self.reconciles.clone(),
        );
        r.register(
            "inbox_operator_reconcile_duration_seconds",
            "Time spent in one reconcile",
            self.reconcile_duration.clone(),
        );
        r.register(
            "inbox_operator_reconcile_errors",
            "Reconcile failures by reason",
            self.errors.clone(),
        );
        r.register(
            "inbox_operator_agentsend_requests",
            "AgentSend HTTP requests by route and status",
            self.api_requests.clone(),
        );
        r.register(
            "inbox_operator_agentsend_request_duration_seconds",
            "AgentSend request latency by route",
            self.api_latency.clone(),
        );
        r.register(
            "inbox_operator_agentsend_account_rate_limit",
            "Adaptive AgentSend request budget per account (requests/s; no series until its first 429); account = key fingerprint",
            self.account_rate.clone(),
        );
        r.register(
            "inbox_operator_agentsend_rate_limited",
            "AgentSend 429 answers per account; account = key fingerprint",
            self.account_throttled.clone(),
        );
        r.register(
            "inbox_operator_agentsend_invalid_retry_after",
            "AgentSend answers whose Retry-After was not a delay RFC 9110 allows (digits or an HTTP-date); ignored, the normal backoff applied",
            self.invalid_retry_after.clone(),
        );
        r.register(
            "inbox_operator_leader",
            "Whether this instance holds the leader lease (1) or not (0)",
            self.leader.clone(),
        );
        r.register(
            "inbox_operator_last_counter_sync_timestamp_seconds",
            "Unix time of the last successful counter sync of all accounts",
            self.last_sync.clone(),
        );
        r.register(
            "inbox_operator_account_unclaimed_inboxes",
            "Inboxes in the account (Account or ClusterAccount) that no Inbox in the cluster claims",
            self.unclaimed.clone(),
        );
    }

    /// The unclaimed inboxes of one account (`None`: unknown, the series goes).
    pub fn set_unclaimed(&self, account: &AccountLabel, n: Option<i64>) {
        match n {
            Some(n) => {
                self.unclaimed.get_or_create(account).set(n);
            }
            None => {
                self.unclaimed.remove(account);
            }
        }
    }

    /// OpenMetrics text exposition, whole (see [`scrape`](Self::scrape)).
    pub fn encode(&self) -> String {
        self.scrape().collect()
    }

    /// OpenMetrics text exposition as pieces, for a streamed response: the registry's
    /// families, then the per-Inbox families a few hundred Inboxes at a time, then `# EOF`.
    /// A scrape holds one piece at a time, not the whole text (≈ 7.6 MB at 10,000 Inboxes).
    pub fn scrape(&self) -> impl Iterator<Item = String> + Send + 'static {
        let mut head = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut head, &self.registry).is_err() {
            head.clear();
        }
        let per_inbox = PerInboxPieces {
            series: self.per_inbox.clone(),
            family: 0,
            after: None,
        };
        std::iter::once(head)
            .chain(per_inbox)
            .chain(std::iter::once("# EOF\n".to_string()))
    }

    /// One reconcile finished.
    pub fn reconciled(&self, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// One pass skipped because its cached view predates the operator's own last write (not an
    /// attempt: no duration is observed).
    pub fn skipped(&self) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: "skipped".into(),
            })
            .inc();
    }

    /// One reconcile failure, by short reason label.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// An AgentSend answer for `account` (a key fingerprint): its adaptive rate now
    /// (`None`: unlimited) and whether the answer was a 429.
    pub fn api_account(&self, account: &str, rate: Option<f64>, throttled: bool) {
        let label = KeyAccountLabel {
            account: account.into(),
        };
        // No series while the account is unlimited (before its first 429).
        if let Some(rate) = rate {
            self.account_rate.get_or_create(&label).set(rate);
        }
        if throttled {
            self.account_throttled.get_or_create(&label).inc();
        }
    }

    /// One AgentSend exchange: route, status label, latency.
    pub fn api_request(&self, route: &str, status: &str, took: Duration) {
        self.api_requests
            .get_or_create(&RouteStatusLabel {
                route: route.into(),
                status: status.into(),
            })
            .inc();
        self.api_latency
            .get_or_create(&RouteLabel {
                route: route.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// An answer on `route` carried an invalid `Retry-After`.
    pub fn invalid_retry_after(&self, route: &str) {
        self.invalid_retry_after
            .get_or_create(&RouteLabel {
                route: route.into(),
            })
            .inc();
    }

    /// Leadership changed.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// All accounts were scanned successfully just now.
    pub fn counter_sync_succeeded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }

    /// Export an Inbox's mirrored counters and readiness.
    pub fn observe_inbox(&self, namespace: &str, name: &str, status: &InboxStatus, ready: bool) {
        let sample = InboxSample {
            counters: Numbers::new([
                status.sends_today,
                status.daily_send_limit,
                status.sends_remaining,
                status.total_sent,
                status.bounce_count,
                status.complaint_count,
            ]),
            ready,
            state: state_index(status.state.as_deref()),
        };
        let key = (namespace.to_string(), name.to_string());
        self.per_inbox.samples.write().insert(key, sample);
    }

    /// Remove every series of a deleted Inbox.
    pub fn forget_inbox(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.per_inbox.samples.write().remove(&key);
    }
}

/// The mirrored counters exported per Inbox: metric name, help, in [`InboxSample::counters`]
/// order.
const COUNTERS: [(&str, &str); 6] = [
    (
        "inbox_operator_inbox_sends_today",
        "Sends used in the current daily window",
    ),
    ("inbox_operator_inbox_daily_send_limit", "Daily send limit"),
    (
        "inbox_operator_inbox_sends_remaining",
        "Sends remaining today (never negative)",
    ),
    ("inbox_operator_inbox_total_sent", "Lifetime sends"),
    ("inbox_operator_inbox_bounces", "Lifetime bounces"),
    (
        "inbox_operator_inbox_complaints",
        "Lifetime spam complaints",
    ),
];

/// What is exported for one Inbox: a few words, instead of a registered series (with its own
/// label set and atomic) per metric and Inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InboxSample {
    /// Values of [`COUNTERS`] (an unknown one has no series).
    counters: Numbers<6>,
    ready: bool,
    /// Index into [`STATES`]; `STATES.len()` for a state not among them.
    state: u8,
}

fn state_index(state: Option<&str>) -> u8 {
    let i = STATES.iter().position(|s| Some(*s) == state);
    i.unwrap_or(STATES.len()) as u8
}

/// One compact map of every Inbox's sample, keyed by (namespace, name), encoded by a custom
/// collector at scrape time: updates are a map insert, and `inbox_operator_inboxes` is counted
/// per scrape instead of being recomputed on every update.
#[derive(Debug, Default)]
struct InboxSeries {
    samples: parking_lot::RwLock<BTreeMap<(String, String), InboxSample>>,
}

/// Encode one gauge family: one series per item that `value` gives a value for.
fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    series: impl Iterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// The `inbox_operator_inboxes` aggregate, counted from the per-Inbox map at scrape time (a
/// few series, so it is encoded with the registry).
#[derive(Debug)]
struct InboxCounts(Arc<InboxSeries>);

impl Collector for InboxCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut counts: BTreeMap<(u8, bool), i64> = BTreeMap::new();
        for s in self.0.samples.read().values() {
            *counts.entry((s.state, s.ready)).or_default() += 1;
        }
        let aggregate = counts.into_iter().map(|((state, ready), n)| {
            let state = STATES.get(usize::from(state)).copied().unwrap_or("unknown");
            let ready = if ready { "true" } else { "false" };
            ([("state", state), ("ready", ready)], n)
        });
        gauge_family(
            &mut encoder,
            (
                "inbox_operator_inboxes",
                "Inboxes by AgentSend state and readiness",
            ),
            aggregate,
        )
    }
}

/// The per-Inbox gauge families, in exposition order: the [`COUNTERS`], then readiness, then
/// the one-hot state.
const PER_INBOX_FAMILIES: usize = COUNTERS.len() + 2;

/// Inboxes encoded per piece of a streamed scrape: a piece is ≈ 20 KB of text (≈ 65 KB for
/// the one-hot state family), where the whole exposition at 10,000 Inboxes is ≈ 7.6 MB.
const SCRAPE_PIECE: usize = 256;

/// The per-Inbox families of one scrape, as pieces of text produced one at a time (each
/// under a short read lock), so that a scrape never holds the whole exposition. An Inbox
/// added or removed during the scrape may be in some families and not in others, as with
/// any exporter that does not stop the world to be scraped.
struct PerInboxPieces {
    series: Arc<InboxSeries>,
    /// The family being encoded ([`PER_INBOX_FAMILIES`]: done).
    family: usize,
    /// The last Inbox encoded in `family` (`None`: its descriptor is next).
    after: Option<(String, String)>,
}

/// Append `value` as an OpenMetrics label value (backslash, quote and newline escaped).
fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Append one gauge sample of an Inbox: `name{namespace="…",name="…"[,state="…"]} value`.
fn push_sample(
    out: &mut String,
    family: &str,
    (ns, name): &(String, String),
    state: Option<&str>,
    value: i64,
) {
    use std::fmt::Write as _;
    out.push_str(family);
    out.push_str("{namespace=\"");
    push_label_value(out, ns);
    out.push_str("\",name=\"");
    push_label_value(out, name);
    if let Some(state) = state {
        out.push_str("\",state=\"");
        push_label_value(out, state);
    }
    let _ = writeln!(out, "\"}} {value}");
}

impl PerInboxPieces {
    /// Name and help of family `i`.
    fn descriptor(i: usize) -> (&'static str, &'static str) {
        match i {
            i if i < COUNTERS.len() => COUNTERS[i],
            i if i == COUNTERS.len() => (
                "inbox_operator_inbox_ready",
                "Whether the Inbox is Ready (1) or not (0)",
            ),
            _ => (
                "inbox_operator_inbox_state",
                "The inbox's current AgentSend state (1 for the current one)",
            ),
        }
    }

    /// Append the samples of one Inbox in the current family.
    fn push(&self, out: &mut String, name: &str, key: &(String, String), s: &InboxSample) {
        match self.family {
            i if i < COUNTERS.len() => {
                if let Some(v) = s.counters.get(i) {
                    push_sample(out, name, key, None, v);
                }
            }
            i if i == COUNTERS.len() => push_sample(out, name, key, None, i64::from(s.ready)),
            _ => {
                for (i, st) in STATES.iter().enumerate() {
                    let current = i64::from(usize::from(s.state) == i);
                    push_sample(out, name, key, Some(st), current);
                }
            }
        }
    }
}

impl Iterator for PerInboxPieces {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.family >= PER_INBOX_FAMILIES {
            return None;
        }
        let (name, help) = Self::descriptor(self.family);
        let mut out = String::new();
        if self.after.is_none() {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        }
        let samples = self.series.samples.read();
        let mut rest = match &self.after {
            Some(after) => samples.range::<(String, String), _>((Excluded(after), Unbounded)),
            None => samples.range::<(String, String), _>(..),
        }
        .peekable();
        let mut last = None;
        for (key, sample) in rest.by_ref().take(SCRAPE_PIECE) {
            self.push(&mut out, name, key, sample);
            last = Some(key);
        }
        match (last, rest.peek()) {
            (Some(key), Some(_)) => self.after = Some(key.clone()),
            _ => {
                self.family += 1;
                self.after = None;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_budget_series_appear_at_the_first_429() {
        let m = Metrics::new();
        m.api_account("0a1b2c3d", None, false);
        assert!(!m.encode().contains("account_rate_limit{"));
        m.api_account("0a1b2c3d", Some(42.5), true);
        let text = m.encode();
        assert!(
            text.contains("inbox_operator_agentsend_account_rate_limit{account=\"0a1b2c3d\"} 42.5"),
            "{text}"
        );
        assert!(
            text.contains("inbox_operator_agentsend_rate_limited_total{account=\"0a1b2c3d\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn per_inbox_series_come_and_go() {
        let m = Metrics::new();
        let st = InboxStatus {
            state: Some("active".into()),
            sends_today: Some(3),
            daily_send_limit: Some(10),
            sends_remaining: Some(7),
            ..Default::default()
        };
        m.observe_inbox("team", "support", &st, true);
        let text = m.encode();
        assert!(
            text.contains(
                r#"inbox_operator_inbox_sends_remaining{namespace="team",name="support"} 7"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"inbox_operator_inbox_state{namespace="team",name="support",state="active"} 1"#
        ));
        assert!(text.contains(r#"inbox_operator_inboxes{state="active",ready="true"} 1"#));
        m.forget_inbox("team", "support");
        let text = m.encode();
        assert!(!text.contains(r#"name="support""#), "{text}");
    }

    #[test]
    fn inboxes_are_counted_by_state_and_readiness_at_scrape_time() {
        let m = Metrics::new();
        let st = |state: &str| InboxStatus {
            state: Some(state.into()),
            ..Default::default()
        };
        m.observe_inbox("a", "one", &st("active"), true);
        m.observe_inbox("a", "two", &st("active"), true);
        m.observe_inbox("b", "three", &st("suspended"), false);
        m.observe_inbox("b", "three", &st("active"), false);
        let text = m.encode();
        assert!(text.contains(r#"inbox_operator_inboxes{state="active",ready="true"} 2"#));
        assert!(text.contains(r#"inbox_operator_inboxes{state="active",ready="false"} 1"#));
        assert!(!text.contains(r#"state="suspended",ready"#), "{text}");
        // Unknown counters have no series; known ones do.
        assert!(
            !text.contains("inbox_operator_inbox_sends_today{"),
            "{text}"
        );
        assert!(text.contains(r#"inbox_operator_inbox_ready{namespace="b",name="three"} 0"#));
        m.forget_inbox("a", "one");
        let text = m.encode();
        assert!(text.contains(r#"inbox_operator_inboxes{state="active",ready="true"} 1"#));
    }

    fn observe_many(m: &Metrics, n: usize) {
        let st = InboxStatus {
            state: Some("active".into()),
            sends_today: Some(1),
            ..Default::default()
        };
        for i in 0..n {
            m.observe_inbox("ns", &format!("inbox-{i:05}"), &st, i % 2 == 0);
        }
    }

    #[test]
    fn a_scrape_is_streamed_in_pieces_with_every_series_once() {
        let m = Metrics::new();
        let n = 2 * SCRAPE_PIECE + 1;
        observe_many(&m, n);
        let pieces: Vec<String> = m.scrape().collect();
        // The registry, three pieces per per-Inbox family, the end marker.
        assert_eq!(pieces.len(), 1 + 3 * PER_INBOX_FAMILIES + 1);
        assert!(pieces.iter().all(|p| p.len() < 96 * 1024));
        let text = pieces.concat();
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
        for family in ["inbox_operator_inbox_ready", "inbox_operator_inbox_state"] {
            assert_eq!(text.matches(&format!("# TYPE {family} gauge\n")).count(), 1);
        }
        for i in [0, SCRAPE_PIECE - 1, SCRAPE_PIECE, n - 1] {
            let ready = format!(
                "inbox_operator_inbox_ready{{namespace=\"ns\",name=\"inbox-{i:05}\"}} {}\n",
                i64::from(i % 2 == 0)
            );
            assert_eq!(text.matches(&ready).count(), 1, "{ready}");
        }
        assert_eq!(text.matches("inbox_operator_inbox_sends_today{").count(), n);
        assert_eq!(text.matches("inbox_operator_inbox_total_sent{").count(), 0);
        assert_eq!(
            text.matches("inbox_operator_inbox_state{").count(),
            n * STATES.len()
        );
        assert!(text.contains(&format!(
            "inbox_operator_inboxes{{state=\"active\",ready=\"false\"}} {}",
            n / 2
        )));
    }

    /// The hand-written per-Inbox exposition is what prometheus-client writes for the same
    /// gauges, escaping included.
    #[test]
    fn streamed_families_match_the_library_encoding() {
        #[derive(Debug)]
        struct Oracle(Vec<((String, String), InboxSample)>);
        impl Collector for Oracle {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                for f in 0..PER_INBOX_FAMILIES {
                    let rows = self.0.iter().flat_map(|((ns, name), s)| {
                        let mut out = Vec::new();
                        match f {
                            f if f < COUNTERS.len() => {
                                if let Some(v) = s.counters.get(f) {
                                    out.push((
                                        vec![("namespace", ns.as_str()), ("name", name.as_str())],
                                        v,
                                    ));
                                }
                            }
                            f if f == COUNTERS.len() => out.push((
                                vec![("namespace", ns.as_str()), ("name", name.as_str())],
                                i64::from(s.ready),
                            )),
                            _ => {
                                for (i, st) in STATES.iter().enumerate() {
                                    out.push((
                                        vec![
                                            ("namespace", ns.as_str()),
                                            ("name", name.as_str()),
                                            ("state", *st),
                                        ],
                                        i64::from(usize::from(s.state) == i),
                                    ));
                                }
                            }
                        }
                        out
                    });
                    gauge_family(&mut encoder, PerInboxPieces::descriptor(f), rows)?;
                }
                Ok(())
            }
        }
        let m = Metrics::new();
        let st = InboxStatus {
            state: Some("suspended".into()),
            bounce_count: Some(4),
            total_sent: Some(9),
            ..Default::default()
        };
        m.observe_inbox("a", "plain", &st, false);
        m.observe_inbox("b", "odd\"na\\me\n", &InboxStatus::default(), true);
        let mut registry = Registry::default();
        let rows: Vec<_> = m
            .per_inbox
            .samples
            .read()
            .iter()
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        registry.register_collector(Box::new(Oracle(rows)));
        let mut expected = String::new();
        prometheus_client::encoding::text::encode_registry(&mut expected, &registry).unwrap();
        let streamed: String = PerInboxPieces {
            series: m.per_inbox.clone(),
            family: 0,
            after: None,
        }
        .collect();
        assert_eq!(streamed, expected);
    }

    #[test]
    fn api_requests_counted_by_route_and_status() {
        let m = Metrics::new();
        m.api_request("create", "201", Duration::from_millis(20));
        m.api_request("create", "201", Duration::from_millis(20));
        let text = m.encode();
        assert!(
            text.contains(
                r#"inbox_operator_agentsend_requests_total{route="create",status="201"} 2"#
            ),
            "{text}"
        );
    }
}
