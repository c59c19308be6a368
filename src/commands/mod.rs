//! The subcommands besides `run`: [`crd`] (the CRDs), [`import`] (Inbox YAML for the inboxes
//! an account already has) and [`orphans`] (the inboxes of an account no Inbox claims); and,
//! in tests only, `reference` (the generated reference pages of the docs, `make docs`).

pub mod crd;
pub mod import;
pub mod orphans;
#[cfg(test)]
mod reference;
