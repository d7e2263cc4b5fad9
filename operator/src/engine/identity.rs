//! Whether the message a server has at a UID is the one the archive holds for it.
//!
//! UIDs alone prove nothing: two mailboxes or servers, a restored backup or a folder name
//! that two folders map to can all show other messages under UIDs the archive knows. So
//! every check compares what the server says about the message now (RFC822.SIZE and
//! INTERNALDATE, from one listing of the folder) with the index entry the same source
//! wrote for that UID; deleting further re-hashes the stored copy (see `delete`).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::imap::{MessageMeta, ServerConfig};
use crate::sources::Mailbox;
use crate::store::{IndexEntry, UidSet};

/// Whose UIDs a folder's state and entries are: the server, and the identity whose mailbox
/// is opened (the authorization identity of a master login, else the login).
pub fn source(server: &ServerConfig, mailbox: &Mailbox) -> String {
    let host = server.host.to_lowercase();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let identity = mailbox
        .authorization_identity
        .as_deref()
        .unwrap_or(&mailbox.login);
    format!("{host}:{} {identity}", server.port)
}

/// Whether an index entry describes the server's message: the same size and the same
/// INTERNALDATE (as an instant; servers may report it in another time zone).
pub fn same_message(entry: &IndexEntry, meta: &MessageMeta) -> bool {
    if entry.server_size() != meta.size {
        return false;
    }
    let archived = entry
        .internal_date
        .as_deref()
        .map(|d| chrono::DateTime::parse_from_rfc3339(d).map(|d| d.timestamp()));
    match (archived, meta.internal_date) {
        (None, None) => true,
        (Some(Ok(archived)), Some(now)) => archived == now.timestamp(),
        _ => false,
    }
}

/// The last entry written for each UID by `source` under `uid_validity` in `folder`: what
/// the archive last saw at that UID. With `legacy`, entries that record no source (written
/// before sources were recorded, into a state this source has since adopted) count as
/// `source`'s too.
pub fn latest_entries<'a>(
    entries: &'a [IndexEntry],
    source: &str,
    legacy: bool,
    uid_validity: u32,
    folder: &str,
) -> HashMap<u32, &'a IndexEntry> {
    entries
        .iter()
        .filter(|e| {
            let ours = match e.source.as_deref() {
                Some(s) => s == source,
                None => legacy,
            };
            ours && e.uid_validity == uid_validity && e.folder == folder
        })
        .map(|e| (e.uid, e))
        .collect()
}

/// SHA-256 over (UID, size, INTERNALDATE) of the messages whose UIDs are in `uids`, in the
/// order given (ascending UIDs, as listed).
pub fn digest(messages: &[MessageMeta], uids: &UidSet) -> String {
    let mut hasher = Sha256::new();
    for meta in messages.iter().filter(|m| uids.contains(m.uid)) {
        hasher.update(meta.uid.to_be_bytes());
        hasher.update(meta.size.to_be_bytes());
        match meta.internal_date {
            Some(date) => {
                hasher.update([1]);
                hasher.update(date.timestamp().to_be_bytes());
            }
            None => hasher.update([0]),
        }
    }
    hex::encode(hasher.finalize())
}

/// The outcome of checking the archived UIDs of a listing against the index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Archived, and still the archived message.
    pub verified: UidSet,
    /// Archived, but the server's message there is not the archived one: archived again.
    pub changed: Vec<u32>,
}

/// Checks each listed message whose UID the state counts as archived against the latest
/// entry of its UID.
pub fn check(
    messages: &[MessageMeta],
    archived: &UidSet,
    latest: &HashMap<u32, &IndexEntry>,
) -> Checked {
    let mut checked = Checked::default();
    for meta in messages.iter().filter(|m| archived.contains(m.uid)) {
        match latest.get(&meta.uid) {
            Some(entry) if same_message(entry, meta) => checked.verified.insert(meta.uid),
            _ => checked.changed.push(meta.uid),
        }
    }
    checked
}

/// A few UIDs for a message, `1, 5, 9 and 4 more`.
pub fn some_uids(uids: &[u32]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = uids.iter().take(SHOWN).map(u32::to_string).collect();
    match uids.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::resources::Security;
    use crate::sensitive::Sensitive;
    use crate::store::Direction;

    fn meta(uid: u32, size: u64, date: &str) -> MessageMeta {
        MessageMeta {
            uid,
            size,
            internal_date: Some(chrono::DateTime::parse_from_rfc3339(date).unwrap()),
            flags: vec![],
        }
    }

    fn entry(uid: u32, size: u64, date: &str, source: &str) -> IndexEntry {
        IndexEntry {
            folder: "INBOX".into(),
            source: Some(source.into()),
            uid_validity: 7,
            uid,
            sha256: "0".repeat(64),
            blob: None,
            size,
            server_size: None,
            internal_date: Some(date.into()),
            flags: vec![],
            message_id: None,
            from: None,
            to: None,
            subject: None,
            date: None,
            direction: Direction::Incoming,
            archived_at: "2025-01-06T10:00:00Z".into(),
            alias: false,
        }
    }

    const DATE: &str = "2025-01-06T10:00:00+00:00";

    #[test]
    fn size_and_instant_must_match() {
        let e = entry(1, 100, DATE, "s");
        assert!(same_message(&e, &meta(1, 100, DATE)));
        assert!(same_message(&e, &meta(1, 100, "2025-01-06T11:00:00+01:00")));
        assert!(!same_message(&e, &meta(1, 101, DATE)));
        assert!(!same_message(
            &e,
            &meta(1, 100, "2025-01-06T10:00:01+00:00")
        ));
        let counted_otherwise = IndexEntry {
            server_size: Some(98),
            ..e.clone()
        };
        assert!(same_message(&counted_otherwise, &meta(1, 98, DATE)));
        let undated = IndexEntry {
            internal_date: None,
            ..e.clone()
        };
        assert!(!same_message(&undated, &meta(1, 100, DATE)));
        let garbled = IndexEntry {
            internal_date: Some("yesterday".into()),
            ..e
        };
        assert!(!same_message(&garbled, &meta(1, 100, DATE)));
    }

    #[test]
    fn only_the_same_source_and_the_last_entry_count() {
        let entries = vec![
            entry(1, 100, DATE, "a"),
            entry(2, 200, DATE, "a"),
            entry(2, 250, DATE, "a"),
            entry(3, 300, DATE, "b"),
            IndexEntry {
                source: None,
                ..entry(4, 400, DATE, "")
            },
        ];
        let latest = latest_entries(&entries, "a", false, 7, "INBOX");
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[&2].size, 250);
        let adopted = latest_entries(&entries, "a", true, 7, "INBOX");
        assert_eq!(adopted.len(), 3);
        assert_eq!(adopted[&4].size, 400);
        let listing = vec![
            meta(1, 100, DATE),
            meta(2, 200, DATE),
            meta(3, 300, DATE),
            meta(4, 400, DATE),
            meta(5, 500, DATE),
        ];
        let archived: UidSet = "1:4".parse().unwrap();
        let checked = check(&listing, &archived, &latest);
        assert_eq!(checked.verified.to_string(), "1");
        assert_eq!(checked.changed, [2, 3, 4]);
        assert!(latest_entries(&entries, "a", true, 8, "INBOX").is_empty());
        assert!(latest_entries(&entries, "a", true, 7, "Sent").is_empty());
    }

    #[test]
    fn digests_cover_uid_size_and_date_of_the_chosen_uids() {
        let listing = vec![meta(1, 100, DATE), meta(2, 200, DATE), meta(3, 300, DATE)];
        let some: UidSet = "1:2".parse().unwrap();
        let d = digest(&listing, &some);
        assert_eq!(d.len(), 64);
        assert_eq!(d, digest(&listing[..2], &some));
        assert_ne!(d, digest(&listing, &"1:3".parse().unwrap()));
        let mut resized = listing.clone();
        resized[1].size = 201;
        assert_ne!(d, digest(&resized, &some));
        let mut redated = listing.clone();
        redated[0] = meta(1, 100, "2025-01-07T10:00:00+00:00");
        assert_ne!(d, digest(&redated, &some));
    }

    #[test]
    fn sources_name_server_and_mailbox() {
        let server = |host: &str| ServerConfig {
            host: host.into(),
            port: 993,
            security: Security::Tls,
            insecure_skip_tls_verify: false,
            extra_ca_pem: None,
            timeout: Duration::from_secs(1),
        };
        let user = Mailbox {
            login: "alice".into(),
            authorization_identity: None,
            password: Sensitive::new("pw"),
            email: Some("alice@example.org".into()),
            user: "alice".into(),
            oauth2: None,
        };
        let master = Mailbox {
            login: "archiver".into(),
            authorization_identity: Some("alice@example.org".into()),
            ..user.clone()
        };
        assert_eq!(
            source(&server("IMAP.example.org"), &user),
            "imap.example.org:993 alice"
        );
        assert_eq!(
            source(&server("imap.example.org"), &master),
            "imap.example.org:993 alice@example.org"
        );
        assert_eq!(source(&server("::1"), &user), "[::1]:993 alice");
        assert_eq!(some_uids(&[1, 2, 3]), "1, 2, 3");
        assert_eq!(
            some_uids(&[1, 2, 3, 4, 5, 6, 7]),
            "1, 2, 3, 4, 5 and 2 more"
        );
    }
}
