//! Property tests over everything the operator parses from AgentSend answers: status codes,
//! `Retry-After` values, error bodies of any shape and size, list pages. Whatever arrives, no
//! panic, and the outputs stay bounded.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::{
    ApiError, InboxPage, MAX_MESSAGE_LEN, MAX_PAGES, MAX_RETRY_AFTER, RemoteInbox, error_message,
    next_page, parse_retry_after, truncate,
};

/// Longest message: the cut text plus the `…` marker (3 bytes).
const MAX_MESSAGE_BYTES: usize = MAX_MESSAGE_LEN + '…'.len_utf8();

/// `Retry-After` values a broken or hostile server might send.
fn retry_after_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[0-9]{1,400}",
        "-?[0-9]{0,5}(\\.[0-9]{0,5})?([eE][-+]?[0-9]{1,5})?",
        // Dates from 1970 to 9999 (what `fmt_http_date` can write).
        (0u64..253_402_300_799).prop_map(|secs| {
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        }),
        "[A-Za-z]{3}, [0-9]{2} [A-Za-z]{3} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
        any::<String>(),
    ]
}

/// JSON values of any shape, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("error".to_string()),
                    Just("message".to_string()),
                    Just("detail".to_string()),
                    Just("data".to_string()),
                    Just("total".to_string()),
                    Just("limit".to_string()),
                    Just("id".to_string()),
                    Just("address".to_string()),
                    ".{0,10}",
                ],
                inner,
                0..8,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check_message(m: &str) {
    assert!(!m.is_empty());
    assert!(m.len() <= MAX_MESSAGE_BYTES, "{} bytes", m.len());
    assert!(!m.contains('\n'), "whitespace is collapsed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn retry_after_never_panics_and_is_capped(v in retry_after_value(), now_secs in any::<u32>()) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now_secs));
        if let Some(d) = parse_retry_after(&v, now) {
            prop_assert!(d <= MAX_RETRY_AFTER, "{v:?} -> {d:?}");
        }
    }

    #[test]
    fn any_status_and_body_classify_with_bounded_output(
        status in any::<u16>(),
        retry_secs in proptest::option::of(any::<u64>()),
        body in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let retry = retry_secs.map(Duration::from_secs);
        let e = ApiError::from_status(status, retry, &body);
        check_message(e.message());
        if let ApiError::RateLimited { retry_after: Some(d), .. } = &e {
            prop_assert!(*d <= MAX_RETRY_AFTER);
        }
        let shown = e.to_string();
        prop_assert!(shown.len() <= MAX_MESSAGE_BYTES + 200, "{} bytes", shown.len());
        prop_assert!(!e.reason().is_empty());
    }

    #[test]
    fn json_error_bodies_of_any_shape(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        check_message(&error_message(&body));
    }

    #[test]
    fn huge_text_bodies_are_truncated(s in ".{0,64}", repeat in 1usize..2000) {
        let body = s.repeat(repeat);
        check_message(&error_message(body.as_bytes()));
        let json = serde_json::json!({"error": body, "message": s}).to_string();
        check_message(&error_message(json.as_bytes()));
    }

    #[test]
    fn truncate_respects_char_boundaries(s in any::<String>(), max in 0usize..64) {
        let t = truncate(&s, max);
        prop_assert!(t.len() <= max + '…'.len_utf8());
        prop_assert!(s.starts_with(t.trim_end_matches('…')));
    }

    #[test]
    fn list_pages_of_any_shape_parse_or_fail_cleanly(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        if let Ok(page) = serde_json::from_slice::<InboxPage>(&body) {
            let next = next_page(0, page.data.len() as u64, page.total, page.limit, 1);
            if let Some(o) = next {
                prop_assert_eq!(o, page.data.len() as u64);
            }
        }
    }

    #[test]
    fn counters_of_any_size_never_overflow(limit in any::<i64>(), today in any::<i64>()) {
        let body = serde_json::json!({
            "id": "i", "address": "a@x.io", "status": "active",
            "dailySendLimit": limit, "sendsToday": today,
        });
        let inbox: RemoteInbox = serde_json::from_value(body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let left = inbox.sends_remaining().unwrap_or(0);
        prop_assert!(left >= 0 && left <= limit.max(0).saturating_add(today.saturating_neg().max(0)));
    }

    #[test]
    fn list_page_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = serde_json::from_slice::<InboxPage>(&body);
    }

    #[test]
    fn paging_always_ends(
        total in proptest::option::of(any::<u64>()),
        limit in proptest::option::of(any::<u64>()),
        n in prop_oneof![0u64..=100, any::<u64>()],
        offset in any::<u64>(),
        pages in 1u64..=MAX_PAGES + 1,
    ) {
        if let Some(next) = next_page(offset, n, total, limit, pages) {
            prop_assert!(next > offset, "progress");
            prop_assert!(pages < MAX_PAGES, "bounded");
        }
    }
}

proptest! {
    // Each case pages up to MAX_PAGES times: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn a_scan_stops_within_the_bound(total in proptest::option::of(any::<u64>()), limit in proptest::option::of(any::<u64>())) {
        // A server that always answers full pages: the scan still ends.
        let mut offset = 0u64;
        let mut pages = 0u64;
        loop {
            pages += 1;
            match next_page(offset, 100, total, limit, pages) {
                Some(o) => offset = o,
                None => break,
            }
            prop_assert!(pages <= MAX_PAGES);
        }
    }
}
