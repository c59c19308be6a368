//! The executor's own rules: how failures are counted and what the write gate lets through.

use super::*;
use crate::agentsend::ApiError;
use crate::controller::inbox::plan::Step;
use crate::controller::inbox::plan::writes;
use crate::controller::ownership::proof::Origin;
use kube::runtime::finalizer::Error as FinalizerError;

#[test]
fn errors_are_counted_once_with_their_real_reason() {
    let m = Metrics::new();
    let unauthorized = ApiError::Unauthorized {
        status: 401,
        message: "bad key".into(),
    };
    let wrapped = FinalizerError::CleanupFailed(Stop::from(Error::Api(unauthorized.clone())));
    record(&m, &Err(Stop::from(wrapped)), Instant::now());
    let handled = Passed {
        action: Action::await_change(),
        failed: Some(unauthorized.reason()),
        skipped: false,
    };
    record(&m, &Ok(handled), Instant::now());
    let fine = Passed {
        action: Action::await_change(),
        failed: None,
        skipped: false,
    };
    record(&m, &Ok(fine), Instant::now());
    let stale = Passed {
        action: Action::requeue(written::RETRY),
        failed: None,
        skipped: true,
    };
    record(&m, &Ok(stale), Instant::now());
    let text = m.encode();
    assert!(
        text.contains(r#"inbox_operator_reconcile_errors_total{reason="unauthorized"} 2"#),
        "{text}"
    );
    assert!(!text.contains(r#"reason="finalizer""#), "{text}");
    assert!(
        text.contains(r#"inbox_operator_reconciles_total{result="error"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"inbox_operator_reconciles_total{result="success"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"inbox_operator_reconciles_total{result="skipped"} 1"#),
        "{text}"
    );
}

#[test]
fn a_pass_stopped_by_the_gate_is_counted_as_not_leading() {
    let m = Metrics::new();
    record(&m, &Err(Stop::NotLeading), Instant::now());
    let wrapped = FinalizerError::ApplyFailed(Stop::NotLeading);
    record(&m, &Err(Stop::from(wrapped)), Instant::now());
    let text = m.encode();
    assert!(
        text.contains(r#"inbox_operator_reconcile_errors_total{reason="not_leading"} 2"#),
        "{text}"
    );
}

#[test]
fn reads_and_in_memory_steps_pass_a_closed_gate_writes_do_not() {
    assert!(!writes(&Step::ReadCredentials));
    assert!(!writes(&Step::FindBindings {
        cluster_wide: true,
        ids: vec!["i".into()]
    }));
    assert!(!writes(&Step::ReadSecret { name: "s".into() }));
    let key = crate::agentsend::ApiKey::new("k").expect("key");
    assert!(writes(&Step::MarkPending {
        unbind: None,
        address: "a@agentsend.io".into(),
        origin: Origin::Random,
        resumes: false,
        key: key.clone(),
    }));
    assert!(writes(&Step::ClearPending));
    assert!(writes(&Step::RecordBinding {
        id: "i".into(),
        key
    }));
    assert!(writes(&Step::DeleteSecret {
        name: "s".into(),
        uid: None
    }));
}
