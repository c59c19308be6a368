//! inbox-operator: manage AgentSend email inboxes declaratively from Kubernetes.
//!
//! Layout (see ARCHITECTURE.md): [`api`] (the resources), [`agentsend`] (the AgentSend
//! client), [`controller`] (the reconcile), [`runtime`] (startup, leader election, servers),
//! [`commands`] (the other subcommands), [`cli`] and [`metrics`].
//! The AgentSend simulator used by tests and the demo is a separate workspace crate
//! (`inbox-sim`, in `sim/`): the operator contains no simulator.
#![forbid(unsafe_code)]

pub mod agentsend;
pub mod api;
pub mod cli;
pub mod commands;
pub mod controller;
pub mod metrics;
pub mod runtime;

/// Install ring as the process-wide rustls crypto provider (idempotent). Exactly one provider
/// is compiled in; this makes the choice explicit for every TLS client (kube and reqwest).
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod architecture {
    /// ARCHITECTURE.md's module map names every source file under `src/`, and nothing that
    /// is gone: the map stays true as files come and go.
    #[test]
    fn architecture_lists_every_module() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
        let mut files = Vec::new();
        let mut dirs = vec![root.join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(root).expect("under the root");
                    files.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let missing: Vec<&String> = files
            .iter()
            .filter(|f| !doc.contains(&format!("`{f}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md does not list {missing:?}"
        );
        let named: Vec<&str> = doc
            .split('`')
            .filter(|s| s.starts_with("src/") && s.ends_with(".rs"))
            .collect();
        let gone: Vec<&&str> = named
            .iter()
            .filter(|n| !files.iter().any(|f| f == *n))
            .collect();
        assert!(
            gone.is_empty(),
            "ARCHITECTURE.md names files that do not exist: {gone:?}"
        );
    }
}
