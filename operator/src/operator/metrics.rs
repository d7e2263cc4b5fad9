//! Prometheus metrics in the text exposition format. Hand-written: a handful of counters
//! and gauges do not justify a metrics library and its dependencies.
//!
//! Gauges say what each profile's and set's status says. They are derived at every scrape
//! from the objects the controllers watch, so they are right from the first scrape after a
//! restart (an upgrade must not blind a "no successful archive for a day" alert), and a
//! deleted object's series go with it. Counters count what this process saw and start at
//! zero after a restart, as Prometheus expects of counters.
//!
//! No label is named `namespace`, `pod`, `job`, `instance`, `service`, `container` or
//! `endpoint`: Prometheus sets those on the scrape target and would rename ours to
//! `exported_*`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use kube::runtime::reflector::Store;

use super::conditions::{self, READY};
use super::schedule::Schedule;
use crate::protocol::RunResult;
use crate::resources::{namespace_of, ArchiveProfile, LastRun, MailboxSet};
use crate::time::parse as parse_time;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    watched: Mutex<Option<Watched>>,
}

/// The controllers' caches of the objects whose status the gauges show.
struct Watched {
    profiles: Store<ArchiveProfile>,
    sets: Store<MailboxSet>,
}

#[derive(Default)]
struct Counters {
    /// (namespace, profile, result) → runs
    runs: BTreeMap<(String, String, &'static str), u64>,
    /// (namespace, profile) → messages archived, bytes archived
    archived: BTreeMap<(String, String), (u64, u64)>,
    /// (controller, error) → reconcile errors
    errors: BTreeMap<(&'static str, &'static str), u64>,
    /// (controller, object) → consecutive failures, for back-off
    failures: BTreeMap<(&'static str, String), u32>,
}

const RESULTS: [RunResult; 3] = [
    RunResult::Succeeded,
    RunResult::PartiallyFailed,
    RunResult::Failed,
];

fn result_label(r: RunResult) -> &'static str {
    match r {
        RunResult::Succeeded => "Succeeded",
        RunResult::PartiallyFailed => "PartiallyFailed",
        RunResult::Failed => "Failed",
    }
}

/// A profile's gauges, from its spec and status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileGauges {
    pub ready: bool,
    pub last_result: Option<RunResult>,
    /// Unix seconds.
    pub last_run_time: Option<i64>,
    /// Unix seconds.
    pub last_success_time: Option<i64>,
    pub last_run_duration: Option<f64>,
    pub schedule_interval: Option<i64>,
    pub active_mailboxes: u64,
    pub active_mailboxes_done: u64,
}

fn unix(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(parse_time)
}

/// What `profile`'s status says, as gauges; `now` places the schedule.
pub fn profile_gauges(profile: &ArchiveProfile, now: DateTime<Utc>) -> ProfileGauges {
    let status = profile.status.clone().unwrap_or_default();
    let last = status.last_run.as_ref();
    let last_end = unix(last.and_then(|r| r.completion_time.as_deref()));
    let last_start = unix(last.and_then(|r| r.start_time.as_deref()));
    // The latest success any part of the status knows of.
    let success = last
        .filter(|r| r.result == RunResult::Succeeded)
        .and_then(|r| r.completion_time.as_deref())
        .into_iter()
        .chain(
            status
                .runs
                .iter()
                .filter(|r| r.result == RunResult::Succeeded)
                .filter_map(|r| r.completion_time.as_deref()),
        )
        .chain(status.last_success_time.as_deref())
        .filter_map(parse_time)
        .max();
    let schedule = profile
        .spec
        .schedule
        .as_ref()
        .filter(|s| !s.suspend)
        .and_then(|s| Schedule::parse(s).ok());
    let schedule_interval = schedule.and_then(|s| {
        let first = s.next_after(now)?;
        let second = s.next_after(first)?;
        Some((second - first).num_seconds())
    });
    let active = status.active_run.as_ref();
    ProfileGauges {
        ready: conditions::get(&status.conditions, READY).is_some_and(|c| c.status == "True"),
        last_result: last.map(|r| r.result),
        last_run_time: last_end.map(|t| t.timestamp()),
        last_success_time: success.map(|t| t.timestamp()),
        last_run_duration: match (last_start, last_end) {
            (Some(start), Some(end)) => Some((end - start).num_milliseconds() as f64 / 1000.0),
            _ => None,
        },
        schedule_interval,
        active_mailboxes: active.map_or(0, |a| a.mailboxes),
        active_mailboxes_done: active.map_or(0, |a| a.mailboxes_done + a.mailboxes_failed),
    }
}

/// A MailboxSet's gauges: its mailboxes (if resolved once) and whether it is ready.
pub fn set_gauges(set: &MailboxSet) -> (Option<u64>, bool) {
    let status = set.status.clone().unwrap_or_default();
    let ready = conditions::get(&status.conditions, READY).is_some_and(|c| c.status == "True");
    (status.mailboxes, ready)
}

/// One gauge or counter, its help text and its series.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    series: Vec<(Vec<(&'static str, String)>, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            series: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: impl ToString) {
        self.series.push((labels, value.to_string()));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.series {
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn profile_labels(namespace: &str, profile: &str) -> Vec<(&'static str, String)> {
    vec![
        ("profile_namespace", namespace.to_string()),
        ("profile", profile.to_string()),
    ]
}

impl Metrics {
    /// Derives the gauges from these caches from now on (the controllers' reflectors).
    pub fn watch(&self, profiles: Store<ArchiveProfile>, sets: Store<MailboxSet>) {
        *self.watched.lock().expect("metrics lock") = Some(Watched { profiles, sets });
    }

    /// Counts a finished run.
    pub fn run_finished(&self, namespace: &str, profile: &str, run: &LastRun) {
        let key = (namespace.to_string(), profile.to_string());
        let mut m = self.counters.lock().expect("metrics lock");
        *m.runs
            .entry((key.0.clone(), key.1.clone(), result_label(run.result)))
            .or_default() += 1;
        let a = m.archived.entry(key).or_default();
        a.0 += run.totals.archived;
        a.1 += run.totals.bytes;
    }

    /// Counts a failed reconcile and returns how many failed in a row for this object.
    pub fn reconcile_failed(
        &self,
        controller: &'static str,
        object: String,
        error: &'static str,
    ) -> u32 {
        let mut m = self.counters.lock().expect("metrics lock");
        *m.errors.entry((controller, error)).or_default() += 1;
        let n = m.failures.entry((controller, object)).or_default();
        *n += 1;
        *n
    }

    /// Resets an object's failure streak.
    pub fn reconcile_succeeded(&self, controller: &'static str, object: String) {
        self.counters
            .lock()
            .expect("metrics lock")
            .failures
            .remove(&(controller, object));
    }

    /// The text exposition format, the gauges as of `now`.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let (profiles, sets) = match &*self.watched.lock().expect("metrics lock") {
            Some(w) => (w.profiles.state(), w.sets.state()),
            None => (Vec::new(), Vec::new()),
        };
        let mut profiles: Vec<_> = profiles
            .iter()
            .map(|p| {
                let ns = namespace_of(&p.metadata).to_string();
                let name = p.metadata.name.clone().unwrap_or_default();
                (ns, name, profile_gauges(p, now))
            })
            .collect();
        profiles.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut sets: Vec<_> = sets
            .iter()
            .map(|s| {
                let ns = namespace_of(&s.metadata).to_string();
                (
                    ns,
                    s.metadata.name.clone().unwrap_or_default(),
                    set_gauges(s),
                )
            })
            .collect();
        sets.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));

        let mut ready = Family::new(
            "mailvault_profile_ready",
            "gauge",
            "Whether the ArchiveProfile's Ready condition is True.",
        );
        let mut result = Family::new(
            "mailvault_last_run_result",
            "gauge",
            "1 for the result of the profile's last finished run, 0 for the others.",
        );
        let mut last_run = Family::new(
            "mailvault_last_run_timestamp_seconds",
            "gauge",
            "Completion time of the profile's last finished run.",
        );
        let mut last_success = Family::new(
            "mailvault_last_success_timestamp_seconds",
            "gauge",
            "Completion time of the profile's last successful run.",
        );
        let mut duration = Family::new(
            "mailvault_last_run_duration_seconds",
            "gauge",
            "Duration of the profile's last finished run.",
        );
        let mut interval = Family::new(
            "mailvault_schedule_interval_seconds",
            "gauge",
            "Seconds between the profile's next two schedule slots (absent without a schedule or when suspended).",
        );
        let mut active = Family::new(
            "mailvault_active_run_mailboxes",
            "gauge",
            "Mailboxes of the profile's active run (0 without one).",
        );
        let mut active_done = Family::new(
            "mailvault_active_run_mailboxes_done",
            "gauge",
            "Mailboxes of the profile's active run done so far, succeeded or failed.",
        );
        for (ns, name, g) in &profiles {
            let labels = || profile_labels(ns, name);
            ready.add(labels(), u8::from(g.ready));
            if let Some(last) = g.last_result {
                for r in RESULTS {
                    let mut l = labels();
                    l.push(("result", result_label(r).to_string()));
                    result.add(l, u8::from(r == last));
                }
            }
            if let Some(t) = g.last_run_time {
                last_run.add(labels(), t);
            }
            if let Some(t) = g.last_success_time {
                last_success.add(labels(), t);
            }
            if let Some(d) = g.last_run_duration {
                duration.add(labels(), d);
            }
            if let Some(i) = g.schedule_interval {
                interval.add(labels(), i);
            }
            active.add(labels(), g.active_mailboxes);
            active_done.add(labels(), g.active_mailboxes_done);
        }
        let mut set_mailboxes = Family::new(
            "mailvault_mailboxset_mailboxes",
            "gauge",
            "Mailboxes the MailboxSet resolved to last time.",
        );
        let mut set_ready = Family::new(
            "mailvault_mailboxset_ready",
            "gauge",
            "Whether the MailboxSet's Ready condition is True.",
        );
        for (ns, name, (mailboxes, ready)) in &sets {
            let labels = || {
                vec![
                    ("mailboxset_namespace", ns.clone()),
                    ("mailboxset", name.clone()),
                ]
            };
            if let Some(n) = mailboxes {
                set_mailboxes.add(labels(), n);
            }
            set_ready.add(labels(), u8::from(*ready));
        }

        let c = self.counters.lock().expect("metrics lock");
        let mut runs = Family::new(
            "mailvault_runs_total",
            "counter",
            "Finished archive runs recorded by this process, by result.",
        );
        for ((ns, p, r), n) in &c.runs {
            let mut l = profile_labels(ns, p);
            l.push(("result", r.to_string()));
            runs.add(l, n);
        }
        let mut messages = Family::new(
            "mailvault_messages_archived_total",
            "counter",
            "Messages archived by the runs this process recorded.",
        );
        let mut bytes = Family::new(
            "mailvault_archived_bytes_total",
            "counter",
            "Bytes archived by the runs this process recorded.",
        );
        for ((ns, p), (n, b)) in &c.archived {
            messages.add(profile_labels(ns, p), n);
            bytes.add(profile_labels(ns, p), b);
        }
        let mut errors = Family::new(
            "mailvault_reconcile_errors_total",
            "counter",
            "Failed reconciles by controller and error.",
        );
        for ((controller, error), n) in &c.errors {
            errors.add(
                vec![
                    ("controller", controller.to_string()),
                    ("error", error.to_string()),
                ],
                n,
            );
        }
        let mut out = String::new();
        for family in [
            &ready,
            &result,
            &last_run,
            &last_success,
            &duration,
            &interval,
            &active,
            &active_done,
            &set_mailboxes,
            &set_ready,
            &runs,
            &messages,
            &bytes,
            &errors,
        ] {
            family.write(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn profile(name: &str, spec: serde_json::Value, status: serde_json::Value) -> ArchiveProfile {
        let mut full = serde_json::json!({
            "mailboxSetRef": {"name": "staff"},
            "server": {"host": "imap.example.org"},
        });
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mailvault.io/v1alpha1", "kind": "ArchiveProfile",
            "metadata": {"name": name, "namespace": "mail"},
            "spec": full, "status": status,
        }))
        .unwrap()
    }

    fn totals() -> serde_json::Value {
        serde_json::json!({"mailboxes": 3, "mailboxesFailed": 0, "archived": 7, "alreadyArchived": 0,
                           "failed": 0, "deleted": 0, "bytes": 700, "skipped": 0})
    }

    #[test]
    fn gauges_come_from_the_status() {
        let p = profile(
            "p",
            serde_json::json!({"schedule": {"cron": "0 2 * * *"}}),
            serde_json::json!({
                "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "",
                                "lastTransitionTime": "2025-01-01T00:00:00Z"}],
                "lastRun": {"name": "p-2", "result": "Failed", "totals": totals(),
                            "startTime": "2025-01-02T02:00:00Z", "completionTime": "2025-01-02T02:01:30Z"},
                "runs": [{"name": "p-2", "result": "Failed", "totals": totals(),
                          "completionTime": "2025-01-02T02:01:30Z"},
                         {"name": "p-1", "result": "Succeeded", "totals": totals(),
                          "completionTime": "2025-01-01T02:01:00Z"}],
                "activeRun": {"name": "p-3", "mailboxes": 40, "mailboxesDone": 10, "mailboxesFailed": 2},
            }),
        );
        let g = profile_gauges(&p, at("2025-01-02T12:00:00Z"));
        assert!(g.ready);
        assert_eq!(g.last_result, Some(RunResult::Failed));
        assert_eq!(
            g.last_run_time,
            Some(at("2025-01-02T02:01:30Z").timestamp())
        );
        assert_eq!(
            g.last_success_time,
            Some(at("2025-01-01T02:01:00Z").timestamp())
        );
        assert_eq!(g.last_run_duration, Some(90.0));
        assert_eq!(g.schedule_interval, Some(86400));
        assert_eq!((g.active_mailboxes, g.active_mailboxes_done), (40, 12));

        // A success older than every run still listed is kept in lastSuccessTime.
        let p = profile(
            "p",
            serde_json::json!({"schedule": {"cron": "0 2 * * *", "suspend": true}}),
            serde_json::json!({"lastSuccessTime": "2024-12-01T00:00:00Z"}),
        );
        let g = profile_gauges(&p, at("2025-01-02T12:00:00Z"));
        assert_eq!(
            g.last_success_time,
            Some(at("2024-12-01T00:00:00Z").timestamp())
        );
        assert_eq!(g.schedule_interval, None, "suspended");
        assert!(!g.ready);
        assert_eq!(g.last_result, None);
    }

    #[test]
    fn renders_the_watched_objects_and_forgets_deleted_ones() {
        let m = Metrics::default();
        let (profiles, mut writer) = kube::runtime::reflector::store();
        let (sets, _set_writer) = kube::runtime::reflector::store::<MailboxSet>();
        m.watch(profiles, sets);
        let p = profile(
            "p",
            serde_json::json!({}),
            serde_json::json!({"lastRun": {"name": "p-1", "result": "Succeeded", "totals": totals(),
                                           "startTime": "2025-01-01T02:00:00Z",
                                           "completionTime": "2025-01-01T02:01:30Z"}}),
        );
        writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        let run: LastRun = serde_json::from_value(serde_json::json!({
            "name": "p-1", "result": "Succeeded", "totals": totals()}))
        .unwrap();
        m.run_finished("mail", "p", &run);
        m.run_finished("mail", "p", &run);
        assert_eq!(
            m.reconcile_failed("ArchiveProfile", "mail/p".into(), "kube"),
            1
        );
        assert_eq!(
            m.reconcile_failed("ArchiveProfile", "mail/p".into(), "kube"),
            2
        );
        m.reconcile_succeeded("ArchiveProfile", "mail/p".into());
        assert_eq!(
            m.reconcile_failed("ArchiveProfile", "mail/p".into(), "kube"),
            1
        );
        let text = m.render(at("2025-01-02T00:00:00Z"));
        for line in [
            "mailvault_profile_ready{profile_namespace=\"mail\",profile=\"p\"} 0",
            "mailvault_last_run_result{profile_namespace=\"mail\",profile=\"p\",result=\"Succeeded\"} 1",
            "mailvault_last_run_result{profile_namespace=\"mail\",profile=\"p\",result=\"Failed\"} 0",
            "mailvault_last_success_timestamp_seconds{profile_namespace=\"mail\",profile=\"p\"} 1735696890",
            "mailvault_last_run_duration_seconds{profile_namespace=\"mail\",profile=\"p\"} 90",
            "mailvault_active_run_mailboxes{profile_namespace=\"mail\",profile=\"p\"} 0",
            "mailvault_runs_total{profile_namespace=\"mail\",profile=\"p\",result=\"Succeeded\"} 2",
            "mailvault_messages_archived_total{profile_namespace=\"mail\",profile=\"p\"} 14",
            "mailvault_archived_bytes_total{profile_namespace=\"mail\",profile=\"p\"} 1400",
            "mailvault_reconcile_errors_total{controller=\"ArchiveProfile\",error=\"kube\"} 3",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        for forbidden in ["namespace=", "pod=", "job=", "instance=", "service="] {
            assert!(
                !text.contains(&format!("{{{forbidden}"))
                    && !text.contains(&format!(",{forbidden}")),
                "label {forbidden}\n{text}"
            );
        }
        assert!(!text.contains("mailvault_schedule_interval_seconds{"));

        writer.apply_watcher_event(&watcher::Event::Delete(p));
        let text = m.render(at("2025-01-02T00:00:00Z"));
        assert!(
            !text.contains("mailvault_last_success_timestamp_seconds{"),
            "{text}"
        );
        assert!(!text.contains("mailvault_profile_ready{"), "{text}");
        // Counters stay: they count what happened.
        assert!(text.contains("mailvault_runs_total{"));
    }

    #[test]
    fn sets_show_their_mailboxes() {
        let set: MailboxSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailvault.io/v1alpha1", "kind": "MailboxSet",
            "metadata": {"name": "staff", "namespace": "mail"},
            "spec": {"csv": {"secretRef": {"name": "c"}}},
            "status": {"mailboxes": 12, "conditions": [{"type": "Ready", "status": "True",
                       "reason": "Resolved", "message": "", "lastTransitionTime": "t"}]}
        }))
        .unwrap();
        assert_eq!(set_gauges(&set), (Some(12), true));
    }
}
