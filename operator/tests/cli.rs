//! The command line as the real binary, for MailboxSets: what `mailvault
//! mailboxes` and the directory parts of `mailvault run` print (never a
//! password), and their exit codes.

use std::path::Path;
use std::process::{Command, Output};

use mailvault::resources::SyncRecord;
use mailvault::store::StoreLocation;
use mailvault_testkit::slapd::{Slapd, PEOPLE_DN, READER_DN, READER_PASSWORD, SAMPLE_LDIF, SUFFIX};
use serde_json::{json, Value};

const MASTER_PASSWORD: &str = "master-pw-5d1e";

/// Passwords of the CSV test file: none may ever be printed.
const CSV_PASSWORDS: [&str; 3] = ["hunter2-a1", "hunter2-c3", "unclosed-9f"];

fn mailvault(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .env("MAILVAULT_LOG", "debug")
        .output()
        .unwrap()
}

/// stdout and stderr, after checking that neither holds any of `secrets`.
fn texts(output: &Output, secrets: &[&str]) -> (String, String) {
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    for secret in secrets {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed:\n{stdout}\n{stderr}"
        );
    }
    (stdout, stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Two CSV sets: `good`, and `bad` whose file has errors on lines 3 to 5.
const CSV_SETS: &str = r#"apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: good
  namespace: mail
spec:
  csv:
    secretRef:
      name: good-csv
---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: bad
  namespace: mail
spec:
  csv:
    secretRef:
      name: bad-csv
---
apiVersion: v1
kind: Secret
metadata:
  name: good-csv
  namespace: mail
stringData:
  mailboxes.csv: |
    Login;Password;Email;Archive user
    alice;hunter2-a1;alice@example.org;
    bob;hunter2-c3;;robert
---
apiVersion: v1
kind: Secret
metadata:
  name: bad-csv
  namespace: mail
stringData:
  mailboxes.csv: |
    Login;Password;Email
    alice;hunter2-a1;alice@example.org
    bob;;bob@example.org
    Alice;hunter2-c3;
    carol;"unclosed-9f;
"#;

#[test]
fn csv_errors_are_listed_with_lines_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "sets.yaml", CSV_SETS);

    let output = mailvault(&["mailboxes", "-f", &file, "-o", "json"]);
    let (stdout, _) = texts(&output, &CSV_PASSWORDS);
    assert_eq!(output.status.code(), Some(2));
    let listings: Value = serde_json::from_str(&stdout).unwrap();
    let listings = listings.as_array().unwrap();
    assert_eq!(listings.len(), 2);
    let good = &listings[0];
    assert_eq!(good["mailboxSet"], "mail/good");
    assert_eq!(good["mode"], "csv");
    assert_eq!(
        good["mailboxes"],
        json!([
            {"login": "alice", "authorizationIdentity": null, "email": "alice@example.org", "user": "alice"},
            {"login": "bob", "authorizationIdentity": null, "email": null, "user": "robert"},
        ])
    );
    assert_eq!(good["errors"], json!([]));
    let bad = &listings[1];
    assert_eq!(bad["mailboxSet"], "mail/bad");
    assert_eq!(bad["mode"], "csv");
    assert_eq!(bad["mailboxes"], json!([]));
    let lines: Vec<_> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 4, 5]);
    assert!(bad["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("password"));

    let output = mailvault(&["mailboxes", "-f", &file, "--mailbox-set", "mail/good"]);
    let (stdout, _) = texts(&output, &CSV_PASSWORDS);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout,
        "MailboxSet mail/good (csv)\n  mailboxes: 2\n    alice: login alice, alice@example.org\n    \
         robert: login bob\n"
    );

    let output = mailvault(&["mailboxes", "-f", &file, "--mailbox-set", "bad"]);
    let (stdout, _) = texts(&output, &CSV_PASSWORDS);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stdout.starts_with("MailboxSet mail/bad (csv)\n  errors: 3\n    line 3: "),
        "{stdout}"
    );
    assert!(stdout.contains("\n    line 5: "), "{stdout}");

    let output = mailvault(&["mailboxes", "-f", &file, "--mailbox-set", "nope"]);
    let (_, stderr) = texts(&output, &CSV_PASSWORDS);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("no MailboxSet \"nope\" in the given files (found: mail/good, mail/bad)"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_set_shows_its_field_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "set.yaml",
        &directory_set("https://127.0.0.1:1", "")
            .replace("          name: reader\n", "          name: nobody\n"),
    );
    let output = mailvault(&["mailboxes", "-f", &file, "-o", "json"]);
    let (stdout, _) = texts(&output, &[MASTER_PASSWORD, READER_PASSWORD]);
    assert_eq!(output.status.code(), Some(2));
    let listing: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing["mode"], "masterPassword");
    let fields: Vec<_> = listing["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.masterPassword.directory.ldap.url",
            "spec.masterPassword.directory.ldap.bindSecretRef.name"
        ]
    );
}

/// A MailboxSet `mail/staff` of the people in [`SAMPLE_LDIF`], read as the
/// reader, plus static user erin; `ldap_extra` adds lines to `ldap`.
fn directory_set(url: &str, ldap_extra: &str) -> String {
    format!(
        "apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: staff
  namespace: mail
spec:
  masterPassword:
    credentialsSecretRef:
      name: master
    staticUsers:
      - name: erin
        email: erin@example.org
    directory:
      ldap:
        url: {url}
        baseDN: {PEOPLE_DN}
        bindSecretRef:
          name: reader
{ldap_extra}---
apiVersion: v1
kind: Secret
metadata:
  name: master
  namespace: mail
stringData:
  username: archiver
  password: {MASTER_PASSWORD}
---
apiVersion: v1
kind: Secret
metadata:
  name: reader
  namespace: mail
stringData:
  bindDN: {READER_DN}
  password: {READER_PASSWORD}
"
    )
}

fn seeded() -> Slapd {
    let slapd = Slapd::start().unwrap();
    slapd.add_ldif(SAMPLE_LDIF).unwrap();
    slapd
}

fn record(users: &[&str]) -> SyncRecord {
    SyncRecord {
        time: "2026-01-01T00:00:00Z".to_owned(),
        users_found: users.len() as u32,
        without_email: 0,
        excluded_by_selection: 0,
        added: 0,
        removed: 0,
        users: users.iter().map(|u| (*u).to_owned()).collect(),
    }
}

#[tokio::test]
async fn mailboxes_lists_directory_users_and_applies_the_guard_of_a_store() {
    let slapd = seeded();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "set.yaml", &directory_set(&slapd.url(), ""));
    let secrets = [MASTER_PASSWORD, READER_PASSWORD];

    let output = mailvault(&["mailboxes", "-f", &file, "-o", "json"]);
    let (stdout, stderr) = texts(&output, &secrets);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let listing: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing["mailboxSet"], "mail/staff");
    assert_eq!(listing["mode"], "masterPassword");
    let mailbox = |user: &str, email: &str| json!({"login": "archiver", "authorizationIdentity": email, "email": email, "user": user});
    assert_eq!(
        listing["mailboxes"],
        json!([
            mailbox("alice", "alice@example.org"),
            mailbox("bob", "bob@example.org"),
            mailbox("dave", "dave@example.org"),
            mailbox("erin", "erin@example.org"),
        ])
    );
    assert_eq!(
        listing["excluded"],
        json!([{"name": "carol", "reason": "no email address"}])
    );
    assert_eq!(listing["errors"], json!([]));
    assert_eq!(listing["directorySync"]["usersFound"], 4);
    assert_eq!(listing["directorySync"]["withoutEmail"], 1);
    assert_eq!(
        listing["directorySync"]["users"],
        json!(["alice", "bob", "carol", "dave"])
    );

    // An archive that knew nine users: losing five of them is refused, and
    // the record is only read.
    let store = dir.path().join("archive");
    let archive = mailvault::store::open(&StoreLocation::Local(store.clone()))
        .await
        .unwrap();
    let known = record(&[
        "alice", "bob", "carol", "dave", "u1", "u2", "u3", "u4", "u5",
    ]);
    archive
        .save_directory_sync("mail", "staff", &known)
        .await
        .unwrap();
    let output = mailvault(&[
        "mailboxes",
        "-f",
        &file,
        "--store",
        store.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let (stdout, _) = texts(&output, &secrets);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let listing: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing["mailboxes"], json!([]));
    let message = listing["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("refusing the directory sync: it would drop 5 of the 9"),
        "{message}"
    );
    let kept: Option<SyncRecord> = archive.load_directory_sync("mail", "staff").await.unwrap();
    assert_eq!(kept, Some(known));

    // A store that is no archive is an error rather than no guard at all.
    let output = mailvault(&["mailboxes", "-f", &file, "--store", &file]);
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn mailboxes_reports_a_directory_failure_with_exit_code_1() {
    let mut slapd = Slapd::start().unwrap();
    let url = slapd.url();
    slapd.stop();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "set.yaml", &directory_set(&url, ""));
    let output = mailvault(&["mailboxes", "-f", &file]);
    let (stdout, _) = texts(&output, &[MASTER_PASSWORD, READER_PASSWORD]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout.starts_with("MailboxSet mail/staff (masterPassword)\n  errors: 1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("connect to {url}: connection refused")),
        "{stdout}"
    );
}

/// A profile archiving `mail/staff` from an IMAP port where nothing listens:
/// every mailbox fails, but the directory part of the run is real.
fn profile(imap_port: u16) -> String {
    format!(
        "apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: nightly
  namespace: mail
spec:
  mailboxSetRef:
    name: staff
  server:
    host: 127.0.0.1
    port: {imap_port}
    security: None
    timeoutSeconds: 5
"
    )
}

#[tokio::test]
async fn run_keeps_the_sync_in_the_archive_and_refuses_a_suspicious_one() {
    let slapd = seeded();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    write(&config, "profile.yaml", &profile(closed_port));
    write(&config, "set.yaml", &directory_set(&slapd.url(), ""));
    let store = dir.path().join("archive");
    let args = [
        "run",
        "-f",
        config.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    let secrets = [MASTER_PASSWORD, READER_PASSWORD];

    let output = mailvault(&args);
    let (stdout, stderr) = texts(&output, &secrets);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    // The directory is read over plain ldap://: the protocol says so.
    assert!(
        stdout.contains(&format!(
            "the directory {} is read without encryption",
            slapd.url()
        )),
        "{stdout}"
    );
    let archive = mailvault::store::open(&StoreLocation::Local(store.clone()))
        .await
        .unwrap();
    let first: SyncRecord = archive
        .load_directory_sync("mail", "staff")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.users, ["alice", "bob", "carol", "dave"]);
    assert_eq!((first.added, first.removed), (4, 0));

    // A wrong group leaves one of the four users: nothing is run, and the
    // record stays as it was.
    let group = format!("        groupDN: cn=ops,ou=groups,{SUFFIX}\n");
    write(&config, "set.yaml", &directory_set(&slapd.url(), &group));
    let output = mailvault(&args);
    let (stdout, stderr) = texts(&output, &secrets);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("refusing the directory sync: it would drop 3 of the 4"),
        "{stderr}"
    );
    let kept: Option<SyncRecord> = archive.load_directory_sync("mail", "staff").await.unwrap();
    assert_eq!(kept, Some(first));
}
