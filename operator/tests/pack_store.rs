//! The pack store against real object stores: each test in `both!` runs once on a local
//! directory and once on S3 (a private Garage). Crashes are a store that fails one kind
//! of write, as a killed run leaves it; damage is bytes changed behind the store's back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mailvault::store::pack::keys::{Key, KeyRing};
use mailvault::store::pack::{PackOptions, PackStore};
use mailvault::store::{ObjectStore, StoreError};
use mailvault_testkit::mail;
use sha2::{Digest, Sha256};

#[macro_use]
mod backends;
use backends::Backend;

on_both_backends!(
    messages_round_trip_through_packs,
    duplicates_are_stored_once,
    two_writers_at_once_lose_nothing,
    compaction_keeps_every_entry_while_others_write_and_compact,
    encrypted_archives_hide_mail_and_refuse_wrong_keys,
    key_rotation_keeps_old_data_readable,
    a_run_killed_between_pack_and_index_loses_nothing,
    a_damaged_byte_is_named_by_verify,
    an_index_naming_a_missing_pack_is_reported,
    a_run_with_nothing_to_store_reads_no_index,
);

fn small_packs() -> PackOptions {
    PackOptions {
        target_size: 512 << 10,
        ..PackOptions::default()
    }
}

fn sha(message: &[u8]) -> [u8; 32] {
    Sha256::digest(message).into()
}

fn ring(keys: &[(&str, u8)]) -> KeyRing {
    KeyRing::new(
        keys.iter()
            .map(|(name, byte)| Key::new(*name, &[*byte; 32]))
            .collect(),
    )
}

async fn open(store: &Arc<dyn ObjectStore>, keys: Option<KeyRing>) -> Arc<PackStore> {
    PackStore::open(store.clone(), keys, small_packs())
        .await
        .unwrap()
}

/// Stores messages on blocking threads, as the engine does.
async fn store_all(packs: &Arc<PackStore>, messages: &[Vec<u8>]) -> Vec<bool> {
    let packs = packs.clone();
    let messages = messages.to_vec();
    tokio::task::spawn_blocking(move || {
        messages
            .iter()
            .map(|m| packs.store_blocking(m).unwrap().written)
            .collect()
    })
    .await
    .unwrap()
}

async fn assert_all_readable(packs: &PackStore, messages: &[Vec<u8>]) {
    for (i, message) in messages.iter().enumerate() {
        let back = packs.read_message(&sha(message)).await.unwrap();
        assert!(back.as_deref() == Some(&message[..]), "message {i}");
    }
}

async fn keys_under(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    store.list(prefix).await.unwrap()
}

async fn messages_round_trip_through_packs(backend: Backend) {
    let store = backend.store;
    let mut messages = mail::mailbox(1, "ann@example.org", 120);
    // Larger than a pack, and than S3's multipart threshold.
    messages.push(mail::message(
        1,
        999,
        "a@example.org",
        "ann@example.org",
        "big",
        25 << 20,
    ));
    let packs = open(&store, None).await;
    assert!(store_all(&packs, &messages).await.iter().all(|&w| w));
    packs.flush().await.unwrap();
    let pack_objects = keys_under(&store, "packs/data/").await;
    let deltas = keys_under(&store, "packs/delta/").await;
    assert!(pack_objects.len() >= 3, "{pack_objects:?}");
    assert_eq!(pack_objects.len(), deltas.len());
    assert_eq!(
        keys_under(&store, "").await.len(),
        pack_objects.len() * 2,
        "packs and their deltas, nothing else"
    );
    assert_all_readable(&packs, &messages).await;
    // The large message has a pack of its own, holding nothing else; the others share.
    let (big, small) = messages.split_last().unwrap();
    let big = packs.locate(&sha(big)).await.unwrap().unwrap();
    let object = store
        .get(&format!("packs/data/{}", big.pack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (big.offset, object.len() as u64),
        (32, 32 + u64::from(big.stored))
    );
    assert!(u64::from(big.stored) < u64::from(big.raw), "compressed");
    for message in small {
        let location = packs.locate(&sha(message)).await.unwrap().unwrap();
        assert!(location.pack != big.pack);
    }

    // A new process finds everything through the index, and stores nothing again.
    let again = open(&store, None).await;
    assert_all_readable(&again, &messages).await;
    assert!(store_all(&again, &messages).await.iter().all(|&w| !w));
    again.flush().await.unwrap();
    assert_eq!(keys_under(&store, "packs/data/").await, pack_objects);

    let report = again.verify().await.unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.blobs, messages.len() as u64);
    let raw: u64 = messages.iter().map(|m| m.len() as u64).sum();
    assert_eq!(report.raw_bytes, raw);
    assert!(report.stored_bytes < raw, "text compresses");
    assert!(report.unindexed.is_empty());
}

async fn duplicates_are_stored_once(backend: Backend) {
    let store = backend.store;
    let packs = open(&store, None).await;
    let message = mail::message(2, 1, "a@example.org", "b@example.org", "twice", 5000);
    let other = mail::message(2, 2, "a@example.org", "b@example.org", "other", 5000);
    let (first, second, third) = {
        let packs = packs.clone();
        let (m, o) = (message.clone(), other.clone());
        tokio::task::spawn_blocking(move || {
            (
                packs.store_blocking(&m).unwrap(),
                packs.store_blocking(&m).unwrap(),
                packs.store_blocking(&o).unwrap(),
            )
        })
        .await
        .unwrap()
    };
    assert!(first.written && !second.written && third.written);
    assert_eq!(first.location, second.location);
    assert!(
        keys_under(&store, "packs/").await.is_empty(),
        "nothing is written before the pack is closed"
    );
    packs.flush().await.unwrap();
    first.durable.wait().await.unwrap();
    second.durable.wait().await.unwrap();
    let again = open(&store, None).await;
    assert_eq!(store_all(&again, &[message, other]).await, [false, false]);
    assert_eq!(again.verify().await.unwrap().blobs, 2);
}

async fn two_writers_at_once_lose_nothing(backend: Backend) {
    let store = backend.store;
    let messages = mail::mailbox(3, "bo@example.org", 200);
    let one = open(&store, None).await;
    let two = open(&store, None).await;
    // Overlapping halves, stored at the same time.
    let (a, b) = tokio::join!(
        store_all(&one, &messages[..130]),
        store_all(&two, &messages[70..])
    );
    assert_eq!(a.len() + b.len(), 260);
    let (x, y) = tokio::join!(one.flush(), two.flush());
    x.unwrap();
    y.unwrap();
    let reader = open(&store, None).await;
    assert_all_readable(&reader, &messages).await;
    let report = reader.verify().await.unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.blobs, 260, "two copies of the overlap");
    assert_eq!(report.duplicates, 60);
}

async fn compaction_keeps_every_entry_while_others_write_and_compact(backend: Backend) {
    let store = backend.store;
    let options = PackOptions {
        target_size: 64 << 10,
        // Several buckets even for a few hundred entries.
        bucket_entries: 16,
        // The default grace: a pack younger than that may be a writer's between its
        // upload and its delta (with no grace, a compaction removes it under the writer).
        ..PackOptions::default()
    };
    let messages = mail::mailbox(4, "cy@example.org", 300);
    let packs = PackStore::open(store.clone(), None, options.clone())
        .await
        .unwrap();
    store_all(&packs, &messages[..100]).await;
    packs.flush().await.unwrap();
    let deltas = keys_under(&store, "packs/delta/").await.len();
    assert!(deltas > 5, "{deltas}");
    assert_eq!(packs.compaction_due(5), Some(true));
    let report = packs.compact().await.unwrap();
    assert_eq!(report.entries, 100);
    assert_eq!(report.deltas_removed, deltas as u64);
    assert!(report.buckets >= 4, "{report:?}");
    assert!(keys_under(&store, "packs/delta/").await.is_empty());
    assert_eq!(keys_under(&store, "packs/manifest/").await.len(), 1);

    // A writer and two compactions at once.
    let writer = PackStore::open(store.clone(), None, options.clone())
        .await
        .unwrap();
    let first = PackStore::open(store.clone(), None, options.clone())
        .await
        .unwrap();
    let second = PackStore::open(store.clone(), None, options.clone())
        .await
        .unwrap();
    let write = async {
        for chunk in messages[100..].chunks(40) {
            store_all(&writer, chunk).await;
            writer.flush().await.unwrap();
        }
    };
    let (_, a, b) = tokio::join!(write, first.compact(), second.compact());
    a.unwrap();
    b.unwrap();
    // Whatever interleaving happened: a fresh reader finds every message.
    let reader = PackStore::open(store.clone(), None, options.clone())
        .await
        .unwrap();
    assert_all_readable(&reader, &messages).await;
    // And after one more compaction, one generation holds everything.
    let report = reader.compact().await.unwrap();
    assert!(report.entries >= 300, "{report:?}");
    assert!(keys_under(&store, "packs/delta/").await.is_empty());
    assert_eq!(keys_under(&store, "packs/manifest/").await.len(), 1);
    let fresh = PackStore::open(store.clone(), None, options).await.unwrap();
    assert_eq!(fresh.index_memory(), 0, "not loaded before it is needed");
    assert_all_readable(&fresh, &messages).await;
    // Compacted entries cost 8 bytes each in memory (plus buckets cached on a hit).
    assert_eq!(fresh.index_memory(), 8 * report.entries as usize);
    assert_eq!(store_all(&fresh, &messages).await, vec![false; 300]);
    let verified = fresh.verify().await.unwrap();
    assert!(verified.damaged.is_empty(), "{:?}", verified.damaged);
    assert!(verified.unindexed.is_empty(), "{:?}", verified.unindexed);
}

async fn encrypted_archives_hide_mail_and_refuse_wrong_keys(backend: Backend) {
    let store = backend.store;
    let marker = "Quarterly figures: confidential";
    let mut messages: Vec<Vec<u8>> = (0..20)
        .map(|n| mail::message(5, n, "cfo@example.org", "board@example.org", marker, 3000))
        .collect();
    // Large enough for a pack of its own, sealed the same way.
    messages.push(mail::message(
        5,
        20,
        "cfo@example.org",
        "board@example.org",
        marker,
        9 << 20,
    ));
    let packs = open(&store, Some(ring(&[("2025", 1)]))).await;
    store_all(&packs, &messages).await;
    packs.flush().await.unwrap();
    assert_all_readable(&packs, &messages).await;
    // Nothing in the store shows the mail, its hashes, or that a known message is there.
    for key in keys_under(&store, "").await {
        let bytes = store.get(&key).await.unwrap().unwrap();
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "{key} shows the subject"
        );
        for message in &messages {
            let digest = sha(message);
            assert!(
                !contains(&bytes, &digest),
                "{key} shows a message's SHA-256"
            );
            assert!(!key.contains(&hex::encode(digest)), "{key}");
        }
    }
    let before = keys_under(&store, "").await;
    let error = |result: Result<Arc<PackStore>, StoreError>| match result {
        Err(e @ StoreError::Open { .. }) => e.to_string(),
        Err(e) => panic!("not an open error: {e}"),
        Ok(_) => panic!("opened"),
    };
    let message = error(PackStore::open(store.clone(), None, small_packs()).await);
    assert!(message.contains("the archive is encrypted"), "{message}");
    assert!(message.contains("--encryption-key-file"), "{message}");
    let message =
        error(PackStore::open(store.clone(), Some(ring(&[("wrong", 9)])), small_packs()).await);
    assert!(message.contains("which the key file lacks"), "{message}");
    assert!(message.contains("\"wrong\""), "{message}");
    assert_eq!(keys_under(&store, "").await, before, "nothing written");
}

async fn key_rotation_keeps_old_data_readable(backend: Backend) {
    let store = backend.store;
    let old: Vec<Vec<u8>> = mail::mailbox(6, "di@example.org", 10);
    let new: Vec<Vec<u8>> = mail::mailbox(7, "di@example.org", 10);
    // Before encryption was turned on, then under key 1, then under key 2.
    let plain = open(&store, None).await;
    store_all(&plain, &old[..3]).await;
    plain.flush().await.unwrap();
    let first = open(&store, Some(ring(&[("one", 1)]))).await;
    store_all(&first, &old).await;
    first.flush().await.unwrap();
    let rotated = open(&store, Some(ring(&[("one", 1), ("two", 2)]))).await;
    // Known messages (plain or under key one) are found, not stored again.
    assert_eq!(store_all(&rotated, &old).await, vec![false; 10]);
    assert_eq!(store_all(&rotated, &new).await, vec![true; 10]);
    rotated.flush().await.unwrap();
    assert_all_readable(&rotated, &old).await;
    assert_all_readable(&rotated, &new).await;
    let report = rotated.verify().await.unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert_eq!(report.blobs, 20);
    // Dropping the old key is refused: its data would become unreadable.
    let result = PackStore::open(store.clone(), Some(ring(&[("two", 2)])), small_packs()).await;
    let message = result.err().expect("refused").to_string();
    assert!(message.contains("keep every old key"), "{message}");
    // Compaction seals the index with the current key; all stays readable.
    rotated.compact().await.unwrap();
    let reader = open(&store, Some(ring(&[("one", 1), ("two", 2)]))).await;
    assert_all_readable(&reader, &old).await;
    assert_all_readable(&reader, &new).await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn a_run_killed_between_pack_and_index_loses_nothing(backend: Backend) {
    let store = backend.store;
    let messages = mail::mailbox(8, "ed@example.org", 30);
    let killed: Arc<dyn ObjectStore> = Spy::new(&store, Some("packs/delta/"));
    let packs = open(&killed, None).await;
    store_all(&packs, &messages).await;
    let error = packs.flush().await.unwrap_err().to_string();
    assert!(error.contains("killed"), "{error}");
    assert!(
        !keys_under(&store, "packs/data/").await.is_empty(),
        "the pack was written"
    );
    drop(packs);

    // The next run does not trust the pack without an index: it stores everything again.
    let next = PackStore::open(
        store.clone(),
        None,
        PackOptions {
            garbage_grace: Duration::ZERO,
            ..small_packs()
        },
    )
    .await
    .unwrap();
    assert_eq!(next.locate(&sha(&messages[0])).await.unwrap(), None);
    assert_eq!(store_all(&next, &messages).await, vec![true; 30]);
    next.flush().await.unwrap();
    let report = next.verify().await.unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert!(!report.unindexed.is_empty());
    assert!(
        report
            .unindexed
            .iter()
            .all(|k| k.starts_with("packs/data/")),
        "{:?}",
        report.unindexed
    );
    let compacted = next.compact().await.unwrap();
    assert_eq!(compacted.garbage_removed, report.unindexed);
    assert!(next.verify().await.unwrap().unindexed.is_empty());
    assert_all_readable(&next, &messages).await;
}

async fn a_damaged_byte_is_named_by_verify(backend: Backend) {
    let store = backend.store;
    for keys in [None, Some(("k", 3))] {
        let messages: Vec<Vec<u8>> = mail::mailbox(9, "fay@example.org", 5);
        let packs = open(&store, keys.map(|k| ring(&[k]))).await;
        store_all(&packs, &messages).await;
        packs.flush().await.unwrap();
        let victim = &messages[2];
        let location = packs.locate(&sha(victim)).await.unwrap().unwrap();
        let key = format!("packs/data/{}", location.pack);
        let mut bytes = store.get(&key).await.unwrap().unwrap().to_vec();
        let middle = location.offset as usize + location.stored as usize / 2;
        bytes[middle] ^= 0x20;
        store.put(&key, Bytes::from(bytes)).await.unwrap();

        let report = packs.verify().await.unwrap();
        assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
        let damage = &report.damaged[0];
        assert_eq!(damage.object, key);
        let ids = packs.identifiers(&sha(victim));
        assert!(ids.contains(&damage.id.unwrap()), "names the message");
        let reader = open(&store, keys.map(|k| ring(&[k]))).await;
        let error = reader
            .read_message(&sha(victim))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&key) && error.contains("is damaged"),
            "{error}"
        );
        // The others are intact.
        for (i, message) in messages.iter().enumerate().filter(|(i, _)| *i != 2) {
            let back = reader.read_message(&sha(message)).await.unwrap();
            assert!(back.as_deref() == Some(&message[..]), "{i}");
        }
        // Clean up for the second round (sealed).
        for key in keys_under(&store, "").await {
            store.delete(&key).await.unwrap();
        }
    }
}

async fn an_index_naming_a_missing_pack_is_reported(backend: Backend) {
    let store = backend.store;
    let messages = mail::mailbox(10, "gus@example.org", 40);
    let packs = open(&store, None).await;
    store_all(&packs, &messages).await;
    packs.flush().await.unwrap();
    let location = packs.locate(&sha(&messages[0])).await.unwrap().unwrap();
    let key = format!("packs/data/{}", location.pack);
    store.delete(&key).await.unwrap();
    let report = packs.verify().await.unwrap();
    assert!(!report.damaged.is_empty());
    assert!(report.damaged.iter().all(|d| d.object == key
        && d.message
            .contains("the index names this pack, but it is missing")));
    let reader = open(&store, None).await;
    let error = reader
        .read_message(&sha(&messages[0]))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing"), "{error}");
}

/// A store in front of a real one that notes every call, and fails writes under one
/// prefix as if the run were killed right before them.
struct Spy {
    inner: Arc<dyn ObjectStore>,
    fail_puts_under: Option<&'static str>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl Spy {
    fn new(inner: &Arc<dyn ObjectStore>, fail_puts_under: Option<&'static str>) -> Arc<Spy> {
        Arc::new(Spy {
            inner: inner.clone(),
            fail_puts_under,
            calls: Default::default(),
        })
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait::async_trait]
impl ObjectStore for Spy {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.note(format!("put {key}"));
        if self.fail_puts_under.is_some_and(|p| key.starts_with(p)) {
            return Err(StoreError::Backend {
                store: self.describe(),
                operation: "put",
                key: key.into(),
                message: "killed".into(),
            });
        }
        self.inner.put(key, bytes).await
    }
    async fn put_immutable(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        self.note(format!("put {key}"));
        self.inner.put_immutable(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.note(format!("get {key}"));
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        self.note(format!("get {key}"));
        self.inner.get_range(key, offset, len).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.note(format!("delete {key}"));
        self.inner.delete(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.note(format!("list {prefix}"));
        self.inner.list(prefix).await
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().await
    }
}

async fn a_run_with_nothing_to_store_reads_no_index(backend: Backend) {
    let store = backend.store;
    let packs = open(&store, None).await;
    store_all(&packs, &mail::mailbox(11, "hal@example.org", 50)).await;
    packs.flush().await.unwrap();
    let spy = Spy::new(&store, None);
    let objects: Arc<dyn ObjectStore> = spy.clone();
    let idle = PackStore::open(objects, None, small_packs()).await.unwrap();
    idle.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(idle);
    assert_eq!(
        *spy.calls.lock().unwrap(),
        ["list packs/keys/"],
        "opening costs one listing of key markers; nothing else without a message to store"
    );
}
