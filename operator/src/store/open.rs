//! Where an archive is, and opening it. A profile's `spec.store`, a `--store` argument or
//! the default directory become a [`StoreLocation`]; [`open`] opens it for writing (creating
//! a local directory), [`open_existing`] finds an archive there without creating anything,
//! for the commands that only read (and for input that turns out invalid, which must touch
//! nothing).

use std::sync::Arc;

use super::local::LocalStore;
use super::s3::{Encryption, S3Config, S3Credentials, S3Store};
use super::{Archive, ObjectStore, StoreError, StoreLocation};
use crate::resources::{S3StoreSpec, ServerSideEncryption, StoreSpec};
use crate::sensitive::Sensitive;

/// The archive directory (relative to the working directory) when neither the profile nor
/// the command line names a store.
pub const DEFAULT_STORE: &str = "mailvault-archive";

/// Top-level prefixes of which any object means an archive is there (see the layout in
/// the module above).
const ARCHIVE_PREFIXES: [&str; 3] = ["messages", "users", "directory"];

/// How to reach an `s3://` store named on the command line. Credentials never come from
/// here but from the AWS default chain, so that they never stand in a command line.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
}

impl S3Options {
    /// Whether any option is set (they only apply to an `s3://` store).
    pub fn any(&self) -> bool {
        self.endpoint.is_some() || self.region.is_some() || self.force_path_style
    }
}

/// The default store: [`DEFAULT_STORE`].
impl Default for StoreLocation {
    fn default() -> Self {
        StoreLocation::Local(local_path(None).into())
    }
}

impl StoreLocation {
    /// A `--store` argument: `s3://bucket/prefix` or a directory. The error says what is
    /// wrong with the argument.
    pub fn parse(store: &str, s3: &S3Options) -> Result<StoreLocation, String> {
        let Some(rest) = store.strip_prefix("s3://") else {
            if s3.any() {
                return Err(format!(
                    "--s3-endpoint, --s3-region and --s3-path-style only apply to an s3:// store, not {store}"
                ));
            }
            return Ok(StoreLocation::Local(store.into()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "{store}: no bucket; use s3://bucket or s3://bucket/prefix"
            ));
        }
        Ok(StoreLocation::S3(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region: s3.region.clone(),
            endpoint: s3.endpoint.clone(),
            force_path_style: s3.force_path_style,
            credentials: None,
            server_side_encryption: None,
        }))
    }

    /// The store a profile's `spec.store` names: its S3 bucket, else its local path, else
    /// [`DEFAULT_STORE`]. `credential` reads a key (`accessKeyId`, `secretAccessKey`) of an
    /// S3 store's `credentialsSecretRef`: from the Secret in the YAML files, or from the
    /// files it is mounted as in a worker's pod. The spec must have been validated.
    pub fn of_spec(
        spec: Option<&StoreSpec>,
        credential: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> StoreLocation {
        match spec.and_then(|s| s.s3.as_ref()) {
            Some(s3) => {
                let credentials = s3.credentials_secret_ref.as_ref().map(|_| {
                    s3_credentials(credential("accessKeyId"), credential("secretAccessKey"))
                });
                StoreLocation::S3(s3_config(s3, credentials))
            }
            None => StoreLocation::Local(local_path(spec).into()),
        }
    }

    /// What a person must know about where the archive goes, for the run protocol.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            StoreLocation::S3(S3Config {
                endpoint: Some(endpoint),
                ..
            }) if endpoint.starts_with("http://") => vec![format!(
                "the archive store {endpoint} is reached without TLS: archived mail crosses the network in the clear"
            )],
            _ => Vec::new(),
        }
    }
}

/// The directory of a local store spec: its `path`, else [`DEFAULT_STORE`]. The one place
/// the default applies.
pub fn local_path(spec: Option<&StoreSpec>) -> &str {
    spec.and_then(|s| s.local.as_ref())
        .and_then(|l| l.path.as_deref())
        .unwrap_or(DEFAULT_STORE)
}

/// S3 credentials from the values of a Secret's `accessKeyId` and `secretAccessKey` keys.
/// Trimmed: Secrets made with `echo` end in a newline, and keys never contain white space.
fn s3_credentials(
    access_key_id: Option<Vec<u8>>,
    secret_access_key: Option<Vec<u8>>,
) -> S3Credentials {
    let text = |v: Option<Vec<u8>>| {
        v.map(|v| String::from_utf8_lossy(&v).trim().to_string())
            .unwrap_or_default()
    };
    S3Credentials {
        access_key_id: text(access_key_id),
        secret_access_key: Sensitive::new(text(secret_access_key)),
    }
}

/// How to reach the bucket of `spec`, with the credentials of its `credentialsSecretRef`
/// (`None`: the AWS default chain).
fn s3_config(spec: &S3StoreSpec, credentials: Option<S3Credentials>) -> S3Config {
    S3Config {
        bucket: spec.bucket.clone(),
        prefix: spec.prefix.clone().unwrap_or_default(),
        region: spec.region.clone(),
        endpoint: spec.endpoint.clone(),
        force_path_style: spec.force_path_style,
        credentials,
        server_side_encryption: spec.server_side_encryption.map(|sse| match sse {
            ServerSideEncryption::Aes256 => Encryption::S3Managed,
            ServerSideEncryption::AwsKms => Encryption::Kms {
                key_id: spec.kms_key_id.clone(),
            },
        }),
    }
}

/// Opens the archive at `location` for writing, creating a local directory if need be. An
/// S3 bucket must exist and be usable with the credentials.
pub async fn open(location: &StoreLocation) -> Result<Archive, StoreError> {
    let objects: Arc<dyn ObjectStore> = match location {
        StoreLocation::Local(path) => Arc::new(LocalStore::open(path)?),
        StoreLocation::S3(config) => Arc::new(S3Store::open(config).await?),
    };
    Ok(Archive::new(objects))
}

/// The archive at `location` if one is there (anything a run writes), without creating
/// anything.
pub async fn open_existing(location: &StoreLocation) -> Result<Option<Archive>, StoreError> {
    match location {
        StoreLocation::Local(path) => {
            if !ARCHIVE_PREFIXES.iter().any(|dir| path.join(dir).is_dir()) {
                return Ok(None);
            }
            open(location).await.map(Some)
        }
        StoreLocation::S3(config) => {
            let store = S3Store::open(config).await?;
            for prefix in ARCHIVE_PREFIXES {
                if store.has_objects(&format!("{prefix}/")).await? {
                    return Ok(Some(Archive::new(Arc::new(store))));
                }
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{load_paths, namespace_of, Bundle};

    fn bundle(store: &str) -> Bundle {
        let text = format!(
            "apiVersion: mailvault.io/v1alpha1\nkind: ArchiveProfile\nmetadata:\n  name: p\n  \
             namespace: mail\nspec:\n  mailboxSetRef:\n    name: s\n  server:\n    host: imap\n{store}\
             ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: keys\n  namespace: mail\n\
             stringData:\n  accessKeyId: \"AKIA1\\n\"\n  secretAccessKey: \"s3cr3t\\n\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.yaml");
        std::fs::write(&path, text).unwrap();
        load_paths(&[path]).unwrap()
    }

    fn location(store: &str) -> StoreLocation {
        let b = bundle(store);
        let profile = &b.profiles[0].object;
        let secret = b.secret(namespace_of(&profile.metadata), "keys");
        StoreLocation::of_spec(profile.spec.store.as_ref(), |key| {
            secret.and_then(|s| s.object.data.get(key).cloned())
        })
    }

    #[test]
    fn the_profile_names_the_store() {
        let default = StoreLocation::Local(DEFAULT_STORE.into());
        assert_eq!(location(""), default);
        assert_eq!(location("  store:\n    local: {}\n"), default);
        assert_eq!(StoreLocation::default(), default);
        assert_eq!(
            location("  store:\n    local:\n      path: /srv/a\n"),
            StoreLocation::Local("/srv/a".into())
        );
        let s3 = "  store:\n    s3:\n      bucket: b\n      prefix: p\n      \
                  credentialsSecretRef:\n        name: keys\n      serverSideEncryption: aws:kms\n      \
                  kmsKeyId: k1\n";
        let StoreLocation::S3(config) = location(s3) else {
            panic!("not S3");
        };
        assert_eq!(config.describe(), "s3://b/p");
        let credentials = config.credentials.unwrap();
        // Secrets written with `echo` end in a newline.
        assert_eq!(credentials.access_key_id, "AKIA1");
        assert_eq!(credentials.secret_access_key.expose(), "s3cr3t");
        assert_eq!(
            config.server_side_encryption,
            Some(Encryption::Kms {
                key_id: Some("k1".into())
            })
        );
        let StoreLocation::S3(config) = location("  store:\n    s3:\n      bucket: b\n") else {
            panic!("not S3");
        };
        assert_eq!(config.credentials, None, "the default credential chain");
    }

    #[test]
    fn plain_http_stores_are_warned_about() {
        let mut config = S3Config {
            bucket: "b".into(),
            prefix: String::new(),
            region: None,
            endpoint: Some("http://minio:9000".into()),
            force_path_style: true,
            credentials: None,
            server_side_encryption: None,
        };
        assert_eq!(StoreLocation::S3(config.clone()).warnings().len(), 1);
        config.endpoint = Some("https://minio:9000".into());
        assert_eq!(StoreLocation::S3(config).warnings(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn reading_finds_no_archive_where_none_is_and_creates_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nothing");
        let location = StoreLocation::Local(path.clone());
        assert!(open_existing(&location).await.unwrap().is_none());
        assert!(!path.exists(), "reading created the directory");
        open(&location).await.unwrap();
        std::fs::create_dir_all(path.join("users")).unwrap();
        assert!(open_existing(&location).await.unwrap().is_some());
    }
}
