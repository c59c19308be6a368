//! The AgentSend Inboxes API: wire types, error classification and the HTTP client.

mod client;
mod error;
mod types;

pub use client::{
    AgentSendClient, ClientOptions, DEFAULT_RETRY_AFTER, MAX_BODY_BYTES, PAGE_SIZE, RequestObserver,
};
pub use error::{ApiError, error_message, parse_retry_after, truncate};
pub use types::{ApiKey, CreateInbox, InboxPage, InboxState, RemoteInbox, SHARED_DOMAIN};
