//! Proof of ownership: the values only this operator can produce ([`proof`]) and where their
//! key lives ([`key_store`]).

pub mod key_store;
pub mod proof;
