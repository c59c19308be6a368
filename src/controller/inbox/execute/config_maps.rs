//! The executor's ConfigMap steps (`spec.configMap`), and the writes it shares with the
//! Secret: create or server-side apply an owned object, delete one under a UID precondition.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::pass::Pass;
use crate::api::inbox;
use crate::controller::error::{Error, Stop};
use crate::controller::inbox::outputs::config_map::OutputKind;
use crate::controller::inbox::plan::{Observed, Step};

impl Pass<'_> {
    /// The ConfigMap steps; any other step here is a bug.
    pub(super) async fn output_step(&self, o: &mut Observed, step: Step) -> Result<(), Stop> {
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match step {
            Step::ReadConfigMaps { names } => {
                let mut known = o.config_maps.take().unwrap_or_default();
                for name in names {
                    let found = self.get_config_map(&api, &name).await?;
                    known.insert(name, found);
                }
                o.config_maps = Some(known);
            }
            Step::WriteConfigMap {
                config_map,
                create,
                event,
            } => {
                let name = config_map.name_any();
                let uid = o
                    .config_maps
                    .as_ref()
                    .and_then(|known| known.get(&name)?.as_ref()?.uid.clone());
                let written = write_owned(&api, &*config_map, create, uid.as_deref()).await?;
                if let Some(event) = &event {
                    self.publish(event).await;
                }
                let known = o.config_maps.get_or_insert_default();
                known.insert(config_map.name_any(), Some(written));
            }
            Step::DeleteConfigMap { name, uid } => {
                delete_owned(&api, &name, uid).await?;
                o.config_maps.get_or_insert_default().insert(name, None);
            }
            Step::Release {
                kind: OutputKind::ConfigMap,
                name,
                patch,
            } => {
                let released = release(&api, &name, &patch).await?;
                o.config_maps.get_or_insert_default().insert(name, released);
            }
            Step::Release {
                kind: OutputKind::Secret,
                name,
                patch,
            } => {
                let released = release(&self.secrets, &name, &patch).await?;
                o.secrets.insert(name, released);
            }
            other => {
                return Err(Stop::from(Error::Internal(format!(
                    "step {other} reached output_step"
                ))));
            }
        }
        Ok(())
    }

    /// A ConfigMap's metadata (never its data) from the watch cache; one metadata GET when
    /// the cache does not have it (a foreign one is not in the label-filtered cache).
    async fn get_config_map(
        &self,
        api: &Api<ConfigMap>,
        name: &str,
    ) -> Result<Option<ObjectMeta>, Stop> {
        if let Some(store) = self.ctx.config_map_store(&self.ns)
            && let Some(meta) = store.get(&self.ns, name)
        {
            return Ok(Some(meta));
        }
        let found = api.get_metadata_opt(name).await?;
        Ok(found.map(|m| m.metadata))
    }
}

/// Create `obj` (a 409 means it appeared meanwhile: fail, re-read next pass) or server-side
/// apply our fields onto the object of UID `uid` — the one read as ours: the UID in the
/// applied object is a precondition, so an object replaced meanwhile under the same name
/// (someone else's now) is refused, never taken over. Returns its metadata as written.
pub(super) async fn write_owned<K>(
    api: &Api<K>,
    obj: &K,
    create: bool,
    uid: Option<&str>,
) -> Result<ObjectMeta, Stop>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    if create {
        let pp = PostParams {
            field_manager: Some(inbox::FIELD_MANAGER.into()),
            ..Default::default()
        };
        return Ok(api.create(&pp, obj).await?.meta().clone());
    }
    let mut body = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    if let Some(uid) = uid {
        body["metadata"]["uid"] = json!(uid);
    }
    let written = api
        .patch(
            &obj.name_any(),
            &PatchParams::apply(inbox::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(written.meta().clone())
}

/// Apply the release patch ([`crate::controller::inbox::outputs::config_map::release_patch`]) to `name`; its
/// metadata after, `None` when it is gone (or was replaced: the UID no longer matches).
async fn release<K>(
    api: &Api<K>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<Option<ObjectMeta>, Stop>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    let pp = PatchParams {
        field_manager: Some(inbox::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.patch(name, &pp, &Patch::Merge(patch)).await {
        Ok(released) => Ok(Some(released.meta().clone())),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Delete an owned object; gone already, or replaced meanwhile (UID precondition), is fine.
pub(super) async fn delete_owned<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<String>,
) -> Result<(), Stop>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
{
    let dp = DeleteParams {
        preconditions: uid.map(|u| Preconditions {
            uid: Some(u),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
