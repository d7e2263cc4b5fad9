//! Status conditions as the Kubernetes API conventions describe them: one per type, and
//! `lastTransitionTime` changes only when `status` does, so that "since when" stays true.

use crate::resources::Condition;

pub const READY: &str = "Ready";
pub const STALLED: &str = "Stalled";
pub const LAST_RUN_SUCCEEDED: &str = "LastRunSucceeded";
pub const DIRECTORY_SYNCED: &str = "DirectorySynced";

/// Most bytes of a message in a status (a condition's, `lastRun.message`): a status is
/// capped in size with its object and sent to every watcher, and a person reads the first
/// lines anyway.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary), ending in `...` if cut.
pub fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(3);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &text[..cut])
}

/// Sets the condition `type_` in `conditions`, keeping its transition time unless the
/// status changes. Long messages are cut to [`MAX_STATUS_MESSAGE`].
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    now: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    let new = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: bounded(message.into(), MAX_STATUS_MESSAGE),
        last_transition_time: now.to_string(),
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(old) => {
            let last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// The condition `type_`, if set.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Removes the condition `type_` (e.g. `DirectorySynced` once a set has no directory).
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let mut c = Vec::new();
        set(&mut c, READY, true, "Reconciled", "ok", "t1", Some(1));
        set(&mut c, READY, true, "Reconciled", "still ok", "t2", Some(2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, "t1");
        assert_eq!(c[0].message, "still ok");
        assert_eq!(c[0].observed_generation, Some(2));
        set(&mut c, READY, false, "Invalid", "bad", "t3", Some(3));
        assert_eq!(c[0].last_transition_time, "t3");
        assert_eq!(c[0].status, "False");
        set(&mut c, STALLED, true, "Invalid", "bad", "t4", Some(3));
        assert_eq!(c.len(), 2);
        assert_eq!(get(&c, STALLED).unwrap().last_transition_time, "t4");
        remove(&mut c, STALLED);
        assert!(get(&c, STALLED).is_none());
    }
}
