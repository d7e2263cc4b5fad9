//! The ArchiveProfile controller. Each reconcile reads the profile's Jobs, records runs that
//! finished, tracks the active one, starts a run when the schedule or a manual trigger says
//! so, prunes old runs and writes the status. The scheduling state (last slot, last trigger,
//! missed runs) lives in the status, so a restarted operator picks up where it left off,
//! and run names are deterministic, so a run is never started twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::conditions::{self, bounded, LAST_RUN_SUCCEEDED, MAX_STATUS_MESSAGE, READY, STALLED};
use super::context::{Context, Error, RunEvent};
use super::mailboxset::{self, Outcome, FIELD_MANAGER};
use super::schedule::{self, Schedule};
use super::{history, job, names};
use crate::protocol::{RunResult, Totals};
use crate::resources::{
    namespace_of, ActiveRun, ArchiveProfile, ArchiveProfileStatus, LastRun, MailboxSet, RunSummary,
    API_VERSION,
};
use crate::runplan::{self, RunFacts, RunPlan, ShardSummary};
use crate::time::{from_k8s, parse as parse_time, rfc3339};

/// Longest wait between reconciles of an idle profile, so that a lost watch event or a
/// clock jump delays a run by at most this.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What to do about starting a run, decided from the spec, the status and the clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due.
    Wait,
    /// `spec.trigger.manual` has a value not yet acted on.
    Manual { value: String, run: String },
    /// A schedule slot is due.
    Scheduled {
        slot: DateTime<Utc>,
        run: String,
        passed_over: u64,
    },
    /// A slot is due but past the starting deadline.
    Skip {
        slot: DateTime<Utc>,
        passed_over: u64,
    },
    /// Suspended: the latest slot is taken as acted on, so that resuming does not catch up.
    Suspended { slot: DateTime<Utc> },
}

/// Decides whether a run starts now (when no run is active). A manual trigger wins over
/// the schedule; the schedule's slot then waits for the next reconcile.
pub fn decide(
    profile: &ArchiveProfile,
    schedule: Option<&Schedule>,
    now: DateTime<Utc>,
) -> Decision {
    let name = profile.metadata.name.as_deref().unwrap_or("");
    let status = profile.status.clone().unwrap_or_default();
    if let Some(value) = profile
        .spec
        .trigger
        .as_ref()
        .and_then(|t| t.manual.as_ref())
    {
        if !value.is_empty() && status.last_manual_trigger.as_ref() != Some(value) {
            return Decision::Manual {
                value: value.clone(),
                run: names::manual(name, value),
            };
        }
    }
    let (Some(schedule), Some(spec)) = (schedule, profile.spec.schedule.as_ref()) else {
        return Decision::Wait;
    };
    let since = status
        .last_schedule_time
        .as_deref()
        .and_then(parse_time)
        .or_else(|| {
            profile
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| parse_time(&t.0.to_string()))
        })
        .unwrap_or(now);
    // A slot acted on in the future means the clock jumped forward and back: waiting for
    // that time would stop the schedule until then. The latest slot is due again instead
    // (its run exists if it ran, and is adopted), which puts lastScheduleTime right.
    let since = match since > now {
        true => schedule
            .latest_at_or_before(now)
            .map_or(now, |slot| slot - chrono::Duration::seconds(1)),
        false => since,
    };
    let Some(due) = schedule::due(schedule, since, now, spec.starting_deadline_seconds) else {
        return Decision::Wait;
    };
    if spec.suspend {
        Decision::Suspended { slot: due.slot }
    } else if due.too_late {
        Decision::Skip {
            slot: due.slot,
            passed_over: due.passed_over,
        }
    } else {
        Decision::Scheduled {
            slot: due.slot,
            run: names::scheduled(name, due.slot),
            passed_over: due.passed_over,
        }
    }
}

/// Records a finished run: `lastRun`, `runs` and the `LastRunSucceeded` condition; returns
/// the event to publish.
pub fn record_run(
    status: &mut ArchiveProfileStatus,
    profile: &ArchiveProfile,
    run: LastRun,
    now: &str,
) -> RunEvent {
    let generation = profile.metadata.generation;
    let (reason, ok) = match run.result {
        RunResult::Succeeded => ("Succeeded", true),
        RunResult::PartiallyFailed => ("PartiallyFailed", false),
        RunResult::Failed => ("Failed", false),
    };
    let t = &run.totals;
    let mut message = format!(
        "{} of {} mailboxes archived, {} messages",
        t.mailboxes - t.mailboxes_failed,
        t.mailboxes,
        t.archived
    );
    if let Some(m) = &run.message {
        message = format!("{message}; {m}");
    }
    if let Some(first) = run.failed_mailboxes.first() {
        message = format!("{message}; {}: {}", first.mailbox, first.reason);
    }
    conditions::set(
        &mut status.conditions,
        LAST_RUN_SUCCEEDED,
        ok,
        reason,
        message.clone(),
        now,
        generation,
    );
    status.runs = history::add_run(
        &status.runs,
        RunSummary {
            name: run.name.clone(),
            result: run.result,
            start_time: run.start_time.clone(),
            completion_time: run.completion_time.clone(),
            totals: run.totals.clone(),
        },
        profile.spec.successful_runs_history_limit,
        profile.spec.failed_runs_history_limit,
    );
    let event = RunEvent {
        warning: !ok,
        reason: if ok { "RunSucceeded" } else { "RunFailed" },
        action: "Archive",
        note: format!("run {}: {reason}: {message}", run.name),
    };
    if ok {
        let completed = run
            .completion_time
            .clone()
            .or_else(|| Some(now.to_string()));
        status.last_success_time = completed;
    }
    status.last_run = Some(run);
    event
}

/// A run that failed before any Job (its MailboxSet could not be resolved).
fn failed_before_start(name: &str, message: String, now: &str) -> LastRun {
    LastRun {
        name: name.to_string(),
        start_time: Some(now.to_string()),
        completion_time: Some(now.to_string()),
        result: RunResult::Failed,
        message: Some(bounded(message, MAX_STATUS_MESSAGE)),
        totals: Totals::default(),
        failed_mailboxes: Vec::new(),
        protocol_ref: None,
    }
}

fn time_of(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<String> {
    t.and_then(|t| parse_time(&t.0.to_string())).map(rfc3339)
}

/// The summaries the finished Job's pods left, one per index: of several pods of an index
/// (retries), the one that succeeded, else the newest that left a summary.
fn summaries(pods: &[Pod]) -> BTreeMap<u32, ShardSummary> {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut out: BTreeMap<u32, (bool, ShardSummary)> = BTreeMap::new();
    for pod in pods {
        let Some(index) = pod
            .annotations()
            .get(job::ANNOTATION_COMPLETION_INDEX)
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let succeeded = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
        let message = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == job::CONTAINER))
            .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone());
        let Some(summary) = message.and_then(|m| serde_json::from_str::<ShardSummary>(&m).ok())
        else {
            continue;
        };
        if out.get(&index).is_some_and(|(ok, _)| *ok && !succeeded) {
            continue;
        }
        out.insert(index, (succeeded, summary));
    }
    out.into_iter().map(|(i, (_, s))| (i, s)).collect()
}

/// Where a run's shard protocols are, from any summary that names one.
fn protocol_ref(store: &str, summaries: &BTreeMap<u32, ShardSummary>) -> Option<String> {
    let key = summaries.values().find_map(|s| s.protocol.clone())?;
    let folder = key.rsplit_once('/').map_or(key.as_str(), |(dir, _)| dir);
    Some(format!("{store}/{folder}/"))
}

/// The store for `status.lastRun.protocolRef`: a claim by name (its mount path means
/// nothing outside the pods), else the directory.
fn store_label(profile: &ArchiveProfile) -> String {
    let local = profile.spec.store.as_ref().and_then(|s| s.local.as_ref());
    let path = local.and_then(|l| l.path.clone());
    match local.and_then(|l| l.persistent_volume_claim.as_ref()) {
        Some(claim) => match path {
            Some(path) => format!("pvc:{}/{}", claim.claim_name, path.trim_matches('/')),
            None => format!("pvc:{}", claim.claim_name),
        },
        None => crate::store::local_path(profile.spec.store.as_ref()).to_string(),
    }
}

/// What came of trying to start a run.
enum Start {
    Started(ActiveRun),
    /// Nothing to archive: the run is recorded as done.
    Empty,
    /// The run could not start; with `stalled`, the reason a person must fix something
    /// first (the profile is then `Stalled`).
    Failed {
        message: String,
        stalled: Option<&'static str>,
    },
    /// An object the run needs (the MailboxSet, a Secret) does not exist yet: the run
    /// waits for it instead of failing, as a pod waits for its Secrets, so that objects
    /// applied together work in any order.
    Waiting(String),
}

impl Start {
    fn failed(message: impl Into<String>, stalled: Option<&'static str>) -> Start {
        Start::Failed {
            message: message.into(),
            stalled,
        }
    }
}

/// A run none of whose pods has run for this long is failed (`spec.jobTemplate.
/// pendingDeadlineSeconds` overrides it).
const PENDING_DEADLINE: Duration = Duration::from_secs(900);
/// Reasons a run could not start that a person must fix in the spec (or the objects it
/// names): the profile stays `Stalled` with them until the spec changes.
const START_FAILURES: [&str; 4] = [
    "InvalidMailboxSet",
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
    let now = ctx.now();
    let now_s = rfc3339(now);
    let generation = profile.metadata.generation;
    let mut status = profile.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut jobs = jobs_api
        .list(&ListParams::default().labels(&format!("{}={name}", job::LABEL_PROFILE)))
        .await?
        .items;
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let pending_deadline = profile
        .spec
        .job_template
        .as_ref()
        .and_then(|t| t.pending_deadline_seconds)
        .map_or(PENDING_DEADLINE, |s| Duration::from_secs(u64::from(s)));

    // Record runs that finished and are not recorded yet, oldest first; and fail a run none
    // of whose pods could run for too long, so that the next one can start.
    for j in &jobs {
        let run = j.name_any();
        let finished = job::finished(j).is_some();
        if recorded(&status, &run) || !(finished || may_be_stuck(j, now, pending_deadline)) {
            continue;
        }
        let pods = pods_api
            .list(&ListParams::default().labels(&format!("{}={run}", job::LABEL_JOB_NAME)))
            .await?
            .items;
        let stuck = match finished {
            true => None,
            false => match stuck_reason(j, &pods, now, pending_deadline) {
                Some(reason) => Some(reason),
                None => continue,
            },
        };
        let summaries = summaries(&pods);
        let sizes = job::shard_sizes(j);
        if summaries.len() < sizes.len() {
            let seen: Vec<String> = pods
                .iter()
                .map(|p| {
                    let s = p.status.as_ref();
                    format!(
                        "{} {} {}",
                        p.name_any(),
                        s.and_then(|s| s.phase.as_deref()).unwrap_or("-"),
                        s.and_then(|s| s.container_statuses.as_ref())
                            .map_or(0, |c| c.len())
                    )
                })
                .collect();
            tracing::warn!(profile = %name, run, shards = sizes.len(), summaries = summaries.len(), pods = ?seen, "shards without a summary");
        }
        let js = j.status.as_ref();
        let last = runplan::aggregate(
            &RunFacts {
                name: &run,
                start_time: time_of(js.and_then(|s| s.start_time.as_ref()))
                    .or_else(|| time_of(j.metadata.creation_timestamp.as_ref())),
                completion_time: time_of(js.and_then(|s| s.completion_time.as_ref()))
                    .or_else(|| Some(now_s.clone())),
                shard_sizes: &sizes,
                protocol_ref: protocol_ref(&store_label(&profile), &summaries),
                missing_reason: stuck.clone(),
            },
            &summaries,
        );
        ctx.metrics.run_finished(&namespace, &name, &last);
        let mut event = record_run(&mut status, &profile, last, &now_s);
        if let Some(reason) = stuck {
            tracing::warn!(profile = %name, run, reason, "no pod of the run could run; failing it");
            event.note = format!("{}; the run was stopped", event.note);
        }
        events.push(event);
    }
    // A run failed as stuck keeps no Job running (recorded, but not finished).
    for j in jobs
        .iter()
        .filter(|j| job::finished(j).is_none() && recorded(&status, &j.name_any()))
    {
        delete_ignoring_absent(&jobs_api, &j.name_any(), &DeleteParams::background()).await?;
    }

    let active = jobs
        .iter()
        .rev()
        .find(|j| job::finished(j).is_none() && !recorded(&status, &j.name_any()));
    status.active_run = active.map(|j| {
        let s = j.status.as_ref();
        history::active_run(
            &j.name_any(),
            time_of(s.and_then(|s| s.start_time.as_ref()))
                .or_else(|| time_of(j.metadata.creation_timestamp.as_ref())),
            &job::shard_sizes(j),
            s.and_then(|s| s.completed_indexes.as_deref()).unwrap_or(""),
            s.and_then(|s| s.failed_indexes.as_deref()).unwrap_or(""),
        )
    });

    let schedule = match profile
        .spec
        .schedule
        .as_ref()
        .map(Schedule::parse)
        .transpose()
    {
        Ok(schedule) => schedule,
        Err(message) => {
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "InvalidSchedule",
                message.clone(),
                &now_s,
                generation,
            );
            conditions::set(
                &mut status.conditions,
                STALLED,
                true,
                "InvalidSchedule",
                message,
                &now_s,
                generation,
            );
            status.next_schedule_time = None;
            status.observed_generation = generation;
            write_status(&ctx, &profile, &status).await?;
            publish(&ctx, &profile, events).await;
            return Ok(Action::await_change());
        }
    };
    let not_durable = job::store_not_durable(&profile.spec);
    let mut stalled: Option<(&'static str, String)> = not_durable
        .clone()
        .map(|message| ("StoreNotDurable", message));
    let secrets_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let plan_secrets = secrets_api
        .list_metadata(&ListParams::default().labels(&format!(
            "{}={},{}={name}",
            job::LABEL_MANAGED_BY,
            job::MANAGED_BY,
            job::LABEL_PROFILE
        )))
        .await?
        .items;
    let plan_secrets: Vec<ObjectMeta> = plan_secrets
        .into_iter()
        .map(|s| s.metadata)
        .filter(|m| owned_by(m, &profile))
        .collect();
    let mut starting: Option<String> = None;
    let mut waiting: Option<String> = None;
    // A run that could not start for a reason in the spec keeps the profile Stalled until
    // the spec changes or a run starts.
    let mut stalled_before: Option<(&'static str, String)> =
        conditions::get(&status.conditions, STALLED)
            .filter(|c| c.status == "True" && c.observed_generation == generation)
            .and_then(|c| {
                let reason = START_FAILURES.iter().find(|r| **r == c.reason)?;
                Some((*reason, c.message.clone()))
            });

    if status.active_run.is_none() {
        // What the decision changes, put back when the run waits for an object.
        let decided_from = (
            status.last_manual_trigger.clone(),
            status.last_schedule_time.clone(),
            status.missed_runs,
        );
        let mut with_status = (*profile).clone();
        with_status.status = Some(status.clone());
        let exists = |run: &str, status: &ArchiveProfileStatus| {
            jobs.iter().any(|j| j.name_any() == run) || recorded(status, run)
        };
        let start = match decide(&with_status, schedule.as_ref(), now) {
            Decision::Wait => {
                if let Some(value) = reused_trigger(&profile) {
                    events.push(RunEvent {
                        warning: false,
                        reason: "TriggerAlreadyUsed",
                        action: "Trigger",
                        note: format!(
                            "spec.trigger.manual {value:?} was acted on before (run {}); set a \
                             new value to start another run",
                            names::manual(&name, &value)
                        ),
                    });
                }
                None
            }
            Decision::Manual { value, run } => {
                status.last_manual_trigger = Some(value.clone());
                // The newest run is this trigger's when the operator stopped after starting
                // it and before recording the trigger: adopted. An older one means the
                // value was used before.
                let newest = jobs
                    .last()
                    .map(|j| j.name_any())
                    .or_else(|| status.last_run.as_ref().map(|r| r.name.clone()));
                if newest.as_deref() == Some(run.as_str()) {
                    tracing::info!(profile = %name, run, "run exists already; adopting it");
                    None
                } else if exists(&run, &status) {
                    events.push(RunEvent {
                        warning: true,
                        reason: "TriggerAlreadyUsed",
                        action: "Trigger",
                        note: format!(
                            "spec.trigger.manual {value:?} was used before: its run {run} \
                             exists already, so no run starts; set a new value to start one"
                        ),
                    });
                    None
                } else {
                    Some(run)
                }
            }
            Decision::Scheduled {
                slot,
                run,
                passed_over,
            } => {
                status.missed_runs += passed_over;
                status.last_schedule_time = Some(rfc3339(slot));
                if exists(&run, &status) {
                    // Started before (by this operator before a restart, or another replica).
                    tracing::info!(profile = %name, run, "run exists already; adopting it");
                    None
                } else {
                    Some(run)
                }
            }
            Decision::Skip { slot, passed_over } => {
                status.missed_runs += passed_over + 1;
                status.last_schedule_time = Some(rfc3339(slot));
                events.push(RunEvent {
                    warning: true,
                    reason: "RunSkipped",
                    action: "Schedule",
                    note: format!(
                        "the run for {} was skipped: more than startingDeadlineSeconds late",
                        rfc3339(slot)
                    ),
                });
                None
            }
            Decision::Suspended { slot } => {
                status.last_schedule_time = Some(rfc3339(slot));
                None
            }
        };
        if let Some(run) = start {
            let outcome = match &not_durable {
                Some(message) => Start::failed(message.clone(), Some("StoreNotDurable")),
                None => {
                    starting = Some(run.clone());
                    let existing: Vec<&ObjectMeta> = plan_secrets
                        .iter()
                        .filter(|m| run_of(m) == Some(run.as_str()))
                        .collect();
                    start_run(&ctx, &profile, &namespace, &run, &existing, &now_s).await?
                }
            };
            match outcome {
                Start::Started(active) => {
                    stalled_before = None;
                    events.push(RunEvent {
                        warning: false,
                        reason: "RunStarted",
                        action: "Archive",
                        note: format!("run {run} started: {} mailboxes", active.mailboxes),
                    });
                    status.active_run = Some(active);
                }
                Start::Empty => {
                    let mut last = failed_before_start(&run, String::new(), &now_s);
                    last.result = RunResult::Succeeded;
                    last.message = Some("the MailboxSet has no mailboxes".into());
                    events.push(record_run(&mut status, &profile, last, &now_s));
                }
                Start::Failed {
                    message,
                    stalled: why,
                } => {
                    if let Some(reason) = why {
                        stalled = Some((reason, message.clone()));
                    }
                    let last = failed_before_start(&run, message, &now_s);
                    ctx.metrics.run_finished(&namespace, &name, &last);
                    let mut event = record_run(&mut status, &profile, last, &now_s);
                    event.reason = "RunNotStarted";
                    events.push(event);
                }
                Start::Waiting(missing) => {
                    (
                        status.last_manual_trigger,
                        status.last_schedule_time,
                        status.missed_runs,
                    ) = decided_from;
                    let message = format!("run {run} waits: {missing}; it starts once it does");
                    events.push(RunEvent {
                        warning: true,
                        reason: "RunWaiting",
                        action: "Archive",
                        note: message.clone(),
                    });
                    waiting = Some(message);
                }
            }
        }
    }

    // Plan Secrets hold passwords: gone as soon as their run is recorded, or left over.
    let running: Vec<String> = jobs
        .iter()
        .filter(|j| !recorded(&status, &j.name_any()))
        .map(|j| j.name_any())
        .chain(status.active_run.iter().map(|a| a.name.clone()))
        .chain(starting)
        .collect();
    for secret in &plan_secrets {
        let Some(run) = run_of(secret) else { continue };
        let young = secret
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| (now - from_k8s(t)).to_std().unwrap_or_default() < ORPHAN_PLAN_AGE);
        let keep = !recorded(&status, run) && (running.iter().any(|r| r == run) || young);
        if !keep {
            let name = secret.name.clone().unwrap_or_default();
            delete_ignoring_absent(&secrets_api, &name, &DeleteParams::default()).await?;
        }
    }

    // Prune finished runs beyond the history limits, now that their results are recorded.
    let finished: Vec<history::FinishedJob> = jobs
        .iter()
        .filter(|j| job::finished(j).is_some())
        .map(|j| history::FinishedJob {
            name: j.name_any(),
            creation_time: time_of(j.metadata.creation_timestamp.as_ref()).unwrap_or_default(),
        })
        .collect();
    for run in history::to_prune(
        &finished,
        &status.runs,
        profile.spec.successful_runs_history_limit,
        profile.spec.failed_runs_history_limit,
    ) {
        delete_ignoring_absent(&jobs_api, &run, &DeleteParams::background()).await?;
    }

    let suspended = profile.spec.schedule.as_ref().is_some_and(|s| s.suspend);
    status.next_schedule_time = match (&schedule, suspended) {
        (Some(s), false) => s.next_after(now).map(rfc3339),
        _ => None,
    };
    let not_ready = match (&not_durable, &waiting) {
        (Some(message), _) => Some(("StoreNotDurable", message)),
        (None, Some(message)) => Some(("ReferenceMissing", message)),
        (None, None) => None,
    };
    match not_ready {
        Some((reason, message)) => conditions::set(
            &mut status.conditions,
            READY,
            false,
            reason,
            message.clone(),
            &now_s,
            generation,
        ),
        None => {
            let ready_message = match (&status.next_schedule_time, suspended) {
                (_, true) => "schedule suspended; manual triggers still run".to_string(),
                (Some(next), false) => format!("next run at {next}"),
                (None, false) => "no schedule: runs start on manual triggers".to_string(),
            };
            conditions::set(
                &mut status.conditions,
                READY,
                true,
                "Reconciled",
                ready_message,
                &now_s,
                generation,
            );
        }
    }
    match stalled.as_ref().or(stalled_before.as_ref()) {
        Some((reason, message)) => conditions::set(
            &mut status.conditions,
            STALLED,
            true,
            reason,
            message.clone(),
            &now_s,
            generation,
        ),
        None => conditions::set(
            &mut status.conditions,
            STALLED,
            false,
            "Reconciled",
            "",
            &now_s,
            generation,
        ),
    }
    status.observed_generation = generation;
    write_status(&ctx, &profile, &status).await?;
    publish(&ctx, &profile, events).await;

    // Job changes wake the controller up (it owns them); otherwise wake up for the next
    // slot, and while a run is active, in time to notice that none of its pods can run.
    let mut wait = status
        .next_schedule_time
        .as_deref()
        .and_then(parse_time)
        .map(|next| (next - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1))
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    if status.active_run.is_some() {
        wait = wait.min(pending_deadline / 2 + Duration::from_secs(1));
    }
    if waiting.is_some() {
        // The watches bring the missing object's arrival; this is in case they miss it.
        wait = wait.min(WAITING_RECHECK);
    }
    Ok(Action::requeue(wait))
}

/// Whether `run` is recorded in `status`.
fn recorded(status: &ArchiveProfileStatus, run: &str) -> bool {
    status.runs.iter().any(|r| r.name == run)
        || status.last_run.as_ref().is_some_and(|r| r.name == run)
}

/// The manual trigger value of a changed spec that was already acted on, if any: changing
/// the spec with an old trigger value starts no run, and the user should hear why.
fn reused_trigger(profile: &ArchiveProfile) -> Option<String> {
    let status = profile.status.as_ref()?;
    let value = profile.spec.trigger.as_ref()?.manual.clone()?;
    let changed = profile.metadata.generation.is_some()
        && status.observed_generation.is_some()
        && profile.metadata.generation != status.observed_generation;
    (changed && status.last_manual_trigger.as_ref() == Some(&value)).then_some(value)
}

/// The run a plan Secret belongs to.
fn run_of(secret: &ObjectMeta) -> Option<&str> {
    secret
        .labels
        .as_ref()?
        .get(job::LABEL_RUN)
        .map(String::as_str)
}

/// Whether `meta` is owned by `profile` (the operator deletes only its own Secrets).
fn owned_by(meta: &ObjectMeta, profile: &ArchiveProfile) -> bool {
    let uid = profile.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "ArchiveProfile" && Some(o.uid.as_str()) == uid)
}

/// Whether the unfinished Job `j` may be stuck: no pod of it is ready and it is older
/// than `deadline` (only then are its pods worth reading).
fn may_be_stuck(j: &Job, now: DateTime<Utc>, deadline: Duration) -> bool {
    let ready = j.status.as_ref().and_then(|s| s.ready).unwrap_or(0);
    let created = j.metadata.creation_timestamp.as_ref().map(from_k8s);
    ready == 0 && created.is_some_and(|t| (now - t).to_std().unwrap_or_default() >= deadline)
}

/// Why the unfinished Job `j` is stuck, if none of its `pods` has run for `deadline`.
fn stuck_reason(j: &Job, pods: &[Pod], now: DateTime<Utc>, deadline: Duration) -> Option<String> {
    let (since, why) = job::idle_since(j, pods)?;
    let idle = (now - since).to_std().unwrap_or_default();
    (idle >= deadline).then(|| {
        format!(
            "none of the run's pods ran for {} s ({why}); check the image, volumes and \
             Secrets of spec.jobTemplate",
            idle.as_secs()
        )
    })
}

async fn publish(ctx: &Context, profile: &ArchiveProfile, events: Vec<RunEvent>) {
    for event in events {
        ctx.event(profile, event).await;
    }
}

async fn delete_ignoring_absent<K>(
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

async fn write_status(
    ctx: &Context,
    profile: &ArchiveProfile,
    status: &ArchiveProfileStatus,
) -> Result<(), Error> {
    let api: Api<ArchiveProfile> =
        Api::namespaced(ctx.client.clone(), namespace_of(&profile.metadata));
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "ArchiveProfile",
        "status": status,
    });
    api.patch_status(
        &profile.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
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
async fn start_run(
    ctx: &Context,
    profile: &ArchiveProfile,
    namespace: &str,
    run: &str,
    existing: &[&ObjectMeta],
    now: &str,
) -> Result<Start, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let (sizes, parts) = match job::complete_plan(run, profile.metadata.generation, existing) {
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
            match make_plan(ctx, profile, namespace, run).await? {
                Ok(plan) => plan,
                Err(start) => return Ok(start),
            }
        }
    };
    let count = sizes.iter().sum::<u64>();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let new = job::build(profile, run, &sizes, parts, &ctx.worker_image);
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
            for part in 0..parts {
                let name = job::plan_secret_name(run, part);
                delete_ignoring_absent(&secrets, &name, &DeleteParams::default()).await?;
            }
            // Invalid (a bad jobTemplate) needs a person; forbidden (a quota) may pass later.
            let stalled = (e.code != 403).then_some("JobRejected");
            return Ok(Start::failed(message, stalled));
        }
    }
    tracing::info!(profile = %profile.name_any(), run, mailboxes = count, shards = sizes.len(), started = now, "run started");
    Ok(Start::Started(history::active_run(
        run,
        Some(now.to_string()),
        &sizes,
        "",
        "",
    )))
}

/// Resolves the profile's MailboxSet (recording the sync on it) and creates the run's plan
/// Secrets; returns the shard sizes and the number of plan Secrets, or why the run cannot
/// start.
async fn make_plan(
    ctx: &Context,
    profile: &ArchiveProfile,
    namespace: &str,
    run: &str,
) -> Result<Result<(Vec<u64>, usize), Start>, Error> {
    let set_name = &profile.spec.mailbox_set_ref.name;
    let sets: Api<MailboxSet> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(set) = sets.get_opt(set_name).await? else {
        return Ok(Err(Start::Waiting(format!(
            "MailboxSet {namespace}/{set_name} does not exist"
        ))));
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
    let (outcome, resolved) = mailboxset::resolve(&bundle, &set, Some(profile)).await;
    tracing::info!(
        profile = %profile.name_any(),
        set = %set_name,
        millis = started.elapsed().as_millis() as u64,
        "resolved the MailboxSet"
    );
    let started = std::time::Instant::now();
    let warnings = crate::resources::directory_warnings(&set);
    let set_status = mailboxset::status(
        set.status.as_ref(),
        set.metadata.generation,
        &outcome,
        warnings.clone(),
        ctx.now(),
    );
    mailboxset::write_status(ctx, &set, &set_status).await?;
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
    let count = resolved.mailboxes.len();
    let shards = history::shard(
        resolved.mailboxes,
        history::shard_count(count, profile.spec.max_parallel_jobs),
    );
    let sizes: Vec<u64> = shards.iter().map(|s| s.len() as u64).collect();
    let spec = &profile.spec;
    let server_ca_pem = spec.server.ca_secret_ref.as_ref().and_then(|r| {
        bundle
            .secret(namespace, &r.name)
            .and_then(|s| s.object.data.get(&r.key))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    });
    let plan = RunPlan {
        namespace: namespace.to_string(),
        profile: profile.name_any(),
        run: run.to_string(),
        server: spec.server.clone(),
        folders: spec.folders.clone(),
        filter: spec.filter.clone(),
        deletion: spec.deletion.clone(),
        server_ca_pem,
        store: job::worker_store(spec.store.as_ref()),
        store_durable: job::store_not_durable(spec).is_none(),
        warnings,
        shards: sizes.len() as u32,
    };
    let files = crate::runplan::plan_files(&plan, shards);
    let plan_secrets = match job::plan_secrets(profile, run, &sizes, files) {
        Ok(secrets) => secrets,
        Err(message) => {
            return Ok(Err(Start::failed(
                format!("the run plan for {count} mailboxes does not fit: {message}"),
                Some("PlanTooLarge"),
            )))
        }
    };
    let parts = plan_secrets.len();
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
        secrets = parts,
        millis = started.elapsed().as_millis() as u64,
        "made the run plan"
    );
    Ok(Ok((sizes, parts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn profile(spec: serde_json::Value, status: serde_json::Value) -> ArchiveProfile {
        let mut full = serde_json::json!({
            "mailboxSetRef": {"name": "staff"},
            "server": {"host": "imap.example.org"},
        });
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION, "kind": "ArchiveProfile",
            "metadata": {"name": "nightly", "namespace": "mail",
                         "creationTimestamp": "2025-01-06T10:00:00Z"},
            "spec": full, "status": status,
        }))
        .unwrap()
    }

    fn decision(p: &ArchiveProfile, now: &str) -> Decision {
        let schedule = p
            .spec
            .schedule
            .as_ref()
            .map(|s| Schedule::parse(s).unwrap());
        decide(p, schedule.as_ref(), at(now))
    }

    #[test]
    fn first_slot_after_creation() {
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *"}}),
            serde_json::json!({}),
        );
        assert_eq!(decision(&p, "2025-01-07T01:59:00Z"), Decision::Wait);
        assert_eq!(
            decision(&p, "2025-01-07T02:00:00Z"),
            Decision::Scheduled {
                slot: at("2025-01-07T02:00:00Z"),
                run: "nightly-202501070200".into(),
                passed_over: 0
            }
        );
    }

    #[test]
    fn a_new_manual_value_runs_once_even_when_suspended() {
        let spec = serde_json::json!({"schedule": {"cron": "0 2 * * *", "suspend": true},
                                      "trigger": {"manual": "again"}});
        let p = profile(
            spec.clone(),
            serde_json::json!({"lastManualTrigger": "before"}),
        );
        assert_eq!(
            decision(&p, "2025-01-06T12:00:00Z"),
            Decision::Manual {
                value: "again".into(),
                run: "nightly-m-again".into()
            }
        );
        let p = profile(spec, serde_json::json!({"lastManualTrigger": "again"}));
        assert_eq!(decision(&p, "2025-01-06T12:00:00Z"), Decision::Wait);
    }

    #[test]
    fn suspended_schedules_pass_slots_without_catching_up() {
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *", "suspend": true}}),
            serde_json::json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
        );
        assert_eq!(
            decision(&p, "2025-01-09T12:00:00Z"),
            Decision::Suspended {
                slot: at("2025-01-09T02:00:00Z")
            }
        );
    }

    #[test]
    fn late_slots_are_skipped_and_missed_ones_counted() {
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *", "startingDeadlineSeconds": 300}}),
            serde_json::json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
        );
        assert_eq!(
            decision(&p, "2025-01-09T02:04:00Z"),
            Decision::Scheduled {
                slot: at("2025-01-09T02:00:00Z"),
                run: "nightly-202501090200".into(),
                passed_over: 2
            }
        );
        assert_eq!(
            decision(&p, "2025-01-09T12:00:00Z"),
            Decision::Skip {
                slot: at("2025-01-09T02:00:00Z"),
                passed_over: 2
            }
        );
    }

    #[test]
    fn a_slot_recorded_in_the_future_does_not_stop_the_schedule() {
        // The clock jumped a year ahead, a slot was taken, and the clock came back.
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *"}}),
            serde_json::json!({"lastScheduleTime": "2026-01-07T02:00:00Z"}),
        );
        // The latest slot is due again: the reconciler adopts its run if it exists.
        for now in ["2025-01-07T01:00:00Z", "2025-01-06T02:00:00Z"] {
            assert_eq!(
                decision(&p, now),
                Decision::Scheduled {
                    slot: at("2025-01-06T02:00:00Z"),
                    run: "nightly-202501060200".into(),
                    passed_over: 0
                },
                "{now}"
            );
        }
        // And the schedule goes on from there.
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *"}}),
            serde_json::json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
        );
        assert_eq!(decision(&p, "2025-01-07T01:00:00Z"), Decision::Wait);
    }

    #[test]
    fn a_changed_spec_with_a_used_trigger_value_is_noticed() {
        let mut p = profile(
            serde_json::json!({"trigger": {"manual": "x"}}),
            serde_json::json!({"lastManualTrigger": "x", "observedGeneration": 1}),
        );
        p.metadata.generation = Some(2);
        assert_eq!(reused_trigger(&p).as_deref(), Some("x"));
        p.metadata.generation = Some(1);
        assert_eq!(reused_trigger(&p), None, "nothing changed");
        p.metadata.generation = Some(2);
        p.status.as_mut().unwrap().last_manual_trigger = Some("y".into());
        assert_eq!(reused_trigger(&p), None, "a new value starts a run");
    }

    #[test]
    fn the_last_success_outlives_the_run_list() {
        let p = profile(serde_json::json!({}), serde_json::json!({}));
        let mut status = ArchiveProfileStatus::default();
        let run = |name: &str, result| LastRun {
            name: name.into(),
            start_time: None,
            completion_time: Some(format!("2025-01-0{}T00:00:00Z", &name[1..])),
            result,
            message: None,
            totals: Totals::default(),
            failed_mailboxes: Vec::new(),
            protocol_ref: None,
        };
        record_run(&mut status, &p, run("r1", RunResult::Succeeded), "now");
        for name in ["r2", "r3", "r4", "r5", "r6", "r7", "r8"] {
            record_run(&mut status, &p, run(name, RunResult::Failed), "now");
        }
        assert!(status.runs.iter().all(|r| r.result == RunResult::Failed));
        assert_eq!(
            status.last_success_time.as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn statuses_stay_small_at_their_largest() {
        // Every list at its cap, every message and reason at its longest.
        let p = profile(
            serde_json::json!({"successfulRunsHistoryLimit": 100, "failedRunsHistoryLimit": 100}),
            serde_json::json!({}),
        );
        let mut status = ArchiveProfileStatus::default();
        for i in 0..250 {
            let facts = RunFacts {
                name: &format!("{}-{i:012}", "p".repeat(39)),
                start_time: Some("2025-01-01T00:00:00Z".into()),
                completion_time: Some("2025-01-01T01:00:00Z".into()),
                shard_sizes: &[10; 200],
                protocol_ref: Some(format!("pvc:{}/runs/", "c".repeat(253))),
                missing_reason: Some("r".repeat(10_000)),
            };
            let last = runplan::aggregate(&facts, &BTreeMap::new());
            record_run(&mut status, &p, last, "2025-01-01T01:00:00Z");
        }
        for c in [READY, STALLED] {
            conditions::set(
                &mut status.conditions,
                c,
                false,
                "R",
                "m".repeat(100_000),
                "t",
                None,
            );
        }
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert!(bytes < 90 * 1024, "{bytes} bytes");
    }

    #[test]
    fn without_schedule_only_triggers_run() {
        let p = profile(serde_json::json!({}), serde_json::json!({}));
        assert_eq!(decision(&p, "2030-01-01T00:00:00Z"), Decision::Wait);
    }
}
