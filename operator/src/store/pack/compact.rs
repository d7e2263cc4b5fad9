//! Compaction: the deltas and generations of the index merged into one new generation,
//! then what it made redundant removed, and packs no index names (left by runs killed
//! between a pack and its delta) removed once old enough.
//!
//! Safe with writers and other compactions at once, without conditional writes, because
//! of one rule: an index object is removed only by a compaction whose own generation is
//! durable and covers every pack the removed object covers. At any moment some object in
//! the store therefore holds every entry; readers take the union (see [`super::index`])
//! and start over when an object vanishes under them.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};

use super::blob::Kind;
use super::index::{self, Entry, Manifest, PackId};
use super::{layout, PackStore};
use crate::store::StoreError;

/// Index objects written or removed at once.
const CALLS_IN_FLIGHT: usize = 8;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// The new generation, if one was written.
    pub generation: Option<String>,
    pub entries: u64,
    pub buckets: u64,
    pub deltas_removed: u64,
    pub generations_removed: u64,
    /// Packs that no index named, removed.
    pub garbage_removed: Vec<String>,
}

impl PackStore {
    /// Whether the index has enough deltas (or generations) that compacting pays: by the
    /// loaded view, so `None` before this process read the index.
    pub fn compaction_due(&self, deltas: usize) -> Option<bool> {
        let view = self.current_view()?;
        Some(view.generations().len() > 1 || view.delta_objects() >= deltas)
    }

    /// Merges the index into one generation and removes what that made redundant.
    pub async fn compact(&self) -> Result<CompactReport, StoreError> {
        let objects = &*self.objects;
        let keys = self.keys();
        // Read everything: the generations' buckets in full, and the deltas.
        let (loaded, mut entries) = 'read: loop {
            let loaded = index::load(objects, keys, false).await?;
            let mut entries: Vec<Entry> = Vec::new();
            for generation in &loaded.generations {
                let name = &generation.name;
                let buckets: Vec<Option<Vec<Entry>>> =
                    futures::stream::iter(0..1u32 << generation.manifest.bits)
                        .map(|b| index::read_bucket(objects, keys, name, b))
                        .buffer_unordered(CALLS_IN_FLIGHT)
                        .try_collect()
                        .await?;
                for bucket in buckets {
                    // A concurrent compaction removed this generation: start over.
                    let Some(bucket) = bucket else {
                        continue 'read;
                    };
                    entries.extend(bucket);
                }
            }
            for (_, delta) in &loaded.deltas {
                entries.extend_from_slice(delta);
            }
            break (loaded, entries);
        };
        let mut report = CompactReport::default();
        let mut covered: Vec<PackId> = loaded
            .generations
            .iter()
            .flat_map(|g| g.manifest.covered.iter().copied())
            .chain(loaded.deltas.iter().map(|(pack, _)| *pack))
            .collect();
        covered.sort();
        covered.dedup();
        if loaded.generations.len() + loaded.deltas.len() > 1 {
            entries.sort_by(|a, b| {
                (a.id, a.location.pack, a.location.offset).cmp(&(
                    b.id,
                    b.location.pack,
                    b.location.offset,
                ))
            });
            entries.dedup();
            let name = self.write_generation(&entries, &covered).await?;
            report.entries = entries.len() as u64;
            report.buckets = 1 << index::bucket_bits(report.entries, self.options.bucket_entries);
            // Now redundant: the deltas read, and every generation the new one covers.
            let absorbed: Vec<String> = loaded
                .deltas
                .iter()
                .map(|(pack, _)| layout::delta(pack))
                .collect();
            report.deltas_removed = absorbed.len() as u64;
            self.delete_all(absorbed).await?;
            report.generations_removed = self.remove_covered_generations(&name, &covered).await?;
            report.generation = Some(name);
        }
        report.garbage_removed = self.remove_garbage().await?;
        Ok(report)
    }

    /// Writes a generation: buckets and fingerprints, a barrier, then the manifest.
    async fn write_generation(
        &self,
        entries: &[Entry],
        covered: &[PackId],
    ) -> Result<String, StoreError> {
        let name = PackId::generate().to_string();
        let bits = index::bucket_bits(entries.len() as u64, self.options.bucket_entries);
        let keys = self.keys();
        // Entries are sorted by identifier, so each bucket is one run of them.
        let mut runs = Vec::new();
        let mut start = 0;
        for bucket in 0..1u32 << bits {
            let end = start
                + entries[start..]
                    .iter()
                    .take_while(|e| index::bucket_of(&e.id, bits) == bucket)
                    .count();
            runs.push((bucket, &entries[start..end]));
            start = end;
        }
        futures::stream::iter(runs)
            .map(|(bucket, run)| {
                let body = index::seal(Kind::Bucket, &index::encode_entries(run), keys);
                let key = layout::bucket(&name, bucket);
                async move { self.objects.put(&key, body).await }
            })
            .buffer_unordered(CALLS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        let mut prefixes: Vec<u64> = entries.iter().map(|e| index::prefix(&e.id)).collect();
        prefixes.dedup();
        let body = index::seal(Kind::Fingerprints, &index::encode_prefixes(&prefixes), keys);
        self.objects.put(&layout::fingerprints(&name), body).await?;
        self.objects.sync().await?;
        let manifest = Manifest {
            bits,
            entries: entries.len() as u64,
            covered: covered.to_vec(),
        };
        let body = index::seal(Kind::Manifest, &manifest.encode(), keys);
        self.objects.put(&layout::manifest(&name), body).await?;
        self.objects.sync().await?;
        Ok(name)
    }

    /// Removes every other generation whose packs `covered` (the new one's) includes:
    /// its manifest first, so that no reader picks it any more, then its buckets.
    async fn remove_covered_generations(
        &self,
        own: &str,
        covered: &[PackId],
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for key in self.objects.list(layout::MANIFESTS).await? {
            let name = &key[layout::MANIFESTS.len()..];
            if name == own {
                continue;
            }
            let Some(body) = index::read(&*self.objects, self.keys(), Kind::Manifest, &key).await?
            else {
                continue;
            };
            let Ok(manifest) = Manifest::decode(&body) else {
                continue;
            };
            if manifest
                .covered
                .iter()
                .all(|p| covered.binary_search(p).is_ok())
            {
                self.objects.delete(&key).await?;
                let buckets = self
                    .objects
                    .list(&format!("{}{name}/", layout::BUCKETS))
                    .await?;
                self.delete_all(buckets).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes packs that no index names and bucket directories that no manifest names,
    /// once older than the grace period. Returns the packs removed.
    async fn remove_garbage(&self) -> Result<Vec<String>, StoreError> {
        let grace_ms = self.options.garbage_grace.as_millis() as u64;
        let now_ms = PackId::generate().created_ms();
        let old = |id: &PackId| now_ms.saturating_sub(id.created_ms()) >= grace_ms;
        // Listed after everything above, so that all that the compaction wrote counts.
        let packs = self.objects.list(layout::PACKS).await?;
        let mut manifests = HashSet::new();
        let mut named: HashSet<PackId> = HashSet::new();
        for key in self.objects.list(layout::MANIFESTS).await? {
            manifests.insert(key[layout::MANIFESTS.len()..].to_string());
            if let Some(body) =
                index::read(&*self.objects, self.keys(), Kind::Manifest, &key).await?
            {
                if let Ok(manifest) = Manifest::decode(&body) {
                    named.extend(manifest.covered);
                }
            }
        }
        for key in self.objects.list(layout::DELTAS).await? {
            named.extend(PackId::parse(&key[layout::DELTAS.len()..]));
        }
        let garbage: Vec<String> = packs
            .into_iter()
            .filter(|key| {
                PackId::parse(&key[layout::PACKS.len()..])
                    .is_some_and(|id| !named.contains(&id) && old(&id))
            })
            .collect();
        self.delete_all(garbage.clone()).await?;
        // Buckets of a compaction that stopped before its manifest (or after removing it).
        let orphans: Vec<String> = self
            .objects
            .list(layout::BUCKETS)
            .await?
            .into_iter()
            .filter(|key| {
                let generation = key[layout::BUCKETS.len()..]
                    .split('/')
                    .next()
                    .unwrap_or_default();
                !manifests.contains(generation)
                    && PackId::parse(generation).is_some_and(|id| old(&id))
            })
            .collect();
        self.delete_all(orphans).await?;
        Ok(garbage)
    }

    async fn delete_all(&self, keys: Vec<String>) -> Result<(), StoreError> {
        futures::stream::iter(keys)
            .map(|key| async move { self.objects.delete(&key).await })
            .buffer_unordered(CALLS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        self.objects.sync().await
    }
}
