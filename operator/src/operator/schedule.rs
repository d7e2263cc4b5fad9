//! When scheduled runs are due: cron slots in a time zone, missed slots, the starting
//! deadline. Pure functions of the schedule and the clock, so that every case (daylight
//! saving changes, an operator that was down for a week) is tested without waiting.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::resources::ScheduleSpec;

/// Slots counted at most when looking for missed runs: a minutely schedule after a week of
/// downtime is 10080 slots, and counting need not be exact beyond this.
const MAX_COUNTED_SLOTS: u64 = 100_000;

/// A parsed `spec.schedule`.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses the cron expression (five fields or a macro) and the IANA time zone. The
    /// error names the field, for the `Stalled` condition.
    pub fn parse(spec: &ScheduleSpec) -> Result<Schedule, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(&spec.cron)
            .map_err(|e| format!("spec.schedule.cron {:?}: {e}", spec.cron))?;
        let zone: Tz = spec.time_zone.parse().map_err(|_| {
            format!(
                "spec.schedule.timeZone {:?} is not an IANA time zone such as Europe/Berlin",
                spec.time_zone
            )
        })?;
        Ok(Schedule { cron, zone })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last slot at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.zone), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

/// A scheduled run that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The most recent slot not yet acted on; only this one may run.
    pub slot: DateTime<Utc>,
    /// Earlier slots since the last one acted on: passed over, never run late.
    pub passed_over: u64,
    /// The slot itself is older than `startingDeadlineSeconds`: skip it too.
    pub too_late: bool,
}

/// The slot due at `now`, if any slot lies in `(since, now]`. `since` is the last slot acted
/// on (or when the profile was created). Only the most recent slot runs, so an operator
/// that was down for a week starts one run, not seven.
pub fn due(
    schedule: &Schedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    starting_deadline_seconds: Option<i64>,
) -> Option<Due> {
    let slot = schedule.latest_at_or_before(now)?;
    if slot <= since {
        return None;
    }
    let mut passed_over = 0;
    let mut t = since;
    while let Some(next) = schedule.next_after(t) {
        if next >= slot || passed_over >= MAX_COUNTED_SLOTS {
            break;
        }
        passed_over += 1;
        t = next;
    }
    let too_late =
        starting_deadline_seconds.is_some_and(|deadline| (now - slot).num_seconds() > deadline);
    Some(Due {
        slot,
        passed_over,
        too_late,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cron: &str, zone: &str) -> ScheduleSpec {
        ScheduleSpec {
            cron: cron.into(),
            time_zone: zone.into(),
            suspend: false,
            starting_deadline_seconds: None,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        crate::time::parse(s).unwrap()
    }

    fn schedule(cron: &str, zone: &str) -> Schedule {
        Schedule::parse(&spec(cron, zone)).unwrap()
    }

    #[test]
    fn next_slot_in_utc_and_in_a_zone() {
        let s = schedule("0 2 * * *", "UTC");
        assert_eq!(
            s.next_after(at("2025-01-06T10:00:00Z")),
            Some(at("2025-01-07T02:00:00Z"))
        );
        // 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
        let s = schedule("0 2 * * *", "Europe/Berlin");
        assert_eq!(
            s.next_after(at("2025-01-06T10:00:00Z")),
            Some(at("2025-01-07T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2025-07-06T10:00:00Z")),
            Some(at("2025-07-07T00:00:00Z"))
        );
        // Strictly after: a slot exactly now is not next.
        assert_eq!(
            s.next_after(at("2025-07-07T00:00:00Z")),
            Some(at("2025-07-08T00:00:00Z"))
        );
    }

    #[test]
    fn macros_and_names() {
        let s = schedule("@daily", "UTC");
        assert_eq!(
            s.next_after(at("2025-01-06T10:00:00Z")),
            Some(at("2025-01-07T00:00:00Z"))
        );
        let s = schedule("@hourly", "UTC");
        assert_eq!(
            s.next_after(at("2025-01-06T10:20:00Z")),
            Some(at("2025-01-06T11:00:00Z"))
        );
        let s = schedule("30 1 * * MON", "UTC");
        assert_eq!(
            s.next_after(at("2025-01-06T10:00:00Z")), // a Monday
            Some(at("2025-01-13T01:30:00Z"))
        );
    }

    #[test]
    fn invalid_schedules_name_the_field() {
        let e = Schedule::parse(&spec("0 2 * *", "UTC")).unwrap_err();
        assert!(e.starts_with("spec.schedule.cron"), "{e}");
        // Seconds are not part of a Kubernetes-style schedule.
        assert!(Schedule::parse(&spec("0 0 2 * * *", "UTC")).is_err());
        let e = Schedule::parse(&spec("0 2 * * *", "Mars/Olympus")).unwrap_err();
        assert!(e.starts_with("spec.schedule.timeZone"), "{e}");
    }

    #[test]
    fn spring_forward_runs_a_skipped_slot_right_after_the_change() {
        // 2025-03-30 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let next = s.next_after(at("2025-03-29T12:00:00Z")).unwrap();
        assert_eq!(next, at("2025-03-30T01:00:00Z")); // 03:00 CEST
        let after = s.next_after(next).unwrap();
        assert_eq!(after, at("2025-03-31T00:30:00Z")); // 02:30 CEST
    }

    #[test]
    fn fall_back_runs_a_repeated_slot_once() {
        // 2025-10-26 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        let next = s.next_after(at("2025-10-25T12:00:00Z")).unwrap();
        assert_eq!(next, at("2025-10-26T00:30:00Z")); // the first 02:30 (CEST)
        let after = s.next_after(next).unwrap();
        assert_eq!(after, at("2025-10-27T01:30:00Z")); // next day, 02:30 CET
                                                       // Slots are wall-clock times: the repeated 02:00 comes once, so an hourly schedule
                                                       // has one slot fewer that night (01:00 UTC is the second 02:00).
        let s = schedule("0 * * * *", "Europe/Berlin");
        let mut t = at("2025-10-25T23:30:00Z");
        let mut slots = Vec::new();
        for _ in 0..4 {
            t = s.next_after(t).unwrap();
            slots.push(t);
        }
        assert_eq!(
            slots,
            [
                at("2025-10-26T00:00:00Z"),
                at("2025-10-26T02:00:00Z"),
                at("2025-10-26T03:00:00Z"),
                at("2025-10-26T04:00:00Z"),
            ]
        );
    }

    #[test]
    fn nothing_due_before_the_next_slot() {
        let s = schedule("0 2 * * *", "UTC");
        assert_eq!(
            due(
                &s,
                at("2025-01-06T02:00:00Z"),
                at("2025-01-07T01:59:59Z"),
                None
            ),
            None
        );
        // A slot already acted on is not due again.
        assert_eq!(
            due(
                &s,
                at("2025-01-07T02:00:00Z"),
                at("2025-01-07T02:00:30Z"),
                None
            ),
            None
        );
    }

    #[test]
    fn a_slot_is_due_from_its_time_on() {
        let s = schedule("0 2 * * *", "UTC");
        assert_eq!(
            due(
                &s,
                at("2025-01-06T02:00:00Z"),
                at("2025-01-07T02:00:00Z"),
                None
            ),
            Some(Due {
                slot: at("2025-01-07T02:00:00Z"),
                passed_over: 0,
                too_late: false
            })
        );
    }

    #[test]
    fn after_downtime_only_the_most_recent_slot_runs() {
        let s = schedule("0 2 * * *", "UTC");
        // Down from before the 7th's slot until after the 13th's: seven slots passed.
        let d = due(
            &s,
            at("2025-01-06T02:00:00Z"),
            at("2025-01-13T09:00:00Z"),
            None,
        )
        .unwrap();
        assert_eq!(d.slot, at("2025-01-13T02:00:00Z"));
        assert_eq!(d.passed_over, 6);
        assert!(!d.too_late);
    }

    #[test]
    fn starting_deadline_skips_a_late_slot() {
        let s = schedule("0 2 * * *", "UTC");
        let since = at("2025-01-06T02:00:00Z");
        let d = due(&s, since, at("2025-01-07T02:05:00Z"), Some(600)).unwrap();
        assert!(!d.too_late);
        let d = due(&s, since, at("2025-01-07T02:10:01Z"), Some(600)).unwrap();
        assert!(d.too_late);
    }

    #[test]
    fn counting_passed_slots_is_bounded() {
        let s = schedule("* * * * *", "UTC");
        let d = due(
            &s,
            at("2020-01-01T00:00:00Z"),
            at("2025-01-01T00:00:00Z"),
            None,
        )
        .unwrap();
        assert_eq!(d.passed_over, MAX_COUNTED_SLOTS);
    }
}
