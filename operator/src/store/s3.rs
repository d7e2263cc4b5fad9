//! The archive in an S3 bucket (AWS S3 or an S3-compatible server: MinIO, Garage, Ceph RGW).
//!
//! Every archive key is stored as the object `<prefix>/<key>`, so the format is exactly
//! that of a local directory. The format needs nothing from S3 beyond what every
//! implementation offers: whole-object PUTs (atomic: a reader sees the old object or the
//! new one), GET, HEAD and ListObjectsV2. Immutable objects are uniquely named, so
//! correctness never depends on conditional writes (`If-None-Match`), which many
//! S3-compatible servers lack.
//!
//! Transient failures (5xx, throttling, timeouts, refused or reset connections) are
//! retried by the SDK's standard retry strategy with exponential backoff; permanent ones
//! (access denied, no such bucket, bad credentials) fail at once. Every attempt is bounded
//! by timeouts, so a server that goes away turns into an error, never a hang.

use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{ObjectStore, StoreError};
use crate::sensitive::Sensitive;

/// Objects larger than this are uploaded in parts: one PUT of hundreds of megabytes would
/// have to be repeated whole after any network hiccup.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part but the last (S3 requires at least 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once for one object.
const PART_CONCURRENCY: usize = 4;

/// Attempts per request, the first included.
const MAX_ATTEMPTS: u32 = 5;
/// Backoff before the first retry; it doubles (with jitter) up to `MAX_BACKOFF`. Five
/// attempts wait at most 1 + 2 + 4 + 8 s: long enough to ride out an S3 `SlowDown` or a
/// restarting server, short enough that a refused connection is reported within seconds.
/// (A server that accepts and then says nothing costs the timeouts below per attempt.)
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Establishing a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From sending a request until the response starts; this includes uploading the body,
/// so it must allow a part of `PART_SIZE` on a slow link.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// One whole attempt, including reading a large response body (a stalled body is caught
/// earlier by the SDK's stalled-stream protection).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// The region when none is configured and none comes from the environment; what
/// S3-compatible servers expect unless configured otherwise.
const DEFAULT_REGION: &str = "us-east-1";

/// Where an S3 archive is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket; may be empty. Leading and trailing `/` are ignored.
    pub prefix: String,
    /// Without it: `us-east-1` for a custom endpoint, else the AWS default region chain
    /// (`AWS_REGION`, profile), else `us-east-1`.
    pub region: Option<String>,
    /// URL of an S3-compatible server; without it, AWS S3.
    pub endpoint: Option<String>,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub force_path_style: bool,
    /// Without them, the AWS default credential chain: environment, profile, web identity
    /// (IRSA), container credentials (EKS Pod Identity, ECS), instance metadata.
    pub credentials: Option<S3Credentials>,
    pub server_side_encryption: Option<Encryption>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Sensitive,
}

/// Encryption at rest that S3 applies to every object written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// SSE-S3 (`AES256`): keys managed by S3.
    S3Managed,
    /// SSE-KMS (`aws:kms`), with the given key or the account's default one.
    Kms { key_id: Option<String> },
}

impl S3Config {
    /// `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self.prefix() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }

    fn prefix(&self) -> &str {
        self.prefix.trim_matches('/')
    }
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// `prefix/`, or empty.
    key_prefix: String,
    encryption: Option<Encryption>,
    describe: String,
}

impl S3Store {
    /// Connects and checks that the bucket exists and the credentials may use it, so that
    /// a typo or a missing permission fails before anything is archived.
    pub async fn open(config: &S3Config) -> Result<S3Store, StoreError> {
        let describe = config.describe();
        let open_error = |message: String| StoreError::Open {
            store: describe.clone(),
            message,
        };
        if config.bucket.is_empty() {
            return Err(open_error("no bucket given".into()));
        }
        // rustls with ring: the SDK's default client would build aws-lc, a C library.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        match (&config.region, &config.endpoint) {
            (Some(region), _) => loader = loader.region(Region::new(region.clone())),
            (None, Some(_)) => loader = loader.region(Region::from_static(DEFAULT_REGION)),
            (None, None) => {}
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &credentials.access_key_id,
                credentials.secret_access_key.expose(),
                None,
                None,
                "mailvault",
            ));
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.force_path_style)
            // Checksum headers only where S3 requires them, as before 2025: many
            // S3-compatible servers reject the newer default ones. Integrity does not
            // suffer: the SigV4 signature covers the SHA-256 of every request body, so the
            // server rejects a damaged upload, and `verify` re-hashes every message.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if shared.region().is_none() {
            s3 = s3.region(Region::from_static(DEFAULT_REGION));
        }
        let store = S3Store {
            client: Client::from_conf(s3.build()),
            bucket: config.bucket.clone(),
            key_prefix: match config.prefix() {
                "" => String::new(),
                prefix => format!("{prefix}/"),
            },
            encryption: config.server_side_encryption.clone(),
            describe: describe.clone(),
        };
        store.check_bucket().await.map_err(open_error)?;
        Ok(store)
    }

    /// HeadBucket, and on failure a ListObjectsV2 for a useful error: HEAD responses have
    /// no body, so they cannot tell a bad key from a missing permission.
    async fn check_bucket(&self) -> Result<(), String> {
        let head = self.client.head_bucket().bucket(&self.bucket).send().await;
        let Err(head_error) = head else {
            return Ok(());
        };
        if !matches!(head_error, SdkError::ServiceError(_)) {
            return Err(format!(
                "HeadBucket {}: {}",
                self.bucket,
                error_message(&head_error)
            ));
        }
        let probe = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.key_prefix)
            .max_keys(1)
            .send()
            .await;
        let (operation, message, code) = match &probe {
            Err(e @ SdkError::ServiceError(service)) => (
                "ListObjectsV2",
                error_message(e),
                service.err().code().map(str::to_string),
            ),
            _ => ("HeadBucket", error_message(&head_error), None),
        };
        let hint = match (
            code.as_deref(),
            head_error.raw_response().map(|r| r.status().as_u16()),
        ) {
            (Some("NoSuchBucket"), _) | (None, Some(404)) => {
                "the bucket does not exist; create it first".to_string()
            }
            (Some("InvalidAccessKeyId"), _) => "the server does not know the access key ID".into(),
            (Some("SignatureDoesNotMatch"), _) => {
                "the secret access key does not match the access key ID".into()
            }
            (Some("AccessDenied"), _) | (None, Some(403)) => format!(
                "the credentials may not use bucket {}, or are not valid on this server",
                self.bucket
            ),
            (Some("PermanentRedirect" | "AuthorizationHeaderMalformed"), _) | (None, Some(301)) => {
                "the region does not match the bucket's (or the server's); set the region".into()
            }
            _ => "the bucket cannot be used".into(),
        };
        Err(format!("{operation} {}: {message}; {hint}", self.bucket))
    }

    /// Whether any object's key starts with `prefix` (one request, however many there are).
    pub async fn has_objects(&self, prefix: &str) -> Result<bool, StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.object_key(prefix))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.error("ListObjectsV2", prefix, &e))?;
        Ok(!page.contents().is_empty())
    }

    fn object_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        StoreError::Backend {
            store: self.describe.clone(),
            operation,
            key: key.to_string(),
            message: error_message(e),
        }
    }

    /// The encryption headers for a new object (PutObject, CreateMultipartUpload).
    fn encryption(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.encryption {
            None => (None, None),
            Some(Encryption::S3Managed) => (Some(ServerSideEncryption::Aes256), None),
            Some(Encryption::Kms { key_id }) => {
                (Some(ServerSideEncryption::AwsKms), key_id.clone())
            }
        }
    }

    async fn put_single(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let (encryption, kms_key_id) = self.encryption();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .set_server_side_encryption(encryption)
            .set_ssekms_key_id(kms_key_id)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, &e))?;
        Ok(())
    }

    /// Uploads `bytes` in parts sliced from the one buffer (no copies); an upload that
    /// fails is aborted so that its parts do not linger (and cost) in the bucket.
    async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let object_key = self.object_key(key);
        let (encryption, kms_key_id) = self.encryption();
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object_key)
            .set_server_side_encryption(encryption)
            .set_ssekms_key_id(kms_key_id)
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", key, &e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(StoreError::Backend {
                store: self.describe.clone(),
                operation: "CreateMultipartUpload",
                key: key.to_string(),
                message: "the server returned no upload ID".into(),
            });
        };
        let result = self.upload_parts(key, &object_key, upload_id, bytes).await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&object_key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(
                    store = %self.describe,
                    key,
                    error = %error_message(&e),
                    "could not abort a failed multipart upload; a lifecycle rule for \
                     incomplete multipart uploads removes its parts"
                );
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        object_key: &str,
        upload_id: &str,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        let parts = (0..bytes.len().div_ceil(PART_SIZE)).map(|i| {
            let body = bytes.slice(i * PART_SIZE..bytes.len().min((i + 1) * PART_SIZE));
            // Part numbers start at 1; at most 10,000 parts, far beyond any message size.
            let number = i as i32 + 1;
            async move {
                let uploaded = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(object_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| self.error("UploadPart", key, &e))?;
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(uploaded.e_tag().map(str::to_string))
                        .build(),
                )
            }
        });
        let completed: Vec<CompletedPart> = futures::stream::iter(parts)
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("CompleteMultipartUpload", key, &e))?;
        Ok(())
    }
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// What went wrong, for a person: the S3 error code and HTTP status of a service error,
/// or the cause of a failed request. Never credentials: the SDK's errors carry neither
/// the secret key nor signatures.
fn error_message<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let retried = format!("transient, gave up after {MAX_ATTEMPTS} attempts");
    match e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("no error code");
            let mut message = format!("{code} (HTTP {status})");
            if let Some(text) = service.err().message() {
                message.push_str(": ");
                message.push_str(text);
            }
            if status >= 500 || status == 429 || code == "SlowDown" {
                message.push_str(&format!(" ({retried})"));
            }
            message
        }
        SdkError::TimeoutError(_) => format!("timed out ({retried})"),
        SdkError::DispatchFailure(_) if find_source::<CredentialsError>(e).is_some() => format!(
            "no usable credentials ({}); give them as AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, an AWS profile, a web identity (IRSA) or the store's \
             credentialsSecretRef",
            causes(e)
        ),
        SdkError::DispatchFailure(failure) if failure.is_io() || failure.is_timeout() => {
            format!("cannot reach the server ({retried}): {}", causes(e))
        }
        other => causes(other),
    }
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// An error and its sources, `: `-separated, each said once (many wrappers repeat their
/// source in their own message).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        if bytes.len() > MULTIPART_THRESHOLD {
            self.put_multipart(key, bytes).await
        } else {
            self.put_single(key, bytes).await
        }
    }

    async fn put_immutable(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await;
        match head {
            Ok(existing) if existing.content_length() == Some(bytes.len() as i64) => {
                return Ok(false)
            }
            // A different size cannot be this content: an interrupted upload by some other
            // tool, say. Replace it.
            Ok(_) => {}
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {}
            Err(e) => return Err(self.error("HeadObject", key, &e)),
        }
        self.put(key, bytes).await?;
        Ok(true)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        // The SDK retries a request only until the response starts. A body that breaks off
        // later (a connection reset; or Garage, which ends the body early when the object
        // is replaced while it is read) is fetched again here.
        let mut attempt = 1;
        loop {
            let response = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.object_key(key))
                .send()
                .await;
            let output = match response {
                Ok(output) => output,
                Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
                Err(e) => return Err(self.error("GetObject", key, &e)),
            };
            match output.body.collect().await {
                Ok(body) => return Ok(Some(body.into_bytes())),
                Err(e) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(store = %self.describe, key, error = %causes(&e), "reading an object again");
                    tokio::time::sleep(INITIAL_BACKOFF * (attempt - 1)).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(StoreError::Backend {
                        store: self.describe.clone(),
                        operation: "GetObject",
                        key: key.to_string(),
                        message: format!(
                            "reading the body ({MAX_ATTEMPTS} attempts): {}",
                            causes(&e)
                        ),
                    })
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.object_key(prefix))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.error("ListObjectsV2", prefix, &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(&self.key_prefix))
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        // S3 lists in UTF-8 binary order, as Rust sorts strings; not every compatible
        // server promises it.
        keys.sort();
        Ok(keys)
    }

    /// Nothing to do: S3 acknowledges a PUT only once the object is durably stored, so
    /// every put that returned is already durable.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
