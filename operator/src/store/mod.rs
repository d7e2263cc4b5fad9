//! The archive: its format, and the object stores it lives in.
//!
//! The format is a set of objects under one root, the same in a local directory and in an
//! S3 bucket:
//!
//! ```text
//! messages/<aa>/<sha256>                            exact message bytes, content-addressed
//! users/<user>/user.json                             the archive user
//! users/<user>/mailboxes/<mailbox>/mailbox.json      the mailbox label (email address)
//! users/<user>/mailboxes/<mailbox>/folders/<folder>/state.json        sync state
//! users/<user>/mailboxes/<mailbox>/folders/<folder>/index/<seg>.jsonl index entries
//! runs/<namespace>/<profile>/<run id>.json           run protocols
//! directory/<namespace>/<mailbox set>.json           last accepted directory sync
//! ```
//!
//! Every object is either immutable and uniquely named (messages, index segments,
//! protocols) or replaced whole (state, records), so concurrent writers and retried writes
//! can neither corrupt nor lose anything, and nothing depends on conditional writes.
//! Durability follows the order bytes → index entry → sync state: the state of a folder
//! only ever names UIDs whose index entries are durable, and an index segment written
//! before a crash but not yet named by the state is picked up by the next run.
//!
//! Identity is recorded, never assumed. A folder's state names its source (the server and
//! the login its UIDs belong to), and every index entry names its source and carries the
//! server's size and INTERNALDATE of the message besides its hash, so that a later run can
//! check that the message the server now has at a UID is the archived one before it skips
//! or deletes it. A state of another source (another server, another login, a second
//! mailbox mapped to the same place) is not trusted at all.

pub mod local;
mod open;
pub mod s3;
mod uidset;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use open::{local_path, open, open_existing, S3Options, DEFAULT_STORE};
pub use uidset::UidSet;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {operation} {key}: {message}")]
    Backend {
        store: String,
        operation: &'static str,
        key: String,
        message: String,
    },
    /// The store cannot be used at all (no such bucket, credentials refused); nothing
    /// was written.
    #[error("{store}: cannot open the archive store: {message}")]
    Open { store: String, message: String },
    #[error("{store}: {key} is damaged: {message}")]
    Corrupt {
        store: String,
        key: String,
        message: String,
    },
}

/// Where an archive lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    S3(s3::S3Config),
}

impl StoreLocation {
    /// The directory, or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Local(path) => path.display().to_string(),
            StoreLocation::S3(config) => config.describe(),
        }
    }
}

/// Message uploads at once to a store with latency (S3).
const UPLOADS_IN_FLIGHT: usize = 16;

/// A flat namespace of objects: the contract every backend meets.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Where the store is, for messages (`/srv/archive`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Stores `bytes` under `key`, replacing any previous object atomically: a reader sees
    /// the old object or the new one, never a mix. Durable after the next [`sync`].
    ///
    /// [`sync`]: ObjectStore::sync
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// Stores a content-addressed object unless one of that size is already there.
    /// Returns whether it was written.
    async fn put_immutable(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError>;

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// [`get`](ObjectStore::get), but from the storage medium itself rather than a cache
    /// of it (the page cache of a local disk): a read that proves the object is durable.
    async fn read_back(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.get(key).await
    }

    /// Every key that starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Makes every put that returned before this call durable.
    async fn sync(&self) -> Result<(), StoreError>;

    /// The store's blocking side, when its operations are blocking system calls anyway (a
    /// local directory): the archive then writes messages on the thread that hashes them,
    /// one trip off the async threads instead of two. `None` for stores behind a network.
    fn blocking(&self) -> Option<&dyn BlockingObjects> {
        None
    }
}

/// Operations of a store that may run on the calling (blocking) thread.
pub trait BlockingObjects {
    /// [`ObjectStore::put`], blocking.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// [`ObjectStore::put_immutable`], blocking.
    fn put_immutable(&self, key: &str, bytes: &[u8]) -> Result<bool, StoreError>;
}

/// Whether a message was received or sent by the mailbox owner.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Incoming,
    Outgoing,
}

/// One archived message in one folder of one mailbox.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// Folder path, UTF-8, `/` between levels.
    pub folder: String,
    /// The server and login the UID belongs to (see [`FolderState::source`]); absent in
    /// entries written before sources were recorded, which no identity check trusts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub uid_validity: u32,
    pub uid: u32,
    pub sha256: String,
    /// Bytes stored.
    pub size: u64,
    /// RFC822.SIZE as the server reported it, where it differs from `size` (servers that
    /// count line endings their own way): what a later listing is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_date: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    pub direction: Direction,
    pub archived_at: String,
    /// Records only where a message that an earlier entry of this folder already lists is
    /// now (after a new UIDVALIDITY, or from another source): what identity checks and the
    /// deletion pass need, without listing or exporting the message twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alias: bool,
}

impl IndexEntry {
    /// The size the server reports for the message (RFC822.SIZE).
    pub fn server_size(&self) -> u64 {
        self.server_size.unwrap_or(self.size)
    }
}

/// What the archive knows about one folder of one mailbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FolderState {
    pub folder: String,
    /// The server (`host:port`) and login (or authorization identity) whose UIDs `archived`
    /// names. Absent in states written before sources were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub uid_validity: u32,
    /// UIDs (under `uid_validity`) the archive holds.
    pub archived: UidSet,
    /// Index segments this state accounts for.
    #[serde(default)]
    pub segments: Vec<String>,
    /// The last identity check, so that a run with nothing new need not read the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<Checked>,
    /// The state was written before sources were recorded and `source` adopted it: its
    /// index entries without a source are `source`'s, each still checked by size and date
    /// before its UID counts as archived.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_entries: bool,
}

/// The server's size and INTERNALDATE at some UIDs, as a digest, as they were when they
/// last matched the index entries of those UIDs. A later listing with the same digest
/// over the same UIDs shows the same messages without reading a single index segment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    pub uids: UidSet,
    /// SHA-256 (hex) over the UIDs' (UID, size, INTERNALDATE), in UID order.
    pub digest: String,
}

/// A folder's state as [`Archive::load_state`] finds it for one source.
#[derive(Debug)]
pub struct LoadedState {
    pub state: FolderState,
    /// The stored state belonged to another source, described here: it was set aside, and
    /// `state` starts empty, so that every message is checked by its content.
    pub replaced: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    pub name: String,
    pub created: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MailboxRecord {
    /// Labels the mailbox's top folder: its email address, else the IMAP user name.
    pub label: String,
}

/// Where one folder of one mailbox of one user lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderKey {
    pub user: String,
    pub mailbox: String,
    /// The folder's path, as listed and exported.
    pub folder: String,
    /// Its directory under the mailbox's `folders/`.
    dir: String,
}

impl FolderKey {
    /// A folder keyed by its path, which names it unambiguously.
    pub fn new(user: &str, mailbox: &str, folder: &str) -> FolderKey {
        FolderKey {
            user: user.to_string(),
            mailbox: mailbox.to_string(),
            folder: folder.to_string(),
            dir: key_segment(folder, false),
        }
    }

    /// A folder whose path may not name it unambiguously (a name the server sent in no
    /// valid encoding, a level delimiter inside a name), keyed by the server's own name
    /// instead. That key cannot equal a path's key: it hashes a NUL, which no path has.
    pub fn by_server_name(user: &str, mailbox: &str, folder: &str, server_name: &str) -> FolderKey {
        FolderKey {
            dir: key_segment(&format!("\0{server_name}"), false),
            ..FolderKey::new(user, mailbox, folder)
        }
    }

    fn prefix(&self) -> String {
        format!(
            "{}folders/{}/",
            mailbox_prefix(&self.user, &self.mailbox),
            self.dir
        )
    }
}

/// A message as hashed and described before it is stored.
#[derive(Clone, Debug)]
pub struct PreparedMessage {
    pub sha256: String,
    pub size: u64,
    pub headers: Headers,
}

impl PreparedMessage {
    /// Hashes a message and reads its index headers (CPU-bound: call it off the async
    /// threads for anything but small messages).
    pub fn of(bytes: &[u8]) -> PreparedMessage {
        PreparedMessage {
            sha256: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
            headers: Headers::parse(bytes),
        }
    }
}

/// Header fields kept in the index for listing and search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub date: Option<String>,
}

/// The archive over some object store.
#[derive(Clone)]
pub struct Archive {
    objects: Arc<dyn ObjectStore>,
}

impl Archive {
    pub fn new(objects: Arc<dyn ObjectStore>) -> Self {
        Archive { objects }
    }

    pub fn describe(&self) -> String {
        self.objects.describe()
    }

    /// Hashes messages, extracts their index headers and stores their bytes under their
    /// hash; a message already stored (by any user, any folder) is not written again, unless
    /// `replace` (a stored copy found damaged is replaced by the server's).
    ///
    /// Hashing is CPU-bound, so it runs off the async threads to keep downloads flowing; a
    /// store with blocking writes writes on the same trip. Each trip costs a wake-up of a
    /// blocking thread and of the caller, which for a few-KB message is more than hashing and
    /// writing it; so messages come in batches, and a writer that falls behind catches up
    /// with fewer, larger trips.
    pub async fn store_messages(
        &self,
        messages: Vec<Bytes>,
        replace: bool,
    ) -> Result<Vec<PreparedMessage>, StoreError> {
        let objects = self.objects.clone();
        let (messages, prepared) = tokio::task::spawn_blocking(move || {
            let mut prepared = Vec::with_capacity(messages.len());
            for bytes in &messages {
                let message = PreparedMessage::of(bytes);
                if let Some(blocking) = objects.blocking() {
                    let key = message_key(&message.sha256);
                    if replace {
                        blocking.put(&key, bytes)?;
                    } else {
                        blocking.put_immutable(&key, bytes)?;
                    }
                }
                prepared.push(message);
            }
            Ok::<_, StoreError>((messages, prepared))
        })
        .await
        .expect("hashing and storing do not panic")?;
        if self.objects.blocking().is_none() {
            // A store with latency (S3) gets several uploads at once.
            let uploads: Vec<(String, Bytes)> = prepared
                .iter()
                .map(|message| message_key(&message.sha256))
                .zip(messages)
                .collect();
            let objects = self.objects.clone();
            futures::stream::iter(uploads)
                .map(move |(key, bytes)| {
                    let objects = objects.clone();
                    async move {
                        if replace {
                            objects.put(&key, bytes).await
                        } else {
                            objects.put_immutable(&key, bytes).await.map(drop)
                        }
                    }
                })
                .buffer_unordered(UPLOADS_IN_FLIGHT)
                .try_collect::<Vec<_>>()
                .await?;
        }
        Ok(prepared)
    }

    /// Stores one message under its hash unless the store holds it already; returns
    /// whether it was written.
    pub async fn put_message(&self, sha256: &str, bytes: Bytes) -> Result<bool, StoreError> {
        self.objects
            .put_immutable(&message_key(sha256), bytes)
            .await
    }

    pub async fn get_message(&self, sha256: &str) -> Result<Option<Bytes>, StoreError> {
        self.objects.get(&self.checked_message_key(sha256)?).await
    }

    /// A stored message as the storage medium holds it, not as a cache remembers it: what
    /// the deletion pass re-hashes before it deletes the server's copy.
    pub async fn read_back_message(&self, sha256: &str) -> Result<Option<Bytes>, StoreError> {
        self.objects
            .read_back(&self.checked_message_key(sha256)?)
            .await
    }

    /// The key of a message whose hash came from an index: anything but a SHA-256 is
    /// damage (or an attack), never a path to follow.
    fn checked_message_key(&self, sha256: &str) -> Result<String, StoreError> {
        if !is_sha256(sha256) {
            return Err(StoreError::Corrupt {
                store: self.describe(),
                key: format!("messages/{sha256:?}"),
                message: "an index names a message by something that is not a SHA-256".into(),
            });
        }
        Ok(message_key(sha256))
    }

    pub async fn sync(&self) -> Result<(), StoreError> {
        self.objects.sync().await
    }

    /// Creates the user record on first archive (and the mailbox label).
    pub async fn ensure_mailbox(&self, user: &str, mailbox: &str) -> Result<(), StoreError> {
        let user_key = format!("{}user.json", user_prefix(user));
        if self.objects.get(&user_key).await?.is_none() {
            let record = UserRecord {
                name: user.to_string(),
                created: crate::time::now(),
            };
            self.objects.put(&user_key, json_bytes(&record)).await?;
        }
        let mailbox_key = format!("{}mailbox.json", mailbox_prefix(user, mailbox));
        if self.objects.get(&mailbox_key).await?.is_none() {
            let record = MailboxRecord {
                label: mailbox.to_string(),
            };
            self.objects.put(&mailbox_key, json_bytes(&record)).await?;
        }
        Ok(())
    }

    /// The folder's sync state for `source`, including index segments of that source that
    /// a crashed or concurrent run wrote after the state was last saved.
    ///
    /// A stored state of another source (another server or login; or one written before
    /// sources were recorded, which may mix several) is set aside: its UIDs name other
    /// messages, or nobody can tell which. The state returned then starts empty, and
    /// [`LoadedState::replaced`] says whose it was.
    pub async fn load_state(
        &self,
        key: &FolderKey,
        source: &str,
    ) -> Result<LoadedState, StoreError> {
        let prefix = key.prefix();
        let state_key = format!("{prefix}state.json");
        let stored = match self.objects.get(&state_key).await? {
            Some(bytes) => Some(parse_json::<FolderState>(
                &self.describe(),
                &state_key,
                &bytes,
            )?),
            None => None,
        };
        let fresh = |segments| FolderState {
            folder: key.folder.clone(),
            source: Some(source.to_string()),
            segments,
            ..FolderState::default()
        };
        let (mut state, replaced) = match stored {
            None => (fresh(Vec::new()), None),
            Some(s) if s.source.as_deref() == Some(source) && s.folder == key.folder => (s, None),
            // Written by an earlier version, which recorded no source: adopted rather than
            // archived again from scratch. Nothing is taken on trust by that: every UID it
            // names is checked against its entry's size and date before it counts.
            Some(s) if s.source.is_none() && s.folder == key.folder => (
                FolderState {
                    source: Some(source.to_string()),
                    checked: None,
                    legacy_entries: true,
                    ..s
                },
                None,
            ),
            Some(s) => {
                let whose = match &s.source {
                    Some(other) if s.folder == key.folder => other.clone(),
                    _ => format!("folder {:?}", s.folder),
                };
                // Its segments stay accounted for: they are another source's entries.
                (fresh(s.segments), Some(whose))
            }
        };
        let known: HashSet<String> = state.segments.iter().cloned().collect();
        let segments = self.objects.list(&format!("{prefix}index/")).await?;
        for segment in segments {
            let name = segment.rsplit('/').next().unwrap_or_default().to_string();
            if known.contains(&name) {
                continue;
            }
            for entry in self.read_segment(&segment).await? {
                let ours = match entry.source.as_deref() {
                    Some(s) => s == source,
                    None => state.legacy_entries,
                };
                if !ours || entry.folder != key.folder {
                    continue;
                }
                if state.archived.is_empty() && state.uid_validity == 0 {
                    state.uid_validity = entry.uid_validity;
                }
                if entry.uid_validity == state.uid_validity {
                    state.archived.insert(entry.uid);
                }
            }
            state.segments.push(name);
        }
        Ok(LoadedState { state, replaced })
    }

    pub async fn save_state(&self, key: &FolderKey, state: &FolderState) -> Result<(), StoreError> {
        self.objects
            .put(&format!("{}state.json", key.prefix()), json_bytes(state))
            .await
    }

    /// Writes index entries as a new immutable segment; returns its name.
    pub async fn append_index(
        &self,
        key: &FolderKey,
        entries: &[IndexEntry],
    ) -> Result<String, StoreError> {
        let name = format!(
            "{}-{}.jsonl",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
            uuid::Uuid::new_v4().simple()
        );
        let mut body = Vec::with_capacity(entries.len() * 400);
        for entry in entries {
            serde_json::to_writer(&mut body, entry).expect("index entries serialize");
            body.push(b'\n');
        }
        self.objects
            .put(&format!("{}index/{name}", key.prefix()), Bytes::from(body))
            .await?;
        Ok(name)
    }

    /// The messages of a folder: its index entries in the order they were written, without
    /// [aliases](IndexEntry::alias).
    pub async fn folder_entries(&self, key: &FolderKey) -> Result<Vec<IndexEntry>, StoreError> {
        let mut entries = self.folder_identities(key).await?;
        entries.retain(|e| !e.alias);
        Ok(entries)
    }

    /// Every index entry of a folder, aliases included, in the order they were written:
    /// what identity checks compare the server's messages with.
    pub async fn folder_identities(&self, key: &FolderKey) -> Result<Vec<IndexEntry>, StoreError> {
        let mut entries = Vec::new();
        for segment in self
            .objects
            .list(&format!("{}index/", key.prefix()))
            .await?
        {
            entries.extend(self.read_segment(&segment).await?);
        }
        Ok(entries)
    }

    async fn read_segment(&self, key: &str) -> Result<Vec<IndexEntry>, StoreError> {
        let Some(bytes) = self.objects.get(key).await? else {
            return Ok(Vec::new());
        };
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let entry: IndexEntry = parse_json(&self.describe(), key, line)?;
                if !is_sha256(&entry.sha256) {
                    return Err(StoreError::Corrupt {
                        store: self.describe(),
                        key: key.to_string(),
                        message: format!("UID {}: {:?} is not a SHA-256", entry.uid, entry.sha256),
                    });
                }
                Ok(entry)
            })
            .collect()
    }

    /// Archive users, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let mut users = Vec::new();
        for key in self.objects.list("users/").await? {
            let parts: Vec<&str> = key.split('/').collect();
            if parts.len() == 3 && parts[2] == "user.json" {
                if let Some(bytes) = self.objects.get(&key).await? {
                    users.push(parse_json::<UserRecord>(&self.describe(), &key, &bytes)?);
                }
            }
        }
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    /// Every folder of every mailbox of a user, with its mailbox label, sorted.
    pub async fn user_folders(&self, user: &str) -> Result<Vec<(String, FolderKey)>, StoreError> {
        let prefix = format!("{}mailboxes/", user_prefix(user));
        let mut labels = BTreeMap::new();
        let mut folders = Vec::new();
        for key in self.objects.list(&prefix).await? {
            let rest = &key[prefix.len()..];
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [mailbox, "mailbox.json"] => {
                    if let Some(bytes) = self.objects.get(&key).await? {
                        let record: MailboxRecord = parse_json(&self.describe(), &key, &bytes)?;
                        labels.insert(mailbox.to_string(), record.label);
                    }
                }
                [mailbox, "folders", folder, "state.json"] => {
                    folders.push((mailbox.to_string(), folder.to_string(), key.clone()));
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (mailbox_dir, folder_dir, state_key) in folders {
            let Some(label) = labels.get(&mailbox_dir) else {
                continue;
            };
            let Some(bytes) = self.objects.get(&state_key).await? else {
                continue;
            };
            let state: FolderState = parse_json(&self.describe(), &state_key, &bytes)?;
            out.push((
                label.clone(),
                FolderKey {
                    user: user.to_string(),
                    mailbox: label.clone(),
                    folder: state.folder,
                    dir: folder_dir,
                },
            ));
        }
        out.sort_by(|a, b| (&a.0, &a.1.folder).cmp(&(&b.0, &b.1.folder)));
        Ok(out)
    }

    /// Saves a run protocol (immutable, named by the run).
    pub async fn save_protocol(
        &self,
        namespace: &str,
        profile: &str,
        run_id: &str,
        protocol: &impl Serialize,
    ) -> Result<String, StoreError> {
        let key = format!(
            "runs/{}/{}/{}.json",
            key_segment(namespace, false),
            key_segment(profile, false),
            key_segment(run_id, false)
        );
        self.objects.put(&key, json_bytes(protocol)).await?;
        self.objects.sync().await?;
        Ok(key)
    }

    /// The last accepted directory sync of a MailboxSet, if one was saved.
    pub async fn load_directory_sync<T: serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        mailbox_set: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = directory_sync_key(namespace, mailbox_set);
        match self.objects.get(&key).await? {
            Some(bytes) => Ok(Some(parse_json(&self.describe(), &key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Replaces the last accepted directory sync of a MailboxSet, durably: the next run
    /// compares its sync against this one.
    pub async fn save_directory_sync(
        &self,
        namespace: &str,
        mailbox_set: &str,
        record: &impl Serialize,
    ) -> Result<(), StoreError> {
        self.objects
            .put(
                &directory_sync_key(namespace, mailbox_set),
                json_bytes(record),
            )
            .await?;
        self.objects.sync().await
    }

    /// Re-hashes every stored message and checks every index entry against them.
    /// Returns one line per damaged or missing object.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut sizes = BTreeMap::new();
        // Several reads at once for stores with latency; hashing off the async threads.
        let keys = self.objects.list("messages/").await?;
        let mut checked = futures::stream::iter(keys)
            .map(|key| async move {
                let bytes = self.objects.get(&key).await?;
                let hashed = match bytes {
                    None => None,
                    Some(bytes) => Some(
                        tokio::task::spawn_blocking(move || {
                            (hex::encode(Sha256::digest(&bytes)), bytes.len() as u64)
                        })
                        .await
                        .expect("hashing does not panic"),
                    ),
                };
                Ok::<_, StoreError>((key, hashed))
            })
            .buffer_unordered(8);
        while let Some(result) = checked.next().await {
            let (key, hashed) = result?;
            let (Some(name), Some((actual, size))) = (key.rsplit('/').next(), hashed) else {
                continue;
            };
            report.messages += 1;
            if actual != name || message_key(name) != key {
                report
                    .damaged
                    .push(format!("{key}: content hashes to {actual}"));
            } else {
                sizes.insert(name.to_string(), size);
            }
        }
        drop(checked);
        report.damaged.sort();
        for user in self.users().await? {
            for (_, folder) in self.user_folders(&user.name).await? {
                for entry in self.folder_identities(&folder).await? {
                    report.entries += 1;
                    match sizes.get(&entry.sha256) {
                        Some(&size) if size == entry.size => {}
                        Some(&size) => report.damaged.push(format!(
                            "user {:?}, mailbox {:?}, folder {:?}, UID {}: index says {} bytes, message {} has {size}",
                            user.name, folder.mailbox, entry.folder, entry.uid, entry.size, entry.sha256
                        )),
                        None => report.damaged.push(format!(
                            "user {:?}, mailbox {:?}, folder {:?}, UID {}: message {} is missing or damaged",
                            user.name, folder.mailbox, entry.folder, entry.uid, entry.sha256
                        )),
                    }
                }
            }
        }
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub messages: u64,
    pub entries: u64,
    pub damaged: Vec<String>,
}

impl Headers {
    /// Reads the header fields of a message. Tolerant: a message with broken headers is
    /// still archived, only with less to list it by.
    fn parse(bytes: &[u8]) -> Headers {
        // Headers are at the start; a hostile message with megabytes of header lines must
        // not cost megabytes of parsing.
        let head = &bytes[..bytes.len().min(256 * 1024)];
        let Ok((headers, _)) = mailparse::parse_headers(head) else {
            return Headers::default();
        };
        use mailparse::MailHeaderMap;
        let field = |name: &str| {
            headers.get_first_value(name).map(|v| {
                let v = v.trim().to_string();
                truncate(v, 998)
            })
        };
        Headers {
            message_id: field("Message-ID"),
            from: field("From"),
            to: field("To"),
            subject: field("Subject"),
            date: field("Date"),
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn message_key(sha256: &str) -> String {
    format!("messages/{}/{sha256}", &sha256[..2.min(sha256.len())])
}

/// Whether a text is a SHA-256 as the archive writes it: 64 lower-case hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn directory_sync_key(namespace: &str, mailbox_set: &str) -> String {
    format!(
        "directory/{}/{}.json",
        key_segment(namespace, false),
        key_segment(mailbox_set, false)
    )
}

fn user_prefix(user: &str) -> String {
    format!("users/{}/", key_segment(user, true))
}

fn mailbox_prefix(user: &str, mailbox: &str) -> String {
    format!(
        "{}mailboxes/{}/",
        user_prefix(user),
        key_segment(mailbox, true)
    )
}

/// Turns a name into one safe path segment: readable, but never `.`/`..`, never a
/// separator or control character, bounded in length, and unique (a hash of the name is
/// appended). User names and addresses are case-insensitive; folder names are not.
pub fn key_segment(name: &str, case_insensitive: bool) -> String {
    let name = if case_insensitive {
        name.to_lowercase()
    } else {
        name.to_string()
    };
    let readable: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '@' | '+' | '-' => c,
            _ => '_',
        })
        .take(48)
        .collect();
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..6]);
    format!("{readable}-{hash}")
}

fn json_bytes(value: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).expect("archive records serialize"))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    store: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        store: store.to_string(),
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_segments_are_safe_and_distinct() {
        for hostile in ["..", ".", "a/b", "a\0b", "\u{202e}evil", "Größe"] {
            let seg = key_segment(hostile, false);
            assert!(!seg.contains('/') && seg != "." && seg != "..", "{seg}");
            assert!(seg.chars().all(|c| c.is_ascii_graphic()), "{seg}");
        }
        assert_ne!(key_segment("Work", false), key_segment("work", false));
        assert_eq!(
            key_segment("Alice@Example.org", true),
            key_segment("alice@example.org", true)
        );
        assert!(key_segment(&"x".repeat(500), false).len() < 64);
    }

    #[test]
    fn headers_are_decoded() {
        let msg = b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\nTo: a@example.org\r\n\
                    Subject: Hello\r\nMessage-ID: <1@x>\r\n\r\nbody";
        let h = Headers::parse(msg);
        assert_eq!(h.from.as_deref(), Some("Jürgen <j@example.org>"));
        assert_eq!(h.message_id.as_deref(), Some("<1@x>"));
        assert_eq!(h.date, None);
        assert_eq!(Headers::parse(b"\0\0\0 garbage"), Headers::default());
    }
}
