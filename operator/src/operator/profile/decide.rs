//! The decisions of a profile's reconcile, as pure functions of what it read ([`World`])
//! and of what came of starting a run: which finished runs to record and which stuck run to
//! stop ([`decide`]), whether a run is due ([`due_run`]), and then what the status says,
//! which plan Secrets and old Jobs go and when to look again ([`conclude`]). Tested with
//! plain data and a fake clock, without an API server.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use kube::ResourceExt;

use super::observe::World;
use super::{MAX_WAIT, ORPHAN_PLAN_AGE, START_FAILURES, WAITING_RECHECK};
use crate::operator::conditions::{
    self, bounded, LAST_RUN_SUCCEEDED, MAX_STATUS_MESSAGE, READY, STALLED,
};
use crate::operator::context::RunEvent;
use crate::operator::schedule::{self, Schedule};
use crate::operator::{history, job, names};
use crate::protocol::{RunResult, Totals};
use crate::resources::{ActiveRun, ArchiveProfile, ArchiveProfileStatus, LastRun, RunSummary};
use crate::runplan::{self, RunFacts, ShardSummary};
use crate::time::{from_k8s, parse as parse_time, rfc3339};

/// What to do about starting a run, decided from the spec, the status and the clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueRun {
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

/// Whether a run is due now (when no run is active). A manual trigger wins over the
/// schedule; the schedule's slot then waits for the next reconcile.
pub fn due_run(
    profile: &ArchiveProfile,
    schedule: Option<&Schedule>,
    now: DateTime<Utc>,
) -> DueRun {
    let name = profile.metadata.name.as_deref().unwrap_or("");
    let status = profile.status.clone().unwrap_or_default();
    if let Some(value) = profile
        .spec
        .trigger
        .as_ref()
        .and_then(|t| t.manual.as_ref())
    {
        if !value.is_empty() && status.last_manual_trigger.as_ref() != Some(value) {
            return DueRun::Manual {
                value: value.clone(),
                run: names::manual(name, value),
            };
        }
    }
    let (Some(schedule), Some(spec)) = (schedule, profile.spec.schedule.as_ref()) else {
        return DueRun::Wait;
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
        return DueRun::Wait;
    };
    if spec.suspend {
        DueRun::Suspended { slot: due.slot }
    } else if due.too_late {
        DueRun::Skip {
            slot: due.slot,
            passed_over: due.passed_over,
        }
    } else {
        DueRun::Scheduled {
            slot: due.slot,
            run: names::scheduled(name, due.slot),
            passed_over: due.passed_over,
        }
    }
}

/// What a reconcile decided before it starts a run: the status so far, and what to do.
pub struct Decided {
    pub status: ArchiveProfileStatus,
    pub events: Vec<RunEvent>,
    /// Runs recorded in this reconcile, for the metrics.
    pub recorded: Vec<LastRun>,
    /// The Jobs of runs failed as stuck, to delete: recorded, but still running.
    pub stop: Vec<String>,
    /// The schedule, or why it does not parse; then nothing starts and the status says so.
    pub schedule: Result<Option<Schedule>, String>,
    /// The run to start now.
    pub start: Option<String>,
    /// What came of starting a run: filled in by the reconcile after it tried
    /// [`Self::start`], or here for a run refused without trying.
    pub outcome: Option<(String, Start)>,
    /// The scheduling state before this decision, restored when the run waits for an
    /// object: the slot or trigger is not used up.
    decided_from: (Option<String>, Option<String>, u64),
}

/// Records what finished, follows the active run and decides whether a run starts.
pub fn decide(world: &World) -> Decided {
    let profile = &world.profile;
    let mut status = profile.status.clone().unwrap_or_default();
    let (recorded_now, events) = record_finished(world, &mut status);
    // A run failed as stuck keeps no Job running (recorded, but not finished).
    let stop = world
        .jobs
        .iter()
        .filter(|j| job::finished(j).is_none() && recorded(&status, &j.name_any()))
        .map(|j| j.name_any())
        .collect();
    status.active_run = world
        .jobs
        .iter()
        .rev()
        .find(|j| job::finished(j).is_none() && !recorded(&status, &j.name_any()))
        .map(active_run);
    let decided_from = (
        status.last_manual_trigger.clone(),
        status.last_schedule_time.clone(),
        status.missed_runs,
    );
    let mut decided = Decided {
        status,
        events,
        recorded: recorded_now,
        stop,
        schedule: profile
            .spec
            .schedule
            .as_ref()
            .map(Schedule::parse)
            .transpose(),
        start: None,
        outcome: None,
        decided_from,
    };
    let schedule = match &decided.schedule {
        Ok(schedule) => schedule.clone(),
        Err(message) => {
            let (now_s, generation) = (rfc3339(world.now), profile.metadata.generation);
            let status = &mut decided.status;
            for condition in [READY, STALLED] {
                conditions::set(
                    &mut status.conditions,
                    condition,
                    condition == STALLED,
                    "InvalidSchedule",
                    message.clone(),
                    &now_s,
                    generation,
                );
            }
            status.next_schedule_time = None;
            status.observed_generation = generation;
            return decided;
        }
    };
    if decided.status.active_run.is_none() {
        if let Some(run) = start_due(world, schedule.as_ref(), &mut decided) {
            match job::store_not_durable(&profile.spec) {
                Some(message) => {
                    decided.outcome = Some((run, Start::failed(message, Some("StoreNotDurable"))))
                }
                None => decided.start = Some(run),
            }
        }
    }
    decided
}

/// What a profile whose MailboxSet `name` is not in `namespace` waits for.
pub fn missing_set(namespace: &str, name: &str) -> String {
    format!("MailboxSet {namespace}/{name} does not exist")
}

/// Records the runs that finished and are not recorded yet, oldest first; and fails a run
/// none of whose pods could run for too long, so that the next one can start. Returns the
/// recorded runs and their events.
fn record_finished(
    world: &World,
    status: &mut ArchiveProfileStatus,
) -> (Vec<LastRun>, Vec<RunEvent>) {
    let profile = &world.profile;
    let name = profile.name_any();
    let now_s = rfc3339(world.now);
    let mut recorded_now = Vec::new();
    let mut events = Vec::new();
    for j in &world.jobs {
        let run = j.name_any();
        let Some(pods) = world.pods.get(&run) else {
            continue;
        };
        if recorded(status, &run) {
            continue;
        }
        let stuck = match job::finished(j) {
            Some(_) => None,
            None => match stuck_reason(j, pods, world.now, world.pending_deadline()) {
                Some(reason) => Some(reason),
                None => continue,
            },
        };
        let summaries = summaries(pods);
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
                protocol_ref: protocol_ref(&store_label(profile), &summaries),
                missing_reason: stuck.clone(),
            },
            &summaries,
        );
        recorded_now.push(last.clone());
        let mut event = record_run(status, profile, last, &now_s);
        if let Some(reason) = stuck {
            tracing::warn!(profile = %name, run, reason, "no pod of the run could run; failing it");
            event.note = format!("{}; the run was stopped", event.note);
        }
        events.push(event);
    }
    (recorded_now, events)
}

/// `status.activeRun` of the unfinished Job `j`.
fn active_run(j: &Job) -> ActiveRun {
    let s = j.status.as_ref();
    history::active_run(
        &j.name_any(),
        time_of(s.and_then(|s| s.start_time.as_ref()))
            .or_else(|| time_of(j.metadata.creation_timestamp.as_ref())),
        &job::shard_sizes(j),
        s.and_then(|s| s.completed_indexes.as_deref()).unwrap_or(""),
        s.and_then(|s| s.failed_indexes.as_deref()).unwrap_or(""),
    )
}

/// Takes the due run, if any, into the scheduling state (trigger value, slot, missed
/// runs); returns the run to start unless it exists already.
fn start_due(world: &World, schedule: Option<&Schedule>, decided: &mut Decided) -> Option<String> {
    let name = world.profile.name_any();
    let status = &mut decided.status;
    let events = &mut decided.events;
    let mut with_status = world.profile.clone();
    with_status.status = Some(status.clone());
    let exists = |run: &str, status: &ArchiveProfileStatus| {
        world.jobs.iter().any(|j| j.name_any() == run) || recorded(status, run)
    };
    match due_run(&with_status, schedule, world.now) {
        DueRun::Wait => {
            if let Some(value) = reused_trigger(&world.profile) {
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
        DueRun::Manual { value, run } => {
            status.last_manual_trigger = Some(value.clone());
            // The newest run is this trigger's when the operator stopped after starting
            // it and before recording the trigger: adopted. An older one means the
            // value was used before.
            let newest = world
                .jobs
                .last()
                .map(|j| j.name_any())
                .or_else(|| status.last_run.as_ref().map(|r| r.name.clone()));
            if newest.as_deref() == Some(run.as_str()) {
                tracing::info!(profile = %name, run, "run exists already; adopting it");
                None
            } else if exists(&run, status) {
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
        DueRun::Scheduled {
            slot,
            run,
            passed_over,
        } => {
            status.missed_runs += passed_over;
            status.last_schedule_time = Some(rfc3339(slot));
            if exists(&run, status) {
                // Started before (by this operator before a restart, or another replica).
                tracing::info!(profile = %name, run, "run exists already; adopting it");
                None
            } else {
                Some(run)
            }
        }
        DueRun::Skip { slot, passed_over } => {
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
        DueRun::Suspended { slot } => {
            status.last_schedule_time = Some(rfc3339(slot));
            None
        }
    }
}

/// What a reconcile does last: the status to write, the events to publish, and what to
/// delete.
pub struct Concluded {
    pub status: ArchiveProfileStatus,
    pub events: Vec<RunEvent>,
    /// Runs that failed to start, for the metrics.
    pub recorded: Vec<LastRun>,
    /// Plan Secrets whose run is recorded, or which were left over.
    pub delete_secrets: Vec<String>,
    /// Finished runs' Jobs beyond the history limits.
    pub prune: Vec<String>,
    /// When to reconcile again at the latest.
    pub requeue: Duration,
}

/// The status, deletions and requeue after `decided` and the outcome of its start.
pub fn conclude(world: &World, decided: Decided) -> Concluded {
    let profile = &world.profile;
    let now_s = rfc3339(world.now);
    let Decided {
        mut status,
        mut events,
        schedule,
        start: starting,
        outcome,
        decided_from,
        ..
    } = decided;
    // A run that could not start for a reason in the spec keeps the profile Stalled until
    // the spec changes or a run starts.
    let mut stalled_before: Option<(&'static str, String)> =
        conditions::get(&status.conditions, STALLED)
            .filter(|c| c.status == "True" && c.observed_generation == profile.metadata.generation)
            .and_then(|c| {
                let reason = START_FAILURES.iter().find(|r| **r == c.reason)?;
                Some((*reason, c.message.clone()))
            });
    let mut recorded_now = Vec::new();
    let mut stalled = None;
    let mut waiting = None;
    if let Some((run, outcome)) = outcome {
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
                events.push(record_run(&mut status, profile, last, &now_s));
            }
            Start::Failed {
                message,
                stalled: why,
            } => {
                stalled = why.map(|reason| (reason, message.clone()));
                let last = failed_before_start(&run, message, &now_s);
                recorded_now.push(last.clone());
                let mut event = record_run(&mut status, profile, last, &now_s);
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
    let delete_secrets = plan_secrets_to_delete(world, &status, starting);
    let prune = jobs_to_prune(world, &status);
    let not_durable = job::store_not_durable(&profile.spec);
    let stalled = match &not_durable {
        Some(message) if stalled.is_none() => Some(("StoreNotDurable", message.clone())),
        _ => stalled,
    };
    let schedule = schedule.unwrap_or_default();
    // A set that is not there is shown at once, not only when a run is due and waits.
    let set_absent = world.mailbox_set.is_none().then(|| {
        let namespace = profile.namespace().unwrap_or_default();
        let set = &profile.spec.mailbox_set_ref.name;
        format!("{}; runs wait for it", missing_set(&namespace, set))
    });
    set_conditions(
        &mut status,
        world,
        schedule.as_ref(),
        not_durable.as_deref(),
        waiting.as_deref().or(set_absent.as_deref()),
        stalled.or(stalled_before),
    );
    let requeue = requeue(&status, world, waiting.is_some());
    Concluded {
        status,
        events,
        recorded: recorded_now,
        delete_secrets,
        prune,
        requeue,
    }
}

/// The plan Secrets to delete: they hold passwords, so they go as soon as their run is
/// recorded, or when they are left over from an attempt that was given up.
fn plan_secrets_to_delete(
    world: &World,
    status: &ArchiveProfileStatus,
    starting: Option<String>,
) -> Vec<String> {
    let running: Vec<String> = world
        .jobs
        .iter()
        .filter(|j| !recorded(status, &j.name_any()))
        .map(|j| j.name_any())
        .chain(status.active_run.iter().map(|a| a.name.clone()))
        .chain(starting)
        .collect();
    world
        .plan_secrets
        .iter()
        .filter(|secret| {
            let Some(run) = run_of(secret) else {
                return false;
            };
            let young = secret.creation_timestamp.as_ref().is_some_and(|t| {
                (world.now - from_k8s(t)).to_std().unwrap_or_default() < ORPHAN_PLAN_AGE
            });
            let keep = !recorded(status, run) && (running.iter().any(|r| r == run) || young);
            !keep
        })
        .map(|secret| secret.name.clone().unwrap_or_default())
        .collect()
}

/// The finished runs' Jobs beyond the history limits, now that their results are recorded.
fn jobs_to_prune(world: &World, status: &ArchiveProfileStatus) -> Vec<String> {
    let finished: Vec<history::FinishedJob> = world
        .jobs
        .iter()
        .filter(|j| job::finished(j).is_some())
        .map(|j| history::FinishedJob {
            name: j.name_any(),
            creation_time: time_of(j.metadata.creation_timestamp.as_ref()).unwrap_or_default(),
        })
        .collect();
    let spec = &world.profile.spec;
    history::to_prune(
        &finished,
        &status.runs,
        spec.successful_runs_history_limit,
        spec.failed_runs_history_limit,
    )
}

/// The next schedule time and the `Ready` and `Stalled` conditions: not ready while the
/// store would vanish with the pods or a run waits for an object; stalled for `stalled`.
fn set_conditions(
    status: &mut ArchiveProfileStatus,
    world: &World,
    schedule: Option<&Schedule>,
    not_durable: Option<&str>,
    waiting: Option<&str>,
    stalled: Option<(&'static str, String)>,
) {
    let generation = world.profile.metadata.generation;
    let now_s = rfc3339(world.now);
    let suspended = world
        .profile
        .spec
        .schedule
        .as_ref()
        .is_some_and(|s| s.suspend);
    status.next_schedule_time = match (schedule, suspended) {
        (Some(s), false) => s.next_after(world.now).map(rfc3339),
        _ => None,
    };
    let (ready, reason, message) = match (not_durable, waiting) {
        (Some(message), _) => (false, "StoreNotDurable", message.to_string()),
        (None, Some(message)) => (false, "ReferenceMissing", message.to_string()),
        (None, None) => {
            let message = match (&status.next_schedule_time, suspended) {
                (_, true) => "schedule suspended; manual triggers still run".to_string(),
                (Some(next), false) => format!("next run at {next}"),
                (None, false) => "no schedule: runs start on manual triggers".to_string(),
            };
            (true, "Reconciled", message)
        }
    };
    let c = &mut status.conditions;
    conditions::set(c, READY, ready, reason, message, &now_s, generation);
    match stalled {
        Some((reason, message)) => {
            conditions::set(c, STALLED, true, reason, message, &now_s, generation)
        }
        None => conditions::set(c, STALLED, false, "Reconciled", "", &now_s, generation),
    }
    status.observed_generation = generation;
}

/// When to reconcile again at the latest. Job changes wake the controller up (it owns
/// them); otherwise it wakes up for the next slot, while a run is active in time to notice
/// that none of its pods can run, and while a run waits for an object soon.
fn requeue(status: &ArchiveProfileStatus, world: &World, waiting: bool) -> Duration {
    let mut wait = status
        .next_schedule_time
        .as_deref()
        .and_then(parse_time)
        .map(|next| (next - world.now).to_std().unwrap_or(Duration::ZERO) + Duration::from_secs(1))
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT);
    if status.active_run.is_some() {
        wait = wait.min(world.pending_deadline() / 2 + Duration::from_secs(1));
    }
    if waiting {
        // The watches bring the missing object's arrival; this is in case they miss it.
        wait = wait.min(WAITING_RECHECK);
    }
    wait
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
pub enum Start {
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
    pub fn failed(message: impl Into<String>, stalled: Option<&'static str>) -> Start {
        Start::Failed {
            message: message.into(),
            stalled,
        }
    }
}

/// Whether `run` is recorded in `status`.
pub fn recorded(status: &ArchiveProfileStatus, run: &str) -> bool {
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
pub fn run_of(secret: &ObjectMeta) -> Option<&str> {
    secret
        .labels
        .as_ref()?
        .get(job::LABEL_RUN)
        .map(String::as_str)
}

/// Whether the unfinished Job `j` may be stuck: no pod of it is ready and it is older
/// than `deadline` (only then are its pods worth reading).
pub fn may_be_stuck(j: &Job, now: DateTime<Utc>, deadline: Duration) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::API_VERSION;

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

    fn decision(p: &ArchiveProfile, now: &str) -> DueRun {
        let schedule = p
            .spec
            .schedule
            .as_ref()
            .map(|s| Schedule::parse(s).unwrap());
        due_run(p, schedule.as_ref(), at(now))
    }

    #[test]
    fn first_slot_after_creation() {
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *"}}),
            serde_json::json!({}),
        );
        assert_eq!(decision(&p, "2025-01-07T01:59:00Z"), DueRun::Wait);
        assert_eq!(
            decision(&p, "2025-01-07T02:00:00Z"),
            DueRun::Scheduled {
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
            DueRun::Manual {
                value: "again".into(),
                run: "nightly-m-again".into()
            }
        );
        let p = profile(spec, serde_json::json!({"lastManualTrigger": "again"}));
        assert_eq!(decision(&p, "2025-01-06T12:00:00Z"), DueRun::Wait);
    }

    #[test]
    fn suspended_schedules_pass_slots_without_catching_up() {
        let p = profile(
            serde_json::json!({"schedule": {"cron": "0 2 * * *", "suspend": true}}),
            serde_json::json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
        );
        assert_eq!(
            decision(&p, "2025-01-09T12:00:00Z"),
            DueRun::Suspended {
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
            DueRun::Scheduled {
                slot: at("2025-01-09T02:00:00Z"),
                run: "nightly-202501090200".into(),
                passed_over: 2
            }
        );
        assert_eq!(
            decision(&p, "2025-01-09T12:00:00Z"),
            DueRun::Skip {
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
                DueRun::Scheduled {
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
        assert_eq!(decision(&p, "2025-01-07T01:00:00Z"), DueRun::Wait);
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
        assert_eq!(decision(&p, "2030-01-01T00:00:00Z"), DueRun::Wait);
    }

    /// A world of `profile` at `now` with these Jobs (JSON), their pods and plan Secrets.
    fn world(
        profile: ArchiveProfile,
        now: &str,
        jobs: Vec<serde_json::Value>,
        pods: Vec<(&str, Vec<serde_json::Value>)>,
        plan_secrets: Vec<serde_json::Value>,
    ) -> World {
        let mut profile = profile;
        profile.metadata.generation = Some(2);
        World {
            profile,
            now: at(now),
            jobs: jobs
                .into_iter()
                .map(|j| serde_json::from_value(j).unwrap())
                .collect(),
            pods: pods
                .into_iter()
                .map(|(job, pods)| {
                    let pods = pods
                        .into_iter()
                        .map(|p| serde_json::from_value(p).unwrap())
                        .collect();
                    (job.to_string(), pods)
                })
                .collect(),
            plan_secrets: plan_secrets
                .into_iter()
                .map(|m| serde_json::from_value(m).unwrap())
                .collect(),
            mailbox_set: Some(
                serde_json::from_value(serde_json::json!({
                    "apiVersion": API_VERSION, "kind": "MailboxSet",
                    "metadata": {"name": "staff", "namespace": "mail"},
                    "spec": {"csv": {"secretRef": {"name": "list"}}},
                }))
                .unwrap(),
            ),
        }
    }

    fn durable(extra: serde_json::Value) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "schedule": {"cron": "0 2 * * *"},
            "store": {"local": {"persistentVolumeClaim": {"claimName": "archive"}}},
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    }

    fn job_json(name: &str, created: &str, status: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": created,
                         "annotations": {"mailvault.io/shard-sizes": "2,1"}},
            "status": status,
        })
    }

    fn pod_json(index: u32, phase: &str, state: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": format!("p-{index}"), "creationTimestamp": "2025-01-07T02:00:33Z",
                         "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()}},
            "status": {"phase": phase, "containerStatuses": [{"name": "worker", "image": "i",
                        "imageID": "", "ready": false, "restartCount": 0, "state": state}]}
        })
    }

    fn summary(index: u32, mailboxes: u64, archived: u64) -> serde_json::Value {
        let message = serde_json::json!({"index": index, "result": "Succeeded",
            "totals": {"mailboxes": mailboxes, "mailboxesFailed": 0, "archived": archived,
                       "alreadyArchived": 0, "failed": 0, "deleted": 0, "bytes": 0,
                       "skipped": 0, "wouldDelete": 1},
            "protocol": format!("runs/mail/nightly/r-{index}.json")});
        serde_json::json!({"terminated": {"exitCode": 0, "message": message.to_string()}})
    }

    fn plan_secret(run: &str, created: &str) -> serde_json::Value {
        serde_json::json!({"name": format!("{run}-plan"), "creationTimestamp": created,
                           "labels": {"mailvault.io/run": run}})
    }

    #[test]
    fn a_finished_run_is_recorded_from_its_pods_summaries() {
        let p = profile(
            durable(serde_json::json!({})),
            serde_json::json!({"lastScheduleTime": "2025-01-07T02:00:00Z"}),
        );
        let done = serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}],
                                      "completionTime": "2025-01-07T02:20:00Z"});
        let w = world(
            p,
            "2025-01-07T02:30:00Z",
            vec![job_json("r", "2025-01-07T02:00:31Z", done)],
            vec![(
                "r",
                vec![
                    pod_json(0, "Succeeded", summary(0, 2, 5)),
                    pod_json(1, "Succeeded", summary(1, 1, 4)),
                ],
            )],
            vec![],
        );
        let decided = decide(&w);
        assert_eq!(decided.recorded.len(), 1);
        let last = decided.status.last_run.as_ref().unwrap();
        assert_eq!(
            (last.name.as_str(), last.result),
            ("r", RunResult::Succeeded)
        );
        assert_eq!((last.totals.mailboxes, last.totals.archived), (3, 9));
        assert_eq!(last.totals.would_delete, 2);
        assert_eq!(
            last.protocol_ref.as_deref(),
            Some("pvc:archive/runs/mail/nightly/")
        );
        assert!(decided.stop.is_empty() && decided.start.is_none());
        assert_eq!(decided.events[0].reason, "RunSucceeded");
        let concluded = conclude(&w, decided);
        assert_eq!(
            concluded.status.next_schedule_time.as_deref(),
            Some("2025-01-08T02:00:00Z")
        );
        // Kept: the history limits keep one successful run.
        assert!(concluded.prune.is_empty());
    }

    #[test]
    fn a_stuck_run_is_failed_and_its_job_stopped() {
        let p = profile(
            durable(serde_json::json!({"jobTemplate": {"pendingDeadlineSeconds": 600}})),
            serde_json::json!({"lastScheduleTime": "2025-01-07T02:00:00Z"}),
        );
        let waiting = serde_json::json!({"waiting": {"reason": "ErrImagePull"}});
        let w = world(
            p,
            "2025-01-07T02:20:00Z",
            vec![job_json(
                "r",
                "2025-01-07T02:00:00Z",
                serde_json::json!({"active": 3}),
            )],
            vec![("r", vec![pod_json(0, "Pending", waiting)])],
            vec![],
        );
        let decided = decide(&w);
        assert_eq!(decided.stop, ["r"]);
        let last = decided.status.last_run.as_ref().unwrap();
        assert_eq!(
            (last.result, last.totals.mailboxes_failed),
            (RunResult::Failed, 3)
        );
        assert!(last.failed_mailboxes[0].reason.contains("ErrImagePull"));
        assert!(decided.status.active_run.is_none());
        // Not yet past the deadline: nothing happens to it.
        let young = world(
            w.profile.clone(),
            "2025-01-07T02:05:00Z",
            vec![job_json(
                "r",
                "2025-01-07T02:00:00Z",
                serde_json::json!({"active": 3}),
            )],
            vec![("r", vec![])],
            vec![],
        );
        let decided = decide(&young);
        assert!(decided.stop.is_empty() && decided.recorded.is_empty());
        assert_eq!(decided.status.active_run.unwrap().name, "r");
    }

    #[test]
    fn an_invalid_schedule_starts_nothing_and_says_why() {
        let p = profile(
            durable(serde_json::json!({"schedule": {"cron": "every night"},
                                       "trigger": {"manual": "now"}})),
            serde_json::json!({}),
        );
        let decided = decide(&world(p, "2025-01-07T02:00:00Z", vec![], vec![], vec![]));
        assert!(decided.schedule.is_err());
        assert!(decided.start.is_none() && decided.outcome.is_none());
        let status = &decided.status;
        for (condition, value) in [(READY, "False"), (STALLED, "True")] {
            let c = conditions::get(&status.conditions, condition).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (value, "InvalidSchedule")
            );
            assert!(c.message.contains("spec.schedule.cron"), "{}", c.message);
        }
        assert_eq!(
            status.last_manual_trigger, None,
            "the trigger is not used up"
        );
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn a_run_that_waits_keeps_its_slot_and_looks_again_soon() {
        let p = profile(
            durable(serde_json::json!({})),
            serde_json::json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
        );
        let w = world(p, "2025-01-07T02:00:30Z", vec![], vec![], vec![]);
        let mut decided = decide(&w);
        let run = decided.start.clone().unwrap();
        assert_eq!(run, "nightly-202501070200");
        assert_eq!(
            decided.status.last_schedule_time.as_deref(),
            Some("2025-01-07T02:00:00Z")
        );
        decided.outcome = Some((
            run,
            Start::Waiting("MailboxSet mail/staff does not exist".into()),
        ));
        let concluded = conclude(&w, decided);
        assert_eq!(
            concluded.status.last_schedule_time.as_deref(),
            Some("2025-01-06T02:00:00Z")
        );
        let ready = conditions::get(&concluded.status.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ReferenceMissing")
        );
        assert_eq!(concluded.requeue, WAITING_RECHECK);
        assert_eq!(concluded.events[0].reason, "RunWaiting");
    }

    #[test]
    fn a_missing_set_shows_on_ready_before_any_run_is_due() {
        let p = profile(
            durable(serde_json::json!({})),
            serde_json::json!({"lastScheduleTime": "2025-01-07T02:00:00Z"}),
        );
        let mut w = world(p, "2025-01-07T10:00:00Z", vec![], vec![], vec![]);
        let ready = |w: &World| {
            let decided = decide(w);
            assert_eq!(decided.start, None, "nothing is due");
            let concluded = conclude(w, decided);
            let c = conditions::get(&concluded.status.conditions, READY).unwrap();
            (
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
                concluded.requeue,
            )
        };
        let (status, reason, _, requeue) = ready(&w);
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Reconciled"));
        w.mailbox_set = None;
        let (status, reason, message, requeue_missing) = ready(&w);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "ReferenceMissing")
        );
        assert_eq!(
            message,
            "MailboxSet mail/staff does not exist; runs wait for it"
        );
        // No run waits: the set's watch wakes the profile, no quick polling.
        assert_eq!(requeue_missing, requeue);
    }

    #[test]
    fn plan_secrets_go_with_their_run_or_when_left_over() {
        let p = profile(
            durable(serde_json::json!({})),
            serde_json::json!({"lastScheduleTime": "2025-01-07T02:00:00Z",
                               "runs": [{"name": "done", "result": "Succeeded", "totals": {
                                   "mailboxes": 1, "mailboxesFailed": 0, "archived": 0,
                                   "alreadyArchived": 0, "failed": 0, "deleted": 0,
                                   "bytes": 0, "skipped": 0}}]}),
        );
        let w = world(
            p,
            "2025-01-07T03:00:00Z",
            vec![job_json(
                "running",
                "2025-01-07T02:00:31Z",
                serde_json::json!({"ready": 1}),
            )],
            vec![],
            vec![
                plan_secret("done", "2025-01-07T02:00:30Z"),
                plan_secret("running", "2025-01-07T02:00:30Z"),
                plan_secret("given-up", "2025-01-07T02:00:30Z"),
                plan_secret("retrying", "2025-01-07T02:59:00Z"),
            ],
        );
        let concluded = conclude(&w, decide(&w));
        assert_eq!(concluded.delete_secrets, ["done-plan", "given-up-plan"]);
    }

    #[test]
    fn a_store_that_vanishes_with_the_pod_is_refused_without_trying() {
        let p = profile(
            serde_json::json!({"trigger": {"manual": "now"},
                               "store": {"local": {"path": "/tmp/archive"}}}),
            serde_json::json!({}),
        );
        let w = world(p, "2025-01-07T02:00:00Z", vec![], vec![], vec![]);
        let decided = decide(&w);
        assert!(decided.start.is_none());
        assert!(matches!(
            decided.outcome,
            Some((
                _,
                Start::Failed {
                    stalled: Some("StoreNotDurable"),
                    ..
                }
            ))
        ));
        let concluded = conclude(&w, decided);
        assert_eq!(concluded.recorded.len(), 1, "counted in the metrics");
        let stalled = conditions::get(&concluded.status.conditions, STALLED).unwrap();
        assert_eq!(stalled.reason, "StoreNotDurable");
        assert_eq!(concluded.status.last_manual_trigger.as_deref(), Some("now"));
    }
}
