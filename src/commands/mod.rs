//! The subcommands besides `run`: [`import`] (Inbox YAML for the inboxes an account already
//! has) and [`orphans`] (the inboxes of an account no Inbox claims).

pub mod crd;
pub mod import;
pub mod orphans;
