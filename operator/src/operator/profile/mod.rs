//! The ArchiveProfile controller. Each reconcile reads the world ([`observe`]: the profile's
//! Jobs, their pods, its plan Secrets, its MailboxSet), decides ([`decide`], pure: records runs that
//! finished, tracks the active one, sees whether the schedule or a manual trigger starts a
//! run), acts ([`act`]: starts the run, stops a stuck one, deletes old Jobs and plan
//! Secrets) and writes the status, its one writer. The scheduling state (last slot, last
//! trigger, missed runs) lives in the status, so a restarted operator picks up where it
//! left off, and run names are deterministic, so a run is never started twice.

pub mod act;
pub mod decide;
pub mod observe;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::context::{Context, Error, RunEvent};
use super::status;
use crate::resources::ArchiveProfile;

/// Longest wait between reconciles of an idle profile, so that a lost watch event or a
/// clock jump delays a run by at most this.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// A run none of whose pods has run for this long is failed (`spec.jobTemplate.
/// pendingDeadlineSeconds` overrides it).
const PENDING_DEADLINE: Duration = Duration::from_secs(900);
/// Reasons a run could not start that a person must fix in the spec (or the objects it
/// names): the profile stays `Stalled` with them until the spec changes.
const START_FAILURES: [&str; 5] = [
    "InvalidMailboxSet",
    "InvalidProfile",
    "JobRejected",
    "PlanRejected",
    "PlanTooLarge",
];
/// How often a run waiting for a missing object looks again (the watches also wake it).
const WAITING_RECHECK: Duration = Duration::from_secs(30);
/// A plan Secret whose run has no Job after this long is left over from an attempt that
/// was given up (a trigger changed before a retry): it is deleted. Younger ones may be
/// about to get their Job (from another replica, or this one's retry).
const ORPHAN_PLAN_AGE: Duration = Duration::from_secs(600);

/// Reconciles one ArchiveProfile.
/// Its logs carry the object's namespace and name.
#[tracing::instrument(skip_all, fields(
    kind = "ArchiveProfile",
    namespace = profile.metadata.namespace.as_deref().unwrap_or(""),
    name = profile.metadata.name.as_deref().unwrap_or(""),
))]
pub async fn reconcile(profile: Arc<ArchiveProfile>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Deleting a profile deletes its Jobs (and so their pods) and plan Secrets through
    // owner references; the archive is never touched.
    if profile.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = profile
        .namespace()
        .ok_or(Error::Incomplete("an ArchiveProfile without namespace"))?;
    let name = profile.name_any();
    let world = observe::observe(&ctx, &profile, &namespace).await?;
    let mut decided = decide::decide(&world);
    for last in &decided.recorded {
        ctx.metrics.run_finished(&namespace, &name, last);
    }
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    for run in &decided.stop {
        act::delete_ignoring_absent(&jobs, run, &DeleteParams::background()).await?;
    }
    if decided.schedule.is_err() {
        // Nothing starts with a schedule that does not parse, and nothing is cleaned up:
        // the status says why.
        status::apply(&ctx, &*profile, &decided.status).await?;
        publish(&ctx, &profile, decided.events).await;
        return Ok(Action::await_change());
    }
    if let Some(run) = decided.start.clone() {
        let existing: Vec<&ObjectMeta> = world
            .plan_secrets
            .iter()
            .filter(|m| decide::run_of(m) == Some(run.as_str()))
            .collect();
        let now = crate::time::rfc3339(world.now);
        let set = world.mailbox_set.as_ref();
        let start = act::start_run(&ctx, &profile, set, &namespace, &run, &existing, &now).await?;
        decided.outcome = Some((run, start));
    }
    let concluded = decide::conclude(&world, decided);
    for last in &concluded.recorded {
        ctx.metrics.run_finished(&namespace, &name, last);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for secret in &concluded.delete_secrets {
        act::delete_ignoring_absent(&secrets, secret, &DeleteParams::default()).await?;
    }
    for run in &concluded.prune {
        act::delete_ignoring_absent(&jobs, run, &DeleteParams::background()).await?;
    }
    status::apply(&ctx, &*profile, &concluded.status).await?;
    publish(&ctx, &profile, concluded.events).await;
    Ok(Action::requeue(concluded.requeue))
}

async fn publish(ctx: &Context, profile: &ArchiveProfile, events: Vec<RunEvent>) {
    for event in events {
        ctx.event(profile, event).await;
    }
}
