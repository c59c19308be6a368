//! Wire types of the AgentSend Inboxes API.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An AgentSend API key. Never printed: `Debug` and `Display` show a placeholder.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wrap a key, trimming surrounding whitespace (keys read from files end in newlines).
    pub fn new(key: impl AsRef<str>) -> Option<ApiKey> {
        let k = key.as_ref().trim();
        if k.is_empty() {
            None
        } else {
            Some(ApiKey(Arc::from(k)))
        }
    }

    /// The key itself, for the `x-api-key` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible name of the key for metric labels: the first 8 hex characters
    /// of its SHA-256 (the key cannot be recovered from it, and keys differ in it in practice).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.0.as_bytes())
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Lifecycle state as AgentSend reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum InboxState {
    /// Sends and receives.
    Active,
    /// Stopped by AgentSend (often for bounces or complaints).
    Suspended,
    /// Gone.
    Deleted,
    /// A state this operator does not know: not ready, and never mistaken for suspended.
    #[serde(untagged)]
    Unknown(String),
}

impl InboxState {
    /// The state as written in status.
    pub fn as_str(&self) -> &str {
        match self {
            InboxState::Active => "active",
            InboxState::Suspended => "suspended",
            InboxState::Deleted => "deleted",
            InboxState::Unknown(s) => s,
        }
    }
}

/// The shared domain of addresses created without a `domainId`.
pub const SHARED_DOMAIN: &str = "agentsend.io";

/// An inbox as the API returns it. Unknown fields are ignored; missing optional ones are `None`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteInbox {
    /// Opaque identifier; never parsed.
    pub id: String,
    /// Full email address.
    pub address: String,
    /// Shown in the From header.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Custom domain; `None` is the shared domain.
    #[serde(default)]
    pub domain_id: Option<String>,
    /// Lifecycle state.
    #[serde(default = "default_state")]
    pub status: InboxState,
    /// Max sends per day.
    #[serde(default)]
    pub daily_send_limit: Option<i64>,
    /// Sends used in the current window.
    #[serde(default)]
    pub sends_today: Option<i64>,
    /// Lifetime sends.
    #[serde(default)]
    pub total_sent: Option<i64>,
    /// Lifetime bounces.
    #[serde(default)]
    pub bounce_count: Option<i64>,
    /// Lifetime spam complaints.
    #[serde(default)]
    pub complaint_count: Option<i64>,
    /// ISO 8601 creation time.
    #[serde(default)]
    pub created_at: Option<String>,
}

fn default_state() -> InboxState {
    InboxState::Unknown("unknown".to_string())
}

impl RemoteInbox {
    /// `dailySendLimit - sendsToday`, clamped at 0; `None` when the limit is unknown.
    pub fn sends_remaining(&self) -> Option<i64> {
        let limit = self.daily_send_limit?;
        // Saturating: both numbers come from the API and may be anything.
        Some(limit.saturating_sub(self.sends_today.unwrap_or(0)).max(0))
    }
}

#[cfg(test)]
impl RemoteInbox {
    /// An active inbox, 3 of 100 sends used today: the unit tests' fixture.
    pub(crate) fn fixture(id: &str, address: &str) -> RemoteInbox {
        RemoteInbox {
            id: id.into(),
            address: address.into(),
            display_name: None,
            domain_id: None,
            status: InboxState::Active,
            daily_send_limit: Some(100),
            sends_today: Some(3),
            total_sent: Some(10),
            bounce_count: Some(0),
            complaint_count: Some(0),
            created_at: Some("2026-11-28T09:59:30.000Z".into()),
        }
    }
}

/// Body of `POST /inboxes`. Every field is optional.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreateInbox {
    /// Local part (with `domainId`) or full address; omitted: random.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Shown in the From header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Custom domain; `None` is the shared domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
}

/// One page of `GET /inboxes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InboxPage {
    /// The inboxes of this page, newest first.
    pub data: Vec<RemoteInbox>,
    /// Inboxes in the account.
    #[serde(default)]
    pub total: Option<u64>,
    /// Page size.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Offset of this page.
    #[serde(default)]
    pub offset: Option<u64>,
    /// The server's clock when it answered (its `Date` header), in Unix seconds; not part of
    /// the body.
    #[serde(skip)]
    pub server_time: Option<i64>,
}

/// Every inbox of an account, as one listing saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The inboxes (duplicates from shifting pages dropped).
    pub inboxes: Vec<RemoteInbox>,
    /// The server's clock (Unix seconds, from its `Date` header) when it answered the first
    /// page: every inbox created before then, and not deleted meanwhile, is in `inboxes`.
    pub server_time: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_redacted() {
        let k = ApiKey::new(" sk_live_secret\n").unwrap();
        assert_eq!(k.expose(), "sk_live_secret");
        assert!(!format!("{k:?} {k}").contains("secret"));
        assert!(ApiKey::new("  \n").is_none());
    }

    #[test]
    fn fingerprints_are_short_stable_and_hide_the_key() {
        let k = ApiKey::new("sk_live_secret").unwrap();
        let f = k.fingerprint();
        assert_eq!(f.len(), 8);
        assert!(f.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(f, ApiKey::new(" sk_live_secret\n").unwrap().fingerprint());
        assert_ne!(f, ApiKey::new("sk_live_other").unwrap().fingerprint());
        assert!(!"sk_live_secret".contains(&f));
    }

    #[test]
    fn tolerant_inbox_parsing() {
        let i: RemoteInbox = serde_json::from_str(
            r#"{"id":"3f1c-uuid","address":"a@agentsend.io","status":"paused","extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(i.status, InboxState::Unknown("paused".into()));
        assert_eq!(i.sends_remaining(), None);
        let i: RemoteInbox = serde_json::from_str(
            r#"{"id":"inb_1","address":"a@x.io","displayName":null,"status":"active","dailySendLimit":10,"sendsToday":12}"#,
        )
        .unwrap();
        assert_eq!(i.status, InboxState::Active);
        assert_eq!(i.sends_remaining(), Some(0));
    }
}
