//! The AgentSend Inboxes API: wire types, error classification and the HTTP client.

mod client;
mod error;
mod limiter;
mod types;

#[cfg(test)]
mod proptests;

pub use client::{
    AccountObserver, AgentSendClient, ClientOptions, DEFAULT_RETRY_AFTER, InvalidHeaderObserver,
    MAX_BODY_BYTES, MAX_PAGES, MayWrite, Observers, PAGE_SIZE, RequestObserver, Traffic, next_page,
};
pub use error::{
    ApiError, MAX_MESSAGE_LEN, MAX_RETRY_AFTER, error_message, parse_retry_after, truncate,
};
pub use limiter::{Aimd, AimdConfig};
pub use types::{ApiKey, CreateInbox, InboxPage, InboxState, RemoteInbox, SHARED_DOMAIN, Snapshot};
