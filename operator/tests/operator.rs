//! The operator end to end on an API server: fakekube (`../shared/fakekube`, a fake
//! Kubernetes API server whose job runner runs each Job's pods as local processes, here
//! the built `mailvault` binary as the worker image), installed with `kubectl apply
//! --server-side -k manifests/` as the README says, the real `mailvault operator` process,
//! real Dovecot, OpenLDAP and Garage, and everything driven with kubectl.
//!
//! Each test has a cluster of its own (fakekube starts in a fraction of a second), so
//! that they run in parallel and a failure leaves nothing behind for the next. Where
//! fakekube is absent (a clone without it) every test says it is skipped and passes; with
//! `CI` set and fakekube there, a missing kubectl or Python module fails loudly.
//!
//! `cargo test -p mailvault --test operator -- --nocapture` also prints the times and
//! sizes measured with a directory of 100,000 users.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{files_below, mailvault, mailvault_s3};
use mailvault::operator::api::{classify, API_CALLS};
use mailvault_testkit::cloud::{
    app_principal, user_principal, App, Cloud, Principal, ServiceAccount, Tenant, TestKey, User,
    GOOGLE_DIRECTORY_SCOPE, GOOGLE_IMAP_SCOPE,
};
use mailvault_testkit::dovecot::{Dovecot, DovecotOptions, OAuth2Login};
use mailvault_testkit::fakekube::{self, FakeKube, Operator};
use mailvault_testkit::garage::Garage;
use mailvault_testkit::mail;
use mailvault_testkit::slapd::{self, Slapd};

const BINARY: &str = env!("CARGO_BIN_EXE_mailvault");
const NS: &str = "mail";
const DATE: i64 = 1_736_157_600;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// fakekube, or why the suite is skipped here.
fn fakekube_script() -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    let Some(script) = fakekube::locate() else {
        eprintln!(
            "operator suite skipped: fakekube is not at ../shared/fakekube (set \
             MAILVAULT_FAKEKUBE to its fakekube.py); e2e/run.sh tests real clusters"
        );
        return None;
    };
    let missing = fakekube::prerequisites();
    if !missing.is_empty() {
        let message = format!("the operator suite needs: {}", missing.join("; "));
        assert!(!ci, "{message}");
        eprintln!("operator suite skipped: {message}");
        return None;
    }
    Some(script)
}

/// A cluster: fakekube with mailvault installed and the operator running.
struct Cluster {
    kube: FakeKube,
    operator: Option<Operator>,
    log: PathBuf,
}

impl Cluster {
    /// A new cluster, or `None` when the suite is skipped here.
    fn start() -> Option<Cluster> {
        let script = fakekube_script()?;
        let kube =
            FakeKube::start(&script, &[("mailvault", Path::new(BINARY))]).expect("fakekube starts");
        let log = kube.data_dir().join("operator.log");
        let mut cluster = Cluster {
            kube,
            operator: None,
            log,
        };
        cluster.install();
        cluster.start_operator();
        Some(cluster)
    }

    /// Installs mailvault exactly as the README says.
    fn install(&self) {
        let manifests = repository().join("manifests");
        self.kubectl(&["apply", "--server-side", "-k", manifests.to_str().unwrap()]);
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/archiveprofiles.mailvault.io",
            "crd/mailboxsets.mailvault.io",
        ]);
        self.kubectl(&["create", "namespace", NS]);
    }

    /// Starts the operator and waits until it is ready.
    fn start_operator(&mut self) {
        let operator =
            Operator::start(&self.kube, Path::new(BINARY), &self.log).expect("the operator starts");
        let ready =
            fakekube::wait_until(Duration::from_secs(30), || operator.ready().then_some(()));
        self.operator = Some(operator);
        assert!(ready.is_some(), "the operator did not get ready");
    }

    fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("the operator runs")
    }

    /// kubectl `args`; panics with its error output when it fails.
    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_in(args, None)
    }

    fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kube.kubectl(args, stdin).expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply --server-side -f -` of `yaml`, all of it in one apply (server-side:
    /// a client-side apply copies each object into an annotation, too small for a large
    /// CSV file).
    fn apply(&self, yaml: &str) {
        self.kubectl_in(&["apply", "--server-side", "-f", "-"], Some(yaml));
    }

    /// An object of the namespace as JSON, or `None` when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self
            .kube
            .kubectl(&["-n", NS, "get", kind, name, "-o", "json"], None)
            .expect("kubectl runs");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("JSON"))
    }

    /// The objects of a kind in the namespace, optionally by label selector.
    fn list(&self, kind: &str, selector: &str) -> Vec<Value> {
        let mut args = vec!["-n", NS, "get", kind, "-o", "json"];
        if !selector.is_empty() {
            args.extend(["-l", selector]);
        }
        let list: Value = serde_json::from_str(&self.kubectl(&args)).expect("JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// No token `cloud` issued and none of `secrets` is in the operator's log, a worker's
    /// log (`run` must be there: the logs were read), the files the pods were given (their
    /// plans, uncompressed) other than the Secret volumes that hold them by design, the
    /// Jobs, the pods, the events or the status of the profile and set named `name`.
    fn assert_never_shown(&self, cloud: Option<&Cloud>, name: &str, run: &str, secrets: &[&str]) {
        let issued: Vec<String> = cloud
            .map(|cloud| cloud.update(|s| s.issued.iter().map(|i| i.token.clone()).collect()))
            .unwrap_or_default();
        let operator_log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let pod_files = files_below(&self.kube.data_dir().join("pods"));
        let pod_logs: String = pod_files
            .iter()
            .filter(|(path, _)| path.contains("logs/"))
            .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
            .collect();
        assert!(pod_logs.contains(run), "the workers' logs were read");
        let given: Vec<(&String, Vec<u8>)> = pod_files
            .iter()
            .filter(|(path, _)| path.contains("volumes/plan/"))
            .map(|(path, bytes)| (path, gunzipped(bytes)))
            .collect();
        assert!(!given.is_empty(), "the pods' plans were read");
        let objects = format!(
            "{}{}{}{}{}",
            self.profile(name)["status"],
            self.get("mailboxset", name).unwrap()["status"],
            Value::from(self.list("jobs", "")),
            Value::from(self.list("pods", "")),
            Value::from(self.list("events", "")),
        );
        for needle in issued
            .iter()
            .map(String::as_str)
            .chain(secrets.iter().copied())
        {
            assert!(
                !operator_log.contains(needle),
                "{needle} in the operator log"
            );
            assert!(!pod_logs.contains(needle), "{needle} in a worker's log");
            for (path, bytes) in &given {
                let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                assert!(!found, "{needle} in {path}");
            }
            assert!(
                !objects.contains(needle),
                "{needle} in a Job, pod, event or status"
            );
        }
    }

    fn profile(&self, name: &str) -> Value {
        self.get("archiveprofile", name)
            .unwrap_or_else(|| panic!("no ArchiveProfile {name}"))
    }

    /// Waits until `probe` of the profile `name` holds; returns the profile.
    fn wait_profile(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        probe: impl Fn(&Value) -> bool,
    ) -> Value {
        fakekube::wait_until(timeout, || Some(self.profile(name)).filter(|p| probe(p)))
            .unwrap_or_else(|| {
                panic!(
                    "timed out after {timeout:?} waiting for {what}: {:#}",
                    self.profile(name)["status"]
                )
            })
    }

    /// Waits until run `run` of profile `name` is recorded; returns `status.lastRun`.
    fn wait_run(&self, name: &str, run: &str) -> Value {
        let p = self.wait_profile(name, Duration::from_secs(90), run, |p| {
            p["status"]["lastRun"]["name"] == run
        });
        p["status"]["lastRun"].clone()
    }

    fn trigger(&self, profile: &str, value: &str) {
        self.kubectl(&[
            "-n",
            NS,
            "patch",
            "archiveprofile",
            profile,
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"trigger":{{"manual":"{value}"}}}}}}"#),
        ]);
    }

    /// Events with `reason` about `object` (core v1, as `kubectl get events` shows them).
    fn events(&self, object: &str, reason: &str) -> Vec<Value> {
        self.list("events", "")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == object && e["reason"] == reason)
            .collect()
    }

    fn metrics(&self) -> String {
        let (code, body) = self.operator().get("/metrics").expect("/metrics answers");
        assert_eq!(code, 200);
        body
    }

    /// Kills the operator (SIGKILL) and starts a new one.
    fn restart_operator(&mut self) {
        if let Some(mut old) = self.operator.take() {
            old.kill();
        }
        self.start_operator();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // What a person needs to see why a test failed.
        let tail = |path: PathBuf, n: usize| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        eprintln!("---- operator log\n{}", tail(self.log.clone(), 80));
        eprintln!(
            "---- runner.log\n{}",
            tail(self.kube.data_dir().join("runner.log"), 40)
        );
        if let Ok(out) = self.kube.kubectl(
            &[
                "get",
                "archiveprofiles,mailboxsets,jobs,pods,secrets",
                "-A",
                "-o",
                "wide",
            ],
            None,
        ) {
            eprintln!("---- objects\n{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// A Secret in the namespace, from string data.
fn secret_yaml(name: &str, data: &[(&str, &str)]) -> String {
    let data: String = data
        .iter()
        .map(|(k, v)| {
            let v: String = v.lines().map(|l| format!("\n    {l}")).collect();
            format!("  {k}: |{v}\n")
        })
        .collect();
    format!("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\nstringData:\n{data}")
}

/// A profile `name` of `set` against `dovecot` (STARTTLS, its CA in the Secret `imap-ca`),
/// with `extra` (indented spec fields) and the Secret.
fn profile_yaml(name: &str, set: &str, dovecot: &Dovecot, extra: &str) -> String {
    format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: {name}
  namespace: {NS}
  labels:
    team: not-for-the-job
spec:
  mailboxSetRef:
    name: {set}
  server:
    host: localhost
    port: {}
    security: StartTls
    timeoutSeconds: 10
    caSecretRef:
      name: imap-ca
      key: ca.crt
{extra}{}",
        dovecot.imap_port(),
        secret_yaml("imap-ca", &[("ca.crt", &dovecot.ca_pem())])
    )
}

/// `spec.store` on the claim `archive`, in directory `path` of it.
fn claim_store(path: &str) -> String {
    format!(
        "  store:\n    local:\n      persistentVolumeClaim:\n        claimName: archive\n      path: {path}\n"
    )
}

const CLAIM: &str = "---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: archive
  namespace: mail
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
";

/// A CSV MailboxSet `name` with its Secret.
fn csv_set_yaml(name: &str, csv: &str) -> String {
    format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: {name}
  namespace: {NS}
spec:
  csv:
    secretRef:
      name: {name}-csv
{}",
        secret_yaml(&format!("{name}-csv"), &[("mailboxes.csv", csv)])
    )
}

/// A CSV MailboxSet and a profile of the same `name`, applied together.
fn apply_csv_profile(c: &Cluster, name: &str, csv: &str, dovecot: &Dovecot, extra: &str) {
    c.apply(&format!(
        "{}{}",
        csv_set_yaml(name, csv),
        profile_yaml(name, name, dovecot, extra)
    ));
}

/// Delivers `count` messages to `user`'s INBOX; returns them.
fn deliver(dovecot: &Dovecot, user: &str, seed: u64, count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| {
            let m = mail::message(seed, n, "sender@example.net", user, "Report", 1500);
            dovecot.deliver(user, "INBOX", &m, DATE, &[]).unwrap();
            m
        })
        .collect()
}

/// The messages of `user` in the archive at `store`, exported, sorted.
fn exported(store: &Path, user: &str) -> Vec<Vec<u8>> {
    exported_with(store, user, &[])
}

/// [`exported`] with more arguments to `mailvault export` (`--encryption-key-file`).
fn exported_with(store: &Path, user: &str, more: &[&str]) -> Vec<Vec<u8>> {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "export",
        "--store",
        store.to_str().unwrap(),
        "--user",
        user,
        "--out",
        out.path().to_str().unwrap(),
    ];
    args.extend(more);
    let result = mailvault(&args);
    assert_eq!(result.code, 0, "{}", result.stderr);
    let mut messages: Vec<Vec<u8>> = files_below(out.path()).into_iter().map(|f| f.1).collect();
    messages.sort();
    messages
}

/// `bytes` uncompressed if gzip-compressed (a plan's shard), else as they are.
fn gunzipped(bytes: &[u8]) -> Vec<u8> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return bytes.to_vec();
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
        .expect("a gzip file");
    out
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// The value of a series in the exposition format, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Unix time of an RFC 3339 string.
fn unix(t: &Value) -> f64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().unwrap())
        .unwrap()
        .timestamp() as f64
}

/// Whether `object`'s `Ready` condition has `status` (`True` or `False`).
fn ready_is(object: &Value, status: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == status)
    })
}

fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no condition {type_}: {:#}", object["status"]))
}

/// Every request the operator sent carries its User-Agent and is one of its `API_CALLS`,
/// which its ClusterRole grants exactly (`operator/tests/manifests.rs`): fakekube does not
/// enforce RBAC, this does.
fn check_requests(kube: &FakeKube) {
    let allowed: Vec<(String, String, String)> = API_CALLS
        .iter()
        .map(|c| (c.group.into(), c.resource.into(), c.verb.into()))
        .collect();
    let log = kube.requests_log();
    let operator_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ua=mailvault-operator/"))
        .collect();
    assert!(operator_lines.len() > 10, "{log}");
    let anonymous: Vec<&str> = log.lines().filter(|l| l.ends_with("ua=-")).collect();
    assert!(
        anonymous.is_empty(),
        "requests without User-Agent: {anonymous:#?}"
    );
    // A line: time, method, path and query, ...
    let denied: Vec<&str> = operator_lines
        .iter()
        .copied()
        .filter(|l| {
            let mut words = l.split_whitespace().skip(1);
            let (Some(method), Some(target)) = (words.next(), words.next()) else {
                return true;
            };
            classify(method, target).is_some_and(|call| !allowed.contains(&call))
        })
        .collect();
    assert!(denied.is_empty(), "not in API_CALLS: {denied:#?}");
}

/// A master-password MailboxSet `name` whose users come from `ldap` (plain ldap://), bound
/// as the reader of `slapd::SAMPLE_LDIF` or anonymously, with its Secrets.
fn directory_set_yaml(name: &str, ldap: &Slapd, dovecot: &Dovecot, bind: bool) -> String {
    let (reference, reader) = match bind {
        true => (
            "        bindSecretRef:\n          name: ldap-reader\n",
            secret_yaml(
                "ldap-reader",
                &[
                    ("bindDN", slapd::READER_DN),
                    ("password", slapd::READER_PASSWORD),
                ],
            ),
        ),
        false => ("", String::new()),
    };
    format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: {name}
  namespace: {NS}
spec:
  masterPassword:
    credentialsSecretRef:
      name: imap-master
    directory:
      ldap:
        url: {}
        baseDN: {}
{reference}{}{reader}",
        ldap.url(),
        slapd::PEOPLE_DN,
        secret_yaml(
            "imap-master",
            &[
                ("username", dovecot.master_user()),
                ("password", dovecot.master_password()),
            ]
        ),
    )
}

/// The users of `slapd::SAMPLE_LDIF` that have an address: the MailboxSet's mailboxes.
const DIRECTORY_USERS: [&str; 3] = ["alice", "bob", "dave"];
/// The key of the encrypted profile's archive; it must show nowhere but in its Secret.
const ARCHIVE_KEY: &str = "9c3e5f1a2b4d6e8f0a1c3e5f7a9b1d3f5e7a9c1b3d5f7e9a1c3b5d7f9e1a3c5b";
/// The subject of the messages archived encrypted; no random text contains it.
const SEALED_SUBJECT: &str = "Quarterly merger memo for the board";

#[test]
fn a_claim_store_runs_manually_again_and_survives_restarts_and_deletion() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let dovecot = Dovecot::start().expect("dovecot starts");
    let ldap = Slapd::start().expect("slapd starts");
    ldap.add_ldif(slapd::SAMPLE_LDIF).unwrap();
    let mut delivered = std::collections::BTreeMap::new();
    for (i, user) in DIRECTORY_USERS.iter().enumerate() {
        let address = format!("{user}@example.org");
        dovecot.add_user(&address, "unused-user-pw").unwrap();
        delivered.insert(*user, deliver(&dovecot, &address, i as u64, 2 + i as u64));
    }
    let set = directory_set_yaml("staff", &ldap, &dovecot, true);
    let extra = format!(
        "{}  successfulRunsHistoryLimit: 2\n  maxParallelJobs: 2\n  trigger:\n    manual: first\n",
        claim_store("staff")
    );
    c.apply(&format!(
        "{CLAIM}{set}{}",
        profile_yaml("staff", "staff", &dovecot, &extra)
    ));
    // Beside it, an encrypted profile whose key Secret is made from a key file the way a
    // person makes one, and a profile of the same set whose key reference has a typo.
    let ivy = "ivy@example.org";
    dovecot.add_user(ivy, "ivy-pw").unwrap();
    let sealed: Vec<Vec<u8>> = (0..4)
        .map(|n| {
            let m = mail::message(
                31,
                n,
                "board@example.net",
                ivy,
                SEALED_SUBJECT,
                2_000 + 700 * n as usize,
            );
            dovecot.deliver(ivy, "INBOX", &m, DATE, &[]).unwrap();
            m
        })
        .collect();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("keys.txt");
    let key_text =
        format!("# the archive's keys; the last one seals new data\nfirst: {ARCHIVE_KEY}\n");
    std::fs::write(&key_file, &key_text).unwrap();
    c.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "archive-keys",
        &format!("--from-file=keys.txt={}", key_file.display()),
    ]);
    let encrypted = |path: &str, key: &str, trigger: &str| {
        format!(
            "{}    encryption:\n      keySecretRef:\n        name: archive-keys\n        \
             key: {key}\n  trigger:\n    manual: {trigger}\n",
            claim_store(path)
        )
    };
    c.apply(&format!(
        "{}{}",
        csv_set_yaml("sealed", &format!("Login;Password\n{ivy};ivy-pw\n")),
        profile_yaml(
            "sealed",
            "sealed",
            &dovecot,
            &encrypted("sealed", "keys.txt", "first")
        )
    ));
    c.apply(&profile_yaml(
        "unkeyed",
        "sealed",
        &dovecot,
        &encrypted("unkeyed", "key.txt", "go"),
    ));

    // The first run archives every message, byte for byte, into the claim.
    let last = c.wait_run("staff", "staff-m-first");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["mailboxes"], 3);
    assert_eq!(last["totals"]["archived"], 9);
    let store = c.kube.claim_dir(NS, "archive").join("staff");
    for (user, messages) in &delivered {
        assert_eq!(exported(&store, user), sorted(messages.clone()), "{user}");
    }
    let verify = mailvault(&["verify", "--store", store.to_str().unwrap()]);
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    // The Job carries the operator's labels, not the profile's; the plan is gone.
    let job = c
        .get("job", "staff-m-first")
        .expect("the run's Job is kept");
    assert_eq!(
        job["metadata"]["labels"]["mailvault.io/run"],
        "staff-m-first"
    );
    assert!(job["metadata"]["labels"].get("team").is_none());
    assert!(c.list("secrets", "mailvault.io/run").is_empty());
    // The directory was read over plain LDAP: the set and every protocol say so.
    let set = c.get("mailboxset", "staff").unwrap();
    assert_eq!(set["status"]["mailboxes"], 3);
    let warning = set["status"]["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("without encryption"),
        "{:#}",
        set["status"]
    );
    assert!(condition(&set, "DirectorySynced")["message"]
        .as_str()
        .unwrap()
        .contains("warning: the directory"));
    let protocols: Vec<_> = files_below(&store.join("runs"));
    assert_eq!(protocols.len(), 2, "one per shard");
    for (_, bytes) in &protocols {
        let protocol: Value = serde_json::from_slice(bytes).unwrap();
        assert!(
            protocol["warnings"]
                .to_string()
                .contains("without encryption"),
            "{protocol:#}"
        );
    }

    // The encrypted profile archived every message, and nothing it wrote reads as mail:
    // no subject, no line of a body, no message's SHA-256.
    let last = c.wait_run("sealed", "sealed-m-first");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(
        (&last["totals"]["mailboxes"], &last["totals"]["archived"]),
        (&Value::from(1), &Value::from(4))
    );
    let sealed_store = c.kube.claim_dir(NS, "archive").join("sealed");
    let files = files_below(&sealed_store);
    assert!(
        files.iter().any(|(p, _)| p.starts_with("packs/data/")),
        "{files:?}"
    );
    let mut needles: Vec<Vec<u8>> = vec![SEALED_SUBJECT.into()];
    for m in &sealed {
        let body = &m[m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        needles.extend(
            body.split(|&b| b == b'\n')
                .filter(|l| l.len() > 20)
                .map(<[u8]>::to_vec),
        );
        needles.push(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(m)).into());
    }
    for (path, bytes) in &files {
        for needle in &needles {
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_slice());
            assert!(!found, "{path} holds {:?}", String::from_utf8_lossy(needle));
        }
    }
    // With the key file, export gives back what Dovecot holds, byte for byte; verify too.
    let key_arg = key_file.to_str().unwrap();
    assert_eq!(
        exported_with(&sealed_store, ivy, &["--encryption-key-file", key_arg]),
        sorted(sealed.clone())
    );
    let verify = mailvault(&[
        "verify",
        "--store",
        sealed_store.to_str().unwrap(),
        "--encryption-key-file",
        key_arg,
    ]);
    assert_eq!(verify.code, 0, "{}", verify.stdout);
    assert!(verify.stdout.contains("4 messages"), "{}", verify.stdout);
    // The key reached the pod as one file of its own volume, and nowhere else: not in the
    // Job, the pods, the plan, an event, a status or a log (as text or as the Secret's
    // base64).
    let mounted = files_below(&c.kube.data_dir().join("pods"))
        .into_iter()
        .any(|(path, bytes)| {
            path.ends_with("volumes/store-keys/keys.txt") && bytes == key_text.as_bytes()
        });
    assert!(mounted, "the key file was mounted");
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key_text);
    c.assert_never_shown(None, "sealed", "sealed-m-first", &[ARCHIVE_KEY, &encoded]);

    // The profile naming a key its Secret lacks starts no pod that could not mount it: its
    // run fails at once, naming the field and the key, and the set is not blamed for it.
    let last = c.wait_run("unkeyed", "unkeyed-m-go");
    assert_eq!(last["result"], "Failed", "{last:#}");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains(
            r#"spec.store.encryption.keySecretRef.key: Secret mail/archive-keys has no key "key.txt""#
        ),
        "{message}"
    );
    let profile = c.profile("unkeyed");
    let stalled = condition(&profile, "Stalled");
    assert_eq!(
        (&stalled["status"], &stalled["reason"]),
        (&Value::from("True"), &Value::from("InvalidProfile")),
        "{stalled:#}"
    );
    assert!(c.get("job", "unkeyed-m-go").is_none());
    assert!(!c.list("pods", "mailvault.io/profile=sealed").is_empty());
    assert!(c.list("pods", "mailvault.io/profile=unkeyed").is_empty());
    let set = c.get("mailboxset", "sealed").unwrap();
    assert_eq!(
        condition(&set, "Ready")["status"],
        "True",
        "{:#}",
        set["status"]
    );
    // Corrected, with a new trigger, it runs.
    c.kubectl(&[
        "-n",
        NS,
        "patch",
        "archiveprofile",
        "unkeyed",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"store":{"encryption":{"keySecretRef":{"key":"keys.txt"}}},"trigger":{"manual":"fixed"}}}"#,
    ]);
    let last = c.wait_run("unkeyed", "unkeyed-m-fixed");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["archived"], 4);
    let unkeyed_store = c.kube.claim_dir(NS, "archive").join("unkeyed");
    assert_eq!(
        exported_with(&unkeyed_store, ivy, &["--encryption-key-file", key_arg]),
        sorted(sealed)
    );

    // A new message, a new trigger: only the new one is archived; then nothing.
    let more = deliver(&dovecot, "alice@example.org", 99, 1);
    c.trigger("staff", "second");
    let last = c.wait_run("staff", "staff-m-second");
    assert_eq!(
        (
            &last["result"],
            &last["totals"]["archived"],
            &last["totals"]["alreadyArchived"]
        ),
        (&Value::from("Succeeded"), &Value::from(1), &Value::from(9))
    );
    c.trigger("staff", "third");
    let last = c.wait_run("staff", "staff-m-third");
    assert_eq!(last["totals"]["archived"], 0);
    delivered.get_mut("alice").unwrap().extend(more);
    assert_eq!(
        exported(&store, "alice"),
        sorted(delivered["alice"].clone())
    );
    // Two successful runs keep their Jobs.
    let jobs = fakekube::wait_until(Duration::from_secs(20), || {
        Some(c.list("jobs", "mailvault.io/profile=staff")).filter(|j| j.len() == 2)
    });
    assert!(jobs.is_some(), "old runs are pruned");

    // A restarted operator shows the last success at once, before any new run.
    let profile = c.profile("staff");
    let completed = unix(&profile["status"]["lastRun"]["completionTime"]);
    c.restart_operator();
    let text = c.metrics();
    let labels = r#"{profile_namespace="mail",profile="staff"}"#;
    assert_eq!(
        metric(
            &text,
            &format!("mailvault_last_success_timestamp_seconds{labels}")
        ),
        Some(completed),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("mailvault_profile_ready{labels}")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"mailvault_last_run_result{profile_namespace="mail",profile="staff",result="Succeeded"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"mailvault_mailboxset_mailboxes{mailboxset_namespace="mail",mailboxset="staff"}"#
        ),
        Some(3.0)
    );

    // A trigger value used before starts nothing, and says so.
    c.trigger("staff", "first");
    let warned = fakekube::wait_until(Duration::from_secs(20), || {
        let e = c.events("staff", "TriggerAlreadyUsed");
        (!e.is_empty()).then_some(e)
    })
    .expect("an event about the reused trigger");
    assert_eq!(warned[0]["type"], "Warning");
    assert_eq!(
        c.profile("staff")["status"]["lastRun"]["name"],
        "staff-m-third"
    );

    // Deleting the profile deletes its Jobs (and pods), never the archive, and its series.
    c.kubectl(&["-n", NS, "delete", "archiveprofile", "staff"]);
    let gone = fakekube::wait_until(Duration::from_secs(30), || {
        c.list("jobs", "mailvault.io/profile=staff")
            .is_empty()
            .then_some(())
    });
    assert!(gone.is_some(), "the Jobs of a deleted profile go");
    assert_eq!(
        exported(&store, "alice"),
        sorted(delivered["alice"].clone())
    );
    let gone = fakekube::wait_until(Duration::from_secs(10), || {
        (!c.metrics().contains(labels)).then_some(())
    });
    assert!(gone.is_some(), "{}", c.metrics());
    check_requests(&c.kube);
}

#[test]
fn scheduled_runs_go_on_after_a_clock_jump() {
    let Some(c) = Cluster::start() else {
        return;
    };
    let dovecot = Dovecot::start().expect("dovecot starts");
    dovecot.add_user("erin@example.org", "erin-pw").unwrap();
    deliver(&dovecot, "erin@example.org", 5, 2);
    let extra = format!(
        "{}  schedule:\n    cron: \"* * * * *\"\n  successfulRunsHistoryLimit: 1\n",
        claim_store("cron")
    );
    c.apply(&format!(
        "{CLAIM}{}{}",
        csv_set_yaml("cron", "Login;Password\nerin@example.org;erin-pw\n"),
        profile_yaml("cron", "cron", &dovecot, &extra)
    ));
    let scheduled = |p: &Value| {
        p["status"]["lastRun"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("cron-2"))
    };
    let first = c.wait_profile(
        "cron",
        Duration::from_secs(90),
        "a scheduled run",
        scheduled,
    );
    assert_eq!(first["status"]["lastRun"]["result"], "Succeeded");
    assert_eq!(first["status"]["lastRun"]["totals"]["archived"], 2);

    // The clock jumped a century ahead, a slot was taken, and the clock came back.
    c.kubectl(&[
        "-n",
        NS,
        "patch",
        "archiveprofile",
        "cron",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"lastScheduleTime":"2125-01-01T00:00:00Z"}}"#,
    ]);
    // Any spec change makes the operator look again.
    c.kubectl(&[
        "-n",
        NS,
        "patch",
        "archiveprofile",
        "cron",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"failedRunsHistoryLimit":2}}"#,
    ]);
    // The latest slot is taken up again at once (its run adopted, or started if the
    // minute changed): the schedule goes on instead of waiting a century.
    let later = c.wait_profile(
        "cron",
        Duration::from_secs(20),
        "the schedule to resume after the clock jump",
        |p| {
            p["status"]["lastScheduleTime"]
                .as_str()
                .is_some_and(|t| t < "2100")
        },
    );
    let slot = later["status"]["lastScheduleTime"].as_str().unwrap();
    assert!(
        slot >= first["status"]["lastScheduleTime"].as_str().unwrap(),
        "{slot}"
    );
    let next = later["status"]["nextScheduleTime"].as_str().unwrap();
    assert!(
        unix(&Value::from(next)) - unix(&Value::from(slot)) <= 60.0,
        "{next}"
    );
}

#[test]
fn an_s3_store_with_its_credentials_secret_in_one_apply() {
    let Some(c) = Cluster::start() else {
        return;
    };
    let dovecot = Dovecot::start().expect("dovecot starts");
    let garage = Garage::start().expect("garage starts");
    dovecot.add_user("frank@example.org", "frank-pw").unwrap();
    let messages = deliver(&dovecot, "frank@example.org", 6, 3);
    let store = format!(
        "  store:\n    s3:\n      bucket: {}\n      prefix: cluster\n      endpoint: {}\n      \
         region: {}\n      forcePathStyle: true\n      credentialsSecretRef:\n        name: s3-creds\n  \
         trigger:\n    manual: go\n",
        garage.bucket(),
        garage.endpoint(),
        garage.region()
    );
    // The Secret, the set and the profile in one file, applied at once.
    c.apply(&format!(
        "{}{}{}",
        secret_yaml(
            "s3-creds",
            &[
                ("accessKeyId", garage.access_key_id()),
                ("secretAccessKey", garage.secret_access_key())
            ]
        ),
        csv_set_yaml("s3", "Login;Password\nfrank@example.org;frank-pw\n"),
        profile_yaml("s3", "s3", &dovecot, &store)
    ));
    let last = c.wait_run("s3", "s3-m-go");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["archived"], 3);
    let verify = mailvault_s3(
        &garage,
        &[
            "verify",
            "--store",
            &format!("s3://{}/cluster", garage.bucket()),
        ],
    );
    assert_eq!(verify.code, 0, "{}", verify.stderr);
    let out = tempfile::tempdir().unwrap();
    let export = mailvault_s3(
        &garage,
        &[
            "export",
            "--store",
            &format!("s3://{}/cluster", garage.bucket()),
            "--user",
            "frank@example.org",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(export.code, 0, "{}", export.stderr);
    let mut got: Vec<Vec<u8>> = files_below(out.path()).into_iter().map(|f| f.1).collect();
    got.sort();
    assert_eq!(got, sorted(messages));
    // The keys reached the pods as files, never in the Job.
    let job = c.get("job", "s3-m-go").unwrap().to_string();
    assert!(!job.contains(garage.secret_access_key()));
    assert!(job.contains("store-credentials"));

    // Without the Secret, the run waits for it and the profile says which one is
    // missing; no Job is made until it is back.
    c.kubectl(&["-n", NS, "delete", "secret", "s3-creds"]);
    c.trigger("s3", "again");
    let profile = c.wait_profile("s3", Duration::from_secs(30), "Ready=False", |p| {
        ready_is(p, "False")
    });
    let ready = condition(&profile, "Ready");
    assert_eq!(ready["reason"], "ReferenceMissing");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("Secret mail/s3-creds does not exist"),
        "{message}"
    );
    assert!(c.get("job", "s3-m-again").is_none());
    c.apply(&secret_yaml(
        "s3-creds",
        &[
            ("accessKeyId", garage.access_key_id()),
            ("secretAccessKey", garage.secret_access_key()),
        ],
    ));
    let last = c.wait_run("s3", "s3-m-again");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["alreadyArchived"], 3);
    assert_eq!(condition(&c.profile("s3"), "Ready")["status"], "True");
}

#[test]
fn failures_show_on_the_profile() {
    let Some(c) = Cluster::start() else {
        return;
    };
    let dovecot = Dovecot::start().expect("dovecot starts");
    for user in ["gina", "hank"] {
        let address = format!("{user}@example.org");
        dovecot.add_user(&address, &format!("{user}-pw")).unwrap();
        deliver(&dovecot, &address, 7, 2);
    }

    // A wrong password: that mailbox fails, by name; the other is archived.
    let extra = format!("{}  trigger:\n    manual: go\n", claim_store("wrong"));
    c.apply(&format!(
        "{CLAIM}{}{}",
        csv_set_yaml(
            "wrong",
            "Login;Password\ngina@example.org;gina-pw\nhank@example.org;not-hanks-password\n"
        ),
        profile_yaml("wrong", "wrong", &dovecot, &extra)
    ));
    let last = c.wait_run("wrong", "wrong-m-go");
    assert_eq!(last["result"], "PartiallyFailed", "{last:#}");
    assert_eq!(last["totals"]["mailboxesFailed"], 1);
    assert_eq!(last["failedMailboxes"][0]["mailbox"], "hank@example.org");
    let profile = c.profile("wrong");
    assert_eq!(condition(&profile, "LastRunSucceeded")["status"], "False");
    assert!(!profile.to_string().contains("not-hanks-password"));

    // 12,000 rows with the wrong separator: the run stops with line numbers, briefly;
    // nothing is started and every object stays small.
    let mut csv = String::from("Login;Password\n");
    for i in 0..12_000 {
        csv.push_str(&format!("user{i:05}@example.org,password-{i}\n"));
    }
    let extra = format!("{}  trigger:\n    manual: go\n", claim_store("big"));
    apply_csv_profile(&c, "big", &csv, &dovecot, &extra);
    let last = c.wait_run("big", "big-m-go");
    assert_eq!(last["result"], "Failed");
    let message = last["message"].as_str().unwrap();
    assert!(message.contains("line 2: expected 2 fields"), "{message}");
    assert!(message.contains("and 11995 more"), "{message}");
    assert!(!message.contains("password-"), "{message}");
    assert!(c.get("job", "big-m-go").is_none());
    let profile = c.profile("big");
    let set = c.get("mailboxset", "big").unwrap();
    assert_eq!(condition(&set, "Stalled")["status"], "True");
    for object in [&profile, &set] {
        let bytes = object.to_string().len();
        assert!(bytes < 16 * 1024, "{bytes} bytes: {object:#}");
    }

    // A MailboxSet whose Secret is missing, named as such.
    let extra = format!("{}  trigger:\n    manual: go\n", claim_store("lost"));
    c.apply(&format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: lost
  namespace: {NS}
spec:
  csv:
    secretRef:
      name: nowhere
{}",
        profile_yaml("lost", "lost", &dovecot, &extra)
    ));
    // Until the operator's cache holds the set, the run waits for the set itself: wait
    // for the Secret to be the reason.
    let profile = c.wait_profile(
        "lost",
        Duration::from_secs(30),
        "RunWaiting for the Secret",
        |p| {
            ready_is(p, "False")
                && condition(p, "Ready")["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Secret mail/nowhere"))
                && !c.events("lost", "RunWaiting").is_empty()
        },
    );
    let ready = condition(&profile, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&Value::from("False"), &Value::from("ReferenceMissing"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("Secret mail/nowhere does not exist"),
        "{ready:#}"
    );
    assert!(c.get("job", "lost-m-go").is_none());
    // Once it is there, the waiting run starts.
    c.apply(&secret_yaml(
        "nowhere",
        &[(
            "mailboxes.csv",
            "Login;Password\ngina@example.org;gina-pw\n",
        )],
    ));
    let last = c.wait_run("lost", "lost-m-go");
    assert_eq!(last["result"], "Succeeded", "{last:#}");

    // A profile naming a set that is not there says so at once, with no run due; the
    // set's arrival makes it ready.
    c.apply(&profile_yaml(
        "early",
        "later",
        &dovecot,
        &claim_store("early"),
    ));
    let profile = c.wait_profile("early", Duration::from_secs(30), "Ready=False", |p| {
        ready_is(p, "False")
    });
    let ready = condition(&profile, "Ready");
    assert_eq!(ready["reason"], "ReferenceMissing");
    assert_eq!(
        ready["message"],
        "MailboxSet mail/later does not exist; runs wait for it"
    );
    c.apply(&format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: later
  namespace: {NS}
spec:
  csv:
    secretRef:
      name: nowhere
"
    ));
    c.wait_profile("early", Duration::from_secs(30), "Ready=True", |p| {
        ready_is(p, "True")
    });

    // A Job the API server refuses (a mount of a volume that does not exist): the run
    // fails with the server's reason, once; the plan goes with it.
    let extra = format!(
        "{}  jobTemplate:\n    volumeMounts:\n      - name: nosuchvolume\n        mountPath: /data\n  \
         trigger:\n    manual: go\n",
        claim_store("rejected")
    );
    apply_csv_profile(
        &c,
        "rejected",
        "Login;Password\ngina@example.org;gina-pw\n",
        &dovecot,
        &extra,
    );
    let last = c.wait_run("rejected", "rejected-m-go");
    assert_eq!(last["result"], "Failed");
    let message = last["message"].as_str().unwrap();
    assert!(
        message.contains("refused the run's Job") && message.contains("nosuchvolume"),
        "{message}"
    );
    let profile = c.profile("rejected");
    assert_eq!(condition(&profile, "Stalled")["reason"], "JobRejected");
    // Events follow the status write that recorded the run.
    let events = fakekube::wait_until(Duration::from_secs(10), || {
        Some(c.events("rejected", "RunNotStarted")).filter(|e| !e.is_empty())
    })
    .expect("a RunNotStarted event");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(c
        .list("secrets", "mailvault.io/run=rejected-m-go")
        .is_empty());
    assert!(c.get("job", "rejected-m-go").is_none());

    // A run none of whose pods can start (an image nobody can pull) is failed with the
    // pods' reason and stopped, so that the next run can start.
    let extra = format!(
        "{}  jobTemplate:\n    image: registry.example.org/no-such-image:1\n    \
         pendingDeadlineSeconds: 3\n  trigger:\n    manual: go\n",
        claim_store("stuck")
    );
    apply_csv_profile(
        &c,
        "stuck",
        "Login;Password\ngina@example.org;gina-pw\n",
        &dovecot,
        &extra,
    );
    let last = c.wait_run("stuck", "stuck-m-go");
    assert_eq!(last["result"], "Failed");
    let reason = last["failedMailboxes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("ErrImagePull"), "{last:#}");
    let gone = fakekube::wait_until(Duration::from_secs(20), || {
        c.get("job", "stuck-m-go").is_none().then_some(())
    });
    assert!(gone.is_some(), "the stuck run's Job is deleted");
    assert!(c.list("secrets", "mailvault.io/run=stuck-m-go").is_empty());
    c.kubectl(&[
        "-n",
        NS,
        "patch",
        "archiveprofile",
        "stuck",
        "--type",
        "json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/jobTemplate/image"},
            {"op": "replace", "path": "/spec/trigger/manual", "value": "fixed"}]"#,
    ]);
    let last = c.wait_run("stuck", "stuck-m-fixed");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    check_requests(&c.kube);
}

#[test]
fn a_run_is_recorded_once_when_the_operator_is_killed_mid_run() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let dovecot = Dovecot::start().expect("dovecot starts");
    let mut csv = String::from("Login;Password\n");
    for user in ["ivy", "jack", "kim"] {
        let address = format!("{user}@example.org");
        dovecot.add_user(&address, &format!("{user}-pw")).unwrap();
        deliver(&dovecot, &address, 8, 20);
        csv.push_str(&format!("{address};{user}-pw\n"));
    }
    let extra = format!(
        "{}  maxParallelJobs: 1\n  trigger:\n    manual: go\n",
        claim_store("killed")
    );
    c.apply(&format!(
        "{CLAIM}{}{}",
        csv_set_yaml("killed", &csv),
        profile_yaml("killed", "killed", &dovecot, &extra)
    ));
    // Killed as soon as the run's Job exists.
    fakekube::wait_until(Duration::from_secs(30), || c.get("job", "killed-m-go"))
        .expect("the run starts");
    c.operator.as_mut().unwrap().kill();
    c.kubectl(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Complete",
        "--timeout=120s",
        "job/killed-m-go",
    ]);
    c.start_operator();
    let last = c.wait_run("killed", "killed-m-go");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["archived"], 60);
    // The event follows the status write; an operator killed between the two loses it
    // (events are best effort), so the next kill waits for it.
    fakekube::wait_until(Duration::from_secs(30), || {
        (!c.events("killed", "RunSucceeded").is_empty()).then_some(())
    })
    .expect("the run's event");
    // Once more: the run stays recorded once.
    c.restart_operator();
    std::thread::sleep(Duration::from_secs(2));
    let profile = c.profile("killed");
    let runs = profile["status"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{:#}", profile["status"]);
    let text = c.metrics();
    assert_eq!(
        metric(
            &text,
            r#"mailvault_runs_total{profile_namespace="mail",profile="killed",result="Succeeded"}"#
        ),
        None,
        "this operator recorded no run: {text}"
    );
    assert_eq!(c.events("killed", "RunSucceeded").len(), 1);
}

#[test]
fn a_store_that_vanishes_with_the_pod_is_refused_and_nothing_deleted() {
    let Some(c) = Cluster::start() else {
        return;
    };
    let dovecot = Dovecot::start().expect("dovecot starts");
    dovecot.add_user("lea@example.org", "lea-pw").unwrap();
    // Read mail, which the deletion rules would delete once archived.
    for n in 0..5 {
        let m = mail::message(9, n, "sender@example.net", "lea@example.org", "Old", 1500);
        dovecot
            .deliver("lea@example.org", "INBOX", &m, DATE, &["\\Seen"])
            .unwrap();
    }
    let extra =
        "  store:\n    local:\n      path: /tmp/archive\n  deletion:\n    mode: AfterArchiving\n  \
                 trigger:\n    manual: go\n";
    apply_csv_profile(
        &c,
        "scratch",
        "Login;Password\nlea@example.org;lea-pw\n",
        &dovecot,
        extra,
    );
    let last = c.wait_run("scratch", "scratch-m-go");
    assert_eq!(last["result"], "Failed");
    let profile = c.profile("scratch");
    let ready = condition(&profile, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "StoreNotDurable");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("/tmp/archive") && message.contains("persistentVolumeClaim"),
        "{message}"
    );
    assert!(c.list("jobs", "mailvault.io/profile=scratch").is_empty());
    assert!(c.list("pods", "").is_empty());
    let count = dovecot
        .doveadm(&[
            "mailbox",
            "status",
            "-u",
            "lea@example.org",
            "messages",
            "INBOX",
        ])
        .unwrap();
    assert!(count.trim().ends_with(" messages=5"), "{count}");
    let text = c.metrics();
    assert_eq!(
        metric(
            &text,
            r#"mailvault_profile_ready{profile_namespace="mail",profile="scratch"}"#
        ),
        Some(0.0)
    );
}

#[test]
fn ready_only_once_the_watches_run_and_every_request_names_the_operator() {
    let Some(script) = fakekube_script() else {
        return;
    };
    let kube = FakeKube::start(&script, &[("mailvault", Path::new(BINARY))]).unwrap();
    // The operator's Deployment as installed, without the CRDs yet.
    let manifests = repository().join("manifests");
    let built = kube
        .kubectl(&["kustomize", manifests.to_str().unwrap()], None)
        .unwrap();
    let all = String::from_utf8(built.stdout).unwrap();
    let without_crds: Vec<&str> = all
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: CustomResourceDefinition"))
        .collect();
    let out = kube
        .kubectl(
            &["apply", "--server-side", "-f", "-"],
            Some(&without_crds.join("\n---\n")),
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = kube.data_dir().join("operator.log");
    let operator = Operator::start(&kube, Path::new(BINARY), &log).unwrap();
    // Alive, but not ready: it cannot watch what does not exist yet.
    let alive = fakekube::wait_until(Duration::from_secs(20), || {
        operator.get("/healthz").ok().filter(|r| r.0 == 200)
    });
    assert!(alive.is_some());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(operator.get("/readyz").unwrap().0, 503);
    let out = kube
        .kubectl(
            &["apply", "--server-side", "-k", manifests.to_str().unwrap()],
            None,
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ready = fakekube::wait_until(Duration::from_secs(60), || operator.ready().then_some(()));
    assert!(ready.is_some(), "{}", operator.log());
    let log = kube.requests_log();
    let ua = format!("ua=mailvault-operator/{}", env!("CARGO_PKG_VERSION"));
    assert!(log.lines().any(|l| l.ends_with(&ua)), "{log}");
    check_requests(&kube);
}

/// A Microsoft 365 set: the app's Secret made with `kubectl create secret`, the users read
/// from Microsoft Graph (the test kit's fake cloud) by the operator, and each worker gets
/// its own token with the Secret mounted as files and logs in with XOAUTH2 to a Dovecot
/// that accepts nothing else; then a set with an old secret, whose run fails once, in the
/// provider's words; then a Google Workspace set ([`google_workspace_set`]).
#[test]
fn an_oauth2_set_archives_with_tokens_the_worker_gets_itself() {
    let Some(c) = Cluster::start() else {
        return;
    };
    const CLIENT_ID: &str = "8a3f2c1e-5b7d-4e9f-a0b1-c2d3e4f5a6b7";
    const TENANT: &str = "contoso.onmicrosoft.com";
    const SECRET: &str = "Qx8~cluster.Secret_never-shown";
    let cloud = Cloud::start().unwrap();
    let users = ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"];
    cloud.update(|s| {
        s.tenants.push(Tenant {
            id: "7d1a3f52-0a5e-4d8b-9c11-2b6c0f1e9a01".into(),
            domains: vec![TENANT.into()],
            apps: vec![App::consented(
                CLIENT_ID,
                SECRET,
                &["IMAP.AccessAsApp", "User.Read.All"],
            )],
        });
        s.users = users
            .iter()
            .enumerate()
            .map(|(i, u)| User::new(&format!("a000000{i}-0000-0000-0000-000000000000"), u))
            .collect();
    });
    let mut login = OAuth2Login::new(&cloud.introspection_url());
    login.mechanisms = vec!["xoauth2".into()];
    let dovecot = Dovecot::start_with(DovecotOptions {
        oauth2: Some(login),
        ..DovecotOptions::default()
    })
    .unwrap();
    for (i, user) in users.iter().enumerate() {
        dovecot.add_user(user, "unused-user-pw").unwrap();
        deliver(&dovecot, user, 40 + i as u64, 1 + i as u64);
        dovecot
            .grant_oauth2(&app_principal(CLIENT_ID), user)
            .unwrap();
    }
    c.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "m365-app",
        &format!("--from-literal=clientSecret={SECRET}"),
    ]);
    let set = format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: m365
  namespace: {NS}
spec:
  oauth2:
    provider: Microsoft365
    tenantID: {TENANT}
    clientID: {CLIENT_ID}
    tokenURL: {url}/{TENANT}/oauth2/v2.0/token
    credentialsSecretRef:
      name: m365-app
    directory:
      microsoftGraph:
        endpoint: {url}
",
        url = cloud.http_url()
    );
    let extra = format!(
        "{}  maxParallelJobs: 2\n  trigger:\n    manual: go\n",
        claim_store("m365")
    );
    c.apply(&format!(
        "{CLAIM}{set}{}",
        profile_yaml("m365", "m365", &dovecot, &extra)
    ));
    let last = c.wait_run("m365", "m365-m-go");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["mailboxes"], 3);
    assert_eq!(last["totals"]["archived"], 6);
    let set = c.get("mailboxset", "m365").unwrap();
    assert_eq!(set["status"]["mode"], "oauth2");
    assert_eq!(set["status"]["mailboxes"], 3);
    assert_eq!(set["status"]["lastSync"]["usersFound"], 3);
    // The Secret reached the pods as files: mounted, never in the Job or a plan.
    let job = c.get("job", "m365-m-go").unwrap();
    let text = job.to_string();
    assert!(text.contains("oauth2-credentials") && text.contains("m365-app"));
    assert!(!text.contains(SECRET));
    let log = std::fs::read_to_string(dovecot.dir().join("dovecot.log")).unwrap();
    assert_eq!(log.matches("method=XOAUTH2").count(), 3, "{log}");
    // Two shards, each worker with its own IMAP token; the operator's for Graph (each
    // time it reads the set: on its own, and to plan the run).
    let scopes = cloud.update(|s| {
        s.requests_to(&format!("/{TENANT}/oauth2/v2.0/token"))
            .iter()
            .filter_map(|r| r.field("scope").map(str::to_string))
            .collect::<Vec<_>>()
    });
    let imap = scopes
        .iter()
        .filter(|s| *s == "https://outlook.office365.com/.default")
        .count();
    assert_eq!(imap, 2, "{scopes:?}");
    assert!(scopes.len() > imap, "{scopes:?}");

    c.trigger("m365", "again");
    let last = c.wait_run("m365", "m365-m-again");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["archived"], 0);
    assert_eq!(last["totals"]["alreadyArchived"], 6);
    c.assert_never_shown(Some(&cloud), "m365", "m365-m-again", &[SECRET]);

    // A set of listed users whose app secret is an old one: each worker asks for a
    // token once, before any login, and the run fails with Microsoft's code and what to
    // do; no mailbox is tried.
    const OLD: &str = "Qx8~an.old_secret-value";
    c.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "old-app",
        &format!("--from-literal=clientSecret={OLD}"),
    ]);
    let before = cloud.update(|s| s.introspections);
    let set = format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: old
  namespace: {NS}
spec:
  oauth2:
    provider: Microsoft365
    tenantID: {TENANT}
    clientID: {CLIENT_ID}
    tokenURL: {}/{TENANT}/oauth2/v2.0/token
    credentialsSecretRef:
      name: old-app
    staticUsers:
      - name: alice
        email: alice@contoso.com
",
        cloud.http_url()
    );
    let extra = format!("{}  trigger:\n    manual: go\n", claim_store("old"));
    c.apply(&format!(
        "{set}{}",
        profile_yaml("old", "old", &dovecot, &extra)
    ));
    let last = c.wait_run("old", "old-m-go");
    assert_eq!(last["result"], "Failed", "{last:#}");
    let message = last.to_string();
    assert!(
        message.contains("no OAuth2 token for any mailbox") && message.contains("AADSTS7000215"),
        "{last:#}"
    );
    assert!(!c.profile("old").to_string().contains(OLD));
    assert_eq!(
        cloud.update(|s| s.introspections),
        before,
        "no login was tried"
    );

    google_workspace_set(&c);
}

/// A Google Workspace set, in the cluster of the Microsoft 365 test (a fakekube of its own
/// would cost seconds): the service account's key file as the console downloads it, made a
/// Secret with `kubectl create secret --from-file`; the users read from the Directory API by
/// the operator (acting as an administrator), a token per user asked for by the worker of
/// that user's shard, OAUTHBEARER logins to a Dovecot that accepts nothing else; a re-run
/// stores nothing new; the key is shown nowhere.
fn google_workspace_set(c: &Cluster) {
    let cloud = Cloud::start().unwrap();
    let account = ServiceAccount {
        client_email: "archiver@mailvault-test.iam.gserviceaccount.com".into(),
        client_id: "104857600123456789012".into(),
        key: TestKey::generate().unwrap(),
        delegated_scopes: vec![GOOGLE_IMAP_SCOPE.into(), GOOGLE_DIRECTORY_SCOPE.into()],
        disabled: false,
    };
    let users = ["ann@example.org", "ben@example.org", "boss@example.org"];
    let gone = "gone@example.org";
    cloud.update(|s| {
        s.service_accounts.push(account.clone());
        s.users = users
            .iter()
            .map(|u| User {
                is_admin: u.starts_with("boss@"),
                ..User::new(&format!("id-{u}"), u)
            })
            .collect();
        s.users.push(User {
            suspended: true,
            ..User::new("id-gone", gone)
        });
    });
    let mut login = OAuth2Login::new(&cloud.introspection_url());
    login.mechanisms = vec!["oauthbearer".into()];
    let dovecot = Dovecot::start_with(DovecotOptions {
        oauth2: Some(login),
        ..DovecotOptions::default()
    })
    .unwrap();
    for (i, user) in users.iter().chain([&gone]).enumerate() {
        dovecot.add_user(user, "unused-user-pw").unwrap();
        deliver(&dovecot, user, 60 + i as u64, 1 + i as u64);
        // Delegation: a token for the user opens the user's own mailbox.
        dovecot.grant_oauth2(&user_principal(user), user).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("mailvault-test-0a1b2c3d4e5f.json");
    std::fs::write(
        &key_file,
        account.json(&format!("{}/token", cloud.http_url())),
    )
    .unwrap();
    c.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "workspace-sa",
        &format!("--from-file=serviceAccount.json={}", key_file.display()),
    ]);
    let set = format!(
        "---
apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: workspace
  namespace: {NS}
spec:
  oauth2:
    provider: Google
    credentialsSecretRef:
      name: workspace-sa
    directory:
      googleDirectory:
        endpoint: {}
        customer: my_customer
        adminEmail: boss@example.org
",
        cloud.http_url()
    );
    let extra = format!(
        "{}  maxParallelJobs: 2\n  trigger:\n    manual: go\n",
        claim_store("workspace")
    );
    c.apply(&format!(
        "{set}{}",
        profile_yaml("workspace", "workspace", &dovecot, &extra)
    ));
    let last = c.wait_run("workspace", "workspace-m-go");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(
        last["totals"]["mailboxes"], 3,
        "the suspended user is left out"
    );
    assert_eq!(last["totals"]["archived"], 1 + 2 + 3);
    let set = c.get("mailboxset", "workspace").unwrap();
    assert_eq!(set["status"]["mode"], "oauth2");
    assert_eq!(set["status"]["mailboxes"], 3);
    assert_eq!(set["status"]["lastSync"]["usersFound"], 3);
    assert!(!set["status"].to_string().contains(gone), "{set:#}");
    let job = c.get("job", "workspace-m-go").unwrap().to_string();
    assert!(job.contains("oauth2-credentials") && job.contains("workspace-sa"));
    let key_line = account.key.key_pem.lines().nth(1).unwrap().to_string();
    assert!(!job.contains(&key_line));
    let log = std::fs::read_to_string(dovecot.dir().join("dovecot.log")).unwrap();
    assert_eq!(log.matches("method=OAUTHBEARER").count(), 3, "{log}");
    // Each worker asked for a mail token for each of its users, once; the operator for
    // directory tokens, as the administrator and for reading users only.
    let tokens = cloud.update(|s| s.issued.clone());
    let mut mail_users: Vec<String> = tokens
        .iter()
        .filter(|t| t.scopes.iter().any(|s| s == GOOGLE_IMAP_SCOPE))
        .filter_map(|t| match &t.principal {
            Principal::Delegated { user, .. } => user.clone(),
            _ => None,
        })
        .collect();
    mail_users.sort();
    assert_eq!(mail_users, users, "{tokens:#?}");
    assert!(tokens.iter().all(|t| {
        t.scopes.iter().any(|s| s == GOOGLE_IMAP_SCOPE)
            || (t.scopes == [GOOGLE_DIRECTORY_SCOPE]
                && t.principal
                    == Principal::Delegated {
                        client_email: account.client_email.clone(),
                        user: Some("boss@example.org".into()),
                    })
    }));

    c.trigger("workspace", "again");
    let last = c.wait_run("workspace", "workspace-m-again");
    assert_eq!(last["result"], "Succeeded", "{last:#}");
    assert_eq!(last["totals"]["archived"], 0);
    assert_eq!(last["totals"]["alreadyArchived"], 6);
    c.assert_never_shown(Some(&cloud), "workspace", "workspace-m-again", &[&key_line]);
}

/// `n` directory users under [`slapd::PEOPLE_DN`], as LDIF.
fn people(n: usize) -> String {
    let mut ldif = format!(
        "dn: {}\nobjectClass: organizationalUnit\nou: people\n\n",
        slapd::PEOPLE_DN
    );
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: uid=user{i:06},{people}\nobjectClass: inetOrgPerson\nuid: user{i:06}\n\
             cn: User {i}\nsn: {i}\nmail: user{i:06}@university.example.org\n\n",
            people = slapd::PEOPLE_DN
        ));
    }
    ldif
}

/// A directory of `n` users synced, planned and started through the operator: every
/// object it writes stays small, and the run's pods stay few.
fn directory_of(n: usize) {
    let Some(c) = Cluster::start() else {
        return;
    };
    let t = Instant::now();
    let ldap = Slapd::start_with_entries(&people(n)).expect("slapd starts");
    eprintln!(
        "{n} users loaded into slapd in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let extra = format!(
        // The image is not one fakekube runs: the pods wait, as the point is the start.
        "{}  maxParallelJobs: 8\n  jobTemplate:\n    image: registry.example.org/not-run:1\n  \
         trigger:\n    manual: go\n",
        claim_store("big")
    );
    let dovecot_stub = Dovecot::start().expect("dovecot starts");
    let set = directory_set_yaml("big", &ldap, &dovecot_stub, false);
    let t = Instant::now();
    c.apply(&format!(
        "{CLAIM}{set}{}",
        profile_yaml("big", "big", &dovecot_stub, &extra)
    ));
    let profile = c.wait_profile("big", Duration::from_secs(600), "the run to start", |p| {
        p["status"]["activeRun"]["name"] == "big-m-go" || p["status"]["lastRun"].is_object()
    });
    let started = t.elapsed();
    assert!(
        profile["status"]["lastRun"].is_null(),
        "{:#}",
        profile["status"]
    );
    assert_eq!(profile["status"]["activeRun"]["mailboxes"], n);
    // The operator's own account of the time spent (from its log).
    let log = c.operator().log();
    let timing = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["fields"]["millis"].as_u64())
            .next_back()
    };
    eprintln!(
        "{n} users: trigger to started run {:.1} s (directory sync and resolution {:?} ms, \
         plan and Secrets {:?} ms)",
        started.as_secs_f64(),
        timing("resolved the MailboxSet"),
        timing("made the run plan"),
    );

    let job = c.get("job", "big-m-go").expect("the run's Job");
    let job_bytes = job.to_string().len();
    let completions = job["spec"]["completions"].as_u64().unwrap();
    assert!(completions <= 200, "{completions} pods for {n} mailboxes");
    assert!(job_bytes < 32 * 1024, "the Job is {job_bytes} bytes");
    let secrets = c.list("secrets", "mailvault.io/run=big-m-go");
    assert!(!secrets.is_empty());
    let mut plan_bytes = 0;
    for s in &secrets {
        let bytes: usize = s["data"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().len() * 3 / 4)
            .sum();
        assert!(bytes <= 512 * 1024, "a plan Secret holds {bytes} bytes");
        plan_bytes += bytes;
    }
    let set = c.get("mailboxset", "big").unwrap();
    assert_eq!(set["status"]["mailboxes"], n);
    let sync = &set["status"]["lastSync"];
    assert_eq!(sync["usersFound"], n);
    assert!(sync["users"].is_null() && sync["userSample"].as_array().unwrap().len() == 1000);
    let profile = c.profile("big");
    for (what, object) in [("ArchiveProfile", &profile), ("MailboxSet", &set)] {
        let bytes = object.to_string().len();
        assert!(bytes < 100 * 1024, "the {what} is {bytes} bytes");
    }
    eprintln!(
        "{n} users: {completions} pods of about {} mailboxes; {} plan Secrets, {} KiB of \
         plan; Job {} KiB, ArchiveProfile {} KiB, MailboxSet {} KiB",
        n as u64 / completions,
        secrets.len(),
        plan_bytes / 1024,
        job_bytes / 1024,
        profile.to_string().len() / 1024,
        set.to_string().len() / 1024
    );
}

#[test]
fn a_directory_of_a_hundred_thousand_users_is_synced_planned_and_started() {
    directory_of(100_000);
}
