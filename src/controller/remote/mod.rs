//! What the controller keeps of AgentSend's side, per account, in parts that do not depend
//! on each other: the scan cache ([`scans`]), the create gates ([`create_gates`]) and the
//! binding registry ([`bindings`]); the counter sync over them ([`counter_sync`]); and
//! refreshes on demand ([`refresh`]).

pub mod bindings;
pub mod counter_sync;
pub mod create_gates;
pub mod refresh;
pub mod scans;
