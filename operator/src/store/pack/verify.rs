//! Verify: every index object read, every pack read whole, every blob opened and
//! re-hashed against its identifier.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::blob::{Envelope, Kind};
use super::index::{self, Entry, Location, PackId};
use super::{layout, PackStore};
use crate::store::StoreError;

/// Packs read at once (each is held whole while its blobs are checked).
const PACKS_IN_FLIGHT: usize = 2;

/// Something verify found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The object: a pack, or an index object.
    pub object: String,
    /// The blob's identifier, for damage to one blob (or to the pack it is in).
    pub id: Option<[u8; 32]>,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct PackVerifyReport {
    pub packs: u64,
    /// Blobs checked, and their stored and original bytes.
    pub blobs: u64,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    /// Identifiers stored more than once (two writers at once): harmless, reported.
    pub duplicates: u64,
    pub damaged: Vec<Damage>,
    /// Packs no index names: left by a run stopped between a pack and its index, or being
    /// written right now. Compaction removes them once old.
    pub unindexed: Vec<String>,
    /// The blobs found intact, by pack and offset, with their identifiers: what a folder's
    /// index entries are checked against.
    pub intact: HashMap<(PackId, u64), [u8; 32]>,
}

impl PackStore {
    /// Checks the whole pack store. Damage is reported, not returned as an error; errors
    /// are failures to read at all.
    pub async fn verify(&self) -> Result<PackVerifyReport, StoreError> {
        let objects = &*self.objects;
        let mut report = PackVerifyReport::default();
        let (entries, damaged) = self.read_index().await?;
        report.damaged = damaged;
        let mut by_pack: BTreeMap<PackId, Vec<Entry>> = BTreeMap::new();
        let mut locations: HashMap<[u8; 32], HashSet<(PackId, u64)>> = HashMap::new();
        for entry in entries {
            if locations
                .entry(entry.id)
                .or_default()
                .insert((entry.location.pack, entry.location.offset))
            {
                by_pack.entry(entry.location.pack).or_default().push(entry);
            }
        }
        report.duplicates = locations.values().filter(|l| l.len() > 1).count() as u64;
        let listed: HashSet<PackId> = objects
            .list(layout::PACKS)
            .await?
            .iter()
            .filter_map(|key| PackId::parse(&key[layout::PACKS.len()..]))
            .collect();
        for pack in &listed {
            if !by_pack.contains_key(pack) {
                report.unindexed.push(layout::pack(pack));
            }
        }
        report.unindexed.sort();
        let mut missing = Vec::new();
        by_pack.retain(|pack, entries| {
            if listed.contains(pack) {
                return true;
            }
            missing.extend(entries.iter().map(|e| Damage {
                object: layout::pack(pack),
                id: Some(e.id),
                message: "the index names this pack, but it is missing".into(),
            }));
            false
        });
        report.damaged.extend(missing);
        let mut checked = futures::stream::iter(by_pack)
            .map(|(pack, entries)| async move {
                let key = layout::pack(&pack);
                let bytes = objects.get(&key).await?;
                let keys = self.keys.clone();
                Ok::<_, StoreError>(
                    tokio::task::spawn_blocking(move || {
                        check_pack(&key, bytes.as_deref(), entries, keys.as_deref())
                    })
                    .await
                    .expect("checking a pack does not panic"),
                )
            })
            .buffer_unordered(PACKS_IN_FLIGHT);
        while let Some(checked) = checked.next().await {
            let checked = checked?;
            report.packs += 1;
            report.blobs += checked.blobs;
            report.stored_bytes += checked.stored_bytes;
            report.raw_bytes += checked.raw_bytes;
            report.damaged.extend(checked.damaged);
            report.intact.extend(checked.intact);
        }
        Ok(report)
    }

    /// Every blob the index names (a blob stored twice, by two writers, once per copy).
    pub async fn blobs(&self) -> Result<Vec<Location>, StoreError> {
        let (entries, _) = self.read_index().await?;
        let mut seen = HashSet::new();
        Ok(entries
            .into_iter()
            .map(|e| e.location)
            .filter(|l| seen.insert((l.pack, l.offset)))
            .collect())
    }

    /// Every entry of every index object, and what could not be read (starting over when
    /// a compaction removes an object under it).
    async fn read_index(&self) -> Result<(Vec<Entry>, Vec<Damage>), StoreError> {
        let objects = &*self.objects;
        let keys = self.keys();
        'read: loop {
            let loaded = index::load(objects, keys, true).await?;
            let mut entries: Vec<Entry> = Vec::new();
            let mut damaged = Vec::new();
            for generation in &loaded.generations {
                let prefixes: HashSet<u64> = generation.prefixes.iter().copied().collect();
                for bucket in 0..1u32 << generation.manifest.bits {
                    let key = layout::bucket(&generation.name, bucket);
                    match index::read_bucket(objects, keys, &generation.name, bucket).await {
                        Ok(None) => continue 'read,
                        Ok(Some(bucket)) => {
                            if let Some(e) = bucket
                                .iter()
                                .find(|e| !prefixes.contains(&index::prefix(&e.id)))
                            {
                                damaged.push(Damage {
                                    object: layout::fingerprints(&generation.name),
                                    id: Some(e.id),
                                    message: "lacks an identifier its buckets hold".into(),
                                });
                            }
                            entries.extend(bucket);
                        }
                        Err(StoreError::Corrupt { message, .. }) => damaged.push(Damage {
                            object: key,
                            id: None,
                            message,
                        }),
                        Err(e) => return Err(e),
                    }
                }
            }
            for (_, delta) in &loaded.deltas {
                entries.extend_from_slice(delta);
            }
            damaged.extend(loaded.damaged.into_iter().map(|(object, message)| Damage {
                object,
                id: None,
                message,
            }));
            return Ok((entries, damaged));
        }
    }
}

#[derive(Default)]
struct CheckedPack {
    blobs: u64,
    stored_bytes: u64,
    raw_bytes: u64,
    damaged: Vec<Damage>,
    intact: Vec<((PackId, u64), [u8; 32])>,
}

/// Opens every blob of one pack and re-hashes it against its identifier.
fn check_pack(
    key: &str,
    bytes: Option<&[u8]>,
    mut entries: Vec<Entry>,
    keys: Option<&super::KeyRing>,
) -> CheckedPack {
    let mut checked = CheckedPack::default();
    let damage = |id: Option<[u8; 32]>, message: String| Damage {
        object: key.to_string(),
        id,
        message,
    };
    let envelope = match bytes.map(|b| Envelope::open(Kind::Pack, b, keys)) {
        Some(Ok(envelope)) => envelope,
        failed => {
            let why = match failed {
                Some(Err(why)) => why,
                _ => "vanished while verify ran".into(),
            };
            checked.damaged.extend(
                entries
                    .iter()
                    .map(|e| damage(Some(e.id), format!("the pack is unreadable: {why}"))),
            );
            return checked;
        }
    };
    let bytes = bytes.expect("opened above");
    let key_of_pack = envelope.fingerprint().and_then(|fp| keys?.get(fp));
    entries.sort_by_key(|e| e.location.offset);
    for entry in entries {
        let location = entry.location;
        let start = location.offset as usize;
        let Some(stored) = bytes.get(start..start + location.stored as usize) else {
            checked.damaged.push(damage(
                Some(entry.id),
                format!(
                    "blob at offset {} runs past the end of the pack ({} bytes): truncated",
                    location.offset,
                    bytes.len()
                ),
            ));
            continue;
        };
        checked.blobs += 1;
        checked.stored_bytes += u64::from(location.stored);
        checked.raw_bytes += u64::from(location.raw);
        let raw = match envelope.read_blob(location.offset, stored, location.raw as usize) {
            Ok(raw) => raw,
            Err(why) => {
                let message = format!("blob at offset {}: {why}", location.offset);
                checked.damaged.push(damage(Some(entry.id), message));
                continue;
            }
        };
        let sha256: [u8; 32] = Sha256::digest(&raw).into();
        let expected = match key_of_pack {
            Some(key) => key.identifier(&sha256),
            None => sha256,
        };
        if expected == entry.id {
            checked
                .intact
                .push(((location.pack, location.offset), entry.id));
        } else {
            checked.damaged.push(damage(
                Some(entry.id),
                format!(
                    "blob at offset {} does not hash to its identifier",
                    location.offset
                ),
            ));
        }
    }
    checked
}
