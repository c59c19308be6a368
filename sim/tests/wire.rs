//! The simulator on the wire, as a plain HTTP client sees it: what every answer carries and the
//! JSON shape of an inbox. No operator code here: the operator's AgentSend client against the
//! simulator is tested with the operator (tests/it/agentsend.rs).

use std::time::Duration;

use inbox_sim::{Route, Simulator, SimulatorHandle};
use serde_json::Value;

const ACCT: &str = "acct-a";
const ACCT_B: &str = "acct-b";
const KEY: &str = "sk_test_SECRET_alpha_4f7Qz9";
const KEY_B: &str = "sk_test_SECRET_bravo_8m2Pv1";

/// A simulator with two accounts, each with a custom domain, served on a free port.
struct SimEnv {
    sim: Simulator,
    handle: SimulatorHandle,
}

async fn env() -> SimEnv {
    let sim = Simulator::new();
    sim.add_account(ACCT, KEY);
    sim.add_account(ACCT_B, KEY_B);
    sim.add_domain(ACCT, "dom_a", "example.com");
    sim.add_domain(ACCT_B, "dom_b", "bravo.test");
    let handle = sim.spawn().await.unwrap();
    SimEnv { sim, handle }
}

/// A plain HTTP client. The workspace's reqwest brings no TLS provider of its own: ring is
/// installed first, as the operator does.
fn raw_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_answer_is_labelled_as_the_simulator() {
    let env = env().await;
    let http = raw_client();
    let url = env.handle.url();
    let i = env
        .sim
        .insert_inbox(ACCT, inbox_sim::CreateInbox::default())
        .unwrap();
    env.sim.fail_next(Route::Delete, 1, 503);
    let answers = vec![
        http.get(format!("{url}/inboxes"))
            .header("x-api-key", KEY)
            .send(),
        http.get(format!("{url}/inboxes")).send(),
        http.get(format!("{url}/inboxes/{}", i.id))
            .header("x-api-key", KEY)
            .send(),
        http.get(format!("{url}/inboxes/nope"))
            .header("x-api-key", KEY)
            .send(),
        http.delete(format!("{url}/inboxes/{}", i.id))
            .header("x-api-key", KEY)
            .send(),
        http.get(format!("{url}/no/such/route")).send(),
        http.get(format!("{url}/_simulator/stats")).send(),
    ];
    let mut statuses = Vec::new();
    for a in answers {
        let r = a.await.unwrap();
        assert_eq!(
            r.headers()
                .get("x-agentsend-simulator")
                .map(|v| v.to_str().unwrap()),
            Some("true"),
            "{}",
            r.url()
        );
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 401, 200, 404, 503, 404, 200]);
    // Inbox JSON is camelCase with explicit nulls.
    let v: Value = http
        .get(format!("{url}/inboxes/{}", i.id))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for f in [
        "id",
        "address",
        "status",
        "dailySendLimit",
        "sendsToday",
        "totalSent",
        "bounceCount",
        "complaintCount",
        "createdAt",
    ] {
        assert!(!v[f].is_null(), "{f}: {v}");
    }
    assert!(v["displayName"].is_null() && v.get("displayName").is_some());
    assert!(v["domainId"].is_null() && v.get("domainId").is_some());
}
