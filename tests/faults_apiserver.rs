//! The API server stopped and restarted mid-run. Its own test binary, so that stopping the
//! control plane cannot disturb other tests.

use std::time::Duration;

use inbox_operator::api::inbox::Reason;
use inbox_sim::InboxState;
use inbox_testkit::ctl::{Env, Ready, status_id};
use inbox_testkit::support::control_plane;

/// Stop (or start) the API server without blocking the runtime: the operator under test keeps
/// running through the outage, as it would in a cluster (a blocking call here would freeze it
/// with the test, and the outage would not be an outage for it).
async fn outage(start: bool) {
    tokio::task::spawn_blocking(move || {
        if start {
            control_plane().start_apiserver()
        } else {
            control_plane().stop_apiserver()
        }
    })
    .await
    .expect("the API server start/stop task")
}

#[tokio::test]
async fn apiserver_restart_mid_run() {
    let env = Env::start().await;
    let names = env.create_many("outage", 6).await;
    // Stop while the creates are in progress.
    tokio::time::sleep(Duration::from_millis(300)).await;
    outage(false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage(true).await;
    env.assert_converged(&names).await;

    // Changes made in AgentSend during an outage are picked up afterwards.
    let first = env.inboxes().get(&names[0]).await.unwrap();
    let id = status_id(&first);
    outage(false).await;
    env.sim
        .update_inbox(&id, |r| r.status = InboxState::Suspended);
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage(true).await;
    env.wait_ready(&names[0], Ready::False(Reason::InboxSuspended))
        .await;
    env.sim.update_inbox(&id, |r| r.status = InboxState::Active);
    env.assert_converged(&names).await;
    env.delete_all_and_check(&names).await;
    assert!(
        env.sim.total_requests() < 200,
        "bounded: {}",
        env.sim.total_requests()
    );
    env.stop().await;
}
