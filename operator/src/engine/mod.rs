//! Archiving: every mailbox of a run, each incrementally, into the archive.
//!
//! Per folder the engine compares the server's UIDs with the UIDs the archive holds (under
//! the same UIDVALIDITY), reads size and date of the rest to apply the filter, and
//! downloads what remains in pipelined batches. Downloading and storing overlap: a writer
//! task hashes and stores each message as it arrives while the next ones stream in, and
//! commits in batches (bytes durable, then the index segment, then the sync state).

mod delete;
mod select;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

pub use delete::{deletable, Deleted};
pub use select::{decide, Decision, FolderSelector};

use crate::imap::{Credentials, Folder, ImapError, MessageMeta, ServerConfig, Session};
use crate::protocol::{
    FolderProtocol, MailboxProtocol, ProtocolError, RunProtocol, RunResult, Totals,
};
use crate::resources::{DeletionMode, DeletionSpec, FilterSpec};
use crate::sources::Mailbox;
use crate::store::{now, Archive, Direction, FolderKey, FolderState, IndexEntry, StoreError};

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
pub async fn run(
    settings: Arc<RunSettings>,
    archive: Archive,
    mailboxes: Vec<Mailbox>,
) -> RunProtocol {
    let start_time = now();
    let results: Vec<(usize, MailboxProtocol)> =
        futures::stream::iter(mailboxes.into_iter().enumerate())
            .map(|(i, mailbox)| {
                let settings = settings.clone();
                let archive = archive.clone();
                // Each mailbox on its own task, so that two mailboxes use both cores.
                async move {
                    let handle = tokio::spawn(async move {
                        archive_mailbox(&settings, &archive, &mailbox).await
                    });
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

/// Archives one mailbox. Never fails as a whole: what went wrong is in the protocol.
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
    let now = Utc::now();
    let mut outcome = Ok(());
    let mut archived_folders = Vec::new();
    for (folder, direction) in settings.folders.select(folders) {
        let key = FolderKey {
            user: mailbox.user.clone(),
            mailbox: label.clone(),
            folder: folder.path(),
        };
        let mut folder_protocol = FolderProtocol {
            name: folder.path(),
            ..FolderProtocol::default()
        };
        let result = archive_folder(
            &mut session,
            archive,
            &settings.filter,
            now,
            &folder,
            direction,
            &key,
            &mut folder_protocol,
            &mut protocol.errors,
        )
        .await;
        protocol.add_folder(folder_protocol);
        match result {
            Ok(()) => archived_folders.push((folder, key)),
            Err(FolderFailure::Folder(message)) => protocol.errors.push(ProtocolError {
                folder: Some(folder.path()),
                uid: None,
                message,
            }),
            Err(FolderFailure::Mailbox(message)) => {
                outcome = Err(format!("folder {:?}: {message}", folder.path()));
                break;
            }
        }
    }
    let clean = outcome.is_ok() && protocol.errors.is_empty() && protocol.failed == 0;
    if clean && settings.deletion.mode == DeletionMode::AfterArchiving {
        outcome = delete_pass(
            settings,
            archive,
            &mut session,
            archived_folders,
            now,
            protocol,
        )
        .await;
    }
    if outcome.is_ok() {
        session.logout().await;
    }
    outcome
}

/// Runs the deletion pass over the folders just archived.
async fn delete_pass(
    settings: &RunSettings,
    archive: &Archive,
    session: &mut Session,
    folders: Vec<(Folder, FolderKey)>,
    now: DateTime<Utc>,
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
    for (folder, key) in folders {
        match delete::delete_archived(
            session,
            archive,
            &key,
            &folder,
            &settings.deletion,
            now,
            dry_run,
        )
        .await
        {
            Ok(d) => protocol.add_deletions(&key.folder, d.deleted, d.would_delete),
            Err(FolderFailure::Folder(message)) => protocol.errors.push(ProtocolError {
                folder: Some(key.folder.clone()),
                uid: None,
                message: format!("deleting archived messages: {message}"),
            }),
            Err(FolderFailure::Mailbox(message)) => {
                return Err(format!(
                    "folder {:?}: deleting archived messages: {message}",
                    key.folder
                ));
            }
        }
    }
    Ok(())
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

#[allow(clippy::too_many_arguments)]
async fn archive_folder(
    session: &mut Session,
    archive: &Archive,
    filter: &FilterSpec,
    now: DateTime<Utc>,
    folder: &Folder,
    direction: Direction,
    key: &FolderKey,
    protocol: &mut FolderProtocol,
    errors: &mut Vec<ProtocolError>,
) -> Result<(), FolderFailure> {
    let status = session.examine(folder).await?;
    let mut state = archive.load_state(key).await?;
    // A new UIDVALIDITY means the server renumbered the folder: every message is a
    // candidate again, and content hashes tell which ones the archive already holds.
    let known_hashes = if state.uid_validity != status.uid_validity && !state.segments.is_empty() {
        let hashes: HashSet<String> = archive
            .folder_entries(key)
            .await?
            .into_iter()
            .map(|e| e.sha256)
            .collect();
        Some(hashes)
    } else {
        None
    };
    if state.uid_validity != status.uid_validity {
        state.uid_validity = status.uid_validity;
        state.archived = Default::default();
    }
    let server_uids = if status.exists == 0 {
        Vec::new()
    } else {
        session.uids().await?
    };
    let candidates: Vec<u32> = server_uids
        .iter()
        .copied()
        .filter(|&uid| !state.archived.contains(uid))
        .collect();
    protocol.already_archived = (server_uids.len() - candidates.len()) as u64;
    if candidates.is_empty() {
        return Ok(());
    }
    let metas = session.metadata(&candidates).await?;
    let mut wanted = Vec::new();
    for meta in metas {
        match decide(&meta, filter, now) {
            Decision::Archive => wanted.push(meta),
            Decision::Skip => protocol.skipped += 1,
        }
    }
    let metas: HashMap<u32, MessageMeta> = wanted.iter().map(|m| (m.uid, m.clone())).collect();
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let budget = Arc::new(Semaphore::new(WRITER_QUEUE_BYTES as usize));
    let writer = tokio::spawn(write_folder(
        archive.clone(),
        key.clone(),
        state,
        direction,
        metas,
        known_hashes,
        rx,
    ));
    let download = download(session, &wanted, &tx, &budget, protocol, errors).await;
    drop(tx);
    let written = writer.await.expect("the folder writer does not panic");
    match written {
        Ok(w) => {
            protocol.archived += w.archived;
            protocol.already_archived += w.already_archived;
            protocol.bytes += w.bytes;
        }
        Err(e) => return Err(e.into()),
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

#[derive(Default)]
struct Written {
    archived: u64,
    already_archived: u64,
    bytes: u64,
}

/// Stores messages as they arrive and has them committed in batches.
async fn write_folder(
    archive: Archive,
    key: FolderKey,
    state: FolderState,
    direction: Direction,
    metas: HashMap<u32, MessageMeta>,
    known_hashes: Option<HashSet<String>>,
    mut rx: mpsc::Receiver<Downloaded>,
) -> Result<Written, StoreError> {
    let uid_validity = state.uid_validity;
    let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE);
    let committer = tokio::spawn(commit_batches(
        archive.clone(),
        key.clone(),
        state,
        commit_rx,
    ));
    let mut written = Written::default();
    let mut pending = Pending::default();
    // Up to STORE_TRIPS batches are hashed and stored at once, each on its own blocking
    // thread, and their results taken in order.
    let mut stored = futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .ready_chunks(STORE_BATCH_MESSAGES)
        .map(|arrived: Vec<Downloaded>| {
            let uids: Vec<u32> = arrived.iter().map(|m| m.uid).collect();
            let bodies = arrived.iter().map(|m| m.bytes.clone()).collect();
            let archive = archive.clone();
            async move {
                let prepared = archive.store_messages(bodies).await?;
                // Their bytes are stored and released: room for more downloads.
                drop(arrived);
                Ok::<_, StoreError>((uids, prepared))
            }
        })
        .buffered(STORE_TRIPS);
    let result = async {
        while let Some(batch) = stored.next().await {
            // Messages the archive already holds under their hash (after a new UIDVALIDITY)
            // are stored again, which writes nothing, but get no second index entry.
            let (batch_uids, prepared) = batch?;
            for (uid, prepared) in batch_uids.into_iter().zip(prepared) {
                pending.uids.push(uid);
                if known_hashes
                    .as_ref()
                    .is_some_and(|k| k.contains(&prepared.sha256))
                {
                    written.already_archived += 1;
                    continue;
                }
                let meta = metas.get(&uid);
                let headers = prepared.headers;
                pending.entries.push(IndexEntry {
                    folder: key.folder.clone(),
                    uid_validity,
                    uid,
                    sha256: prepared.sha256,
                    size: prepared.size,
                    internal_date: meta.and_then(|m| m.internal_date).map(|d| d.to_rfc3339()),
                    flags: meta.map(|m| m.flags.clone()).unwrap_or_default(),
                    message_id: headers.message_id,
                    from: headers.from,
                    to: headers.to,
                    subject: headers.subject,
                    date: headers.date,
                    direction,
                    archived_at: now(),
                });
                written.archived += 1;
                written.bytes += prepared.size;
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
    committed?;
    Ok(written)
}

/// Index entries and UIDs of stored messages, to be made durable together.
#[derive(Default)]
struct Pending {
    entries: Vec<IndexEntry>,
    uids: Vec<u32>,
    bytes: u64,
}

/// Commits batches one after another while the writer stores the next ones, so that
/// downloading and storing do not stop for every file-system sync; batches that queue up
/// meanwhile (a slow disk) are committed together, with fewer syncs.
async fn commit_batches(
    archive: Archive,
    key: FolderKey,
    mut state: FolderState,
    mut rx: mpsc::Receiver<Pending>,
) -> Result<(), StoreError> {
    let mut queued = Vec::with_capacity(COMMIT_QUEUE);
    while rx.recv_many(&mut queued, COMMIT_QUEUE).await > 0 {
        let mut batch = Pending::default();
        for pending in queued.drain(..) {
            batch.entries.extend(pending.entries);
            batch.uids.extend(pending.uids);
        }
        commit(&archive, &key, &mut state, batch).await?;
    }
    Ok(())
}

/// Makes a batch durable in the order the format requires: message bytes, then their
/// index entries, then the sync state that names them. The bytes were stored before the
/// batch was handed over, so the first sync covers them.
async fn commit(
    archive: &Archive,
    key: &FolderKey,
    state: &mut FolderState,
    batch: Pending,
) -> Result<(), StoreError> {
    if batch.uids.is_empty() {
        return Ok(());
    }
    if !batch.entries.is_empty() {
        archive.sync().await?;
        let segment = archive.append_index(key, &batch.entries).await?;
        state.segments.push(segment);
    }
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
