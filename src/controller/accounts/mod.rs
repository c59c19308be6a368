//! The account side: which key an Inbox uses and whether its account lets it
//! ([`credentials`], pure), the Account and ClusterAccount caches ([`watch`]), the key-Secret
//! watch set ([`key_secrets`]), the credentials-in-use finalizer ([`in_use`]), and the
//! accounts' status ([`status`]) with its request figures ([`traffic`]).

pub mod credentials;
pub mod follow;
pub mod in_use;
pub mod key_secrets;
pub mod status;
pub mod traffic;
pub mod watch;
