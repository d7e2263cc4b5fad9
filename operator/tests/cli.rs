//! The command line as the real binary, for MailboxSets: what the directory
//! parts of `mailvault run` print (never a password), and their exit codes.

use std::path::Path;
use std::process::{Command, Output};

use mailvault::resources::SyncRecord;
use mailvault::testkit::slapd::{
    Slapd, PEOPLE_DN, READER_DN, READER_PASSWORD, SAMPLE_LDIF, SUFFIX,
};

const MASTER_PASSWORD: &str = "master-pw-5d1e";

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
    let archive = mailvault::cli::open_store(store.to_str().unwrap()).unwrap();
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
