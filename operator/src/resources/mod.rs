//! The custom resources `ArchiveProfile` and `MailboxSet` (API group `mailvault.io`,
//! version `v1alpha1`), the Secrets they reference, and loading all of them from the
//! YAML a user would `kubectl apply`.
//!
//! The field names here are the user-facing contract: serde names are camelCase, defaults
//! live in serde so that a YAML file and the API server agree on what an omitted field means.

mod load;
mod validate;

pub use load::{load_paths, namespace_of, Bundle, LoadError, Located, SecretObject};
pub use validate::{validate_mailbox_set, validate_profile, FieldError};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "mailvault.io";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in YAML.
pub const API_VERSION: &str = "mailvault.io/v1alpha1";

/// What to archive from one IMAP server, into which store, and when.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mailvault.io",
    version = "v1alpha1",
    kind = "ArchiveProfile",
    namespaced,
    status = "ArchiveProfileStatus",
    shortname = "ap",
    category = "mailvault"
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
}

fn default_max_parallel_jobs() -> u32 {
    4
}

/// A reference by name to an object in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectRef {
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
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

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    pub host: String,
    /// Defaults to 993 for `Tls`, 143 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
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

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalStoreSpec {
    /// Directory of the archive. Relative paths are relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
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

/// Conditions and run results, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveProfileStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A condition as the Kubernetes API conventions describe it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Which mailboxes to archive: through a master user, or from a CSV file of credentials.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mailvault.io",
    version = "v1alpha1",
    kind = "MailboxSet",
    namespaced,
    status = "MailboxSetStatus",
    shortname = "mbs",
    category = "mailvault"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MailboxSetSpec {
    /// A privileged user logs in on behalf of each user (SASL PLAIN authorization identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_password: Option<MasterPasswordSpec>,
    /// A Secret holds a CSV file of IMAP user names and passwords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MasterPasswordSpec {
    /// Secret with keys `username` and `password` of the master user.
    pub credentials_secret_ref: LocalObjectRef,
    #[serde(default)]
    pub users: UserSelectionSpec,
    /// Users kept in the resource itself.
    #[serde(default)]
    pub static_users: Vec<StaticUser>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSelectionSpec {
    #[serde(default)]
    pub selection: Selection,
    /// User names or addresses (case-insensitive) for `AllExcept` and `Only`.
    #[serde(default)]
    pub names: Vec<String>,
}

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

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticUser {
    /// Archive user name.
    pub name: String,
    /// The address the master user logs in for (authorization identity).
    pub email: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSpec {
    pub secret_ref: CsvSecretRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CsvSecretRef {
    pub name: String,
    #[serde(default = "default_csv_key")]
    pub key: String,
}

fn default_csv_key() -> String {
    "mailboxes.csv".to_string()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
