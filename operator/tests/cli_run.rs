//! `mailvault run`, `export` and `verify` against a real, private Dovecot.

mod common;

use common::*;
use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::mail;

const PW: &str = "user-secret-pw";
/// 2025-01-06, as INTERNALDATE.
const DATE: i64 = 1_736_157_600;

fn server(users: &[&str]) -> Dovecot {
    let dovecot = Dovecot::start().expect("dovecot starts");
    for user in users {
        dovecot.add_user(user, PW).unwrap();
    }
    dovecot
}

fn msg(n: u64, to: &str, size: usize) -> Vec<u8> {
    mail::message(42, n, "sender@example.net", to, &format!("Test {n}"), size)
}

/// The acceptance scenario: three users through the master user, a re-run that archives
/// nothing, an export byte-identical to what the server holds, and verify.
#[test]
fn master_user_archives_three_users_incrementally_and_exports_exact_bytes() {
    let users = ["alice@example.org", "bob@example.org", "carol@example.org"];
    let dovecot = server(&users);
    let mut delivered = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for n in 0..(3 + i as u64) {
            let m = msg(100 * i as u64 + n, user, 3000 + 700 * n as usize);
            dovecot
                .deliver(user, "INBOX", &m, DATE, &["\\Seen"])
                .unwrap();
            delivered.push((*user, "INBOX", m));
        }
    }
    let alice_folders = [
        "Archiv/Größe",
        "Projects.2024",
        "Sent",
        "Trash",
        "Archiv/Größe/Tief",
    ];
    for (n, folder) in alice_folders.iter().enumerate() {
        let m = msg(1000 + n as u64, users[0], 5000);
        dovecot.deliver(users[0], folder, &m, DATE, &[]).unwrap();
        delivered.push((users[0], folder, m));
    }
    // The same message in two folders is stored once.
    let shared = msg(2000, users[0], 4000);
    dovecot
        .deliver(users[0], "INBOX", &shared, DATE, &[])
        .unwrap();
    dovecot
        .deliver(users[0], "Projects.2024", &shared, DATE, &[])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::StartTls, &users, ""),
    );

    let first = run(&input, &store);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let p = first.json();
    assert_eq!(p["result"], "Succeeded");
    // alice: 3 INBOX + 4 folders (Trash excluded by default) + the shared message twice.
    assert_eq!(mailbox(&p, "alice@example.org")["archived"], 9);
    assert_eq!(mailbox(&p, "bob@example.org")["archived"], 4);
    assert_eq!(mailbox(&p, "carol@example.org")["archived"], 5);
    assert_eq!(p["totals"]["archived"], 18);
    assert_eq!(p["totals"]["mailboxes"], 3);
    let folders: Vec<_> = mailbox(&p, "alice@example.org")["folders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        folders,
        [
            "Archiv/Größe",
            "Archiv/Größe/Tief",
            "INBOX",
            "Projects.2024",
            "Sent"
        ]
    );

    let second = run(&input, &store);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let p = second.json();
    assert_eq!(p["totals"]["archived"], 0);
    assert_eq!(p["totals"]["alreadyArchived"], 18);

    // Single instance: 17 distinct messages stored.
    let blobs = files_below(&store.join("messages"));
    assert_eq!(blobs.len(), 17);

    let out = dir.path().join("export");
    let exported = mailvault(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        "ALICE",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    let files = files_below(&out);
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    let mut per_folder = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
    for (user, folder, m) in &delivered {
        if *user == users[0] && *folder != "Trash" {
            per_folder
                .entry(folder.to_string())
                .or_default()
                .push(m.clone());
        }
    }
    per_folder.get_mut("INBOX").unwrap().push(shared.clone());
    per_folder
        .get_mut("Projects.2024")
        .unwrap()
        .push(shared.clone());
    for (folder, messages) in per_folder {
        for (n, m) in messages.into_iter().enumerate() {
            expected.push((format!("alice@example.org/{folder}/{}.eml", n + 1), m));
        }
    }
    expected.sort();
    assert_eq!(
        files.iter().map(|f| &f.0).collect::<Vec<_>>(),
        expected.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(
        files == expected,
        "exported bytes differ from the delivered ones"
    );

    let verified = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(verified.code, 0, "{}", verified.stdout);
    assert!(
        verified
            .stdout
            .contains("17 messages, 18 index entries checked, 0 problems"),
        "{}",
        verified.stdout
    );
}

#[test]
fn every_security_mode_and_both_login_kinds() {
    let users = ["dave@example.org"];
    let dovecot = server(&users);
    dovecot
        .deliver(users[0], "INBOX", &msg(1, users[0], 2000), DATE, &[])
        .unwrap();
    let csv = format!("IMAP user name;password\n{};{PW}\n", users[0]);
    for (name, connection) in [
        ("tls", Connection::Tls),
        ("starttls", Connection::StartTls),
        ("plain", Connection::Plain),
    ] {
        for (kind, yaml) in [
            (
                "master",
                master_yaml(&dovecot, connection_clone(&connection), &users, ""),
            ),
            (
                "csv",
                csv_yaml(&dovecot, connection_clone(&connection), &csv, ""),
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("archive");
            let outcome = run(&write_yaml(dir.path(), &yaml), &store);
            assert_eq!(
                outcome.code, 0,
                "{name}/{kind}: {}\n{}",
                outcome.stdout, outcome.stderr
            );
            let p = outcome.json();
            assert_eq!(p["totals"]["archived"], 1, "{name}/{kind}");
            let warned = p["warnings"].as_array().is_some_and(|w| !w.is_empty());
            assert_eq!(warned, name == "plain", "{name}/{kind}: {p:#}");
        }
    }

    // Without the CA the certificate is refused; with insecureSkipTlsVerify it is accepted
    // and the protocol says so.
    let dir = tempfile::tempdir().unwrap();
    let untrusted = run(
        &write_yaml(
            dir.path(),
            &master_yaml(&dovecot, Connection::TlsUntrusted, &users, ""),
        ),
        &dir.path().join("a"),
    );
    assert_eq!(untrusted.code, 1);
    let p = untrusted.json();
    assert_eq!(p["result"], "Failed");
    let error = mailbox(&p, users[0])["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("TLS") && error.to_lowercase().contains("certificate"),
        "{error}"
    );

    let insecure = run(
        &write_yaml(
            dir.path(),
            &master_yaml(&dovecot, Connection::TlsInsecure, &users, ""),
        ),
        &dir.path().join("b"),
    );
    assert_eq!(insecure.code, 0, "{}", insecure.stdout);
    let p = insecure.json();
    assert!(
        p["warnings"][0]
            .as_str()
            .unwrap()
            .contains("insecureSkipTlsVerify"),
        "{p:#}"
    );
}

fn connection_clone(c: &Connection) -> Connection {
    match c {
        Connection::Tls => Connection::Tls,
        Connection::StartTls => Connection::StartTls,
        Connection::Plain => Connection::Plain,
        Connection::TlsUntrusted => Connection::TlsUntrusted,
        Connection::TlsInsecure => Connection::TlsInsecure,
    }
}

#[test]
fn a_wrong_password_fails_that_mailbox_only_and_never_shows_the_password() {
    let users = ["erin@example.org", "frank@example.org"];
    let dovecot = server(&users);
    for user in users {
        dovecot
            .deliver(user, "INBOX", &msg(1, user, 2000), DATE, &[])
            .unwrap();
    }
    let wrong = "Wr0ng-Pa55word-xyz";
    let csv = format!(
        "login,password,email\n{},{wrong},\n{},{PW},\n",
        users[0], users[1]
    );
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(
        &write_yaml(
            dir.path(),
            &csv_yaml(&dovecot, Connection::StartTls, &csv, ""),
        ),
        &dir.path().join("archive"),
    );
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    let p = outcome.json();
    assert_eq!(p["result"], "PartiallyFailed");
    assert_eq!(mailbox(&p, users[0])["result"], "Failed");
    assert_eq!(mailbox(&p, users[1])["result"], "Succeeded");
    assert_eq!(mailbox(&p, users[1])["archived"], 1);
    let error = mailbox(&p, users[0])["errors"][0]["message"]
        .as_str()
        .unwrap();
    assert!(
        error.contains("login as erin@example.org failed"),
        "{error}"
    );
    for text in [&outcome.stdout, &outcome.stderr] {
        assert!(!text.contains(wrong) && !text.contains(PW));
    }
    let saved = files_below(&dir.path().join("archive").join("runs"));
    assert_eq!(saved.len(), 1);
    assert!(!String::from_utf8_lossy(&saved[0].1).contains(wrong));
}

#[test]
fn a_new_uidvalidity_stores_nothing_twice() {
    let users = ["gina@example.org"];
    let dovecot = server(&users);
    for n in 0..5 {
        dovecot
            .deliver(users[0], "INBOX", &msg(n, users[0], 3000), DATE, &[])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Plain, &users, ""),
    );
    assert_eq!(run(&input, &store).json()["totals"]["archived"], 5);

    dovecot.reset_uidvalidity(users[0], "INBOX").unwrap();
    dovecot
        .deliver(users[0], "INBOX", &msg(99, users[0], 3000), DATE, &[])
        .unwrap();
    let p = run(&input, &store).json();
    assert_eq!(p["totals"]["archived"], 1, "{p:#}");
    assert_eq!(p["totals"]["alreadyArchived"], 5, "{p:#}");
    let p = run(&input, &store).json();
    assert_eq!(
        (
            p["totals"]["archived"].as_u64(),
            p["totals"]["alreadyArchived"].as_u64()
        ),
        (Some(0), Some(6))
    );
    assert_eq!(files_below(&store.join("messages")).len(), 6);
    // 6 entries list the messages; 5 more record where the renumbered ones are now.
    let verified = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert!(
        verified
            .stdout
            .contains("6 messages, 11 index entries checked, 0 problems"),
        "{}",
        verified.stdout
    );
}

#[test]
fn a_25_mib_message_round_trips_and_verify_finds_damage() {
    let users = ["hank@example.org"];
    let dovecot = server(&users);
    let big = msg(1, users[0], 25 << 20);
    dovecot.deliver(users[0], "INBOX", &big, DATE, &[]).unwrap();
    dovecot
        .deliver(users[0], "INBOX", &msg(2, users[0], 1000), DATE, &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(
        dir.path(),
        &master_yaml(&dovecot, Connection::Tls, &users, ""),
    );
    let outcome = run(&input, &store);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert_eq!(
        outcome.json()["totals"]["bytes"].as_u64().unwrap(),
        (big.len() + msg(2, users[0], 1000).len()) as u64
    );

    let out = dir.path().join("export");
    let e = mailvault(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        "hank",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(e.code, 0, "{}", e.stderr);
    assert!(std::fs::read(out.join("hank@example.org/INBOX/1.eml")).unwrap() == big);

    // Flip one byte of the large message in the store.
    let blobs = files_below(&store.join("messages"));
    let (rel, bytes) = blobs.iter().find(|(_, b)| b.len() == big.len()).unwrap();
    let mut damaged = bytes.clone();
    damaged[1000] ^= 1;
    std::fs::write(store.join("messages").join(rel), damaged).unwrap();
    let v = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    let name = rel.rsplit('/').next().unwrap();
    assert!(
        v.stdout.contains(&format!("DAMAGED messages/{rel}")),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout
            .contains(&format!("UID 1: message {name} is missing or damaged")),
        "{}",
        v.stdout
    );
}

#[test]
fn invalid_input_exits_2_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let yaml = "apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: broken
spec:
  mailboxSetRef:
    name: nowhere
  server:
    host: imap.example.org
    security: Tls
  maxParallelJobs: 0
";
    let input = write_yaml(dir.path(), yaml);
    let outcome = run(&input, &store);
    assert_eq!(outcome.code, 2);
    assert!(
        outcome.stderr.contains(
            "input.yaml:1: ArchiveProfile default/broken: spec.maxParallelJobs: must be at least 1"
        ),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(
            "spec.mailboxSetRef.name: MailboxSet default/nowhere is not in the given files"
        ),
        "{}",
        outcome.stderr
    );
    assert!(!store.exists());

    let bad_type = write_yaml(dir.path(), &yaml.replace("security: Tls", "security: Tlz"));
    let outcome = run(&bad_type, &store);
    assert_eq!(outcome.code, 2);
    assert!(outcome.stderr.contains("input.yaml:10: ArchiveProfile default/broken: spec.server.security: unknown variant `Tlz`"), "{}", outcome.stderr);

    let missing = mailvault(&["run", "-f", dir.path().join("nope.yaml").to_str().unwrap()]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("nope.yaml"), "{}", missing.stderr);
}

/// The same acceptance scenario into S3 (a private Garage): archive, re-run, export from
/// S3 byte-identical, verify.
#[test]
fn archives_into_s3_and_exports_exact_bytes_from_it() {
    use mailvault_testkit::garage::Garage;
    let users = ["sam@example.org", "tia@example.org"];
    let dovecot = server(&users);
    let garage = Garage::start().expect("garage starts");
    let mut delivered = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for n in 0..4u64 {
            // One message above the multipart threshold.
            let size = if i == 0 && n == 0 {
                20 << 20
            } else {
                2000 + 500 * n as usize
            };
            let m = msg(500 + 10 * i as u64 + n, user, size);
            dovecot.deliver(user, "INBOX", &m, DATE, &[]).unwrap();
            delivered.push((*user, m));
        }
    }
    let yaml = format!(
        "{}{}",
        master_yaml(
            &dovecot,
            Connection::Plain,
            &users,
            &s3_store_spec(&garage, "mail/archive")
        ),
        s3_secret_yaml(&garage)
    );
    let dir = tempfile::tempdir().unwrap();
    let input = write_yaml(dir.path(), &yaml);
    let first = mailvault(&["run", "-f", input.to_str().unwrap(), "-o", "json"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let p = first.json();
    assert_eq!(p["totals"]["archived"], 8);
    assert!(p["store"].as_str().unwrap().starts_with("s3://"), "{p:#}");
    let second = mailvault(&["run", "-f", input.to_str().unwrap(), "-o", "json"]).json();
    assert_eq!(
        (
            second["totals"]["archived"].as_u64(),
            second["totals"]["alreadyArchived"].as_u64()
        ),
        (Some(0), Some(8))
    );

    let url = format!("s3://{}/mail/archive", garage.bucket());
    for user in users {
        let name = user.split('@').next().unwrap();
        let out = dir.path().join(name);
        let e = mailvault_s3(
            &garage,
            &[
                "export",
                "--store",
                &url,
                "--user",
                name,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(e.code, 0, "{}", e.stderr);
        let files = files_below(&out);
        let expected: Vec<_> = delivered
            .iter()
            .filter(|(u, _)| *u == user)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(files.len(), expected.len());
        for (n, m) in expected.iter().enumerate() {
            let (path, bytes) = &files
                .iter()
                .find(|(p, _)| *p == format!("{user}/INBOX/{}.eml", n + 1))
                .unwrap();
            assert!(bytes == m, "{path} differs");
        }
    }
    let v = mailvault_s3(&garage, &["verify", "--store", &url]);
    assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout
            .contains("8 messages, 8 index entries checked, 0 problems"),
        "{}",
        v.stdout
    );
}
