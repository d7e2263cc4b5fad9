//! The run contract: what the operator and its workers agree on. The operator writes a
//! run's plan ([`RunPlan`] and each shard's mailboxes, [`plan_files`]) into Secrets that the
//! run's Job mounts at [`PLAN_DIR`]; each worker reads its shard ([`read_plan`],
//! [`read_shard`]), archives it, saves its protocol under [`protocol_id`] and leaves a
//! [`ShardSummary`] as its termination message, ending with one of the exit codes below;
//! the operator adds the summaries up ([`aggregate`]) into the profile's status.
//!
//! The plan holds passwords, so it only ever travels as a Secret mounted as a file: never
//! in environment variables, arguments, ConfigMaps or logs.

mod summary;

use std::io::Write;
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

pub use summary::{aggregate, RunFacts, ShardSummary};

use crate::engine::{FolderSelector, RunParts, RunSettings};
use crate::protocol::{RunProtocol, RunResult};
use crate::resources::{
    DeletionMode, DeletionSpec, FilterSpec, FolderSpec, OAuth2Spec, ServerSpec, StoreSpec,
};
use crate::sensitive::Sensitive;
use crate::sources::Mailbox;

/// Every mailbox of the shard succeeded.
pub const EXIT_SUCCEEDED: u8 = 0;
/// Some mailbox failed in a way a retry may fix (server down, timeouts, store errors).
pub const EXIT_FAILED: u8 = 1;
/// The plan is missing or invalid: no retry will help.
pub const EXIT_INVALID_PLAN: u8 = 2;
/// Every failed mailbox was rejected at login (wrong password): no retry will help.
pub const EXIT_LOGIN_REJECTED: u8 = 3;

/// Where the run's plan Secrets are mounted in its pods, all in one directory.
pub const PLAN_DIR: &str = "/etc/mailvault/plan";
/// The key of the plan in its Secret, and the file name it is mounted as.
pub const PLAN_KEY: &str = "plan.json";
/// Where an S3 store's credentials Secret is mounted in the worker's pod.
pub const STORE_CREDENTIALS_DIR: &str = "/var/run/mailvault/store-credentials";
/// Where the Secret of `spec.store.encryption.keySecretRef` is mounted in run pods.
pub const STORE_KEYS_DIR: &str = "/var/run/mailvault/store-keys";
/// Where an OAuth2 set's credentials Secret is mounted in the worker's pod.
pub const OAUTH2_CREDENTIALS_DIR: &str = "/var/run/mailvault/oauth2-credentials";
/// Where the claim of `spec.store.local.persistentVolumeClaim` is mounted in the pods.
pub const ARCHIVE_DIR: &str = "/var/lib/mailvault/archive";

/// The key (and file name, next to the plan) of shard `index`'s mailboxes.
pub fn shard_key(index: u32) -> String {
    format!("shard-{index}.json.gz")
}

/// What one run of a profile does, for every shard (Job index). Written by the operator
/// into the run's plan Secrets, with each shard's mailboxes in a file of its own
/// ([`plan_files`]): a worker reads only its shard, and a plan of any number of mailboxes
/// is split over as many Secrets as it needs.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunPlan {
    pub namespace: String,
    pub profile: String,
    /// The run's name (and its Job's).
    pub run: String,
    pub server: ServerSpec,
    #[serde(default)]
    pub folders: FolderSpec,
    #[serde(default)]
    pub filter: FilterSpec,
    #[serde(default)]
    pub deletion: DeletionSpec,
    /// The PEM from `spec.server.caSecretRef`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ca_pem: Option<String>,
    /// The profile's store; opened by the worker, so that store credentials never pass
    /// through the operator's memory beyond a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSpec>,
    /// Whether the store outlives the pod (S3, a claim, a volume the profile mounts). The
    /// operator refuses other stores; a plan without this is refused when it asks to
    /// delete mail, so that nothing is deleted whose only copy could vanish.
    #[serde(default)]
    pub store_durable: bool,
    /// What the operator found while planning that a person must see (an unencrypted
    /// directory), for every shard's protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How many shards the run has.
    pub shards: u32,
    /// For an OAuth2 set: its settings. Each worker gets its tokens itself, with the
    /// credentials Secret mounted at [`OAUTH2_CREDENTIALS_DIR`]; no token or secret is in
    /// the plan (its mailboxes carry no password then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
    /// The PEM from `spec.oauth2.caSecretRef`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_ca_pem: Option<String>,
}

/// A mailbox in a shard file. Not `Debug`: it holds the password.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlanMailbox {
    login: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authorization_identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    user: String,
    password: String,
}

/// The files of a run plan, as keys of its Secrets and files of the mounted directory:
/// the plan itself ([`PLAN_KEY`]) and each shard's mailboxes as gzip-compressed JSON
/// ([`shard_key`]). Compressed, because a master password or a domain repeated for
/// every mailbox shrinks to almost nothing: 100,000 directory users fit a few Secrets.
pub fn plan_files(plan: &RunPlan, shards: Vec<Vec<Mailbox>>) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        PLAN_KEY.to_string(),
        serde_json::to_vec(plan).expect("plans serialize"),
    )];
    for (index, shard) in shards.into_iter().enumerate() {
        let mailboxes: Vec<PlanMailbox> = shard
            .into_iter()
            .map(|m| PlanMailbox {
                password: m.password.expose().to_string(),
                login: m.login,
                authorization_identity: m.authorization_identity,
                email: m.email,
                user: m.user,
            })
            .collect();
        let json = serde_json::to_vec(&mailboxes).expect("mailboxes serialize");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&json).expect("writing to memory");
        files.push((
            shard_key(index as u32),
            gz.finish().expect("writing to memory"),
        ));
    }
    files
}

impl RunPlan {
    /// The engine's settings for a shard of this run: one mailbox at a time (the Job runs
    /// the shards in parallel), with the operator's warnings.
    pub fn settings(&self) -> RunSettings {
        let mut settings = RunSettings::from_parts(
            self.namespace.clone(),
            self.profile.clone(),
            self.run.clone(),
            RunParts {
                server: &self.server,
                folders: &self.folders,
                filter: &self.filter,
                deletion: &self.deletion,
            },
            self.server_ca_pem.clone().map(String::into_bytes),
        );
        settings.warnings.extend(self.warnings.iter().cloned());
        settings
    }

    /// Checks what the worker relies on before it connects anywhere.
    pub fn check(&self) -> Result<(), String> {
        FolderSelector::new(&self.folders)
            .map(|_| ())
            .map_err(|e| format!("folder patterns: {e}"))?;
        if self.deletion.mode == DeletionMode::AfterArchiving && !self.store_durable {
            return Err(
                "the plan asks to delete archived mail from the server, but its store \
                        does not outlive the pod; nothing was archived or deleted"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// The mailboxes of shard `index`, from its file in `dir` (where the plan is).
pub fn read_shard(dir: &Path, plan: &RunPlan, index: u32) -> Result<Vec<Mailbox>, String> {
    if index >= plan.shards {
        return Err(format!(
            "the plan has {} shards, there is no index {index}",
            plan.shards
        ));
    }
    let path = dir.join(shard_key(index));
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("reading shard {index}'s mailboxes {}: {e}", path.display()))?;
    // The error names the place, never a value: a value could be a password.
    let mailboxes: Vec<PlanMailbox> =
        serde_json::from_reader(GzDecoder::new(file)).map_err(|e| {
            format!(
                "shard {index}'s mailboxes {} are invalid at line {} column {} ({:?})",
                path.display(),
                e.line(),
                e.column(),
                e.classify()
            )
        })?;
    Ok(mailboxes
        .into_iter()
        .map(|m| Mailbox {
            login: m.login,
            authorization_identity: m.authorization_identity,
            password: Sensitive::new(m.password),
            email: m.email,
            user: m.user,
            oauth2: None,
        })
        .collect())
}

/// The store key of one shard's protocol: `runs/<namespace>/<profile>/<run>-<index>.json`.
pub fn protocol_id(run: &str, index: u32) -> String {
    format!("{run}-{index}")
}

/// The exit code of a shard's worker: whether a retry of the shard may help. A protocol
/// that could not be saved is a failure a retry may fix; so is any failed mailbox that was
/// not rejected at login.
pub fn exit_code(protocol: &RunProtocol, saved: bool) -> u8 {
    if protocol.result == RunResult::Succeeded {
        return if saved { EXIT_SUCCEEDED } else { EXIT_FAILED };
    }
    let rejected = protocol
        .mailboxes
        .iter()
        .filter(|m| m.result != RunResult::Succeeded)
        .all(|m| m.login_rejected);
    if rejected && saved {
        EXIT_LOGIN_REJECTED
    } else {
        EXIT_FAILED
    }
}

/// The run plan from its file.
pub fn read_plan(path: &Path) -> Result<RunPlan, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("reading the plan {}: {e}", path.display()))?;
    // The error names the field, never a value: a value could be a password.
    serde_json::from_slice::<RunPlan>(&bytes).map_err(|e| {
        format!(
            "the plan {} is invalid at line {} column {} ({:?})",
            path.display(),
            e.line(),
            e.column(),
            e.classify()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(user: &str, password: &str) -> Mailbox {
        Mailbox {
            login: "master".into(),
            authorization_identity: Some(format!("{user}@x")),
            password: Sensitive::new(password),
            email: Some(format!("{user}@x")),
            user: user.into(),
            oauth2: None,
        }
    }

    fn plan(shards: u32) -> RunPlan {
        RunPlan {
            namespace: "mail".into(),
            profile: "p".into(),
            run: "p-1".into(),
            server: serde_json::from_value(serde_json::json!({"host": "imap"})).unwrap(),
            folders: FolderSpec::default(),
            filter: FilterSpec::default(),
            deletion: DeletionSpec::default(),
            server_ca_pem: None,
            store: None,
            store_durable: true,
            warnings: vec![],
            shards,
            oauth2: None,
            oauth2_ca_pem: None,
        }
    }

    fn write(dir: &Path, files: Vec<(String, Vec<u8>)>) {
        for (key, bytes) in files {
            std::fs::write(dir.join(key), bytes).unwrap();
        }
    }

    #[test]
    fn shards_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(2);
        let files = plan_files(
            &p,
            vec![
                vec![mailbox("a", "pw"), mailbox("b", "pw")],
                vec![mailbox("c", "other")],
            ],
        );
        let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["plan.json", "shard-0.json.gz", "shard-1.json.gz"]);
        // Compressed: no password is readable in the files as they lie in the Secret.
        assert!(!files[1].1.windows(2).any(|w| w == b"pw"));
        write(dir.path(), files);
        let shard = read_shard(dir.path(), &p, 1).unwrap();
        assert_eq!(shard[0].user, "c");
        assert_eq!(shard[0].password.expose(), "other");
        assert_eq!(read_shard(dir.path(), &p, 0).unwrap().len(), 2);
        assert!(read_shard(dir.path(), &p, 2)
            .unwrap_err()
            .contains("no index 2"));
    }

    #[test]
    fn many_mailboxes_compress_well() {
        // 10,000 directory users with one master password: what a Secret must hold.
        let shard: Vec<Mailbox> = (0..10_000)
            .map(|i| mailbox(&format!("user{i:05}"), "master-password"))
            .collect();
        let files = plan_files(&plan(1), vec![shard]);
        assert!(files[1].1.len() < 120 * 1024, "{} bytes", files[1].1.len());
    }

    #[test]
    fn plan_errors_never_show_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        std::fs::write(&path, r#"{"passwords": ["hunter2"], "bogus": 1}"#).unwrap();
        let Err(e) = read_plan(&path) else {
            panic!("the plan is invalid")
        };
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(br#"[{"login": "a", "password": "hunter2", "bogus": 1}]"#)
            .unwrap();
        std::fs::write(dir.path().join(shard_key(0)), gz.finish().unwrap()).unwrap();
        let e = read_shard(dir.path(), &plan(1), 0).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn deletion_needs_a_durable_store() {
        let mut p = plan(1);
        p.deletion.mode = DeletionMode::AfterArchiving;
        assert_eq!(p.check(), Ok(()));
        p.store_durable = false;
        assert!(p.check().unwrap_err().contains("does not outlive the pod"));
        p.deletion.mode = DeletionMode::Never;
        assert_eq!(p.check(), Ok(()));
    }

    #[test]
    fn exit_codes_say_whether_a_retry_may_help() {
        use crate::protocol::{MailboxProtocol, Totals};
        let protocol = |rejected: &[bool]| {
            let mailboxes = rejected
                .iter()
                .map(|r| {
                    let mut m = MailboxProtocol::new("a@x", "a");
                    m.login_rejected = *r;
                    m.settle(true);
                    m
                })
                .chain([MailboxProtocol::new("ok@x", "ok")])
                .collect();
            let mut p = RunProtocol {
                profile: "p".into(),
                namespace: "mail".into(),
                run_id: "r".into(),
                start_time: String::new(),
                completion_time: String::new(),
                result: RunResult::Succeeded,
                store: "s".into(),
                totals: Totals::default(),
                mailboxes,
                warnings: vec![],
            };
            p.settle();
            p
        };
        assert_eq!(exit_code(&protocol(&[]), true), EXIT_SUCCEEDED);
        assert_eq!(exit_code(&protocol(&[]), false), EXIT_FAILED);
        assert_eq!(
            exit_code(&protocol(&[true, true]), true),
            EXIT_LOGIN_REJECTED
        );
        // One mailbox that a retry may fix, or an unsaved protocol: retried.
        assert_eq!(exit_code(&protocol(&[true, false]), true), EXIT_FAILED);
        assert_eq!(exit_code(&protocol(&[true]), false), EXIT_FAILED);
    }
}
