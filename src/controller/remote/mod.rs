//! What the controller keeps of AgentSend's side, per account: the scan cache, the create
//! gates and the binding registry ([`state`]), and refreshes on demand ([`refresh`]).

pub mod refresh;
pub mod state;
