//! Pure pieces of a run's life: splitting mailboxes into Job indexes, reading a Job's
//! progress, and choosing which finished runs' Jobs to delete.

use crate::protocol::RunResult;
use crate::resources::{ActiveRun, RunSummary};

/// Mailboxes per Job index (shard) to aim for: small shards report progress often and
/// retry little when one pod fails, many shards cost a pod each.
const MAILBOXES_PER_SHARD: usize = 10;
/// Most shards of one run. Each shard is a pod (or more, with retries) and an entry of
/// the shard sizes annotation: beyond 2,000 mailboxes shards grow with the set instead,
/// so that 100,000 mailboxes make 200 pods of 500 mailboxes, not 10,000 pods.
const MAX_SHARDS: usize = 200;

/// How many shards `mailboxes` mailboxes are split into: enough that every parallel pod
/// has one, about [`MAILBOXES_PER_SHARD`] each, at most [`MAX_SHARDS`].
pub fn shard_count(mailboxes: usize, max_parallel: u32) -> usize {
    mailboxes
        .div_ceil(MAILBOXES_PER_SHARD)
        .max(mailboxes.min(max_parallel as usize))
        .clamp(1, MAX_SHARDS)
}

/// Deals `items` round-robin into `shards` lists, so that shards differ by at most one.
pub fn shard<T>(items: Vec<T>, shards: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        out[i % shards].push(item);
    }
    out
}

/// The indexes in a Job's `completedIndexes` / `failedIndexes` (`"1,3-5"`).
pub fn parse_indexes(s: &str) -> Vec<u32> {
    s.split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<u32>>()),
                None => part.parse().ok().map(|n| vec![n]),
            }
        })
        .flatten()
        .collect()
}

/// `status.activeRun` from the Job's progress.
pub fn active_run(
    name: &str,
    start_time: Option<String>,
    shard_sizes: &[u64],
    completed_indexes: &str,
    failed_indexes: &str,
) -> ActiveRun {
    let size = |i: u32| shard_sizes.get(i as usize).copied().unwrap_or(0);
    let mailboxes = shard_sizes.iter().sum();
    let mailboxes_done = parse_indexes(completed_indexes).into_iter().map(size).sum();
    let mailboxes_failed = parse_indexes(failed_indexes).into_iter().map(size).sum();
    ActiveRun {
        name: name.to_string(),
        start_time,
        mailboxes,
        mailboxes_done,
        mailboxes_failed,
        progress: progress(mailboxes, mailboxes_done, mailboxes_failed),
    }
}

/// `status.activeRun.progress`: `120/400 mailboxes`, and `, 3 failed` when some did.
fn progress(mailboxes: u64, done: u64, failed: u64) -> String {
    let unit = if mailboxes == 1 {
        "mailbox"
    } else {
        "mailboxes"
    };
    let finished = done.saturating_add(failed);
    match failed {
        0 => format!("{finished}/{mailboxes} {unit}"),
        _ => format!("{finished}/{mailboxes} {unit}, {failed} failed"),
    }
}

/// `status.runs` with `latest` added in front (replacing an entry of the same name, should
/// a run be recorded twice), keeping as many as both history limits (at least one), so that
/// every Job still kept has its record.
pub fn add_run(
    runs: &[RunSummary],
    latest: RunSummary,
    succeeded: u32,
    failed: u32,
) -> Vec<RunSummary> {
    let keep = (succeeded as usize + failed as usize).max(1);
    let older = runs
        .iter()
        .filter(|r| r.name != latest.name)
        .cloned()
        .collect::<Vec<_>>();
    std::iter::once(latest).chain(older).take(keep).collect()
}

/// A finished run's Job, for [`to_prune`].
#[derive(Clone, Debug)]
pub struct FinishedJob {
    pub name: String,
    /// RFC 3339; names sort runs of the same kind, but manual and scheduled runs mix.
    pub creation_time: String,
}

/// The finished Jobs to delete: beyond the newest `succeeded` that succeeded and the newest
/// `failed` that did not. Only Jobs whose results are recorded in `runs` are candidates, so
/// that no run's outcome is lost by pruning it before it was read.
pub fn to_prune(
    jobs: &[FinishedJob],
    runs: &[RunSummary],
    succeeded: u32,
    failed: u32,
) -> Vec<String> {
    let mut recorded: Vec<(&FinishedJob, RunResult)> = jobs
        .iter()
        .filter_map(|j| {
            runs.iter()
                .find(|r| r.name == j.name)
                .map(|r| (j, r.result))
        })
        .collect();
    recorded.sort_by(|a, b| {
        b.0.creation_time
            .cmp(&a.0.creation_time)
            .then(b.0.name.cmp(&a.0.name))
    });
    let mut kept_ok = 0;
    let mut kept_failed = 0;
    let mut prune = Vec::new();
    for (job, result) in recorded {
        let (kept, limit) = if result == RunResult::Succeeded {
            (&mut kept_ok, succeeded)
        } else {
            (&mut kept_failed, failed)
        };
        if *kept < limit {
            *kept += 1;
        } else {
            prune.push(job.name.clone());
        }
    }
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Totals;

    #[test]
    fn shard_counts() {
        assert_eq!(shard_count(0, 4), 1);
        assert_eq!(shard_count(3, 4), 3);
        assert_eq!(shard_count(10, 4), 4);
        assert_eq!(shard_count(100, 4), 10);
        assert_eq!(shard_count(101, 4), 11);
        assert_eq!(shard_count(1_000_000, 4), MAX_SHARDS);
    }

    #[test]
    fn sharding_is_round_robin_and_loses_nothing() {
        let shards = shard((0..10).collect(), 4);
        assert_eq!(
            shards,
            vec![vec![0, 4, 8], vec![1, 5, 9], vec![2, 6], vec![3, 7]]
        );
    }

    #[test]
    fn indexes() {
        assert_eq!(parse_indexes("1,3-5,9"), [1, 3, 4, 5, 9]);
        assert_eq!(parse_indexes(""), Vec::<u32>::new());
        let a = active_run("r", None, &[3, 3, 2, 2], "0,2-3", "1");
        assert_eq!(
            (a.mailboxes, a.mailboxes_done, a.mailboxes_failed),
            (10, 7, 3)
        );
        assert_eq!(a.progress, "10/10 mailboxes, 3 failed");
    }

    #[test]
    fn progress_counts_finished_shards_of_all() {
        let started = active_run("r", None, &[10, 10, 10, 10], "", "");
        assert_eq!(started.progress, "0/40 mailboxes");
        let running = active_run("r", None, &[10, 10, 10, 10], "0,2", "");
        assert_eq!(running.progress, "20/40 mailboxes");
        let one = active_run("r", None, &[1], "", "");
        assert_eq!(one.progress, "0/1 mailbox");
        // An index the Job reports that the run never had (a stale annotation) counts 0.
        let stale = active_run("r", None, &[5], "0,7", "9");
        assert_eq!(stale.progress, "5/5 mailboxes");
    }

    fn summary(name: &str, result: RunResult) -> RunSummary {
        RunSummary {
            name: name.into(),
            result,
            start_time: None,
            completion_time: None,
            totals: Totals::default(),
        }
    }

    fn job(name: &str, t: &str) -> FinishedJob {
        FinishedJob {
            name: name.into(),
            creation_time: t.into(),
        }
    }

    #[test]
    fn runs_keep_both_history_limits() {
        let runs: Vec<_> = (0..6)
            .map(|i| summary(&format!("r{i}"), RunResult::Succeeded))
            .collect();
        let new = add_run(&runs, summary("new", RunResult::Failed), 2, 1);
        let names: Vec<_> = new.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["new", "r0", "r1"]);
        assert_eq!(add_run(&[], summary("x", RunResult::Failed), 0, 0).len(), 1);
    }

    #[test]
    fn pruning_keeps_the_newest_of_each_kind_and_unrecorded_jobs() {
        let jobs = [
            job("a", "2025-01-01T00:00:00Z"),
            job("b", "2025-01-02T00:00:00Z"),
            job("c", "2025-01-03T00:00:00Z"),
            job("d", "2025-01-04T00:00:00Z"),
            job("e", "2025-01-05T00:00:00Z"),
            job("unrecorded", "2024-01-01T00:00:00Z"),
        ];
        let runs = [
            summary("e", RunResult::Succeeded),
            summary("d", RunResult::Failed),
            summary("c", RunResult::Succeeded),
            summary("b", RunResult::PartiallyFailed),
            summary("a", RunResult::Succeeded),
        ];
        let mut pruned = to_prune(&jobs, &runs, 2, 1);
        pruned.sort();
        assert_eq!(pruned, ["a", "b"]);
        assert_eq!(to_prune(&jobs, &runs, 0, 0).len(), 5);
    }
}
