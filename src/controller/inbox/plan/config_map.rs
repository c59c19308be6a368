//! The ConfigMap output (`spec.configMap`) on apply, after the Secret: which ConfigMaps a
//! pass reads, writing or restoring the wanted one, deleting the one this Inbox owned under a
//! former name. What it holds is decided in [`crate::controller::inbox::outputs::config_map`].

use std::collections::BTreeMap;

use crate::agentsend::RemoteInbox;
use crate::controller::inbox::events::{EventKind, InboxEvent};
use crate::controller::inbox::outputs::config_map;
use crate::controller::inbox::outputs::secret::SecretPlan;

use super::observed::Observed;
use super::outcome::{conflict, done_quietly};
use super::step::{Failure, Step, Then};

/// The ConfigMaps a pass must know about: the one `spec.configMap` wants and the one status
/// records (if it differs); empty when neither names one.
pub(super) fn config_map_names(o: &Observed) -> Vec<String> {
    let recorded = o
        .status_at_start
        .as_ref()
        .and_then(|s| s.config_map_name.clone());
    let mut names: Vec<String> = o
        .inbox
        .config_map_name()
        .into_iter()
        .chain(recorded)
        .collect();
    names.dedup();
    names
}

/// After the Secret is in place: write or restore the ConfigMap `data` belongs in (a foreign
/// one is a `SecretConflict`), and delete the one this Inbox owned under a former name or
/// before `spec.configMap` was removed. `None` once nothing is left to do.
pub(super) fn converge_config_map(
    o: &Observed,
    remote: &RemoteInbox,
    data: Option<BTreeMap<String, String>>,
) -> Option<Step> {
    let names = config_map_names(o);
    if names.is_empty() {
        return None;
    }
    let Some(known) = &o.config_maps else {
        return Some(Step::ReadConfigMaps { names });
    };
    let uid = o.inbox.metadata.uid.as_deref().unwrap_or_default();
    let wanted = o.inbox.config_map_name();
    if let (Some(name), Some(data)) = (&wanted, data) {
        let Some(desired) = config_map::desired_config_map(&o.inbox, data) else {
            return Some(done_quietly(Then::Fail(Failure::InvalidObject)));
        };
        let existing = known.get(name).and_then(Option::as_ref);
        let note = match config_map::plan_config_map(existing, &desired, uid) {
            SecretPlan::UpToDate => None,
            SecretPlan::Create => Some(format!("wrote the address to ConfigMap {name}")),
            SecretPlan::Update => Some(format!("restored the address in ConfigMap {name}")),
            SecretPlan::Conflict => {
                let msg = format!(
                    "ConfigMap {name:?} exists and is not owned by this Inbox; it is left untouched: delete it or set spec.configMap.name"
                );
                return Some(conflict(o, remote, msg));
            }
        };
        if let Some(note) = note {
            return Some(Step::WriteConfigMap {
                create: existing.is_none(),
                config_map: Box::new(desired),
                event: Some(InboxEvent::new(EventKind::ConfigMapWritten, note)),
            });
        }
    }
    let (name, uid) = config_map::unwanted(known, wanted.as_deref(), uid).next()?;
    Some(Step::DeleteConfigMap {
        name: name.to_string(),
        uid: uid.cloned(),
    })
}
