//! Safety: deletion that never loses mail, runs killed or cut off at any moment, servers
//! that hang, hostile names, and secrets that never leak. All against a real Dovecot.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::mail;
use mailvault_testkit::proxy::{Fault, Proxy};

const PW: &str = "S3cret-user-pw!";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn msg(n: u64, to: &str, size: usize) -> Vec<u8> {
    mail::message(7, n, "sender@example.net", to, &format!("Safety {n}"), size)
}

/// UIDs and flags of a folder as the server has them.
fn server_flags(dovecot: &Dovecot, user: &str, folder: &str) -> BTreeMap<u32, String> {
    dovecot
        .doveadm(&["fetch", "-u", user, "uid flags", "mailbox", folder, "ALL"])
        .unwrap()
        .split("uid: ")
        .filter_map(|block| {
            let mut lines = block.lines();
            let uid = lines.next()?.trim().parse().ok()?;
            let flags = lines
                .find_map(|l| l.strip_prefix("flags:"))
                .unwrap_or("")
                .trim()
                .to_string();
            Some((uid, flags))
        })
        .collect()
}

fn deletion(older_than_days: u32) -> String {
    format!("  deletion:\n    mode: AfterArchiving\n    olderThanDays: {older_than_days}\n")
}

#[test]
fn deletion_removes_only_old_read_unflagged_verified_mail_and_a_dry_run_removes_nothing() {
    let user = "del@example.org";
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(user, PW).unwrap();
    let old = now() - 90 * 86400;
    let cases: [(&[&str], i64); 5] = [
        (&["\\Seen"], old),              // 1: deleted
        (&[], old),                      // 2: unread: kept
        (&["\\Seen", "\\Flagged"], old), // 3: flagged: kept
        (&["\\Seen"], now() - 86400),    // 4: too young: kept
        (&["\\Seen", "\\Deleted"], old), // 5: marked deleted by the user: not expunged by us
    ];
    for (n, (flags, date)) in cases.iter().enumerate() {
        dovecot
            .deliver(user, "INBOX", &msg(n as u64, user, 2000), *date, flags)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], &deletion(30)),
    );

    let dry = mailvault(&[
        "run",
        "-f",
        input.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "-o",
        "json",
        "--dry-run-deletion",
    ]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let p = dry.json();
    assert_eq!(p["totals"]["archived"], 5);
    assert_eq!(p["totals"]["wouldDelete"], 1);
    assert_eq!(p["totals"]["deleted"], 0);
    assert_eq!(server_flags(&dovecot, user, "INBOX").len(), 5);

    let real = run(&input, &store);
    assert_eq!(real.code, 0, "{}", real.stderr);
    let p = real.json();
    assert_eq!(p["totals"]["deleted"], 1, "{p:#}");
    assert_eq!(p["totals"]["alreadyArchived"], 5);
    let left = server_flags(&dovecot, user, "INBOX");
    assert_eq!(
        left.keys().copied().collect::<Vec<_>>(),
        [2, 3, 4, 5],
        "{left:?}"
    );
    assert!(
        left[&5].contains("\\Deleted"),
        "the user's own mark stays: {left:?}"
    );

    // The deleted message is in the archive, byte for byte.
    let out = dir.path().join("export");
    let e = mailvault(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        "del",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(std::fs::read(out.join("del@example.org/INBOX/1.eml")).unwrap() == msg(0, user, 2000));

    // A later run deletes nothing more and archives nothing twice.
    let p = run(&input, &store).json();
    assert_eq!(
        (
            p["totals"]["deleted"].as_u64(),
            p["totals"]["archived"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[test]
fn a_damaged_stored_copy_is_never_deleted_from_the_server() {
    let user = "dmg@example.org";
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(user, PW).unwrap();
    let old = now() - 90 * 86400;
    for n in 0..3 {
        dovecot
            .deliver(
                user,
                "INBOX",
                &msg(100 + n, user, 3000 + n as usize),
                old,
                &["\\Seen"],
            )
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let keep = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], ""),
    );
    assert_eq!(run(&keep, &store).json()["totals"]["archived"], 3);

    // Damage the stored copy of the second message (same size, one byte changed).
    let second = msg(101, user, 3001);
    damage_stored(&store, &second);

    let delete = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &[user], &deletion(30)),
    );
    let p = run(&delete, &store).json();
    assert_eq!(p["totals"]["deleted"], 2, "{p:#}");
    let left = server_flags(&dovecot, user, "INBOX");
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), [2], "{left:?}");
    let warnings = p["mailboxes"][0]["warnings"].to_string();
    assert!(
        warnings.contains("does not hash to its SHA-256") && warnings.contains("UIDs 2"),
        "{warnings}"
    );

    // The damaged copy was replaced by the server's, so the next run deletes the message.
    assert!(stored_messages(&store).contains(&second));
    let p = run(&delete, &store).json();
    assert_eq!(p["totals"]["deleted"], 1, "{p:#}");
    assert!(server_flags(&dovecot, user, "INBOX").is_empty());
}

#[test]
fn secrets_never_appear_in_any_output_even_at_trace_level() {
    let user = "sec@example.org";
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(user, PW).unwrap();
    dovecot
        .deliver(user, "INBOX", &msg(1, user, 1000), now(), &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let wrong = "Wr0ng-but-secret-9876";
    let csv = format!("user;password\n{user};{PW}\nnobody@example.org;{wrong}\n");
    let inputs = [
        write_yaml(
            dir.path(),
            &csv_yaml(&dovecot, Connection::StartTls, &csv, ""),
        ),
        {
            let p = dir.path().join("master.yaml");
            std::fs::write(
                &p,
                master_yaml(
                    &dovecot,
                    Connection::Plain,
                    &[user, "ghost@example.org"],
                    "",
                ),
            )
            .unwrap();
            p
        },
    ];
    // async-imap logs every command it sends at trace level, LOGIN with its password: a
    // user asking for trace logs, even for that library by name, must not get them.
    for (input, format, filter) in [
        (&inputs[0], "text", "trace"),
        (&inputs[0], "json", "async_imap=trace,trace"),
        (&inputs[1], "text", "async_imap=trace,trace"),
        (&inputs[1], "json", "trace"),
    ] {
        {
            let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
                .args([
                    "run",
                    "-f",
                    input.to_str().unwrap(),
                    "--store",
                    store.to_str().unwrap(),
                    "-o",
                    format,
                ])
                .args(["--log-format", format])
                .env("MAILVAULT_LOG", filter)
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(all.contains("mailbox done"), "logging is on: {all}");
            for secret in [PW, wrong, dovecot.master_password()] {
                assert!(!all.contains(secret), "a secret leaked:\n{all}");
            }
        }
    }
    for (name, bytes) in files_below(&store) {
        let text = String::from_utf8_lossy(&bytes);
        for secret in [PW, wrong, dovecot.master_password()] {
            assert!(!text.contains(secret), "a secret is stored in {name}");
        }
    }
}

/// Runs `mailvault run` as a child process, returning it for the caller to kill.
fn spawn_run(input: &Path, store: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args([
            "run",
            "-f",
            input.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "-o",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The archive of `user` equals the server's folders exactly: every message once, byte for
/// byte, and the store verifies.
fn assert_archive_matches(
    store: &Path,
    archive_user: &str,
    user: &str,
    expected: &BTreeMap<String, Vec<Vec<u8>>>,
    scratch: &Path,
) {
    let out = scratch.join(format!("export-{}", now_nanos()));
    let e = mailvault(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        archive_user,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_exported(&out.join(user), expected);
    let v = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(v.code, 0, "{}", v.stdout);
}

/// The folders exported below `dir` hold exactly the expected messages, byte for byte.
fn assert_exported(dir: &Path, expected: &BTreeMap<String, Vec<Vec<u8>>>) {
    let mut got: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (path, bytes) in files_below(dir) {
        let folder = path.rsplit_once('/').unwrap().0.to_string();
        got.entry(folder).or_default().push(bytes);
    }
    for (folder, messages) in expected {
        let mut want = messages.clone();
        want.sort();
        let mut have = got.remove(folder).unwrap_or_default();
        have.sort();
        assert_eq!(have.len(), want.len(), "folder {folder}: message count");
        assert!(have == want, "folder {folder}: bytes differ");
    }
    assert!(got.is_empty(), "unexpected folders: {:?}", got.keys());
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Two users, several folders, enough mail that a run takes a while.
/// Folder name → messages, per user.
type Seeded = BTreeMap<String, BTreeMap<String, Vec<Vec<u8>>>>;

fn seeded(users: &[&str]) -> (Dovecot, Seeded) {
    let dovecot = Dovecot::start().unwrap();
    let mut expected = BTreeMap::new();
    for (i, user) in users.iter().enumerate() {
        dovecot.add_user(user, PW).unwrap();
        let mut folders = BTreeMap::new();
        for (j, folder) in ["INBOX", "Archive/2024", "Sent"].iter().enumerate() {
            let messages: Vec<Vec<u8>> = mail::mailbox((i * 10 + j) as u64, user, 400);
            let dated: Vec<(Vec<u8>, i64)> = messages
                .iter()
                .map(|m| (m.clone(), 1_700_000_000))
                .collect();
            dovecot.deliver_many(user, folder, &dated).unwrap();
            folders.insert(folder.to_string(), messages);
        }
        expected.insert(user.to_string(), folders);
    }
    (dovecot, expected)
}

#[test]
fn runs_killed_at_any_moment_lose_nothing_and_duplicate_nothing() {
    let users = ["kill1@example.org", "kill2@example.org"];
    let (dovecot, expected) = seeded(&users);
    let dir = tempfile::tempdir().unwrap();
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &users, ""),
    );

    // How long an uninterrupted run takes, to spread the kills over it.
    let started = Instant::now();
    let full = run(&input, &dir.path().join("reference"));
    assert_eq!(full.code, 0, "{}", full.stderr);
    let duration = started.elapsed();

    let store = dir.path().join("archive");
    let mut killed = 0;
    for percent in [5u32, 15, 30, 45, 60, 75, 90] {
        let mut child = spawn_run(&input, &store);
        std::thread::sleep(duration * percent / 100);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(killed >= 3, "only {killed} runs were killed mid-way");
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(store.join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lock")
            .collect()
    };
    let last = run(&input, &store);
    assert_eq!(last.code, 0, "{}", last.stderr);
    let p = last.json();
    assert_eq!(
        p["totals"]["alreadyArchived"].as_u64().unwrap()
            + p["totals"]["archived"].as_u64().unwrap(),
        2400
    );
    for user in users {
        assert_archive_matches(
            &store,
            user.split('@').next().unwrap(),
            user,
            &expected[user],
            dir.path(),
        );
    }
    // No temporary file of a killed run is left: each run removes those of runs before it
    // that were killed (a unit test of the local store covers a live writer's).
    assert_eq!(leftovers(), Vec::<String>::new());
    // And the next run has nothing left to do.
    assert_eq!(run(&input, &store).json()["totals"]["archived"], 0);
}

#[test]
fn a_server_that_goes_away_mid_run_fails_cleanly_and_the_next_run_completes() {
    let users = ["gone1@example.org", "gone2@example.org"];
    let (mut dovecot, expected) = seeded(&users);
    let dir = tempfile::tempdir().unwrap();
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &users, ""),
    );
    let store = dir.path().join("archive");

    let child = spawn_run(&input, &store);
    std::thread::sleep(Duration::from_millis(300));
    dovecot.stop();
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(1), "the run reports the failure");

    dovecot.restart().unwrap();
    let p = run(&input, &store).json();
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    for user in users {
        assert_archive_matches(
            &store,
            user.split('@').next().unwrap(),
            user,
            &expected[user],
            dir.path(),
        );
    }
}

#[test]
fn a_hanging_or_vanishing_server_fails_one_mailbox_while_the_others_carry_on() {
    let users = ["hang@example.org", "fine@example.org"];
    let (dovecot, expected) = seeded(&users);
    for fault in [Fault::Stall, Fault::Cut] {
        let proxy = Proxy::start(dovecot.imap_port(), users[0], fault, 200_000).unwrap();
        let csv = format!("login;password\n{};{PW}\n{};{PW}\n", users[0], users[1]);
        let yaml = csv_yaml(&dovecot, Connection::Plain, &csv, "")
            .replace(
                &format!("port: {}", dovecot.imap_port()),
                &format!("port: {}", proxy.port()),
            )
            .replace("timeoutSeconds: 10", "timeoutSeconds: 2");
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("archive");
        let started = Instant::now();
        let outcome = run(&write_yaml(dir.path(), &yaml), &store);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{fault:?}: the run did not hang"
        );
        assert_eq!(outcome.code, 1, "{fault:?}: {}", outcome.stdout);
        let p = outcome.json();
        let broken = mailbox(&p, users[0]);
        assert_eq!(broken["result"], "Failed", "{fault:?}: {p:#}");
        let error = broken["errors"][0]["message"].as_str().unwrap();
        match fault {
            Fault::Stall => assert!(
                error.contains("no answer from the server within 2 s"),
                "{error}"
            ),
            Fault::Cut => assert!(
                error.contains("closed the connection") || error.contains("connection"),
                "{error}"
            ),
        }
        assert_eq!(mailbox(&p, users[1])["result"], "Succeeded");
        assert_archive_matches(&store, users[1], users[1], &expected[users[1]], dir.path());
        // What the broken mailbox did archive is intact and complete after a good run.
        drop(proxy);
        let good = write_yaml(dir.path(), &csv_yaml(&dovecot, Connection::Plain, &csv, ""));
        assert_eq!(run(&good, &store).code, 0);
        assert_archive_matches(&store, users[0], users[0], &expected[users[0]], dir.path());
    }
}

#[test]
fn hostile_folder_names_and_messages_stay_inside_the_archive_and_export() {
    let user = "odd@example.org";
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(user, PW).unwrap();
    let huge_header = {
        let mut m = b"From: a@example.net\r\nSubject: huge header\r\n".to_vec();
        for i in 0..40_000 {
            m.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
        }
        m.extend_from_slice(b"\r\nbody\r\n");
        m
    };
    let broken_mime =
        b"Content-Type: multipart/mixed; boundary=\"\r\n\r\n--\r\n\xff\xfe binary \x80\x81\r\n"
            .to_vec();
    let folders = [
        "..x",
        "a..b",
        ".hidden",
        "%percent",
        "back\\slash",
        "   spaces   ",
        "Ünïcödé/…/dots...",
    ];
    for (n, folder) in folders.iter().enumerate() {
        dovecot
            .deliver(user, folder, &msg(n as u64, user, 1500), now(), &[])
            .unwrap();
    }
    dovecot
        .deliver(user, "INBOX", &huge_header, now(), &[])
        .unwrap();
    dovecot
        .deliver(user, "INBOX", &broken_mime, now(), &[])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let outcome = run(
        &write_yaml(
            dir.path(),
            &master_yaml(&dovecot, Connection::Plain, &[user], ""),
        ),
        &store,
    );
    assert_eq!(outcome.code, 0, "{}", outcome.stdout);
    assert_eq!(
        outcome.json()["totals"]["archived"],
        folders.len() as u64 + 2
    );

    let out = dir.path().join("out");
    let e = mailvault(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        "odd",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    let exported = files_below(&dir.path().join("out"));
    assert_eq!(exported.len(), folders.len() + 2);
    for (path, _) in &exported {
        assert!(path.starts_with("odd@example.org/"), "{path}");
        assert!(!path.split('/').any(|p| p == ".." || p == "."), "{path}");
    }
    assert!(exported.iter().any(|(_, b)| *b == huge_header));
    assert!(exported.iter().any(|(_, b)| *b == broken_mime));
    // Nothing was written outside the archive and the export directories.
    let mut top: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["archive", "input.yaml", "out"]);
}

#[test]
fn an_s3_store_that_goes_away_mid_run_fails_cleanly_and_the_next_run_completes() {
    use mailvault_testkit::garage::Garage;
    let users = ["s3gone@example.org"];
    let (dovecot, expected) = seeded(&users);
    let mut garage = Garage::start().unwrap();
    let yaml = format!(
        "{}{}",
        master_yaml(
            &dovecot,
            Connection::Plain,
            &users,
            &s3_store_spec(&garage, "")
        ),
        s3_secret_yaml(&garage)
    );
    let dir = tempfile::tempdir().unwrap();
    let input = write_yaml(dir.path(), &yaml);
    let child = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(["run", "-f", input.to_str().unwrap(), "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stop the store once the run has written to it (a fixed delay stops it before the run
    // opens the store on a loaded machine, or after the run ends on a fast one).
    let before = garage.data_bytes();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while garage.data_bytes() < before + 256 * 1024 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    garage.stop();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let failed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let error = failed["mailboxes"][0]["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("archive store"), "{error}");

    garage.restart().unwrap();
    let p = mailvault(&["run", "-f", input.to_str().unwrap(), "-o", "json"]).json();
    assert_eq!(p["result"], "Succeeded", "{p:#}");
    assert_eq!(
        p["totals"]["archived"].as_u64().unwrap()
            + p["totals"]["alreadyArchived"].as_u64().unwrap(),
        1200
    );
    // Export from S3 and compare with the server.
    let out = dir.path().join("out");
    let url = format!("s3://{}", garage.bucket());
    let e = mailvault_s3(
        &garage,
        &[
            "export",
            "--store",
            &url,
            "--user",
            "s3gone",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert_exported(&out.join(users[0]), &expected[users[0]]);
}
