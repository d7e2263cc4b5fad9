//! The deletion pass: removing archived mail from the server, where an archive that loses
//! mail would do the most harm. A message is deleted only when all of these hold:
//!
//! - the profile asks for it (`deletion.mode: AfterArchiving`) and its rules match
//!   (age, flagged, unread, not already `\Deleted` by the user);
//! - its whole mailbox was archived in this run without any error;
//! - the archive holds an index entry for exactly this UID under the folder's current
//!   UIDVALIDITY, and the stored copy, read back now, hashes to that entry's SHA-256;
//! - the server supports UIDPLUS, so that `UID EXPUNGE` removes only our messages.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use super::FolderFailure;
use crate::imap::{Folder, MessageMeta, Session};
use crate::resources::{DeletionMode, DeletionSpec};
use crate::store::{Archive, FolderKey};

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
}

/// Deletes (or, in a dry run, counts) the folder's archived messages that the rules allow.
pub async fn delete_archived(
    session: &mut Session,
    archive: &Archive,
    key: &FolderKey,
    folder: &Folder,
    rules: &DeletionSpec,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Deleted, FolderFailure> {
    let state = archive.load_state(key).await?;
    let status = if dry_run {
        session.examine(folder).await?
    } else {
        session.select(folder).await?
    };
    if status.uid_validity != state.uid_validity || status.exists == 0 {
        return Ok(Deleted::default());
    }
    let archived: Vec<u32> = session
        .uids()
        .await?
        .into_iter()
        .filter(|&uid| state.archived.contains(uid))
        .collect();
    if archived.is_empty() {
        return Ok(Deleted::default());
    }
    // Flags and dates as they are now, not as they were when archived.
    let candidates: Vec<MessageMeta> = session
        .metadata(&archived)
        .await?
        .into_iter()
        .filter(|m| deletable(m, rules, now))
        .collect();
    if candidates.is_empty() {
        return Ok(Deleted::default());
    }
    let hashes: HashMap<u32, String> = archive
        .folder_entries(key)
        .await?
        .into_iter()
        .filter(|e| e.uid_validity == status.uid_validity)
        .map(|e| (e.uid, e.sha256))
        .collect();
    let mut verified = Vec::new();
    for meta in &candidates {
        let Some(sha256) = hashes.get(&meta.uid) else {
            // Matched by content after a UIDVALIDITY change: archived, but without an entry
            // for this UID. Kept, to be safe.
            continue;
        };
        let Some(bytes) = archive.get_message(sha256).await? else {
            continue;
        };
        let expected = sha256.clone();
        let intact =
            tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)) == expected)
                .await
                .expect("hashing does not panic");
        if intact {
            verified.push(meta.uid);
        }
    }
    if dry_run {
        return Ok(Deleted {
            deleted: 0,
            would_delete: verified.len() as u64,
        });
    }
    let deleted = if verified.is_empty() {
        0
    } else {
        session.delete_messages(&verified).await?
    };
    Ok(Deleted {
        deleted,
        would_delete: 0,
    })
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
