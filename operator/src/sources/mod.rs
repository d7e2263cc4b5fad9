//! Turning a MailboxSet into the list of mailboxes to archive.
//!
//! Three kinds of set: a master user logging in for each user (the users come from the
//! resource or a directory), a CSV file of IMAP credentials, or an OAuth2 app logging in to
//! each user's mailbox with a token (the users come from the resource or a directory:
//! Microsoft Graph, the Google Directory API or LDAP). `mailvault run`,
//! `mailvault mailboxes` and the operator all resolve sets here, the same way.

pub mod csv;
pub mod directory;
pub mod google;
pub mod graph;
pub mod oauth2;

use std::collections::HashSet;

use serde::Serialize;

use crate::oauth2::ImapTokens;
use crate::resources::{
    Bundle, LdapSpec, Located, MailboxSet, Selection, StaticUser, SyncRecord, UserSelectionSpec,
};
use crate::sensitive::Sensitive;
use directory::{Bind, DirectoryError, DirectoryUser};

/// One mailbox to archive.
#[derive(Clone, Debug)]
pub struct Mailbox {
    /// The IMAP login: the user's own (CSV) or the master user's.
    pub login: String,
    /// For master-password sets: the user's address, sent as SASL authorization identity.
    pub authorization_identity: Option<String>,
    pub password: Sensitive,
    pub email: Option<String>,
    /// The archive user the mailbox is stored into.
    pub user: String,
    /// For OAuth2 sets: the tokens to log in to `login` (the mailbox address) with; the
    /// password is then empty.
    pub oauth2: Option<ImapTokens>,
}

impl Mailbox {
    /// Labels the mailbox's top folder in the archive: its email address, else the IMAP
    /// user name.
    pub fn label(&self) -> &str {
        self.email
            .as_deref()
            .or(self.authorization_identity.as_deref())
            .unwrap_or(&self.login)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    Csv,
    MasterPassword,
    #[serde(rename = "oauth2")]
    OAuth2,
}

/// A user left out of the set, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub name: String,
    pub reason: String,
}

/// A resolved MailboxSet.
#[derive(Debug)]
pub struct Resolved {
    pub mode: Mode,
    pub mailboxes: Vec<Mailbox>,
    pub excluded: Vec<Excluded>,
    /// For sets with a directory: the sync just made, for the caller to keep and pass to
    /// the next resolution as the previous one.
    pub directory_sync: Option<SyncRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{place}: {object}: {message}")]
    Invalid {
        place: String,
        object: String,
        message: String,
    },
    #[error("{place}: {object}: the CSV file in Secret {secret} is invalid:\n{}", .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Csv {
        place: String,
        object: String,
        secret: String,
        errors: Vec<csv::CsvError>,
    },
    /// The directory could not be read; no list of users is made up instead.
    #[error("{place}: {object}: reading the directory failed: {source}")]
    Directory {
        place: String,
        object: String,
        source: Box<DirectoryError>,
    },
    /// The directory was read but lost too many of the previously known users.
    #[error(
        "{place}: {object}: refusing the directory sync: it would drop {} of the {known} \
         previously known users, more than maxRemovedPercent ({max_percent}%) allows \
         (e.g. {}). If they really left, raise maxRemovedPercent for one run",
        .removed.len(),
        .removed.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )]
    TooManyRemoved {
        place: String,
        object: String,
        known: usize,
        removed: Vec<String>,
        max_percent: u32,
    },
}

impl SourceError {
    /// Whether the set itself is at fault (exit code 2), rather than the directory at run
    /// time (exit code 1).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, SourceError::Invalid { .. } | SourceError::Csv { .. })
    }
}

/// Resolves a MailboxSet from the objects in `bundle`. The set must have been validated
/// (`resources::validate_mailbox_set`), so its Secrets exist.
///
/// A set with a directory is synced: its users are the directory's plus `staticUsers`.
/// `previous` is the last accepted sync of this set (`Resolved::directory_sync` of an
/// earlier resolution); a sync that drops more than `maxRemovedPercent` of its users is
/// refused. Without `previous` (the first sync, or a caller that keeps no record) nothing
/// is refused.
pub async fn resolve(
    bundle: &Bundle,
    set: &Located<MailboxSet>,
    previous: Option<&SyncRecord>,
) -> Result<Resolved, SourceError> {
    let namespace = crate::resources::namespace_of(&set.object.metadata);
    let object = format!(
        "MailboxSet {namespace}/{}",
        set.object.metadata.name.as_deref().unwrap_or("")
    );
    let invalid = |message: String| SourceError::Invalid {
        place: set.place(),
        object: object.clone(),
        message,
    };
    let secret_value = |name: &str, key: &str| -> Result<Vec<u8>, SourceError> {
        bundle
            .secret(namespace, name)
            .and_then(|s| s.object.data.get(key).cloned())
            .ok_or_else(|| invalid(format!("Secret {namespace}/{name} has no key {key:?}")))
    };
    let text = |name: &str, key: &str| {
        String::from_utf8(secret_value(name, key)?)
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                invalid(format!(
                    "Secret {namespace}/{name} key {key:?} is not UTF-8"
                ))
            })
    };
    let directory_failed = |source: DirectoryError| SourceError::Directory {
        place: set.place(),
        object: object.clone(),
        source: Box::new(source),
    };
    let ldap_secrets = |ldap: &LdapSpec| -> Result<(Option<Bind>, Option<Vec<u8>>), SourceError> {
        let bind = match &ldap.bind_secret_ref {
            Some(r) => Some(Bind {
                dn: text(&r.name, "bindDN")?,
                password: Sensitive::new(text(&r.name, "password")?),
            }),
            None => None,
        };
        let ca_pem = match &ldap.ca_secret_ref {
            Some(r) => Some(secret_value(&r.name, &r.key)?),
            None => None,
        };
        Ok((bind, ca_pem))
    };
    let users = |statics: &[StaticUser],
                 found: Option<(Vec<DirectoryUser>, u32)>,
                 selection: &UserSelectionSpec| {
        select(&object, statics, found, selection, previous).map_err(
            |(known, removed, max_percent)| SourceError::TooManyRemoved {
                place: set.place(),
                object: object.clone(),
                known,
                removed,
                max_percent,
            },
        )
    };
    if let Some(master) = &set.object.spec.master_password {
        let secret = &master.credentials_secret_ref.name;
        let login = text(secret, "username")?;
        let password = Sensitive::new(text(secret, "password")?);
        let found = match &master.directory {
            None => None,
            Some(spec) => {
                let users = read_ldap(&spec.ldap, ldap_secrets(&spec.ldap)?)
                    .await
                    .map_err(directory_failed)?;
                Some((users, spec.max_removed_percent))
            }
        };
        let (selected, excluded, directory_sync) =
            users(&master.static_users, found, &master.users)?;
        let mailboxes = selected
            .into_iter()
            .map(|(name, emails)| Mailbox {
                login: login.clone(),
                authorization_identity: emails.first().cloned(),
                password: password.clone(),
                email: emails.first().cloned(),
                user: name,
                oauth2: None,
            })
            .collect();
        return Ok(Resolved {
            mode: Mode::MasterPassword,
            mailboxes,
            excluded,
            directory_sync,
        });
    }
    if let Some(spec) = &set.object.spec.oauth2 {
        let credentials = &spec.credentials_secret_ref.name;
        let ca_pem = match &spec.ca_secret_ref {
            Some(r) => Some(secret_value(&r.name, &r.key)?),
            None => None,
        };
        let client = oauth2::client(spec, ca_pem.as_deref(), |key| {
            secret_value(credentials, key).ok()
        })
        .map_err(invalid)?;
        let found = match &spec.directory {
            None => None,
            Some(directory) => {
                let users = match &directory.ldap {
                    Some(ldap) => read_ldap(ldap, ldap_secrets(ldap)?)
                        .await
                        .map_err(directory_failed)?,
                    None => oauth2::fetch_users(directory, &client)
                        .await
                        .map_err(directory_failed)?,
                };
                Some((users, directory.max_removed_percent))
            }
        };
        let (selected, excluded, directory_sync) = users(&spec.static_users, found, &spec.users)?;
        let imap = client.tokens.for_imap();
        let mailboxes = selected
            .into_iter()
            .map(|(name, emails)| Mailbox {
                login: emails[0].clone(),
                authorization_identity: None,
                password: Sensitive::new(""),
                email: emails.first().cloned(),
                user: name,
                oauth2: Some(imap.clone()),
            })
            .collect();
        return Ok(Resolved {
            mode: Mode::OAuth2,
            mailboxes,
            excluded,
            directory_sync,
        });
    }
    let csv_spec = set
        .object
        .spec
        .csv
        .as_ref()
        .ok_or_else(|| invalid("set exactly one of masterPassword, csv or oauth2".into()))?;
    let secret = &csv_spec.secret_ref;
    let bytes = secret_value(&secret.name, &secret.key)?;
    let rows = csv::parse(&bytes).map_err(|errors| SourceError::Csv {
        place: set.place(),
        object: object.clone(),
        secret: format!("{namespace}/{} key {:?}", secret.name, secret.key),
        errors,
    })?;
    let mailboxes = rows
        .into_iter()
        .map(|row| Mailbox {
            user: row.archive_user.unwrap_or_else(|| row.login.clone()),
            login: row.login,
            authorization_identity: None,
            password: Sensitive::new(row.password),
            email: row.email,
            oauth2: None,
        })
        .collect();
    Ok(Resolved {
        mode: Mode::Csv,
        mailboxes,
        excluded: Vec::new(),
        directory_sync: None,
    })
}

/// Reads an LDAP directory with its bind and CA (from [`resolve`]'s Secrets).
async fn read_ldap(
    ldap: &LdapSpec,
    (bind, ca_pem): (Option<Bind>, Option<Vec<u8>>),
) -> Result<Vec<DirectoryUser>, DirectoryError> {
    directory::fetch_users(ldap, bind.as_ref(), ca_pem.as_deref()).await
}

/// The users selected as (name, addresses), those left out with why, and the sync record
/// of a set that reads a directory.
type Selected = (
    Vec<(String, Vec<String>)>,
    Vec<Excluded>,
    Option<SyncRecord>,
);

/// The users of a set (`object`, for the log) with `statics` and, if it reads a directory, the users `found` there
/// (with its `maxRemovedPercent`), after the selection; with the sync record. A sync that
/// drops too many of the `previous` users is refused: `Err((known, removed, max_percent))`.
fn select(
    object: &str,
    statics: &[StaticUser],
    found: Option<(Vec<DirectoryUser>, u32)>,
    selection: &UserSelectionSpec,
    previous: Option<&SyncRecord>,
) -> Result<Selected, (usize, Vec<String>, u32)> {
    let statics: Vec<(String, Vec<String>)> = statics
        .iter()
        .map(|u| (u.name.clone(), vec![u.email.clone()]))
        .collect();
    let (users, directory_sync) = match found {
        None => (statics, None),
        Some((found, max_percent)) => {
            let known = previous.map_or(&[][..], |p| p.users.as_slice());
            let changes = directory::changes(known, &found);
            if directory::too_many_removed(known.len(), changes.removed.len(), max_percent) {
                return Err((known.len(), changes.removed, max_percent));
            }
            tracing::info!(
                set = %object,
                found = found.len(),
                added = changes.added.len(),
                removed = ?changes.removed,
                "read the directory"
            );
            let record = SyncRecord {
                time: crate::time::now(),
                users_found: count(found.len()),
                without_email: 0,
                excluded_by_selection: 0,
                added: count(changes.added.len()),
                removed: count(changes.removed.len()),
                users: found.iter().map(|u| u.name.clone()).collect(),
            };
            let directory_users = found.into_iter().map(|u| (u.name, u.emails)).collect();
            (merge(directory_users, statics), Some(record))
        }
    };
    let from_directory: HashSet<String> = directory_sync
        .iter()
        .flat_map(|r| r.users.iter().map(|n| n.to_lowercase()))
        .collect();
    let without_email = users
        .iter()
        .filter(|(name, emails)| emails.is_empty() && from_directory.contains(&name.to_lowercase()))
        .count();
    let (selected, excluded) = select_users(users, selection.selection, &selection.names);
    let excluded_from_directory = excluded
        .iter()
        .filter(|e| from_directory.contains(&e.name.to_lowercase()))
        .count();
    let directory_sync = directory_sync.map(|record| SyncRecord {
        without_email: count(without_email),
        excluded_by_selection: count(excluded_from_directory.saturating_sub(without_email)),
        ..record
    });
    Ok((selected, excluded, directory_sync))
}

/// The directory's users plus the static ones, sorted by name without regard to case. A
/// static user replaces a directory user of the same name: the resource is the more
/// deliberate statement (e.g. an address for a user whose entry lacks one).
fn merge(
    directory_users: Vec<(String, Vec<String>)>,
    static_users: Vec<(String, Vec<String>)>,
) -> Vec<(String, Vec<String>)> {
    let replaced: HashSet<String> = static_users.iter().map(|(n, _)| n.to_lowercase()).collect();
    let mut users: Vec<_> = directory_users
        .into_iter()
        .filter(|(name, _)| !replaced.contains(&name.to_lowercase()))
        .chain(static_users)
        .collect();
    users.sort_by_cached_key(|(name, _)| name.to_lowercase());
    users
}

/// Counts in a [`SyncRecord`]; a directory of four billion users is not a concern.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Applies a selection to users given as (name, addresses). Users without an address are
/// never selected; names match a user name or any address, case-insensitively.
pub fn select_users(
    users: Vec<(String, Vec<String>)>,
    selection: Selection,
    names: &[String],
) -> (Vec<(String, Vec<String>)>, Vec<Excluded>) {
    let wanted: Vec<String> = names.iter().map(|n| n.trim().to_lowercase()).collect();
    let mut selected = Vec::new();
    let mut excluded = Vec::new();
    let mut matched = vec![false; wanted.len()];
    for (name, emails) in users {
        let mut named = false;
        for (i, w) in wanted.iter().enumerate() {
            if *w == name.to_lowercase() || emails.iter().any(|e| *w == e.to_lowercase()) {
                matched[i] = true;
                named = true;
            }
        }
        let reason = if emails.is_empty() {
            Some("no email address")
        } else {
            match selection {
                Selection::All => None,
                Selection::AllExcept if named => Some("excluded by selection"),
                Selection::AllExcept => None,
                Selection::Only if named => None,
                Selection::Only => Some("not selected"),
            }
        };
        match reason {
            Some(reason) => excluded.push(Excluded {
                name,
                reason: reason.into(),
            }),
            None => selected.push((name, emails)),
        }
    }
    if selection == Selection::Only {
        for (i, name) in names.iter().enumerate() {
            if !matched[i] {
                excluded.push(Excluded {
                    name: name.clone(),
                    reason: "named in the selection but not found".into(),
                });
            }
        }
    }
    (selected, excluded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<(String, Vec<String>)> {
        vec![
            (
                "alice".into(),
                vec!["alice@example.org".into(), "ali@example.org".into()],
            ),
            ("bob".into(), vec!["bob@example.org".into()]),
            ("nomail".into(), vec![]),
        ]
    }

    fn names(v: &(Vec<(String, Vec<String>)>, Vec<Excluded>)) -> (Vec<&str>, Vec<(&str, &str)>) {
        (
            v.0.iter().map(|u| u.0.as_str()).collect(),
            v.1.iter()
                .map(|e| (e.name.as_str(), e.reason.as_str()))
                .collect(),
        )
    }

    #[test]
    fn all_selects_users_with_an_address() {
        let r = select_users(users(), Selection::All, &[]);
        assert_eq!(
            names(&r),
            (vec!["alice", "bob"], vec![("nomail", "no email address")])
        );
    }

    #[test]
    fn all_except_matches_names_and_aliases_case_insensitively() {
        let r = select_users(users(), Selection::AllExcept, &["ALI@example.org".into()]);
        assert_eq!(
            names(&r),
            (
                vec!["bob"],
                vec![
                    ("alice", "excluded by selection"),
                    ("nomail", "no email address")
                ]
            )
        );
    }

    #[test]
    fn only_reports_names_not_found() {
        let r = select_users(
            users(),
            Selection::Only,
            &["Bob".into(), "nomail".into(), "zed".into()],
        );
        assert_eq!(
            names(&r),
            (
                vec!["bob"],
                vec![
                    ("alice", "not selected"),
                    ("nomail", "no email address"),
                    ("zed", "named in the selection but not found")
                ]
            )
        );
    }
}
