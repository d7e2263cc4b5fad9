//! Archiving: every mailbox of a run, each incrementally, into the archive.
//!
//! Per folder the engine lists the server's messages with their sizes and dates in one
//! command, takes as archived only the UIDs whose archived entry (of the same server and
//! login, under the same UIDVALIDITY) shows the same size and date, applies the filter to
//! the rest, and downloads what remains in pipelined batches. Downloading and storing overlap: a writer
//! task hashes and stores each message as it arrives while the next ones stream in, and
//! commits in batches (bytes durable, then the index segment, then the sync state).

mod delete;
mod identity;
mod select;
mod settings;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

pub use select::{decide, Decision, FolderSelector};
pub use settings::RunParts;

use crate::imap::{Credentials, Folder, ImapError, MessageMeta, ServerConfig, Session};
use crate::protocol::{
    FolderProtocol, MailboxProtocol, ProtocolError, RunProtocol, RunResult, Totals,
};
use crate::resources::{DeletionMode, DeletionSpec, FilterSpec};
use crate::sources::Mailbox;
use crate::store::pack::Durable;
use crate::store::{
    Archive, Checked, Direction, FolderKey, FolderState, IndexEntry, StoreError, UidSet,
};
use crate::time::now;

/// Messages per download command.
const FETCH_BATCH_MESSAGES: usize = 500;
/// Bytes per download command (by RFC822.SIZE), so that a batch of large messages does
/// not sit in memory at once.
const FETCH_BATCH_BYTES: u64 = 32 << 20;
/// Messages per commit (one durability barrier and one index segment).
const COMMIT_MESSAGES: usize = 1000;
/// Bytes per commit.
const COMMIT_BYTES: u64 = 128 << 20;
/// Batches waiting for the committer, at most; the writer waits when the disk is that far
/// behind.
const COMMIT_QUEUE: usize = 4;
/// Downloaded messages waiting for the writer, at most.
const WRITER_QUEUE: usize = 64;
/// Bytes of downloaded messages queued for the writer or being stored, at most; a larger
/// message goes alone. The download holds one more message while it waits, so a folder's
/// messages take at most the largest one plus the larger of this and the largest one.
const WRITER_QUEUE_BYTES: u32 = 32 << 20;
/// Messages the writer hashes and stores per trip off the async threads, at most (see
/// [`Archive::store_messages`]).
const STORE_BATCH_MESSAGES: usize = 64;
/// Trips under way at once.
const STORE_TRIPS: usize = 2;

/// Everything a run needs besides the mailboxes.
pub struct RunSettings {
    pub namespace: String,
    pub profile: String,
    pub run_id: String,
    pub server: ServerConfig,
    pub folders: FolderSelector,
    pub filter: FilterSpec,
    pub deletion: DeletionSpec,
    /// Count what the deletion rules would delete, delete nothing.
    pub dry_run_deletion: bool,
    pub max_parallel: usize,
    pub warnings: Vec<String>,
}

/// Archives every mailbox, `max_parallel` at a time, and returns the protocol.
pub async fn archive_mailboxes(
    settings: Arc<RunSettings>,
    archive: Archive,
    mailboxes: Vec<Mailbox>,
) -> RunProtocol {
    let start_time = now();
    // The run's span (profile, run), for the mailboxes' tasks.
    let span = tracing::Span::current();
    let results: Vec<(usize, MailboxProtocol)> =
        futures::stream::iter(mailboxes.into_iter().enumerate())
            .map(|(i, mailbox)| {
                let settings = settings.clone();
                let archive = archive.clone();
                let span = span.clone();
                // Each mailbox on its own task, so that two mailboxes use both cores.
                async move {
                    let handle = tokio::spawn(
                        async move { archive_mailbox(&settings, &archive, &mailbox).await }
                            .instrument(span),
                    );
                    (i, handle.await.expect("archiving a mailbox does not panic"))
                }
            })
            .buffer_unordered(settings.max_parallel.max(1))
            .collect()
            .await;
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    let mut protocol = RunProtocol {
        profile: settings.profile.clone(),
        namespace: settings.namespace.clone(),
        run_id: settings.run_id.clone(),
        start_time,
        completion_time: String::new(),
        result: RunResult::Succeeded,
        store: archive.describe(),
        totals: Totals::default(),
        mailboxes: results.into_iter().map(|(_, m)| m).collect(),
        warnings: settings.warnings.clone(),
    };
    protocol.settle();
    protocol.completion_time = now();
    protocol
}

/// Archives one mailbox. Never fails as a whole: what went wrong is in the protocol. Its
/// logs carry the mailbox and the archive user.
#[tracing::instrument(skip_all, fields(mailbox = %mailbox.label(), user = %mailbox.user))]
pub async fn archive_mailbox(
    settings: &RunSettings,
    archive: &Archive,
    mailbox: &Mailbox,
) -> MailboxProtocol {
    let mut protocol = MailboxProtocol::new(mailbox.label(), &mailbox.user);
    let fatal = archive_folders(settings, archive, mailbox, &mut protocol)
        .await
        .err()
        .map(|message| {
            protocol.errors.push(ProtocolError {
                folder: None,
                uid: None,
                message,
            })
        })
        .is_some();
    protocol.settle(fatal);
    tracing::info!(
        mailbox = %protocol.mailbox,
        result = ?protocol.result,
        archived = protocol.archived,
        already_archived = protocol.already_archived,
        failed = protocol.failed,
        "mailbox done"
    );
    protocol
}

fn credentials(mailbox: &Mailbox) -> Credentials {
    if let Some(tokens) = &mailbox.oauth2 {
        return Credentials::OAuth2 {
            user: mailbox.login.clone(),
            tokens: tokens.clone(),
        };
    }
    match &mailbox.authorization_identity {
        Some(authz) => Credentials::Master {
            authorization_identity: authz.clone(),
            master_user: mailbox.login.clone(),
            password: mailbox.password.clone(),
        },
        None => Credentials::User {
            login: mailbox.login.clone(),
            password: mailbox.password.clone(),
        },
    }
}

/// Archives the folders of one mailbox; `Err` is a failure of the whole mailbox (no
/// connection, store failing), after which the rest of the mailbox is not attempted.
async fn archive_folders(
    settings: &RunSettings,
    archive: &Archive,
    mailbox: &Mailbox,
    protocol: &mut MailboxProtocol,
) -> Result<(), String> {
    let mut session = Session::connect(&settings.server, &credentials(mailbox))
        .await
        .map_err(|e| {
            protocol.login_rejected = e.is_permanent();
            e.to_string()
        })?;
    let label = mailbox.label().to_string();
    archive
        .ensure_mailbox(&mailbox.user, &label)
        .await
        .map_err(|e| e.to_string())?;
    let folders = session.folders().await.map_err(|e| e.to_string())?;
    let source = identity::source(&settings.server, mailbox);
    let now = Utc::now();
    let mut outcome = Ok(());
    let mut archived_folders = Vec::new();
    for (folder, direction) in settings.folders.select(folders) {
        let key = if folder.named_by_path {
            FolderKey::new(&mailbox.user, &label, &folder.path())
        } else {
            FolderKey::by_server_name(&mailbox.user, &label, &folder.path(), &folder.raw)
        };
        let job = FolderJob {
            archive,
            filter: &settings.filter,
            now,
            folder,
            direction,
            key,
            source: &source,
        };
        let mut folder_protocol = FolderProtocol {
            name: job.folder.path(),
            ..FolderProtocol::default()
        };
        let result = archive_folder(
            &mut session,
            &job,
            &UidSet::new(),
            &mut folder_protocol,
            protocol,
        )
        .await;
        protocol.add_folder(folder_protocol);
        match result {
            Ok(()) => archived_folders.push(job),
            Err(FolderFailure::Folder(message)) => protocol.errors.push(ProtocolError {
                folder: Some(job.folder.path()),
                uid: None,
                message,
            }),
            Err(FolderFailure::Mailbox(message)) => {
                outcome = Err(format!("folder {:?}: {message}", job.folder.path()));
                break;
            }
        }
    }
    let clean = outcome.is_ok() && protocol.errors.is_empty() && protocol.failed == 0;
    if clean && settings.deletion.mode == DeletionMode::AfterArchiving {
        outcome = delete_pass(settings, &mut session, &archived_folders, protocol).await;
    }
    if outcome.is_ok() {
        session.logout().await;
    }
    outcome
}

/// Runs the deletion pass over the folders just archived. Messages it finds not proven
/// archived are archived again, at once.
async fn delete_pass(
    settings: &RunSettings,
    session: &mut Session,
    folders: &[FolderJob<'_>],
    protocol: &mut MailboxProtocol,
) -> Result<(), String> {
    let dry_run = settings.dry_run_deletion;
    let uidplus = session
        .has_capability("UIDPLUS")
        .await
        .map_err(|e| e.to_string())?;
    if !dry_run && !uidplus {
        protocol.warnings.push(
            "deletion skipped: the server does not support UIDPLUS, so expunging only the archived messages is not possible"
                .into(),
        );
        return Ok(());
    }
    for job in folders {
        let name = job.folder.path();
        let deleted = delete::delete_archived(session, job, &settings.deletion, dry_run).await;
        let deleted = match deleted {
            Ok(d) => d,
            Err(FolderFailure::Folder(message)) => {
                protocol.errors.push(ProtocolError {
                    folder: Some(name),
                    uid: None,
                    message: format!("deleting archived messages: {message}"),
                });
                continue;
            }
            Err(FolderFailure::Mailbox(message)) => {
                return Err(format!(
                    "folder {name:?}: deleting archived messages: {message}"
                ));
            }
        };
        protocol.add_deletions(&name, deleted.deleted, deleted.would_delete);
        if deleted.suspects.is_empty() {
            continue;
        }
        let uids: Vec<u32> = deleted.suspects.iter().collect();
        protocol.warnings.push(format!(
            "folder {name:?}: {} archived messages were not deleted because the archive could not prove it holds them ({}; UIDs {}); they are archived again",
            uids.len(),
            deleted.reasons.join("; "),
            identity::some_uids(&uids)
        ));
        let mut again = FolderProtocol {
            name: name.clone(),
            ..FolderProtocol::default()
        };
        let result = archive_folder(session, job, &deleted.suspects, &mut again, protocol).await;
        // What was counted as archived before is not counted twice.
        again.already_archived = 0;
        again.skipped = 0;
        protocol.add_folder(again);
        match result {
            Ok(()) => {}
            Err(FolderFailure::Folder(message)) => protocol.errors.push(ProtocolError {
                folder: Some(name),
                uid: None,
                message: format!("archiving again: {message}"),
            }),
            Err(FolderFailure::Mailbox(message)) => {
                return Err(format!("folder {name:?}: archiving again: {message}"));
            }
        }
    }
    Ok(())
}

/// One folder to archive, and what archiving it needs to know.
struct FolderJob<'a> {
    archive: &'a Archive,
    filter: &'a FilterSpec,
    now: DateTime<Utc>,
    folder: Folder,
    direction: Direction,
    key: FolderKey,
    /// Whose UIDs these are (see [`identity::source`]).
    source: &'a str,
}

enum FolderFailure {
    /// This folder failed; the session is still usable.
    Folder(String),
    /// The connection or the store is gone.
    Mailbox(String),
}

impl From<ImapError> for FolderFailure {
    fn from(e: ImapError) -> Self {
        match e {
            ImapError::Command { .. } => FolderFailure::Folder(e.to_string()),
            _ => FolderFailure::Mailbox(e.to_string()),
        }
    }
}

impl From<StoreError> for FolderFailure {
    fn from(e: StoreError) -> Self {
        FolderFailure::Mailbox(format!("archive store: {e}"))
    }
}

/// Archives what the folder has that the archive does not: messages at UIDs the archive
/// has not seen, and those whose UID it has seen but whose size or date show another
/// message there now. `recheck` are UIDs to fetch again whatever the archive says (the
/// deletion pass found them not proven archived); their stored copies are replaced.
async fn archive_folder(
    session: &mut Session,
    job: &FolderJob<'_>,
    recheck: &UidSet,
    protocol: &mut FolderProtocol,
    mailbox: &mut MailboxProtocol,
) -> Result<(), FolderFailure> {
    let archive = job.archive;
    let name = job.folder.path();
    let status = session.examine(&job.folder).await?;
    let loaded = archive.load_state(&job.key, job.source).await?;
    let mut state = loaded.state;
    let mut identity_changed = false;
    if let Some(previous) = loaded.replaced {
        mailbox.warnings.push(format!(
            "folder {name:?}: the archive's record of this folder belongs to another source ({previous}), not {}: its messages are checked by their content, nothing is taken as archived by its UID",
            job.source
        ));
        identity_changed = true;
    }
    // A new UIDVALIDITY means the server renumbered the folder: every message is a
    // candidate again, and content hashes tell which ones the archive already holds.
    if state.uid_validity != status.uid_validity {
        identity_changed |= !state.segments.is_empty();
        state.uid_validity = status.uid_validity;
        state.archived = UidSet::new();
        state.checked = None;
    }
    let messages = if status.exists == 0 {
        Vec::new()
    } else {
        session.messages(false).await?
    };
    let archived: UidSet = messages
        .iter()
        .map(|m| m.uid)
        .filter(|&uid| state.archived.contains(uid))
        .collect();
    // The last check still holds when the same UIDs show the same sizes and dates: then
    // no index segment needs reading.
    let unchanged = recheck.is_empty()
        && state.checked.as_ref().is_some_and(|c| {
            c.uids == archived && c.digest == identity::digest(&messages, &archived)
        });
    let mut entries = None;
    let verified = if unchanged || archived.is_empty() {
        archived
    } else {
        let all = archive.folder_identities(&job.key).await?;
        let latest = identity::latest_entries(
            &all,
            job.source,
            state.legacy_entries,
            state.uid_validity,
            &name,
        );
        let mut checked = identity::check(&messages, &archived, &latest);
        for uid in recheck.iter().filter(|&uid| checked.verified.contains(uid)) {
            checked.changed.push(uid);
        }
        checked.verified = checked
            .verified
            .iter()
            .filter(|&uid| !recheck.contains(uid))
            .collect();
        let changed_by_server: Vec<u32> = checked
            .changed
            .iter()
            .copied()
            .filter(|&uid| !recheck.contains(uid))
            .collect();
        if !changed_by_server.is_empty() {
            mailbox.warnings.push(format!(
                "folder {name:?}: {} messages differ in size or date from what was archived under their UIDs ({}): the server's messages there are archived as new",
                changed_by_server.len(),
                identity::some_uids(&changed_by_server)
            ));
        }
        identity_changed |= !checked.changed.is_empty();
        entries = Some(all);
        checked.verified
    };
    if !unchanged {
        // Saved states claim nothing about this listing until it is checked whole.
        state.checked = None;
    }
    // Messages found again by content (renumbered, or from another source) get an entry
    // that records where they are now, without being listed twice.
    let known_hashes = if identity_changed {
        let all = match entries {
            Some(all) => all,
            None => archive.folder_identities(&job.key).await?,
        };
        Some(all.into_iter().map(|e| e.sha256).collect::<HashSet<_>>())
    } else {
        None
    };
    protocol.already_archived = verified.len();
    let mut wanted = Vec::new();
    for meta in messages.iter().filter(|m| !verified.contains(m.uid)) {
        match decide(meta, job.filter, job.now) {
            Decision::Archive => wanted.push(meta.clone()),
            Decision::Skip => protocol.skipped += 1,
        }
    }
    let previous_check = state.checked.clone();
    let (committed, download) = if wanted.is_empty() {
        (Some((state, UidSet::new())), Ok(()))
    } else {
        let metas: HashMap<u32, MessageMeta> = wanted.iter().map(|m| (m.uid, m.clone())).collect();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let budget = Arc::new(Semaphore::new(WRITER_QUEUE_BYTES as usize));
        let writer = tokio::spawn(write_folder(
            archive.clone(),
            Target {
                key: job.key.clone(),
                source: job.source.to_string(),
                direction: job.direction,
                known_hashes,
                replace: !recheck.is_empty(),
            },
            state,
            metas,
            rx,
        ));
        let download = download(
            session,
            &wanted,
            &tx,
            &budget,
            protocol,
            &mut mailbox.errors,
        )
        .await;
        drop(tx);
        let written = writer.await.expect("the folder writer does not panic")?;
        protocol.archived += written.archived;
        protocol.already_archived += written.already_archived;
        protocol.bytes += written.bytes;
        (
            download
                .is_ok()
                .then_some((written.state, written.committed)),
            download,
        )
    };
    // Record the check of every UID now proven: those that matched, and those just
    // archived (their entries carry the sizes and dates listed).
    if let Some((mut state, committed)) = committed.filter(|(_, c)| !(unchanged && c.is_empty())) {
        let mut proven = verified;
        proven.extend(&committed);
        let check = Checked {
            digest: identity::digest(&messages, &proven),
            uids: proven,
        };
        if previous_check.as_ref() != Some(&check) {
            state.checked = Some(check);
            archive.save_state(&job.key, &state).await?;
        }
    }
    download
}

/// Downloads the wanted messages in batches and hands them to the writer.
async fn download(
    session: &mut Session,
    wanted: &[MessageMeta],
    tx: &mpsc::Sender<Downloaded>,
    budget: &Arc<Semaphore>,
    protocol: &mut FolderProtocol,
    errors: &mut Vec<ProtocolError>,
) -> Result<(), FolderFailure> {
    for batch in batches(wanted) {
        let mut missing: HashSet<u32> = batch.iter().copied().collect();
        let mut stream = Box::pin(session.fetch_bodies(&batch).await?);
        while let Some(item) = stream.next().await {
            let message = item?;
            missing.remove(&message.uid);
            let Some(bytes) = message.bytes else {
                protocol.failed += 1;
                errors.push(ProtocolError {
                    folder: Some(protocol.name.clone()),
                    uid: Some(message.uid),
                    message: "the server returned no body for this message".into(),
                });
                continue;
            };
            let share = bytes.len().min(WRITER_QUEUE_BYTES as usize) as u32;
            let permit = budget
                .clone()
                .acquire_many_owned(share)
                .await
                .expect("the budget is never closed");
            let downloaded = Downloaded {
                uid: message.uid,
                flags: message.flags,
                bytes,
                _budget: permit,
            };
            if tx.send(downloaded).await.is_err() {
                // The writer stopped: its error is reported by the caller.
                return Ok(());
            }
        }
        let mut missing: Vec<u32> = missing.into_iter().collect();
        missing.sort_unstable();
        for uid in missing {
            // Typically expunged by another client since we listed the folder.
            protocol.failed += 1;
            errors.push(ProtocolError {
                folder: Some(protocol.name.clone()),
                uid: Some(uid),
                message: "the server returned nothing for this message (expunged meanwhile?)"
                    .into(),
            });
        }
    }
    Ok(())
}

/// A message on its way from the download to the writer, holding its share of the budget
/// of bytes in between until it is stored.
struct Downloaded {
    uid: u32,
    flags: Vec<String>,
    bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// Splits messages into download commands by count and by size.
fn batches(metas: &[MessageMeta]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for meta in metas {
        if !current.is_empty()
            && (current.len() >= FETCH_BATCH_MESSAGES || bytes + meta.size > FETCH_BATCH_BYTES)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(meta.uid);
        bytes += meta.size;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What the writer of a folder stores and how.
struct Target {
    key: FolderKey,
    source: String,
    direction: Direction,
    /// Hashes the folder already lists, when messages may be ones it holds under another
    /// UID or source: those get alias entries.
    known_hashes: Option<HashSet<String>>,
    /// Replace stored copies rather than keep them.
    replace: bool,
}

struct Written {
    archived: u64,
    already_archived: u64,
    bytes: u64,
    /// The state as last committed.
    state: FolderState,
    /// UIDs committed.
    committed: UidSet,
}

/// Stores messages as they arrive and has them committed in batches.
async fn write_folder(
    archive: Archive,
    target: Target,
    state: FolderState,
    metas: HashMap<u32, MessageMeta>,
    mut rx: mpsc::Receiver<Downloaded>,
) -> Result<Written, StoreError> {
    let uid_validity = state.uid_validity;
    let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE);
    let committer = tokio::spawn(commit_batches(
        archive.clone(),
        target.key.clone(),
        state,
        commit_rx,
    ));
    let (mut archived, mut already_archived, mut bytes) = (0, 0, 0);
    let mut pending = Pending::default();
    let replace = target.replace;
    // Up to STORE_TRIPS batches are hashed and stored at once, each on its own blocking
    // thread, and their results taken in order.
    let mut stored = futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .ready_chunks(STORE_BATCH_MESSAGES)
        .map(|mut arrived: Vec<Downloaded>| {
            let uids: Vec<(u32, Vec<String>)> = arrived
                .iter_mut()
                .map(|m| (m.uid, std::mem::take(&mut m.flags)))
                .collect();
            let bodies = arrived.iter().map(|m| m.bytes.clone()).collect();
            let archive = archive.clone();
            async move {
                let prepared = archive.store_messages(bodies, replace).await?;
                // Their bytes are stored and released: room for more downloads.
                drop(arrived);
                Ok::<_, StoreError>((uids, prepared))
            }
        })
        .buffered(STORE_TRIPS);
    let result = async {
        while let Some(batch) = stored.next().await {
            let (batch_uids, prepared) = batch?;
            for ((uid, flags), prepared) in batch_uids.into_iter().zip(prepared) {
                pending.uids.push(uid);
                let meta = metas.get(&uid);
                // A message the folder already lists (found again after a new UIDVALIDITY,
                // or from another source) gets an alias: where it is now, for the identity
                // checks, without being listed twice.
                let alias = target
                    .known_hashes
                    .as_ref()
                    .is_some_and(|k| k.contains(&prepared.sha256));
                let headers = prepared.headers;
                pending.durables.extend(prepared.durable);
                pending.entries.push(IndexEntry {
                    folder: target.key.folder.clone(),
                    source: Some(target.source.clone()),
                    uid_validity,
                    uid,
                    sha256: prepared.sha256,
                    blob: prepared.blob,
                    size: prepared.size,
                    server_size: meta.map(|m| m.size).filter(|&s| s != prepared.size),
                    internal_date: meta.and_then(|m| m.internal_date).map(|d| d.to_rfc3339()),
                    flags,
                    message_id: headers.message_id,
                    from: headers.from,
                    to: headers.to,
                    subject: headers.subject,
                    date: headers.date,
                    direction: target.direction,
                    archived_at: now(),
                    alias,
                });
                if alias {
                    already_archived += 1;
                    continue;
                }
                archived += 1;
                bytes += prepared.size;
                pending.bytes += prepared.size;
            }
            let full = pending.uids.len() >= COMMIT_MESSAGES || pending.bytes >= COMMIT_BYTES;
            if full && commits.send(std::mem::take(&mut pending)).await.is_err() {
                // The committer failed; its error is returned below.
                return Ok(());
            }
        }
        Ok::<_, StoreError>(())
    }
    .await;
    // What was stored is committed even when storing the rest failed.
    if !pending.uids.is_empty() {
        let _ = commits.send(pending).await;
    }
    drop(commits);
    let committed = committer
        .await
        .expect("the folder committer does not panic");
    result?;
    let (state, committed) = committed?;
    Ok(Written {
        archived,
        already_archived,
        bytes,
        state,
        committed,
    })
}

/// Index entries and UIDs of stored messages, to be made durable together.
#[derive(Default)]
struct Pending {
    entries: Vec<IndexEntry>,
    uids: Vec<u32>,
    bytes: u64,
    /// When the messages' packs are durable.
    durables: Vec<Durable>,
}

/// Commits batches one after another while the writer stores the next ones, so that
/// downloading and storing do not stop for every file-system sync; batches that queue up
/// meanwhile (a slow disk) are committed together, with fewer syncs. Returns the state as
/// last saved and the UIDs committed.
async fn commit_batches(
    archive: Archive,
    key: FolderKey,
    mut state: FolderState,
    mut rx: mpsc::Receiver<Pending>,
) -> Result<(FolderState, UidSet), StoreError> {
    let mut queued = Vec::with_capacity(COMMIT_QUEUE);
    let mut committed = UidSet::new();
    while rx.recv_many(&mut queued, COMMIT_QUEUE).await > 0 {
        let mut batch = Pending::default();
        for pending in queued.drain(..) {
            batch.entries.extend(pending.entries);
            batch.uids.extend(pending.uids);
            batch.durables.extend(pending.durables);
        }
        let uids = batch.uids.clone();
        commit(&archive, &key, &mut state, batch).await?;
        for uid in uids {
            committed.insert(uid);
        }
    }
    Ok((state, committed))
}

/// Makes a batch durable in the order the format requires: message bytes (their packs
/// with the packs' indexes), then their index entries, then the sync state that names
/// them. Waiting for the packs closes the one being filled if it holds any of them: all
/// folders being archived share it, so a commit also makes other folders' messages
/// durable.
async fn commit(
    archive: &Archive,
    key: &FolderKey,
    state: &mut FolderState,
    batch: Pending,
) -> Result<(), StoreError> {
    if batch.uids.is_empty() {
        return Ok(());
    }
    archive.make_durable(&batch.durables).await?;
    let segment = archive.append_index(key, &batch.entries).await?;
    state.segments.push(segment);
    archive.sync().await?;
    for uid in batch.uids {
        state.archived.insert(uid);
    }
    archive.save_state(key, state).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_size() {
        let meta = |uid, size| MessageMeta {
            uid,
            size,
            internal_date: None,
            flags: vec![],
        };
        let metas: Vec<_> = (1..=1200).map(|uid| meta(uid, 1000)).collect();
        let b = batches(&metas);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 200]);
        let metas = vec![meta(1, 10), meta(2, 40 << 20), meta(3, 10), meta(4, 10)];
        assert_eq!(batches(&metas), [vec![1], vec![2], vec![3, 4]]);
    }
}
