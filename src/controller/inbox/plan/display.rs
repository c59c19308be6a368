//! How a step reads in one line (`bind inb_1 (Created)`, `done Ready; settle`): what the
//! executor logs for each step, and what the table tests compare.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::controller::ownership::proof::Origin;

use super::step::{Done, Failure, Failures, Step, Then};

/// How a step that writes an output object (Secret or ConfigMap) reads in a plan.
fn describe_write(
    f: &mut fmt::Formatter<'_>,
    kind: &str,
    meta: &ObjectMeta,
    create: bool,
    quiet: bool,
) -> fmt::Result {
    let verb = if create { "create" } else { "update" };
    let name = meta.name.as_deref().unwrap_or_default();
    write!(f, "{verb} {kind} {name}")?;
    if quiet {
        write!(f, " quietly")?;
    }
    Ok(())
}

/// How the create-pending mark reads in a plan (with the binding it clears, if any).
fn describe_mark(
    f: &mut fmt::Formatter<'_>,
    unbind: Option<&str>,
    address: &str,
    origin: &Origin,
    resumes: bool,
) -> fmt::Result {
    if let Some(id) = unbind {
        write!(f, "unbind {id} and ")?;
    }
    write!(f, "mark pending {address}")?;
    if let Origin::SeenAbsent(at) = origin {
        write!(f, " (seen absent at {at:?})")?;
    }
    if resumes {
        f.write_str(" again")?;
    }
    Ok(())
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::ReadCredentials => write!(f, "read credentials"),
            Step::ReadNamespace => write!(f, "read namespace"),
            Step::MarkInUse(target) => write!(f, "mark {target} in use"),
            Step::Observe { id, .. } => write!(f, "observe {id}"),
            Step::Fetch { id, .. } => write!(f, "fetch {id}"),
            Step::ListCandidates { .. } => write!(f, "list candidates"),
            Step::FindBindings { .. } => write!(f, "find bindings"),
            Step::MarkPending {
                unbind,
                address,
                origin,
                resumes,
                ..
            } => describe_mark(f, unbind.as_deref(), address, origin, *resumes),
            Step::Progress(r) => write!(f, "progress {}", r.readiness.reason()),
            Step::Create { request, .. } => write!(
                f,
                "create {}",
                request.address.as_deref().unwrap_or_default()
            ),
            Step::Bind { remote, event, .. } => {
                write!(f, "bind {} ({})", remote.id, event.kind.reason())
            }
            Step::BindWithSecret {
                remote,
                event,
                secret,
                ..
            } => write!(
                f,
                "bind {} ({}) and create secret {}",
                remote.id,
                event.kind.reason(),
                secret.metadata.name.as_deref().unwrap_or_default()
            ),
            Step::RecordBinding { id, .. } => write!(f, "record binding {id}"),
            Step::ClearPending => write!(f, "clear pending"),
            Step::Forget { id, .. } => write!(f, "forget {id}"),
            Step::Register { id, .. } => write!(f, "register {id}"),
            Step::RequestRefresh { value, .. } => write!(f, "request refresh {value:?}"),
            Step::ReadSecret { name } => write!(f, "read secret {name}"),
            Step::WriteSecret {
                secret,
                create,
                event,
            } => describe_write(f, "secret", &secret.metadata, *create, event.is_none()),
            Step::DeleteSecret { name, .. } => write!(f, "delete secret {name}"),
            Step::ReadConfigMaps { names } => write!(f, "read configmaps {}", names.join(",")),
            Step::WriteConfigMap {
                config_map,
                create,
                event,
            } => describe_write(
                f,
                "configmap",
                &config_map.metadata,
                *create,
                event.is_none(),
            ),
            Step::DeleteConfigMap { name, .. } => write!(f, "delete configmap {name}"),
            Step::Release { kind, name, .. } => write!(f, "release {kind} {name}"),
            Step::AddFinalizer => write!(f, "add finalizer"),
            Step::DeleteInbox { id, .. } => write!(f, "delete inbox {id}"),
            Step::Announce(e) => {
                let warning = e.kind.event_type() == kube::runtime::events::EventType::Warning;
                let kind = if warning { "warning " } else { "" };
                write!(f, "announce {kind}{}", e.kind.reason())
            }
            Step::Done(d) => write!(f, "{d}"),
        }
    }
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("done")?;
        if let Some(r) = &self.report {
            write!(f, " {}", r.readiness.reason())?;
            for e in &r.events {
                write!(f, " +{}", e.kind.reason())?;
            }
        }
        match &self.then {
            Then::Settle => f.write_str("; settle")?,
            Then::Requeue(d) => write!(f, "; requeue {d:?}")?,
            Then::Fail(Failure::Api(e)) => write!(f, "; fail {}", e.reason())?,
            Then::Fail(Failure::CredentialsMissing(_)) => f.write_str("; fail credentials")?,
            Then::Fail(Failure::InvalidObject) => f.write_str("; fail invalid")?,
            Then::Fail(Failure::Held(d)) => write!(f, "; held {d:?}")?,
            Then::Fail(Failure::AccountChanged(_)) => f.write_str("; fail account changed")?,
            Then::Fail(Failure::OwnershipUnverified(_)) => {
                f.write_str("; fail ownership unverified")?
            }
        }
        match self.failures {
            Failures::Keep => {}
            Failures::Reset => f.write_str("; reset failures")?,
            Failures::Bump => f.write_str("; count failure")?,
        }
        if self.release {
            f.write_str("; release")?;
        }
        if let Some(h) = &self.hold {
            write!(f, "; hold {:?}", h.remaining)?;
        }
        if let Some(id) = &self.blocked_on {
            write!(f, "; wait for the owner of {id}")?;
        }
        Ok(())
    }
}
