//! Identity before skipping and deleting, against a real Dovecot: equal UIDVALIDITYs of
//! two mailboxes in one archive place, entries whose size or date no longer match, a
//! server restored from a backup, folder names that collide after mapping, a full disk,
//! and two runs in one second. Each case lost mail (or a protocol) before identity was
//! checked.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mailvault_testkit::dovecot::{Dovecot, DovecotOptions};

const PW: &str = "identity-user-pw";
/// 2024-11-14, as INTERNALDATE: older than any deletion rule below.
const OLD: i64 = 1_731_600_000;

/// A message of exactly `5 + 3 * 1000` body bytes plus headers of fixed width: messages
/// with the same `n` and different `owner` (five letters) have the same size.
fn fixed(owner: &str, n: u32) -> Vec<u8> {
    assert_eq!(owner.len(), 5);
    let mut m = format!(
        "From: sender@example.net\r\nTo: shared@example.org\r\nSubject: Message {n:04}\r\n\
         X-Owner: {owner}\r\nMessage-ID: <{owner}.{n:04}@example.net>\r\n\r\n"
    )
    .into_bytes();
    for line in 0..3 {
        m.extend_from_slice(format!("{owner} {n:04} line {line} ").as_bytes());
        m.resize(m.len() + 1000 - 20, b'x');
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn server(users: &[&str]) -> Dovecot {
    server_with(users, DovecotOptions::default())
}

fn server_with(users: &[&str], options: DovecotOptions) -> Dovecot {
    let dovecot = Dovecot::start_with(options).expect("dovecot starts");
    for user in users {
        dovecot.add_user(user, PW).unwrap();
    }
    dovecot
}

/// The UIDs of a folder, as the server has them now.
fn server_uids(dovecot: &Dovecot, user: &str, folder: &str) -> Vec<u32> {
    dovecot
        .doveadm(&["fetch", "-u", user, "uid", "mailbox", folder, "ALL"])
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("uid: ")?.trim().parse().ok())
        .collect()
}

fn set_uid_validity(dovecot: &Dovecot, user: &str, folder: &str, value: u32) {
    dovecot
        .doveadm(&[
            "mailbox",
            "update",
            "-u",
            user,
            "--uid-validity",
            &value.to_string(),
            folder,
        ])
        .unwrap();
}

/// Every message stored in the archive, by content.
fn stored(store: &Path) -> BTreeSet<Vec<u8>> {
    let dir = store.join("messages");
    if !dir.exists() {
        return BTreeSet::new();
    }
    files_below(&dir).into_iter().map(|(_, b)| b).collect()
}

/// `deletion:` that deletes every archived message at once.
const DELETE_ALL: &str = "  deletion:\n    mode: AfterArchiving\n    keepUnread: false\n";

/// The CSV set, profile and Secret of `csv_yaml`, renamed with `suffix` so that several
/// profiles fit into one file.
fn csv_profile(dovecot: &Dovecot, csv: &str, extra: &str, suffix: &str) -> String {
    csv_yaml(dovecot, Connection::Plain, csv, extra)
        .replace("name: test\n", &format!("name: test{suffix}\n"))
        .replace("name: users\n", &format!("name: users{suffix}\n"))
        .replace("name: mailboxes\n", &format!("name: mailboxes{suffix}\n"))
        .replace("name: ca\n", &format!("name: ca{suffix}\n"))
}

/// Archives `user`'s mailbox into `dir/archive` once, deleting nothing; returns the store.
fn archive_without_deleting(dovecot: &Dovecot, user: &str, dir: &Path, expected: u64) -> PathBuf {
    let store = dir.join("archive");
    let keep = write_yaml(dir, &master_yaml(dovecot, Connection::Plain, &[user], ""));
    assert_eq!(run_json(&keep, &store)["totals"]["archived"], expected);
    store
}

fn run_json(input: &Path, store: &Path) -> serde_json::Value {
    let outcome = run(input, store);
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| {
        panic!(
            "no protocol ({e}), exit {}:\n{}\n{}",
            outcome.code, outcome.stdout, outcome.stderr
        )
    })
}

#[test]
fn two_mailboxes_in_one_archive_place_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    // No server needed: the set is refused before anything connects.
    let dovecot_free = |yaml: &str| {
        let input = write_yaml(dir.path(), yaml);
        run(&input, &store)
    };
    let csv = "login;password;email;archive user\n\
               alice@example.org;pw;shared@example.org;shared\n\
               bob@example.org;pw;SHARED@example.org;Shared\n";
    let yaml = format!(
        "apiVersion: mailvault.io/v1alpha1\nkind: ArchiveProfile\nmetadata:\n  name: p\nspec:\n  \
         mailboxSetRef:\n    name: s\n  server:\n    host: 127.0.0.1\n    port: 9\n    security: None\n\
         ---\napiVersion: mailvault.io/v1alpha1\nkind: MailboxSet\nmetadata:\n  name: s\nspec:\n  \
         csv:\n    secretRef:\n      name: m\n      key: mailboxes.csv\n---\napiVersion: v1\n\
         kind: Secret\nmetadata:\n  name: m\nstringData:\n  mailboxes.csv: |\n{}",
        csv.lines().map(|l| format!("    {l}\n")).collect::<String>()
    );
    let outcome = dovecot_free(&yaml);
    assert_eq!(outcome.code, 2, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome
            .stderr
            .contains("line 3: this mailbox would be archived into the same place")
            && outcome.stderr.contains("as the one on line 2"),
        "{}",
        outcome.stderr
    );

    let master = "apiVersion: mailvault.io/v1alpha1\nkind: ArchiveProfile\nmetadata:\n  name: p\n\
                  spec:\n  mailboxSetRef:\n    name: s\n  server:\n    host: 127.0.0.1\n    port: 9\n\
                  ---\napiVersion: mailvault.io/v1alpha1\nkind: MailboxSet\nmetadata:\n  name: s\n\
                  spec:\n  masterPassword:\n    credentialsSecretRef:\n      name: m\n    staticUsers:\n\
                  \x20     - {name: alice, email: alice@example.org}\n\
                  \x20     - {name: Alice, email: Alice@Example.org}\n\
                  ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: m\nstringData:\n  \
                  username: archiver\n  password: pw\n";
    let outcome = dovecot_free(master);
    assert_eq!(outcome.code, 2, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stderr.contains(
            "spec.masterPassword.staticUsers[1]: \"Alice\" with \"Alice@Example.org\" would be \
             archived into the same place as staticUsers[0]"
        ),
        "{}",
        outcome.stderr
    );
    assert!(!store.exists(), "invalid input touches nothing");
}

/// Two profiles (validated one at a time, so nothing refuses them) archive two mailboxes
/// into one archive user and label; their INBOXes have the same UIDVALIDITY and messages
/// of the same sizes and dates at the same UIDs. Each mailbox's state must not count as
/// the other's, and deletion must take nothing the archive does not hold.
#[test]
fn two_sources_sharing_one_folder_state_lose_nothing() {
    let users = ["alice@example.org", "bobby@example.org"];
    let dovecot = server(&users);
    for (user, owner) in users.iter().zip(["alice", "bobby"]) {
        dovecot.create_folder(user, "INBOX").unwrap();
        set_uid_validity(&dovecot, user, "INBOX", 424242);
        for n in 0..6 {
            dovecot
                .deliver(user, "INBOX", &fixed(owner, n), OLD, &["\\Seen"])
                .unwrap();
        }
    }
    let all: BTreeSet<Vec<u8>> = ["alice", "bobby"]
        .iter()
        .flat_map(|o| (0..6).map(move |n| fixed(o, n)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let yaml = format!(
        "{}---\n{}",
        csv_profile(
            &dovecot,
            &format!(
                "login;password;email;archive user\n{};{PW};shared@example.org;shared\n",
                users[0]
            ),
            DELETE_ALL,
            "a"
        ),
        csv_profile(
            &dovecot,
            &format!(
                "login;password;email;archive user\n{};{PW};shared@example.org;shared\n",
                users[1]
            ),
            DELETE_ALL,
            "b"
        )
    );
    let input = write_yaml(dir.path(), &yaml);
    let p = run_json(&input, &store);
    let protocols = p.as_array().expect("one protocol per profile");
    assert_eq!(protocols.len(), 2);
    for protocol in protocols {
        assert_eq!(protocol["result"], "Succeeded", "{protocol:#}");
        assert_eq!(protocol["totals"]["deleted"], 6, "{protocol:#}");
    }
    let warnings = protocols[1]["mailboxes"][0]["warnings"].to_string();
    assert!(warnings.contains("belongs to another source"), "{warnings}");
    // Every message is gone from the server and in the archive.
    for user in users {
        assert!(server_uids(&dovecot, user, "INBOX").is_empty());
    }
    let archived = stored(&store);
    let lost: Vec<_> = all.difference(&archived).collect();
    assert!(
        lost.is_empty(),
        "{} messages deleted but not archived",
        lost.len()
    );

    // New mail in both, and the profiles take turns again: still nothing lost.
    for (user, owner) in users.iter().zip(["alice", "bobby"]) {
        for n in 10..13 {
            dovecot
                .deliver(user, "INBOX", &fixed(owner, n), OLD, &["\\Seen"])
                .unwrap();
        }
    }
    let p = run_json(&input, &store);
    for protocol in p.as_array().unwrap() {
        assert_eq!(protocol["totals"]["deleted"], 3, "{protocol:#}");
    }
    let archived = stored(&store);
    for owner in ["alice", "bobby"] {
        for n in 10..13 {
            assert!(archived.contains(&fixed(owner, n)), "{owner} {n}");
        }
    }
    let verified = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
}

/// Rewrites every index entry of the store for which `change` returns true.
fn edit_entries(store: &Path, mut change: impl FnMut(&mut serde_json::Value) -> bool) -> usize {
    let mut changed = 0;
    for (rel, bytes) in files_below(&store.join("users")) {
        if !rel.contains("/index/") {
            continue;
        }
        let text = String::from_utf8(bytes).unwrap();
        let mut lines = Vec::new();
        for line in text.lines() {
            let mut entry: serde_json::Value = serde_json::from_str(line).unwrap();
            if change(&mut entry) {
                changed += 1;
            }
            lines.push(serde_json::to_string(&entry).unwrap());
        }
        std::fs::write(store.join("users").join(rel), lines.join("\n") + "\n").unwrap();
    }
    changed
}

#[test]
fn a_message_whose_size_or_date_differs_from_its_entry_is_kept_and_archived_again() {
    let user = "carla@example.org";
    let dovecot = server(&[user]);
    for n in 0..4 {
        dovecot
            .deliver(user, "INBOX", &fixed("carla", n), OLD, &["\\Seen"])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = archive_without_deleting(&dovecot, user, dir.path(), 4);

    // The archive's record of UID 2 says another size, of UID 3 another date: as if the
    // messages there were not the ones archived.
    let edited = edit_entries(&store, |entry| match entry["uid"].as_u64() {
        Some(2) => {
            entry["size"] = (entry["size"].as_u64().unwrap() + 1).into();
            true
        }
        Some(3) => {
            entry["internalDate"] = "2024-11-15T16:00:00+00:00".into();
            true
        }
        _ => false,
    });
    assert_eq!(edited, 2);

    let delete = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], DELETE_ALL),
    );
    let p = run_json(&delete, &store);
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    assert_eq!(p["totals"]["deleted"], 2, "{p:#}");
    assert_eq!(server_uids(&dovecot, user, "INBOX"), [2, 3]);
    let warnings = p["mailboxes"][0]["warnings"].to_string();
    assert!(
        warnings.contains("2 archived messages were not deleted")
            && warnings.contains("differs in size or date")
            && warnings.contains("UIDs 2, 3"),
        "{warnings}"
    );

    // Archived again with what the server says, they are deleted by the next run.
    let p = run_json(&delete, &store);
    assert_eq!(p["totals"]["deleted"], 2, "{p:#}");
    assert!(server_uids(&dovecot, user, "INBOX").is_empty());
    let archived = stored(&store);
    for n in 0..4 {
        assert!(archived.contains(&fixed("carla", n)), "message {n}");
    }
}

/// Same UIDVALIDITY, other messages at the same UIDs: what a server restored from an
/// older backup (or a migration that kept UIDVALIDITY) shows.
#[test]
fn a_server_restored_from_a_backup_is_archived_not_skipped() {
    let user = "dora@example.org";
    let dovecot = server(&[user]);
    for n in 0..4 {
        dovecot
            .deliver(user, "Projects", &fixed("first", n), OLD, &["\\Seen"])
            .unwrap();
    }
    let uid_validity: u32 = dovecot
        .doveadm(&[
            "-f",
            "tab",
            "mailbox",
            "status",
            "-u",
            user,
            "uidvalidity",
            "Projects",
        ])
        .unwrap()
        .lines()
        .last()
        .and_then(|line| line.rsplit('\t').next()?.trim().parse().ok())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = archive_without_deleting(&dovecot, user, dir.path(), 4);

    // The folder comes back from a backup: same UIDVALIDITY, UIDs 1 to 4 again, other
    // messages (one of them newer, so also another date).
    dovecot
        .doveadm(&["mailbox", "delete", "-u", user, "Projects"])
        .unwrap();
    let restored: Vec<Vec<u8>> = (0..4)
        .map(|n| {
            let mut m = fixed("later", n);
            m.extend_from_slice(b"restored\r\n");
            m
        })
        .collect();
    for (n, m) in restored.iter().enumerate() {
        let date = if n == 0 { OLD + 86_400 } else { OLD };
        dovecot
            .deliver(user, "Projects", m, date, &["\\Seen"])
            .unwrap();
    }
    set_uid_validity(&dovecot, user, "Projects", uid_validity);
    assert_eq!(server_uids(&dovecot, user, "Projects"), [1, 2, 3, 4]);

    let delete = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], DELETE_ALL),
    );
    let p = run_json(&delete, &store);
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    let projects = p["mailboxes"][0]["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "Projects")
        .unwrap()
        .clone();
    assert_eq!(projects["archived"], 4, "{p:#}");
    assert_eq!(projects["deleted"], 4, "{p:#}");
    let warnings = p["mailboxes"][0]["warnings"].to_string();
    assert!(
        warnings.contains("4 messages differ in size or date"),
        "{warnings}"
    );
    let archived = stored(&store);
    for m in restored
        .iter()
        .chain((0..4).map(|n| fixed("first", n)).collect::<Vec<_>>().iter())
    {
        assert!(archived.contains(m));
    }
    // Both generations are listed in the folder's index.
    let listed = mailvault(&["list", "--store", store.to_str().unwrap()]);
    assert!(
        listed
            .stdout
            .contains("dora@example.org/Projects  8 messages"),
        "{}",
        listed.stdout
    );
    // And exported: two messages at one UID are two messages.
    let out = dir.path().join("export");
    let exported = mailvault(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        "dora",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        exported.stdout.contains("exported 8 messages"),
        "{} {}",
        exported.stdout,
        exported.stderr
    );
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(out.join(user).join("Projects"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<Vec<u8>> = restored
        .iter()
        .cloned()
        .chain((0..4).map(|n| fixed("first", n)))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
}

/// On a server with `.` between levels, a folder named `a/b` and the folder `b` inside
/// `a` used to map to one archive folder; so did nothing else, but names that the key's
/// readable part folds alike (`x:y`, `x_y`) and names that differ in case must stay apart
/// too. Equal UIDVALIDITYs make a mix-up lose mail under deletion.
#[test]
fn folders_whose_names_collide_after_mapping_stay_apart() {
    let user = "emil@example.org";
    let dovecot = server_with(
        &[user],
        DovecotOptions {
            separator: Some('.'),
            ..DovecotOptions::default()
        },
    );
    let folders = ["a/b", "a.b", "x:y", "x_y", "Work", "work"];
    for (i, folder) in folders.iter().enumerate() {
        dovecot.create_folder(user, folder).unwrap();
        set_uid_validity(&dovecot, user, folder, 5000);
        for n in 0..3 {
            dovecot
                .deliver(
                    user,
                    folder,
                    &fixed(&format!("fold{i}"), n),
                    OLD,
                    &["\\Seen"],
                )
                .unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], DELETE_ALL),
    );
    let p = run_json(&input, &store);
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    let mut names: Vec<(String, u64, u64)> = p["mailboxes"][0]["folders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["archived"].as_u64() > Some(0))
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["archived"].as_u64().unwrap(),
                f["deleted"].as_u64().unwrap(),
            )
        })
        .collect();
    names.sort();
    let expect = |n: &str| (n.to_string(), 3, 3);
    assert_eq!(
        names,
        [
            expect("Work"),
            expect("a.b"),
            expect("a/b"),
            expect("work"),
            expect("x:y"),
            expect("x_y")
        ],
        "{p:#}"
    );
    let archived = stored(&store);
    for i in 0..folders.len() {
        for n in 0..3 {
            assert!(archived.contains(&fixed(&format!("fold{i}"), n)), "{i} {n}");
        }
    }
    // A second run finds everything in its place and nothing new.
    let p = run_json(&input, &store);
    assert_eq!(p["totals"]["archived"], 0, "{p:#}");
    assert!(p["mailboxes"][0]["warnings"].is_null(), "{p:#}");
    let listed = mailvault(&["list", "--store", store.to_str().unwrap()]);
    for folder in ["a.b", "a/b", "x:y", "x_y", "Work", "work"] {
        assert!(
            listed
                .stdout
                .contains(&format!("emil@example.org/{folder}  3 messages")),
            "{folder}: {}",
            listed.stdout
        );
    }
}

/// File systems mounted for a test, unmounted (last first) when dropped.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Mounts at `dir` what `args` say (options and source); `Err` (to skip the test)
    /// where that is not permitted.
    fn mount(&mut self, dir: &Path, args: &[&str]) -> Result<(), String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        self.0.push(dir.to_path_buf());
        Ok(())
    }

    fn tmpfs(&mut self, dir: &Path, size: &str) -> Result<(), String> {
        self.mount(
            dir,
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
        )
    }

    fn resize(&self, dir: &Path, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = Command::new("umount").arg(dir).status();
        }
    }
}

fn skipped(why: &str) {
    eprintln!(
        "SKIPPED: cannot mount a file system for the store ({}); this test needs root and \
         permission to mount",
        why.trim()
    );
}

/// Everything in `store/tmp` but its lock file.
fn temp_leftovers(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock")
        .collect()
}

#[test]
fn a_full_disk_fails_the_run_cleanly_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let mut mounts = Mounts(Vec::new());
    if let Err(why) = mounts.tmpfs(&store, "256k") {
        return skipped(&why);
    }
    let user = "fred@example.org";
    let dovecot = server(&[user]);
    let messages: Vec<Vec<u8>> = (0..80).map(|n| fixed("fredd", n)).collect();
    for m in &messages {
        dovecot.deliver(user, "INBOX", m, OLD, &["\\Seen"]).unwrap();
    }
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], DELETE_ALL),
    );
    let full = run(&input, &store);
    assert_eq!(full.code, 1, "{}\n{}", full.stdout, full.stderr);
    let p = full.json();
    assert_eq!(p["result"], "Failed", "{p:#}");
    assert_eq!(p["totals"]["deleted"], 0);
    let error = p["mailboxes"][0]["errors"][0]["message"].to_string();
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(server_uids(&dovecot, user, "INBOX").len(), 80);
    assert_eq!(temp_leftovers(&store), Vec::<String>::new());

    // With room again, the next run completes the archive, and only then deletes.
    mounts.resize(&store, "16m");
    let p = run_json(&input, &store);
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    assert_eq!(p["totals"]["deleted"], 80, "{p:#}");
    let archived = stored(&store);
    assert!(messages.iter().all(|m| archived.contains(m)));
    let verified = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    assert_eq!(temp_leftovers(&store), Vec::<String>::new());
}

/// A device that accepts writes into the page cache and fails them on the way to the
/// disk (an ext4 image on a tmpfs too small for it, as a thin-provisioned volume that runs
/// out of space): the write-back errors fail the run, and nothing is deleted, also not by
/// a later run, although the page cache still holds every byte.
#[test]
fn a_device_that_fails_write_back_fails_the_run_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let store = dir.path().join("archive");
    let mut mounts = Mounts(Vec::new());
    if let Err(why) = mounts.tmpfs(&backing, "4m") {
        return skipped(&why);
    }
    let image = backing.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&image)
        .output();
    match mkfs {
        Ok(out) if out.status.success() => {}
        other => return skipped(&format!("mkfs.ext4: {other:?}")),
    }
    if let Err(why) = mounts.mount(&store, &["-o", "loop", image.to_str().unwrap()]) {
        return skipped(&why);
    }
    let user = "hugo@example.org";
    let dovecot = server(&[user]);
    // About 6 MB: more than the device can take.
    let messages: Vec<Vec<u8>> = (0..60)
        .map(|n| mailvault_testkit::mail::message(9, n, "a@example.net", user, "Big", 100_000))
        .collect();
    for m in &messages {
        dovecot.deliver(user, "INBOX", m, OLD, &["\\Seen"]).unwrap();
    }
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], DELETE_ALL),
    );
    for attempt in 1..=2 {
        if attempt == 2 {
            assert_page_cache_is_not_the_disk(&store, &messages);
        }
        let outcome = run(&input, &store);
        assert_eq!(outcome.code, 1, "attempt {attempt}: {}", outcome.stdout);
        let p = outcome.json();
        assert_ne!(p["result"], "Succeeded", "attempt {attempt}: {p:#}");
        // The device's errors come back from the file-system sync (EIO; then, the file
        // system having turned read-only, EROFS).
        let errors = p["mailboxes"][0]["errors"].to_string();
        assert!(
            errors.contains("archive store"),
            "attempt {attempt}: {errors}"
        );
        assert_eq!(p["totals"]["deleted"], 0, "attempt {attempt}: {p:#}");
        assert_eq!(server_uids(&dovecot, user, "INBOX").len(), 60);
    }
}

/// Some stored message reads back intact from the page cache but not from the device:
/// what a deletion pass that trusted the cache would have taken for a durable copy.
fn assert_page_cache_is_not_the_disk(store: &Path, messages: &[Vec<u8>]) {
    use mailvault::store::{local::LocalStore, ObjectStore};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let objects = LocalStore::open(store).unwrap();
        let (mut cached, mut lost) = (0, 0);
        for key in objects.list("messages/").await.unwrap() {
            let cache = objects.get(&key).await.unwrap().unwrap();
            if messages.iter().any(|m| cache == m[..]) {
                cached += 1;
            }
            let disk = objects.read_back(&key).await.unwrap_or_default();
            if disk.as_deref() != Some(&cache[..]) {
                lost += 1;
            }
        }
        assert!(
            cached > 0 && lost > 0,
            "{cached} intact in the cache, {lost} lost on the disk"
        );
    });
}

#[test]
fn two_runs_in_one_second_keep_both_protocols() {
    let user = "gina@example.org";
    let dovecot = server(&[user]);
    dovecot
        .deliver(user, "INBOX", &fixed("ginaa", 1), OLD, &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], ""),
    );
    let first = run_json(&input, &store)["runId"].clone();
    let second = run_json(&input, &store)["runId"].clone();
    assert_ne!(first, second);
    let saved = files_below(&store.join("runs"));
    assert_eq!(
        saved.len(),
        2,
        "{:?}",
        saved.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
}

/// An archive written before sources were recorded: its folder states and entries name no
/// source. The first run after the upgrade adopts them, checking every archived UID by
/// size and date, instead of fetching the whole mailbox again.
#[test]
fn an_archive_of_an_earlier_version_is_adopted_without_archiving_again() {
    let user = "emil@example.org";
    let dovecot = server(&[user]);
    for n in 0..3 {
        dovecot
            .deliver(user, "INBOX", &fixed("first", n), OLD, &["\\Seen"])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = archive_without_deleting(&dovecot, user, dir.path(), 3);
    // What an earlier version wrote: no source, no last check, no server size.
    let mut rewritten = 0;
    for (path, bytes) in files_below(&store.join("users")) {
        let path = store.join("users").join(path);
        let strip = |mut v: serde_json::Value| {
            let object = v.as_object_mut().unwrap();
            for key in ["source", "checked", "serverSize"] {
                object.remove(key);
            }
            v
        };
        let text = String::from_utf8(bytes).unwrap();
        if path.ends_with("state.json") {
            let state = strip(serde_json::from_str(&text).unwrap());
            std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
            rewritten += 1;
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            let lines: Vec<String> = text
                .lines()
                .map(|l| strip(serde_json::from_str(l).unwrap()).to_string())
                .collect();
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            rewritten += 1;
        }
    }
    assert!(rewritten >= 2, "no state or segment found");
    dovecot
        .deliver(user, "INBOX", &fixed("later", 9), OLD, &["\\Seen"])
        .unwrap();
    let again = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], ""),
    );
    let p = run_json(&again, &store);
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    assert_eq!(p["totals"]["archived"], 1, "{p:#}");
    assert_eq!(p["totals"]["alreadyArchived"], 3, "{p:#}");
    assert!(p["mailboxes"][0].get("warnings").is_none(), "{p:#}");
    // And the adopted folder is this source's from now on: nothing new, nothing to say.
    let p = run_json(&again, &store);
    assert_eq!(p["totals"]["archived"], 0, "{p:#}");
    assert_eq!(p["totals"]["alreadyArchived"], 4, "{p:#}");
}
