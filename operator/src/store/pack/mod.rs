//! The pack store: messages appended to few large objects, compressed, optionally sealed,
//! found through an index that is itself a few immutable objects. Both backends (a local
//! directory, S3) hold the same objects.
//!
//! # Why
//!
//! One object per message costs one request per message: on S3 a PUT each (money, and
//! 20–100 ms each), one GET each for a restore or a verify; on a network volume, millions
//! of small files. Packs make requests and files grow with gigabytes, not with messages.
//!
//! # Layout
//!
//! ```text
//! packs/data/<pack>                  message blobs, appended; closed at a size or an age
//! packs/delta/<pack>                 the index of that pack, written right after it
//! packs/manifest/<gen>               a compacted index generation: the packs it covers
//! packs/bucket/<gen>/<bucket>        its entries, split by the leading identifier bits
//! packs/bucket/<gen>/fingerprints    the sorted 8-byte prefixes of all its identifiers
//! packs/keys/<fingerprint>           marks that a key seals data here
//! ```
//!
//! Pack and generation names are UUIDv7 (time-ordered, unique without coordination).
//! Every object starts with a 32-byte header and holds blobs ([`blob`]); an index entry
//! (64 bytes, [`index`]) maps a message identifier to pack, offset, stored length and
//! original length, so one message is one ranged read.
//!
//! # Identifiers, and single-instance storage
//!
//! Without encryption a message's identifier is its SHA-256, as before. With encryption it
//! is HMAC-SHA256 of that SHA-256 under a key derived from the current key ([`keys`]), so
//! the store does not reveal whether it holds a message someone else knows. A lookup tries
//! the identifiers under every key in the ring and the plain SHA-256 (data from before
//! encryption was turned on, or under older keys): a message is stored once across
//! folders, users and key rotations. The per-user index keeps the plain SHA-256 (inside
//! sealed objects when encrypted), which verify and the read-back before deletion check.
//!
//! # Writing, and what a crash leaves
//!
//! Writers append to an open pack in memory ([`PackStore::store_blocking`]: compressing
//! outside the lock, sealing under it, since the offset is the nonce); a message of
//! `own_pack_size` or more is compressed straight into a pack of its own instead. A pack
//! is closed at
//! `target_size` or `max_age` (or on [`PackStore::flush`]) and uploaded in the background,
//! several at once: the pack, a durability barrier (`syncfs` locally; S3 acknowledges
//! durable PUTs), its delta, another barrier. Only then does its [`Durable`] resolve: a
//! caller records a message in a folder's index only after that. A run killed before the
//! delta leaves a pack no index names: nothing refers to it, the next run stores those
//! messages again, verify lists it as unindexed, and compaction removes it once older
//! than `garbage_grace` (a younger one may be a writer between pack and delta). An index
//! therefore never names a pack that is not whole.
//!
//! # Several writers, no conditional writes
//!
//! Every object is written once under a unique name, so writers never conflict. Two
//! processes that store the same new message at once both store it: a duplicate across
//! packs (verify counts them), never a loss. Compaction ([`compact`]) merges deltas and
//! generations into a new generation, then removes only what that generation covers;
//! readers take the newest generation plus any other that covers a pack the newest does
//! not, plus every delta of an uncovered pack, and start over when an object vanishes
//! under them. Some object in the store holds every entry at every moment.
//!
//! # Dedup at scale
//!
//! A process that stores messages loads the index once ([`index::View`]): the deltas'
//! entries in a hash map (bounded by compaction) and 8 bytes per compacted entry, sorted.
//! A lookup whose prefix is absent is a miss at once; a present prefix loads that one
//! bucket (about `bucket_entries` × 64 bytes, cached) and answers exactly, so a prefix
//! collision, even a crafted one, costs a read and never skips a message. Memory: 8 MB
//! per million compacted messages, plus about 72 bytes per uncompacted entry. A run that
//! stores nothing never reads the index: opening the store is one listing of the key
//! markers.
//!
//! # Encryption at rest
//!
//! With a key ring every object (packs and every index object) is sealed with
//! AES-256-GCM under a key derived from the current key and the object's random salt; a
//! blob's nonce is its offset, and the header (kind, key fingerprint, salt) is associated
//! data. Readers pick the key by the fingerprint in the header. Opening the store checks
//! the ring against the key markers: a missing ring, a wrong key or a removed old key
//! fails there, before anything is written. The archive seals its folders' states and
//! index segments the same way ([`PackStore::seal_record`]). What stays visible to the
//! bucket's owner: object names (the archive's keys name users, mailboxes and folders),
//! object sizes and times (so roughly how much mail, and when), the user and mailbox
//! records and run protocols; nothing of content, subjects or which messages are stored.
//!
//! # Compression
//!
//! Each blob is zstd-compressed when that is smaller, else stored as it is (already
//! compressed attachments). Per message, not per pack, so that a ranged read of one
//! message needs no neighbours. zstd is the C library through the `zstd` crate: the
//! pure-Rust encoders are far slower or compress worse, and the C build is small.

mod blob;
mod compact;
mod index;
pub mod keys;
mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use self::blob::{Compressed, Envelope, Kind, HEADER_LEN};
use self::index::{Entry, Probe, View};
use self::keys::{Fingerprint, KeyRing};
use super::{ObjectStore, StoreError};

pub use self::compact::CompactReport;
pub use self::index::{Location, PackId};
pub use self::verify::{Damage, PackVerifyReport};

/// zstd level for message blobs and index objects (see the module documentation for the
/// measurement behind it).
const COMPRESSION_LEVEL: i32 = 1;

/// Where everything lives, under the archive root.
pub(crate) mod layout {
    use super::index::PackId;
    use super::keys::Fingerprint;

    pub const INDEX: &str = "packs/";
    pub const PACKS: &str = "packs/data/";
    pub const DELTAS: &str = "packs/delta/";
    pub const MANIFESTS: &str = "packs/manifest/";
    pub const BUCKETS: &str = "packs/bucket/";
    pub const KEYS: &str = "packs/keys/";

    pub fn pack(id: &PackId) -> String {
        format!("{PACKS}{id}")
    }

    pub fn delta(id: &PackId) -> String {
        format!("{DELTAS}{id}")
    }

    pub fn manifest(generation: &str) -> String {
        format!("{MANIFESTS}{generation}")
    }

    pub fn bucket(generation: &str, bucket: u32) -> String {
        format!("{BUCKETS}{generation}/{bucket:06x}")
    }

    pub fn fingerprints(generation: &str) -> String {
        format!("{BUCKETS}{generation}/fingerprints")
    }

    pub fn marker(fingerprint: &Fingerprint) -> String {
        format!("{KEYS}{fingerprint}")
    }
}

/// Sizes and times of the pack store.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// A pack is closed and uploaded once it holds this many bytes.
    pub target_size: usize,
    /// A message this large or larger gets a pack of its own, compressed straight into it:
    /// in the open pack it would be held a third time (as fetched, compressed, appended),
    /// and one request per several MiB costs nothing worth saving.
    pub own_pack_size: usize,
    /// ... or once its first blob is this old, so that a slow or small run still makes
    /// its messages durable.
    pub max_age: Duration,
    /// Packs uploading at once; with the one being filled, this bounds the memory packs
    /// take to about `(uploads + 1) × target_size`.
    pub uploads_in_flight: usize,
    /// Entries per bucket of a compacted generation, about.
    pub bucket_entries: u64,
    /// Compaction removes packs that no index names once they are this old: younger ones
    /// may belong to a writer between its pack and its delta. It must exceed `max_age`
    /// plus the longest pack upload; zero is only for a store nobody else writes.
    pub garbage_grace: Duration,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            target_size: 32 << 20,
            own_pack_size: 8 << 20,
            max_age: Duration::from_secs(30),
            uploads_in_flight: 3,
            bucket_entries: 1 << 16,
            garbage_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// Whether a message was appended by this call, and when it is durable.
#[derive(Clone, Debug)]
pub struct Stored {
    pub location: Location,
    /// `false`: the store held the message already (or this process is writing it).
    pub written: bool,
    pub durable: Durable,
}

type Outcome = Option<Result<(), StoreError>>;

/// Resolves once a blob's pack and its index are durable.
#[derive(Clone, Debug)]
pub struct Durable {
    pack: PackId,
    outcome: Option<watch::Receiver<Outcome>>,
}

impl Durable {
    fn done(pack: PackId) -> Durable {
        Durable {
            pack,
            outcome: None,
        }
    }

    /// Waits until the pack and its index are durable, or their upload failed (with the
    /// upload's error).
    pub async fn wait(&self) -> Result<(), StoreError> {
        let Some(outcome) = &self.outcome else {
            return Ok(());
        };
        let mut outcome = outcome.clone();
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(result) => result.clone().expect("waited for some"),
            Err(_) => Err(StoreError::Backend {
                store: String::new(),
                operation: "write pack",
                key: layout::pack(&self.pack),
                message: "the pack store was dropped before the pack was written".into(),
            }),
        };
        result
    }

    fn is_finished(&self) -> bool {
        self.outcome.as_ref().is_none_or(|o| o.borrow().is_some())
    }
}

/// The pack being filled.
struct OpenPack {
    id: PackId,
    envelope: Envelope,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    opened: Instant,
    outcome: watch::Sender<Outcome>,
}

impl OpenPack {
    fn new(keys: Option<&KeyRing>, capacity: usize) -> OpenPack {
        let envelope = Envelope::new(Kind::Pack, keys);
        let mut bytes = Vec::with_capacity(capacity);
        bytes.extend_from_slice(envelope.header());
        OpenPack::holding(envelope, bytes)
    }

    /// A pack of `envelope` whose bytes (header first) are already there.
    fn holding(envelope: Envelope, bytes: Vec<u8>) -> OpenPack {
        OpenPack {
            id: PackId::generate(),
            envelope,
            bytes,
            entries: Vec::new(),
            opened: Instant::now(),
            outcome: watch::Sender::new(None),
        }
    }

    fn durable(&self) -> Durable {
        Durable {
            pack: self.id,
            outcome: Some(self.outcome.subscribe()),
        }
    }
}

#[derive(Default)]
struct Writer {
    open: Option<OpenPack>,
    /// Blobs appended by this process whose packs are not durable yet.
    pending: HashMap<[u8; 32], (Location, Durable)>,
    /// Packs handed to uploads and not yet waited for by [`PackStore::flush`].
    launched: Vec<Durable>,
}

impl Writer {
    /// The blob this process is writing under `id`, if any: what a second store of the
    /// same message gets instead of another copy.
    fn pending_stored(&self, id: &[u8; 32]) -> Option<Stored> {
        self.pending.get(id).map(|(location, durable)| Stored {
            location: *location,
            written: false,
            durable: durable.clone(),
        })
    }
}

/// Messages in packs, over any object store: see the module documentation.
pub struct PackStore {
    objects: Arc<dyn ObjectStore>,
    keys: Option<Arc<KeyRing>>,
    options: PackOptions,
    handle: tokio::runtime::Handle,
    view: RwLock<Option<Arc<View>>>,
    loading: tokio::sync::Mutex<()>,
    writer: Mutex<Writer>,
    uploads: Arc<Semaphore>,
    /// Whether the current key's marker is known to be in the store.
    marked: AtomicBool,
    /// Pack headers, for reading blobs out of them.
    envelopes: Mutex<HashMap<PackId, Arc<Envelope>>>,
}

impl PackStore {
    /// Opens the pack store of an archive: checks that the keys given (if any) fit the
    /// archive, so that a wrong or missing key fails here, before anything is written.
    /// One listing of a few tiny objects; the index is read only when first needed.
    pub async fn open(
        objects: Arc<dyn ObjectStore>,
        keys: Option<KeyRing>,
        options: PackOptions,
    ) -> Result<Arc<PackStore>, StoreError> {
        let markers: HashSet<Fingerprint> = objects
            .list(layout::KEYS)
            .await?
            .iter()
            .filter_map(|k| k[layout::KEYS.len()..].parse().ok())
            .collect();
        check_keys(&objects.describe(), &markers, keys.as_ref())?;
        let marked = keys
            .as_ref()
            .is_some_and(|k| markers.contains(&k.current().fingerprint()));
        let store = Arc::new(PackStore {
            objects,
            keys: keys.map(Arc::new),
            uploads: Arc::new(Semaphore::new(options.uploads_in_flight.max(1))),
            options,
            handle: tokio::runtime::Handle::current(),
            view: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
            writer: Mutex::default(),
            marked: AtomicBool::new(marked),
            envelopes: Mutex::default(),
        });
        let weak = Arc::downgrade(&store);
        let tick = (store.options.max_age / 4).max(Duration::from_millis(50));
        store.handle.spawn(close_old_packs(weak, tick));
        Ok(store)
    }

    pub fn describe(&self) -> String {
        self.objects.describe()
    }

    pub fn keys(&self) -> Option<&KeyRing> {
        self.keys.as_deref()
    }

    /// The identifiers a message may be stored under: under the current key first, then
    /// under older keys, then its plain SHA-256 (data written before encryption was on).
    pub fn identifiers(&self, sha256: &[u8; 32]) -> Vec<[u8; 32]> {
        let mut ids = Vec::new();
        if let Some(keys) = &self.keys {
            ids.extend(keys.keys().iter().rev().map(|k| k.identifier(sha256)));
        }
        ids.push(*sha256);
        ids
    }

    /// Stores a message unless the archive holds it already. Hashing and compressing are
    /// CPU-bound: call it on a blocking thread (see [`PackStore::store`]).
    pub fn store_blocking(self: &Arc<Self>, raw: &[u8]) -> Result<Stored, StoreError> {
        let sha256: [u8; 32] = Sha256::digest(raw).into();
        self.store_hashed_blocking(&sha256, raw)
    }

    /// [`PackStore::store_blocking`] for a message whose SHA-256 the caller computed.
    pub fn store_hashed_blocking(
        self: &Arc<Self>,
        sha256: &[u8; 32],
        raw: &[u8],
    ) -> Result<Stored, StoreError> {
        self.append_blocking(sha256, raw, false)
    }

    /// Stores a fresh copy of a message even though the index names one: that copy was
    /// found damaged. The caller records the new location; the old blob stays, unnamed
    /// by that record, for verify to report.
    pub fn store_again_blocking(
        self: &Arc<Self>,
        sha256: &[u8; 32],
        raw: &[u8],
    ) -> Result<Stored, StoreError> {
        self.append_blocking(sha256, raw, true)
    }

    fn append_blocking(
        self: &Arc<Self>,
        sha256: &[u8; 32],
        raw: &[u8],
        again: bool,
    ) -> Result<Stored, StoreError> {
        let Ok(raw_len) = u32::try_from(raw.len()) else {
            return Err(StoreError::Backend {
                store: self.describe(),
                operation: "store",
                key: hex::encode(sha256),
                message: format!("a message of {} bytes is larger than 4 GiB", raw.len()),
            });
        };
        let ids = self.identifiers(sha256);
        if !again {
            if let Some(found) = self.handle.block_on(self.find(&ids))? {
                return Ok(found);
            }
        }
        let id = ids[0];
        if raw.len() >= self.options.own_pack_size {
            return self.append_alone(id, raw, raw_len);
        }
        // Compressing, the costly part, outside the lock.
        let blob = Compressed::of(raw, COMPRESSION_LEVEL);
        let mut writer = self
            .writer
            .lock()
            .expect("the writer lock is never poisoned");
        if let Some(stored) = writer.pending_stored(&id) {
            return Ok(stored);
        }
        let capacity = self.options.target_size + blob.placed_len() + 64;
        let keys = self.keys.as_deref();
        let pack = writer
            .open
            .get_or_insert_with(|| OpenPack::new(keys, capacity));
        let offset = pack.bytes.len() as u64;
        let stored = pack.envelope.append(&mut pack.bytes, &blob) as u32;
        let location = Location {
            pack: pack.id,
            offset,
            stored,
            raw: raw_len,
        };
        pack.entries.push(Entry { id, location });
        let durable = pack.durable();
        let full = pack.bytes.len() >= self.options.target_size;
        writer.pending.insert(id, (location, durable.clone()));
        let closed = if full { writer.open.take() } else { None };
        drop(writer);
        if let Some(pack) = closed {
            self.launch_blocking(pack);
        }
        Ok(Stored {
            location,
            written: true,
            durable,
        })
    }

    /// Stores a large message as the only blob of a new pack, uploaded at once; the open
    /// pack goes on filling.
    fn append_alone(
        self: &Arc<Self>,
        id: [u8; 32],
        raw: &[u8],
        raw_len: u32,
    ) -> Result<Stored, StoreError> {
        // No lock while compressing and sealing: nobody else writes this pack.
        let envelope = Envelope::new(Kind::Pack, self.keys.as_deref());
        let bytes = envelope.single(raw, COMPRESSION_LEVEL);
        let mut pack = OpenPack::holding(envelope, bytes);
        let location = Location {
            pack: pack.id,
            offset: HEADER_LEN as u64,
            stored: (pack.bytes.len() - HEADER_LEN) as u32,
            raw: raw_len,
        };
        let durable = pack.durable();
        {
            let mut writer = self
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            // Another thread of this process stored it meanwhile: that copy will do.
            if let Some(stored) = writer.pending_stored(&id) {
                return Ok(stored);
            }
            writer.pending.insert(id, (location, durable.clone()));
        }
        pack.entries.push(Entry { id, location });
        self.launch_blocking(pack);
        Ok(Stored {
            location,
            written: true,
            durable,
        })
    }

    /// An archive record as stored: sealed (and compressed) when the archive is encrypted,
    /// else as it is, readable JSON.
    pub fn seal_record(&self, body: Vec<u8>) -> Bytes {
        match self.keys() {
            Some(keys) => index::seal(Kind::Record, &body, Some(keys)),
            None => Bytes::from(body),
        }
    }

    /// Opens a record [`PackStore::seal_record`] made, sealed or not: one written before
    /// encryption was turned on stays readable.
    pub fn open_record(&self, key: &str, bytes: Bytes) -> Result<Bytes, StoreError> {
        if !blob::is_enveloped(&bytes) {
            return Ok(bytes);
        }
        blob::open_single(Kind::Record, &bytes, self.keys())
            .map(Bytes::from)
            .map_err(|message| index::corrupt(&*self.objects, key, message))
    }

    /// Stores a message (hashing and compressing on a blocking thread).
    pub async fn store(self: &Arc<Self>, raw: Bytes) -> Result<Stored, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.store_blocking(&raw))
            .await
            .expect("storing does not panic")
    }

    /// Where a message is, by its SHA-256, if the archive (or this process) holds it.
    pub async fn locate(&self, sha256: &[u8; 32]) -> Result<Option<Location>, StoreError> {
        Ok(self
            .find(&self.identifiers(sha256))
            .await?
            .map(|s| s.location))
    }

    /// Looks identifiers up among this process's unwritten blobs, then in the index.
    async fn find(&self, ids: &[[u8; 32]]) -> Result<Option<Stored>, StoreError> {
        {
            // Pending first: an upload adds its entries to the view before it takes them
            // out of pending, so a blob is always in one of the two.
            let writer = self
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            if let Some(stored) = ids.iter().find_map(|id| writer.pending_stored(id)) {
                return Ok(Some(stored));
            }
        }
        for id in ids {
            if let Some(location) = self.lookup(id).await? {
                return Ok(Some(Stored {
                    location,
                    written: false,
                    durable: Durable::done(location.pack),
                }));
            }
        }
        Ok(None)
    }

    /// Looks one identifier up in the index, loading buckets (and the view) as needed.
    async fn lookup(&self, id: &[u8; 32]) -> Result<Option<Location>, StoreError> {
        loop {
            let view = self.view().await?;
            loop {
                match view.probe(id) {
                    Probe::Found(location) => return Ok(Some(location)),
                    Probe::Absent => return Ok(None),
                    Probe::NeedBucket { generation, bucket } => {
                        let name = view.generation_name(generation);
                        match index::read_bucket(&*self.objects, self.keys(), name, bucket).await? {
                            Some(entries) => view.add_bucket(generation, bucket, entries),
                            None => break,
                        }
                    }
                }
            }
            // A compaction replaced the generation: read the index again.
            self.forget_view(&view);
        }
    }

    /// The index view, loaded on first use.
    async fn view(&self) -> Result<Arc<View>, StoreError> {
        if let Some(view) = self.current_view() {
            return Ok(view);
        }
        let _loading = self.loading.lock().await;
        if let Some(view) = self.current_view() {
            return Ok(view);
        }
        let loaded = index::load(&*self.objects, self.keys(), false).await?;
        let view = Arc::new(View::new(loaded));
        *self.view.write().expect("the view lock is never poisoned") = Some(view.clone());
        Ok(view)
    }

    fn current_view(&self) -> Option<Arc<View>> {
        self.view
            .read()
            .expect("the view lock is never poisoned")
            .clone()
    }

    fn forget_view(&self, stale: &Arc<View>) {
        let mut view = self.view.write().expect("the view lock is never poisoned");
        if view.as_ref().is_some_and(|v| Arc::ptr_eq(v, stale)) {
            *view = None;
        }
    }

    /// Bytes the loaded index view holds (0 before it is loaded), for figures.
    pub fn index_memory(&self) -> usize {
        self.current_view().map_or(0, |v| v.memory_bytes())
    }

    /// [`PackStore::launch`] from a blocking thread, waiting there for an upload slot.
    fn launch_blocking(self: &Arc<Self>, pack: OpenPack) {
        let permit = self
            .handle
            .block_on(self.uploads.clone().acquire_owned())
            .expect("the upload semaphore is never closed");
        self.launch(pack, permit);
    }

    /// Uploads a closed pack in the background: the pack, a durability barrier, its
    /// delta, another barrier; only then are its blobs durable and in the view.
    fn launch(self: &Arc<Self>, mut pack: OpenPack, permit: OwnedSemaphorePermit) {
        let durable = pack.durable();
        // The upload owns the pack's bytes: a copy would hold every closing pack twice.
        let bytes = Bytes::from(std::mem::take(&mut pack.bytes));
        {
            let mut writer = self
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            writer.launched.retain(|d| !d.is_finished());
            writer.launched.push(durable);
        }
        let store = self.clone();
        self.handle.spawn(async move {
            let result = store.upload(&pack, bytes).await;
            if result.is_ok() {
                if let Some(view) = store.current_view() {
                    view.add(&pack.entries);
                }
            }
            {
                let mut writer = store
                    .writer
                    .lock()
                    .expect("the writer lock is never poisoned");
                for entry in &pack.entries {
                    writer.pending.remove(&entry.id);
                }
            }
            drop(permit);
            pack.outcome.send_replace(Some(result));
        });
    }

    async fn upload(&self, pack: &OpenPack, bytes: Bytes) -> Result<(), StoreError> {
        self.mark_key().await?;
        self.objects.put(&layout::pack(&pack.id), bytes).await?;
        self.objects.sync().await?;
        let mut entries = pack.entries.clone();
        entries.sort_by_key(|e| e.id);
        let delta = index::seal(Kind::Delta, &index::encode_entries(&entries), self.keys());
        self.objects.put(&layout::delta(&pack.id), delta).await?;
        self.objects.sync().await
    }

    /// Before the first object sealed with a key: the key's marker, so that later runs
    /// can tell a missing or wrong key before they write anything.
    async fn mark_key(&self) -> Result<(), StoreError> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        if self.marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let marker = index::seal(Kind::KeyMarker, b"mailvault key marker", Some(keys));
        self.objects
            .put(&layout::marker(&keys.current().fingerprint()), marker)
            .await?;
        self.objects.sync().await?;
        self.marked.store(true, Ordering::Release);
        Ok(())
    }

    /// Waits until the blobs of these [`Stored`] results are durable with their index,
    /// closing the pack being filled if one of them is in it: what a caller does before
    /// it records the blobs anywhere.
    pub async fn make_durable(self: &Arc<Self>, durables: &[Durable]) -> Result<(), StoreError> {
        let waiting: HashSet<PackId> = durables
            .iter()
            .filter(|d| !d.is_finished())
            .map(|d| d.pack)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let open = {
            let writer = self
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            writer.open.as_ref().map(|p| p.id)
        };
        if open.is_some_and(|id| waiting.contains(&id)) {
            self.close_pack(open).await;
        }
        for durable in durables {
            durable.wait().await?;
        }
        Ok(())
    }

    /// Closes the open pack (if any) and waits until every pack this process wrote is
    /// durable with its index. Errors of any of them are returned (the first).
    pub async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        self.close_open_pack(None).await;
        let launched = {
            let mut writer = self
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            std::mem::take(&mut writer.launched)
        };
        let mut first_error = None;
        for durable in launched {
            if let Err(e) = durable.wait().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes the open pack and starts its upload, if it is older than `older_than` (or
    /// in any case without it).
    async fn close_open_pack(self: &Arc<Self>, older_than: Option<Duration>) {
        self.close_if(|pack| older_than.is_none_or(|age| pack.opened.elapsed() >= age))
            .await;
    }

    /// Closes the open pack and starts its upload if it is `id` (any, without it); a
    /// pack closed meanwhile by someone else is left alone.
    async fn close_pack(self: &Arc<Self>, id: Option<PackId>) {
        self.close_if(|pack| id.is_none_or(|id| pack.id == id))
            .await;
    }

    async fn close_if(self: &Arc<Self>, close: impl FnOnce(&OpenPack) -> bool) {
        let closed = {
            let mut writer = self
                .writer
                .lock()
                .expect("the writer lock is never poisoned");
            match &writer.open {
                Some(pack) if close(pack) => writer.open.take(),
                _ => None,
            }
        };
        if let Some(pack) = closed {
            let permit = self
                .uploads
                .clone()
                .acquire_owned()
                .await
                .expect("the upload semaphore is never closed");
            self.launch(pack, permit);
        }
    }

    /// The original bytes of the blob at `location`, by range reads: the pack's header
    /// once per pack, then exactly the blob.
    pub async fn read(&self, location: &Location) -> Result<Bytes, StoreError> {
        self.read_from(location, false).await
    }

    /// [`PackStore::read`] from the storage medium rather than a cache of it (see
    /// [`ObjectStore::read_back_range`]).
    pub async fn read_back(&self, location: &Location) -> Result<Bytes, StoreError> {
        self.read_from(location, true).await
    }

    async fn read_from(&self, location: &Location, medium: bool) -> Result<Bytes, StoreError> {
        let key = layout::pack(&location.pack);
        let envelope = self.envelope(&location.pack).await?;
        let (offset, len) = (location.offset, u64::from(location.stored));
        let stored = if medium {
            self.objects.read_back_range(&key, offset, len).await?
        } else {
            self.objects.get_range(&key, offset, len).await?
        }
        .ok_or_else(|| self.missing_pack(&key))?;
        if stored.len() != location.stored as usize {
            return Err(index::corrupt(
                &*self.objects,
                &key,
                format!(
                    "ends before the blob at offset {} ({} of {} bytes): truncated",
                    location.offset,
                    stored.len(),
                    location.stored
                ),
            ));
        }
        let offset = location.offset;
        let raw_len = location.raw as usize;
        let raw = tokio::task::spawn_blocking(move || envelope.read_blob(offset, &stored, raw_len))
            .await
            .expect("opening a blob does not panic")
            .map_err(|message| {
                index::corrupt(
                    &*self.objects,
                    &key,
                    format!("blob at offset {offset}: {message}"),
                )
            })?;
        Ok(Bytes::from(raw))
    }

    /// The message with this SHA-256, checked against it; `None` if the archive lacks it.
    pub async fn read_message(&self, sha256: &[u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let Some(location) = self.locate(sha256).await? else {
            return Ok(None);
        };
        let raw = self.read(&location).await?;
        let check = raw.clone();
        let actual: [u8; 32] = tokio::task::spawn_blocking(move || Sha256::digest(&check).into())
            .await
            .expect("hashing does not panic");
        if &actual != sha256 {
            return Err(index::corrupt(
                &*self.objects,
                &layout::pack(&location.pack),
                format!(
                    "blob at offset {} should be message {} but hashes to {}",
                    location.offset,
                    hex::encode(sha256),
                    hex::encode(actual)
                ),
            ));
        }
        Ok(Some(raw))
    }

    async fn envelope(&self, pack: &PackId) -> Result<Arc<Envelope>, StoreError> {
        if let Some(envelope) = self
            .envelopes
            .lock()
            .expect("the envelope lock is never poisoned")
            .get(pack)
        {
            return Ok(envelope.clone());
        }
        let key = layout::pack(pack);
        let header = self
            .objects
            .get_range(&key, 0, HEADER_LEN as u64)
            .await?
            .ok_or_else(|| self.missing_pack(&key))?;
        let envelope = Envelope::open(Kind::Pack, &header, self.keys())
            .map_err(|message| index::corrupt(&*self.objects, &key, message))?;
        let envelope = Arc::new(envelope);
        self.envelopes
            .lock()
            .expect("the envelope lock is never poisoned")
            .insert(*pack, envelope.clone());
        Ok(envelope)
    }

    fn missing_pack(&self, key: &str) -> StoreError {
        index::corrupt(
            &*self.objects,
            key,
            "the index names this pack, but it is missing".into(),
        )
    }
}

/// Closes packs that reached their age, until the store is dropped.
async fn close_old_packs(store: Weak<PackStore>, tick: Duration) {
    loop {
        tokio::time::sleep(tick).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let max_age = store.options.max_age;
        store.close_open_pack(Some(max_age)).await;
    }
}

/// Refuses keys that do not fit the archive: every key that sealed data in it must be in
/// the ring (rotation keeps old keys), and an encrypted archive needs a ring at all.
fn check_keys(
    store: &str,
    markers: &HashSet<Fingerprint>,
    keys: Option<&KeyRing>,
) -> Result<(), StoreError> {
    let mut sealed: Vec<String> = markers.iter().map(ToString::to_string).collect();
    sealed.sort();
    let message = match keys {
        None if markers.is_empty() => return Ok(()),
        None => format!(
            "the archive is encrypted (keys {}); give its key file \
             (--encryption-key-file, or spec.store.encryption.keySecretRef)",
            sealed.join(", ")
        ),
        Some(ring) => {
            let mut missing: Vec<String> = markers
                .iter()
                .filter(|fp| ring.get(**fp).is_none())
                .map(ToString::to_string)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            missing.sort();
            format!(
                "the archive holds data sealed with key(s) {} which the key file lacks \
                 (it has {}); a wrong key file, or an old key was removed: keep every old \
                 key in the file, the last one seals new data",
                missing.join(", "),
                ring.describe()
            )
        }
    };
    Err(StoreError::Open {
        store: store.to_string(),
        message,
    })
}
