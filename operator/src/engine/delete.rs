//! The deletion pass: removing archived mail from the server, where an archive that loses
//! mail would do the most harm. A message is deleted only when all of these hold:
//!
//! - the profile asks for it (`deletion.mode: AfterArchiving`) and its rules match
//!   (age, flagged, unread, not already `\Deleted` by the user);
//! - its whole mailbox was archived in this run without any error;
//! - the archive holds an index entry for exactly this UID, written for this server and
//!   login, under the folder's current UIDVALIDITY, and the server's message there has that
//!   entry's size and INTERNALDATE: it is the archived message, not one that took its UID
//!   (another mailbox's, a restored backup's);
//! - the stored copy, read back from the storage medium now (not from a cache), hashes to
//!   that entry's SHA-256;
//! - the server supports UIDPLUS, so that `UID EXPUNGE` removes only our messages.
//!
//! A message that fails any of the archive's checks is kept, named in a warning, and
//! archived again by the caller.

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{identity, FolderFailure, FolderJob};
use crate::imap::{MessageMeta, Session};
use crate::resources::{DeletionMode, DeletionSpec};
use crate::store::UidSet;

/// Stored copies read back and re-hashed at once (several reads in flight for a store with
/// latency; hashing off the async threads).
const READ_BACKS: usize = 8;

/// Whether the rules allow deleting a message with this size, date and flags.
pub fn deletable(meta: &MessageMeta, rules: &DeletionSpec, now: DateTime<Utc>) -> bool {
    if rules.mode != DeletionMode::AfterArchiving {
        return false;
    }
    let has = |flag: &str| meta.flags.iter().any(|f| f.eq_ignore_ascii_case(flag));
    if has("\\Deleted")
        || (rules.keep_flagged && has("\\Flagged"))
        || (rules.keep_unread && !has("\\Seen"))
    {
        return false;
    }
    match (rules.older_than_days, meta.internal_date) {
        (None, _) => true,
        (Some(days), Some(date)) => {
            now.signed_duration_since(date) >= Duration::days(i64::from(days))
        }
        // An age rule cannot be checked without a date: keep the message.
        (Some(_), None) => false,
    }
}

/// What the pass did in one folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub deleted: u64,
    pub would_delete: u64,
    /// Messages the rules would delete but the archive could not prove it holds.
    pub suspects: UidSet,
    /// Why, one line per kind of failure.
    pub reasons: Vec<String>,
}

/// Why a message is not proven archived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Doubt {
    NoEntry,
    Differs,
    Missing,
    Damaged,
}

impl Doubt {
    fn describe(self) -> &'static str {
        match self {
            Doubt::NoEntry => "no index entry of this server and login for the UID",
            Doubt::Differs => "the server's message differs in size or date from the archived one",
            Doubt::Missing => "the stored copy is missing",
            Doubt::Damaged => "the stored copy does not hash to its SHA-256",
        }
    }
}

/// Deletes (or, in a dry run, counts) the folder's archived messages that the rules allow
/// and the archive proves it holds.
pub(super) async fn delete_archived(
    session: &mut Session,
    job: &FolderJob<'_>,
    rules: &DeletionSpec,
    dry_run: bool,
) -> Result<Deleted, FolderFailure> {
    let archive = job.archive;
    let loaded = archive.load_state(&job.key, job.source).await?;
    if loaded.replaced.is_some() {
        // Another source wrote the folder's state since it was archived: nothing here is
        // proven.
        return Ok(Deleted::default());
    }
    let state = loaded.state;
    let status = if dry_run {
        session.examine(&job.folder).await?
    } else {
        session.select(&job.folder).await?
    };
    if status.uid_validity != state.uid_validity || status.exists == 0 {
        return Ok(Deleted::default());
    }
    // Flags, sizes and dates as they are now, not as they were when archived.
    let candidates: Vec<MessageMeta> = session
        .messages(true)
        .await?
        .into_iter()
        .filter(|m| state.archived.contains(m.uid) && deletable(m, rules, job.now))
        .collect();
    if candidates.is_empty() {
        return Ok(Deleted::default());
    }
    // Whatever is still in flight reaches the medium before it is read back from there.
    archive.sync().await?;
    let entries = archive.folder_identities(&job.key).await?;
    let latest = identity::latest_entries(
        &entries,
        job.source,
        state.legacy_entries,
        state.uid_validity,
        &job.key.folder,
    );
    let mut doubts: Vec<(u32, Doubt)> = Vec::new();
    let mut to_read = Vec::new();
    for meta in &candidates {
        match latest.get(&meta.uid) {
            None => doubts.push((meta.uid, Doubt::NoEntry)),
            Some(entry) if meta.internal_date.is_none() || !identity::same_message(entry, meta) => {
                doubts.push((meta.uid, Doubt::Differs))
            }
            Some(entry) => to_read.push((meta.uid, entry.sha256.clone())),
        }
    }
    let mut read = futures::stream::iter(to_read)
        .map(|(uid, sha256)| async move {
            let Some(bytes) = archive.read_back_message(&sha256).await? else {
                return Ok((uid, Some(Doubt::Missing)));
            };
            let intact =
                tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)) == sha256)
                    .await
                    .expect("hashing does not panic");
            Ok::<_, crate::store::StoreError>((uid, (!intact).then_some(Doubt::Damaged)))
        })
        .buffered(READ_BACKS);
    let mut verified = Vec::new();
    while let Some(result) = read.next().await {
        match result? {
            (uid, None) => verified.push(uid),
            (uid, Some(doubt)) => doubts.push((uid, doubt)),
        }
    }
    drop(read);
    let mut kinds: Vec<Doubt> = doubts.iter().map(|&(_, d)| d).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut deleted = Deleted {
        suspects: doubts.iter().map(|&(uid, _)| uid).collect(),
        reasons: kinds
            .into_iter()
            .map(|d| d.describe().to_string())
            .collect(),
        ..Deleted::default()
    };
    if dry_run {
        deleted.would_delete = verified.len() as u64;
    } else if !verified.is_empty() {
        verified.sort_unstable();
        deleted.deleted = session.delete_messages(&verified).await?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(flags: &[&str], days_old: i64, now: DateTime<Utc>) -> MessageMeta {
        MessageMeta {
            uid: 1,
            size: 10,
            internal_date: Some((now - Duration::days(days_old)).fixed_offset()),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn rules_keep_what_they_must() {
        let now = Utc::now();
        let rules = DeletionSpec {
            mode: DeletionMode::AfterArchiving,
            older_than_days: Some(30),
            ..DeletionSpec::default()
        };
        assert!(deletable(&meta(&["\\Seen"], 31, now), &rules, now));
        assert!(
            !deletable(&meta(&["\\Seen"], 29, now), &rules, now),
            "too young"
        );
        assert!(!deletable(&meta(&[], 31, now), &rules, now), "unread");
        assert!(
            !deletable(&meta(&["\\Seen", "\\Flagged"], 31, now), &rules, now),
            "flagged"
        );
        assert!(
            !deletable(&meta(&["\\Seen", "\\Deleted"], 31, now), &rules, now),
            "user's own"
        );
        let loose = DeletionSpec {
            keep_flagged: false,
            keep_unread: false,
            older_than_days: None,
            ..rules.clone()
        };
        assert!(deletable(&meta(&["\\Flagged"], 0, now), &loose, now));
        let never = DeletionSpec::default();
        assert!(!deletable(&meta(&["\\Seen"], 400, now), &never, now));
        let undated = MessageMeta {
            internal_date: None,
            ..meta(&["\\Seen"], 0, now)
        };
        assert!(!deletable(&undated, &rules, now));
    }
}
