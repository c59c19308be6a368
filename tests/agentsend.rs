//! The AgentSend client against the simulator: every documented behaviour and every error
//! class, including the simulator's fault hooks.

use std::time::{Duration, Instant};

use inbox_operator::agentsend::{
    AgentSendClient, ApiError, ApiKey, ClientOptions, CreateInbox, InboxState,
};
use inbox_operator::simulator::{Malformed, Route, Simulator, SimulatorHandle};

const KEY: &str = "sk_test_client_SECRET_91ab";

async fn setup() -> (Simulator, SimulatorHandle, AgentSendClient, ApiKey) {
    let sim = Simulator::new();
    sim.add_account("a", KEY);
    sim.add_domain("a", "dom_1", "example.com");
    let h = sim.spawn().await.unwrap();
    let opts = ClientOptions {
        timeout: Duration::from_secs(2),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ClientOptions::default()
    };
    let c = AgentSendClient::new(&h.url(), opts).unwrap();
    (sim, h, c, ApiKey::new(KEY).unwrap())
}

fn req(address: Option<&str>, domain: Option<&str>) -> CreateInbox {
    CreateInbox {
        address: address.map(str::to_string),
        display_name: None,
        domain_id: domain.map(str::to_string),
    }
}

fn assert_no_key(e: &ApiError) {
    assert!(!format!("{e} {e:?}").contains(KEY), "key leaked: {e:?}");
}

#[tokio::test]
async fn create_random_local_full_and_custom_domain() {
    let (_sim, _h, c, k) = setup().await;
    let r = c.create_inbox(&k, &CreateInbox::default()).await.unwrap();
    assert!(r.address.ends_with("@agentsend.io") && r.status == InboxState::Active);
    assert_eq!(r.sends_remaining(), r.daily_send_limit);
    let r = c.create_inbox(&k, &req(Some("help"), None)).await.unwrap();
    assert_eq!(r.address, "help@agentsend.io");
    let r = c
        .create_inbox(&k, &req(Some("sales@agentsend.io"), None))
        .await
        .unwrap();
    assert_eq!(r.address, "sales@agentsend.io");
    let mut with_name = req(Some("support"), Some("dom_1"));
    with_name.display_name = Some("Support".into());
    let r = c.create_inbox(&k, &with_name).await.unwrap();
    assert_eq!(
        (
            r.address.as_str(),
            r.domain_id.as_deref(),
            r.display_name.as_deref()
        ),
        ("support@example.com", Some("dom_1"), Some("Support"))
    );
    let r = c
        .create_inbox(&k, &req(Some("ops@example.com"), Some("dom_1")))
        .await
        .unwrap();
    assert_eq!(r.address, "ops@example.com");
}

#[tokio::test]
async fn rejections_carry_the_api_message() {
    let (sim, _h, c, k) = setup().await;
    for bad in ["a b", "a@@b", "", ".dot", "x@other.io"] {
        match c.create_inbox(&k, &req(Some(bad), None)).await {
            Err(ApiError::Rejected {
                status: 400,
                message,
            }) => assert!(!message.is_empty()),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    c.create_inbox(&k, &req(Some("taken"), None)).await.unwrap();
    match c.create_inbox(&k, &req(Some("taken"), None)).await {
        Err(ApiError::Rejected {
            status: 409,
            message,
        }) => assert!(message.contains("already in use"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Taken across accounts too.
    sim.add_account("b", "other-key");
    let other = ApiKey::new("other-key").unwrap();
    assert!(matches!(
        c.create_inbox(&other, &req(Some("taken"), None)).await,
        Err(ApiError::Rejected { status: 409, .. })
    ));
    match c.create_inbox(&k, &req(Some("x"), Some("dom_nope"))).await {
        Err(ApiError::Rejected {
            status: 422,
            message,
        }) => assert!(message.contains("dom_nope")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unauthorized_and_revoked_keys() {
    let (sim, _h, c, k) = setup().await;
    let wrong = ApiKey::new("sk_wrong").unwrap();
    let e = c.list_inboxes(&wrong, 10, 0).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("sk_wrong"));
    sim.revoke_key(KEY);
    let e = c.get_inbox(&k, "x").await.unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }));
    assert_no_key(&e);
    sim.restore_key(KEY);
    assert!(c.list_inboxes(&k, 10, 0).await.is_ok());
}

#[tokio::test]
async fn get_delete_and_other_accounts() {
    let (sim, _h, c, k) = setup().await;
    let r = c.create_inbox(&k, &CreateInbox::default()).await.unwrap();
    assert_eq!(c.get_inbox(&k, &r.id).await.unwrap(), r);
    sim.add_account("b", "kb");
    let kb = ApiKey::new("kb").unwrap();
    assert!(
        matches!(
            c.get_inbox(&kb, &r.id).await,
            Err(ApiError::NotFound { .. })
        ),
        "other account sees 404"
    );
    assert!(matches!(
        c.delete_inbox(&kb, &r.id).await,
        Err(ApiError::NotFound { .. })
    ));
    c.delete_inbox(&k, &r.id).await.unwrap();
    assert!(matches!(
        c.get_inbox(&k, &r.id).await,
        Err(ApiError::NotFound { .. })
    ));
    assert!(matches!(
        c.delete_inbox(&k, &r.id).await,
        Err(ApiError::NotFound { .. })
    ));
    // The address is free again.
    let again = c
        .create_inbox(&k, &req(Some(&r.address), None))
        .await
        .unwrap();
    assert_eq!(again.address, r.address);
    // IDs are opaque: odd characters are encoded, not parsed.
    assert!(matches!(
        c.get_inbox(&k, "a/b?c").await,
        Err(ApiError::NotFound { .. })
    ));
}

#[tokio::test]
async fn pagination_newest_first_and_list_all() {
    let (sim, _h, c, k) = setup().await;
    let mut ids = Vec::new();
    for _ in 0..250 {
        ids.push(sim.insert_inbox("a", CreateInbox::default()).unwrap().id);
    }
    let page = c.list_inboxes(&k, 10, 0).await.unwrap();
    assert_eq!(page.total, Some(250));
    assert_eq!(page.data[0].id, ids[249], "newest first");
    let page = c.list_inboxes(&k, 500, 240).await.unwrap();
    assert_eq!((page.data.len(), page.limit), (10, Some(100)));
    sim.reset_counters();
    let all = c.list_all(&k).await.unwrap();
    assert_eq!(all.len(), 250);
    assert_eq!(sim.request_count(Route::List), 3, "ceil(250/100) requests");
    let unique: std::collections::HashSet<_> = all.iter().map(|i| &i.id).collect();
    assert_eq!(unique.len(), 250);
}

#[tokio::test]
async fn list_all_tolerates_concurrent_creates() {
    let (sim, _h, c, k) = setup().await;
    for _ in 0..150 {
        sim.insert_inbox("a", CreateInbox::default()).unwrap();
    }
    sim.set_latency(Duration::from_millis(30));
    let creator = {
        let sim = sim.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                sim.insert_inbox("a", CreateInbox::default()).unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let all = c.list_all(&k).await.unwrap();
    creator.await.unwrap();
    let unique: std::collections::HashSet<_> = all.iter().map(|i| &i.id).collect();
    assert_eq!(unique.len(), all.len(), "no duplicates");
    assert!(
        all.len() >= 150,
        "every inbox that existed throughout is seen: {}",
        all.len()
    );
}

#[tokio::test]
async fn transient_errors_are_retried_for_idempotent_calls_only() {
    let (sim, _h, c, k) = setup().await;
    let r = c.create_inbox(&k, &CreateInbox::default()).await.unwrap();
    sim.reset_counters();
    sim.fail_next(Route::Get, 2, 503);
    assert_eq!(c.get_inbox(&k, &r.id).await.unwrap().id, r.id);
    assert_eq!(sim.request_count(Route::Get), 3);
    sim.fail_next(Route::List, 10, 502);
    let e = c.list_inboxes(&k, 10, 0).await.unwrap_err();
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
    assert_eq!(
        sim.request_count(Route::List),
        4,
        "1 + 3 retries, then give up"
    );
    sim.fail_next(Route::Create, 1, 503);
    let e = c
        .create_inbox(&k, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Transient { .. }));
    assert_eq!(
        sim.request_count(Route::Create),
        1,
        "a create is never retried blindly"
    );
    sim.fail_next(Route::Delete, 1, 500);
    c.delete_inbox(&k, &r.id).await.unwrap();
}

#[tokio::test]
async fn dropped_create_response_is_transient_and_the_inbox_exists() {
    let (sim, _h, c, k) = setup().await;
    sim.drop_next_create_responses(1);
    let e = c
        .create_inbox(&k, &req(Some("lost"), None))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_no_key(&e);
    assert_eq!(sim.inboxes("a").len(), 1);
    assert_eq!(sim.inboxes("a")[0].address, "lost@agentsend.io");
}

#[tokio::test]
async fn rate_limits_close_the_account_until_retry_after() {
    for http_date in [false, true] {
        let (sim, _h, c, k) = setup().await;
        sim.add_account("b", "kb");
        let kb = ApiKey::new("kb").unwrap();
        sim.rate_limit_for("a", Duration::from_secs(3), http_date);
        let e = c.list_inboxes(&k, 10, 0).await.unwrap_err();
        match &e {
            ApiError::RateLimited {
                retry_after: Some(d),
                ..
            } => {
                assert!(
                    *d >= Duration::from_secs(2) && *d <= Duration::from_secs(5),
                    "{d:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        let sent = sim.total_requests();
        let e = c.get_inbox(&k, "x").await.unwrap_err();
        assert!(matches!(e, ApiError::RateLimited { .. }));
        assert_eq!(
            sim.total_requests(),
            sent,
            "nothing sent to a closed account"
        );
        assert!(
            c.list_inboxes(&kb, 10, 0).await.is_ok(),
            "other accounts unaffected"
        );
        assert!(c.rate_limited_for(&k).is_some());
    }
}

#[tokio::test]
async fn timeouts_are_transient() {
    let (sim, h, _c, k) = setup().await;
    sim.set_latency(Duration::from_millis(800));
    let opts = ClientOptions {
        timeout: Duration::from_millis(300),
        max_retries: 1,
        min_backoff: Duration::from_millis(10),
        ..Default::default()
    };
    let c = AgentSendClient::new(&h.url(), opts).unwrap();
    let started = Instant::now();
    let e = c.list_inboxes(&k, 10, 0).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Transient { status: None, .. }),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let e = c
        .create_inbox(&k, &CreateInbox::default())
        .await
        .unwrap_err();
    assert!(e.is_transient());
}

#[tokio::test]
async fn malformed_bodies_never_panic() {
    let (sim, _h, c, k) = setup().await;
    let r = c.create_inbox(&k, &CreateInbox::default()).await.unwrap();
    for m in [Malformed::NotJson, Malformed::Truncated, Malformed::Huge] {
        sim.set_malformed(Route::Get, Some(m));
        let e = c.get_inbox(&k, &r.id).await.unwrap_err();
        assert!(
            matches!(e, ApiError::InvalidResponse { .. }),
            "{m:?}: {e:?}"
        );
        assert!(e.to_string().len() < 1000, "message is bounded");
    }
    sim.set_malformed(Route::Get, Some(Malformed::UnexpectedFields));
    assert_eq!(c.get_inbox(&k, &r.id).await.unwrap().id, r.id);
    sim.set_malformed(Route::List, Some(Malformed::UnexpectedFields));
    assert_eq!(c.list_all(&k).await.unwrap().len(), 1);
}

#[tokio::test]
async fn simulator_control_endpoints() {
    let (sim, h, c, k) = setup().await;
    let r = c.create_inbox(&k, &CreateInbox::default()).await.unwrap();
    let http = reqwest::Client::new();
    let url = h.url();
    let resp = http
        .patch(format!("{url}/_simulator/inboxes/{}", r.id))
        .json(&serde_json::json!({"sendsToday": 7, "status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert!(resp.headers().contains_key("x-agentsend-simulator"));
    let got = c.get_inbox(&k, &r.id).await.unwrap();
    assert_eq!(
        (got.sends_today, got.status),
        (Some(7), InboxState::Suspended)
    );
    let stats: serde_json::Value = http
        .get(format!("{url}/_simulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"]["create"], 1);
    assert_eq!(stats["inboxes"], 1);
    http.post(format!("{url}/_simulator/faults"))
        .json(&serde_json::json!({"errorRate": 1.0, "errorStatus": 500}))
        .send()
        .await
        .unwrap();
    assert!(c.get_inbox(&k, &r.id).await.unwrap_err().is_transient());
    http.delete(format!("{url}/_simulator/faults"))
        .send()
        .await
        .unwrap();
    http.delete(format!("{url}/_simulator/inboxes/{}", r.id))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        c.get_inbox(&k, &r.id).await,
        Err(ApiError::NotFound { .. })
    ));
    assert_eq!(sim.inbox_count(), 0);
}
