//! `mailvault worker`: one index of an operator run's Job. It reads its shard of the run
//! plan the operator mounted from its Secrets (the contract is in [`crate::runplan`]),
//! archives it as `mailvault run` would, saves the shard's full protocol into the archive
//! store and leaves a compact summary as the container's termination message, where the
//! operator reads it.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::archiving;
use crate::runplan::{
    self, ShardSummary, EXIT_FAILED, EXIT_INVALID_PLAN, EXIT_LOGIN_REJECTED,
    OAUTH2_CREDENTIALS_DIR, STORE_CREDENTIALS_DIR, STORE_KEYS_DIR,
};
use crate::sources;
use crate::store::{self, StoreLocation};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The run plan (JSON), as mounted from the run's plan Secrets; each shard's
    /// mailboxes are in a file next to it.
    #[arg(long)]
    pub plan: PathBuf,
    /// Which shard to archive; Kubernetes sets JOB_COMPLETION_INDEX in indexed Jobs.
    #[arg(long, env = "JOB_COMPLETION_INDEX")]
    pub index: u32,
    /// Where to leave the summary for the operator.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

/// Archives the shard and leaves its summary; returns the exit code.
pub async fn archive_shard(args: WorkerArgs) -> u8 {
    let (summary, code) = shard_outcome(&args).await;
    if let Err(e) = std::fs::write(&args.termination_log, summary.to_message()) {
        tracing::error!(path = %args.termination_log.display(), error = %e, "cannot write the termination message");
    }
    code
}

/// The shard's summary and exit code. Its logs carry the run's namespace, profile, run and
/// shard index.
#[tracing::instrument(skip_all, fields(index = args.index, namespace, profile, run))]
async fn shard_outcome(args: &WorkerArgs) -> (ShardSummary, u8) {
    let index = args.index;
    let not_run = |code: u8, message: String| {
        tracing::error!("{message}");
        (ShardSummary::not_run(index, message), code)
    };
    let plan = match runplan::read_plan(&args.plan) {
        Ok(plan) => plan,
        Err(message) => return not_run(EXIT_INVALID_PLAN, message),
    };
    let span = tracing::Span::current();
    span.record("namespace", plan.namespace.as_str());
    span.record("profile", plan.profile.as_str());
    span.record("run", plan.run.as_str());
    let dir = args.plan.parent().unwrap_or(Path::new("."));
    let mut mailboxes = match plan
        .check()
        .and_then(|()| runplan::read_shard(dir, &plan, index))
    {
        Ok(mailboxes) => mailboxes,
        Err(message) => return not_run(EXIT_INVALID_PLAN, message),
    };
    if let Some(spec) = &plan.oauth2 {
        // The app's credential is mounted as files; the worker gets its tokens itself.
        let ca_pem = plan.oauth2_ca_pem.as_deref().map(str::as_bytes);
        let client = sources::oauth2::client(spec, ca_pem, |key| {
            std::fs::read(Path::new(OAUTH2_CREDENTIALS_DIR).join(key)).ok()
        });
        let client = match client {
            Ok(client) => client,
            Err(message) => return not_run(EXIT_INVALID_PLAN, message),
        };
        let tokens = client.tokens.for_imap();
        for mailbox in &mut mailboxes {
            mailbox.oauth2 = Some(tokens.clone());
        }
        if let Err(e) = sources::oauth2::preflight(&mailboxes).await {
            // A wrong secret is not fixed by a retry; an endpoint that is down may be.
            let code = match e.0.is_permanent() {
                true => EXIT_LOGIN_REJECTED,
                false => EXIT_FAILED,
            };
            return not_run(code, e.to_string());
        }
    }
    // An S3 store's credentials Secret is mounted as files, never passed in the plan.
    let location = StoreLocation::of_spec(plan.store.as_ref(), |key| {
        std::fs::read(Path::new(STORE_CREDENTIALS_DIR).join(key)).ok()
    });
    // So are its encryption keys.
    let keys = match store::keys_of_spec(plan.store.as_ref(), |key| {
        std::fs::read(Path::new(STORE_KEYS_DIR).join(key)).ok()
    }) {
        Ok(keys) => keys,
        Err(message) => return not_run(EXIT_INVALID_PLAN, message),
    };
    let archive = match store::open(&location, keys).await {
        Ok(archive) => archive,
        Err(e) => return not_run(EXIT_FAILED, format!("opening the store: {e}")),
    };
    tracing::info!(mailboxes = mailboxes.len(), "archiving shard");
    let protocol_id = runplan::protocol_id(&plan.run, index);
    let (protocol, saved) =
        archiving::archive_into(plan.settings(), &archive, mailboxes, &protocol_id).await;
    println!("{}", protocol.to_text());
    let key = match saved {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::error!(error = %e, "saving the run protocol failed");
            None
        }
    };
    let code = runplan::exit_code(&protocol, key.is_some());
    (ShardSummary::from_protocol(index, &protocol, key), code)
}
