//! The API server stopped and restarted mid-run. Its own test binary, so that stopping the
//! control plane cannot disturb other tests.

mod ctl;
mod support;

use std::time::Duration;

use inbox_operator::agentsend::InboxState;
use support::control_plane;

use ctl::{Env, status_id};

#[tokio::test]
async fn apiserver_restart_mid_run() {
    let env = Env::start().await;
    let names = env.create_many("outage", 6).await;
    // Stop while the creates are in progress.
    tokio::time::sleep(Duration::from_millis(300)).await;
    control_plane().stop_apiserver();
    tokio::time::sleep(Duration::from_secs(3)).await;
    control_plane().start_apiserver();
    env.assert_converged(&names).await;

    // Changes made in AgentSend during an outage are picked up afterwards.
    let first = env.inboxes().get(&names[0]).await.unwrap();
    let id = status_id(&first);
    control_plane().stop_apiserver();
    env.sim
        .update_inbox(&id, |r| r.status = InboxState::Suspended);
    tokio::time::sleep(Duration::from_secs(3)).await;
    control_plane().start_apiserver();
    env.wait_ready(&names[0], "False", "InboxSuspended").await;
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
