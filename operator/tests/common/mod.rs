//! Shared helpers of the integration tests: YAML for a private Dovecot, running the real
//! `mailvault` binary, and reading its JSON protocol.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::garage::Garage;

/// The result of running the `mailvault` binary.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn mailvault(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .output()
        .expect("mailvault runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the `mailvault` binary on an `s3://` store of `garage`, credentials from the
/// environment as a user would give them.
pub fn mailvault_s3(garage: &Garage, args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(args)
        .args([
            "--s3-endpoint",
            &garage.endpoint(),
            "--s3-region",
            garage.region(),
            "--s3-path-style",
        ])
        .env("AWS_ACCESS_KEY_ID", garage.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", garage.secret_access_key())
        .output()
        .expect("mailvault runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `spec.store` of a profile archiving into `garage`'s bucket under `prefix`, with the
/// credentials of [`s3_secret_yaml`].
pub fn s3_store_spec(garage: &Garage, prefix: &str) -> String {
    format!(
        "  store:\n    s3:\n      bucket: {}\n      prefix: '{prefix}'\n      endpoint: {}\n      \
         region: {}\n      forcePathStyle: true\n      credentialsSecretRef:\n        name: s3\n",
        garage.bucket(),
        garage.endpoint(),
        garage.region()
    )
}

/// The Secret `s3` with `garage`'s credentials.
pub fn s3_secret_yaml(garage: &Garage) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s3\nstringData:\n  \
         accessKeyId: {}\n  secretAccessKey: {}\n",
        garage.access_key_id(),
        garage.secret_access_key()
    )
}

/// Runs `mailvault run -f <file> --store <store> -o json`.
pub fn run(file: &Path, store: &Path) -> Outcome {
    mailvault(&[
        "run",
        "-f",
        file.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "-o",
        "json",
    ])
}

/// How the profile connects to the test server.
pub enum Connection {
    Tls,
    StartTls,
    Plain,
    /// TLS without giving the CA: verification must fail.
    TlsUntrusted,
    /// TLS without the CA but with insecureSkipTlsVerify.
    TlsInsecure,
}

/// A profile and a master-password MailboxSet for `users`, as YAML.
pub fn master_yaml(
    dovecot: &Dovecot,
    connection: Connection,
    users: &[&str],
    extra_spec: &str,
) -> String {
    let static_users: String = users
        .iter()
        .map(|u| {
            format!(
                "      - name: {}\n        email: {u}\n",
                u.split('@').next().unwrap()
            )
        })
        .collect();
    format!(
        "{}---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: users
spec:
  masterPassword:
    credentialsSecretRef:
      name: master
    staticUsers:
{static_users}---
apiVersion: v1
kind: Secret
metadata:
  name: master
stringData:
  username: {}
  password: {}
",
        profile_yaml(dovecot, connection, extra_spec),
        dovecot.master_user(),
        dovecot.master_password()
    )
}

/// A profile and an OAuth2 MailboxSet: `oauth2` is the YAML of `spec.oauth2` (indented
/// by four spaces), `secret` the `stringData` of its credentials Secret `app` (indented by
/// two).
pub fn oauth2_yaml(dovecot: &Dovecot, oauth2: &str, secret: &str) -> String {
    format!(
        "{}---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: users
spec:
  oauth2:
{oauth2}---
apiVersion: v1
kind: Secret
metadata:
  name: app
stringData:
{secret}",
        profile_yaml(dovecot, Connection::Tls, "")
    )
}

/// A profile and a CSV MailboxSet with the given CSV text.
pub fn csv_yaml(dovecot: &Dovecot, connection: Connection, csv: &str, extra_spec: &str) -> String {
    let indented: String = csv.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "{}---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: users
spec:
  csv:
    secretRef:
      name: mailboxes
---
apiVersion: v1
kind: Secret
metadata:
  name: mailboxes
stringData:
  mailboxes.csv: |
{indented}",
        profile_yaml(dovecot, connection, extra_spec)
    )
}

fn profile_yaml(dovecot: &Dovecot, connection: Connection, extra_spec: &str) -> String {
    let ca: String = dovecot
        .ca_pem()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let (security, port, tls_extra) = match connection {
        Connection::Tls => (
            "Tls",
            dovecot.imaps_port(),
            "    caSecretRef:\n      name: ca\n      key: ca.crt\n",
        ),
        Connection::StartTls => (
            "StartTls",
            dovecot.imap_port(),
            "    caSecretRef:\n      name: ca\n      key: ca.crt\n",
        ),
        Connection::Plain => ("None", dovecot.imap_port(), ""),
        Connection::TlsUntrusted => ("Tls", dovecot.imaps_port(), ""),
        Connection::TlsInsecure => (
            "Tls",
            dovecot.imaps_port(),
            "    insecureSkipTlsVerify: true\n",
        ),
    };
    format!(
        "apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: test
spec:
  mailboxSetRef:
    name: users
  server:
    host: localhost
    port: {port}
    security: {security}
    timeoutSeconds: 10
{tls_extra}{extra_spec}---
apiVersion: v1
kind: Secret
metadata:
  name: ca
stringData:
  ca.crt: |
{ca}"
    )
}

/// Writes `yaml` into `dir/input.yaml` and returns the path.
pub fn write_yaml(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("input.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The protocol entry of one mailbox.
pub fn mailbox<'a>(protocol: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    protocol["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mailbox"] == label)
        .unwrap_or_else(|| panic!("no mailbox {label} in {protocol:#}"))
}

/// Every file below `dir`, as (relative path, bytes), sorted.
pub fn files_below(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Every message blob in the packs of the archive directory `store`, with its bytes;
/// blobs that do not open (damaged) are left out. A message stored twice (two writers)
/// appears twice.
pub fn stored_blobs(store: &Path) -> Vec<(mailvault::store::Location, Vec<u8>)> {
    use mailvault::store::{local::LocalStore, Archive};
    if !store.exists() {
        return Vec::new();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let archive = Archive::new(std::sync::Arc::new(LocalStore::open(store).unwrap()));
        let packs = archive.packs().await.unwrap();
        let mut out = Vec::new();
        for location in packs.blobs().await.unwrap() {
            if let Ok(bytes) = packs.read(&location).await {
                out.push((location, bytes.to_vec()));
            }
        }
        out
    })
}

/// Every distinct message the archive directory `store` holds, by content.
pub fn stored_messages(store: &Path) -> std::collections::BTreeSet<Vec<u8>> {
    stored_blobs(store).into_iter().map(|(_, b)| b).collect()
}

/// Flips one byte in the middle of the stored copy of `message` (in its pack file), as a
/// failing disk would; returns the pack's key (`packs/data/<pack>`).
pub fn damage_stored(store: &Path, message: &[u8]) -> String {
    let (location, _) = stored_blobs(store)
        .into_iter()
        .find(|(_, b)| b == message)
        .expect("the message is stored");
    let key = format!("packs/data/{}", location.pack);
    let path = store.join(&key);
    let mut pack = std::fs::read(&path).unwrap();
    pack[(location.offset + u64::from(location.stored) / 2) as usize] ^= 0x20;
    std::fs::write(&path, pack).unwrap();
    key
}

/// The lines of `stderr` as JSON, after checking that each is a JSON object with a level
/// and a message, as `--log-format json` promises.
pub fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nstderr:\n{stderr}"));
            assert!(
                v["level"].is_string() && v["fields"]["message"].is_string(),
                "{line}"
            );
            v
        })
        .collect()
}
