//! Account status, what a platform operator reads first: for each `Account` and
//! `ClusterAccount`, once per sync interval, whether its key works (from the account scan the
//! counter sync already makes: no second scan per interval), how many Inboxes are bound
//! through it, how many of its inboxes no Inbox in the cluster claims (leaks: manual creation,
//! old bugs; also a metric), when the last scan succeeded, and its request rate and 429s over
//! the interval ([`crate::controller::accounts::traffic`]). Written only when it changed,
//! and only while this instance may write.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::agentsend::AgentSendClient;
use crate::agentsend::{ApiError, RemoteInbox};
use crate::api::account::{Account, AccountStatus, ClusterAccount};
use crate::api::common::AccountKind;
use crate::api::common::SecretKeyRef;
use crate::api::inbox::{self, Condition, ConditionStatus, Inbox, InboxView, Reason};
use crate::controller::accounts::traffic::{Meter, Window};
use crate::controller::accounts::watch::AccountCaches;
use crate::controller::cache::inboxes::InboxCaches;
use crate::controller::remote::scans::ScanCache;
use crate::metrics::{AccountLabel, Metrics};
use crate::runtime::leader::WriteGate;

/// Which account status this instance writes (`--account-status`). With several operator
/// instances on one cluster — `--selector` shards, or namespaced installs — one writes every
/// account's status and the others write none (shards) or only their namespaces' `Account`s
/// (namespaced installs): two writers would fight over the figures, which differ per
/// instance (each counts its own requests). Within one instance, leader election already
/// leaves the writing to the Lease holder.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusWriter {
    /// `Account`s of the watched namespaces and every `ClusterAccount`.
    #[default]
    All,
    /// Only `Account`s of the watched namespaces.
    Accounts,
    /// None (another instance writes them).
    None,
}

impl StatusWriter {
    /// Whether this instance keeps the status of accounts of `kind`.
    pub fn writes(self, kind: AccountKind) -> bool {
        match (self, kind) {
            (StatusWriter::All, _) => true,
            (StatusWriter::Accounts, AccountKind::Account) => true,
            (StatusWriter::Accounts, AccountKind::ClusterAccount) | (StatusWriter::None, _) => {
                false
            }
        }
    }
}

/// What one round found about an account's key.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyCheck {
    /// The scan (at the time given, RFC 3339) listed the account.
    Works(String),
    /// No key: the Secret or its key is missing.
    Missing(String),
    /// AgentSend refused the key or failed.
    Failed(ApiError),
}

/// One round's figures for one account.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// The key check.
    pub key: KeyCheck,
    /// Inboxes of the account that an Inbox claims.
    pub inboxes: i64,
    /// Inboxes of the account no Inbox claims.
    pub unclaimed: i64,
    /// Requests and 429s since the last round.
    pub traffic: Window,
}

/// Of the account's inboxes (`listed`), how many an Inbox claims and which none does.
pub fn tally<'a>(
    listed: &'a [RemoteInbox],
    claimed: &HashSet<String>,
) -> (i64, Vec<&'a RemoteInbox>) {
    let (bound, unclaimed): (Vec<&RemoteInbox>, Vec<&RemoteInbox>) =
        listed.iter().partition(|r| claimed.contains(&r.id));
    (i64::try_from(bound.len()).unwrap_or(i64::MAX), unclaimed)
}

/// The status `f` renders, keeping the condition's transition time while its status holds
/// and the last scan time while scans fail.
pub fn render(
    prev: Option<&AccountStatus>,
    f: &Figures,
    now: &str,
    generation: Option<i64>,
) -> AccountStatus {
    let (status, reason, message) = match &f.key {
        KeyCheck::Works(_) => (
            ConditionStatus::True,
            Reason::Ready,
            "the key works: the last scan listed the account".to_string(),
        ),
        KeyCheck::Missing(m) => (
            ConditionStatus::False,
            Reason::CredentialsMissing,
            m.clone(),
        ),
        KeyCheck::Failed(e @ ApiError::Unauthorized { .. }) => (
            ConditionStatus::False,
            Reason::CredentialsInvalid,
            e.to_string(),
        ),
        KeyCheck::Failed(e) => (
            ConditionStatus::False,
            Reason::ApiUnavailable,
            e.to_string(),
        ),
    };
    let before = prev.and_then(|p| {
        p.conditions
            .iter()
            .find(|c| c.type_ == inbox::condition::READY)
    });
    let since = match before {
        Some(c) if c.status == status.as_str() => c.last_transition_time.clone(),
        _ => now.to_string(),
    };
    let works = matches!(f.key, KeyCheck::Works(_));
    AccountStatus {
        conditions: vec![Condition {
            type_: inbox::condition::READY.into(),
            status: status.as_str().into(),
            observed_generation: generation,
            last_transition_time: since,
            reason: reason.as_str().into(),
            message,
        }],
        inboxes: Some(f.inboxes),
        unclaimed_inboxes: if works {
            Some(f.unclaimed)
        } else {
            prev.and_then(|p| p.unclaimed_inboxes)
        },
        last_scan_time: match &f.key {
            KeyCheck::Works(at) => Some(at.clone()),
            _ => prev.and_then(|p| p.last_scan_time.clone()),
        },
        request_rate: Some(f.traffic.rate),
        rate_limited_requests: Some(f.traffic.rate_limited),
        observed_generation: generation,
    }
}

/// What the account status is made from and written with.
pub struct StatusSources {
    /// Which account status this instance writes.
    pub writer: StatusWriter,
    /// How often (one round per sync interval).
    pub sync_interval: std::time::Duration,
    /// Reads key Secrets, writes the status.
    pub client: Client,
    /// The request figures per key.
    pub api: AgentSendClient,
    /// The account scans the counter sync makes.
    pub scans: ScanCache,
    /// The accounts.
    pub accounts: AccountCaches,
    /// Every Inbox in the watch caches.
    pub inboxes: InboxCaches,
    /// Every Inbox's claim cluster-wide, when the watch caches do not cover the cluster.
    pub claims_index: Option<Store<PartialObjectMeta<Inbox>>>,
    /// The unclaimed-inbox gauge.
    pub metrics: Arc<Metrics>,
    /// Status is written only while this is open.
    pub gate: WriteGate,
}

/// Every inbox ID an Inbox in the cluster claims (the watch caches and, when they do not
/// cover the cluster, the cluster-wide claims index).
fn claimed_ids(ctx: &StatusSources) -> HashSet<String> {
    let mut ids: HashSet<String> = ctx
        .inboxes
        .all()
        .iter()
        .filter_map(|i| i.named_inbox_id())
        .collect();
    if let Some(index) = &ctx.claims_index {
        ids.extend(
            index
                .state()
                .iter()
                .filter_map(|m| m.annotations().get(inbox::ANNOTATION_INBOX_ID).cloned())
                .filter(|id| !id.is_empty()),
        );
    }
    ids
}

/// Update the status of every account this instance writes ([`StatusWriter`]) once per sync
/// interval until cancelled: the `ClusterAccount`s first, then the `Account`s.
pub async fn run(ctx: StatusSources) {
    let writer = ctx.writer;
    if !writer.writes(AccountKind::Account) && !writer.writes(AccountKind::ClusterAccount) {
        return;
    }
    let mut ticks = tokio::time::interval(ctx.sync_interval.max(std::time::Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut meter = Meter::new(ctx.sync_interval);
    loop {
        ticks.tick().await;
        if ctx.accounts.wait_synced().await.is_err() {
            continue;
        }
        meter.start_round();
        let claimed = claimed_ids(&ctx);
        if writer.writes(AccountKind::ClusterAccount) {
            for a in ctx.accounts.cluster.state() {
                let ns = ctx.accounts.operator_namespace.clone();
                let f = figures(&ctx, &ns, &a.spec.secret_ref, &claimed, &mut meter).await;
                let label = label("ClusterAccount", "", &a.name_any());
                update(&ctx, &*a, Api::all(ctx.client.clone()), &f, &label).await;
            }
        }
        if !writer.writes(AccountKind::Account) {
            continue;
        }
        for a in ctx.accounts.accounts.iter().flat_map(|s| s.state()) {
            let ns = a.namespace().unwrap_or_default();
            let f = figures(&ctx, &ns, &a.spec.secret_ref, &claimed, &mut meter).await;
            let label = label("Account", &ns, &a.name_any());
            let api = Api::namespaced(ctx.client.clone(), &ns);
            update(&ctx, &*a, api, &f, &label).await;
        }
    }
}

fn label(kind: &str, namespace: &str, name: &str) -> AccountLabel {
    AccountLabel {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// This round's figures for the account whose key is `secret` in `namespace`.
async fn figures(
    ctx: &StatusSources,
    namespace: &str,
    secret: &SecretKeyRef,
    claimed: &HashSet<String>,
    meter: &mut Meter,
) -> Figures {
    let missing = |m: String| Figures {
        key: KeyCheck::Missing(m),
        inboxes: 0,
        unclaimed: 0,
        traffic: Window::default(),
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let found = match api.get_opt(&secret.name).await {
        Ok(s) => s,
        Err(e) => return missing(format!("cannot read the key Secret: {e}")),
    };
    let Some(key) = crate::controller::accounts::credentials::api_key_in(found, &secret.key) else {
        return missing(format!(
            "the key Secret {:?} in namespace {namespace:?} is missing or has no non-empty key {:?}",
            secret.name, secret.key
        ));
    };
    let scanned = ctx.scans.inventory(&key).await;
    let traffic = meter.read(
        &key.fingerprint(),
        ctx.api.traffic(&key),
        std::time::Instant::now(),
    );
    match scanned {
        Ok((listed, at)) => {
            let (inboxes, unclaimed) = tally(&listed, claimed);
            Figures {
                key: KeyCheck::Works(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                inboxes,
                unclaimed: i64::try_from(unclaimed.len()).unwrap_or(i64::MAX),
                traffic,
            }
        }
        Err(e) => Figures {
            key: KeyCheck::Failed(e),
            inboxes: 0,
            unclaimed: 0,
            traffic,
        },
    }
}

/// Write the account's status if it changed (and this instance may write); export the
/// unclaimed count.
async fn update<K>(ctx: &StatusSources, account: &K, api: Api<K>, f: &Figures, label: &AccountLabel)
where
    K: Resource<DynamicType = ()>
        + AccountObject
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let works = matches!(f.key, KeyCheck::Works(_));
    ctx.metrics
        .set_unclaimed(label, works.then_some(f.unclaimed));
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let prev = account.status();
    let next = render(prev, f, &now, account.meta().generation);
    if prev == Some(&next) || !ctx.gate.is_open() {
        return;
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": next,
    });
    let pp = PatchParams::apply(inbox::FIELD_MANAGER).force();
    if let Err(e) = api
        .patch_status(&account.name_any(), &pp, &Patch::Apply(&body))
        .await
    {
        warn!(error = %e, kind = %label.kind, name = %label.name, "could not write the account status");
    }
}

/// The status of either account kind.
pub trait AccountObject {
    /// Its status, if any.
    fn status(&self) -> Option<&AccountStatus>;
}

impl AccountObject for Account {
    fn status(&self) -> Option<&AccountStatus> {
        self.status.as_ref()
    }
}

impl AccountObject for ClusterAccount {
    fn status(&self) -> Option<&AccountStatus> {
        self.status.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclaimed_inboxes_are_those_no_inbox_claims() {
        let listed = [
            RemoteInbox::fixture("i1", "a@agentsend.io"),
            RemoteInbox::fixture("i2", "b@agentsend.io"),
            RemoteInbox::fixture("i3", "c@agentsend.io"),
        ];
        let claimed: HashSet<String> = ["i1".to_string(), "elsewhere".to_string()].into();
        let (bound, unclaimed) = tally(&listed, &claimed);
        assert_eq!(bound, 1);
        let ids: Vec<&str> = unclaimed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["i2", "i3"]);
    }

    #[test]
    fn which_account_status_an_instance_writes() {
        use AccountKind::{Account, ClusterAccount};
        for (writer, account, cluster) in [
            (StatusWriter::All, true, true),
            (StatusWriter::Accounts, true, false),
            (StatusWriter::None, false, false),
        ] {
            assert_eq!(
                (writer.writes(Account), writer.writes(ClusterAccount)),
                (account, cluster),
                "{writer:?}"
            );
        }
    }

    #[test]
    fn status_table() {
        let works = Figures {
            key: KeyCheck::Works("2026-11-28T09:00:00Z".into()),
            inboxes: 3,
            unclaimed: 1,
            traffic: Window {
                rate: 2.5,
                rate_limited: 4,
            },
        };
        let revoked = Figures {
            key: KeyCheck::Failed(ApiError::Unauthorized {
                status: 401,
                message: "bad key".into(),
            }),
            inboxes: 0,
            unclaimed: 0,
            traffic: Window::default(),
        };
        let missing = Figures {
            key: KeyCheck::Missing("no Secret".into()),
            inboxes: 0,
            unclaimed: 0,
            traffic: Window::default(),
        };
        let first = render(None, &works, "T1", Some(1));
        let ready = &first.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Ready")
        );
        assert_eq!(first.inboxes, Some(3));
        assert_eq!(first.unclaimed_inboxes, Some(1));
        assert_eq!(
            first.last_scan_time.as_deref(),
            Some("2026-11-28T09:00:00Z")
        );
        assert_eq!(
            (first.request_rate, first.rate_limited_requests),
            (Some(2.5), Some(4))
        );
        assert_eq!(
            render(Some(&first), &works, "T2", Some(1)),
            first,
            "unchanged: no write"
        );

        let bad = render(Some(&first), &revoked, "T3", Some(1));
        let c = &bad.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "CredentialsInvalid")
        );
        assert_eq!(c.last_transition_time, "T3");
        assert_eq!(
            bad.last_scan_time, first.last_scan_time,
            "the last successful scan stays"
        );
        assert_eq!(bad.unclaimed_inboxes, Some(1), "the last known count stays");
        let gone = render(Some(&bad), &missing, "T4", Some(1));
        let c = &gone.conditions[0];
        assert_eq!(
            (c.reason.as_str(), c.last_transition_time.as_str()),
            ("CredentialsMissing", "T3")
        );
    }
}
