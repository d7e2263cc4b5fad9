//! `mailvault worker` end to end: a run plan as the operator's Job mounts it, one shard per
//! index, against a real, private Dovecot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files_below;
use mailvault::resources::{LocalStoreSpec, StoreSpec};
use mailvault::runplan::{plan_files, RunPlan, PLAN_KEY};
use mailvault::sensitive::Sensitive;
use mailvault::sources::Mailbox;
use mailvault_testkit::dovecot::Dovecot;
use mailvault_testkit::mail;

const PW: &str = "user-secret-pw";
const DATE: i64 = 1_736_157_600;

fn master(dovecot: &Dovecot, user: &str, password: &str) -> Mailbox {
    Mailbox {
        login: dovecot.master_user().to_string(),
        authorization_identity: Some(user.to_string()),
        password: Sensitive::new(password),
        email: Some(user.to_string()),
        user: user.split('@').next().unwrap().to_string(),
        oauth2: None,
    }
}

/// A plan for `shards` against `dovecot` over STARTTLS with its CA, archiving into `store`,
/// written into `dir` as the plan Secrets are mounted; returns the plan file.
fn plan(dovecot: &Dovecot, store: &Path, dir: &Path, shards: Vec<Vec<Mailbox>>) -> PathBuf {
    let plan = RunPlan {
        namespace: "mail".into(),
        profile: "nightly".into(),
        run: "nightly-202501060200".into(),
        server: serde_json::from_value(serde_json::json!({
            "host": "localhost",
            "port": dovecot.imap_port(),
            "security": "StartTls",
            "timeoutSeconds": 10,
        }))
        .unwrap(),
        folders: Default::default(),
        filter: Default::default(),
        deletion: Default::default(),
        server_ca_pem: Some(dovecot.ca_pem()),
        store: Some(StoreSpec {
            local: Some(LocalStoreSpec {
                path: Some(store.to_str().unwrap().to_string()),
                persistent_volume_claim: None,
            }),
            s3: None,
            encryption: None,
        }),
        store_durable: true,
        warnings: vec!["a warning from the operator".into()],
        shards: shards.len() as u32,
        oauth2: None,
        oauth2_ca_pem: None,
    };
    for (key, bytes) in plan_files(&plan, shards) {
        std::fs::write(dir.join(key), bytes).unwrap();
    }
    dir.join(PLAN_KEY)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    summary: serde_json::Value,
}

/// Runs the worker like a Job's pod: the index from JOB_COMPLETION_INDEX.
fn worker(dir: &Path, plan_file: &Path, index: u32) -> Run {
    let log = dir.join(format!("termination-log-{index}"));
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(["worker", "--plan", plan_file.to_str().unwrap()])
        .arg("--termination-log")
        .arg(&log)
        .env("JOB_COMPLETION_INDEX", index.to_string())
        .output()
        .unwrap();
    let message = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(message.len() <= 4000, "{} bytes", message.len());
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        summary: serde_json::from_str(&message)
            .unwrap_or_else(|e| panic!("termination message {message:?}: {e}")),
    }
}

#[test]
fn each_index_archives_its_shard_and_reports_a_summary() {
    let users = ["alice@example.org", "bob@example.org", "carol@example.org"];
    let dovecot = Dovecot::start().expect("dovecot starts");
    for (i, user) in users.iter().enumerate() {
        dovecot.add_user(user, PW).unwrap();
        for n in 0..=i as u64 {
            let m = mail::message(7, 10 * i as u64 + n, "s@example.net", user, "Hi", 2000);
            dovecot.deliver(user, "INBOX", &m, DATE, &[]).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let mp = dovecot.master_password().to_string();
    let plan_file = plan(
        &dovecot,
        &store,
        dir.path(),
        vec![
            vec![
                master(&dovecot, users[0], &mp),
                master(&dovecot, users[2], &mp),
            ],
            vec![master(&dovecot, users[1], &mp)],
        ],
    );

    let first = worker(dir.path(), &plan_file, 0);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.summary["index"], 0);
    assert_eq!(first.summary["result"], "Succeeded");
    assert_eq!(first.summary["totals"]["mailboxes"], 2);
    assert_eq!(first.summary["totals"]["archived"], 4);
    let key = first.summary["protocol"].as_str().unwrap().to_string();
    assert!(key.starts_with("runs/mail"), "{key}");
    assert!(store.join(&key).is_file(), "{key}");
    let second = worker(dir.path(), &plan_file, 1);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.summary["totals"]["archived"], 2);

    // Each shard's full protocol is in the store.
    assert_eq!(files_below(&store.join("runs")).len(), 2);
    let protocol: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join(&key)).unwrap()).unwrap();
    assert_eq!(protocol["runId"], "nightly-202501060200");
    assert_eq!(protocol["mailboxes"].as_array().unwrap().len(), 2);
    // What the operator found while planning is in every shard's protocol.
    assert!(protocol["warnings"]
        .to_string()
        .contains("a warning from the operator"));
    // No password in anything the worker wrote or printed.
    for text in [&first.stdout, &first.stderr, &protocol.to_string()] {
        assert!(!text.contains(&mp));
    }

    // Re-running an index (a retried pod) archives nothing twice.
    let again = worker(dir.path(), &plan_file, 0);
    assert_eq!(again.code, 0);
    assert_eq!(again.summary["totals"]["archived"], 0);
    assert_eq!(again.summary["totals"]["alreadyArchived"], 4);
}

#[test]
fn wrong_passwords_fail_the_index_for_good() {
    let dovecot = Dovecot::start().expect("dovecot starts");
    dovecot.add_user("dave@example.org", PW).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not-the-master-password";
    let plan_file = plan(
        &dovecot,
        &dir.path().join("archive"),
        dir.path(),
        vec![vec![master(&dovecot, "dave@example.org", wrong)]],
    );
    let run = worker(dir.path(), &plan_file, 0);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary["result"], "Failed");
    assert_eq!(run.summary["failed"][0]["mailbox"], "dave@example.org");
    let reason = run.summary["failed"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("login"), "{reason}");
    assert!(!run.summary.to_string().contains(wrong));
    assert!(!run.stdout.contains(wrong) && !run.stderr.contains(wrong));
}

#[test]
fn an_invalid_plan_or_index_is_reported_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, r#"{"passwords": ["hunter2"]"#).unwrap();
    let run = worker(dir.path(), &plan_file, 0);
    assert_eq!(run.code, 2);
    assert_eq!(run.summary["result"], "Failed");
    assert!(run.summary["error"].as_str().unwrap().contains("invalid"));
    assert!(!run.summary.to_string().contains("hunter2"));
    assert!(!run.stderr.contains("hunter2"));

    let dovecot = Dovecot::start().expect("dovecot starts");
    let plan_file = plan(
        &dovecot,
        &dir.path().join("archive"),
        dir.path(),
        vec![vec![]],
    );
    let run = worker(dir.path(), &plan_file, 5);
    assert_eq!(run.code, 2);
    assert!(run.summary["error"]
        .as_str()
        .unwrap()
        .contains("no index 5"));
}
