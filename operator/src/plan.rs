//! From a validated profile to what the engine needs: server settings, folder selection,
//! the run's identity, and the warnings a person must see in the protocol.

use std::time::Duration;

use crate::engine::{FolderSelector, RunSettings};
use crate::imap::ServerConfig;
use crate::resources::{
    namespace_of, ArchiveProfile, Bundle, DeletionSpec, FilterSpec, FolderSpec, S3StoreSpec,
    Security, ServerSideEncryption, ServerSpec,
};
use crate::secret::Secret;
use crate::store::s3::{Encryption, S3Config, S3Credentials};
use crate::store::StoreLocation;

/// Run settings for `profile`. The profile must have passed `validate_profile`, so its
/// references resolve and its patterns compile.
pub fn run_settings(bundle: &Bundle, profile: &ArchiveProfile, run_id: String) -> RunSettings {
    let spec = &profile.spec;
    let namespace = namespace_of(&profile.metadata).to_string();
    let extra_ca_pem = spec.server.ca_secret_ref.as_ref().and_then(|r| {
        bundle
            .secret(&namespace, &r.name)
            .and_then(|s| s.object.data.get(&r.key).cloned())
    });
    let mut settings = settings_for(
        namespace,
        profile.metadata.name.clone().unwrap_or_default(),
        run_id,
        RunParts {
            server: &spec.server,
            folders: &spec.folders,
            filter: &spec.filter,
            deletion: &spec.deletion,
        },
        extra_ca_pem,
    );
    settings.max_parallel = spec.max_parallel_jobs as usize;
    settings
}

/// The parts of a profile's spec that a run needs.
pub struct RunParts<'a> {
    pub server: &'a ServerSpec,
    pub folders: &'a FolderSpec,
    pub filter: &'a FilterSpec,
    pub deletion: &'a DeletionSpec,
}

/// Run settings from the parts of a profile a run needs, for callers that have no
/// [`Bundle`] (the operator's worker reads them from its run plan). One mailbox at a time;
/// callers that run more set `max_parallel`. The folder patterns must have been validated.
pub fn settings_for(
    namespace: String,
    profile: String,
    run_id: String,
    parts: RunParts<'_>,
    extra_ca_pem: Option<Vec<u8>>,
) -> RunSettings {
    let RunParts {
        server,
        folders,
        filter,
        deletion,
    } = parts;
    let mut warnings = Vec::new();
    if server.security == Security::None {
        warnings.push(format!(
            "the connection to {} is not encrypted (security: None): passwords cross the network in the clear",
            server.host
        ));
    } else if server.insecure_skip_tls_verify {
        warnings.push(format!(
            "the certificate of {} is not verified (insecureSkipTlsVerify: true)",
            server.host
        ));
    }
    RunSettings {
        namespace,
        profile,
        run_id,
        server: ServerConfig {
            host: server.host.clone(),
            port: server.effective_port(),
            security: server.security,
            insecure_skip_tls_verify: server.insecure_skip_tls_verify,
            extra_ca_pem,
            timeout: Duration::from_secs(u64::from(server.timeout_seconds)),
        },
        folders: FolderSelector::new(folders).expect("validated patterns compile"),
        filter: filter.clone(),
        deletion: deletion.clone(),
        dry_run_deletion: false,
        max_parallel: 1,
        warnings,
    }
}

/// The store the profile names, if it names one. The profile must have passed
/// `validate_profile`, so a referenced Secret holds both keys as text.
pub fn store_location(bundle: &Bundle, profile: &ArchiveProfile) -> Option<StoreLocation> {
    let store = profile.spec.store.as_ref()?;
    if let Some(s3) = &store.s3 {
        let namespace = namespace_of(&profile.metadata);
        let credentials = s3.credentials_secret_ref.as_ref().map(|reference| {
            let secret = bundle.secret(namespace, &reference.name);
            let value = |key: &str| secret.and_then(|s| s.object.data.get(key).cloned());
            s3_credentials(value("accessKeyId"), value("secretAccessKey"))
        });
        return Some(StoreLocation::S3(s3_config(s3, credentials)));
    }
    let path = store.local.as_ref()?.path.as_ref()?;
    Some(StoreLocation::Local(path.into()))
}

/// S3 credentials from the values of a Secret's `accessKeyId` and `secretAccessKey` keys.
/// Trimmed: Secrets made with `echo` end in a newline, and keys never contain white space.
pub fn s3_credentials(
    access_key_id: Option<Vec<u8>>,
    secret_access_key: Option<Vec<u8>>,
) -> S3Credentials {
    let text = |v: Option<Vec<u8>>| {
        v.map(|v| String::from_utf8_lossy(&v).trim().to_string())
            .unwrap_or_default()
    };
    S3Credentials {
        access_key_id: text(access_key_id),
        secret_access_key: Secret::new(text(secret_access_key)),
    }
}

/// How to reach the bucket of `spec`, with the credentials of its `credentialsSecretRef`
/// (`None`: the AWS default chain).
pub fn s3_config(spec: &S3StoreSpec, credentials: Option<S3Credentials>) -> S3Config {
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

/// What a person must know about where the archive goes, for the run protocol.
pub fn store_warnings(location: &StoreLocation) -> Vec<String> {
    match location {
        StoreLocation::S3(S3Config {
            endpoint: Some(endpoint),
            ..
        }) if endpoint.starts_with("http://") => vec![format!(
            "the archive store {endpoint} is reached without TLS: archived mail crosses the network in the clear"
        )],
        _ => Vec::new(),
    }
}

/// A run's name for local runs: the profile, the start time to the second, and a random
/// suffix, so that two runs in the same second (or on two machines) never share a name,
/// and the second's protocol never replaces the first's.
pub fn local_run_id(profile: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{profile}-{}-{}", now.format("%Y%m%d%H%M%S"), &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::load_paths;

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

    fn location(store: &str) -> Option<StoreLocation> {
        let b = bundle(store);
        store_location(&b, &b.profiles[0].object)
    }

    #[test]
    fn the_profile_names_the_store() {
        assert_eq!(location(""), None);
        assert_eq!(location("  store:\n    local: {}\n"), None);
        assert_eq!(
            location("  store:\n    local:\n      path: /srv/a\n"),
            Some(StoreLocation::Local("/srv/a".into()))
        );
        let s3 = "  store:\n    s3:\n      bucket: b\n      prefix: p\n      \
                  credentialsSecretRef:\n        name: keys\n      serverSideEncryption: aws:kms\n      \
                  kmsKeyId: k1\n";
        let Some(StoreLocation::S3(config)) = location(s3) else {
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
        let Some(StoreLocation::S3(config)) = location("  store:\n    s3:\n      bucket: b\n")
        else {
            panic!("not S3");
        };
        assert_eq!(config.credentials, None, "the default credential chain");
    }

    #[test]
    fn local_runs_in_the_same_second_have_distinct_names() {
        let now = chrono::Utc::now();
        let first = local_run_id("demo", now);
        let second = local_run_id("demo", now);
        assert_ne!(first, second);
        assert!(first.starts_with(&format!("demo-{}-", now.format("%Y%m%d%H%M%S"))));
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
        assert_eq!(store_warnings(&StoreLocation::S3(config.clone())).len(), 1);
        config.endpoint = Some("https://minio:9000".into());
        assert_eq!(
            store_warnings(&StoreLocation::S3(config)),
            Vec::<String>::new()
        );
    }
}
