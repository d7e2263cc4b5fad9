//! What a profile's reconcile does besides writing the status: start a run (resolve the
//! MailboxSet, make the plan Secrets, create the Job) and delete what is to go. Every
//! request here is in [`crate::operator::api::API_CALLS`].

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::ResourceExt;

use super::decide::{missing_set, Start};
use crate::operator::context::{Context, Error};
use crate::operator::mailboxset::{self, Outcome};
use crate::operator::{history, job};
use crate::resources::{self, Bundle};
use crate::resources::{ArchiveProfile, MailboxSet};
use crate::sources::Mailbox;

pub async fn delete_ignoring_absent<K>(
    api: &Api<K>,
    name: &str,
    params: &DeleteParams,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The message of an API error for a person: the server's own words, which name the field.
fn api_message(e: &kube::core::Status) -> String {
    format!("{} ({})", e.message, e.reason)
}

/// Whether the API server refused a request for good: the request is invalid or not
/// allowed (a quota, a policy), and sending it again unchanged cannot help.
fn refused(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(e) if matches!(e.code, 400 | 403 | 422) => Some(e),
        _ => None,
    }
}

/// Starts run `run`: makes its plan (resolving the profile's MailboxSet, which records the
/// sync on it) and plan Secrets, then its Job. A complete plan an earlier attempt left
/// (`existing`, the run's plan Secrets) is used as it is: a retry neither reads the
/// directory again nor makes a second plan.
pub async fn start_run(
    ctx: &Context,
    profile: &ArchiveProfile,
    set: Option<&MailboxSet>,
    namespace: &str,
    run: &str,
    existing: &[&ObjectMeta],
    now: &str,
) -> Result<Start, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let shape = match job::complete_plan(run, profile.metadata.generation, existing) {
        Some(plan) => {
            tracing::info!(profile = %profile.name_any(), run, "using the plan of an earlier attempt");
            plan
        }
        None => {
            // Parts of an attempt that did not finish its plan: made again, whole.
            for m in existing {
                let name = m.name.clone().unwrap_or_default();
                delete_ignoring_absent(&secrets, &name, &DeleteParams::default()).await?;
            }
            match make_plan(ctx, profile, set, namespace, run).await? {
                Ok(plan) => plan,
                Err(start) => return Ok(start),
            }
        }
    };
    let count = shape.sizes.iter().sum::<u64>();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let new = job::build(profile, run, &shape, &ctx.worker_image);
    match jobs.create(&PostParams::default(), &new).await {
        Ok(_) => {}
        // Another replica (or this one, before a restart) created it: adopt it.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            let Some(e) = refused(&e) else {
                return Err(e.into());
            };
            let message = format!("the API server refused the run's Job: {}", api_message(e));
            tracing::warn!(profile = %profile.name_any(), run, %message);
            // The run is over before it began: its plan (and passwords) go now.
            for part in 0..shape.parts {
                let name = job::plan_secret_name(run, part);
                delete_ignoring_absent(&secrets, &name, &DeleteParams::default()).await?;
            }
            // Invalid (a bad jobTemplate) needs a person; forbidden (a quota) may pass later.
            let stalled = (e.code != 403).then_some("JobRejected");
            return Ok(Start::failed(message, stalled));
        }
    }
    tracing::info!(profile = %profile.name_any(), run, mailboxes = count, shards = shape.sizes.len(), started = now, "run started");
    Ok(Start::Started(history::active_run(
        run,
        Some(now.to_string()),
        &shape.sizes,
        "",
        "",
    )))
}

/// Resolves the profile's MailboxSet (recording the sync on it) and creates the run's plan
/// Secrets; returns the plan's shape (shard sizes, plan Secrets), or why the run cannot
/// start.
async fn make_plan(
    ctx: &Context,
    profile: &ArchiveProfile,
    set: Option<&MailboxSet>,
    namespace: &str,
    run: &str,
) -> Result<Result<job::PlanShape, Start>, Error> {
    let (bundle, set, mailboxes) = match resolve_set(ctx, profile, set, namespace).await? {
        Ok(resolved) => resolved,
        Err(start) => return Ok(Err(start)),
    };
    let started = std::time::Instant::now();
    let count = mailboxes.len();
    let (plan, shards) = job::run_plan(profile, run, &bundle, &set, mailboxes);
    let mut shape = job::PlanShape {
        sizes: shards.iter().map(|s| s.len() as u64).collect(),
        parts: 0,
        oauth2_secret: plan
            .oauth2
            .as_ref()
            .map(|o| o.credentials_secret_ref.name.clone()),
    };
    let files = crate::runplan::plan_files(&plan, shards);
    let plan_secrets = match job::plan_secrets(profile, run, &shape, files) {
        Ok(secrets) => secrets,
        Err(message) => {
            return Ok(Err(Start::failed(
                format!("the run plan for {count} mailboxes does not fit: {message}"),
                Some("PlanTooLarge"),
            )))
        }
    };
    shape.parts = plan_secrets.len();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for secret in &plan_secrets {
        match secrets.create(&PostParams::default(), secret).await {
            Ok(_) => {}
            // Made by another replica at the same moment: the same plan.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                let Some(e) = refused(&e) else {
                    return Err(e.into());
                };
                return Ok(Err(Start::failed(
                    format!(
                        "the API server refused the run's plan Secret: {}",
                        api_message(e)
                    ),
                    (e.code != 403).then_some("PlanRejected"),
                )));
            }
        }
    }
    tracing::info!(
        profile = %profile.name_any(),
        run,
        mailboxes = count,
        secrets = shape.parts,
        millis = started.elapsed().as_millis() as u64,
        "made the run plan"
    );
    Ok(Ok(shape))
}

/// Reads the Secrets the profile's MailboxSet (`set`, as observed) needs, and resolves it,
/// recording the outcome on the set; returns them and the mailboxes, or why the run cannot
/// start (yet).
async fn resolve_set(
    ctx: &Context,
    profile: &ArchiveProfile,
    set: Option<&MailboxSet>,
    namespace: &str,
) -> Result<Result<(Bundle, MailboxSet, Vec<Mailbox>), Start>, Error> {
    let set_name = &profile.spec.mailbox_set_ref.name;
    let Some(set) = set.cloned() else {
        return Ok(Err(Start::Waiting(missing_set(namespace, set_name))));
    };
    let started = std::time::Instant::now();
    let bundle = mailboxset::load_bundle(ctx, namespace, &set, Some(profile)).await?;
    let missing = mailboxset::missing_secrets(&bundle, &set, Some(profile));
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|name| format!("Secret {namespace}/{name}"))
            .collect();
        let verb = if names.len() == 1 { "does" } else { "do" };
        return Ok(Err(Start::Waiting(format!(
            "{} {verb} not exist",
            names.join(", ")
        ))));
    }
    // What is wrong with the profile alone (say a key its store names is not in its
    // Secret) fails the run on the profile; its MailboxSet is not invalid for that.
    let own = resources::validate_profile_alone(&bundle, &bundle.profiles[0]);
    if !own.is_empty() {
        let message = mailboxset::field_messages(&own);
        return Ok(Err(Start::failed(message, Some("InvalidProfile"))));
    }
    let (outcome, resolved) =
        mailboxset::resolve_and_record(ctx, &bundle, &set, Some(profile)).await?;
    tracing::info!(
        profile = %profile.name_any(),
        set = %set_name,
        millis = started.elapsed().as_millis() as u64,
        "resolved the MailboxSet"
    );
    let resolved = match (outcome, resolved) {
        (_, Some(resolved)) => resolved,
        (Outcome::Invalid(message), _) => {
            return Ok(Err(Start::failed(message, Some("InvalidMailboxSet"))))
        }
        (Outcome::SyncFailed { message, .. }, _) => return Ok(Err(Start::failed(message, None))),
        (Outcome::Resolved { .. }, None) => {
            unreachable!("resolve returns the mailboxes it counted")
        }
    };
    if resolved.mailboxes.is_empty() {
        return Ok(Err(Start::Empty));
    }
    Ok(Ok((bundle, set, resolved.mailboxes)))
}
