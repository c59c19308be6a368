//! The create gates ([`CreateGates`]): one lock per account; creates hold it shared,
//! recoveries exclusively, so a recovery never sees an inbox whose create is still being
//! recorded.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use crate::agentsend::ApiKey;

/// One create/recovery lock per account.
///
/// Still needed with operator-chosen addresses: two Inboxes may name the same `spec.address`.
/// Without the gate, the second one's recovery (after its 409) could list the account between
/// the first one's create committing and its binding being noted, see the inbox as created
/// after its own mark ("ours"), find no other owner yet, and bind it too. Holding the gate
/// shared from the create until the binding is noted makes that listing wait. A legacy
/// recovery (an address AgentSend chose) likewise never mistakes an unrecorded create for its
/// own. Creates never wait for each other, so it costs nothing on the happy path.
#[derive(Clone, Default)]
pub struct CreateGates {
    gates: Arc<Mutex<HashMap<ApiKey, Arc<tokio::sync::RwLock<()>>>>>,
}

impl CreateGates {
    /// The gate of an account: creates take it shared, recoveries exclusively. Gates nobody
    /// holds are dropped once there are many (a gate is only needed while held).
    pub fn of(&self, key: &ApiKey) -> Arc<tokio::sync::RwLock<()>> {
        let mut gates = self.gates.lock();
        if gates.len() >= 64 && !gates.contains_key(key) {
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(key.clone()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Create gates of keys no longer used go once there are many; a held gate stays.
    #[test]
    fn create_gates_nobody_holds_are_dropped() {
        let gates = CreateGates::default();
        let held = gates.of(&ApiKey::new("held").unwrap());
        for i in 0..200 {
            drop(gates.of(&ApiKey::new(format!("k{i}")).unwrap()));
        }
        let n = gates.gates.lock().len();
        assert!(n <= 65, "{n} gates kept");
        let again = gates.of(&ApiKey::new("held").unwrap());
        assert!(Arc::ptr_eq(&held, &again), "the held gate is the same gate");
    }

    #[test]
    fn one_gate_per_account() {
        let g = CreateGates::default();
        let (a, b) = (ApiKey::new("a").unwrap(), ApiKey::new("b").unwrap());
        assert!(Arc::ptr_eq(&g.of(&a), &g.of(&a)));
        assert!(!Arc::ptr_eq(&g.of(&a), &g.of(&b)));
    }
}
