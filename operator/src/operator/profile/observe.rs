//! What a reconcile of an ArchiveProfile reads: the profile's Jobs, the pods of the runs
//! that are to be recorded (their termination messages are the shards' summaries), the
//! plan Secrets the profile owns, and its MailboxSet. Nothing here decides or writes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, ObjectMeta};
use kube::ResourceExt;

use super::decide::{may_be_stuck, recorded};
use super::PENDING_DEADLINE;
use crate::operator::context::{Context, Error};
use crate::operator::job;
use crate::resources::{ArchiveProfile, MailboxSet};

/// The world as one reconcile of a profile sees it: plain data for [`super::decide`].
pub struct World {
    pub profile: ArchiveProfile,
    pub now: DateTime<Utc>,
    /// The profile's Jobs (its runs), oldest first.
    pub jobs: Vec<Job>,
    /// The pods of each Job that is to be recorded: finished and not recorded yet, or
    /// possibly stuck.
    pub pods: BTreeMap<String, Vec<Pod>>,
    /// The plan Secrets the profile owns (metadata only).
    pub plan_secrets: Vec<ObjectMeta>,
    /// The MailboxSet `spec.mailboxSetRef` names, if it exists: read on every reconcile,
    /// so that a profile naming a set that is not there says so at once, not only when a
    /// run is due.
    pub mailbox_set: Option<MailboxSet>,
}

impl World {
    /// `spec.jobTemplate.pendingDeadlineSeconds`, or [`PENDING_DEADLINE`].
    pub fn pending_deadline(&self) -> Duration {
        self.profile
            .spec
            .job_template
            .as_ref()
            .and_then(|t| t.pending_deadline_seconds)
            .map_or(PENDING_DEADLINE, |s| Duration::from_secs(u64::from(s)))
    }
}

/// Reads what a reconcile of `profile` (in `namespace`) decides on.
pub async fn observe(
    ctx: &Context,
    profile: &ArchiveProfile,
    namespace: &str,
) -> Result<World, Error> {
    let name = profile.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut world = World {
        profile: profile.clone(),
        now: ctx.now(),
        jobs: Vec::new(),
        pods: BTreeMap::new(),
        plan_secrets: Vec::new(),
        mailbox_set: None,
    };
    let mut jobs = jobs_api
        .list(&ListParams::default().labels(&format!("{}={name}", job::LABEL_PROFILE)))
        .await?
        .items;
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let status = profile.status.clone().unwrap_or_default();
    for j in &jobs {
        let run = j.name_any();
        let finished = job::finished(j).is_some();
        let candidate = finished || may_be_stuck(j, world.now, world.pending_deadline());
        if recorded(&status, &run) || !candidate {
            continue;
        }
        let pods = pods_api
            .list(&ListParams::default().labels(&format!("{}={run}", job::LABEL_JOB_NAME)))
            .await?
            .items;
        world.pods.insert(run, pods);
    }
    world.jobs = jobs;
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    world.plan_secrets = secrets_api
        .list_metadata(&ListParams::default().labels(&format!(
            "{}={},{}={name}",
            job::LABEL_MANAGED_BY,
            job::MANAGED_BY,
            job::LABEL_PROFILE
        )))
        .await?
        .items
        .into_iter()
        .map(|s| s.metadata)
        .filter(|m| owned_by(m, profile))
        .collect();
    let sets: Api<MailboxSet> = Api::namespaced(ctx.client.clone(), namespace);
    world.mailbox_set = sets.get_opt(&profile.spec.mailbox_set_ref.name).await?;
    Ok(world)
}

/// Whether `meta` is owned by `profile` (the operator deletes only its own Secrets).
fn owned_by(meta: &ObjectMeta, profile: &ArchiveProfile) -> bool {
    let uid = profile.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "ArchiveProfile" && Some(o.uid.as_str()) == uid)
}
