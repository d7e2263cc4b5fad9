//! The run protocol: what a run did, per mailbox and folder, in the JSON shape users and the
//! operator read, and as a table for people.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunResult {
    Succeeded,
    PartiallyFailed,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunProtocol {
    pub profile: String,
    pub namespace: String,
    pub run_id: String,
    pub start_time: String,
    pub completion_time: String,
    pub result: RunResult,
    /// Where the archive is.
    pub store: String,
    pub totals: Totals,
    pub mailboxes: Vec<MailboxProtocol>,
    /// Things a person should know, such as disabled certificate checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Also the totals of `ArchiveProfile.status.lastRun` and `status.runs`, so that the CLI and
/// the operator report the same numbers under the same names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Mailboxes in the run.
    pub mailboxes: u64,
    /// Of those, mailboxes that failed.
    pub mailboxes_failed: u64,
    /// Messages newly archived.
    pub archived: u64,
    /// Messages found already in the archive (not downloaded again).
    pub already_archived: u64,
    /// Messages that could not be archived.
    pub failed: u64,
    /// Messages deleted from the server after archiving (`deletion.mode: AfterArchiving`).
    pub deleted: u64,
    /// Bytes of the newly archived messages.
    pub bytes: u64,
    /// Messages left out by the profile's filter (too old, too young, too large).
    pub skipped: u64,
    /// With `--dry-run-deletion`: what the deletion rules would have deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub would_delete: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Totals {
    /// Adds `other` in: the one place totals are summed, for a run's mailboxes and for an
    /// operator run's shards alike.
    pub fn add(&mut self, other: &Totals) {
        self.mailboxes += other.mailboxes;
        self.mailboxes_failed += other.mailboxes_failed;
        self.archived += other.archived;
        self.already_archived += other.already_archived;
        self.failed += other.failed;
        self.deleted += other.deleted;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
        self.would_delete += other.would_delete;
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MailboxProtocol {
    /// The mailbox label: its email address, else the IMAP user name.
    pub mailbox: String,
    /// The archive user it was stored into.
    pub user: String,
    pub result: RunResult,
    pub archived: u64,
    pub already_archived: u64,
    pub failed: u64,
    pub deleted: u64,
    pub bytes: u64,
    pub skipped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub would_delete: u64,
    pub folders: Vec<FolderProtocol>,
    pub errors: Vec<ProtocolError>,
    /// Things that did not fail the mailbox but that a person should know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The server rejected the login: a wrong password, which no retry fixes. Not part of
    /// the JSON protocol; the operator's worker chooses its exit code by it.
    #[serde(skip)]
    pub login_rejected: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FolderProtocol {
    pub name: String,
    pub archived: u64,
    pub already_archived: u64,
    pub failed: u64,
    pub skipped: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub deleted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub would_delete: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolError {
    pub folder: Option<String>,
    pub uid: Option<u32>,
    pub message: String,
}

impl MailboxProtocol {
    pub fn new(mailbox: &str, user: &str) -> Self {
        MailboxProtocol {
            mailbox: mailbox.to_string(),
            user: user.to_string(),
            result: RunResult::Succeeded,
            archived: 0,
            already_archived: 0,
            failed: 0,
            deleted: 0,
            bytes: 0,
            skipped: 0,
            would_delete: 0,
            folders: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
            login_rejected: false,
        }
    }

    /// Adds a folder's counts to the mailbox's (and to the folder's, when it is listed
    /// already: archived again after the deletion pass).
    pub fn add_folder(&mut self, folder: FolderProtocol) {
        self.archived += folder.archived;
        self.already_archived += folder.already_archived;
        self.failed += folder.failed;
        self.skipped += folder.skipped;
        self.bytes += folder.bytes;
        match self.folders.iter_mut().find(|f| f.name == folder.name) {
            Some(listed) => {
                listed.archived += folder.archived;
                listed.already_archived += folder.already_archived;
                listed.failed += folder.failed;
                listed.skipped += folder.skipped;
                listed.bytes += folder.bytes;
            }
            None => self.folders.push(folder),
        }
    }

    /// Adds a folder's deletion counts (the deletion pass runs after every folder was
    /// archived, so the folder is already listed).
    pub fn add_deletions(&mut self, folder: &str, deleted: u64, would_delete: u64) {
        self.deleted += deleted;
        self.would_delete += would_delete;
        if let Some(f) = self.folders.iter_mut().find(|f| f.name == folder) {
            f.deleted += deleted;
            f.would_delete += would_delete;
        }
    }

    /// The mailbox's counts as the totals of a run of this one mailbox.
    pub fn totals(&self) -> Totals {
        Totals {
            mailboxes: 1,
            mailboxes_failed: u64::from(self.result != RunResult::Succeeded),
            archived: self.archived,
            already_archived: self.already_archived,
            failed: self.failed,
            deleted: self.deleted,
            bytes: self.bytes,
            skipped: self.skipped,
            would_delete: self.would_delete,
        }
    }

    /// Failed when the mailbox could not be archived at all (no login, store down);
    /// partially failed when some folders or messages failed.
    pub fn settle(&mut self, fatal: bool) {
        self.result = if fatal {
            RunResult::Failed
        } else if self.errors.is_empty() && self.failed == 0 {
            RunResult::Succeeded
        } else {
            RunResult::PartiallyFailed
        };
    }
}

impl RunProtocol {
    /// Totals and the overall result from the mailboxes.
    pub fn settle(&mut self) {
        let mut t = Totals::default();
        for m in &self.mailboxes {
            t.add(&m.totals());
        }
        self.result = if t.mailboxes_failed == 0 {
            RunResult::Succeeded
        } else if t.mailboxes_failed == t.mailboxes
            && self.mailboxes.iter().all(|m| m.result == RunResult::Failed)
        {
            RunResult::Failed
        } else {
            RunResult::PartiallyFailed
        };
        self.totals = t;
    }

    /// A table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} of profile {}/{}: {:?}",
            self.run_id, self.namespace, self.profile, self.result
        );
        let _ = writeln!(out, "Store: {}", self.store);
        for w in &self.warnings {
            let _ = writeln!(out, "Warning: {w}");
        }
        for m in &self.mailboxes {
            for w in &m.warnings {
                let _ = writeln!(out, "Warning: {}: {w}", m.mailbox);
            }
        }
        if self.totals.would_delete > 0 {
            let _ = writeln!(
                out,
                "Dry run: the deletion rules would have deleted {} messages",
                self.totals.would_delete
            );
        }
        let _ = writeln!(out);
        let width = self
            .mailboxes
            .iter()
            .map(|m| m.mailbox.chars().count())
            .chain([7])
            .max()
            .unwrap_or(7);
        let _ = writeln!(
            out,
            "{:<width$}  {:<15}  {:>8}  {:>8}  {:>6}  {:>7}  {:>7}  {:>10}",
            "MAILBOX", "RESULT", "ARCHIVED", "ALREADY", "FAILED", "SKIPPED", "DELETED", "BYTES"
        );
        for m in &self.mailboxes {
            let _ = writeln!(
                out,
                "{:<width$}  {:<15}  {:>8}  {:>8}  {:>6}  {:>7}  {:>7}  {:>10}",
                m.mailbox,
                format!("{:?}", m.result),
                m.archived,
                m.already_archived,
                m.failed,
                m.skipped,
                m.deleted,
                m.bytes
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{:<width$}  {:<15}  {:>8}  {:>8}  {:>6}  {:>7}  {:>7}  {:>10}",
            "TOTAL",
            format!("{}/{} ok", t.mailboxes - t.mailboxes_failed, t.mailboxes),
            t.archived,
            t.already_archived,
            t.failed,
            t.skipped,
            t.deleted,
            t.bytes
        );
        let errors: Vec<_> = self
            .mailboxes
            .iter()
            .flat_map(|m| m.errors.iter().map(move |e| (m, e)))
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(out, "\nErrors:");
            for (m, e) in errors {
                let place = match (&e.folder, e.uid) {
                    (Some(f), Some(uid)) => format!(" [{f} UID {uid}]"),
                    (Some(f), None) => format!(" [{f}]"),
                    _ => String::new(),
                };
                let _ = writeln!(out, "  {}{place}: {}", m.mailbox, e.message);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(result: RunResult, archived: u64) -> MailboxProtocol {
        MailboxProtocol {
            result,
            archived,
            ..MailboxProtocol::new("a@example.org", "a")
        }
    }

    fn run(mailboxes: Vec<MailboxProtocol>) -> RunProtocol {
        let mut p = RunProtocol {
            profile: "p".into(),
            namespace: "default".into(),
            run_id: "r".into(),
            start_time: String::new(),
            completion_time: String::new(),
            result: RunResult::Failed,
            store: "s".into(),
            totals: Totals::default(),
            mailboxes,
            warnings: vec![],
        };
        p.settle();
        p
    }

    #[test]
    fn results_and_totals() {
        let p = run(vec![
            mailbox(RunResult::Succeeded, 3),
            mailbox(RunResult::Succeeded, 4),
        ]);
        assert_eq!(
            (p.result, p.totals.archived, p.totals.mailboxes_failed),
            (RunResult::Succeeded, 7, 0)
        );
        let p = run(vec![
            mailbox(RunResult::Succeeded, 3),
            mailbox(RunResult::Failed, 0),
        ]);
        assert_eq!(
            (p.result, p.totals.mailboxes_failed),
            (RunResult::PartiallyFailed, 1)
        );
        let p = run(vec![
            mailbox(RunResult::Failed, 0),
            mailbox(RunResult::Failed, 0),
        ]);
        assert_eq!(p.result, RunResult::Failed);
        let p = run(vec![mailbox(RunResult::PartiallyFailed, 1)]);
        assert_eq!(p.result, RunResult::PartiallyFailed);
    }

    #[test]
    fn totals_count_every_field() {
        let mut m = mailbox(RunResult::PartiallyFailed, 2);
        (
            m.already_archived,
            m.failed,
            m.deleted,
            m.bytes,
            m.skipped,
            m.would_delete,
        ) = (3, 4, 5, 6, 7, 8);
        let p = run(vec![m.clone(), m]);
        let t = &p.totals;
        assert_eq!(
            [
                t.mailboxes,
                t.mailboxes_failed,
                t.archived,
                t.already_archived,
                t.failed,
                t.deleted,
                t.bytes,
                t.skipped,
                t.would_delete
            ],
            [2, 2, 4, 6, 8, 10, 12, 14, 16]
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let p = run(vec![mailbox(RunResult::Succeeded, 1)]);
        let v = serde_json::to_value(&p).unwrap();
        for key in [
            "profile",
            "runId",
            "startTime",
            "completionTime",
            "result",
            "totals",
            "mailboxes",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for key in [
            "mailboxes",
            "mailboxesFailed",
            "archived",
            "alreadyArchived",
            "failed",
            "deleted",
            "bytes",
        ] {
            assert!(v["totals"].get(key).is_some(), "{key}");
        }
        for key in [
            "mailbox",
            "user",
            "result",
            "archived",
            "alreadyArchived",
            "failed",
            "deleted",
            "bytes",
            "folders",
            "errors",
        ] {
            assert!(v["mailboxes"][0].get(key).is_some(), "{key}");
        }
        assert_eq!(v["result"], "Succeeded");
    }
}
