//! The simulator's own wire types of the AgentSend Inboxes API. They mirror the HTTP API, not
//! the operator's client types: the simulator is a server, and tests that drive it directly use
//! these.

use serde::{Deserialize, Serialize};

/// The shared domain of addresses created without a `domainId`.
pub const SHARED_DOMAIN: &str = "agentsend.io";

/// Lifecycle state of an inbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum InboxState {
    /// Sends and receives.
    Active,
    /// Stopped (for bounces or complaints).
    Suspended,
    /// Gone.
    Deleted,
    /// Any other state (to test how clients cope with states they do not know).
    #[serde(untagged)]
    Unknown(String),
}

/// An inbox as the API returns it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteInbox {
    /// Opaque identifier.
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
