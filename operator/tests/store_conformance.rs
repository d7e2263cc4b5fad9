//! The contract of `ObjectStore`, and of the archive on top of it, held against every
//! backend: each test in `conformance!` runs once on a local directory and once on S3 (a
//! private Garage), so that the two cannot drift apart. After them, the failure modes
//! only S3 has: credentials, missing buckets, a server that goes away mid-run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mailvault::export::{self, Format};
use mailvault::sensitive::Sensitive;
use mailvault::store::s3::{S3Store, MULTIPART_THRESHOLD};
use mailvault::store::{
    Archive, Direction, FolderKey, FolderState, IndexEntry, ObjectStore, PreparedMessage,
    StoreError,
};
use mailvault_testkit::garage::Garage;
use mailvault_testkit::mail;

#[macro_use]
mod backends;
use backends::{s3_config, Backend};

on_both_backends!(
    put_get_and_list,
    ranges_and_deletes,
    list_is_complete_beyond_one_page,
    replace_is_atomic,
    put_immutable_skips_same_size,
    ensure_mailbox_creates_records_once,
    load_state_picks_up_uncommitted_segments,
    messages_are_stored_once_across_users,
    verify_finds_damaged_and_missing_messages,
    export_is_byte_identical,
    large_message_round_trips,
    a_state_of_another_source_is_set_aside,
    aliases_are_identities_not_listings,
    an_index_names_messages_only_by_hashes,
);

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn put_get_and_list(backend: Backend) {
    let store = backend.store;
    for key in ["a/1", "a/10", "a/2", "ab/x", "b/c/d", "empty"] {
        let body = if key == "empty" {
            Bytes::new()
        } else {
            bytes(key)
        };
        store.put(key, body).await.unwrap();
    }
    assert_eq!(store.get("a/10").await.unwrap(), Some(bytes("a/10")));
    assert_eq!(store.get("empty").await.unwrap(), Some(Bytes::new()));
    assert_eq!(store.get("a/3").await.unwrap(), None);
    assert_eq!(store.get("nothing/here").await.unwrap(), None);
    assert_eq!(store.list("a/").await.unwrap(), ["a/1", "a/10", "a/2"]);
    assert_eq!(
        store.list("a").await.unwrap(),
        ["a/1", "a/10", "a/2", "ab/x"]
    );
    assert_eq!(store.list("b/c/").await.unwrap(), ["b/c/d"]);
    assert_eq!(store.list("a/1").await.unwrap(), ["a/1", "a/10"]);
    assert!(store.list("c/").await.unwrap().is_empty());
    assert_eq!(
        store.list("").await.unwrap(),
        ["a/1", "a/10", "a/2", "ab/x", "b/c/d", "empty"]
    );
    store.put("a/1", bytes("replaced")).await.unwrap();
    assert_eq!(store.get("a/1").await.unwrap(), Some(bytes("replaced")));
    store.sync().await.unwrap();
}

/// Range reads return what is there (less at the end, nothing past it); deletes are
/// idempotent.
async fn ranges_and_deletes(backend: Backend) {
    let store = backend.store;
    store.put("packs/p", bytes("0123456789")).await.unwrap();
    let range = |offset, len| {
        let store = store.clone();
        async move { store.get_range("packs/p", offset, len).await.unwrap() }
    };
    assert_eq!(range(2, 3).await, Some(bytes("234")));
    assert_eq!(range(0, 10).await, Some(bytes("0123456789")));
    assert_eq!(range(8, 5).await, Some(bytes("89")));
    assert_eq!(range(10, 5).await, Some(Bytes::new()));
    assert_eq!(range(50, 5).await, Some(Bytes::new()));
    assert_eq!(range(3, 0).await, Some(Bytes::new()));
    assert_eq!(store.get_range("packs/none", 0, 4).await.unwrap(), None);
    assert_eq!(store.get_range("packs/none", 0, 0).await.unwrap(), None);
    store.delete("packs/p").await.unwrap();
    assert_eq!(store.get("packs/p").await.unwrap(), None);
    store.delete("packs/p").await.unwrap();
    assert!(store.list("packs/").await.unwrap().is_empty());
}

/// More keys than one ListObjectsV2 page (1000) holds.
async fn list_is_complete_beyond_one_page(backend: Backend) {
    use futures::StreamExt;
    let store = backend.store;
    let keys: Vec<String> = (0..1100).map(|i| format!("many/{i:05}")).collect();
    futures::stream::iter(keys.iter().cloned())
        .map(|key| {
            let store = store.clone();
            async move { store.put(&key, bytes(&key)).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    store.put("other", bytes("x")).await.unwrap();
    assert_eq!(store.list("many/").await.unwrap(), keys);
    assert_eq!(store.list("").await.unwrap().len(), 1101);
}

/// Readers during replacements see the old object or the new one, never a mix or nothing.
async fn replace_is_atomic(backend: Backend) {
    let store = backend.store;
    let old = Bytes::from(vec![b'o'; 3 << 20]);
    let new = Bytes::from(vec![b'n'; 2 << 20]);
    store.put("records/r.json", old.clone()).await.unwrap();
    let writer = {
        let (store, old, new) = (store.clone(), old.clone(), new.clone());
        tokio::spawn(async move {
            for i in 0..12 {
                let body = if i % 2 == 0 { new.clone() } else { old.clone() };
                store.put("records/r.json", body).await.unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let seen = store.get("records/r.json").await.unwrap().unwrap();
        assert!(
            seen == old || seen == new,
            "a read saw {} mixed bytes",
            seen.len()
        );
        reads += 1;
    }
    writer.await.unwrap();
    assert_eq!(store.get("records/r.json").await.unwrap(), Some(old));
}

async fn put_immutable_skips_same_size(backend: Backend) {
    let store = backend.store;
    let key = "messages/ab/abcdef";
    assert!(store.put_immutable(key, bytes("first")).await.unwrap());
    assert!(!store.put_immutable(key, bytes("first")).await.unwrap());
    // Same size: taken for the same content (the key is its hash), not written.
    assert!(!store.put_immutable(key, bytes("other")).await.unwrap());
    assert_eq!(store.get(key).await.unwrap(), Some(bytes("first")));
    // Another size cannot be the same content: a damaged object is replaced.
    assert!(store
        .put_immutable(key, bytes("first, whole"))
        .await
        .unwrap());
    assert_eq!(store.get(key).await.unwrap(), Some(bytes("first, whole")));
}

async fn ensure_mailbox_creates_records_once(backend: Backend) {
    let store = backend.store;
    let archive = Archive::new(store.clone());
    archive
        .ensure_mailbox("Alice", "alice@example.org")
        .await
        .unwrap();
    let keys = store.list("users/").await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let user_key = keys.iter().find(|k| k.ends_with("/user.json")).unwrap();
    let created = store.get(user_key).await.unwrap();
    archive
        .ensure_mailbox("Alice", "alice@example.org")
        .await
        .unwrap();
    archive
        .ensure_mailbox("Alice", "alice@work.example")
        .await
        .unwrap();
    assert_eq!(store.get(user_key).await.unwrap(), created);
    assert_eq!(store.list("users/").await.unwrap().len(), 3);
    let users = archive.users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "Alice");
}

fn folder_key(user: &str, mailbox: &str, folder: &str) -> FolderKey {
    FolderKey::new(user, mailbox, folder)
}

/// The server and login the tests' entries and states belong to.
const SOURCE: &str = "imap.example.org:993 someone";

/// A hash-shaped name for the `n`th made-up message.
fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn entry(folder: &str, uid: u32, sha256: &str, size: u64) -> IndexEntry {
    IndexEntry {
        folder: folder.into(),
        source: Some(SOURCE.into()),
        uid_validity: 7,
        uid,
        sha256: sha256.into(),
        blob: None,
        size,
        server_size: None,
        internal_date: None,
        flags: vec![],
        message_id: None,
        from: None,
        to: None,
        subject: None,
        date: None,
        direction: Direction::Incoming,
        archived_at: "2025-01-06T10:00:00Z".into(),
        alias: false,
    }
}

/// Archives messages into a folder as the engine commits them: bytes, then the index
/// segment, then the state naming it.
async fn archive_folder(archive: &Archive, key: &FolderKey, messages: &[Vec<u8>]) {
    archive
        .ensure_mailbox(&key.user, &key.mailbox)
        .await
        .unwrap();
    let mut state = archive.load_state(key, SOURCE).await.unwrap().state;
    state.uid_validity = 7;
    let first_uid = state.archived.len() as u32 + 1;
    let mut entries = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let body = Bytes::from(message.clone());
        let prepared = PreparedMessage::of(&body);
        archive.put_message(&prepared.sha256, body).await.unwrap();
        let uid = first_uid + i as u32;
        entries.push(entry(&key.folder, uid, &prepared.sha256, prepared.size));
        state.archived.insert(uid);
    }
    archive.sync().await.unwrap();
    let segment = archive.append_index(key, &entries).await.unwrap();
    state.segments.push(segment);
    archive.sync().await.unwrap();
    archive.save_state(key, &state).await.unwrap();
}

async fn load_state_picks_up_uncommitted_segments(backend: Backend) {
    let archive = Archive::new(backend.store);
    let key = folder_key("bob", "bob@example.org", "INBOX");
    let committed = archive
        .append_index(
            &key,
            &[
                entry("INBOX", 1, &hash(0xaa), 1),
                entry("INBOX", 2, &hash(0xbb), 1),
            ],
        )
        .await
        .unwrap();
    let mut state = FolderState {
        folder: "INBOX".into(),
        source: Some(SOURCE.into()),
        uid_validity: 7,
        segments: vec![committed.clone()],
        ..FolderState::default()
    };
    state.archived.insert(1);
    state.archived.insert(2);
    archive.save_state(&key, &state).await.unwrap();
    // A crash after this segment was written, before the state naming it was saved.
    let orphan = archive
        .append_index(&key, &[entry("INBOX", 3, &hash(0xcc), 1)])
        .await
        .unwrap();
    let loaded = archive.load_state(&key, SOURCE).await.unwrap().state;
    assert_eq!(loaded.archived.iter().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(loaded.uid_validity, 7);
    assert_eq!(
        loaded.segments.iter().collect::<BTreeSet<_>>(),
        [&committed, &orphan].into_iter().collect()
    );
    let uids: Vec<u32> = archive
        .folder_entries(&key)
        .await
        .unwrap()
        .iter()
        .map(|e| e.uid)
        .collect();
    assert_eq!(uids.len(), 3);
}

/// Another server's or login's state names other messages under the same UIDs: loaded for
/// this source, it is set aside, and of the segments it did not account for only this
/// source's entries count.
async fn a_state_of_another_source_is_set_aside(backend: Backend) {
    let archive = Archive::new(backend.store);
    let key = folder_key("erin", "erin@example.org", "INBOX");
    let theirs = archive
        .append_index(&key, &[entry("INBOX", 1, &hash(1), 1)])
        .await
        .unwrap();
    let mut state = FolderState {
        folder: "INBOX".into(),
        source: Some("other.example.org:993 erin".into()),
        uid_validity: 7,
        segments: vec![theirs.clone()],
        ..FolderState::default()
    };
    state.archived.insert(1);
    archive.save_state(&key, &state).await.unwrap();
    // A segment of ours written after that state (a crash before our state was saved).
    let ours = archive
        .append_index(&key, &[entry("INBOX", 2, &hash(2), 1)])
        .await
        .unwrap();
    let loaded = archive.load_state(&key, SOURCE).await.unwrap();
    assert_eq!(
        loaded.replaced.as_deref(),
        Some("other.example.org:993 erin")
    );
    assert_eq!(loaded.state.source.as_deref(), Some(SOURCE));
    assert_eq!(loaded.state.archived.to_string(), "2");
    assert_eq!(
        loaded.state.segments.iter().collect::<BTreeSet<_>>(),
        [&theirs, &ours].into_iter().collect()
    );
    // The other source's own view is unchanged.
    let theirs = archive
        .load_state(&key, "other.example.org:993 erin")
        .await
        .unwrap();
    assert_eq!(theirs.replaced, None);
    assert_eq!(theirs.state.archived.to_string(), "1");
    // A state written before sources were recorded is adopted by the first source that
    // loads it, its source-less entries with it (each still checked by size and date
    // before its UID counts), and is then that source's alone.
    state.source = None;
    archive.save_state(&key, &state).await.unwrap();
    let legacy = archive.load_state(&key, SOURCE).await.unwrap();
    assert_eq!(legacy.replaced, None);
    assert_eq!(legacy.state.source.as_deref(), Some(SOURCE));
    assert!(legacy.state.legacy_entries);
    assert_eq!(legacy.state.archived.to_string(), "1:2");
    archive.save_state(&key, &legacy.state).await.unwrap();
    let other = archive
        .load_state(&key, "other.example.org:993 erin")
        .await
        .unwrap();
    assert_eq!(other.replaced.as_deref(), Some(SOURCE));
    assert!(!other.state.legacy_entries);
}

/// An alias records where a message the folder lists is now; it is no message of its own.
async fn aliases_are_identities_not_listings(backend: Backend) {
    let archive = Archive::new(backend.store);
    let key = folder_key("fay", "fay@example.org", "INBOX");
    let alias = IndexEntry {
        uid: 11,
        uid_validity: 8,
        alias: true,
        ..entry("INBOX", 11, &hash(3), 1)
    };
    archive
        .append_index(&key, &[entry("INBOX", 1, &hash(3), 1), alias])
        .await
        .unwrap();
    let listed: Vec<u32> = archive
        .folder_entries(&key)
        .await
        .unwrap()
        .iter()
        .map(|e| e.uid)
        .collect();
    assert_eq!(listed, [1]);
    let identities = archive.folder_identities(&key).await.unwrap();
    assert_eq!(identities.len(), 2);
    assert!(identities[1].alias);
}

/// A hash read from an index becomes a path only if it is a SHA-256.
async fn an_index_names_messages_only_by_hashes(backend: Backend) {
    let store = backend.store;
    let archive = Archive::new(store.clone());
    let key = folder_key("gus", "gus@example.org", "INBOX");
    store
        .put("secret", Bytes::from_static(b"not a message"))
        .await
        .unwrap();
    archive
        .append_index(&key, &[entry("INBOX", 1, "../../secret", 13)])
        .await
        .unwrap();
    let error = archive.folder_entries(&key).await.unwrap_err().to_string();
    assert!(
        error.contains("is damaged") && error.contains("\"../../secret\" is not a SHA-256"),
        "{error}"
    );
    for bad in [
        "../secret",
        "",
        "AB",
        &"A".repeat(64),
        &format!("{}/", "a".repeat(63)),
    ] {
        let error = archive.get_message(bad).await.unwrap_err().to_string();
        assert!(error.contains("not a SHA-256"), "{bad:?}: {error}");
    }
    assert!(archive.get_message(&hash(9)).await.unwrap().is_none());
}

async fn messages_are_stored_once_across_users(backend: Backend) {
    let store = backend.store;
    let archive = Archive::new(store.clone());
    let message = mail::message(1, 1, "a@example.org", "all@example.org", "Hello all", 5000);
    let alice = folder_key("alice", "alice@example.org", "INBOX");
    let bob = folder_key("bob", "bob@example.org", "Lists/All");
    archive_folder(&archive, &alice, std::slice::from_ref(&message)).await;
    archive_folder(&archive, &bob, std::slice::from_ref(&message)).await;
    assert_eq!(store.list("messages/").await.unwrap().len(), 1);
    let prepared = PreparedMessage::of(&message);
    assert!(!archive
        .put_message(&prepared.sha256, Bytes::from(message.clone()))
        .await
        .unwrap());
    for user in ["alice", "bob"] {
        let out = tempfile::tempdir().unwrap();
        let summary = export::export(&archive, user, &out.path().join("x"), Format::Eml)
            .await
            .unwrap();
        assert_eq!(summary.messages, 1, "{user}");
    }
    let report = archive.verify().await.unwrap();
    assert_eq!((report.messages, report.entries), (1, 2));
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
}

async fn verify_finds_damaged_and_missing_messages(backend: Backend) {
    let store = backend.store;
    let archive = Archive::new(store.clone());
    let key = folder_key("carol", "carol@example.org", "INBOX");
    let messages = mail::mailbox(3, "carol@example.org", 3);
    archive_folder(&archive, &key, &messages).await;
    let clean = archive.verify().await.unwrap();
    assert_eq!((clean.messages, clean.entries), (3, 3));
    assert!(clean.damaged.is_empty(), "{:?}", clean.damaged);

    // Damage one stored message (same key, other bytes) ...
    let damaged = PreparedMessage::of(&messages[1]);
    let damaged_key = format!("messages/{}/{}", &damaged.sha256[..2], damaged.sha256);
    store
        .put(&damaged_key, Bytes::from(vec![b'x'; messages[1].len()]))
        .await
        .unwrap();
    // ... and index a message that was never stored.
    let missing = "0".repeat(64);
    archive
        .append_index(&key, &[entry("INBOX", 9, &missing, 10)])
        .await
        .unwrap();

    let report = archive.verify().await.unwrap();
    let text = report.damaged.join("\n");
    assert_eq!(report.damaged.len(), 3, "{text}");
    assert!(
        text.contains(&format!("{damaged_key}: content hashes to")),
        "{text}"
    );
    assert!(
        text.contains(&format!("message {} is missing or damaged", damaged.sha256)),
        "{text}"
    );
    assert!(
        text.contains(&format!("UID 9: message {missing} is missing")),
        "{text}"
    );
}

async fn export_is_byte_identical(backend: Backend) {
    let archive = Archive::new(backend.store);
    let inbox = mail::mailbox(5, "dave@example.org", 12);
    let sent = mail::mailbox(6, "dave@example.org", 5);
    archive_folder(
        &archive,
        &folder_key("dave", "dave@example.org", "INBOX"),
        &inbox,
    )
    .await;
    archive_folder(
        &archive,
        &folder_key("dave", "dave@example.org", "Sent/2025"),
        &sent,
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("export");
    let summary = export::export(&archive, "dave", &target, Format::Eml)
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.folders), (17, 2));
    for (folder, messages) in [("INBOX", &inbox), ("Sent/2025", &sent)] {
        let dir = folder
            .split('/')
            .fold(target.join("dave@example.org"), |d, s| d.join(s));
        for (n, message) in messages.iter().enumerate() {
            let exported = std::fs::read(dir.join(format!("{}.eml", n + 1))).unwrap();
            assert!(exported == *message, "{folder} message {}", n + 1);
        }
    }
}

/// A message above the multipart threshold (S3 uploads it in parts).
async fn large_message_round_trips(backend: Backend) {
    let archive = Archive::new(backend.store);
    let size = 25 << 20;
    assert!(size > MULTIPART_THRESHOLD);
    let message = Bytes::from(mail::message(
        9,
        1,
        "big@example.org",
        "eve@example.org",
        "Large attachment",
        size,
    ));
    let body = message.clone();
    let prepared = PreparedMessage::of(&body);
    assert!(archive.put_message(&prepared.sha256, body).await.unwrap());
    let back = archive
        .get_message(&prepared.sha256)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), message.len());
    assert!(back == message, "the message came back different");
    assert!(!archive
        .put_message(&prepared.sha256, message)
        .await
        .unwrap());
}

// ---- S3 only ----

/// The raw S3 client the store would use, for looking behind its back.
fn raw_client(garage: &Garage) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(garage.region().to_string()))
        .endpoint_url(garage.endpoint())
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            garage.access_key_id(),
            garage.secret_access_key(),
            None,
            None,
            "test",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test]
async fn s3_keys_live_under_the_prefix_and_large_ones_in_parts() {
    let garage = Garage::start().unwrap();
    let store = S3Store::open(&s3_config(&garage, garage.bucket(), "/team/archive/"))
        .await
        .unwrap();
    assert_eq!(store.describe(), "s3://mailvault/team/archive");
    store.put("users/u/user.json", bytes("{}")).await.unwrap();
    let big = Bytes::from(vec![b'z'; 25 << 20]);
    store.put("messages/zz/big", big.clone()).await.unwrap();
    let client = raw_client(&garage);
    let listed = client
        .list_objects_v2()
        .bucket(garage.bucket())
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        [
            "team/archive/messages/zz/big",
            "team/archive/users/u/user.json"
        ]
    );
    let head = client
        .head_object()
        .bucket(garage.bucket())
        .key("team/archive/messages/zz/big")
        .send()
        .await
        .unwrap();
    // A multipart object's ETag ends in the number of parts: 25 MiB in 8 MiB parts.
    assert!(
        head.e_tag().unwrap().ends_with("-4\""),
        "{:?}",
        head.e_tag()
    );
    let uploads = client
        .list_multipart_uploads()
        .bucket(garage.bucket())
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "no upload is left open");
}

#[tokio::test]
async fn s3_buckets_and_prefixes_keep_archives_apart() {
    let garage = Garage::start().unwrap();
    garage.create_bucket("second-archive").unwrap();
    let one = S3Store::open(&s3_config(&garage, garage.bucket(), "one"))
        .await
        .unwrap();
    let one_more = S3Store::open(&s3_config(&garage, garage.bucket(), "one-more"))
        .await
        .unwrap();
    let other = S3Store::open(&s3_config(&garage, "second-archive", ""))
        .await
        .unwrap();
    assert_eq!(other.describe(), "s3://second-archive");
    for (store, text) in [(&one, "1"), (&one_more, "2"), (&other, "3")] {
        store.put("users/k", bytes(text)).await.unwrap();
    }
    for (store, text) in [(&one, "1"), (&one_more, "2"), (&other, "3")] {
        assert_eq!(store.list("").await.unwrap(), ["users/k"]);
        assert_eq!(store.get("users/k").await.unwrap(), Some(bytes(text)));
    }
}

fn open_error(result: Result<S3Store, StoreError>) -> String {
    match result {
        Err(e @ StoreError::Open { .. }) => e.to_string(),
        Err(other) => panic!("not an open error: {other}"),
        Ok(_) => panic!("opened"),
    }
}

#[tokio::test]
async fn s3_wrong_credentials_fail_at_open() {
    let garage = Garage::start().unwrap();
    let wrong_secret = "f".repeat(64);
    let mut config = s3_config(&garage, garage.bucket(), "archive");
    config.credentials.as_mut().unwrap().secret_access_key = Sensitive::new(wrong_secret.clone());
    let started = Instant::now();
    let message = open_error(S3Store::open(&config).await);
    // Permanent: not retried.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.starts_with("s3://mailvault/archive: cannot open"),
        "{message}"
    );
    assert!(message.contains("AccessDenied (HTTP 403)"), "{message}");
    assert!(!message.contains(&wrong_secret), "{message}");

    let mut config = s3_config(&garage, garage.bucket(), "archive");
    config.credentials.as_mut().unwrap().access_key_id = "GK000000000000000000000000".into();
    let message = open_error(S3Store::open(&config).await);
    assert!(message.contains("AccessDenied (HTTP 403)"), "{message}");
    assert!(!message.contains(garage.secret_access_key()), "{message}");

    let mut config = s3_config(&garage, garage.bucket(), "archive");
    config.region = Some("eu-west-1".into());
    let message = open_error(S3Store::open(&config).await);
    assert!(message.contains("set the region"), "{message}");
}

#[tokio::test]
async fn s3_missing_bucket_fails_at_open() {
    let garage = Garage::start().unwrap();
    let started = Instant::now();
    let message = open_error(S3Store::open(&s3_config(&garage, "no-such-bucket", "archive")).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(message.contains("NoSuchBucket"), "{message}");
    assert!(message.contains("no-such-bucket"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
}

/// The server dies mid-run: puts fail with an error within bounded time (no hang), and
/// after a restart the run continues with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_stopped_mid_run_fails_then_continues() {
    let mut garage = Garage::start().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Store::open(&s3_config(&garage, garage.bucket(), "archive"))
            .await
            .unwrap(),
    );
    let archive = Archive::new(store);
    let key = folder_key("frank", "frank@example.org", "INBOX");
    let messages = mail::mailbox(11, "frank@example.org", 30);
    archive_folder(&archive, &key, &messages[..10]).await;

    garage.stop();
    let started = Instant::now();
    let body = Bytes::from(messages[10].clone());
    let prepared = PreparedMessage::of(&body);
    let error = archive
        .put_message(&prepared.sha256, body)
        .await
        .unwrap_err()
        .to_string();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(40), "took {waited:?}");
    assert!(
        error.starts_with("s3://mailvault/archive: HeadObject messages/"),
        "{error}"
    );
    assert!(error.contains("cannot reach the server"), "{error}");
    assert!(error.contains("gave up after 5 attempts"), "{error}");

    garage.restart().unwrap();
    // The interrupted batch is simply done again, then the rest.
    archive_folder(&archive, &key, &messages[10..20]).await;
    archive_folder(&archive, &key, &messages[20..]).await;
    let state = archive.load_state(&key, SOURCE).await.unwrap().state;
    assert_eq!(state.archived.len(), 30);
    let report = archive.verify().await.unwrap();
    assert_eq!((report.messages, report.entries), (30, 30));
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    for message in &messages {
        let prepared = PreparedMessage::of(message);
        let stored = archive.get_message(&prepared.sha256).await.unwrap();
        assert!(stored.as_deref() == Some(&message[..]));
    }
}
