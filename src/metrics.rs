//! Prometheus/OpenMetrics metrics: the operator's own health and one series per Inbox for
//! the mirrored counters (labels `namespace` and `name` only — never the address or ID).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::InboxStatus;

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
struct AccountLabel {
    account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateReadyLabel {
    state: String,
    ready: String,
}

/// Labels of the per-Inbox series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboxLabel {
    /// Inbox namespace.
    pub namespace: String,
    /// Inbox name.
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboxStateLabel {
    namespace: String,
    name: String,
    state: String,
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
    account_rate: Family<AccountLabel, Gauge<f64, AtomicU64>>,
    account_throttled: Family<AccountLabel, Counter>,
    inboxes: Family<StateReadyLabel, Gauge>,
    leader: Gauge,
    last_sync: Gauge<f64, AtomicU64>,
    sends_today: Family<InboxLabel, Gauge>,
    daily_limit: Family<InboxLabel, Gauge>,
    sends_remaining: Family<InboxLabel, Gauge>,
    total_sent: Family<InboxLabel, Gauge>,
    bounces: Family<InboxLabel, Gauge>,
    complaints: Family<InboxLabel, Gauge>,
    ready: Family<InboxLabel, Gauge>,
    state: Family<InboxStateLabel, Gauge>,
    /// (state, ready) per Inbox, to maintain the aggregate gauge.
    per_inbox: Mutex<HashMap<InboxLabel, (String, bool)>>,
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
        let g = Family::<InboxLabel, Gauge>::default;
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
            inboxes: Family::default(),
            leader: Gauge::default(),
            last_sync: Gauge::default(),
            sends_today: g(),
            daily_limit: g(),
            sends_remaining: g(),
            total_sent: g(),
            bounces: g(),
            complaints: g(),
            ready: g(),
            state: Family::default(),
            per_inbox: Mutex::new(HashMap::new()),
        };
        m.register_operator_health();
        m.register_per_inbox();
        m
    }

    /// The operator's own health: reconciles, errors, AgentSend requests, leadership, sync.
    fn register_operator_health(&mut self) {
        let r = &mut self.registry;
        r.register(
            "inbox_operator_reconciles",
            "Reconciles by result (success, error)",
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
            "inbox_operator_inboxes",
            "Inboxes by AgentSend state and readiness",
            self.inboxes.clone(),
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
    }

    /// One series per Inbox for the mirrored counters (labels `namespace` and `name`).
    fn register_per_inbox(&mut self) {
        let gauges = [
            (
                "inbox_operator_inbox_sends_today",
                "Sends used in the current daily window",
                &self.sends_today,
            ),
            (
                "inbox_operator_inbox_daily_send_limit",
                "Daily send limit",
                &self.daily_limit,
            ),
            (
                "inbox_operator_inbox_sends_remaining",
                "Sends remaining today (never negative)",
                &self.sends_remaining,
            ),
            (
                "inbox_operator_inbox_total_sent",
                "Lifetime sends",
                &self.total_sent,
            ),
            (
                "inbox_operator_inbox_bounces",
                "Lifetime bounces",
                &self.bounces,
            ),
            (
                "inbox_operator_inbox_complaints",
                "Lifetime spam complaints",
                &self.complaints,
            ),
            (
                "inbox_operator_inbox_ready",
                "Whether the Inbox is Ready (1) or not (0)",
                &self.ready,
            ),
        ];
        for (name, help, family) in gauges {
            self.registry.register(name, help, family.clone());
        }
        self.registry.register(
            "inbox_operator_inbox_state",
            "The inbox's current AgentSend state (1 for the current one)",
            self.state.clone(),
        );
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
        let label = AccountLabel {
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
        let l = InboxLabel {
            namespace: namespace.into(),
            name: name.into(),
        };
        let set = |f: &Family<InboxLabel, Gauge>, v: Option<i64>| match v {
            Some(v) => {
                f.get_or_create(&l).set(v);
            }
            None => {
                f.remove(&l);
            }
        };
        set(&self.sends_today, status.sends_today);
        set(&self.daily_limit, status.daily_send_limit);
        set(&self.sends_remaining, status.sends_remaining);
        set(&self.total_sent, status.total_sent);
        set(&self.bounces, status.bounce_count);
        set(&self.complaints, status.complaint_count);
        self.ready.get_or_create(&l).set(i64::from(ready));
        let state = status.state.clone().unwrap_or_else(|| "unknown".into());
        for s in STATES {
            self.state
                .get_or_create(&InboxStateLabel {
                    namespace: l.namespace.clone(),
                    name: l.name.clone(),
                    state: s.into(),
                })
                .set(i64::from(s == state));
        }
        let mut per = self.per_inbox.lock().unwrap_or_else(|p| p.into_inner());
        per.insert(l, (state, ready));
        self.refresh_aggregate(&per);
    }

    /// Remove every series of a deleted Inbox.
    pub fn forget_inbox(&self, namespace: &str, name: &str) {
        let l = InboxLabel {
            namespace: namespace.into(),
            name: name.into(),
        };
        for f in [
            &self.sends_today,
            &self.daily_limit,
            &self.sends_remaining,
            &self.total_sent,
            &self.bounces,
            &self.complaints,
            &self.ready,
        ] {
            f.remove(&l);
        }
        for s in STATES {
            self.state.remove(&InboxStateLabel {
                namespace: l.namespace.clone(),
                name: l.name.clone(),
                state: s.into(),
            });
        }
        let mut per = self.per_inbox.lock().unwrap_or_else(|p| p.into_inner());
        per.remove(&l);
        self.refresh_aggregate(&per);
    }

    fn refresh_aggregate(&self, per: &HashMap<InboxLabel, (String, bool)>) {
        let mut counts: HashMap<StateReadyLabel, i64> = HashMap::new();
        for (state, ready) in per.values() {
            *counts
                .entry(StateReadyLabel {
                    state: state.clone(),
                    ready: ready.to_string(),
                })
                .or_default() += 1;
        }
        self.inboxes.clear();
        for (l, n) in counts {
            self.inboxes.get_or_create(&l).set(n);
        }
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
