//! What the controller watches and remembers: the watch set-up ([`watches`]), the compact
//! Inbox cache ([`inbox`], [`compact`]), the cache of owned objects ([`owned`]), who claims
//! which inbox ([`claims`]), which events change the referenced Secrets ([`references`]) and
//! what this process last wrote ([`written`]).

pub mod claims;
pub mod compact;
pub mod inbox;
pub mod inboxes;
pub mod owned;
pub mod references;
pub mod watches;
pub mod written;
