//! Writing a status: the one way the operator patches the `status` of its objects, with
//! server-side apply under one field manager, always whole, so that two writers (or two
//! replicas) never leave a mix of their fields. Each kind has one writer that calls this:
//! [`super::profile::reconcile`] for an ArchiveProfile, [`super::mailboxset::record`] for
//! a MailboxSet.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::Serialize;

use super::context::{Context, Error};

/// Field manager of every status the operator writes.
pub const FIELD_MANAGER: &str = "mailvault";

/// Replaces the status of `object` with `status`.
pub async fn apply<K>(ctx: &Context, object: &K, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let meta = object.meta();
    let namespace = meta
        .namespace
        .as_deref()
        .ok_or(Error::Incomplete("an object without namespace"))?;
    let name = meta
        .name
        .as_deref()
        .ok_or(Error::Incomplete("an object without name"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
