//! One tenant cannot wedge the operator for everyone: a soak of hostile input — template
//! bombs, garbage `Retry-After` headers, a loop of new `agentsend.io/refresh` values, and a
//! flood of idle connections to both ports — runs against the operator binary while ordinary
//! Inboxes are created, and each of them still becomes Ready; the operator's peak memory stays
//! under the shipped 256 Mi limit (the figure is printed).

use std::collections::BTreeMap;
use std::time::Instant;

use inbox_operator::api::inbox::{Inbox, InboxSpec, Reason, SecretSpec};
use inbox_sim::Route;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::ctl::{Env, Ready};
use crate::support::free_port;

/// The template bombs of the review, each in its own Inbox.
const BOMBS: [&str; 4] = [
    "{{ address|indent(99999999999) }}",
    "{{ (address * 5000000) ~ (address * 5000000) }}",
    "{% for i in range(99999) %}{{ address }}{% endfor %}",
    "{{ address | replace('', '0123456789abcdef0123456789abcdef') | replace('', '0123456789abcdef0123456789abcdef') | replace('', '0123456789abcdef0123456789abcdef') }}",
];

fn bomb(name: &str, template: &str) -> Inbox {
    let spec = InboxSpec {
        secret: Some(Box::new(SecretSpec {
            template: Some(BTreeMap::from([("BOOM".to_string(), template.to_string())])),
            ..Default::default()
        })),
        ..Default::default()
    };
    Inbox::new(name, spec)
}

/// New refresh values on `names`, `rounds` times (bounded): a tenant's loop.
async fn refresh_loop(env: &Env, names: &[String], rounds: usize) {
    let api = env.inboxes();
    for round in 0..rounds {
        for name in names {
            let patch =
                json!({"metadata": {"annotations": {"agentsend.io/refresh": round.to_string()}}});
            let _ = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
}

#[tokio::test]
async fn hostile_tenants_do_not_cost_others_their_service() {
    let env = Env::bare("hostile", "acct-hostile", "hostile-key").await;
    let health = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let op = env.operator(&["--metrics-secure", "--health-addr", &health_addr]);
    // A refreshing tenant's Inboxes, Ready before the soak starts.
    let churned = env.create_many("churned", 5).await;
    for name in &churned {
        env.wait_ready(name, Ready::True).await;
    }
    env.sim.reset_counters();
    let started = Instant::now();
    // Garbage Retry-After values on the next 429s of the account everyone shares.
    env.sim
        .rate_limit_with_retry_after("acct-hostile", ["1e300", "soon"]);
    let api = env.inboxes();
    for (i, template) in BOMBS.iter().enumerate() {
        api.create(
            &PostParams::default(),
            &bomb(&format!("bomb-{i}"), template),
        )
        .await
        .expect("create");
    }
    let flood = inbox_operator::runtime::server::MAX_CONNECTIONS + 16;
    let mut held = crate::secure_metrics::idle_connections(health, flood).await;
    held.extend(crate::secure_metrics::idle_connections(op.metrics_port(), flood).await);
    let (_, ordinary) = tokio::join!(
        refresh_loop(&env, &churned, 20),
        env.create_many("ordinary", 8),
    );
    for name in &ordinary {
        env.wait_ready(name, Ready::True).await;
    }
    for i in 0..BOMBS.len() {
        env.wait_ready(&format!("bomb-{i}"), Ready::False(Reason::Rejected))
            .await;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        env.sim.inboxes("acct-hostile").len(),
        churned.len() + ordinary.len(),
        "one inbox per ordinary Inbox, none for a bomb"
    );
    // 100 refresh values on one account: at most one refresh scan per 30 s of it (plus the
    // counter sync's own scans, one per 2 s sync interval here).
    let lists = env.sim.request_count(Route::List);
    let bound = elapsed.as_secs() / 2 + elapsed.as_secs() / 30 + 4;
    assert!(
        lists <= bound,
        "{lists} list requests in {elapsed:?} (bound {bound})"
    );
    let peak = op.peak_rss().expect("the operator is running");
    println!(
        "operator peak RSS during the soak: {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(peak < 256 * 1024 * 1024, "peak RSS {peak} bytes");
    drop(held);
    let mut names: Vec<String> = (0..BOMBS.len()).map(|i| format!("bomb-{i}")).collect();
    names.extend(churned);
    names.extend(ordinary);
    env.delete_all_and_check(&names).await;
    env.stop().await;
    drop(op);
}
