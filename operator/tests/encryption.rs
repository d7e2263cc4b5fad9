//! Encryption at rest through the real binary: a profile whose store names its keys in a
//! Secret, against a real Dovecot. Nothing in the archive reads as mail, export gives back
//! every byte, and a missing, wrong or malformed key file fails before anything is read or
//! written, saying which file, never what key.

mod common;

use std::path::Path;

use common::*;
use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::mail;

const PW: &str = "encryption-user-pw";
const KEY: &str = "4f1c2d3e5a6b7c8d9e0f11223344556677889900aabbccddeeff001122334455";
const OTHER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// A subject no random text contains.
const SUBJECT: &str = "Zebra orchid merger plan";

fn encrypted_yaml(dovecot: &Dovecot, user: &str, store: &Path) -> String {
    let spec = format!(
        "  store:\n    local:\n      path: {}\n    encryption:\n      keySecretRef:\n        \
         name: archive-keys\n        key: keys.txt\n",
        store.display()
    );
    format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: archive-keys\nstringData:\n  \
         keys.txt: |\n    first: {KEY}\n",
        master_yaml(dovecot, Connection::Plain, &[user], &spec)
    )
}

fn export(store: &Path, out: &Path, key_file: Option<&Path>) -> Outcome {
    let mut args = vec![
        "export".to_string(),
        "--store".into(),
        store.display().to_string(),
        "--user".into(),
        "enc".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(file) = key_file {
        args.extend(["--encryption-key-file".into(), file.display().to_string()]);
    }
    mailvault(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn an_encrypted_archive_reads_as_no_mail_and_exports_every_byte() {
    let user = "enc@example.org";
    let dovecot = Dovecot::start().unwrap();
    dovecot.add_user(user, PW).unwrap();
    let messages: Vec<Vec<u8>> = (0..20)
        .map(|n| {
            mail::message(
                41,
                n,
                "boss@example.net",
                user,
                SUBJECT,
                3_000 + 500 * n as usize,
            )
        })
        .collect();
    for m in &messages {
        dovecot
            .deliver(user, "INBOX", m, 1_731_600_000, &[])
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(dir.path(), &encrypted_yaml(&dovecot, user, &store));
    let first = mailvault(&["run", "-f", input.to_str().unwrap(), "-o", "json"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.json()["totals"]["archived"], 20);

    // No object holds the subject, a line of any body, or any message's SHA-256.
    let files = files_below(&store);
    assert!(files.iter().any(|(p, _)| p.starts_with("packs/data/")));
    let lines: Vec<&[u8]> = messages
        .iter()
        .map(|m| m.split(|&b| b == b'\n').nth(10).unwrap())
        .collect();
    for (path, bytes) in &files {
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(SUBJECT.as_bytes()), "{path} holds the subject");
        for (n, line) in lines.iter().enumerate() {
            assert!(!contains(line), "{path} holds a line of message {n}");
        }
        for m in &messages {
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(m));
            assert!(!contains(sha.as_bytes()), "{path} names message {sha}");
        }
    }

    // The same key in a file: export gives back every byte; verify finds all.
    let keys = dir.path().join("keys.txt");
    std::fs::write(&keys, format!("# the archive's keys\nfirst: {KEY}\n")).unwrap();
    let out = dir.path().join("out");
    let e = export(&store, &out, Some(&keys));
    assert_eq!(e.code, 0, "{}", e.stderr);
    let exported: Vec<Vec<u8>> = files_below(&out).into_iter().map(|(_, b)| b).collect();
    assert_eq!(exported.len(), 20);
    for m in &messages {
        assert!(exported.contains(m), "a message was not exported as it was");
    }
    let v = mailvault(&[
        "verify",
        "--store",
        store.to_str().unwrap(),
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(v.code, 0, "{}", v.stdout);
    assert!(
        v.stdout
            .contains("20 messages, 20 index entries checked, 0 problems"),
        "{}",
        v.stdout
    );

    // No key, a wrong key, a malformed key file: refused, nothing exported, no key shown.
    let none = export(&store, &dir.path().join("none"), None);
    assert_eq!(none.code, 1, "{}", none.stderr);
    assert!(
        none.stderr.contains("is encrypted") && none.stderr.contains("--encryption-key-file"),
        "{}",
        none.stderr
    );
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&wrong, format!("{OTHER_KEY}\n")).unwrap();
    let refused = export(&store, &dir.path().join("wrong"), Some(&wrong));
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(wrong.to_str().unwrap()) && refused.stderr.contains("lacks"),
        "{}",
        refused.stderr
    );
    let malformed = dir.path().join("malformed.txt");
    std::fs::write(
        &malformed,
        format!("first: {KEY}\nsecond: {}\n", &KEY[..40]),
    )
    .unwrap();
    let bad = export(&store, &dir.path().join("bad"), Some(&malformed));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains(&format!("{}, line 2", malformed.display())),
        "{}",
        bad.stderr
    );
    for outcome in [&first, &e, &v, &none, &refused, &bad] {
        for key in [KEY, OTHER_KEY, &KEY[..40]] {
            assert!(!outcome.stdout.contains(key) && !outcome.stderr.contains(key));
        }
    }
    for refused in ["none", "wrong", "bad"] {
        assert!(!dir.path().join(refused).exists(), "{refused}");
    }

    // Key rotation: a new key seals what comes next; the old one still opens the rest.
    let rotated = encrypted_yaml(&dovecot, user, &store).replace(
        &format!("    first: {KEY}\n"),
        &format!("    first: {KEY}\n    second: {OTHER_KEY}\n"),
    );
    let input = write_yaml(dir.path(), &rotated);
    let late = mail::message(41, 99, "boss@example.net", user, SUBJECT, 4_000);
    dovecot
        .deliver(user, "INBOX", &late, 1_731_600_000, &[])
        .unwrap();
    let second = mailvault(&["run", "-f", input.to_str().unwrap(), "-o", "json"]);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(second.json()["totals"]["archived"], 1);
    std::fs::write(&keys, format!("first: {KEY}\nsecond: {OTHER_KEY}\n")).unwrap();
    let out = dir.path().join("rotated");
    let e = export(&store, &out, Some(&keys));
    assert_eq!(e.code, 0, "{}", e.stderr);
    let exported: Vec<Vec<u8>> = files_below(&out).into_iter().map(|(_, b)| b).collect();
    assert_eq!(exported.len(), 21);
    assert!(exported.contains(&late) && exported.contains(&messages[0]));
    // The old key alone no longer opens the archive: the new one sealed data in it.
    std::fs::write(&keys, format!("first: {KEY}\n")).unwrap();
    let old_only = export(&store, &dir.path().join("old-only"), Some(&keys));
    assert_eq!(old_only.code, 1, "{}", old_only.stderr);
}
