//! What an Inbox writes besides its status, as pure rules: the ConfigMap ([`config_map`]),
//! the shaped Secret keys ([`template`]) and the metadata rules of the objects written
//! ([`meta`]).

pub mod config_map;
pub mod meta;
pub mod secret;
pub mod template;
