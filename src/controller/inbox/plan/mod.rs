//! The reconcile planner: every decision the controller takes about one Inbox, as a pure
//! function from what the pass has observed so far ([`Observed`]) to the next thing to do
//! ([`Step`]).
//!
//! [`crate::controller::inbox::execute`] starts a pass with only the Inbox, asks [`plan`], runs the calls of the
//! step it gets, records what they found in the [`Observed`], and asks again, until the
//! planner answers [`Step::Done`]. Inputs are therefore gathered lazily, in the order the
//! lifecycle needs them: a paused Inbox costs no credentials read, a bound one no listing.
//!
//! The lifecycle, in the order [`plan`] checks it:
//! - **Paused** (`agentsend.io/paused`): report `Paused`, no AgentSend call, no Secret write;
//!   a paused Inbox being deleted keeps its finalizer until the annotation goes. So does one
//!   that carries other controllers' finalizers ([`Phase::Held`], `Deleting` names them).
//! - **Namespace default**: without `spec.deletionPolicy`, the namespace's
//!   `agentsend.io/default-deletion-policy` is read; status shows which policy applies.
//! - **Credentials** missing: `CredentialsMissing`, retried with backoff.
//! - **Bound** (annotation, else status): identity checks against the recorded and the observed
//!   inbox (`ImmutableFieldChanged`), then **converge** (Secret, status). A **vanished** inbox
//!   is re-created (created ones) or reported `InboxNotFound` (adopted ones).
//!   A new `agentsend.io/refresh` value queues a refresh (see [`crate::controller::remote::refresh`]).
//! - **Adopt** (`spec.inboxId`): fetch, check the spec's identity fields and the one-owner
//!   rule (`Rejected`), bind, converge.
//! - **Observe-only** (`managementPolicy: Observe`): adopt by `spec.inboxId`, or bind the exact
//!   `spec.address` from one list scan; never create or re-create (`InboxNotFound`), and
//!   deletion only releases.
//! - **Create**: persist `agentsend.io/create-pending` (only on a current view of the Inbox),
//!   report `Creating`, POST, bind. A failure that proves nothing was created clears the mark.
//! - **Recover**: a pending mark without an ID means an interrupted create: list the account
//!   and bind the one match, create when there is none, `CreationUncertain` when several.
//! - **Delete** (finalizer): with `deletionPolicy: Delete` delete the bound (or recovered)
//!   inbox, with `Orphan` leave it; delete the owned Secrets. No status write on the way
//!   unless the deletion waits (`Deleting` names other finalizers) or fails.
//!
//! ## Layout
//! One file per phase and concern. The phases use the shared files, which use the types;
//! nothing leads back up, and no file imports from this one, which only re-exports what the
//! rest of the controller uses.
//! - `pass`: [`plan`], the entry: the phase picks the planner, or a held deletion waits.
//! - `apply`: the apply phase up to the inbox (pause, namespace default, credentials,
//!   backoff, in-use finalizers, our finalizer before the first write); then
//!   - `identity`: a bound inbox checked (immutable fields, one owner, account) or vanished
//!     (re-created, or `InboxNotFound`); adoption by `spec.inboxId`, observation by
//!     `spec.address`;
//!   - `create`: the pending mark, the create, and the recovery of an interrupted one;
//!   - `converge`: the Secret, then the ConfigMap (`config_map`), then Ready.
//! - `cleanup`: the deletion phase: the inbox deleted or left, the outputs deleted or
//!   released.
//! - Shared by the phases: `claims` (the one-owner rule), `retry` (API failures, retry
//!   delays, failed deletions, holds), `outcome` (how a pass ends: done, rejected, conflict),
//!   `report` (the status and its transition events).
//! - The types: `observed`, the inputs ([`Observed`], [`Phase`], [`Lookup`], [`Hold`], …),
//!   and `step`, the outputs ([`Step`], [`Done`], [`Report`], [`Then`], …, and [`writes`]);
//!   `display` renders a step in one line; `backoff` holds the backoff curves every retry
//!   uses (and the default cap of `--max-retry-delay`).
//! - `tests/`: the rules as tables (`lifecycle`, `outputs`, `ownership`) and the rules
//!   behind them (`rules`), on the fixtures of `tests/mod.rs`.

mod apply;
pub(crate) mod backoff;
mod claims;
mod cleanup;
mod config_map;
mod converge;
mod create;
mod display;
mod identity;
pub(crate) mod observed;
mod outcome;
mod pass;
mod report;
mod retry;
mod step;

#[cfg(test)]
mod tests;

pub use observed::{Claim, Hold, Lookup, Marked, Observed, Phase};
pub use pass::plan;
pub use retry::error_retry;
pub use step::{Done, Failures, Report, Step, Then, writes};
