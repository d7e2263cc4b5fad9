//! `mailvault worker`: one index of an operator run's Job. It reads the run plan the
//! operator mounted from a Secret, archives its shard of the mailboxes with the same engine
//! as `mailvault run`, saves the shard's full protocol into the archive store and leaves a
//! compact summary as the container's termination message, where the operator reads it.
//!
//! The plan holds passwords, so it only ever travels as a Secret mounted as a file: never
//! in environment variables, arguments, ConfigMaps or logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::controller::summary::ShardSummary;
use crate::protocol::RunResult;
use crate::resources::{DeletionSpec, FilterSpec, FolderSpec, ServerSpec, StoreSpec};
use crate::secret::Secret;
use crate::sources::Mailbox;
use crate::{cli, engine, plan};

/// Every mailbox of the shard succeeded.
pub const EXIT_SUCCEEDED: u8 = 0;
/// Some mailbox failed in a way a retry may fix (server down, timeouts, store errors).
pub const EXIT_FAILED: u8 = 1;
/// The plan is missing or invalid: no retry will help.
pub const EXIT_INVALID_PLAN: u8 = 2;
/// Every failed mailbox was rejected at login (wrong password): no retry will help.
pub const EXIT_LOGIN_REJECTED: u8 = 3;

/// The key of the plan in its Secret, and the file name it is mounted as.
pub const PLAN_KEY: &str = "plan.json";
/// Where an S3 store's credentials Secret is mounted in the worker's pod.
pub const STORE_CREDENTIALS_DIR: &str = "/var/run/mailvault/store-credentials";

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The run plan (JSON), as mounted from the run's plan Secret.
    #[arg(long)]
    pub plan: PathBuf,
    /// Which shard to archive; Kubernetes sets JOB_COMPLETION_INDEX in indexed Jobs.
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub index: u32,
    /// Where to leave the summary for the operator.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

/// Everything one run of a profile needs, split into shards (Job indexes). Written by the
/// operator into the run's plan Secret. Not `Debug`: it holds passwords.
#[derive(Serialize, Deserialize)]
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
    /// Each distinct password once (a master password would otherwise be repeated for
    /// every mailbox, and a Secret holds at most 1 MiB).
    pub passwords: Vec<String>,
    /// The mailboxes of each shard, by index.
    pub shards: Vec<Vec<PlanMailbox>>,
}

/// A mailbox in a plan; `password` indexes [`RunPlan::passwords`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanMailbox {
    pub login: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub user: String,
    pub password: usize,
}

impl RunPlan {
    /// The plan's shards from mailboxes already split by index.
    pub fn set_shards(&mut self, shards: Vec<Vec<Mailbox>>) {
        self.passwords.clear();
        self.shards = shards
            .into_iter()
            .map(|shard| {
                shard
                    .into_iter()
                    .map(|m| {
                        let value = m.password.expose();
                        let password = match self.passwords.iter().position(|p| p == value) {
                            Some(i) => i,
                            None => {
                                self.passwords.push(value.to_string());
                                self.passwords.len() - 1
                            }
                        };
                        PlanMailbox {
                            login: m.login,
                            authorization_identity: m.authorization_identity,
                            email: m.email,
                            user: m.user,
                            password,
                        }
                    })
                    .collect()
            })
            .collect();
    }

    /// The mailboxes of shard `index`.
    pub fn shard(&self, index: u32) -> Result<Vec<Mailbox>, String> {
        let shard = self.shards.get(index as usize).ok_or_else(|| {
            format!(
                "the plan has {} shards, there is no index {index}",
                self.shards.len()
            )
        })?;
        shard
            .iter()
            .map(|m| {
                let password = self
                    .passwords
                    .get(m.password)
                    .ok_or_else(|| format!("mailbox {}: no password {}", m.user, m.password))?;
                Ok(Mailbox {
                    login: m.login.clone(),
                    authorization_identity: m.authorization_identity.clone(),
                    password: Secret::new(password.clone()),
                    email: m.email.clone(),
                    user: m.user.clone(),
                })
            })
            .collect()
    }

    /// Checks what the worker relies on before it connects anywhere.
    fn check(&self) -> Result<(), String> {
        crate::engine::FolderSelector::new(&self.folders)
            .map(|_| ())
            .map_err(|e| format!("folder patterns: {e}"))
    }
}

/// The store key of one shard's protocol: `runs/<namespace>/<profile>/<run>-<index>.json`.
pub fn protocol_id(run: &str, index: u32) -> String {
    format!("{run}-{index}")
}

/// Runs a worker; returns the exit code.
pub async fn main(args: WorkerArgs) -> u8 {
    let (summary, code) = work(&args).await;
    if let Err(e) = std::fs::write(&args.termination_log, summary.to_message()) {
        tracing::error!(path = %args.termination_log.display(), error = %e, "cannot write the termination message");
    }
    code
}

async fn work(args: &WorkerArgs) -> (ShardSummary, u8) {
    let index = args.index;
    let not_run = |code: u8, message: String| {
        tracing::error!(index, "{message}");
        eprintln!("error: {message}");
        (ShardSummary::not_run(index, message), code)
    };
    let plan = match read_plan(&args.plan) {
        Ok(plan) => plan,
        Err(message) => return not_run(EXIT_INVALID_PLAN, message),
    };
    let mailboxes = match plan.check().and_then(|()| plan.shard(index)) {
        Ok(mailboxes) => mailboxes,
        Err(message) => return not_run(EXIT_INVALID_PLAN, message),
    };
    let archive =
        match cli::open_store_spec(plan.store.as_ref(), Path::new(STORE_CREDENTIALS_DIR)).await {
            Ok(archive) => archive,
            Err(e) => return not_run(EXIT_FAILED, format!("opening the store: {e}")),
        };
    let settings = plan::settings_for(
        plan.namespace.clone(),
        plan.profile.clone(),
        plan.run.clone(),
        plan::RunParts {
            server: &plan.server,
            folders: &plan.folders,
            filter: &plan.filter,
            deletion: &plan.deletion,
        },
        plan.server_ca_pem.clone().map(String::into_bytes),
    );
    tracing::info!(run = %plan.run, index, mailboxes = mailboxes.len(), "archiving shard");
    let protocol = engine::run(Arc::new(settings), archive.clone(), mailboxes).await;
    println!("{}", protocol.to_text());
    let saved = archive
        .save_protocol(
            &plan.namespace,
            &plan.profile,
            &protocol_id(&plan.run, index),
            &protocol,
        )
        .await;
    let (key, mut code) = match saved {
        Ok(key) => (Some(key), EXIT_SUCCEEDED),
        Err(e) => {
            eprintln!("error: saving the run protocol: {e}");
            (None, EXIT_FAILED)
        }
    };
    if protocol.result != RunResult::Succeeded {
        let failed: Vec<_> = protocol
            .mailboxes
            .iter()
            .filter(|m| m.result != RunResult::Succeeded)
            .collect();
        code = if failed.iter().all(|m| m.login_rejected) && code == EXIT_SUCCEEDED {
            EXIT_LOGIN_REJECTED
        } else {
            EXIT_FAILED
        };
    }
    (ShardSummary::from_protocol(index, &protocol, key), code)
}

fn read_plan(path: &Path) -> Result<RunPlan, String> {
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
            password: Secret::new(password),
            email: Some(format!("{user}@x")),
            user: user.into(),
        }
    }

    fn plan() -> RunPlan {
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
            passwords: vec![],
            shards: vec![],
        }
    }

    #[test]
    fn passwords_are_stored_once_and_shards_round_trip() {
        let mut p = plan();
        p.set_shards(vec![
            vec![mailbox("a", "pw"), mailbox("b", "pw")],
            vec![mailbox("c", "other")],
        ]);
        assert_eq!(p.passwords, ["pw", "other"]);
        let json = serde_json::to_string(&p).unwrap();
        let back: RunPlan = serde_json::from_str(&json).unwrap();
        let shard = back.shard(1).unwrap();
        assert_eq!(shard[0].user, "c");
        assert_eq!(shard[0].password.expose(), "other");
        assert!(back.shard(2).unwrap_err().contains("no index 2"));
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
    }
}
