//! `--log-format json` (what the operator's Deployment and Jobs use): standard error then
//! carries only JSON lines, the command's own last words included, whichever command fails
//! and however.

mod common;

use std::process::Command;

use common::json_lines;

/// Runs the binary with JSON logs and no cluster to find; returns the exit code and the
/// JSON lines of stderr.
fn json_run(args: &[&str], dir: &std::path::Path) -> (i32, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .arg("--log-format")
        .arg("json")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("KUBECONFIG", dir.join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("MAILVAULT_LOG_FORMAT")
        .env("MAILVAULT_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap_or(-1), json_lines(&stderr))
}

fn messages(lines: &[serde_json::Value]) -> String {
    lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_failure_is_reported_in_json_only() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: mailvault.io/v1alpha1\nkind: ArchiveProfile\nspec: [\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();

    // Invalid input: exit 2, the reason as an ERROR line.
    let (code, lines) = json_run(&["run", "-f", bad], dir.path());
    assert_eq!(code, 2);
    assert!(lines.iter().any(|l| l["level"] == "ERROR"), "{lines:?}");
    assert!(messages(&lines).contains("bad.yaml"), "{lines:?}");
    let (code, lines) = json_run(&["mailboxes", "-f", bad], dir.path());
    assert_eq!(code, 2);
    assert!(messages(&lines).contains("bad.yaml"), "{lines:?}");

    // No archive where one is expected.
    let (code, lines) = json_run(&["verify", "--store", "nowhere"], dir.path());
    assert_eq!(code, 2);
    assert!(messages(&lines).contains("nowhere is not a mailvault archive"));

    // A worker whose plan is missing.
    let log = dir.path().join("termination-log");
    let (code, lines) = json_run(
        &[
            "worker",
            "--plan",
            "missing/plan.json",
            "--index",
            "0",
            "--termination-log",
            log.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(messages(&lines).contains("missing/plan.json"), "{lines:?}");
    // The worker's lines carry its shard.
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["index"] == 0 || l["spans"][0]["index"] == 0),
        "{lines:?}"
    );

    // An operator without a cluster.
    let (code, lines) = json_run(&["operator", "--worker-image", "x"], dir.path());
    assert_eq!(code, 1);
    assert!(
        messages(&lines).contains("connecting to Kubernetes"),
        "{lines:?}"
    );
}

#[test]
fn a_run_logs_in_json_with_its_profile_run_and_mailbox() {
    use common::{csv_yaml, write_yaml, Connection};
    use mailvault_testkit::dovecot::Dovecot;

    let dovecot = Dovecot::start().expect("dovecot starts");
    let (good, bad) = ("gina@example.org", "hal@example.org");
    let (pw, wrong) = ("gina-pw-7c1", "Wr0ng-hal-pw-2b9");
    dovecot.add_user(good, pw).unwrap();
    dovecot.add_user(bad, "hal-real-pw").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = format!("login,password,email\n{good},{pw},\n{bad},{wrong},\n");
    let file = write_yaml(
        dir.path(),
        &csv_yaml(&dovecot, Connection::StartTls, &csv, ""),
    );
    let store = dir.path().join("archive");
    let out = Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(["--log-format", "json", "run", "-f"])
        .arg(&file)
        .arg("--store")
        .arg(&store)
        .env("MAILVAULT_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains(wrong) && !stderr.contains(pw), "{stderr}");
    let lines = json_lines(&stderr);
    // Each mailbox's lines name the mailbox, inside the run of the profile.
    for mailbox in [good, bad] {
        let line = lines
            .iter()
            .find(|l| l["span"]["mailbox"] == mailbox)
            .unwrap_or_else(|| panic!("no line of {mailbox}: {stderr}"));
        let run = line["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "run")
            .unwrap_or_else(|| panic!("no run span: {line}"));
        assert_eq!(run["profile"], "test");
        assert!(run["run"].as_str().unwrap().starts_with("test-"), "{run}");
    }
}
