//! Prometheus metrics in the text exposition format. Hand-written: a handful of counters
//! and gauges do not justify a metrics library and its dependencies.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::protocol::RunResult;
use crate::resources::LastRun;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (namespace, profile, result) → runs
    runs: BTreeMap<(String, String, &'static str), u64>,
    /// (namespace, profile) → messages archived, bytes archived
    archived: BTreeMap<(String, String), (u64, u64)>,
    /// (namespace, profile) → duration of the last run (seconds)
    last_duration: BTreeMap<(String, String), f64>,
    /// (namespace, profile) → unix time of the last successful run
    last_success: BTreeMap<(String, String), i64>,
    /// (controller, error) → reconcile errors
    errors: BTreeMap<(&'static str, &'static str), u64>,
    /// (controller, object) → consecutive failures, for back-off
    failures: BTreeMap<(&'static str, String), u32>,
}

fn result_label(r: RunResult) -> &'static str {
    match r {
        RunResult::Succeeded => "Succeeded",
        RunResult::PartiallyFailed => "PartiallyFailed",
        RunResult::Failed => "Failed",
    }
}

impl Metrics {
    /// Counts a finished run.
    pub fn run_finished(&self, namespace: &str, profile: &str, run: &LastRun) {
        let key = (namespace.to_string(), profile.to_string());
        let mut m = self.inner.lock().expect("metrics lock");
        *m.runs
            .entry((key.0.clone(), key.1.clone(), result_label(run.result)))
            .or_default() += 1;
        let a = m.archived.entry(key.clone()).or_default();
        a.0 += run.totals.archived;
        a.1 += run.totals.bytes;
        let start = run
            .start_time
            .as_deref()
            .and_then(super::context::parse_time);
        let end = run
            .completion_time
            .as_deref()
            .and_then(super::context::parse_time);
        if let (Some(start), Some(end)) = (start, end) {
            m.last_duration.insert(
                key.clone(),
                (end - start).num_milliseconds() as f64 / 1000.0,
            );
            if run.result == RunResult::Succeeded {
                m.last_success.insert(key, end.timestamp());
            }
        }
    }

    /// Counts a failed reconcile and returns how many failed in a row for this object.
    pub fn reconcile_failed(
        &self,
        controller: &'static str,
        object: String,
        error: &'static str,
    ) -> u32 {
        let mut m = self.inner.lock().expect("metrics lock");
        *m.errors.entry((controller, error)).or_default() += 1;
        let n = m.failures.entry((controller, object)).or_default();
        *n += 1;
        *n
    }

    /// Resets an object's failure streak.
    pub fn reconcile_succeeded(&self, controller: &'static str, object: String) {
        self.inner
            .lock()
            .expect("metrics lock")
            .failures
            .remove(&(controller, object));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let m = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(
            out,
            "# HELP mailvault_runs_total Finished archive runs by result."
        );
        let _ = writeln!(out, "# TYPE mailvault_runs_total counter");
        for ((ns, p, r), n) in &m.runs {
            let _ = writeln!(
                out,
                "mailvault_runs_total{{namespace=\"{}\",profile=\"{}\",result=\"{r}\"}} {n}",
                esc(ns),
                esc(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mailvault_messages_archived_total Messages archived by finished runs."
        );
        let _ = writeln!(out, "# TYPE mailvault_messages_archived_total counter");
        for ((ns, p), (n, _)) in &m.archived {
            let _ = writeln!(
                out,
                "mailvault_messages_archived_total{{namespace=\"{}\",profile=\"{}\"}} {n}",
                esc(ns),
                esc(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mailvault_archived_bytes_total Bytes archived by finished runs."
        );
        let _ = writeln!(out, "# TYPE mailvault_archived_bytes_total counter");
        for ((ns, p), (_, b)) in &m.archived {
            let _ = writeln!(
                out,
                "mailvault_archived_bytes_total{{namespace=\"{}\",profile=\"{}\"}} {b}",
                esc(ns),
                esc(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mailvault_run_duration_seconds Duration of the last finished run."
        );
        let _ = writeln!(out, "# TYPE mailvault_run_duration_seconds gauge");
        for ((ns, p), d) in &m.last_duration {
            let _ = writeln!(
                out,
                "mailvault_run_duration_seconds{{namespace=\"{}\",profile=\"{}\"}} {d}",
                esc(ns),
                esc(p)
            );
        }
        let _ = writeln!(out, "# HELP mailvault_last_success_timestamp_seconds Completion time of the last successful run.");
        let _ = writeln!(out, "# TYPE mailvault_last_success_timestamp_seconds gauge");
        for ((ns, p), t) in &m.last_success {
            let _ = writeln!(
                out,
                "mailvault_last_success_timestamp_seconds{{namespace=\"{}\",profile=\"{}\"}} {t}",
                esc(ns),
                esc(p)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mailvault_reconcile_errors_total Failed reconciles by controller and error."
        );
        let _ = writeln!(out, "# TYPE mailvault_reconcile_errors_total counter");
        for ((c, e), n) in &m.errors {
            let _ = writeln!(
                out,
                "mailvault_reconcile_errors_total{{controller=\"{c}\",error=\"{e}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Totals;

    #[test]
    fn renders_runs_and_errors() {
        let m = Metrics::default();
        let run = LastRun {
            name: "p-1".into(),
            start_time: Some("2025-01-01T02:00:00Z".into()),
            completion_time: Some("2025-01-01T02:01:30Z".into()),
            result: RunResult::Succeeded,
            message: None,
            totals: Totals {
                archived: 7,
                bytes: 700,
                ..Totals::default()
            },
            failed_mailboxes: vec![],
            protocol_ref: None,
        };
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
        let text = m.render();
        for line in [
            "mailvault_runs_total{namespace=\"mail\",profile=\"p\",result=\"Succeeded\"} 2",
            "mailvault_messages_archived_total{namespace=\"mail\",profile=\"p\"} 14",
            "mailvault_archived_bytes_total{namespace=\"mail\",profile=\"p\"} 1400",
            "mailvault_run_duration_seconds{namespace=\"mail\",profile=\"p\"} 90",
            "mailvault_last_success_timestamp_seconds{namespace=\"mail\",profile=\"p\"} 1735696890",
            "mailvault_reconcile_errors_total{controller=\"ArchiveProfile\",error=\"kube\"} 3",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
