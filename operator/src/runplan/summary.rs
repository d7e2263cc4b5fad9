//! What a worker pod reports back: a compact summary of its shard as the container's
//! termination message (which Kubernetes caps at 4096 bytes), and adding those up into
//! the run's `status.lastRun`. The full protocol goes to the archive store instead: it can
//! be any size, and the store is where the archive's history belongs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::{RunProtocol, RunResult, Totals};
use crate::resources::{FailedMailbox, LastRun};

/// Most bytes of a termination message; Kubernetes keeps 4096.
pub const MAX_MESSAGE_BYTES: usize = 4000;
/// Most failed mailboxes listed in `status.lastRun`.
pub const MAX_FAILED_MAILBOXES: usize = 50;
/// Most characters of one failure reason.
const MAX_REASON_CHARS: usize = 200;

/// One shard's outcome, as its pod's termination message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardSummary {
    pub index: u32,
    pub result: RunResult,
    pub totals: Totals,
    /// Failed mailboxes with their first error, as many as fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedMailbox>,
    /// Failed mailboxes left out of `failed` to keep the message small.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_omitted: u64,
    /// The store key of the shard's full protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Why the shard did not run at all (an unreadable plan, a store that cannot be
    /// opened); its mailboxes then count as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ShardSummary {
    pub fn from_protocol(index: u32, protocol: &RunProtocol, key: Option<String>) -> Self {
        let failed = protocol
            .mailboxes
            .iter()
            .filter(|m| m.result != RunResult::Succeeded)
            .map(|m| FailedMailbox {
                mailbox: m.mailbox.clone(),
                reason: m
                    .errors
                    .first()
                    .map(|e| truncate(&e.message, MAX_REASON_CHARS))
                    .unwrap_or_else(|| format!("{} messages failed", m.failed)),
            })
            .collect();
        ShardSummary {
            index,
            result: protocol.result,
            totals: protocol.totals.clone(),
            failed,
            failed_omitted: 0,
            protocol: key,
            error: None,
        }
    }

    /// The summary of a shard that could not run.
    pub fn not_run(index: u32, error: String) -> Self {
        ShardSummary {
            index,
            result: RunResult::Failed,
            totals: Totals::default(),
            failed: Vec::new(),
            failed_omitted: 0,
            protocol: None,
            error: Some(truncate(&error, MAX_REASON_CHARS * 4)),
        }
    }

    /// The summary as JSON of at most [`MAX_MESSAGE_BYTES`], dropping failed mailboxes
    /// from the end (and counting them) until it fits.
    pub fn to_message(&self) -> String {
        let mut summary = self.clone();
        loop {
            let json = serde_json::to_string(&summary).expect("summaries serialize");
            if json.len() <= MAX_MESSAGE_BYTES || summary.failed.is_empty() {
                return json;
            }
            summary.failed.pop();
            summary.failed_omitted += 1;
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

/// Times and place of a finished run, for [`aggregate`].
pub struct RunFacts<'a> {
    pub name: &'a str,
    pub start_time: Option<String>,
    pub completion_time: Option<String>,
    /// How many mailboxes each shard (Job index) had.
    pub shard_sizes: &'a [u64],
    /// Where the shards' protocols are.
    pub protocol_ref: Option<String>,
    /// Why shards without a summary reported nothing, when the operator knows (a run it
    /// stopped because none of its pods could run).
    pub missing_reason: Option<String>,
}

/// The run's record from its shards' summaries. A shard without a summary (its pod was
/// deleted, evicted or killed before it could write one) counts all its mailboxes as
/// failed: a run never looks better than what is known.
pub fn aggregate(facts: &RunFacts<'_>, summaries: &BTreeMap<u32, ShardSummary>) -> LastRun {
    let mut totals = Totals::default();
    let mut failed_mailboxes = Vec::new();
    let mut omitted = 0;
    let mut all_failed = true;
    for (index, size) in facts.shard_sizes.iter().enumerate() {
        let index = index as u32;
        let mut missing = *size;
        let mut reason = match &facts.missing_reason {
            Some(reason) => reason.clone(),
            None => "the worker reported no result (its pod was deleted, evicted or killed, \
                     or could not start)"
                .to_string(),
        };
        if let Some(s) = summaries.get(&index) {
            missing = size.saturating_sub(s.totals.mailboxes);
            if let Some(error) = &s.error {
                reason = error.clone();
            }
            totals.add(&s.totals);
            all_failed &= s.result == RunResult::Failed;
            failed_mailboxes.extend(s.failed.iter().cloned());
            omitted += s.failed_omitted;
        }
        if missing > 0 {
            totals.mailboxes += missing;
            totals.mailboxes_failed += missing;
            failed_mailboxes.push(FailedMailbox {
                mailbox: format!("shard {index} ({missing} mailboxes)"),
                reason,
            });
        }
    }
    let result = if totals.mailboxes_failed == 0 {
        RunResult::Succeeded
    } else if all_failed {
        RunResult::Failed
    } else {
        RunResult::PartiallyFailed
    };
    let listed = failed_mailboxes.len() as u64 + omitted;
    failed_mailboxes.truncate(MAX_FAILED_MAILBOXES);
    // The status keeps the start of each reason; the protocols have them whole.
    for failed in &mut failed_mailboxes {
        failed.reason = truncate(&failed.reason, MAX_REASON_CHARS * 2);
    }
    let left_out = listed - failed_mailboxes.len() as u64;
    LastRun {
        name: facts.name.to_string(),
        start_time: facts.start_time.clone(),
        completion_time: facts.completion_time.clone(),
        result,
        message: (left_out > 0)
            .then(|| format!("{left_out} more failed mailboxes are only in the protocols")),
        totals,
        failed_mailboxes,
        protocol_ref: facts.protocol_ref.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MailboxProtocol, ProtocolError};

    fn protocol(mailboxes: Vec<MailboxProtocol>) -> RunProtocol {
        let mut p = RunProtocol {
            profile: "p".into(),
            namespace: "mail".into(),
            run_id: "p-202501010200".into(),
            start_time: String::new(),
            completion_time: String::new(),
            result: RunResult::Succeeded,
            store: "/srv".into(),
            totals: Totals::default(),
            mailboxes,
            warnings: vec![],
        };
        p.settle();
        p
    }

    fn ok(name: &str, archived: u64) -> MailboxProtocol {
        MailboxProtocol {
            archived,
            bytes: archived * 1000,
            ..MailboxProtocol::new(name, name)
        }
    }

    fn failed(name: &str, message: &str) -> MailboxProtocol {
        let mut m = MailboxProtocol::new(name, name);
        m.errors.push(ProtocolError {
            folder: None,
            uid: None,
            message: message.into(),
        });
        m.settle(true);
        m
    }

    #[test]
    fn summary_lists_failed_mailboxes_with_their_first_error() {
        let p = protocol(vec![ok("a@x", 3), failed("b@x", "login as b failed: NO")]);
        let s = ShardSummary::from_protocol(2, &p, Some("runs/mail/p/p-1-2.json".into()));
        assert_eq!(s.result, RunResult::PartiallyFailed);
        assert_eq!(s.totals.archived, 3);
        assert_eq!(
            s.failed,
            [FailedMailbox {
                mailbox: "b@x".into(),
                reason: "login as b failed: NO".into()
            }]
        );
        let back: ShardSummary = serde_json::from_str(&s.to_message()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn summary_fits_a_termination_message() {
        let long = "e".repeat(5000);
        let mailboxes = (0..500)
            .map(|i| {
                failed(
                    &format!("user{i:04}@a-rather-long-domain.example.org"),
                    &long,
                )
            })
            .collect();
        let s = ShardSummary::from_protocol(0, &protocol(mailboxes), None);
        let message = s.to_message();
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        let back: ShardSummary = serde_json::from_str(&message).unwrap();
        assert_eq!(back.failed.len() as u64 + back.failed_omitted, 500);
        assert!(back.failed[0].reason.chars().count() <= MAX_REASON_CHARS);
        assert_eq!(back.totals.mailboxes_failed, 500);
    }

    fn facts(sizes: &[u64]) -> RunFacts<'_> {
        RunFacts {
            name: "p-202501010200",
            start_time: Some("2025-01-01T02:00:00Z".into()),
            completion_time: Some("2025-01-01T02:10:00Z".into()),
            shard_sizes: sizes,
            protocol_ref: Some("/srv/runs/mail/p/p-202501010200-*.json".into()),
            missing_reason: None,
        }
    }

    #[test]
    fn aggregate_adds_up_shards() {
        let s0 = ShardSummary::from_protocol(0, &protocol(vec![ok("a", 2), ok("b", 3)]), None);
        let mut dry = ok("c", 4);
        dry.would_delete = 7;
        let s1 = ShardSummary::from_protocol(1, &protocol(vec![dry]), None);
        let run = aggregate(&facts(&[2, 1]), &BTreeMap::from([(0, s0), (1, s1)]));
        assert_eq!(run.result, RunResult::Succeeded);
        assert_eq!(run.totals.mailboxes, 3);
        assert_eq!(run.totals.archived, 9);
        assert_eq!(run.totals.bytes, 9000);
        // Every count adds up, what the deletion rules would delete too.
        assert_eq!(run.totals.would_delete, 7);
        assert!(run.failed_mailboxes.is_empty());
        assert_eq!(run.message, None);
    }

    #[test]
    fn a_missing_shard_counts_as_failed() {
        let s0 = ShardSummary::from_protocol(0, &protocol(vec![ok("a", 2)]), None);
        let run = aggregate(&facts(&[1, 3]), &BTreeMap::from([(0, s0)]));
        assert_eq!(run.result, RunResult::PartiallyFailed);
        assert_eq!(run.totals.mailboxes, 4);
        assert_eq!(run.totals.mailboxes_failed, 3);
        assert_eq!(run.failed_mailboxes[0].mailbox, "shard 1 (3 mailboxes)");
        let run = aggregate(&facts(&[1, 3]), &BTreeMap::new());
        assert_eq!(run.result, RunResult::Failed);
        let bad = ShardSummary::not_run(1, "the plan is unreadable".into());
        let back: ShardSummary = serde_json::from_str(&bad.to_message()).unwrap();
        let run = aggregate(&facts(&[0, 3]), &BTreeMap::from([(1, back)]));
        assert_eq!(run.result, RunResult::Failed);
        assert_eq!(run.totals.mailboxes_failed, 3);
        assert_eq!(run.failed_mailboxes[0].reason, "the plan is unreadable");
    }

    #[test]
    fn failed_shards_make_a_failed_run_and_the_list_is_capped() {
        let shard = |i: u32| {
            let mailboxes = (0..30)
                .map(|m| failed(&format!("u{i}-{m}"), "down"))
                .collect();
            ShardSummary::from_protocol(i, &protocol(mailboxes), None)
        };
        let run = aggregate(
            &facts(&[30, 30]),
            &BTreeMap::from([(0, shard(0)), (1, shard(1))]),
        );
        assert_eq!(run.result, RunResult::Failed);
        assert_eq!(run.failed_mailboxes.len(), MAX_FAILED_MAILBOXES);
        assert_eq!(
            run.message.as_deref(),
            Some("10 more failed mailboxes are only in the protocols")
        );
    }
}
