//! The custom resources `ArchiveProfile` and `MailboxSet` (API group `mailvault.io`,
//! version `v1alpha1`), the Secrets they reference, and loading all of them from the
//! YAML a user would `kubectl apply`.
//!
//! The field names here are the user-facing contract: serde names are camelCase, defaults
//! live in serde so that a YAML file and the API server agree on what an omitted field means.

mod directory;
mod load;
mod validate;

pub use directory::{
    directory_warnings, validate_google_directory, validate_ldap, validate_microsoft_graph,
    validate_oauth2, GOOGLE_DIRECTORY_ENDPOINT, GRAPH_ENDPOINT,
};
#[cfg(test)]
pub use directory::{is_valid_ldap_filter, ldap_spec_for_tests};
pub use load::{load_paths, namespace_of, Bundle, LoadError, Located, SecretObject};
pub use validate::{validate_mailbox_set, validate_profile, validate_profile_alone, FieldError};

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, Volume, VolumeMount};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::protocol::{RunResult, Totals};

/// API group of both kinds.
pub const GROUP: &str = "mailvault.io";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in YAML.
pub const API_VERSION: &str = "mailvault.io/v1alpha1";

/// Both CustomResourceDefinitions, generated from the types here, as YAML documents
/// separated by `---`: what `mailvault crds` prints and `crds/mailvault.io.yaml` holds.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    [ArchiveProfile::crd(), MailboxSet::crd()]
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("CRDs serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// What to archive from one IMAP server, into which store, and when.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mailvault.io",
    version = "v1alpha1",
    kind = "ArchiveProfile",
    doc = "Archives the mailboxes of a MailboxSet from one IMAP server into a local directory or an S3 bucket, on a schedule or on demand. The operator runs each archive run as an indexed Job and reports it in status.",
    namespaced,
    status = "ArchiveProfileStatus",
    shortname = "ap",
    category = "mailvault",
    // Next Run is a string: `date` columns print times as an age, and a time in the future
    // as `<invalid>`.
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule.cron","priority":1}"#,
    printcolumn = r#"{"name":"Last Run","type":"date","jsonPath":".status.lastRun.completionTime"}"#,
    printcolumn = r#"{"name":"Result","type":"string","jsonPath":".status.lastRun.result"}"#,
    printcolumn = r#"{"name":"Archived","type":"integer","jsonPath":".status.lastRun.totals.archived"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.activeRun.progress"}"#,
    printcolumn = r#"{"name":"Next Run","type":"string","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveProfileSpec {
    /// The MailboxSet (same namespace) whose mailboxes this profile archives.
    pub mailbox_set_ref: LocalObjectRef,
    /// The IMAP server.
    pub server: ServerSpec,
    /// Which folders of each mailbox are archived.
    #[serde(default)]
    pub folders: FolderSpec,
    /// Which messages are archived.
    #[serde(default)]
    pub filter: FilterSpec,
    /// How many mailboxes are archived at once (one IMAP connection each).
    #[serde(default = "default_max_parallel_jobs")]
    #[schemars(range(min = 1, max = 256))]
    pub max_parallel_jobs: u32,
    /// Where the archive lives. Without it, a local directory (`./mailvault-archive` for
    /// `mailvault run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSpec>,
    /// Whether archived messages are deleted from the server afterwards.
    #[serde(default)]
    pub deletion: DeletionSpec,
    /// When the operator starts runs on its own. Without it, runs start only on a manual
    /// trigger (and `mailvault run` ignores it: it always runs now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Runs started by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerSpec>,
    /// How many finished runs that succeeded keep their Job (and its pods' logs).
    #[serde(default = "default_history_limit")]
    #[schemars(range(max = 100))]
    pub successful_runs_history_limit: u32,
    /// How many finished runs that failed or partially failed keep their Job.
    #[serde(default = "default_history_limit")]
    #[schemars(range(max = 100))]
    pub failed_runs_history_limit: u32,
    /// How the operator's archiving pods look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_template: Option<JobTemplate>,
}

fn default_max_parallel_jobs() -> u32 {
    4
}

fn default_history_limit() -> u32 {
    3
}

/// `spec.schedule`: cron in a time zone, like a CronJob.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Five fields (minute hour day-of-month month day-of-week) or one of `@yearly`,
    /// `@annually`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
    #[x_kube(validation = Rule::new(
        r"self.matches('^(@(?i:yearly|annually|monthly|weekly|daily|hourly)|[^ ]+( +[^ ]+){4})$')"
    ).message("must be five cron fields separated by spaces, or a macro such as @daily"))]
    pub cron: String,
    /// IANA time zone the cron fields are read in, e.g. `Europe/Berlin`. A slot that a
    /// daylight-saving change skips runs right after the change; one that it repeats runs
    /// once.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1))]
    pub time_zone: String,
    /// Start no scheduled runs (slots passing meanwhile are not caught up). Manual triggers
    /// still run: they are a deliberate request.
    #[serde(default)]
    pub suspend: bool,
    /// A slot missed by more than this (operator down, previous run still going) is
    /// skipped and counted in `status.missedRuns` instead of starting late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,
}

/// Schema of a Kubernetes object type whose full schema is left out of the CRD.
fn unchecked_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of a list of Kubernetes objects whose full schema is left out of the CRD.
fn unchecked_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

fn default_time_zone() -> String {
    "UTC".to_string()
}

/// `spec.trigger`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerSpec {
    /// Set to any new value (a timestamp, a ticket number) to start a run now. The value
    /// last acted on is `status.lastManualTrigger`; a value equal to it does nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub manual: Option<String>,
}

/// `spec.jobTemplate`: the parts of the archiving pods a cluster admin may need to set.
/// Everything that keeps the pods safe (user, file system, plan volume) is the operator's.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobTemplate {
    /// Worker image; default: the operator's own (`MAILVAULT_WORKER_IMAGE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of the archiving container. A mailbox's largest message is held in
    /// memory while it is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the archiving pods must run on, as in a pod's `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the archiving pods tolerate, as in a pod's `tolerations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Where the archiving pods may run, as in a pod's `affinity`. Kept out of the CRD's
    /// schema (checked when the Job is created), like `volumes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "unchecked_object")]
    pub affinity: Option<Affinity>,
    /// Only needed when the store authenticates with the pod's identity; the token is then
    /// mounted, otherwise never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra labels of the Job and its pods; the operator's own labels win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations of the Job and its pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra volumes, e.g. the PersistentVolumeClaim of a local store. Their schema is not
    /// repeated in the CRD (it would make it several times larger); the API server checks
    /// them when the operator creates the Job, and a bad one fails the run visibly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "unchecked_list")]
    pub volumes: Vec<Volume>,
    /// Where the worker mounts them (`spec.store.local.path` must lie on one, unless the
    /// store names its `persistentVolumeClaim`, which the operator mounts itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// A run none of whose pods has started after this many seconds (an image that cannot
    /// be pulled, a volume that cannot be mounted, no node with room) is recorded as failed,
    /// with the pods' reason, and its Job deleted, so that the next run can start. Default
    /// 900; raise it where nodes are added on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pending_deadline_seconds: Option<u32>,
}

/// A reference by name to an object in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    /// The object's name.
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in the Secret's data.
    pub key: String,
}

/// How the IMAP connection is secured.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Security {
    /// Implicit TLS (IMAPS, usually port 993).
    #[default]
    Tls,
    /// Plain connection upgraded with STARTTLS before login (usually port 143).
    StartTls,
    /// No encryption at all. Passwords cross the network in the clear.
    None,
}

/// `spec.server`: the IMAP server and how to connect to it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    /// Host name or IP address of the IMAP server; with TLS, the certificate must name it.
    pub host: String,
    /// Defaults to 993 for `Tls`, 143 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// `Tls` (implicit TLS, the default), `StartTls` (plain connection upgraded before
    /// login) or `None` (no encryption: passwords cross the network in the clear).
    #[serde(default)]
    pub security: Security,
    /// Accept any server certificate. Only for testing; the run protocol records it.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// An extra trust anchor (PEM) for servers with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Limit for connecting and for every IMAP command.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

fn default_timeout_seconds() -> u32 {
    60
}

impl ServerSpec {
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            Security::Tls => 993,
            Security::StartTls | Security::None => 143,
        })
    }
}

/// `spec.folders`: which folders of each mailbox are archived.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FolderSpec {
    /// Glob patterns on the folder path (UTF-8, `/` as separator). Empty: every folder.
    #[serde(default)]
    pub include: Vec<String>,
    /// Glob patterns of folders never archived; wins over `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Leave out trash, junk, drafts and outbox folders (by special-use flag and usual name).
    #[serde(default = "default_true")]
    pub exclude_defaults: bool,
    /// The sent-items folder; its messages are recorded as outgoing. Without it, the folder
    /// flagged `\Sent` or named `Sent`, `Sent Items` or `Sent Messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_items: Option<String>,
}

impl Default for FolderSpec {
    fn default() -> Self {
        FolderSpec {
            include: Vec::new(),
            exclude: Vec::new(),
            exclude_defaults: true,
            sent_items: None,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "!has(self.minAgeDays) || !has(self.maxAgeDays) || self.minAgeDays <= self.maxAgeDays"
).message("minAgeDays must not be greater than maxAgeDays: no message could match"))]
/// `spec.filter`: which messages are archived.
pub struct FilterSpec {
    /// Only archive messages at least this many days old (by INTERNALDATE); younger ones
    /// wait for a later run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_days: Option<u32>,
    /// Skip messages older than this many days (by INTERNALDATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    /// Skip messages larger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_bytes: Option<u64>,
}

/// Deleting archived mail from the server. Off unless asked for; and even then a message
/// is deleted only after its mailbox was archived without errors and its stored copy was
/// read back and its hash verified.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeletionSpec {
    /// `Never` (the default): archived mail stays on the server. `AfterArchiving`:
    /// archived and verified mail matching the rules below is deleted from the server.
    #[serde(default)]
    pub mode: DeletionMode,
    /// Only messages at least this many days old (by INTERNALDATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_days: Option<u32>,
    /// Never delete flagged messages (default). Flagged mail is deleted only when this is
    /// explicitly false.
    #[serde(default = "default_true")]
    pub keep_flagged: bool,
    /// Never delete unread messages (default).
    #[serde(default = "default_true")]
    pub keep_unread: bool,
}

impl Default for DeletionSpec {
    fn default() -> Self {
        DeletionSpec {
            mode: DeletionMode::Never,
            older_than_days: None,
            keep_flagged: true,
            keep_unread: true,
        }
    }
}

/// Whether archived messages are deleted from the server.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionMode {
    /// Archived mail stays on the server.
    #[default]
    Never,
    /// Archived, verified mail is deleted from the server after its mailbox's archive pass.
    AfterArchiving,
}

/// Where the archive lives: exactly one of `local` or `s3`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreSpec {
    /// A directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalStoreSpec>,
    /// An S3 bucket, on AWS or on an S3-compatible server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3StoreSpec>,
    /// Encryption at rest: every message and every pack index sealed (AES-256-GCM) under
    /// keys only the archiving pods read, so that neither whoever runs the storage nor
    /// whoever takes a disk can read mail. An archive once encrypted opens only with its
    /// keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
}

/// `spec.store.encryption`: where the archive's keys are.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionSpec {
    /// The key of a Secret (same namespace) whose value is the key file: one 256-bit key a
    /// line, as 64 hex digits or base64, optionally named (`name: key`). The last key
    /// seals new data; keep every earlier key below it to read what they sealed (key
    /// rotation). The operator mounts it as a file into the archiving pods only.
    pub key_secret_ref: SecretKeyRef,
}

/// `spec.store.local`: an archive in a directory.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalStoreSpec {
    /// Directory of the archive. Relative paths are relative to the working directory, or
    /// with `persistentVolumeClaim` to the claim's root (the default: the root itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For the operator: the PersistentVolumeClaim (same namespace) that holds the archive.
    /// The operator mounts it into its archiving pods, so that a profile needs no
    /// `jobTemplate` volumes for the common case. `mailvault run` has no cluster and ignores
    /// it (the archive is then `path` on the local machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimRef>,
}

/// A PersistentVolumeClaim in the same namespace, named as in a pod's volume.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRef {
    /// The PersistentVolumeClaim's name.
    #[schemars(length(min = 1))]
    pub claim_name: String,
}

/// An archive in an S3 bucket. The layout of the objects is the same as in a local
/// directory, below `prefix`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3StoreSpec {
    /// The bucket; it must exist (mailvault never creates buckets).
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `mail/archive`, so that one bucket can hold
    /// several archives or other data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The bucket's region. Default: `us-east-1` with a custom `endpoint`, else the
    /// environment's (`AWS_REGION`), else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// URL of an S3-compatible server (MinIO, Ceph RGW, Garage, ...), e.g.
    /// `https://s3.example.org`. Without it, AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Address the bucket in the path (`endpoint/bucket/key`) instead of the host name
    /// (`bucket.endpoint/key`); most S3-compatible servers need this.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret (same namespace) with the keys `accessKeyId` and `secretAccessKey`. Without
    /// it, the AWS default credential chain: environment variables, IRSA web identity,
    /// EKS Pod Identity, instance profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectRef>,
    /// Encryption at rest that S3 applies to every object mailvault writes. Without it,
    /// the bucket's default encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// KMS key (ID or ARN) for `serverSideEncryption: aws:kms`. Without it, the account's
    /// default S3 KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// Server-side encryption, as S3 names it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServerSideEncryption {
    /// SSE-S3: keys managed by S3.
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS: keys in AWS KMS.
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// Conditions, schedule state and run results, written by the operator. The scheduling
/// state lives here rather than in the operator's memory, so that a restarted operator
/// neither repeats nor forgets a run.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveProfileStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the spec is valid and its references resolve), `LastRunSucceeded` (the
    /// last finished run's result), `Stalled` (the operator cannot proceed until the spec
    /// or a referenced object changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The last finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// The most recent finished runs, newest first (as many as both history limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunSummary>,
    /// The run in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_run: Option<ActiveRun>,
    /// The schedule slot last acted on (started, or skipped); RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// The next schedule slot (RFC 3339, UTC); absent without a schedule or when it is
    /// suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    /// The `spec.trigger.manual` value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_trigger: Option<String>,
    /// Schedule slots that passed without a run (operator down, a run still going, past
    /// the starting deadline), since the profile was created.
    #[serde(default)]
    pub missed_runs: u64,
    /// Completion time of the last run that succeeded (RFC 3339). Kept when later runs fail
    /// and `runs` no longer lists it, so that "no successful archive for a day" stays
    /// visible however many runs failed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
}

/// `status.lastRun`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// The run's name, also its Job's.
    pub name: String,
    /// When the run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the run finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `Succeeded` (every mailbox), `PartiallyFailed` (some mailboxes failed) or `Failed`
    /// (every mailbox failed, or the run could not start).
    pub result: RunResult,
    /// Why a run failed as a whole (e.g. its MailboxSet could not be resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Counts over all the run's mailboxes.
    pub totals: Totals,
    /// Mailboxes that failed, with the first reason; at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_mailboxes: Vec<FailedMailbox>,
    /// Where the run's full protocols are: the store and the folder (key prefix) holding
    /// one protocol per shard, named after the run and the shard's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_ref: Option<String>,
}

/// A mailbox that failed in a run.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedMailbox {
    /// The mailbox label: its email address, else the IMAP user name.
    pub mailbox: String,
    /// The first error, without secrets.
    pub reason: String,
}

/// One entry of `status.runs`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The run's name, also its Job's.
    pub name: String,
    /// `Succeeded`, `PartiallyFailed` or `Failed`.
    pub result: RunResult,
    /// When the run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the run finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Counts over all the run's mailboxes.
    pub totals: Totals,
}

/// `status.activeRun`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRun {
    /// The run's name, also its Job's.
    pub name: String,
    /// When the run started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Mailboxes the run archives.
    pub mailboxes: u64,
    /// Mailboxes of the shards that finished successfully.
    pub mailboxes_done: u64,
    /// Mailboxes of the shards that failed for good.
    pub mailboxes_failed: u64,
    /// Mailboxes finished (either way) of all, for people and `kubectl get`: `120/400
    /// mailboxes`, with `, 3 failed` when some failed.
    #[serde(default)]
    pub progress: String,
}

/// A condition as the Kubernetes API conventions describe it (the schema of `meta/v1`
/// Condition).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What the condition is about, e.g. `Ready`; one condition of each type.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// Why the condition is as it is, one CamelCase word for programs.
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Why the condition is as it is, for people.
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}

/// Which mailboxes to archive: through a master user, or from a CSV file of credentials.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "mailvault.io",
    version = "v1alpha1",
    kind = "MailboxSet",
    doc = "The mailboxes an ArchiveProfile archives: users a master user logs in for (listed, or synced from LDAP or Active Directory), IMAP credentials from a CSV file in a Secret, or users an OAuth2 app logs in to (Microsoft 365, Google Workspace; listed, or synced from Microsoft Graph, the Google Directory API or LDAP).",
    namespaced,
    status = "MailboxSetStatus",
    shortname = "mbs",
    category = "mailvault",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Mailboxes","type":"integer","jsonPath":".status.mailboxes"}"#,
    printcolumn = r#"{"name":"Synced","type":"date","jsonPath":".status.lastSync.time"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "(has(self.masterPassword) ? 1 : 0) + (has(self.csv) ? 1 : 0) + (has(self.oauth2) ? 1 : 0) == 1"
).message("set exactly one of masterPassword, csv or oauth2"))]
pub struct MailboxSetSpec {
    /// A privileged user logs in on behalf of each user (SASL PLAIN authorization identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_password: Option<MasterPasswordSpec>,
    /// A Secret holds a CSV file of IMAP user names and passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSpec>,
    /// An app with access to every mailbox logs in to each with an OAuth2 access token
    /// (SASL XOAUTH2 or OAUTHBEARER): Microsoft 365, Google Workspace, or any OAuth2 server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Spec>,
}

impl MailboxSetSpec {
    /// For a set that reads a directory: its `maxRemovedPercent`, the removal guard.
    pub fn directory_max_removed_percent(&self) -> Option<u32> {
        let master = self
            .master_password
            .as_ref()
            .and_then(|m| m.directory.as_ref());
        let oauth2 = self.oauth2.as_ref().and_then(|o| o.directory.as_ref());
        master
            .map(|d| d.max_removed_percent)
            .or(oauth2.map(|d| d.max_removed_percent))
    }
}

/// `spec.oauth2`: app-only OAuth2, the cloud's master password. Microsoft 365: an app
/// registration with `IMAP.AccessAsApp` and mailbox permissions (one token for every
/// mailbox). Google: a service account with domain-wide delegation (one token per user).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "self.provider != 'Microsoft365' || has(self.clientID) && (has(self.tenantID) || has(self.tokenURL))"
).message("Microsoft365 needs clientID and tenantID (or tokenURL)"))]
#[x_kube(validation = Rule::new("self.provider != 'Generic' || has(self.clientID) && has(self.tokenURL)")
    .message("Generic needs clientID and tokenURL"))]
pub struct OAuth2Spec {
    /// Who issues the tokens: `Microsoft365`, `Google` or `Generic`.
    pub provider: OAuth2Provider,
    /// Microsoft 365: the tenant, as its ID (a GUID) or a domain such as
    /// `contoso.onmicrosoft.com`.
    #[serde(default, rename = "tenantID", skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Microsoft 365 and Generic: the application (client) ID of the app registration.
    #[serde(default, rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The Secret with the app's credential: `clientSecret`, or `tls.crt` and `tls.key` (a
    /// certificate registered with the app, and its key) for Microsoft365 and Generic;
    /// `serviceAccount.json` (the service account's JSON key) for Google.
    pub credentials_secret_ref: LocalObjectRef,
    /// Overrides the provider's token endpoint (national clouds, Generic, a local proxy).
    /// `https://` with a verified certificate; plain `http://` only on a loopback address.
    #[serde(default, rename = "tokenURL", skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// An extra trust anchor (PEM) for the token endpoint and the directory API, for a
    /// proxy or an authorization server with a private CA; the system's are trusted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Overrides the provider's IMAP scope (`https://outlook.office365.com/.default`,
    /// `https://mail.google.com/`); Generic servers ask for none unless given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Which of the known users (static and from the directory) are archived.
    #[serde(default)]
    pub users: UserSelectionSpec,
    /// Users kept in the resource itself, added to the directory's; one named like a
    /// directory user replaces it. `email` is the mailbox the app logs in to.
    #[serde(default)]
    pub static_users: Vec<StaticUser>,
    /// Users read from Microsoft Graph, the Google Directory API or an LDAP directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<OAuth2DirectorySpec>,
}

/// Who issues an OAuth2 MailboxSet's tokens.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OAuth2Provider {
    /// Microsoft Entra ID (client credentials at the tenant's v2.0 token endpoint).
    Microsoft365,
    /// Google (a service account's JWT bearer grant, acting as each user).
    Google,
    /// Any OAuth2 server (client credentials at `tokenURL`).
    Generic,
}

/// `spec.oauth2.directory`: the users to archive come from a directory.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "(has(self.microsoftGraph) ? 1 : 0) + (has(self.googleDirectory) ? 1 : 0) + (has(self.ldap) ? 1 : 0) == 1"
).message("set exactly one of microsoftGraph, googleDirectory or ldap"))]
#[x_kube(validation = Rule::new(SYNC_BEFORE_RUN_RULE).message(SYNC_BEFORE_RUN_MESSAGE))]
pub struct OAuth2DirectorySpec {
    /// Read the directory before every run: must be true (the default). Every run, in the
    /// cluster and from the command line, reads the directory first and keeps no copy of
    /// the users' addresses between runs, so `false` is refused rather than ignored.
    #[serde(default = "default_true")]
    pub sync_before_run: bool,
    /// Refuse a sync that would drop more than this share of the previously known users
    /// (default 50).
    #[serde(default = "default_max_removed_percent")]
    #[schemars(range(max = 100))]
    pub max_removed_percent: u32,
    /// Microsoft 365 only: the tenant's users from Microsoft Graph, read with the app's own
    /// token (application permission `User.Read.All`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_graph: Option<MicrosoftGraphSpec>,
    /// Google only: the domain's users from the Admin SDK Directory API, read acting as an
    /// administrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_directory: Option<GoogleDirectorySpec>,
    /// Users read from an LDAP directory or Active Directory, as for `masterPassword`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapSpec>,
}

/// `spec.oauth2.directory.microsoftGraph`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MicrosoftGraphSpec {
    /// Graph's endpoint; default `https://graph.microsoft.com` (national clouds have their
    /// own, e.g. `https://graph.microsoft.us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Only the members of this group (its object ID), at any depth of nesting; needs
    /// `GroupMember.Read.All` besides `User.Read.All`.
    #[serde(default, rename = "groupID", skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

/// `spec.oauth2.directory.googleDirectory`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GoogleDirectorySpec {
    /// The API's endpoint; default `https://admin.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `my_customer` (the default: the service account's own account) or a customer ID
    /// such as `C03az79cb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// A Google Workspace administrator the service account acts as to list users (scope
    /// `https://www.googleapis.com/auth/admin.directory.user.readonly` must be delegated).
    pub admin_email: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MasterPasswordSpec {
    /// Secret with keys `username` and `password` of the master user.
    pub credentials_secret_ref: LocalObjectRef,
    /// Which of the known users (static and from the directory) are archived.
    #[serde(default)]
    pub users: UserSelectionSpec,
    /// Users kept in the resource itself, added to the directory's; one named like a
    /// directory user replaces it (e.g. to give it an address the directory lacks).
    #[serde(default)]
    pub static_users: Vec<StaticUser>,
    /// Users read from an LDAP directory or Active Directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySpec>,
}

/// The directory is read before every run; `syncBeforeRun: false` would promise users
/// kept between runs, which nothing keeps.
const SYNC_BEFORE_RUN_RULE: &str = "!has(self.syncBeforeRun) || self.syncBeforeRun";
pub const SYNC_BEFORE_RUN_MESSAGE: &str =
    "syncBeforeRun: false is not supported: every run reads the directory first";

/// `spec.masterPassword.directory`: the users to archive come from a directory.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(SYNC_BEFORE_RUN_RULE).message(SYNC_BEFORE_RUN_MESSAGE))]
pub struct DirectorySpec {
    /// Read the directory before every run: must be true (the default). Every run, in the
    /// cluster and from the command line, reads the directory first and keeps no copy of
    /// the users' addresses between runs, so `false` is refused rather than ignored.
    #[serde(default = "default_true")]
    pub sync_before_run: bool,
    /// Refuse a sync that would drop more than this share of the previously known users
    /// (default 50), so that a wrong filter or an emptied OU does not silently stop the
    /// archiving of most mailboxes.
    #[serde(default = "default_max_removed_percent")]
    #[schemars(range(max = 100))]
    pub max_removed_percent: u32,
    /// Where and how to read the users.
    pub ldap: LdapSpec,
}

fn default_max_removed_percent() -> u32 {
    50
}

/// How to reach the directory and which of its entries are users.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LdapSpec {
    /// `ldap://host[:port]` or `ldaps://host[:port]`, nothing more: the search base goes in
    /// `baseDN`, credentials in `bindSecretRef`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub start_tls: bool,
    /// Accept any server certificate. Only for testing: anyone on the network path could
    /// read the bind password.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// An extra trust anchor (PEM) for directories with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Secret with keys `bindDN` and `password`; without it the bind is anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_secret_ref: Option<LocalObjectRef>,
    /// Subtree searched for users.
    #[serde(rename = "baseDN")]
    pub base_dn: String,
    /// RFC 4515 filter for user entries, with its outer parentheses. Default:
    /// `(objectClass=inetOrgPerson)` (Generic) or
    /// `(&(objectCategory=person)(objectClass=user))` (ActiveDirectory); on Active
    /// Directory disabled accounts are always left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Attribute holding the user name. Default: `uid` (Generic), `sAMAccountName`
    /// (ActiveDirectory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name_attribute: Option<String>,
    /// Attribute holding the email addresses, the first value primary. Default: `mail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_attribute: Option<String>,
    /// Only members of this group: direct members of a groupOfNames, groupOfUniqueNames or
    /// posixGroup (Generic), or members through any depth of nesting (ActiveDirectory).
    #[serde(default, rename = "groupDN", skip_serializing_if = "Option::is_none")]
    pub group_dn: Option<String>,
    /// Which kind of server, for defaults and Active Directory specifics.
    #[serde(default)]
    pub flavor: Flavor,
    /// Limit for each network step: connecting, TLS, the bind and every search response.
    #[serde(default = "default_ldap_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

fn default_ldap_timeout_seconds() -> u32 {
    30
}

/// Which kind of directory server.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Flavor {
    /// OpenLDAP, 389 Directory Server and other RFC 4519/2798 directories.
    #[default]
    Generic,
    /// Microsoft Active Directory.
    ActiveDirectory,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.selection == 'All' || size(self.names) > 0")
    .message("AllExcept and Only need names"))]
pub struct UserSelectionSpec {
    /// `All` (the default) users with an email address, `AllExcept` those named, or
    /// `Only` those named.
    #[serde(default)]
    pub selection: Selection,
    /// User names or addresses (case-insensitive) for `AllExcept` and `Only`.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Which users a master-password MailboxSet archives.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Selection {
    /// Every user with an email address.
    #[default]
    All,
    /// Every user with an email address except those named.
    AllExcept,
    /// Only the users named.
    Only,
}

/// A user listed in the MailboxSet itself.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticUser {
    /// Archive user name.
    pub name: String,
    /// The address the master user logs in for (authorization identity).
    pub email: String,
}

/// `spec.csv`: mailboxes from a CSV file of IMAP credentials.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSpec {
    /// The Secret key holding the CSV file: columns recognised by their heading (IMAP
    /// user name, IMAP password, optional email address, optional archive user name),
    /// separated by `;`, `,`, `|` or TAB. A file with any bad row is rejected as a whole.
    pub secret_ref: CsvSecretRef,
}

/// A key of a Secret in the same namespace, `mailboxes.csv` unless named.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSecretRef {
    /// The Secret's name.
    pub name: String,
    /// The key in the Secret's data.
    #[serde(default = "default_csv_key")]
    pub key: String,
}

fn default_csv_key() -> String {
    "mailboxes.csv".to_string()
}

/// The outcome of the last accepted directory sync of a MailboxSet. The next sync is
/// compared against `users` to refuse one that drops too many of them
/// (`maxRemovedPercent`). `mailvault run` keeps it in the archive; the operator keeps it on
/// the MailboxSet's status.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    /// When the directory was read (RFC 3339, UTC).
    pub time: String,
    /// Users the directory returned.
    pub users_found: u32,
    /// Of those, users without an email address: never archived.
    pub without_email: u32,
    /// Of those, users left out by `users.selection`.
    pub excluded_by_selection: u32,
    /// Users not in the previous record.
    pub added: u32,
    /// Users of the previous record that the directory no longer returned. Their archives
    /// stay; they are just not archived any more.
    pub removed: u32,
    /// Names of the users the directory returned, sorted.
    pub users: Vec<String>,
}

/// Written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSetStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the set resolved to its mailboxes), `DirectorySynced` (sets with a
    /// directory: the last sync), `Stalled` (the operator cannot proceed until the spec or
    /// a referenced object changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// How many mailboxes the set resolved to last time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<u64>,
    /// `masterPassword`, `csv` or `oauth2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The last accepted directory sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<SyncStatus>,
    /// What a person should know about how the set is read, e.g. a directory bind that
    /// is not encrypted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A [`SyncRecord`] as kept on the MailboxSet's status. A status must stay small (the API
/// server caps objects at about 1.5 MB, and every watcher receives the whole object), so
/// the user names are kept only up to [`SyncStatus::MAX_USERS`]; beyond that only their
/// count, and the removal guard compares counts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// When the directory was read (RFC 3339, UTC).
    pub time: String,
    /// Users the directory returned.
    pub users_found: u32,
    /// Of those, users without an email address: never archived.
    pub without_email: u32,
    /// Of those, users left out by `users.selection`.
    pub excluded_by_selection: u32,
    /// Users not in the previous sync.
    pub added: u32,
    /// Users of the previous sync that the directory no longer returned; their archives
    /// stay.
    pub removed: u32,
    /// The names the directory returned, sorted; absent when there were more than
    /// [`SyncStatus::MAX_USERS`] or they exceed [`SyncStatus::MAX_USER_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// When `users` is absent: short hashes of a fixed sample of the users (those whose
    /// names hash lowest), so that the next sync can tell which share of them it lost
    /// without a list of names in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_sample: Option<Vec<String>>,
}

impl SyncStatus {
    /// Most user names kept in a status.
    pub const MAX_USERS: usize = 1000;
    /// Most bytes of user names kept in a status.
    pub const MAX_USER_BYTES: usize = 64 * 1024;

    /// Users in [`SyncStatus::user_sample`]: enough to tell a loss of 1 % from one of
    /// 5 % (the estimate's standard error is under 1.6 %), in about 15 KiB.
    pub const SAMPLE_SIZE: usize = 1000;

    /// The status form of `record`: its names only if they fit, else a sample of hashes.
    pub fn from_record(record: &SyncRecord) -> SyncStatus {
        let bytes: usize = record.users.iter().map(|u| u.len() + 3).sum();
        let fits = record.users.len() <= Self::MAX_USERS && bytes <= Self::MAX_USER_BYTES;
        SyncStatus {
            time: record.time.clone(),
            users_found: record.users_found,
            without_email: record.without_email,
            excluded_by_selection: record.excluded_by_selection,
            added: record.added,
            removed: record.removed,
            users: fits.then(|| record.users.clone()),
            user_sample: (!fits).then(|| Self::sample(&record.users)),
        }
    }

    /// A short hash of a user name, compared without regard to case as names are.
    pub fn user_hash(name: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(name.to_lowercase().as_bytes())[..6])
    }

    /// The hashes of the [`SyncStatus::SAMPLE_SIZE`] users whose hashes are lowest: a
    /// sample that does not depend on the order, case or source of the names, so that the
    /// next sync's loss among them estimates its loss among all users.
    pub fn sample(users: &[String]) -> Vec<String> {
        let mut hashes: Vec<String> = users.iter().map(|u| Self::user_hash(u)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes.truncate(Self::SAMPLE_SIZE);
        hashes
    }

    /// The record to compare the next sync with, when the names were kept.
    pub fn to_record(&self) -> Option<SyncRecord> {
        self.users.as_ref().map(|users| SyncRecord {
            time: self.time.clone(),
            users_found: self.users_found,
            without_email: self.without_email,
            excluded_by_selection: self.excluded_by_selection,
            added: self.added,
            removed: self.removed,
            users: users.clone(),
        })
    }
}
