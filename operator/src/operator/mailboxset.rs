//! MailboxSets in the cluster: reading a set and its Secrets into a [`Bundle`] (observe),
//! resolving it with the same code as `mailvault mailboxes` and `mailvault run` (which
//! reads its directory, if any), the set's status from the outcome ([`status`], pure), and
//! its one writer, [`record`]. A set is resolved by its own reconcile, and by a profile's
//! run, which syncs the directory: both record the outcome through [`resolve_and_record`],
//! so that the set's status always says what the last resolution found.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::ResourceExt;

use super::conditions::{self, DIRECTORY_SYNCED, READY, STALLED};
use super::context::{Context, Error};
use super::status;
use crate::resources::{
    self, ArchiveProfile, Bundle, FieldError, Located, MailboxSet, MailboxSetStatus, SecretObject,
    SyncStatus,
};
use crate::sources::{self, directory, Mode, Resolved, SourceError};
use crate::time::rfc3339;

/// How often a set is resolved again without any change (directories change on their own).
const RESYNC: Duration = Duration::from_secs(3600);

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
    warnings: Vec<String>,
    now: DateTime<Utc>,
) -> MailboxSetStatus {
    let now = rfc3339(now);
    let mut s = previous.cloned().unwrap_or_default();
    s.observed_generation = generation;
    s.warnings = warnings;
    let warning_note = s
        .warnings
        .iter()
        .map(|w| format!("; warning: {w}"))
        .collect::<String>();
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
                            "{} users found, {} added, {} removed{warning_note}",
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
        Mode::OAuth2 => "oauth2",
    }
}

/// Messages of the shared validation and resolution code name a file and line; in the
/// cluster there is none, and a missing Secret is missing from the namespace.
pub fn cluster_message(message: &str) -> String {
    message
        .strip_prefix(":0: ")
        .unwrap_or(message)
        .replace(" (:0)", "")
        .replace("is not in the given files", "does not exist")
}

/// Field errors as one status message: `field: message; ...`.
pub fn field_messages(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| cluster_message(&format!("{}: {}", e.field, e.message)))
        .collect::<Vec<_>>()
        .join("; ")
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
    if let Some(o) = &set.spec.oauth2 {
        names.push(o.credentials_secret_ref.name.clone());
        names.extend(o.ca_secret_ref.iter().map(|r| r.name.clone()));
        if let Some(ldap) = o.directory.as_ref().and_then(|d| d.ldap.as_ref()) {
            names.extend(ldap.bind_secret_ref.iter().map(|r| r.name.clone()));
            names.extend(ldap.ca_secret_ref.iter().map(|r| r.name.clone()));
        }
    }
    if let Some(p) = profile {
        names.extend(p.spec.server.ca_secret_ref.iter().map(|r| r.name.clone()));
        // Validated like the others (it must exist and hold both keys), so that a missing
        // one fails the run on the profile instead of leaving its pods waiting for a mount.
        let s3 = p.spec.store.as_ref().and_then(|s| s.s3.as_ref());
        names.extend(
            s3.and_then(|s3| s3.credentials_secret_ref.as_ref())
                .map(|r| r.name.clone()),
        );
        let encryption = p.spec.store.as_ref().and_then(|s| s.encryption.as_ref());
        names.extend(encryption.map(|e| e.key_secret_ref.name.clone()));
    }
    names.sort();
    names.dedup();
    names
}

/// The Secrets `set` and `profile` reference that are not in `bundle` (do not exist).
pub fn missing_secrets(
    bundle: &Bundle,
    set: &MailboxSet,
    profile: Option<&ArchiveProfile>,
) -> Vec<String> {
    let namespace = resources::namespace_of(&set.metadata);
    referenced_secrets(set, profile)
        .into_iter()
        .filter(|name| bundle.secret(namespace, name).is_none())
        .collect()
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
        return (Outcome::Invalid(field_messages(&field_errors)), None);
    }
    let last = set.status.as_ref().and_then(|s| s.last_sync.as_ref());
    let previous = last.and_then(SyncStatus::to_record);
    match sources::resolve(bundle, &bundle.mailbox_sets[0], previous.as_ref()).await {
        Ok(mut resolved) => {
            let mut sync = resolved
                .directory_sync
                .as_ref()
                .map(SyncStatus::from_record);
            // The last sync's names were too many to keep: guard on its sample of them.
            if let (Some(last), None, Some(new), Some(record)) = (
                last,
                &previous,
                sync.as_mut(),
                resolved.directory_sync.as_ref(),
            ) {
                let max = set.spec.directory_max_removed_percent().unwrap_or(100);
                if let Err(message) = guard_without_names(last, new, &record.users, max) {
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
            let message = cluster_message(&describe(&e));
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

/// Compares a sync with the last one when only the last one's count and sample of users
/// were kept (directories of more than [`SyncStatus::MAX_USERS`]): the share of the sample
/// that is gone estimates the share of all users that is gone, which a count alone misses
/// when as many users came as left (a wrong base DN that finds another OU of equal size).
/// Sets `new.added` and `new.removed` to the estimates; errs when too many are gone.
fn guard_without_names(
    last: &SyncStatus,
    new: &mut SyncStatus,
    users: &[String],
    max_percent: u32,
) -> Result<(), String> {
    let known = last.users_found;
    let by_count = known.saturating_sub(new.users_found);
    let (removed, evidence) = match last.user_sample.as_deref() {
        Some(sample) if !sample.is_empty() => {
            let now: HashSet<String> = users.iter().map(|u| SyncStatus::user_hash(u)).collect();
            let gone = sample.iter().filter(|h| !now.contains(*h)).count();
            let estimate = (u64::from(known) * gone as u64).div_ceil(sample.len() as u64);
            let estimate = u32::try_from(estimate).unwrap_or(u32::MAX).max(by_count);
            let evidence = format!(
                "{gone} of a sample of {} users of the last sync are gone, about {estimate} of \
                 its {known}",
                sample.len()
            );
            (estimate, evidence)
        }
        _ => (
            by_count,
            format!(
                "it returned {} users, {by_count} fewer than the {known} of the last sync",
                new.users_found
            ),
        ),
    };
    new.removed = removed;
    new.added = new
        .users_found
        .saturating_sub(known.saturating_sub(removed));
    if directory::too_many_removed(known as usize, removed as usize, max_percent) {
        return Err(format!(
            "refusing the directory sync: {evidence}, more than maxRemovedPercent \
             ({max_percent}%) allows. If they really left, raise maxRemovedPercent for one run"
        ));
    }
    Ok(())
}

/// Most CSV errors quoted in a status message; the rest are counted. The status is read
/// by every watcher and capped in size: the whole list is what `mailvault mailboxes`
/// prints.
const MAX_QUOTED_ERRORS: usize = 5;

/// A source error for the status: CSV errors summarised, the first few quoted.
fn describe(e: &SourceError) -> String {
    let SourceError::Csv {
        place,
        object,
        secret,
        errors,
    } = e
    else {
        return e.to_string();
    };
    let quoted: Vec<String> = errors
        .iter()
        .take(MAX_QUOTED_ERRORS)
        .map(ToString::to_string)
        .collect();
    let more = match errors.len().saturating_sub(MAX_QUOTED_ERRORS) {
        0 => String::new(),
        n => format!("; and {n} more (`mailvault mailboxes` lists them all)"),
    };
    format!(
        "{place}: {object}: the CSV file in Secret {secret} has {} error{}: {}{more}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        quoted.join("; ")
    )
}

/// Resolves `set` (for a run of `profile`, if given) and records the outcome on the set's
/// status; returns the outcome and the mailboxes.
pub async fn resolve_and_record(
    ctx: &Context,
    bundle: &Bundle,
    set: &MailboxSet,
    profile: Option<&ArchiveProfile>,
) -> Result<(Outcome, Option<Resolved>), Error> {
    let (outcome, resolved) = resolve(bundle, set, profile).await;
    record(ctx, set, &outcome).await?;
    Ok((outcome, resolved))
}

/// Writes the status `outcome` gives `set`: the one writer of a MailboxSet's status.
pub async fn record(ctx: &Context, set: &MailboxSet, outcome: &Outcome) -> Result<(), Error> {
    let new = status(
        set.status.as_ref(),
        set.metadata.generation,
        outcome,
        resources::directory_warnings(set),
        ctx.now(),
    );
    status::apply(ctx, set, &new).await
}

/// Reconciles a MailboxSet: resolve it and show the result on its status.
/// Its logs carry the object's namespace and name.
#[tracing::instrument(skip_all, fields(
    kind = "MailboxSet",
    namespace = set.metadata.namespace.as_deref().unwrap_or(""),
    name = set.metadata.name.as_deref().unwrap_or(""),
))]
pub async fn reconcile(set: Arc<MailboxSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = set
        .namespace()
        .ok_or(Error::Incomplete("a MailboxSet without namespace"))?;
    let bundle = load_bundle(&ctx, &namespace, &set, None).await?;
    resolve_and_record(&ctx, &bundle, &set, None).await?;
    Ok(Action::requeue(RESYNC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::SyncRecord;

    fn at(s: &str) -> DateTime<Utc> {
        crate::time::parse(s).unwrap()
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
            user_sample: None,
        }
    }

    #[test]
    fn status_keeps_the_last_sync_through_failures() {
        let ok = Outcome::Resolved {
            mode: Mode::MasterPassword,
            mailboxes: 3,
            sync: Some(sync(3)),
        };
        let s1 = status(None, Some(1), &ok, vec![], at("2025-01-01T00:00:00Z"));
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
        let s2 = status(
            Some(&s1),
            Some(1),
            &failed,
            vec![],
            at("2025-01-01T01:00:00Z"),
        );
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
            vec![],
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
    fn warnings_show_on_the_status_and_the_sync_condition() {
        let ok = Outcome::Resolved {
            mode: Mode::MasterPassword,
            mailboxes: 3,
            sync: Some(sync(3)),
        };
        let s = status(
            None,
            Some(1),
            &ok,
            vec!["plain".into()],
            at("2025-01-01T00:00:00Z"),
        );
        assert_eq!(s.warnings, ["plain"]);
        let synced = conditions::get(&s.conditions, DIRECTORY_SYNCED).unwrap();
        assert!(
            synced.message.ends_with("; warning: plain"),
            "{}",
            synced.message
        );
        let s = status(Some(&s), Some(1), &ok, vec![], at("2025-01-01T00:00:00Z"));
        assert!(s.warnings.is_empty());
    }

    fn names(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("user{i:06}")).collect()
    }

    fn record(users: Vec<String>) -> SyncRecord {
        SyncRecord {
            time: "t".into(),
            users_found: users.len() as u32,
            without_email: 0,
            excluded_by_selection: 0,
            added: 0,
            removed: 0,
            users,
        }
    }

    #[test]
    fn big_directories_are_guarded_by_a_sample_of_their_users() {
        // 20,000 users: too many names for the status, so a sample of hashes is kept.
        let last = SyncStatus::from_record(&record(names(0..20_000)));
        assert_eq!(last.users, None);
        let sample = last.user_sample.clone().unwrap();
        assert_eq!(sample.len(), SyncStatus::SAMPLE_SIZE);
        assert!(serde_json::to_string(&last).unwrap().len() < 20 * 1024);
        let check = |users: Vec<String>| {
            let mut new = SyncStatus::from_record(&record(users.clone()));
            guard_without_names(&last, &mut new, &users, 50).map(|()| (new.added, new.removed))
        };
        // The same users in another case and order: nothing lost.
        let mut same: Vec<String> = names(0..20_000).iter().map(|n| n.to_uppercase()).collect();
        same.reverse();
        assert_eq!(check(same), Ok((0, 0)));
        // A tenth replaced: allowed, and the estimate is near the truth.
        let (added, removed) = check(names(2_000..22_000)).unwrap();
        assert!((1_500..=2_500).contains(&removed), "{removed}");
        assert_eq!(added, removed);
        // Two thirds replaced by as many others: the count alone would pass it.
        let e = check(names(14_000..34_000)).unwrap_err();
        assert!(
            e.contains("of a sample of 1000 users") && e.contains("maxRemovedPercent (50%)"),
            "{e}"
        );
        // Without a sample (a status from before samples), the count still guards.
        let mut old = last.clone();
        old.user_sample = None;
        let users = names(0..5_000);
        let mut new = SyncStatus::from_record(&record(users.clone()));
        let e = guard_without_names(&old, &mut new, &users, 50).unwrap_err();
        assert!(e.contains("15000 fewer"), "{e}");
    }

    #[test]
    fn csv_errors_are_summarised_for_the_status() {
        let errors: Vec<crate::sources::csv::CsvError> = (2..12_002)
            .map(|line| crate::sources::csv::CsvError {
                line: Some(line),
                message: "expected 2 fields as in the heading line, found 1".into(),
            })
            .collect();
        let e = SourceError::Csv {
            place: ":0".into(),
            object: "MailboxSet mail/big".into(),
            secret: "mail/big key \"mailboxes.csv\"".into(),
            errors,
        };
        let message = describe(&e);
        assert!(message.len() < 1000, "{}", message.len());
        assert!(
            message.contains("has 12000 errors: line 2: expected 2 fields"),
            "{message}"
        );
        assert!(
            message.contains("line 6:") && !message.contains("line 7:"),
            "{message}"
        );
        assert!(
            message.ends_with("and 11995 more (`mailvault mailboxes` lists them all)"),
            "{message}"
        );
    }

    #[test]
    fn an_s3_store_secret_is_read_with_the_set() {
        let set: MailboxSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailvault.io/v1alpha1", "kind": "MailboxSet",
            "metadata": {"name": "s", "namespace": "mail"},
            "spec": {"csv": {"secretRef": {"name": "csv"}}}
        }))
        .unwrap();
        let profile: ArchiveProfile = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailvault.io/v1alpha1", "kind": "ArchiveProfile",
            "metadata": {"name": "p", "namespace": "mail"},
            "spec": {"mailboxSetRef": {"name": "s"}, "server": {"host": "h"},
                     "store": {"s3": {"bucket": "b", "credentialsSecretRef": {"name": "s3-creds"}}}}
        }))
        .unwrap();
        assert_eq!(
            referenced_secrets(&set, Some(&profile)),
            ["csv", "s3-creds"]
        );
        assert!(references(&set, Some(&profile), "s3-creds"));
        assert!(!references(&set, None, "s3-creds"));
    }

    #[test]
    fn messages_fit_the_cluster() {
        assert_eq!(
            cluster_message(":0: MailboxSet mail/x: Secret mail/s is not in the given files"),
            "MailboxSet mail/x: Secret mail/s does not exist"
        );
        assert_eq!(
            cluster_message(
                "spec.store.encryption.keySecretRef.key: Secret mail/k (:0) has no key \"k\""
            ),
            "spec.store.encryption.keySecretRef.key: Secret mail/k has no key \"k\""
        );
    }
}
