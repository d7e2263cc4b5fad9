//! Running ArchiveProfiles in this process, as `mailvault run` does: every profile is
//! checked and its MailboxSet resolved before anything is touched, then each is archived
//! into its store and its protocol saved there. The operator's worker archives its shard
//! of a run with [`archive`] too, so that both save what they did the same way.

use std::sync::Arc;

use tracing::Instrument;

use crate::engine::{self, RunSettings};
use crate::protocol::{RunProtocol, RunResult};
use crate::resources::{
    self, directory_warnings, namespace_of, ArchiveProfile, Bundle, Located, MailboxSet, SyncRecord,
};
use crate::sources::{self, Mailbox};
use crate::store::pack::keys::KeyRing;
use crate::store::{self, Archive, StoreError, StoreLocation};

/// Why a local run did not start: the input is invalid (nothing was touched), or something
/// it needs failed (a directory, a store).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// What a local run did.
pub struct Outcome {
    /// One protocol per profile, in the order of the profiles.
    pub protocols: Vec<RunProtocol>,
    /// Whether any protocol could not be saved in its store (it says so in its warnings).
    pub unsaved: bool,
}

impl Outcome {
    /// Every mailbox of every profile archived, and every protocol saved.
    pub fn succeeded(&self) -> bool {
        !self.unsaved
            && self
                .protocols
                .iter()
                .all(|p| p.result == RunResult::Succeeded)
    }
}

/// A profile ready to run: everything checked before any connection is made.
struct Prepared<'a> {
    profile: &'a Located<ArchiveProfile>,
    set: &'a Located<MailboxSet>,
    store: StoreLocation,
    keys: Option<KeyRing>,
    mailboxes: Vec<Mailbox>,
    directory_sync: Option<SyncRecord>,
}

/// Runs `profiles` of `bundle` once, now, each into `store` if given, else into the store
/// it names, encrypted with `keys` if given, else with the keys it names (if any). With
/// `dry_run_deletion`, nothing is deleted from a server, only counted.
pub async fn run_profiles(
    bundle: &Bundle,
    profiles: &[&Located<ArchiveProfile>],
    store: Option<&StoreLocation>,
    keys: Option<&KeyRing>,
    dry_run_deletion: bool,
) -> Result<Outcome, RunError> {
    let prepared = prepare(bundle, profiles, store, keys).await?;
    let mut outcome = Outcome {
        protocols: Vec::new(),
        unsaved: false,
    };
    for Prepared {
        profile,
        set,
        store,
        keys,
        mailboxes,
        directory_sync,
    } in prepared
    {
        let archive = store::open(&store, keys)
            .await
            .map_err(|e| RunError::Failed(e.to_string()))?;
        if let Some(record) = directory_sync {
            let (namespace, name) = names(&set.object);
            archive
                .save_directory_sync(namespace, name, &record)
                .await
                .map_err(|e| RunError::Failed(format!("saving the directory sync: {e}")))?;
        }
        let name = profile.object.metadata.name.clone().unwrap_or_default();
        let run_id = local_run_id(&name, chrono::Utc::now());
        let mut settings = RunSettings::for_profile(bundle, &profile.object, run_id.clone());
        settings.dry_run_deletion = dry_run_deletion;
        settings.warnings.extend(store.warnings());
        settings.warnings.extend(directory_warnings(&set.object));
        let span = tracing::info_span!(
            "run",
            namespace = namespace_of(&profile.object.metadata),
            profile = %name,
            run = %run_id
        );
        let (mut protocol, saved) = archive_into(settings, &archive, mailboxes, &run_id)
            .instrument(span)
            .await;
        if let Err(e) = saved {
            // The protocol still reaches the user, and the run counts as failed.
            protocol.warnings.push(format!(
                "the run protocol could not be saved in the store: {e}"
            ));
            outcome.unsaved = true;
        }
        outcome.protocols.push(protocol);
    }
    Ok(outcome)
}

/// Validates every profile and resolves its MailboxSet, so that invalid input touches
/// nothing; all errors at once.
async fn prepare<'a>(
    bundle: &'a Bundle,
    profiles: &[&'a Located<ArchiveProfile>],
    store: Option<&StoreLocation>,
    keys: Option<&KeyRing>,
) -> Result<Vec<Prepared<'a>>, RunError> {
    let mut errors = Vec::new();
    let mut invalid = false;
    let mut prepared = Vec::new();
    for profile in profiles.iter().copied() {
        let field_errors = resources::validate_profile(bundle, profile);
        if !field_errors.is_empty() {
            errors.extend(field_errors.iter().map(ToString::to_string));
            invalid = true;
            continue;
        }
        let namespace = namespace_of(&profile.object.metadata);
        let set = bundle
            .mailbox_set(namespace, &profile.object.spec.mailbox_set_ref.name)
            .expect("validated");
        let store = match store {
            Some(store) => store.clone(),
            None => StoreLocation::of_spec(profile.object.spec.store.as_ref(), |key| {
                let secret = bundle.secret(namespace, store_secret(&profile.object)?)?;
                secret.object.data.get(key).cloned()
            }),
        };
        let keys = match keys {
            Some(keys) => Some(keys.clone()),
            None => {
                let spec = profile.object.spec.store.as_ref();
                let read = |key: &str| {
                    let name = &spec?.encryption.as_ref()?.key_secret_ref.name;
                    let secret = bundle.secret(namespace, name)?;
                    secret.object.data.get(key).cloned()
                };
                match store::keys_of_spec(spec, read) {
                    Ok(keys) => keys,
                    Err(message) => {
                        errors.push(format!("{}: {message}", profile.place()));
                        invalid = true;
                        continue;
                    }
                }
            }
        };
        let previous = match store::open_existing(&store, keys.clone()).await {
            Ok(Some(archive)) => recorded_sync(&archive, &set.object).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        let previous = match previous {
            Ok(previous) => previous,
            Err(message) => {
                errors.push(message);
                continue;
            }
        };
        match sources::resolve(bundle, set, previous.as_ref()).await {
            Ok(resolved) => {
                if let Err(e) = sources::oauth2::preflight(&resolved.mailboxes).await {
                    let (namespace, name) = names(&set.object);
                    errors.push(format!(
                        "{}: MailboxSet {namespace}/{name}: {e}",
                        set.place()
                    ));
                    continue;
                }
                prepared.push(Prepared {
                    profile,
                    set,
                    store,
                    keys,
                    mailboxes: resolved.mailboxes,
                    directory_sync: resolved.directory_sync,
                })
            }
            Err(e) => {
                invalid |= e.is_invalid_input();
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        return Ok(prepared);
    }
    errors.dedup();
    let message = errors.join("\n");
    Err(match invalid {
        true => RunError::Invalid(message),
        false => RunError::Failed(message),
    })
}

/// The name of the Secret of an S3 store's credentials, if the profile names one.
fn store_secret(profile: &ArchiveProfile) -> Option<&str> {
    let s3 = profile.spec.store.as_ref()?.s3.as_ref()?;
    Some(s3.credentials_secret_ref.as_ref()?.name.as_str())
}

fn names(set: &MailboxSet) -> (&str, &str) {
    (
        namespace_of(&set.metadata),
        set.metadata.name.as_deref().unwrap_or(""),
    )
}

/// The last directory sync of `set` recorded in `archive`, for a set that reads a
/// directory: what the removal guard compares the next sync with.
pub async fn recorded_sync(
    archive: &Archive,
    set: &MailboxSet,
) -> Result<Option<SyncRecord>, String> {
    if set.spec.directory_max_removed_percent().is_none() {
        return Ok(None);
    }
    let (namespace, name) = names(set);
    archive
        .load_directory_sync(namespace, name)
        .await
        .map_err(|e| format!("reading the last directory sync: {e}"))
}

/// Archives `mailboxes` into `archive` and saves the protocol there as `protocol_id`;
/// returns the protocol and the store key it was saved under.
pub async fn archive_into(
    settings: RunSettings,
    archive: &Archive,
    mailboxes: Vec<Mailbox>,
    protocol_id: &str,
) -> (RunProtocol, Result<String, StoreError>) {
    let mut protocol =
        engine::archive_mailboxes(Arc::new(settings), archive.clone(), mailboxes).await;
    // Compaction only merges and removes what a newer index object covers: when it fails,
    // nothing is lost, and the next run tries again.
    if let Err(e) = archive.compact_if_due().await {
        protocol.warnings.push(format!(
            "compacting the pack index failed (nothing is lost): {e}"
        ));
    }
    let saved = archive
        .save_protocol(
            &protocol.namespace,
            &protocol.profile,
            protocol_id,
            &protocol,
        )
        .await;
    (protocol, saved)
}

/// A run's name for local runs: the profile, the start time to the second, and a random
/// suffix, so that two runs in the same second (or on two machines) never share a name,
/// and the second's protocol never replaces the first's.
pub fn local_run_id(profile: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{profile}-{}-{}", now.format("%Y%m%d%H%M%S"), &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_runs_in_the_same_second_have_distinct_names() {
        let now = chrono::Utc::now();
        let first = local_run_id("demo", now);
        let second = local_run_id("demo", now);
        assert_ne!(first, second);
        assert!(first.starts_with(&format!("demo-{}-", now.format("%Y%m%d%H%M%S"))));
    }
}
