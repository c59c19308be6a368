//! Every behaviour of the AgentSend client against the AgentSend simulator (its documented
//! API, fault hooks and control endpoints, which these tests exercise through the client). Each
//! test runs its own simulator on a free port. What the simulator answers on the wire, with no
//! operator code in between, is tested in the simulator's own crate (sim/tests/).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inbox_operator::agentsend::{
    AgentSendClient, ApiError, ApiKey, ClientOptions, CreateInbox, InboxState, RemoteInbox,
};
use inbox_sim::{Malformed, Route, Simulator, SimulatorHandle};
use serde_json::{Value, json};

const ACCT: &str = "acct-a";
const ACCT_B: &str = "acct-b";
/// Distinctive keys: no error may ever contain them (or the `SECRET` marker).
const KEY: &str = "sk_test_SECRET_alpha_4f7Qz9";
const KEY_B: &str = "sk_test_SECRET_bravo_8m2Pv1";
const KEY_ROTATED: &str = "sk_test_SECRET_alpha_rotated";
const UNKNOWN_KEY: &str = "sk_test_SECRET_unknown_0000";

/// The client tests' fixture: a simulator with two accounts and an AgentSend client on it. No
/// Kubernetes (the cluster tests use `ctl::Env`).
struct ClientEnv {
    sim: Simulator,
    handle: SimulatorHandle,
    client: AgentSendClient,
    key: ApiKey,
    key_b: ApiKey,
}

fn fast() -> ClientOptions {
    ClientOptions {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..Default::default()
    }
}

fn key(s: &str) -> ApiKey {
    ApiKey::new(s).unwrap()
}

async fn env() -> ClientEnv {
    env_with(fast()).await
}

async fn env_with(opts: ClientOptions) -> ClientEnv {
    let sim = Simulator::new();
    sim.add_account(ACCT, KEY);
    sim.add_account(ACCT_B, KEY_B);
    sim.add_domain(ACCT, "dom_a", "example.com");
    sim.add_domain(ACCT_B, "dom_b", "bravo.test");
    let handle = sim.spawn().await.unwrap();
    let client = AgentSendClient::new(&handle.url(), opts).unwrap();
    ClientEnv {
        sim,
        handle,
        client,
        key: key(KEY),
        key_b: key(KEY_B),
    }
}

fn create(address: Option<&str>, display: Option<&str>, domain: Option<&str>) -> CreateInbox {
    CreateInbox {
        address: address.map(str::to_string),
        display_name: display.map(str::to_string),
        domain_id: domain.map(str::to_string),
    }
}

/// The same request, for the simulator's out-of-band creation (its own wire type).
fn sim_create(
    address: Option<&str>,
    display: Option<&str>,
    domain: Option<&str>,
) -> inbox_sim::CreateInbox {
    inbox_sim::CreateInbox {
        address: address.map(str::to_string),
        display_name: display.map(str::to_string),
        domain_id: domain.map(str::to_string),
    }
}

/// A simulator inbox as the client reads it: through the wire format.
fn wire(i: &inbox_sim::RemoteInbox) -> RemoteInbox {
    let v = serde_json::to_value(i).expect("serialise a simulator inbox");
    serde_json::from_value(v).expect("the client reads the simulator's inbox")
}

/// No error text may contain an API key, whatever the failure.
fn assert_secret_free(e: &ApiError) {
    let text = format!("{e} {e:?} {}", e.message());
    for k in [KEY, KEY_B, KEY_ROTATED, UNKNOWN_KEY, "SECRET"] {
        assert!(!text.contains(k), "error text leaks a key: {text}");
    }
}

fn raw_client() -> reqwest::Client {
    inbox_operator::ensure_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Seed `n` inboxes out of band, oldest first; returns their IDs in creation order.
fn seed(sim: &Simulator, account: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            sim.insert_inbox(
                account,
                sim_create(Some(&format!("{prefix}{i}")), None, None),
            )
            .unwrap()
            .id
        })
        .collect()
}

fn assert_unique(inboxes: &[RemoteInbox]) {
    let ids: HashSet<_> = inboxes.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), inboxes.len(), "duplicate inboxes in the result");
}

// ---------------------------------------------------------------- create

#[tokio::test]
async fn create_with_random_address_has_documented_defaults() {
    let env = env().await;
    let i = env
        .client
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap();
    let (local, domain) = i.address.split_once('@').unwrap();
    assert_eq!(domain, "agentsend.io");
    assert!(!local.is_empty());
    assert!(
        local
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    assert!(!i.id.is_empty());
    assert_eq!(i.status, InboxState::Active);
    assert_eq!(i.daily_send_limit, Some(100));
    assert_eq!(i.sends_today, Some(0));
    assert_eq!(i.total_sent, Some(0));
    assert_eq!(i.bounce_count, Some(0));
    assert_eq!(i.complaint_count, Some(0));
    assert_eq!(i.sends_remaining(), Some(100));
    assert_eq!(i.display_name, None);
    assert_eq!(i.domain_id, None);
    let created = i.created_at.clone().unwrap();
    let ts: jiff::Timestamp = created.parse().unwrap();
    assert!(created.ends_with('Z') && created.contains('.'), "{created}");
    let age = jiff::Timestamp::now().duration_since(ts);
    assert!(age.as_secs() < 60, "{created}");
    assert_eq!(env.sim.inbox(&i.id).as_ref().map(wire), Some(i.clone()));
    assert_eq!(
        env.sim.inboxes(ACCT).iter().map(wire).collect::<Vec<_>>(),
        vec![i]
    );
    assert!(env.sim.inboxes(ACCT_B).is_empty());
    assert_eq!(env.sim.request_count(Route::Create), 1);

    // Two random inboxes never share an address or an ID.
    let j = env
        .client
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap();
    assert_ne!(j.address, env.sim.inboxes(ACCT)[1].address);
    assert_ne!(j.id, env.sim.inboxes(ACCT)[1].id);
}

#[tokio::test]
async fn create_with_local_part_full_address_and_custom_domain() {
    let env = env().await;
    let c = &env.client;
    let a = c
        .create_inbox(
            &env.key,
            &create(Some("support"), Some("Support Bot"), None),
        )
        .await
        .unwrap();
    assert_eq!(a.address, "support@agentsend.io");
    assert_eq!(a.display_name.as_deref(), Some("Support Bot"));
    assert_eq!(a.domain_id, None);

    let b = c
        .create_inbox(&env.key, &create(Some("sales@agentsend.io"), None, None))
        .await
        .unwrap();
    assert_eq!(b.address, "sales@agentsend.io");

    let d = c
        .create_inbox(&env.key, &create(Some("help"), None, Some("dom_a")))
        .await
        .unwrap();
    assert_eq!(d.address, "help@example.com");
    assert_eq!(d.domain_id.as_deref(), Some("dom_a"));

    let e = c
        .create_inbox(
            &env.key,
            &create(
                Some("billing@example.com"),
                Some("Bïlling ✉"),
                Some("dom_a"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(e.address, "billing@example.com");
    assert_eq!(e.display_name.as_deref(), Some("Bïlling ✉"));

    // Custom domain, no address: a random address on that domain.
    let r = c
        .create_inbox(&env.key, &create(None, None, Some("dom_a")))
        .await
        .unwrap();
    assert!(r.address.ends_with("@example.com"), "{}", r.address);

    // Newest first.
    let ids: Vec<_> = env.sim.inboxes(ACCT).into_iter().map(|i| i.id).collect();
    assert_eq!(ids, [r.id, e.id, d.id, b.id, a.id]);
}

#[tokio::test]
async fn malformed_addresses_and_bodies_are_rejected_with_400() {
    let env = env().await;
    let long = format!("{}@agentsend.io", "a".repeat(260));
    let cases: Vec<(Option<&str>, Option<&str>)> = vec![
        (Some(""), None),
        (Some("@agentsend.io"), None),
        (Some("has space"), None),
        (Some("a@b@agentsend.io"), None),
        (Some("semi;colon"), None),
        (Some("bang!"), None),
        (Some(long.as_str()), None),
        (Some("x@other.com"), None),             // not the shared domain
        (Some("x@agentsend.io"), Some("dom_a")), // not the custom domain
        (Some("x@"), None),
    ];
    for (address, domain) in cases {
        let e = env
            .client
            .create_inbox(&env.key, &create(address, None, domain))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ApiError::Rejected { status: 400, .. }),
            "{address:?}: {e:?}"
        );
        assert!(!e.is_transient());
        assert_secret_free(&e);
    }
    assert_eq!(env.sim.inbox_count(), 0);

    // Invalid JSON bodies: 400 with a JSON error body.
    let http = raw_client();
    for body in ["{not json", "[1,2]", r#"{"address": 5}"#] {
        let r = http
            .post(format!("{}/inboxes", env.handle.url()))
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
    // An empty body is "all fields omitted".
    let r = http
        .post(format!("{}/inboxes", env.handle.url()))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(env.sim.inbox_count(), 1);
}

#[tokio::test]
async fn taken_addresses_are_409_across_accounts_and_freed_by_delete() {
    let env = env().await;
    let c = &env.client;
    let first = c
        .create_inbox(&env.key, &create(Some("support"), None, None))
        .await
        .unwrap();
    for (k, address) in [
        (&env.key, "support"),
        (&env.key, "SUPPORT@agentsend.io"),
        (&env.key_b, "support@agentsend.io"),
    ] {
        let e = c
            .create_inbox(k, &create(Some(address), None, None))
            .await
            .unwrap_err();
        match &e {
            ApiError::Rejected {
                status: 409,
                message,
            } => {
                assert!(message.contains("already in use"), "{message}")
            }
            other => panic!("{address}: {other:?}"),
        }
        assert_secret_free(&e);
    }
    // The same local part on a custom domain is another address.
    c.create_inbox(&env.key, &create(Some("support"), None, Some("dom_a")))
        .await
        .unwrap();
    // Deleting releases the address, for any account.
    c.delete_inbox(&env.key, &first.id).await.unwrap();
    let again = c
        .create_inbox(&env.key_b, &create(Some("support"), None, None))
        .await
        .unwrap();
    assert_eq!(again.address, "support@agentsend.io");
    assert_ne!(again.id, first.id);
}

#[tokio::test]
async fn unknown_or_foreign_domain_is_422() {
    let env = env().await;
    for domain in ["dom_nope", "dom_b"] {
        let e = env
            .client
            .create_inbox(&env.key, &create(Some("x"), None, Some(domain)))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ApiError::Rejected { status: 422, .. }),
            "{domain}: {e:?}"
        );
        assert!(e.message().contains(domain), "the API's message: {e}");
        assert_eq!(e.reason(), "rejected");
        assert_secret_free(&e);
    }
    assert_eq!(env.sim.inbox_count(), 0);
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn bad_and_revoked_keys_are_unauthorized_and_never_shown() {
    let env = env().await;
    let c = &env.client;
    let unknown = key(UNKNOWN_KEY);
    let e = c.get_inbox(&unknown, "inb_x").await.unwrap_err();
    assert!(
        matches!(e, ApiError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    assert!(!e.is_transient());
    assert_secret_free(&e);
    // Not retried.
    assert_eq!(env.sim.request_count(Route::Get), 1);
    let rec = env.sim.requests();
    assert_eq!(rec.len(), 1);
    assert_eq!((rec[0].route, rec[0].status), (Route::Get, 401));
    assert_eq!(rec[0].account, None);

    let e = c
        .create_inbox(&unknown, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    assert_secret_free(&e);
    assert_eq!(env.sim.inbox_count(), 0);

    // Rotation: a second key of the same account sees the same inboxes.
    env.sim.add_account(ACCT, KEY_ROTATED);
    let rotated = key(KEY_ROTATED);
    let i = c
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap();
    assert_eq!(c.get_inbox(&rotated, &i.id).await.unwrap(), i);

    // Revoked: 401 on every route; other keys of the account keep working.
    env.sim.revoke_key(KEY);
    let e = c.get_inbox(&env.key, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    assert_secret_free(&e);
    let e = c.list_inboxes(&env.key, 10, 0).await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    let e = c.delete_inbox(&env.key, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    let e = c.list_all(&env.key).await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    assert_secret_free(&e);
    assert!(env.sim.inbox(&i.id).is_some());
    assert_eq!(c.get_inbox(&rotated, &i.id).await.unwrap().id, i.id);
    let last = env.sim.requests().into_iter().rev().nth(1).unwrap();
    assert_eq!(
        last.account.as_deref(),
        Some(ACCT),
        "revoked key, known account"
    );

    env.sim.restore_key(KEY);
    assert_eq!(c.get_inbox(&env.key, &i.id).await.unwrap().id, i.id);

    // A missing header is a 401 too.
    let r = raw_client()
        .get(format!("{}/inboxes", env.handle.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "unauthorized");
    assert!(v["message"].is_string());
}

// ---------------------------------------------------------------- get, delete, list

#[tokio::test]
async fn get_delete_and_404_after_delete() {
    let env = env().await;
    let c = &env.client;
    let i = c
        .create_inbox(&env.key, &create(Some("a"), Some("A"), None))
        .await
        .unwrap();
    assert_eq!(c.get_inbox(&env.key, &i.id).await.unwrap(), i);

    // Another account sees 404 for it, on get and delete.
    let e = c.get_inbox(&env.key_b, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert!(!e.is_transient());
    let e = c.delete_inbox(&env.key_b, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert_secret_free(&e);
    assert!(env.sim.inbox(&i.id).is_some());
    assert!(c.list_all(&env.key_b).await.unwrap().is_empty());

    // Opaque IDs that need escaping are just not found.
    for id in ["missing", "a/b c", "../inboxes", "ünï", "%2F"] {
        let e = c.get_inbox(&env.key, id).await.unwrap_err();
        assert!(matches!(e, ApiError::NotFound { .. }), "{id}: {e:?}");
    }

    c.delete_inbox(&env.key, &i.id).await.unwrap();
    assert_eq!(env.sim.request_count(Route::Delete), 2);
    assert!(env.sim.inbox(&i.id).is_none());
    let e = c.get_inbox(&env.key, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    let e = c.delete_inbox(&env.key, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert!(c.list_all(&env.key).await.unwrap().is_empty());
    assert_eq!(env.sim.inbox_count(), 0);
}

#[tokio::test]
async fn out_of_band_changes_are_visible() {
    let env = env().await;
    let c = &env.client;
    let i = env
        .sim
        .insert_inbox(ACCT, sim_create(Some("oob"), None, None))
        .unwrap();
    assert_eq!(
        env.sim.request_count(Route::Create),
        0,
        "not an API request"
    );
    let e = env
        .sim
        .insert_inbox(ACCT_B, sim_create(Some("oob"), None, None))
        .unwrap_err();
    assert!(e.contains("409"), "{e}");
    assert!(
        env.sim
            .insert_inbox(ACCT, sim_create(Some("x"), None, Some("dom_b")))
            .unwrap_err()
            .contains("422")
    );

    assert!(env.sim.update_inbox(&i.id, |i| {
        i.sends_today = Some(40);
        i.daily_send_limit = Some(50);
        i.total_sent = Some(400);
        i.bounce_count = Some(3);
        i.complaint_count = Some(1);
        i.status = inbox_sim::InboxState::Suspended;
    }));
    let got = c.get_inbox(&env.key, &i.id).await.unwrap();
    assert_eq!(got.status, InboxState::Suspended);
    assert_eq!(got.sends_remaining(), Some(10));
    assert_eq!(
        (got.total_sent, got.bounce_count, got.complaint_count),
        (Some(400), Some(3), Some(1))
    );
    assert!(!env.sim.update_inbox("nope", |_| {}));

    env.sim.set_default_daily_limit(7);
    let j = c
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap();
    assert_eq!(j.daily_send_limit, Some(7));

    assert!(env.sim.delete_out_of_band(&i.id));
    assert!(!env.sim.delete_out_of_band(&i.id));
    let e = c.get_inbox(&env.key, &i.id).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert_eq!(env.sim.inbox_count(), 1);
}

#[tokio::test]
async fn list_pages_newest_first_with_total() {
    let env = env().await;
    let c = &env.client;
    let ids = seed(&env.sim, ACCT, "p", 45);
    seed(&env.sim, ACCT_B, "other", 3);
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();

    let p = c.list_inboxes(&env.key, 20, 0).await.unwrap();
    assert_eq!((p.total, p.limit, p.offset), (Some(45), Some(20), Some(0)));
    let got: Vec<_> = p.data.iter().map(|i| i.id.clone()).collect();
    assert_eq!(got, newest_first[..20]);
    let p = c.list_inboxes(&env.key, 20, 40).await.unwrap();
    let got: Vec<_> = p.data.iter().map(|i| i.id.clone()).collect();
    assert_eq!(got, newest_first[40..]);
    assert_eq!(p.offset, Some(40));
    let p = c.list_inboxes(&env.key, 20, 45).await.unwrap();
    assert!(p.data.is_empty());
    assert_eq!(p.total, Some(45));
    let p = c.list_inboxes(&env.key, 20, u64::MAX).await.unwrap();
    assert!(p.data.is_empty());
    // Over the maximum: clamped to 100.
    let p = c.list_inboxes(&env.key, 1000, 0).await.unwrap();
    assert_eq!((p.data.len(), p.limit), (45, Some(100)));
    let p = c.list_inboxes(&env.key_b, 100, 0).await.unwrap();
    assert_eq!((p.data.len(), p.total), (3, Some(3)));
    assert_eq!(env.sim.request_count(Route::List), 6);

    // Deleted inboxes leave the pages and the total.
    c.delete_inbox(&env.key, &ids[44]).await.unwrap();
    let p = c.list_inboxes(&env.key, 2, 0).await.unwrap();
    assert_eq!(p.total, Some(44));
    assert_eq!(p.data[0].id, ids[43]);

    // Defaults and bad parameters, over raw HTTP.
    let http = raw_client();
    let get = |q: &str| {
        http.get(format!("{}/inboxes{q}", env.handle.url()))
            .header("x-api-key", KEY)
            .send()
    };
    let r = get("").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (
            v["data"].as_array().unwrap().len(),
            &v["total"],
            &v["limit"],
            &v["offset"]
        ),
        (20, &json!(44), &json!(20), &json!(0))
    );
    let v: Value = get("?limit=500&offset=40")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["data"].as_array().unwrap().len(), &v["limit"]),
        (4, &json!(100))
    );
    for bad in [
        "?limit=abc",
        "?limit=-1",
        "?offset=-5",
        "?offset=1.5",
        "?limit=",
    ] {
        let r = get(bad).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(v["message"].is_string(), "{bad}: {v}");
    }
}

#[tokio::test]
async fn list_all_of_250_takes_exactly_3_requests() {
    let env = env().await;
    let ids = seed(&env.sim, ACCT, "n", 250);
    seed(&env.sim, ACCT_B, "b", 10);
    let all = env.client.list_all(&env.key).await.unwrap();
    assert_eq!(all.len(), 250);
    assert_unique(&all);
    let got: Vec<_> = all.iter().map(|i| i.id.clone()).collect();
    let want: Vec<_> = ids.into_iter().rev().collect();
    assert_eq!(got, want);
    assert_eq!(env.sim.request_count(Route::List), 3);
    assert_eq!(env.sim.total_requests(), 3);

    // Exactly a multiple of the page size: still ceil(N/100) requests.
    env.sim.reset_counters();
    seed(&env.sim, ACCT_B, "c", 190);
    assert_eq!(env.client.list_all(&env.key_b).await.unwrap().len(), 200);
    assert_eq!(env.sim.request_count(Route::List), 2);

    // An empty account: one request.
    env.sim.reset_counters();
    env.sim.add_account("empty", "empty-key");
    assert!(
        env.client
            .list_all(&key("empty-key"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(env.sim.request_count(Route::List), 1);
}

#[tokio::test]
async fn list_all_tolerates_concurrent_creates_and_deletes() {
    let env = env().await;
    let before = seed(&env.sim, ACCT, "old", 250);
    env.sim.set_latency(Duration::from_millis(30));

    // Creates land while the scan runs: every page is shifted.
    let client = env.client.clone();
    let k = env.key.clone();
    let scan = tokio::spawn(async move { client.list_all(&k).await });
    let mut added = 0;
    while !scan.is_finished() && added < 300 {
        for _ in 0..10 {
            env.sim
                .insert_inbox(ACCT, inbox_sim::CreateInbox::default())
                .unwrap();
            added += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = tokio::time::timeout(Duration::from_secs(30), scan)
        .await
        .expect("the scan terminates")
        .unwrap()
        .unwrap();
    assert!(added > 0);
    assert_unique(&all);
    // Only creates: nothing that existed before the scan can be missed.
    let seen: HashSet<_> = all.iter().map(|i| i.id.as_str()).collect();
    for id in &before {
        assert!(seen.contains(id.as_str()), "missed {id}");
    }
    let lists = env.sim.request_count(Route::List);
    assert!((3..=20).contains(&lists), "{lists} list requests");

    // Deletes during the scan: still no duplicates, and it terminates.
    let client = env.client.clone();
    let k = env.key.clone();
    let scan = tokio::spawn(async move { client.list_all(&k).await });
    let victims = env.sim.inboxes(ACCT);
    for v in victims.iter().step_by(3).take(150) {
        if scan.is_finished() {
            break;
        }
        env.sim.delete_out_of_band(&v.id);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all = tokio::time::timeout(Duration::from_secs(30), scan)
        .await
        .expect("the scan terminates")
        .unwrap()
        .unwrap();
    assert_unique(&all);
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn transient_failures_of_idempotent_calls_are_retried() {
    let env = env().await;
    let c = &env.client;
    let i = env
        .sim
        .insert_inbox(ACCT, inbox_sim::CreateInbox::default())
        .unwrap();

    env.sim.fail_next(Route::Get, 2, 503);
    assert_eq!(c.get_inbox(&env.key, &i.id).await.unwrap().id, i.id);
    assert_eq!(env.sim.request_count(Route::Get), 3);
    let statuses: Vec<_> = env.sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200]);

    env.sim.fail_next(Route::List, 1, 500);
    assert_eq!(c.list_all(&env.key).await.unwrap().len(), 1);
    assert_eq!(env.sim.request_count(Route::List), 2);

    env.sim.fail_next(Route::Delete, 3, 502);
    c.delete_inbox(&env.key, &i.id).await.unwrap();
    assert_eq!(env.sim.request_count(Route::Delete), 4);
    assert!(env.sim.inbox(&i.id).is_none());

    // 408 counts as transient as well.
    env.sim.fail_next(Route::List, 1, 408);
    c.list_inboxes(&env.key, 10, 0).await.unwrap();
    assert_eq!(env.sim.request_count(Route::List), 4);
}

#[tokio::test]
async fn exhausted_retries_are_transient_errors() {
    let env = env().await;
    let started = Instant::now();
    env.sim.fail_next(Route::Get, 100, 503);
    let e = env.client.get_inbox(&env.key, "inb_x").await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert!(e.message().contains("injected"), "{e}");
    assert_secret_free(&e);
    // One attempt plus max_retries (3).
    assert_eq!(env.sim.request_count(Route::Get), 4);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A random error rate of 100 %: every route fails with that status.
    env.sim.clear_faults();
    env.sim.set_error_rate(1.0, 500);
    let e = env.client.list_all(&env.key).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Transient {
                status: Some(500),
                ..
            }
        ),
        "{e:?}"
    );
    env.sim.clear_faults();
    assert!(env.client.list_all(&env.key).await.unwrap().is_empty());

    // Nobody listening: a transient connection error.
    let url = env.handle.url();
    drop(env);
    let c = AgentSendClient::new(&url, fast()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = c.get_inbox(&key(KEY), "inb_x").await.unwrap_err();
    assert!(
        matches!(e, ApiError::Transient { status: None, .. }),
        "{e:?}"
    );
    assert_secret_free(&e);
}

#[tokio::test]
async fn create_is_never_retried() {
    let env = env().await;
    env.sim.fail_next(Route::Create, 1, 503);
    let e = env
        .client
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(env.sim.request_count(Route::Create), 1);
    assert_eq!(env.sim.inbox_count(), 0);
    // The fault was used up: the next create works.
    env.client
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap();
    assert_eq!(env.sim.request_count(Route::Create), 2);
}

#[tokio::test]
async fn dropped_create_response_is_transient_but_the_inbox_exists() {
    let env = env().await;
    env.sim.drop_next_create_responses(1);
    let e = env
        .client
        .create_inbox(&env.key, &create(Some("lost"), Some("Lost"), None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::Transient { status: None, .. }),
        "{e:?}"
    );
    assert_secret_free(&e);
    assert_eq!(env.sim.request_count(Route::Create), 1);
    let existing = env.sim.inboxes(ACCT);
    assert_eq!(existing.len(), 1);
    assert_eq!(existing[0].address, "lost@agentsend.io");
    // Recovery by listing finds it; creating again would conflict.
    let all = env.client.list_all(&env.key).await.unwrap();
    assert_eq!(all, existing.iter().map(wire).collect::<Vec<_>>());
    let e = env
        .client
        .create_inbox(&env.key, &create(Some("lost"), None, None))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Rejected { status: 409, .. }), "{e:?}");
    // Only the next create was dropped.
    env.client
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap();
    assert_eq!(env.sim.inbox_count(), 2);
}

// ---------------------------------------------------------------- 429

#[tokio::test]
async fn rate_limit_with_retry_after_seconds_closes_the_account() {
    let env = env().await;
    let c = &env.client;
    let i = env
        .sim
        .insert_inbox(ACCT, inbox_sim::CreateInbox::default())
        .unwrap();
    env.sim.rate_limit_for(ACCT, Duration::from_secs(2), false);

    let started = Instant::now();
    let e = c.get_inbox(&env.key, &i.id).await.unwrap_err();
    match &e {
        ApiError::RateLimited {
            retry_after: Some(d),
            ..
        } => assert_eq!(*d, Duration::from_secs(2)),
        other => panic!("{other:?}"),
    }
    assert!(!e.is_transient());
    assert!(e.to_string().contains("retry after 2s"), "{e}");
    assert_secret_free(&e);
    assert_eq!(env.sim.request_count(Route::Get), 1, "429 is not retried");
    assert_eq!(env.sim.requests()[0].status, 429);

    // Within the window: nothing is sent for this key, on any route.
    let left = c.rate_limited_for(&env.key).unwrap();
    assert!(left > Duration::from_millis(1000) && left <= Duration::from_secs(2));
    let e = c.get_inbox(&env.key, &i.id).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::RateLimited {
                retry_after: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    let e = c
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    let e = c.list_all(&env.key).await.unwrap_err();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    assert_secret_free(&e);
    assert_eq!(env.sim.total_requests(), 1);

    // Another account is unaffected.
    assert!(c.rate_limited_for(&env.key_b).is_none());
    assert!(c.list_all(&env.key_b).await.unwrap().is_empty());
    assert_eq!(env.sim.total_requests(), 2);

    // After Retry-After the account works again, and not before.
    tokio::time::sleep(c.rate_limited_for(&env.key).unwrap_or_default()).await;
    assert_eq!(c.get_inbox(&env.key, &i.id).await.unwrap().id, i.id);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(c.rate_limited_for(&env.key).is_none());
    assert_eq!(env.sim.total_requests(), 3);
}

#[tokio::test]
async fn rate_limit_with_retry_after_http_date() {
    let env = env().await;
    env.sim.rate_limit_for(ACCT, Duration::from_secs(3), true);
    let e = env.client.list_inboxes(&env.key, 10, 0).await.unwrap_err();
    match &e {
        ApiError::RateLimited {
            retry_after: Some(d),
            ..
        } => assert!(
            *d >= Duration::from_secs(2) && *d <= Duration::from_secs(4),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    // The header really is an HTTP date.
    let r = raw_client()
        .get(format!("{}/inboxes", env.handle.url()))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let ra = r.headers()["retry-after"].to_str().unwrap().to_string();
    assert!(httpdate::parse_http_date(&ra).is_ok(), "{ra}");

    let n = env.sim.total_requests();
    let e = env.client.get_inbox(&env.key, "inb_x").await.unwrap_err();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    assert_eq!(env.sim.total_requests(), n, "no request inside the window");
    // The other account still works.
    env.client.list_inboxes(&env.key_b, 10, 0).await.unwrap();
    assert_eq!(env.sim.total_requests(), n + 1);
    // Every key of the limited account gets 429 from the simulator.
    env.sim.add_account(ACCT, KEY_ROTATED);
    let e = env
        .client
        .list_inboxes(&key(KEY_ROTATED), 10, 0)
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    assert_secret_free(&e);
}

// ---------------------------------------------------------------- timeouts, bad bodies

#[tokio::test]
async fn slow_answers_time_out_as_transient() {
    let env = env_with(ClientOptions {
        timeout: Duration::from_millis(300),
        ..fast()
    })
    .await;
    env.sim.set_latency(Duration::from_millis(1500));
    let started = Instant::now();
    let e = env.client.get_inbox(&env.key, "inb_x").await.unwrap_err();
    assert!(
        matches!(e, ApiError::Transient { status: None, .. }),
        "{e:?}"
    );
    assert!(e.message().contains("timed out"), "{e}");
    assert_secret_free(&e);
    // Counted on arrival, even though the client gave up: 1 + 3 retries.
    assert_eq!(env.sim.request_count(Route::Get), 4);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Create times out once, without a retry.
    let e = env
        .client
        .create_inbox(&env.key, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::Transient { status: None, .. }),
        "{e:?}"
    );
    assert_eq!(env.sim.request_count(Route::Create), 1);

    env.sim.set_latency(Duration::from_millis(50));
    env.client.list_inboxes(&env.key, 1, 0).await.unwrap();
}

#[tokio::test]
async fn malformed_success_bodies_are_invalid_responses_never_panics() {
    let env = env().await;
    let c = &env.client;
    let i = env
        .sim
        .insert_inbox(
            ACCT,
            sim_create(Some("ünicode-free"), Some("Ünïcödé ✉ name"), None),
        )
        .map_err(|e| e.to_string());
    // Non-ASCII local parts are refused; use a display name with multi-byte characters.
    assert!(i.is_err());
    let i = env
        .sim
        .insert_inbox(
            ACCT,
            sim_create(Some("m"), Some("Ünïcödé ✉ name ✉✉✉"), None),
        )
        .unwrap();

    for (kind, route) in [
        (Malformed::NotJson, Route::Get),
        (Malformed::Truncated, Route::Get),
        (Malformed::Huge, Route::Get),
    ] {
        env.sim.reset_counters();
        env.sim.set_malformed(route, Some(kind));
        let e = c.get_inbox(&env.key, &i.id).await.unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidResponse { .. }),
            "{kind:?}: {e:?}"
        );
        assert!(e.is_transient(), "retried like a transient error");
        assert!(e.message().len() < 400, "{kind:?}: message is truncated");
        assert_secret_free(&e);
        assert_eq!(env.sim.request_count(Route::Get), 4, "{kind:?}");
    }
    env.sim.set_malformed(Route::Get, None);
    assert_eq!(c.get_inbox(&env.key, &i.id).await.unwrap(), wire(&i));

    for kind in [Malformed::NotJson, Malformed::Truncated, Malformed::Huge] {
        env.sim.set_malformed(Route::List, Some(kind));
        let e = c.list_all(&env.key).await.unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidResponse { .. }),
            "{kind:?}: {e:?}"
        );
        env.sim.set_malformed(Route::Create, Some(kind));
        let e = c
            .create_inbox(&env.key, &CreateInbox::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidResponse { .. }),
            "{kind:?}: {e:?}"
        );
    }
    env.sim.clear_faults();
    // The creates happened although their answers were unreadable.
    assert_eq!(env.sim.inbox_count(), 4);
}

#[tokio::test]
async fn unexpected_extra_fields_are_accepted() {
    let env = env().await;
    let c = &env.client;
    for r in Route::ALL {
        env.sim.set_malformed(r, Some(Malformed::UnexpectedFields));
    }
    let i = c
        .create_inbox(&env.key, &create(Some("extra"), None, None))
        .await
        .unwrap();
    assert_eq!(i.address, "extra@agentsend.io");
    assert_eq!(c.get_inbox(&env.key, &i.id).await.unwrap(), i);
    let p = c.list_inboxes(&env.key, 10, 0).await.unwrap();
    assert_eq!((p.data, p.total), (vec![i.clone()], Some(1)));
    assert_eq!(c.list_all(&env.key).await.unwrap().len(), 1);
    c.delete_inbox(&env.key, &i.id).await.unwrap();

    // The extras really are on the wire.
    let j = env
        .sim
        .insert_inbox(ACCT, inbox_sim::CreateInbox::default())
        .unwrap();
    let v: Value = raw_client()
        .get(format!("{}/inboxes/{}", env.handle.url(), j.id))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v.get("unexpected").is_some(), "{v}");
}

// ---------------------------------------------------------------- wire details

/// RFC 9110 allows `Retry-After` as digits or an HTTP-date only: `1e300` (read before as a
/// number and clamped to the 10-minute cap, pausing the whole account) is ignored — the
/// account waits only the default pause — and counted.
#[tokio::test]
async fn an_invalid_retry_after_is_ignored_and_counted() {
    let invalid: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let sim = Simulator::new();
    sim.add_account(ACCT, KEY);
    let handle = sim.spawn().await.unwrap();
    let seen = invalid.clone();
    let observers = inbox_operator::agentsend::Observers {
        invalid_retry_after: Some(Arc::new(move |route| seen.lock().unwrap().push(route))),
        ..Default::default()
    };
    let client = AgentSendClient::with_observers(&handle.url(), fast(), observers).unwrap();
    let k = key(KEY);
    sim.rate_limit_with_retry_after(ACCT, ["1e300"]);
    let e = client.list_inboxes(&k, 5, 0).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::RateLimited {
                retry_after: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(*invalid.lock().unwrap(), ["list"]);
    let paused = client.rate_limited_for(&k).unwrap_or_default();
    assert!(
        paused <= inbox_operator::agentsend::DEFAULT_RETRY_AFTER,
        "paused for {paused:?}"
    );
}

/// A write never leaves a process that may not write (leader election): the gate is asked
/// after every wait, right before the request is sent. Reads still go; when the gate opens,
/// writes go again.
#[tokio::test]
async fn writes_wait_for_the_gate_right_before_they_are_sent() {
    let sim = Simulator::new();
    sim.add_account(ACCT, KEY);
    let handle = sim.spawn().await.unwrap();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = open.clone();
    let observers = inbox_operator::agentsend::Observers {
        may_write: Some(Arc::new(move || {
            gate.load(std::sync::atomic::Ordering::SeqCst)
        })),
        ..Default::default()
    };
    let client = AgentSendClient::with_observers(&handle.url(), fast(), observers).unwrap();
    let k = key(KEY);
    let refused = client.create_inbox(&k, &CreateInbox::default()).await;
    assert!(
        matches!(refused, Err(ApiError::Transient { status: None, .. })),
        "{refused:?}"
    );
    assert!(client.delete_inbox(&k, "inb_x").await.is_err());
    assert!(client.list_inboxes(&k, 5, 0).await.is_ok(), "reads go");
    assert_eq!(
        sim.request_count(Route::Create),
        0,
        "no create left the process"
    );
    assert_eq!(
        sim.request_count(Route::Delete),
        0,
        "no delete left the process"
    );
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let created = client
        .create_inbox(&k, &CreateInbox::default())
        .await
        .unwrap();
    client.delete_inbox(&k, &created.id).await.unwrap();
    assert_eq!(sim.request_count(Route::Create), 1);
}

#[tokio::test]
async fn requests_are_counted_and_logged_whatever_the_outcome() {
    let observed: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sim = Simulator::new();
    sim.add_account(ACCT, KEY);
    let handle = sim.spawn().await.unwrap();
    let obs = observed.clone();
    let client = AgentSendClient::with_observer(
        &handle.url(),
        fast(),
        Some(Arc::new(move |route, status, _| {
            obs.lock()
                .unwrap()
                .push((route.to_string(), status.to_string()));
        })),
    )
    .unwrap();
    let k = key(KEY);
    let i = client
        .create_inbox(&k, &CreateInbox::default())
        .await
        .unwrap();
    client.get_inbox(&k, &i.id).await.unwrap();
    client.list_inboxes(&k, 5, 0).await.unwrap();
    sim.fail_next(Route::Delete, 1, 500);
    client.delete_inbox(&k, &i.id).await.unwrap();
    let _ = client.get_inbox(&key(UNKNOWN_KEY), "x").await;

    let want = [
        ("create", "201"),
        ("get", "200"),
        ("list", "200"),
        ("delete", "500"),
        ("delete", "204"),
        ("get", "401"),
    ];
    let obs: Vec<_> = observed.lock().unwrap().clone();
    let obs: Vec<_> = obs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(obs, want);
    let log: Vec<_> = sim
        .requests()
        .iter()
        .map(|r| (r.route.as_str(), r.status.to_string(), r.account.clone()))
        .collect();
    let acct = Some(ACCT.to_string());
    assert_eq!(
        log,
        [
            ("create", "201".into(), acct.clone()),
            ("get", "200".into(), acct.clone()),
            ("list", "200".into(), acct.clone()),
            ("delete", "500".into(), acct.clone()),
            ("delete", "204".into(), acct.clone()),
            ("get", "401".into(), None),
        ]
    );
    assert!(sim.requests().windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(sim.request_count(Route::Create), 1);
    assert_eq!(sim.request_count(Route::Get), 2);
    assert_eq!(sim.request_count(Route::List), 1);
    assert_eq!(sim.request_count(Route::Delete), 2);
    assert_eq!(sim.total_requests(), 6);
    sim.reset_counters();
    assert_eq!(sim.total_requests(), 0);
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn concurrent_creates_are_consistent() {
    let env = env().await;
    let futs = (0..200).map(|n| {
        let c = env.client.clone();
        let k = if n % 2 == 0 {
            env.key.clone()
        } else {
            env.key_b.clone()
        };
        async move {
            // Half random, half fighting over 10 addresses.
            let req = if n % 4 < 2 {
                CreateInbox::default()
            } else {
                create(Some(&format!("shared{}", n % 10)), None, None)
            };
            c.create_inbox(&k, &req).await
        }
    });
    let results = futures::future::join_all(futs).await;
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, ApiError::Rejected { status: 409, .. }), "{e:?}");
        }
    }
    assert_eq!(ok.len(), 100 + 10);
    let addresses: HashSet<_> = ok.iter().map(|i| i.address.as_str()).collect();
    assert_eq!(addresses.len(), ok.len());
    assert_eq!(env.sim.inbox_count(), ok.len());
    let mut all = env.client.list_all(&env.key).await.unwrap();
    all.extend(env.client.list_all(&env.key_b).await.unwrap());
    assert_eq!(all.len(), ok.len());
    assert_unique(&all);
}

#[tokio::test]
async fn ten_thousand_inboxes_list_in_a_hundred_pages() {
    let env = env().await;
    for n in 0..10_000 {
        env.sim
            .insert_inbox(ACCT, sim_create(Some(&format!("bulk{n}")), None, None))
            .unwrap();
    }
    let started = Instant::now();
    let all = env.client.list_all(&env.key).await.unwrap();
    assert_eq!(all.len(), 10_000);
    assert_unique(&all);
    assert_eq!(all[0].address, "bulk9999@agentsend.io");
    assert_eq!(env.sim.request_count(Route::List), 100);
    // Deep pages cost the same as the first one.
    let t = Instant::now();
    for _ in 0..20 {
        let p = env.client.list_inboxes(&env.key, 100, 9_900).await.unwrap();
        assert_eq!(p.data.len(), 100);
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// The simulator's server-side limit (switched on over the control API, as the bench and the
/// standalone `inbox-sim --rate-limit` do): one token bucket per account, shared by its keys;
/// beyond it 429 with a whole-second `Retry-After`; other accounts are unaffected; off again
/// with `perSecond: 0`.
#[tokio::test]
async fn simulator_limits_each_account_with_a_token_bucket() {
    let env = env().await;
    env.sim.add_account(ACCT, KEY_ROTATED);
    let http = raw_client();
    let url = env.handle.url();
    let faults = |body: Value| {
        let http = http.clone();
        let url = format!("{url}/_simulator/faults");
        async move { http.post(url).json(&body).send().await.unwrap().status() }
    };
    let list = |k: &'static str| {
        let http = http.clone();
        let url = format!("{url}/inboxes");
        async move { http.get(url).header("x-api-key", k).send().await.unwrap() }
    };
    // A slow refill (one token a minute) so the test does not depend on timing.
    let slow = json!({"accountRateLimit": {"perSecond": 0.0166, "burst": 3}});
    assert_eq!(faults(slow).await, 204);
    let mut statuses = Vec::new();
    for k in [KEY, KEY_ROTATED, KEY, KEY_ROTATED] {
        statuses.push(list(k).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "both keys share one bucket");
    let r = list(KEY).await;
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&ra), "Retry-After {ra}");
    // The operator's client reads it as a rate limit with that Retry-After.
    let e = env.client.list_inboxes(&env.key, 1, 0).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::RateLimited {
                retry_after: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        list(KEY_B).await.status(),
        200,
        "another account has its own bucket"
    );

    let bad = json!({"accountRateLimit": {"perSecond": -1}});
    assert_eq!(faults(bad).await, 400);
    assert_eq!(
        faults(json!({"accountRateLimit": {"perSecond": 0}})).await,
        204
    );
    assert_eq!(list(KEY).await.status(), 200, "off again");
    env.sim
        .set_account_rate_limit(inbox_sim::RateLimit::new(0.0166, 1.0));
    assert_eq!(list(KEY).await.status(), 200);
    assert_eq!(list(KEY).await.status(), 429);
    env.sim.clear_faults();
    assert_eq!(
        list(KEY).await.status(),
        200,
        "cleared with the other faults"
    );
}

// ---------------------------------------------------------------- control over HTTP

/// The simulator's control endpoints over raw HTTP, as the demo and out-of-process tests use them.
struct SimControl {
    http: reqwest::Client,
    base: String,
}

impl SimControl {
    fn new(url: &str) -> Self {
        SimControl {
            http: raw_client(),
            base: format!("{url}/_simulator"),
        }
    }

    /// One control request; its status and JSON body (`Null` when there is none).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// A POST that must succeed (fault and key changes the rest of a test relies on).
    async fn post_ok(&self, path: &str, body: Value) {
        let (status, body) = self.post(path, body).await;
        assert!(status.is_success(), "{path}: {status} {body}");
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn delete(&self, path: &str) -> reqwest::StatusCode {
        self.call(reqwest::Method::DELETE, path, None).await.0
    }
}

#[tokio::test]
async fn control_endpoints_over_http() {
    let sim = Simulator::new();
    let handle = sim.spawn().await.unwrap();
    let url = handle.url();
    let ctl = SimControl::new(&url);

    ctl.post_ok("accounts", json!({"account": "acct-x", "apiKey": KEY}))
        .await;
    ctl.post_ok(
        "domains",
        json!({"account": "acct-x", "domainId": "dom_x", "domainName": "X.example"}),
    )
    .await;
    let c = AgentSendClient::new(&url, fast()).unwrap();
    let k = key(KEY);
    let i = c
        .create_inbox(&k, &create(Some("ops"), None, Some("dom_x")))
        .await
        .unwrap();
    assert_eq!(i.address, "ops@x.example");

    // PATCH counters and status; the client sees them.
    let counters = json!({"sendsToday": 90, "dailySendLimit": 95, "totalSent": 1234,
                          "bounceCount": 5, "complaintCount": 2, "status": "suspended"});
    let (status, patched) = ctl
        .call(
            reqwest::Method::PATCH,
            &format!("inboxes/{}", i.id),
            Some(counters),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["sendsToday"], 90);
    let got = c.get_inbox(&k, &i.id).await.unwrap();
    assert_eq!(got.sends_remaining(), Some(5));
    assert_eq!(got.total_sent, Some(1234));
    assert_eq!(got.bounce_count, Some(5));
    assert_eq!(got.complaint_count, Some(2));
    assert_eq!(got.status, InboxState::Suspended);
    let unknown = ctl
        .call(
            reqwest::Method::PATCH,
            "inboxes/nope",
            Some(json!({"sendsToday": 1})),
        )
        .await;
    assert_eq!(unknown.0, 404);
    let r = ctl
        .http
        .patch(format!("{}/inboxes/{}", ctl.base, i.id))
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Stats: only API requests count, never control requests.
    assert_eq!(
        ctl.get("stats").await,
        json!({"requests": {"create": 1, "get": 1, "list": 0, "delete": 0}, "total": 2, "inboxes": 1})
    );

    control_faults_over_http(&ctl, &c, &sim, &i.id).await;

    // Keys: revoke and restore (a fresh client: the old one still honours Retry-After).
    let c = AgentSendClient::new(&url, fast()).unwrap();
    ctl.post_ok("keys/revoke", json!({"apiKey": KEY})).await;
    let e = c.list_inboxes(&k, 1, 0).await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    ctl.post_ok("keys/restore", json!({"apiKey": KEY})).await;
    assert_eq!(c.list_inboxes(&k, 10, 0).await.unwrap().data.len(), 2);

    // Out-of-band insert, listing and delete.
    let oob_body = json!({"account": "acct-x", "address": "oob", "displayName": "OOB"});
    let (status, oob) = ctl.post("inboxes", oob_body).await;
    assert_eq!(status, 201);
    let oob: RemoteInbox = serde_json::from_value(oob).unwrap();
    let listed: Vec<RemoteInbox> =
        serde_json::from_value(ctl.get("inboxes?account=acct-x").await).unwrap();
    assert_eq!(listed[0], oob);
    let taken = json!({"account": "acct-x", "address": "oob"});
    assert_eq!(ctl.post("inboxes", taken).await.0, 409);
    let path = format!("inboxes/{}", oob.id);
    assert_eq!(ctl.delete(&path).await, 204);
    assert_eq!(ctl.delete(&path).await, 404);
    assert!(sim.inbox(&oob.id).is_none());

    ctl.post_ok("reset-counters", json!({})).await;
    let stats = ctl.get("stats").await;
    assert_eq!(stats["total"], 0);
    assert_eq!(stats["inboxes"], 2);
}

/// Faults over HTTP: latency, error rate, dropped creates, fail-next, rate limit, malformed.
async fn control_faults_over_http(
    ctl: &SimControl,
    c: &AgentSendClient,
    sim: &Simulator,
    inbox_id: &str,
) {
    let k = key(KEY);
    ctl.post_ok("faults", json!({"latencyMs": 200})).await;
    let t = Instant::now();
    c.list_inboxes(&k, 1, 0).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    let failing = json!({"latencyMs": 0, "errorRate": 1.0, "errorStatus": 502});
    ctl.post_ok("faults", failing).await;
    let e = c.list_inboxes(&k, 1, 0).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Transient {
                status: Some(502),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(ctl.post("faults", json!({"errorRate": 7.0})).await.0, 400);
    let bogus = json!({"failNext": {"route": "bogus", "n": 1}});
    assert_eq!(ctl.post("faults", bogus).await.0, 400);
    assert!(ctl.delete("faults").await.is_success());
    c.list_inboxes(&k, 1, 0).await.unwrap();

    let mixed = json!({"dropNextCreates": 1, "failNext": {"route": "get", "n": 1, "status": 500},
                       "malformed": {"route": "list", "kind": "not-json"}});
    ctl.post_ok("faults", mixed).await;
    let e = c
        .create_inbox(&k, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::Transient { status: None, .. }),
        "{e:?}"
    );
    assert_eq!(sim.inbox_count(), 2);
    c.get_inbox(&k, inbox_id).await.unwrap();
    let e = c.list_inboxes(&k, 1, 0).await.unwrap_err();
    assert!(matches!(e, ApiError::InvalidResponse { .. }), "{e:?}");
    let limited = json!({"malformed": {"route": "list", "kind": null},
                         "rateLimit": {"account": "acct-x", "ms": 5000, "httpDate": false}});
    ctl.post_ok("faults", limited).await;
    let e = c.list_inboxes(&k, 1, 0).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::RateLimited {
                retry_after: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(ctl.delete("faults").await.is_success());
}

#[tokio::test]
async fn standalone_server_registers_one_account_per_key() {
    let addr = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let server = tokio::spawn(inbox_sim::run_standalone(
        addr,
        vec![KEY.to_string(), KEY_B.to_string()],
        Duration::from_millis(1),
        None,
    ));
    let url = format!("http://{addr}");
    let http = raw_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = http.get(format!("{url}/_simulator/stats")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "standalone simulator did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = AgentSendClient::new(&url, fast()).unwrap();
    let a = c
        .create_inbox(&key(KEY), &create(Some("demo"), None, Some("dom_example")))
        .await
        .unwrap();
    assert_eq!(a.address, "demo@example.com");
    let b = c
        .create_inbox(
            &key(KEY_B),
            &create(Some("demo2"), None, Some("dom_example")),
        )
        .await
        .unwrap();
    // Separate accounts.
    let e = c.get_inbox(&key(KEY), &b.id).await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    let e = c.get_inbox(&key(UNKNOWN_KEY), &a.id).await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
    let stats: Value = http
        .get(format!("{url}/_simulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["inboxes"], 2);
    assert_eq!(stats["requests"]["create"], 2);
    server.abort();
}

#[tokio::test]
async fn redirects_are_not_followed_so_the_key_cannot_leak() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    // Another host that records every x-api-key it is sent.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = seen.clone();
    let other = axum::Router::new().fallback(move |h: HeaderMap| {
        let rec = rec.clone();
        async move {
            if let Some(k) = h.get("x-api-key") {
                rec.lock()
                    .unwrap()
                    .push(k.to_str().unwrap_or("?").to_string());
            }
            axum::Json(json!({"data": [], "total": 0}))
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, other).await });

    // The "API" answers every request with a redirect to that host.
    let to = other_url.clone();
    let redirector = axum::Router::new().fallback(move || {
        let to = to.clone();
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("{to}/inboxes"))],
            )
                .into_response()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, redirector).await });

    let c = AgentSendClient::new(&api_url, fast()).unwrap();
    let k = key(KEY);
    let e = c.list_inboxes(&k, 10, 0).await.unwrap_err();
    assert_secret_free(&e);
    assert!(!e.is_transient(), "{e:?}");
    let e = c
        .create_inbox(&k, &CreateInbox::default())
        .await
        .unwrap_err();
    assert_secret_free(&e);
    assert!(
        seen.lock().unwrap().is_empty(),
        "the API key was sent to another host"
    );
}
