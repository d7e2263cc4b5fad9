//! What every reconcile shares: the client, the event recorder, the clock, metrics; the
//! one error type and the error policy.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use super::conditions::bounded;
use super::metrics::Metrics;

/// The time, injectable so that tests run schedules on a fake clock.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub clock: Clock,
    /// The worker image when a profile names none: the operator's own.
    pub worker_image: String,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, clock: Clock, worker_image: String, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "mailvault".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clock,
            worker_image,
            metrics,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Publishes an event about `object`. A lost event is logged, never fatal: the status
    /// carries the same facts.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, object: &K, event: RunEvent) {
        let e = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.into(),
            note: Some(truncate_note(event.note)),
            action: event.action.into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&e, &object.object_ref(&())).await {
            tracing::warn!(reason = event.reason, error = %err, "publishing an event failed");
        }
    }
}

/// An event to publish, collected while reconciling and sent after the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// Event notes are capped at 1 kB by the API server.
fn truncate_note(note: String) -> String {
    bounded(note, 1000)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached; retried with back-off.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object lacks what the API server always sets (a namespace, a name).
    #[error("{0}")]
    Incomplete(&'static str),
}

impl Error {
    /// A short label for the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Incomplete(_) => "incomplete",
        }
    }
}

/// Back-off per object: the controller runtime keys requeues by object, so one failing
/// profile waits without slowing the others. The wait grows with repeated failures,
/// counted in the metrics, up to five minutes.
pub fn backoff(failures: u32) -> Action {
    let seconds = 5u64.saturating_mul(1 << failures.min(6)).min(300);
    Action::requeue(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::conditions::MAX_STATUS_MESSAGE;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Action::requeue(Duration::from_secs(5)));
        assert_eq!(backoff(2), Action::requeue(Duration::from_secs(20)));
        assert_eq!(backoff(30), Action::requeue(Duration::from_secs(300)));
    }

    #[test]
    fn notes_are_capped() {
        assert_eq!(truncate_note("é".repeat(800)).len(), 999);
        assert_eq!(bounded("short".into(), 10), "short");
        let cut = bounded("x".repeat(5000), MAX_STATUS_MESSAGE);
        assert_eq!(cut.len(), MAX_STATUS_MESSAGE);
        assert!(cut.ends_with("..."));
    }
}
