//! `mailvault mailboxes`: the mailboxes MailboxSets resolve to, as `mailvault run` would
//! resolve them, shown without passwords.

use serde::Serialize;

use super::{chosen, full_name, load, print_json, Failure, MailboxesArgs, Output};
use crate::archiving;
use crate::resources::{self, Bundle, Located, MailboxSet, SyncRecord};
use crate::sources;
use crate::store::Archive;

pub(super) async fn command(args: MailboxesArgs) -> Result<u8, Failure> {
    let bundle = load(&args.input)?;
    let sets = chosen(&bundle.mailbox_sets, args.mailbox_set.as_deref())?;
    let archive = match args.store.named()? {
        Some(_) => Some(args.store.existing().await?),
        None => None,
    };
    let mut listings = Vec::new();
    let mut code = 0;
    for set in sets {
        let (listing, set_code) = list_set(&bundle, set, archive.as_ref()).await;
        code = code.max(set_code);
        listings.push(listing);
    }
    match args.output {
        Output::Json => print_json(&listings),
        Output::Text => {
            for listing in &listings {
                print!("{}", listing.to_text());
            }
        }
    }
    Ok(code)
}

/// What `mailvault mailboxes` shows of one set: never a password.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    /// `namespace/name`
    mailbox_set: String,
    /// `None` when the set names neither or both modes.
    mode: Option<sources::Mode>,
    mailboxes: Vec<ListedMailbox>,
    excluded: Vec<sources::Excluded>,
    errors: Vec<ListedError>,
    directory_sync: Option<SyncRecord>,
    /// Whether `directory_sync` was compared with a recorded one, so that its `added` and
    /// `removed` mean something.
    #[serde(skip)]
    compared: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedMailbox {
    login: String,
    authorization_identity: Option<String>,
    email: Option<String>,
    user: String,
    /// Logged in to with an OAuth2 token (an `oauth2` set).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    oauth2: bool,
}

#[derive(Serialize)]
struct ListedError {
    /// Line of the CSV file, for errors in it.
    line: Option<usize>,
    /// Field of the MailboxSet, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    message: String,
}

impl ListedError {
    fn message(message: String) -> Self {
        ListedError {
            line: None,
            field: None,
            message,
        }
    }
}

/// Validates and resolves one set the way `mailvault run` does; returns its listing and
/// exit code.
async fn list_set(
    bundle: &Bundle,
    set: &Located<MailboxSet>,
    archive: Option<&Archive>,
) -> (Listing, u8) {
    let spec = &set.object.spec;
    let mut listing = Listing {
        mailbox_set: full_name(set),
        mode: match (&spec.master_password, &spec.csv, &spec.oauth2) {
            (Some(_), None, None) => Some(sources::Mode::MasterPassword),
            (None, Some(_), None) => Some(sources::Mode::Csv),
            (None, None, Some(_)) => Some(sources::Mode::OAuth2),
            _ => None,
        },
        mailboxes: Vec::new(),
        excluded: Vec::new(),
        errors: Vec::new(),
        directory_sync: None,
        compared: false,
    };
    let field_errors = resources::validate_mailbox_set(bundle, set);
    if !field_errors.is_empty() {
        listing.errors = field_errors
            .into_iter()
            .map(|e| ListedError {
                line: None,
                field: Some(e.field),
                message: e.message,
            })
            .collect();
        return (listing, 2);
    }
    let previous = match archive {
        Some(archive) => match archiving::recorded_sync(archive, &set.object).await {
            Ok(previous) => previous,
            Err(message) => {
                listing.errors.push(ListedError::message(message));
                return (listing, 1);
            }
        },
        None => None,
    };
    match sources::resolve(bundle, set, previous.as_ref()).await {
        Ok(resolved) => {
            listing.mode = Some(resolved.mode);
            listing.mailboxes = resolved
                .mailboxes
                .into_iter()
                .map(|m| ListedMailbox {
                    login: m.login,
                    authorization_identity: m.authorization_identity,
                    email: m.email,
                    user: m.user,
                    oauth2: m.oauth2.is_some(),
                })
                .collect();
            listing.excluded = resolved.excluded;
            listing.directory_sync = resolved.directory_sync;
            listing.compared = previous.is_some();
            (listing, 0)
        }
        Err(sources::SourceError::Csv { errors, .. }) => {
            listing.errors = errors
                .into_iter()
                .map(|e| ListedError {
                    line: e.line,
                    field: None,
                    message: e.message,
                })
                .collect();
            (listing, 2)
        }
        Err(e) => {
            let code = if e.is_invalid_input() { 2 } else { 1 };
            listing.errors.push(ListedError::message(e.to_string()));
            (listing, code)
        }
    }
}

impl Listing {
    fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mode = match self.mode {
            Some(sources::Mode::MasterPassword) => " (masterPassword)",
            Some(sources::Mode::Csv) => " (csv)",
            Some(sources::Mode::OAuth2) => " (oauth2)",
            None => "",
        };
        let _ = writeln!(out, "MailboxSet {}{mode}", self.mailbox_set);
        if self.errors.is_empty() {
            let _ = writeln!(out, "  mailboxes: {}", self.mailboxes.len());
        }
        for m in &self.mailboxes {
            let _ = write!(out, "    {}: login {}", m.user, m.login);
            if let Some(identity) = &m.authorization_identity {
                let _ = write!(out, " as {identity}");
            } else if m.oauth2 {
                out.push_str(" with OAuth2");
            } else if let Some(email) = &m.email {
                let _ = write!(out, ", {email}");
            }
            out.push('\n');
        }
        if !self.excluded.is_empty() {
            let _ = writeln!(out, "  excluded: {}", self.excluded.len());
            for e in &self.excluded {
                let _ = writeln!(out, "    {}: {}", e.name, e.reason);
            }
        }
        if let Some(sync) = &self.directory_sync {
            let _ = write!(
                out,
                "  directory: {} users found, {} without email, {} excluded by selection",
                sync.users_found, sync.without_email, sync.excluded_by_selection,
            );
            if self.compared {
                let _ = write!(
                    out,
                    "; {} added, {} removed since the recorded sync",
                    sync.added, sync.removed
                );
            }
            out.push('\n');
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "  errors: {}", self.errors.len());
            for e in &self.errors {
                let _ = match (&e.line, &e.field) {
                    (Some(line), _) => writeln!(out, "    line {line}: {}", e.message),
                    (None, Some(field)) => writeln!(out, "    {field}: {}", e.message),
                    (None, None) => writeln!(out, "    {}", e.message),
                };
            }
        }
        out
    }
}
