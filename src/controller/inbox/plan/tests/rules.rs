//! The rules behind the rows: which deletion policy status shows, a served refresh, how
//! AgentSend errors map to conditions, retry delays, and transition events.

use std::time::Duration;

use kube::ResourceExt;

use crate::agentsend::{ApiError, MAX_RETRY_AFTER};
use crate::api::inbox::{self, DeletionPolicy, DeletionPolicySource, InboxStatus, Reason};
use crate::controller::error::Error;
use crate::controller::inbox::events::EventKind;
use crate::controller::inbox::plan::create::proves_not_created;
use crate::controller::inbox::plan::observed::Observed;
use crate::controller::inbox::plan::outcome::stalled;
use crate::controller::inbox::plan::pass::plan;
use crate::controller::inbox::plan::report::transition_events;
use crate::controller::inbox::plan::retry::{error_retry, readiness_for_error, retry_delay};
use crate::controller::inbox::plan::step::{Done, Step};
use crate::controller::inbox::status::Readiness;
use crate::controller::remote::refresh::Refresh;

use super::{B, MAX, inb1, obs, rejected_409, rejected_status, transient};

#[test]
fn status_shows_which_deletion_policy_applies() {
    use DeletionPolicySource::{Default, Namespace, Spec};
    let shown = |b: B| match plan(&b.0) {
        Step::Done(Done {
            report: Some(r), ..
        }) => (r.status.deletion_policy, r.status.deletion_policy_source),
        other => panic!("{other}"),
    };
    let ns_orphan = |o: &mut Observed| o.namespace_default = Some(Some("Orphan".into()));
    let cases = [
        (obs().converged(inb1()), DeletionPolicy::Delete, Default),
        (
            obs().converged(inb1()).with(ns_orphan),
            DeletionPolicy::Orphan,
            Namespace,
        ),
        (
            obs()
                .converged(inb1())
                .with(ns_orphan)
                .spec(|s| s.deletion_policy = Some(DeletionPolicy::Delete)),
            DeletionPolicy::Delete,
            Spec,
        ),
    ];
    for (b, policy, source) in cases {
        assert_eq!(shown(b), (Some(policy), Some(source)));
    }
}

#[test]
fn a_served_refresh_is_recorded_in_status_once() {
    let refreshing = || obs().converged(inb1()).ann(inbox::ANNOTATION_REFRESH, "7");
    let observed = |b: B| match plan(&b.0) {
        Step::Done(Done {
            report: Some(r), ..
        }) => r.status.observed_refresh,
        other => panic!("{other}"),
    };
    assert_eq!(
        observed(refreshing().refreshed(Refresh::Served)).as_deref(),
        Some("7")
    );
    assert_eq!(observed(refreshing().refreshed(Refresh::Pending)), None);
    let mut i = refreshing().0.inbox;
    assert_eq!(i.refresh_wanted(), Some("7"));
    i.status = Some(InboxStatus {
        observed_refresh: Some("7".into()),
        ..Default::default()
    });
    assert_eq!(i.refresh_wanted(), None, "served");
    i.annotations_mut()
        .insert(inbox::ANNOTATION_REFRESH.into(), String::new());
    assert_eq!(i.refresh_wanted(), None, "empty asks for nothing");
}

#[test]
fn api_errors_map_to_conditions() {
    let cases = [
        (
            ApiError::Unauthorized {
                status: 403,
                message: "m".into(),
            },
            Reason::CredentialsInvalid,
            true,
            true,
        ),
        (rejected_409(), Reason::Rejected, true, true),
        (
            ApiError::NotFound {
                message: "m".into(),
            },
            Reason::ApiUnavailable,
            false,
            true,
        ),
        (
            ApiError::RateLimited {
                retry_after: None,
                message: "m".into(),
            },
            Reason::ApiUnavailable,
            false,
            true,
        ),
        (transient(), Reason::ApiUnavailable, false, false),
        (
            ApiError::InvalidResponse {
                message: "m".into(),
            },
            Reason::ApiUnavailable,
            false,
            false,
        ),
        (
            ApiError::Config {
                message: "m".into(),
            },
            Reason::ApiUnavailable,
            true,
            true,
        ),
    ];
    for (e, reason, stalls, nothing_created) in cases {
        let r = readiness_for_error(&e);
        assert_eq!(r.reason(), reason, "{e:?}");
        assert_eq!(matches!(r, Readiness::Stalled { .. }), stalls, "{e:?}");
        assert_eq!(proves_not_created(&e), nothing_created, "{e:?}");
    }
    assert!(
        readiness_for_error(&rejected_409())
            .message()
            .contains("address taken")
    );
}

#[test]
fn retry_rules() {
    assert_eq!(retry_delay(&rejected_409(), 0, 0.5, MAX), None);
    let limited = ApiError::RateLimited {
        retry_after: Some(Duration::from_secs(30)),
        message: String::new(),
    };
    for j in [0.0, 0.5, 0.99] {
        let d = retry_delay(&limited, 0, j, MAX).unwrap();
        assert!(
            d >= Duration::from_secs(30) && d <= Duration::from_secs(37),
            "{d:?}"
        );
    }
    let unauthorized = ApiError::Unauthorized {
        status: 401,
        message: String::new(),
    };
    assert!(retry_delay(&unauthorized, 0, 0.0, MAX).unwrap() >= Duration::from_secs(300));
    let d0 = retry_delay(&transient(), 0, 0.0, MAX).unwrap();
    let d3 = retry_delay(&transient(), 3, 0.0, MAX).unwrap();
    assert!(d3 > d0);
    assert!(retry_delay(&transient(), 30, 1.0, MAX).unwrap() <= Duration::from_secs(300));
    // --max-retry-delay caps the backoff, never the API's own Retry-After.
    let one = Duration::from_secs(1);
    assert!(retry_delay(&transient(), 30, 0.99, one).unwrap() <= one);
    assert!(retry_delay(&limited, 0, 0.0, one).unwrap() >= Duration::from_secs(30));
}

#[test]
fn absurd_retry_after_is_bounded() {
    let limited = ApiError::RateLimited {
        retry_after: Some(Duration::MAX),
        message: String::new(),
    };
    for j in [0.0, 0.99, f64::NAN, f64::INFINITY, -1.0] {
        let d = retry_delay(&limited, u32::MAX, j, MAX).unwrap();
        assert!(d <= MAX_RETRY_AFTER.mul_f64(1.2), "{d:?}");
    }
}

#[test]
fn failed_passes_are_retried_by_cause() {
    let missing = Error::CredentialsMissing("x".into());
    assert!(error_retry(&missing, 0, 0.0, MAX) >= Duration::from_secs(8));
    let rejected = Error::Api(rejected_409());
    assert_eq!(
        error_retry(&rejected, 0, 0.0, MAX),
        Duration::from_secs(300)
    );
    let internal = Error::Internal("x".into());
    assert_eq!(
        error_retry(&internal, 0, 0.0, MAX),
        Duration::from_millis(500)
    );
}

#[test]
fn warnings_fire_on_transitions_only() {
    let before = rejected_status(2);
    let r = stalled(Reason::Rejected, "again");
    assert!(transition_events(Some(&before), &before, &r).is_empty());
    let kinds: Vec<_> = transition_events(None, &before, &r)
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Rejected]);
    let creating = Readiness::progressing(Reason::Creating, "m");
    assert!(transition_events(None, &before, &creating).is_empty());
}
