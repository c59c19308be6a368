//! Fault injection on the real apiserver: every scenario is bounded in time and requests and
//! ends in the same invariants (see `ctl::Env::assert_converged` / `delete_all_and_check`).

use std::time::Duration;

use inbox_operator::api::inbox::{InboxSpec, Reason};
use inbox_sim::{Malformed, Route};

use crate::ctl::{ACCOUNT, Env, Fault, KEY, Ready, T};
use crate::support::wait_for;

const N: usize = 8;

#[tokio::test]
async fn thirty_percent_5xx_with_latency() {
    // Each Inbox's create fails with p = 0.3 per attempt: with the default 5-minute cap, a
    // run of six failures (p ≈ 0.6 % over 8 Inboxes) backs off past any test timeout. Capped
    // at 2 s (--max-retry-delay), the wait holds ≈ 15 attempts: 8 × 0.3^15 ≈ 1e-7.
    let env = Env::start_with(|s| s.max_retry_delay = Duration::from_secs(2)).await;
    let _slow = env.inject(Fault::Latency(Duration::from_millis(30)));
    let _flaky = env.inject(Fault::ErrorRate(0.3, 503));
    let names = env.create_many("flaky", N).await;
    env.assert_converged(&names).await;
    env.delete_all_and_check(&names).await;
    // Bounded: no hot loop even at 30 % failures.
    let total = env.sim.total_requests();
    assert!(total < (N as u64) * 25, "{total} requests for {N} inboxes");
    env.stop().await;
}

/// A 429 closes the account until its `Retry-After` (here an HTTP date): the only requests that
/// may still meet the closed window are those already in flight when the first 429 was answered
/// (one per reconcile worker, plus the counter sync), never a retry loop. The window starts at
/// the operator's first request, so the test does not depend on how fast the operator starts.
#[tokio::test]
async fn rate_limit_bursts_are_respected() {
    const WINDOW: Duration = Duration::from_secs(2);
    let env = Env::start().await;
    env.sim.rate_limit_from_next_request(ACCOUNT, WINDOW, true);
    let names = env.create_many("burst", N).await;
    env.assert_converged(&names).await;
    let reqs = env.sim.requests();
    let limited = reqs.iter().filter(|r| r.status == 429).count();
    assert!(limited > 0, "the window was met");
    // Workers (Env's concurrency) + the counter sync. Doubled: a Retry-After date has whole
    // seconds, so a request may arrive a millisecond early and meet one more (short) window.
    let in_flight = 4 + 1;
    assert!(
        limited <= 2 * in_flight,
        "{limited} requests answered 429: the client kept calling a rate-limited account"
    );
    env.delete_all_and_check(&names).await;
    env.stop().await;
}

/// A server that limits the account (a token bucket, 429 with `Retry-After` beyond it, as the
/// simulator's `--rate-limit` does): the adaptive budget backs off instead of storming, every
/// Inbox becomes Ready with exactly one AgentSend inbox, and most requests get through.
#[tokio::test]
async fn adaptive_budget_under_a_server_rate_limit() {
    const INBOXES: usize = 24;
    let env = Env::start().await;
    env.sim
        .set_account_rate_limit(inbox_sim::RateLimit::new(8.0, 8.0));
    let names = env.create_many("limited", INBOXES).await;
    env.assert_converged(&names).await;
    assert_eq!(
        env.sim.inboxes(ACCOUNT).len(),
        INBOXES,
        "one inbox per Inbox"
    );
    let reqs = env.sim.requests();
    let limited = reqs.iter().filter(|r| r.status == 429).count();
    // Without backing off, every worker would meet 429s at every pass; here at most the
    // requests in flight when a pause starts do (bounded by the bucket, not by time).
    assert!(
        limited * 2 < reqs.len(),
        "{limited} of {} requests answered 429",
        reqs.len()
    );
    env.sim.set_account_rate_limit(None);
    env.delete_all_and_check(&names).await;
    env.stop().await;
}

/// Hostile `Retry-After` values (beyond u64, beyond f64, negative, garbage, dates in year 9999
/// and in 1970) never crash the operator: each is clamped (here to the test client's 1 s cap;
/// in production to `MAX_RETRY_AFTER`) or ignored, and the Inboxes become Ready afterwards.
#[tokio::test]
async fn hostile_retry_after_never_crashes() {
    let env = Env::start_tuned(|o| o.max_retry_after = Duration::from_secs(1), |_| {}).await;
    let hostile = [
        "99999999999999999999",
        "18446744073709551616",
        "1e400",
        "-1e400",
        "-5",
        "NaN",
        "0.5e-9999",
        "soon",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "",
    ];
    env.sim.rate_limit_with_retry_after(ACCOUNT, hostile);
    let names = env.create_many("hostile", 3).await;
    env.assert_converged(&names).await;
    let limited = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    assert_eq!(limited, hostile.len(), "every hostile answer was met");
    assert!(env.controller_running(), "the controller task ended");
    env.delete_all_and_check(&names).await;
    assert!(env.controller_running(), "the controller task ended");
    env.stop().await;
}

/// An invalid `Retry-After` (`1e300`: not digits, not an HTTP-date) on a 429 does not pause
/// the account for the 10-minute cap (the production default kept here): the Inbox behind it
/// becomes Ready within the normal backoff.
#[tokio::test]
async fn an_invalid_retry_after_does_not_pause_the_account() {
    let env = Env::start().await;
    env.sim.rate_limit_with_retry_after(ACCOUNT, ["1e300"]);
    let names = env.create_many("invalid-retry", 1).await;
    env.assert_converged(&names).await;
    let limited = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    assert_eq!(limited, 1, "the 429 was met");
    env.delete_all_and_check(&names).await;
    env.stop().await;
}

#[tokio::test]
async fn dropped_create_responses_never_duplicate() {
    let env = Env::start().await;
    env.sim.drop_next_create_responses(3);
    let names = env.create_many("dropped", N).await;
    env.assert_converged(&names).await;
    env.delete_all_and_check(&names).await;
    env.stop().await;
}

#[tokio::test]
async fn default_key_revoked_then_restored() {
    let env = Env::start().await;
    let names = env.create_many("revoked", 3).await;
    env.assert_converged(&names).await;
    env.sim.revoke_key(KEY);
    for n in &names {
        env.wait_ready(n, Ready::False(Reason::CredentialsInvalid))
            .await;
    }
    let during = env.sim.total_requests();
    env.sim.restore_key(KEY);
    env.assert_converged(&names).await;
    // One revoked account costs a scan per interval, not a request per Inbox per pass.
    assert!(env.sim.total_requests() - during < 40);
    env.delete_all_and_check(&names).await;
    env.stop().await;
}

#[tokio::test]
async fn malformed_responses_become_conditions() {
    let env = Env::start().await;
    let names = env.create_many("odd", 2).await;
    env.assert_converged(&names).await;
    for kind in [Malformed::NotJson, Malformed::Truncated, Malformed::Huge] {
        let odd = env.inject(Fault::Malformed(Route::List, kind));
        for n in &names {
            env.wait_ready(n, Ready::False(Reason::ApiUnavailable))
                .await;
        }
        drop(odd);
        env.assert_converged(&names).await;
    }
    // Unexpected extra fields are fine.
    {
        let _extra = env.inject(Fault::Malformed(Route::Create, Malformed::UnexpectedFields));
        env.create_ready("extra", InboxSpec::default()).await;
    }
    // A create whose answer cannot be read is an uncertain create: recovered, never doubled.
    {
        let _unreadable = env.inject(Fault::Malformed(Route::Create, Malformed::NotJson));
        let before = env.sim.request_count(Route::Create);
        env.create("unreadable", InboxSpec::default()).await;
        // The fault stays until the create met it (however slow the machine).
        wait_for("the create met the unreadable answer", T, || async {
            (env.sim.request_count(Route::Create) > before).then_some(())
        })
        .await;
    }
    let mut all = names.clone();
    all.push("extra".into());
    all.push("unreadable".into());
    env.assert_converged(&all).await;
    env.delete_all_and_check(&all).await;
    env.stop().await;
}
