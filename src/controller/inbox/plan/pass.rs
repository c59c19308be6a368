//! The entry of every pass: [`plan`] hands it to the planner of its phase (apply, cleanup),
//! or reports why a held deletion waits.

use crate::api::inbox::{Inbox, Reason};
use crate::controller::inbox::status::Readiness;

use super::apply::{apply, with_finalizer};
use super::cleanup::cleanup;
use super::observed::{Observed, Phase, foreign_finalizers};
use super::outcome::done;
use super::report::report;
use super::step::{Step, Then};

/// Decide the next step.
pub fn plan(o: &Observed) -> Step {
    match o.phase {
        Phase::Apply => with_finalizer(o, apply(o)),
        Phase::Cleanup => cleanup(o),
        Phase::Held => done(report(o, None, None, held_deletion(&o.inbox)), Then::Settle),
    }
}

/// Why a deletion is held: the pause comes first; else the other finalizers, named. The
/// removal of either updates the Inbox, which starts the next pass.
pub(super) fn held_deletion(inbox: &Inbox) -> Readiness {
    if inbox.is_paused() {
        return Readiness::Idle {
            reason: Reason::Paused,
            message: "deletion is waiting: the Inbox is paused (agentsend.io/paused); remove the annotation to let the operator finish deleting".into(),
        };
    }
    Readiness::progressing(
        Reason::Deleting,
        format!(
            "deletion is waiting for the other finalizers to be removed first: {}; the AgentSend inbox and the Secret stay until then",
            foreign_finalizers(inbox).join(", ")
        ),
    )
}
