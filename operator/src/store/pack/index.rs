//! Where each message blob is: index entries, the objects that hold them, and the view of
//! them a process keeps in memory.
//!
//! An entry is 64 bytes: identifier (32), pack (16), offset (8), stored length (4), original
//! length (4), little-endian. Index objects hold entries sorted by identifier:
//!
//! - a **delta** per pack (`packs/delta/<pack>`), written by the writer right after the pack;
//! - a compacted **generation**: its entries split into 2^bits **buckets** by the leading
//!   bits of the identifier (`packs/bucket/<gen>/<bucket>`), the sorted 8-byte prefixes of
//!   all its identifiers (`packs/bucket/<gen>/fingerprints`), and last, as its commit
//!   point, a **manifest** (`packs/manifest/<gen>`) naming every pack it covers.
//!
//! A reader's view is the newest generation, any other generation that covers a pack the
//! newest does not (two compactions at once), and the deltas of packs none of them covers.
//! It holds in memory the deltas' entries and 8 bytes per compacted entry; a lookup whose
//! prefix is in a generation loads that one bucket (cached) to find the exact entry, so a
//! prefix collision costs a read, never a wrong answer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{StreamExt, TryStreamExt};

use super::blob::{open_single, Envelope, Kind};
use super::keys::KeyRing;
use super::{layout, COMPRESSION_LEVEL};
use crate::store::{ObjectStore, StoreError};

pub const ENTRY_LEN: usize = 64;
/// Index objects read at once while loading.
const READS_IN_FLIGHT: usize = 16;
/// Bytes of buckets a view keeps loaded; beyond it the cache starts over.
const BUCKET_CACHE_BYTES: usize = 64 << 20;

/// A pack's name: a UUIDv7, so that names sort by creation time and carry it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub fn generate() -> PackId {
        PackId(*uuid::Uuid::now_v7().as_bytes())
    }

    pub fn parse(name: &str) -> Option<PackId> {
        let bytes = hex::decode(name).ok()?;
        Some(PackId(bytes.try_into().ok()?))
    }

    /// When the pack was named, in milliseconds since the epoch.
    pub fn created_ms(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a blob is. A folder's index entries record it (as `<pack>/<offset>/<stored>/<raw>`),
/// so that reading a listed message needs no lookup in the pack index at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Location {
    pub pack: PackId,
    pub offset: u64,
    /// Bytes stored (compressed, sealed).
    pub stored: u32,
    /// Bytes of the original message.
    pub raw: u32,
}

impl From<Location> for String {
    fn from(l: Location) -> String {
        format!("{}/{}/{}/{}", l.pack, l.offset, l.stored, l.raw)
    }
}

impl TryFrom<String> for Location {
    type Error = String;

    fn try_from(text: String) -> Result<Location, String> {
        let bad = || format!("{text:?} is not a blob location (<pack>/<offset>/<stored>/<raw>)");
        let parts: Vec<&str> = text.split('/').collect();
        let [pack, offset, stored, raw] = parts[..] else {
            return Err(bad());
        };
        Ok(Location {
            pack: PackId::parse(pack).ok_or_else(bad)?,
            offset: offset.parse().map_err(|_| bad())?,
            stored: stored.parse().map_err(|_| bad())?,
            raw: raw.parse().map_err(|_| bad())?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: [u8; 32],
    pub location: Location,
}

impl Entry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.location.pack.0);
        out.extend_from_slice(&self.location.offset.to_le_bytes());
        out.extend_from_slice(&self.location.stored.to_le_bytes());
        out.extend_from_slice(&self.location.raw.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Entry {
        Entry {
            id: b[..32].try_into().expect("32 bytes"),
            location: Location {
                pack: PackId(b[32..48].try_into().expect("16 bytes")),
                offset: u64::from_le_bytes(b[48..56].try_into().expect("8 bytes")),
                stored: u32::from_le_bytes(b[56..60].try_into().expect("4 bytes")),
                raw: u32::from_le_bytes(b[60..64].try_into().expect("4 bytes")),
            },
        }
    }
}

/// The first 8 bytes of an identifier, as kept in memory for compacted entries.
pub fn prefix(id: &[u8; 32]) -> u64 {
    u64::from_be_bytes(id[..8].try_into().expect("8 bytes"))
}

/// The bucket of an identifier among 2^bits.
pub fn bucket_of(id: &[u8; 32], bits: u8) -> u32 {
    if bits == 0 {
        0
    } else {
        (prefix(id) >> (64 - u32::from(bits))) as u32
    }
}

/// Entries, sorted by identifier, as the body of a delta or bucket object.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for entry in entries {
        entry.encode(&mut out);
    }
    out
}

pub fn decode_entries(body: &[u8]) -> Result<Vec<Entry>, String> {
    if !body.len().is_multiple_of(ENTRY_LEN) {
        return Err(format!(
            "{} bytes of entries is not a multiple of {ENTRY_LEN}",
            body.len()
        ));
    }
    let entries: Vec<Entry> = body.chunks_exact(ENTRY_LEN).map(Entry::decode).collect();
    if entries.windows(2).any(|w| w[0].id > w[1].id) {
        return Err("entries are not sorted".into());
    }
    Ok(entries)
}

/// What a compacted generation covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub bits: u8,
    pub entries: u64,
    /// Every pack whose entries the generation holds, sorted.
    pub covered: Vec<PackId>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.covered.len() * 16);
        out.push(1);
        out.push(self.bits);
        out.extend_from_slice(&self.entries.to_le_bytes());
        out.extend_from_slice(&(self.covered.len() as u64).to_le_bytes());
        for pack in &self.covered {
            out.extend_from_slice(&pack.0);
        }
        out
    }

    pub fn decode(body: &[u8]) -> Result<Manifest, String> {
        let bad = || "truncated or malformed manifest".to_string();
        if body.len() < 18 || body[0] != 1 || body[1] > 24 {
            return Err(bad());
        }
        let entries = u64::from_le_bytes(body[2..10].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(body[10..18].try_into().expect("8 bytes")) as usize;
        let packs = &body[18..];
        if packs.len() != count.checked_mul(16).ok_or_else(bad)? {
            return Err(bad());
        }
        Ok(Manifest {
            bits: body[1],
            entries,
            covered: packs
                .chunks_exact(16)
                .map(|c| PackId(c.try_into().expect("16 bytes")))
                .collect(),
        })
    }

    pub fn covers(&self, pack: &PackId) -> bool {
        self.covered.binary_search(pack).is_ok()
    }
}

pub fn encode_prefixes(prefixes: &[u64]) -> Vec<u8> {
    prefixes.iter().flat_map(|p| p.to_le_bytes()).collect()
}

pub fn decode_prefixes(body: &[u8]) -> Result<Vec<u64>, String> {
    if !body.len().is_multiple_of(8) {
        return Err("fingerprints are not a multiple of 8 bytes".into());
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Writes an index object body, sealed like everything else.
pub fn seal(kind: Kind, body: &[u8], keys: Option<&KeyRing>) -> bytes::Bytes {
    bytes::Bytes::from(Envelope::new(kind, keys).single(body, COMPRESSION_LEVEL))
}

/// Reads an object of `kind`: `Ok(None)` when it is not there.
pub async fn read(
    objects: &dyn ObjectStore,
    keys: Option<&KeyRing>,
    kind: Kind,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(bytes) = objects.get(key).await? else {
        return Ok(None);
    };
    open_single(kind, &bytes, keys)
        .map(Some)
        .map_err(|message| StoreError::Corrupt {
            store: objects.describe(),
            key: key.to_string(),
            message,
        })
}

pub fn corrupt(objects: &dyn ObjectStore, key: &str, message: String) -> StoreError {
    StoreError::Corrupt {
        store: objects.describe(),
        key: key.to_string(),
        message,
    }
}

/// A compacted generation as loaded: its manifest and identifier prefixes.
pub struct Generation {
    pub name: String,
    pub manifest: Manifest,
    pub prefixes: Vec<u64>,
}

/// The index as read from the store at one moment.
pub struct Loaded {
    /// The newest generation first.
    pub generations: Vec<Generation>,
    /// Entries of the packs no loaded generation covers, by pack.
    pub deltas: Vec<(PackId, Vec<Entry>)>,
    /// Index objects that could not be read (key and why), when loading tolerated them.
    pub damaged: Vec<(String, String)>,
}

/// Loading met an object that a concurrent compaction removed: start over.
pub enum LoadError {
    Stale,
    Store(StoreError),
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        LoadError::Store(e)
    }
}

/// Loads generations and deltas, retrying while compactions move entries under it.
/// `tolerant` (for verify): a damaged index object is noted in [`Loaded::damaged`] and
/// skipped instead of failing the load.
pub async fn load(
    objects: &dyn ObjectStore,
    keys: Option<&KeyRing>,
    tolerant: bool,
) -> Result<Loaded, StoreError> {
    let mut attempt = 0;
    loop {
        match load_once(objects, keys, tolerant).await {
            Ok(loaded) => return Ok(loaded),
            Err(LoadError::Store(e)) => return Err(e),
            Err(LoadError::Stale) if attempt < 8 => attempt += 1,
            Err(LoadError::Stale) => {
                return Err(StoreError::Backend {
                    store: objects.describe(),
                    operation: "load",
                    key: layout::INDEX.into(),
                    message: "the index kept changing while it was read (compactions in a loop?)"
                        .into(),
                })
            }
        }
    }
}

async fn load_once(
    objects: &dyn ObjectStore,
    keys: Option<&KeyRing>,
    tolerant: bool,
) -> Result<Loaded, LoadError> {
    let damaged = Mutex::new(Vec::new());
    let notes = Notes {
        tolerant,
        damaged: &damaged,
    };
    let mut manifests = BTreeMap::new();
    for key in objects.list(layout::MANIFESTS).await? {
        let name = key[layout::MANIFESTS.len()..].to_string();
        let manifest = read_decoded(objects, keys, Kind::Manifest, &key, Manifest::decode).await;
        if let Some(manifest) = notes.take(manifest)? {
            manifests.insert(name, manifest);
        }
    }
    // The newest generation, and any other that covers a pack the newest does not.
    let mut chosen: Vec<(String, Manifest)> = Vec::new();
    if let Some((newest, manifest)) = manifests.pop_last() {
        chosen.push((newest, manifest));
        for (name, manifest) in manifests.into_iter().rev() {
            if manifest.covered.iter().any(|p| !chosen[0].1.covers(p)) {
                chosen.push((name, manifest));
            }
        }
    }
    let covered = |pack: &PackId| chosen.iter().any(|(_, m)| m.covers(pack));
    let delta_keys: Vec<(PackId, String)> = objects
        .list(layout::DELTAS)
        .await?
        .into_iter()
        .filter_map(|key| Some((PackId::parse(&key[layout::DELTAS.len()..])?, key)))
        .filter(|(pack, _)| !covered(pack))
        .collect();
    let deltas: Vec<Option<(PackId, Vec<Entry>)>> = futures::stream::iter(delta_keys)
        .map(|(pack, key)| {
            let notes = &notes;
            async move {
                let decode = |body: &[u8]| delta_entries(body, &pack);
                let entries = read_decoded(objects, keys, Kind::Delta, &key, decode).await;
                Ok::<_, LoadError>(notes.take(entries)?.map(|e| (pack, e)))
            }
        })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut generations = Vec::new();
    for (name, manifest) in chosen {
        let key = layout::fingerprints(&name);
        let prefixes = read_decoded(objects, keys, Kind::Fingerprints, &key, decode_prefixes).await;
        generations.push(Generation {
            name,
            manifest,
            prefixes: notes.take(prefixes)?.unwrap_or_default(),
        });
    }
    Ok(Loaded {
        generations,
        deltas: deltas.into_iter().flatten().collect(),
        damaged: damaged
            .into_inner()
            .expect("the damage list lock is never poisoned"),
    })
}

/// How loading treats damaged and vanished objects.
struct Notes<'a> {
    tolerant: bool,
    damaged: &'a Mutex<Vec<(String, String)>>,
}

impl Notes<'_> {
    /// A vanished object means a compaction moved it: start over. A damaged one fails the
    /// load, or when tolerant is noted and skipped.
    fn take<T>(&self, read: Result<Option<T>, StoreError>) -> Result<Option<T>, LoadError> {
        match read {
            Ok(Some(value)) => Ok(Some(value)),
            Ok(None) => Err(LoadError::Stale),
            Err(StoreError::Corrupt { key, message, .. }) if self.tolerant => {
                self.damaged
                    .lock()
                    .expect("the damage list lock is never poisoned")
                    .push((key, message));
                Ok(None)
            }
            Err(e) => Err(LoadError::Store(e)),
        }
    }
}

/// Reads and decodes an index object; a body that does not decode is damage.
async fn read_decoded<T>(
    objects: &dyn ObjectStore,
    keys: Option<&KeyRing>,
    kind: Kind,
    key: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<Option<T>, StoreError> {
    match read(objects, keys, kind, key).await? {
        None => Ok(None),
        Some(body) => decode(&body)
            .map(Some)
            .map_err(|m| corrupt(objects, key, m)),
    }
}

/// The entries of the delta of `pack`, which must all be in that pack.
fn delta_entries(body: &[u8], pack: &PackId) -> Result<Vec<Entry>, String> {
    let entries = decode_entries(body)?;
    if let Some(e) = entries.iter().find(|e| e.location.pack != *pack) {
        return Err(format!("names pack {}, not its own", e.location.pack));
    }
    Ok(entries)
}

/// Reads every entry of one bucket of a generation; `Ok(None)` when a compaction removed it.
pub async fn read_bucket(
    objects: &dyn ObjectStore,
    keys: Option<&KeyRing>,
    generation: &str,
    bucket: u32,
) -> Result<Option<Vec<Entry>>, StoreError> {
    let key = layout::bucket(generation, bucket);
    read_decoded(objects, keys, Kind::Bucket, &key, decode_entries).await
}

/// What a lookup in memory found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Found(Location),
    Absent,
    /// The identifier may be in this bucket of this generation, which is not loaded.
    NeedBucket {
        generation: usize,
        bucket: u32,
    },
}

/// The index in memory: what a process needs to tell whether a message is stored and
/// where, without holding every entry.
pub struct View {
    generations: Vec<Generation>,
    /// Entries of uncompacted packs, this process's own new packs included.
    deltas: RwLock<HashMap<[u8; 32], Location>>,
    /// Delta objects: read at load, and written by this process since.
    delta_objects: AtomicUsize,
    buckets: Mutex<BucketCache>,
}

#[derive(Default)]
struct BucketCache {
    loaded: HashMap<(usize, u32), Arc<Vec<Entry>>>,
    bytes: usize,
}

impl View {
    pub fn new(loaded: Loaded) -> View {
        let mut deltas = HashMap::new();
        let delta_objects = loaded.deltas.len();
        for (_, entries) in loaded.deltas {
            for entry in entries {
                deltas.entry(entry.id).or_insert(entry.location);
            }
        }
        View {
            generations: loaded.generations,
            deltas: RwLock::new(deltas),
            delta_objects: AtomicUsize::new(delta_objects),
            buckets: Mutex::default(),
        }
    }

    /// Adds the entries of a pack this process just made durable.
    pub fn add(&self, entries: &[Entry]) {
        self.delta_objects.fetch_add(1, Ordering::Relaxed);
        let mut deltas = self
            .deltas
            .write()
            .expect("the view lock is never poisoned");
        for entry in entries {
            deltas.entry(entry.id).or_insert(entry.location);
        }
    }

    pub fn probe(&self, id: &[u8; 32]) -> Probe {
        if let Some(location) = self
            .deltas
            .read()
            .expect("the view lock is never poisoned")
            .get(id)
        {
            return Probe::Found(*location);
        }
        let prefix = prefix(id);
        for (g, generation) in self.generations.iter().enumerate() {
            if generation.prefixes.binary_search(&prefix).is_err() {
                continue;
            }
            let bucket = bucket_of(id, generation.manifest.bits);
            let cache = self
                .buckets
                .lock()
                .expect("the view lock is never poisoned");
            let Some(entries) = cache.loaded.get(&(g, bucket)) else {
                return Probe::NeedBucket {
                    generation: g,
                    bucket,
                };
            };
            if let Ok(i) = entries.binary_search_by(|e| e.id.cmp(id)) {
                return Probe::Found(entries[i].location);
            }
        }
        Probe::Absent
    }

    pub fn generation_name(&self, generation: usize) -> &str {
        &self.generations[generation].name
    }

    pub fn add_bucket(&self, generation: usize, bucket: u32, entries: Vec<Entry>) {
        let mut cache = self
            .buckets
            .lock()
            .expect("the view lock is never poisoned");
        let bytes = entries.len() * std::mem::size_of::<Entry>();
        if cache.bytes + bytes > BUCKET_CACHE_BYTES {
            *cache = BucketCache::default();
        }
        cache.bytes += bytes;
        cache.loaded.insert((generation, bucket), Arc::new(entries));
    }

    /// Bytes the view holds for its entries (prefixes and delta entries), for figures.
    pub fn memory_bytes(&self) -> usize {
        let prefixes: usize = self.generations.iter().map(|g| g.prefixes.len() * 8).sum();
        let deltas = self.deltas.read().expect("the view lock is never poisoned");
        // A hash map entry: key, value, and about one control byte; at the map's capacity.
        let delta_bytes = deltas.capacity() * (32 + std::mem::size_of::<Location>() + 1);
        prefixes + delta_bytes
    }

    pub fn delta_objects(&self) -> usize {
        self.delta_objects.load(Ordering::Relaxed)
    }

    pub fn generations(&self) -> &[Generation] {
        &self.generations
    }
}

/// The smallest number of bucket bits that keeps buckets near `per_bucket` entries.
pub fn bucket_bits(entries: u64, per_bucket: u64) -> u8 {
    let mut bits = 0;
    while bits < 24 && entries > per_bucket << bits {
        bits += 1;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u8, pack: u8) -> Entry {
        let mut id = [0u8; 32];
        id[0] = first;
        id[31] = pack;
        Entry {
            id,
            location: Location {
                pack: PackId([pack; 16]),
                offset: 32 + u64::from(first),
                stored: 100,
                raw: u32::MAX,
            },
        }
    }

    #[test]
    fn entries_and_manifests_round_trip() {
        let entries = vec![entry(1, 1), entry(2, 2), entry(0xff, 1)];
        let body = encode_entries(&entries);
        assert_eq!(body.len(), 3 * ENTRY_LEN);
        assert_eq!(decode_entries(&body).unwrap(), entries);
        assert!(decode_entries(&body[1..]).is_err());
        let reversed: Vec<Entry> = entries.iter().rev().copied().collect();
        assert!(decode_entries(&encode_entries(&reversed))
            .unwrap_err()
            .contains("not sorted"));
        let manifest = Manifest {
            bits: 3,
            entries: 7,
            covered: vec![PackId([1; 16]), PackId([2; 16])],
        };
        assert_eq!(Manifest::decode(&manifest.encode()).unwrap(), manifest);
        assert!(manifest.covers(&PackId([2; 16])) && !manifest.covers(&PackId([3; 16])));
        assert!(Manifest::decode(&manifest.encode()[..20]).is_err());
        let prefixes = vec![1, u64::MAX, 7];
        assert_eq!(
            decode_prefixes(&encode_prefixes(&prefixes)).unwrap(),
            prefixes
        );
    }

    #[test]
    fn buckets_split_by_leading_bits() {
        let mut id = [0u8; 32];
        id[0] = 0b1010_0000;
        assert_eq!(bucket_of(&id, 0), 0);
        assert_eq!(bucket_of(&id, 1), 1);
        assert_eq!(bucket_of(&id, 3), 0b101);
        assert_eq!(bucket_bits(0, 1000), 0);
        assert_eq!(bucket_bits(1000, 1000), 0);
        assert_eq!(bucket_bits(1001, 1000), 1);
        assert_eq!(bucket_bits(10_000_000, 65_536), 8);
    }

    #[test]
    fn pack_ids_sort_by_time_and_parse() {
        let a = PackId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = PackId::generate();
        assert!(a < b && a.to_string() < b.to_string());
        assert_eq!(PackId::parse(&a.to_string()), Some(a));
        assert_eq!(PackId::parse("xyz"), None);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now_ms.abs_diff(b.created_ms()) < 5_000);
    }

    #[test]
    fn a_view_finds_deltas_at_once_and_compacted_entries_through_their_bucket() {
        let compacted = [entry(0x10, 1), entry(0x90, 1)];
        let loaded = Loaded {
            generations: vec![Generation {
                name: "g".into(),
                manifest: Manifest {
                    bits: 1,
                    entries: 2,
                    covered: vec![PackId([1; 16])],
                },
                prefixes: compacted.iter().map(|e| prefix(&e.id)).collect(),
            }],
            deltas: vec![(PackId([2; 16]), vec![entry(0x20, 2)])],
            damaged: vec![],
        };
        let view = View::new(loaded);
        assert_eq!(
            view.probe(&entry(0x20, 2).id),
            Probe::Found(entry(0x20, 2).location)
        );
        assert_eq!(view.probe(&entry(0x30, 2).id), Probe::Absent);
        let wanted = entry(0x90, 1);
        assert_eq!(
            view.probe(&wanted.id),
            Probe::NeedBucket {
                generation: 0,
                bucket: 1
            }
        );
        view.add_bucket(0, 1, vec![wanted]);
        assert_eq!(view.probe(&wanted.id), Probe::Found(wanted.location));
        // Same prefix, other identifier: the bucket says no.
        let mut twin = wanted.id;
        twin[31] = 0x77;
        assert_eq!(view.probe(&twin), Probe::Absent);
        view.add(&[entry(0x30, 3)]);
        assert_eq!(
            view.probe(&entry(0x30, 3).id),
            Probe::Found(entry(0x30, 3).location)
        );
    }
}
