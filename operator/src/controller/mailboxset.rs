//! MailboxSets in the cluster: reading a set and its Secrets into a [`Bundle`], resolving it
//! with the same code as `mailvault mailboxes` and `mailvault run`, and the set's status.
//! Both controllers write a set's status (the profile controller when a run syncs the
//! directory), always whole and from [`status`], so that server-side apply under one
//! field manager never drops a field the other wrote.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::conditions::{self, DIRECTORY_SYNCED, READY, STALLED};
use super::context::{rfc3339, Context, Error};
use crate::resources::{
    self, ArchiveProfile, Bundle, Located, MailboxSet, MailboxSetStatus, SecretObject, SyncStatus,
};
use crate::sources::{self, directory, Mode, Resolved, SourceError};

/// How often a set is resolved again without any change (directories change on their own).
const RESYNC: Duration = Duration::from_secs(3600);
/// Field manager of every status the operator writes.
pub const FIELD_MANAGER: &str = "mailvault";

/// The outcome of resolving a set, as its status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Resolved {
        mode: Mode,
        mailboxes: usize,
        sync: Option<SyncStatus>,
    },
    /// The set (or a Secret or CSV file it names) is wrong: a person must fix it.
    Invalid(String),
    /// The directory could not be read, or the sync was refused.
    SyncFailed {
        reason: &'static str,
        message: String,
    },
}

/// The set's status after `outcome`. The last accepted sync and mailbox count survive a
/// failure: the removal guard needs the one, people the other.
pub fn status(
    previous: Option<&MailboxSetStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> MailboxSetStatus {
    let now = rfc3339(now);
    let mut s = previous.cloned().unwrap_or_default();
    s.observed_generation = generation;
    let c = &mut s.conditions;
    match outcome {
        Outcome::Resolved {
            mode,
            mailboxes,
            sync,
        } => {
            s.mode = Some(mode_name(*mode).into());
            s.mailboxes = Some(*mailboxes as u64);
            let noun = if *mailboxes == 1 {
                "mailbox"
            } else {
                "mailboxes"
            };
            conditions::set(
                c,
                READY,
                true,
                "Resolved",
                format!("{mailboxes} {noun}"),
                &now,
                generation,
            );
            conditions::set(c, STALLED, false, "Resolved", "", &now, generation);
            match sync {
                Some(sync) => {
                    conditions::set(
                        c,
                        DIRECTORY_SYNCED,
                        true,
                        "Synced",
                        format!(
                            "{} users found, {} added, {} removed",
                            sync.users_found, sync.added, sync.removed
                        ),
                        &now,
                        generation,
                    );
                    s.last_sync = Some(sync.clone());
                }
                None => {
                    conditions::remove(c, DIRECTORY_SYNCED);
                    s.last_sync = None;
                }
            }
        }
        Outcome::Invalid(message) => {
            conditions::set(
                c,
                READY,
                false,
                "Invalid",
                message.clone(),
                &now,
                generation,
            );
            conditions::set(
                c,
                STALLED,
                true,
                "Invalid",
                message.clone(),
                &now,
                generation,
            );
        }
        Outcome::SyncFailed { reason, message } => {
            conditions::set(c, STALLED, false, reason, "", &now, generation);
            conditions::set(
                c,
                DIRECTORY_SYNCED,
                false,
                reason,
                message.clone(),
                &now,
                generation,
            );
            if conditions::get(c, READY).is_none() {
                conditions::set(
                    c,
                    READY,
                    true,
                    "Valid",
                    "the set is valid",
                    &now,
                    generation,
                );
            }
        }
    }
    s
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::MasterPassword => "masterPassword",
        Mode::Csv => "csv",
    }
}

/// Messages of the shared validation and resolution code name a file and line; in the
/// cluster there is none, and a missing Secret is missing from the namespace.
pub fn cluster_message(message: &str) -> String {
    message
        .strip_prefix(":0: ")
        .unwrap_or(message)
        .replace("is not in the given files", "does not exist")
}

fn located<T>(object: T) -> Located<T> {
    Located {
        file: PathBuf::new(),
        line: 0,
        object,
    }
}

/// Names of the Secrets `set` (and `profile`, if given) reference.
fn referenced_secrets(set: &MailboxSet, profile: Option<&ArchiveProfile>) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(m) = &set.spec.master_password {
        names.push(m.credentials_secret_ref.name.clone());
        if let Some(d) = &m.directory {
            names.extend(d.ldap.bind_secret_ref.iter().map(|r| r.name.clone()));
            names.extend(d.ldap.ca_secret_ref.iter().map(|r| r.name.clone()));
        }
    }
    if let Some(csv) = &set.spec.csv {
        names.push(csv.secret_ref.name.clone());
    }
    if let Some(p) = profile {
        names.extend(p.spec.server.ca_secret_ref.iter().map(|r| r.name.clone()));
    }
    names.sort();
    names.dedup();
    names
}

/// Whether `secret` is referenced by `set` or `profile`; for mapping Secret changes to the
/// objects that read them.
pub fn references(set: &MailboxSet, profile: Option<&ArchiveProfile>, secret: &str) -> bool {
    referenced_secrets(set, profile).iter().any(|s| s == secret)
}

/// The set, the profile and the Secrets they reference, read from the API server into the
/// [`Bundle`] the shared code works on. Missing Secrets are simply absent: validation
/// reports them like missing files.
pub async fn load_bundle(
    ctx: &Context,
    namespace: &str,
    set: &MailboxSet,
    profile: Option<&ArchiveProfile>,
) -> Result<Bundle, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut bundle = Bundle::default();
    for name in referenced_secrets(set, profile) {
        if let Some(secret) = api.get_opt(&name).await? {
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            bundle.secrets.push(located(SecretObject {
                namespace: namespace.to_string(),
                name,
                data,
            }));
        }
    }
    bundle.mailbox_sets.push(located(set.clone()));
    if let Some(p) = profile {
        bundle.profiles.push(located(p.clone()));
    }
    Ok(bundle)
}

/// Validates and resolves `set` as `mailvault run` does, comparing a directory sync with
/// the one on the set's status. Returns the outcome for the status, and the mailboxes.
pub async fn resolve(
    bundle: &Bundle,
    set: &MailboxSet,
    profile: Option<&ArchiveProfile>,
) -> (Outcome, Option<Resolved>) {
    let field_errors = match profile {
        Some(_) => resources::validate_profile(bundle, &bundle.profiles[0]),
        None => resources::validate_mailbox_set(bundle, &bundle.mailbox_sets[0]),
    };
    if !field_errors.is_empty() {
        let message = field_errors
            .iter()
            .map(|e| cluster_message(&format!("{}: {}", e.field, e.message)))
            .collect::<Vec<_>>()
            .join("; ");
        return (Outcome::Invalid(message), None);
    }
    let last = set.status.as_ref().and_then(|s| s.last_sync.as_ref());
    let previous = last.and_then(SyncStatus::to_record);
    match sources::resolve(bundle, &bundle.mailbox_sets[0], previous.as_ref()).await {
        Ok(mut resolved) => {
            let mut sync = resolved
                .directory_sync
                .as_ref()
                .map(SyncStatus::from_record);
            // Only the count of the last sync's users was kept: guard on counts.
            if let (Some(last), None, Some(new)) = (last, &previous, sync.as_mut()) {
                let known = last.users_found;
                new.removed = known.saturating_sub(new.users_found);
                new.added = new.users_found.saturating_sub(known);
                let max = set
                    .spec
                    .master_password
                    .as_ref()
                    .and_then(|m| m.directory.as_ref())
                    .map_or(100, |d| d.max_removed_percent);
                if directory::too_many_removed(known as usize, new.removed as usize, max) {
                    let message = format!(
                        "refusing the directory sync: it returned {} users, {} fewer than the \
                         {known} of the last sync, more than maxRemovedPercent ({max}%) allows. \
                         If they really left, raise maxRemovedPercent for one run",
                        new.users_found, new.removed
                    );
                    return (
                        Outcome::SyncFailed {
                            reason: "TooManyRemoved",
                            message,
                        },
                        None,
                    );
                }
            }
            let outcome = Outcome::Resolved {
                mode: resolved.mode,
                mailboxes: resolved.mailboxes.len(),
                sync,
            };
            resolved.directory_sync = None;
            (outcome, Some(resolved))
        }
        Err(e) => {
            let message = cluster_message(&e.to_string());
            let outcome = match e {
                SourceError::TooManyRemoved { .. } => Outcome::SyncFailed {
                    reason: "TooManyRemoved",
                    message,
                },
                SourceError::Directory { .. } => Outcome::SyncFailed {
                    reason: "DirectoryUnreachable",
                    message,
                },
                SourceError::Invalid { .. } | SourceError::Csv { .. } => Outcome::Invalid(message),
            };
            (outcome, None)
        }
    }
}

/// Writes a set's status with server-side apply.
pub async fn write_status(
    ctx: &Context,
    set: &MailboxSet,
    status: &MailboxSetStatus,
) -> Result<(), Error> {
    let namespace = set
        .namespace()
        .ok_or(Error::Incomplete("a MailboxSet without namespace"))?;
    let api: Api<MailboxSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": resources::API_VERSION,
        "kind": "MailboxSet",
        "status": status,
    });
    api.patch_status(
        &set.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Reconciles a MailboxSet: resolve it and show the result on its status.
pub async fn reconcile(set: Arc<MailboxSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = set
        .namespace()
        .ok_or(Error::Incomplete("a MailboxSet without namespace"))?;
    let bundle = load_bundle(&ctx, &namespace, &set, None).await?;
    let (outcome, _) = resolve(&bundle, &set, None).await;
    let new = status(
        set.status.as_ref(),
        set.metadata.generation,
        &outcome,
        ctx.now(),
    );
    write_status(&ctx, &set, &new).await?;
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn sync(found: u32) -> SyncStatus {
        SyncStatus {
            time: "t".into(),
            users_found: found,
            without_email: 0,
            excluded_by_selection: 0,
            added: 0,
            removed: 0,
            users: None,
        }
    }

    #[test]
    fn status_keeps_the_last_sync_through_failures() {
        let ok = Outcome::Resolved {
            mode: Mode::MasterPassword,
            mailboxes: 3,
            sync: Some(sync(3)),
        };
        let s1 = status(None, Some(1), &ok, at("2025-01-01T00:00:00Z"));
        assert_eq!(s1.mailboxes, Some(3));
        assert_eq!(s1.mode.as_deref(), Some("masterPassword"));
        assert_eq!(
            conditions::get(&s1.conditions, READY).unwrap().message,
            "3 mailboxes"
        );
        assert_eq!(
            conditions::get(&s1.conditions, DIRECTORY_SYNCED)
                .unwrap()
                .status,
            "True"
        );
        let failed = Outcome::SyncFailed {
            reason: "DirectoryUnreachable",
            message: "down".into(),
        };
        let s2 = status(Some(&s1), Some(1), &failed, at("2025-01-01T01:00:00Z"));
        assert_eq!(s2.last_sync, s1.last_sync);
        assert_eq!(s2.mailboxes, Some(3));
        let synced = conditions::get(&s2.conditions, DIRECTORY_SYNCED).unwrap();
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", "DirectoryUnreachable")
        );
        // Ready did not flip: the set itself is fine.
        let ready = conditions::get(&s2.conditions, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.as_str()),
            ("True", "2025-01-01T00:00:00Z")
        );
        let s3 = status(
            Some(&s2),
            Some(2),
            &Outcome::Invalid("bad".into()),
            at("2025-01-01T02:00:00Z"),
        );
        assert_eq!(
            conditions::get(&s3.conditions, STALLED).unwrap().status,
            "True"
        );
        assert_eq!(
            conditions::get(&s3.conditions, READY).unwrap().status,
            "False"
        );
        assert_eq!(s3.observed_generation, Some(2));
    }

    #[test]
    fn messages_fit_the_cluster() {
        assert_eq!(
            cluster_message(":0: MailboxSet mail/x: Secret mail/s is not in the given files"),
            "MailboxSet mail/x: Secret mail/s does not exist"
        );
    }
}
