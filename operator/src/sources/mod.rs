//! Turning a MailboxSet into the list of mailboxes to archive.
//!
//! Two kinds of set: a master user logging in for each user (the users come from the
//! resource or a directory), or a CSV file of IMAP credentials. `mailvault run`,
//! `mailvault mailboxes` and the operator all resolve sets here, the same way.

pub mod csv;
pub mod directory;

use serde::Serialize;

use crate::resources::{Bundle, Located, MailboxSet, Selection};
use crate::secret::Secret;

/// One mailbox to archive.
#[derive(Clone, Debug)]
pub struct Mailbox {
    /// The IMAP login: the user's own (CSV) or the master user's.
    pub login: String,
    /// For master-password sets: the user's address, sent as SASL authorization identity.
    pub authorization_identity: Option<String>,
    pub password: Secret,
    pub email: Option<String>,
    /// The archive user the mailbox is stored into.
    pub user: String,
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
}

/// Resolves a MailboxSet from the objects in `bundle`. The set must have been validated
/// (`resources::validate_mailbox_set`), so its Secrets exist.
pub fn resolve(bundle: &Bundle, set: &Located<MailboxSet>) -> Result<Resolved, SourceError> {
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
    let utf8 = |name: &str, key: &str, bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                invalid(format!(
                    "Secret {namespace}/{name} key {key:?} is not UTF-8"
                ))
            })
    };
    if let Some(master) = &set.object.spec.master_password {
        let secret = &master.credentials_secret_ref.name;
        let login = utf8(secret, "username", secret_value(secret, "username")?)?;
        let password = Secret::new(utf8(secret, "password", secret_value(secret, "password")?)?);
        let users: Vec<(String, Vec<String>)> = master
            .static_users
            .iter()
            .map(|u| (u.name.clone(), vec![u.email.clone()]))
            .collect();
        let (selected, excluded) = select_users(users, master.users.selection, &master.users.names);
        let mailboxes = selected
            .into_iter()
            .map(|(name, emails)| Mailbox {
                login: login.clone(),
                authorization_identity: emails.first().cloned(),
                password: password.clone(),
                email: emails.first().cloned(),
                user: name,
            })
            .collect();
        return Ok(Resolved {
            mode: Mode::MasterPassword,
            mailboxes,
            excluded,
        });
    }
    let csv_spec = set
        .object
        .spec
        .csv
        .as_ref()
        .ok_or_else(|| invalid("set exactly one of masterPassword or csv".into()))?;
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
            password: Secret::new(row.password),
            email: row.email,
        })
        .collect();
    Ok(Resolved {
        mode: Mode::Csv,
        mailboxes,
        excluded: Vec::new(),
    })
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
