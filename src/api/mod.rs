//! The resources users write: [`inbox`] (`Inbox`, with every public name of the contract:
//! annotations, labels, conditions, reasons) and [`account`] (`Account`, `ClusterAccount`).
//! Both are plain data with their schema; nothing here talks to a server.

pub mod account;
pub mod common;
pub mod inbox;
