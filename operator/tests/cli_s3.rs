//! `mailvault run`, `export` and `verify` on an S3 archive (a private Garage), through
//! the real binary: `--store s3://...` with credentials from the environment, and a
//! profile's `store.s3` with credentials from its Secret.

use std::path::Path;
use std::process::{Command, Output};

use bytes::Bytes;
use mailvault::store::s3::S3Store;
use mailvault::store::{
    Archive, Direction, FolderKey, IndexEntry, ObjectStore, PreparedMessage, ReadBack,
};
use mailvault_testkit::garage::Garage;
use mailvault_testkit::mail;

mod backends;

/// The binary with a clean environment: no AWS configuration of this machine leaks in.
fn mailvault(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn open(garage: &Garage, prefix: &str) -> S3Store {
    S3Store::open(&backends::s3_config(garage, garage.bucket(), prefix))
        .await
        .unwrap()
}

/// Every message came out of `export --out out` byte for byte, as alice's INBOX.
fn assert_exported(out: &Path, messages: &[Vec<u8>]) {
    for (n, message) in messages.iter().enumerate() {
        let path = out.join(format!("alice@example.org/INBOX/{}.eml", n + 1));
        assert!(
            std::fs::read(path).unwrap() == *message,
            "message {}",
            n + 1
        );
    }
}

/// Archives `messages` as the INBOX of alice, the way earlier versions stored them (one
/// object per message); returns the index entries.
async fn archive_messages(archive: &Archive, messages: &[Vec<u8>]) -> Vec<IndexEntry> {
    let key = FolderKey::new("alice", "alice@example.org", "INBOX");
    archive
        .ensure_mailbox(&key.user, &key.mailbox)
        .await
        .unwrap();
    let source = "imap.example.org:993 alice";
    let mut state = archive.load_state(&key, source).await.unwrap().state;
    state.uid_validity = 1;
    let mut entries = Vec::new();
    for (uid, message) in (1..).zip(messages) {
        let body = Bytes::from(message.clone());
        let prepared = PreparedMessage::of(&body);
        archive.put_message(&prepared.sha256, body).await.unwrap();
        entries.push(IndexEntry {
            folder: key.folder.clone(),
            source: Some(source.into()),
            uid_validity: 1,
            uid,
            sha256: prepared.sha256,
            blob: None,
            size: prepared.size,
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
        });
        state.archived.insert(uid);
    }
    state
        .segments
        .push(archive.append_index(&key, &entries).await.unwrap());
    archive.save_state(&key, &state).await.unwrap();
    entries
}

#[tokio::test]
async fn verify_and_export_an_s3_archive() {
    let garage = Garage::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let messages = mail::mailbox(21, "alice@example.org", 4);
    archive_messages(
        &Archive::new(std::sync::Arc::new(open(&garage, "team/archive").await)),
        &messages,
    )
    .await;
    let endpoint = garage.endpoint();
    let s3_flags = |store: &str| -> Vec<String> {
        [
            "--store",
            store,
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            garage.region(),
            "--s3-path-style",
        ]
        .map(String::from)
        .to_vec()
    };
    let env = [
        ("AWS_ACCESS_KEY_ID", garage.access_key_id()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret_access_key()),
    ];
    let run = |env: &[(&str, &str)], args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mailvault(home.path(), env, &args)
    };

    let verify = run(
        &env,
        [
            vec!["verify".to_string()],
            s3_flags("s3://mailvault/team/archive"),
        ]
        .concat(),
    );
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
    assert_eq!(
        text(&verify.stdout),
        "4 messages, 4 index entries checked, 0 problems\n"
    );

    let out = home.path().join("export");
    let export = run(
        &env,
        [
            ["export", "--user", "alice", "--out"]
                .map(String::from)
                .to_vec(),
            vec![out.display().to_string()],
            s3_flags("s3://mailvault/team/archive/"),
        ]
        .concat(),
    );
    assert_eq!(export.status.code(), Some(0), "{}", text(&export.stderr));
    assert_exported(&out, &messages);

    // Reading commands never take an empty prefix for an archive.
    let empty = run(
        &env,
        [
            vec!["verify".to_string()],
            s3_flags("s3://mailvault/elsewhere"),
        ]
        .concat(),
    );
    assert_eq!(empty.status.code(), Some(2));
    assert_eq!(
        text(&empty.stderr),
        "error: s3://mailvault/elsewhere is not a mailvault archive\n"
    );

    let wrong_secret = "0".repeat(64);
    let denied = run(
        &[
            ("AWS_ACCESS_KEY_ID", garage.access_key_id()),
            ("AWS_SECRET_ACCESS_KEY", &wrong_secret),
        ],
        [
            vec!["verify".to_string()],
            s3_flags("s3://mailvault/team/archive"),
        ]
        .concat(),
    );
    assert_eq!(denied.status.code(), Some(1));
    let stderr = text(&denied.stderr);
    assert!(
        stderr.starts_with("error: s3://mailvault/team/archive: cannot open the archive store: "),
        "{stderr}"
    );
    assert!(stderr.contains("AccessDenied (HTTP 403)"), "{stderr}");
    assert!(!stderr.contains(&wrong_secret), "{stderr}");

    let anonymous = run(
        &[],
        [
            vec!["verify".to_string()],
            s3_flags("s3://mailvault/team/archive"),
        ]
        .concat(),
    );
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        text(&anonymous.stderr).contains("no usable credentials"),
        "{}",
        text(&anonymous.stderr)
    );

    let misplaced = run(
        &env,
        ["verify", "--store", "some/dir", "--s3-path-style"]
            .map(String::from)
            .to_vec(),
    );
    assert_eq!(misplaced.status.code(), Some(2));
    assert!(text(&misplaced.stderr).contains("only apply to an s3:// store"));
}

/// A YAML with a profile whose store is the Garage, credentials in a Secret, and an IMAP
/// server that is not there: the run fails its mailbox but saves its protocol.
fn profile_yaml(garage: &Garage, secret_access_key: &str, imap_port: u16) -> String {
    format!(
        r#"apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: to-s3
  namespace: mail
spec:
  mailboxSetRef:
    name: users
  server:
    host: 127.0.0.1
    port: {imap_port}
    security: None
    timeoutSeconds: 5
  store:
    s3:
      bucket: {bucket}
      prefix: archives/mail
      endpoint: {endpoint}
      region: {region}
      forcePathStyle: true
      credentialsSecretRef:
        name: archive-s3
---
apiVersion: v1
kind: Secret
metadata:
  name: archive-s3
  namespace: mail
stringData:
  accessKeyId: {access_key_id}
  secretAccessKey: {secret_access_key}
---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: users
  namespace: mail
spec:
  masterPassword:
    credentialsSecretRef:
      name: master
    staticUsers:
      - name: alice
        email: alice@example.org
---
apiVersion: v1
kind: Secret
metadata:
  name: master
  namespace: mail
stringData:
  username: archiver
  password: pw
"#,
        bucket = garage.bucket(),
        endpoint = garage.endpoint(),
        region = garage.region(),
        access_key_id = garage.access_key_id(),
    )
}

#[tokio::test]
async fn run_uses_the_profiles_s3_store() {
    let garage = Garage::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let imap_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = home.path().join("profile.yaml");

    let wrong_secret = "1".repeat(64);
    std::fs::write(&file, profile_yaml(&garage, &wrong_secret, imap_port)).unwrap();
    let denied = mailvault(home.path(), &[], &["run", "-f", file.to_str().unwrap()]);
    assert_eq!(denied.status.code(), Some(1));
    let stderr = text(&denied.stderr);
    assert!(
        stderr.starts_with("error: s3://mailvault/archives/mail: cannot open the archive store:"),
        "{stderr}"
    );
    assert!(!stderr.contains(&wrong_secret), "{stderr}");
    let store = open(&garage, "archives/mail").await;
    assert_eq!(store.list("").await.unwrap(), Vec::<String>::new());

    std::fs::write(
        &file,
        profile_yaml(&garage, garage.secret_access_key(), imap_port),
    )
    .unwrap();
    let run = mailvault(
        home.path(),
        &[],
        &["run", "-f", file.to_str().unwrap(), "-o", "json"],
    );
    // The mailbox failed (no IMAP server), but the run reached the store.
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let protocol: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(protocol["store"], "s3://mailvault/archives/mail");
    let warnings = protocol["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("reached without TLS")),
        "{protocol}"
    );
    let saved = store.list("runs/").await.unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].contains("to-s3-"), "{saved:?}");
}

/// `mailvault migrate` on an archive of an earlier version (one object per message): every
/// message moves into packs and its object goes; a damaged object stays, reported; a run
/// stopped between packing and deleting (the object still there, its message packed)
/// finishes without storing the message twice; export gives back every byte.
#[tokio::test]
async fn migrate_moves_messages_of_earlier_versions_into_packs() {
    let garage = Garage::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let messages = mail::mailbox(22, "alice@example.org", 5);
    let objects = std::sync::Arc::new(open(&garage, "old").await);
    let archive = Archive::new(objects.clone());
    let entries = archive_messages(&archive, &messages).await;
    let damaged = format!("messages/ab/ab{}", "0".repeat(62));
    objects
        .put(&damaged, Bytes::from_static(b"not that message"))
        .await
        .unwrap();
    let endpoint = garage.endpoint();
    let env = [
        ("AWS_ACCESS_KEY_ID", garage.access_key_id()),
        ("AWS_SECRET_ACCESS_KEY", garage.secret_access_key()),
    ];
    let run = |args: &[&str]| {
        let flags = [
            "--store",
            "s3://mailvault/old",
            "--s3-endpoint",
            &endpoint,
            "--s3-region",
            garage.region(),
            "--s3-path-style",
        ];
        mailvault(home.path(), &env, &[args, &flags[..]].concat())
    };

    let migrated = run(&["migrate"]);
    assert_eq!(
        migrated.status.code(),
        Some(1),
        "{}",
        text(&migrated.stderr)
    );
    assert_eq!(
        text(&migrated.stdout),
        format!(
            "DAMAGED {damaged}: its content does not match its name; left in place\n\
             5 messages moved into packs (0 were there already), 1 damaged left in place\n"
        )
    );
    assert_eq!(
        objects.list("messages/").await.unwrap(),
        std::slice::from_ref(&damaged)
    );
    assert!(!objects.list("packs/data/").await.unwrap().is_empty());
    // What the deletion pass reads back for an entry of the earlier version: its object is
    // gone, so the copy in the packs; a message in neither is missing, never another one.
    let moved = Archive::new(objects.clone());
    for entry in &entries {
        match moved.read_back_entry(entry).await.unwrap() {
            ReadBack::Read(bytes) => assert!(
                bytes == messages[entry.uid as usize - 1][..],
                "UID {}",
                entry.uid
            ),
            other => panic!("UID {}: {other:?}", entry.uid),
        }
    }
    let never = IndexEntry {
        uid: 99,
        sha256: PreparedMessage::of(b"never archived").sha256,
        ..entries[0].clone()
    };
    assert!(matches!(
        moved.read_back_entry(&never).await.unwrap(),
        ReadBack::Missing
    ));

    // Stopped before it deleted an object: the next run packs nothing twice.
    archive
        .put_message(
            &PreparedMessage::of(&messages[2]).sha256,
            Bytes::from(messages[2].clone()),
        )
        .await
        .unwrap();
    let again = run(&["migrate"]);
    assert!(
        text(&again.stdout).ends_with(
            "1 messages moved into packs (1 were there already), 1 damaged left in place\n"
        ),
        "{}",
        text(&again.stdout)
    );
    let packs = Archive::new(objects.clone());
    assert_eq!(packs.packs().await.unwrap().blobs().await.unwrap().len(), 5);

    let verify = run(&["verify"]);
    assert!(
        text(&verify.stdout).contains("5 index entries checked, 1 problems"),
        "{}",
        text(&verify.stdout)
    );
    let out = home.path().join("export");
    let export = run(&["export", "--user", "alice", "--out", out.to_str().unwrap()]);
    assert_eq!(export.status.code(), Some(0), "{}", text(&export.stderr));
    assert_exported(&out, &messages);
}
