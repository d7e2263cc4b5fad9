//! Checks that the schema cannot express: references that must resolve, patterns that must
//! compile, fields that exclude each other. Runs before anything touches a server or a store,
//! so that bad input costs nothing.

use std::fmt;

use super::load::{namespace_of, Bundle, Located};
use super::{
    ArchiveProfile, LdapSpec, MailboxSet, OAuth2Provider, S3StoreSpec, SecretKeyRef, Security,
    ServerSideEncryption, StaticUser, StoreSpec,
};

/// A problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `file:line` of the object's document.
    pub place: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// Dotted path, e.g. `spec.server.host`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.place, self.object, self.field, self.message
        )
    }
}

fn object_name<T: kube::Resource<DynamicType = ()>>(o: &T) -> String {
    format!(
        "{} {}/{}",
        T::kind(&()),
        namespace_of(o.meta()),
        o.meta().name.as_deref().unwrap_or("")
    )
}

struct Report<'a, T> {
    located: &'a Located<T>,
    object: String,
    errors: Vec<FieldError>,
}

impl<'a, T: kube::Resource<DynamicType = ()>> Report<'a, T> {
    fn new(located: &'a Located<T>) -> Self {
        Report {
            object: object_name(&located.object),
            located,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            place: self.located.place(),
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Checks that the Secret `secret` (at `field`) names exists and holds its key; a
    /// missing key is reported at `<field>.key`, since that is the field to correct.
    fn secret_key_ref(&mut self, bundle: &Bundle, field: &str, secret: &SecretKeyRef) {
        let namespace = namespace_of(self.located.object.meta()).to_string();
        let name = &secret.name;
        match bundle.secret(&namespace, name) {
            None => self.error(
                format!("{field}.name"),
                format!("Secret {namespace}/{name} is not in the given files"),
            ),
            Some(found) if !found.object.data.contains_key(&secret.key) => self.error(
                format!("{field}.key"),
                format!(
                    "Secret {namespace}/{name} ({}) has no key {:?}",
                    found.place(),
                    secret.key
                ),
            ),
            Some(_) => {}
        }
    }

    /// Checks that `name` is a Secret in the object's namespace holding every key in `keys`.
    fn secret_keys(&mut self, bundle: &Bundle, field: &str, name: &str, keys: &[&str]) {
        let namespace = namespace_of(self.located.object.meta()).to_string();
        match bundle.secret(&namespace, name) {
            None => self.error(
                field,
                format!("Secret {namespace}/{name} is not in the given files"),
            ),
            Some(secret) => {
                for key in keys {
                    if !secret.object.data.contains_key(*key) {
                        self.error(
                            field,
                            format!(
                                "Secret {namespace}/{name} ({}) has no key {key:?}",
                                secret.place()
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Validates a profile together with the MailboxSet and Secrets it references.
pub fn validate_profile(bundle: &Bundle, located: &Located<ArchiveProfile>) -> Vec<FieldError> {
    let mut errors = validate_profile_alone(bundle, located);
    let spec = &located.object.spec;
    let namespace = namespace_of(&located.object.metadata);
    if let Some(set) = bundle.mailbox_set(namespace, &spec.mailbox_set_ref.name) {
        errors.extend(validate_mailbox_set(bundle, set));
    }
    errors
}

/// The errors of [`validate_profile`] that are the profile's own, not its MailboxSet's:
/// the operator shows these on the profile alone.
pub fn validate_profile_alone(
    bundle: &Bundle,
    located: &Located<ArchiveProfile>,
) -> Vec<FieldError> {
    let mut report = Report::new(located);
    let spec = &located.object.spec;
    if spec.server.host.trim().is_empty() {
        report.error("spec.server.host", "must not be empty");
    }
    if spec.server.port == Some(0) {
        report.error("spec.server.port", "must be between 1 and 65535");
    }
    if spec.server.timeout_seconds == 0 {
        report.error("spec.server.timeoutSeconds", "must be at least 1");
    }
    if spec.max_parallel_jobs == 0 {
        report.error("spec.maxParallelJobs", "must be at least 1");
    }
    if let Some(ca) = &spec.server.ca_secret_ref {
        report.secret_keys(
            bundle,
            "spec.server.caSecretRef",
            &ca.name,
            &[ca.key.as_str()],
        );
    }
    for (list, patterns) in [
        ("include", &spec.folders.include),
        ("exclude", &spec.folders.exclude),
    ] {
        for (i, pattern) in patterns.iter().enumerate() {
            if let Err(e) = globset::Glob::new(pattern) {
                report.error(format!("spec.folders.{list}[{i}]"), e.kind().to_string());
            }
        }
    }
    if let (Some(min), Some(max)) = (spec.filter.min_age_days, spec.filter.max_age_days) {
        if min > max {
            report.error(
                "spec.filter.minAgeDays",
                format!("{min} is greater than maxAgeDays {max}: no message could match"),
            );
        }
    }
    if spec.filter.max_message_bytes == Some(0) {
        report.error("spec.filter.maxMessageBytes", "must be at least 1");
    }
    if let Some(store) = &spec.store {
        validate_store(bundle, &mut report, store);
    }
    if let Some(local) = spec.store.as_ref().and_then(|s| s.local.as_ref()) {
        if let Some(claim) = &local.persistent_volume_claim {
            if claim.claim_name.trim().is_empty() {
                report.error(
                    "spec.store.local.persistentVolumeClaim.claimName",
                    "must not be empty",
                );
            }
            // The path is joined to where the claim is mounted: it must stay inside it.
            let path = std::path::Path::new(local.path.as_deref().unwrap_or(""));
            let escapes = path.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            });
            if escapes {
                report.error(
                    "spec.store.local.path",
                    "must be relative to the persistentVolumeClaim's root, without `..`",
                );
            }
        }
    }
    let namespace = namespace_of(&located.object.metadata);
    let set_name = &spec.mailbox_set_ref.name;
    let mut errors = report.errors;
    match bundle.mailbox_set(namespace, set_name) {
        None => errors.push(FieldError {
            place: located.place(),
            object: object_name(&located.object),
            field: "spec.mailboxSetRef.name".into(),
            message: format!("MailboxSet {namespace}/{set_name} is not in the given files"),
        }),
        Some(set) => {
            if set.object.spec.oauth2.is_some() && spec.server.security == Security::None {
                errors.push(FieldError {
                    place: located.place(),
                    object: object_name(&located.object),
                    field: "spec.server.security".into(),
                    message: format!(
                        "MailboxSet {namespace}/{set_name} logs in with OAuth2 tokens, which \
                         are sent only over Tls or StartTls, never in the clear"
                    ),
                });
            }
        }
    }
    errors
}

fn validate_store(bundle: &Bundle, report: &mut Report<'_, ArchiveProfile>, store: &StoreSpec) {
    match (&store.local, &store.s3) {
        (Some(_), Some(_)) | (None, None) => {
            report.error("spec.store", "set exactly one of local or s3");
        }
        (Some(local), None) => {
            if local.path.as_ref().is_some_and(|p| p.trim().is_empty()) {
                report.error("spec.store.local.path", "must not be empty");
            }
        }
        (None, Some(s3)) => validate_s3(bundle, report, s3),
    }
    if let Some(encryption) = &store.encryption {
        let secret = &encryption.key_secret_ref;
        let field = "spec.store.encryption.keySecretRef";
        if secret.key.trim().is_empty() {
            report.error(format!("{field}.key"), "must not be empty");
        } else {
            report.secret_key_ref(bundle, field, secret);
        }
    }
}

fn validate_s3(bundle: &Bundle, report: &mut Report<'_, ArchiveProfile>, s3: &S3StoreSpec) {
    // Loose on purpose: S3-compatible servers accept names AWS does not.
    if s3.bucket.is_empty() || s3.bucket.contains(['/', ' ']) {
        report.error(
            "spec.store.s3.bucket",
            format!("{:?} is not a bucket name", s3.bucket),
        );
    }
    if let Some(prefix) = &s3.prefix {
        let trimmed = prefix.trim_matches('/');
        if !trimmed.is_empty()
            && trimmed
                .split('/')
                .any(|segment| matches!(segment, "" | "." | ".."))
        {
            report.error(
                "spec.store.s3.prefix",
                format!("{prefix:?}: empty, `.` and `..` path segments are not allowed"),
            );
        }
    }
    if let Some(endpoint) = &s3.endpoint {
        let host = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            report.error(
                "spec.store.s3.endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            );
        }
    }
    if s3.region.as_ref().is_some_and(|r| r.trim().is_empty()) {
        report.error("spec.store.s3.region", "must not be empty");
    }
    if let Some(credentials) = &s3.credentials_secret_ref {
        let field = "spec.store.s3.credentialsSecretRef.name";
        let keys = ["accessKeyId", "secretAccessKey"];
        report.secret_keys(bundle, field, &credentials.name, &keys);
        let namespace = namespace_of(&report.located.object.metadata).to_string();
        if let Some(secret) = bundle.secret(&namespace, &credentials.name) {
            for key in keys {
                let usable =
                    secret.object.data.get(key).map(|value| {
                        std::str::from_utf8(value).is_ok_and(|v| !v.trim().is_empty())
                    });
                if usable == Some(false) {
                    report.error(
                        field,
                        format!(
                            "Secret {namespace}/{} key {key:?} must be non-empty UTF-8 text",
                            credentials.name
                        ),
                    );
                }
            }
        }
    }
    if s3.kms_key_id.is_some() && s3.server_side_encryption != Some(ServerSideEncryption::AwsKms) {
        report.error(
            "spec.store.s3.kmsKeyId",
            "only applies with serverSideEncryption: aws:kms",
        );
    }
}

/// Validates a MailboxSet and the Secrets it references (not the CSV contents: those are
/// checked when the set is resolved, with line numbers).
pub fn validate_mailbox_set(bundle: &Bundle, located: &Located<MailboxSet>) -> Vec<FieldError> {
    let mut report = Report::new(located);
    let spec = &located.object.spec;
    let modes = [
        spec.master_password.is_some(),
        spec.csv.is_some(),
        spec.oauth2.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        report.error("spec", "set exactly one of masterPassword, csv or oauth2");
        return report.errors;
    }
    if let Some(master) = &spec.master_password {
        report.secret_keys(
            bundle,
            "spec.masterPassword.credentialsSecretRef.name",
            &master.credentials_secret_ref.name,
            &["username", "password"],
        );
        static_users(&mut report, "spec.masterPassword", &master.static_users);
        if let Some(directory) = &master.directory {
            const FIELD: &str = "spec.masterPassword.directory";
            max_removed_percent(&mut report, FIELD, directory.max_removed_percent);
            sync_before_run(&mut report, FIELD, directory.sync_before_run);
            ldap(bundle, &mut report, FIELD, &directory.ldap);
        }
    }
    if let Some(csv) = &spec.csv {
        report.secret_keys(
            bundle,
            "spec.csv.secretRef",
            &csv.secret_ref.name,
            &[csv.secret_ref.key.as_str()],
        );
    }
    if let Some(oauth2) = &spec.oauth2 {
        const FIELD: &str = "spec.oauth2";
        let secret = &oauth2.credentials_secret_ref.name;
        let keys: &[&str] = match oauth2.provider {
            OAuth2Provider::Google => &["serviceAccount.json"],
            _ => &[],
        };
        report.secret_keys(
            bundle,
            "spec.oauth2.credentialsSecretRef.name",
            secret,
            keys,
        );
        if let Some(ca) = &oauth2.ca_secret_ref {
            report.secret_keys(
                bundle,
                "spec.oauth2.caSecretRef",
                &ca.name,
                &[ca.key.as_str()],
            );
        }
        if oauth2.provider != OAuth2Provider::Google {
            let namespace = namespace_of(&located.object.metadata);
            let has = |key: &str| {
                bundle
                    .secret(namespace, secret)
                    .is_some_and(|s| s.object.data.contains_key(key))
            };
            let certificate = has("tls.crt") && has("tls.key");
            if bundle.secret(namespace, secret).is_some() && !has("clientSecret") && !certificate {
                report.error(
                    "spec.oauth2.credentialsSecretRef.name",
                    format!(
                        "Secret {namespace}/{secret} has neither key \"clientSecret\" nor keys \
                         \"tls.crt\" and \"tls.key\" (a certificate registered with the app)"
                    ),
                );
            }
        }
        for (field, message) in super::validate_oauth2(oauth2) {
            report.error(format!("{FIELD}.{field}"), message);
        }
        static_users(&mut report, FIELD, &oauth2.static_users);
        if let Some(directory) = &oauth2.directory {
            const DIRECTORY: &str = "spec.oauth2.directory";
            max_removed_percent(&mut report, DIRECTORY, directory.max_removed_percent);
            sync_before_run(&mut report, DIRECTORY, directory.sync_before_run);
            if let Some(spec) = &directory.ldap {
                ldap(bundle, &mut report, DIRECTORY, spec);
            }
        }
    }
    report.errors
}

/// Checks `staticUsers` of a set's mode at `field`.
fn static_users(report: &mut Report<'_, MailboxSet>, field: &str, users: &[StaticUser]) {
    // (archive user, mailbox label) → the entry archived there, as the archive folds
    // them: two mailboxes in one place would overwrite each other's records.
    let mut places = std::collections::HashMap::new();
    for (i, user) in users.iter().enumerate() {
        let place = (user.name.to_lowercase(), user.email.to_lowercase());
        if let Some(first) = places.insert(place, i) {
            report.error(
                format!("{field}.staticUsers[{i}]"),
                format!(
                    "{:?} with {:?} would be archived into the same place as \
                     staticUsers[{first}] (names and addresses are compared ignoring case); \
                     list each mailbox once",
                    user.name, user.email
                ),
            );
        }
        if user.name.trim().is_empty() {
            report.error(
                format!("{field}.staticUsers[{i}].name"),
                "must not be empty",
            );
        }
        if !user.email.contains('@') {
            report.error(
                format!("{field}.staticUsers[{i}].email"),
                format!("{:?} is not an email address", user.email),
            );
        }
    }
}

fn max_removed_percent(report: &mut Report<'_, MailboxSet>, field: &str, percent: u32) {
    if percent > 100 {
        report.error(
            format!("{field}.maxRemovedPercent"),
            "must be between 0 and 100",
        );
    }
}

fn sync_before_run(report: &mut Report<'_, MailboxSet>, field: &str, sync: bool) {
    if !sync {
        report.error(
            format!("{field}.syncBeforeRun"),
            super::SYNC_BEFORE_RUN_MESSAGE,
        );
    }
}

/// Checks an LDAP directory at `field` (`<field>.ldap`) and its Secrets.
fn ldap(bundle: &Bundle, report: &mut Report<'_, MailboxSet>, field: &str, spec: &LdapSpec) {
    for (name, message) in super::validate_ldap(spec) {
        report.error(format!("{field}.{name}"), message);
    }
    if let Some(bind) = &spec.bind_secret_ref {
        report.secret_keys(
            bundle,
            &format!("{field}.ldap.bindSecretRef.name"),
            &bind.name,
            &["bindDN", "password"],
        );
    }
    if let Some(ca) = &spec.ca_secret_ref {
        report.secret_keys(
            bundle,
            &format!("{field}.ldap.caSecretRef"),
            &ca.name,
            &[ca.key.as_str()],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::load_paths;

    fn bundle(text: &str) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.yaml");
        std::fs::write(&path, text).unwrap();
        load_paths(&[path]).unwrap()
    }

    const SET: &str = "apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: s
spec:
  masterPassword:
    credentialsSecretRef:
      name: master
    staticUsers:
      - name: alice
        email: alice@example.org
---
apiVersion: v1
kind: Secret
metadata:
  name: master
stringData:
  username: archiver
  password: pw
";

    fn profile(extra: &str) -> String {
        format!(
            "apiVersion: mailvault.io/v1alpha1\nkind: ArchiveProfile\nmetadata:\n  name: p\nspec:\n  \
             mailboxSetRef:\n    name: s\n  server:\n    host: imap.example.org\n{extra}---\n{SET}"
        )
    }

    #[test]
    fn a_complete_profile_is_valid() {
        let b = bundle(&profile(""));
        assert_eq!(validate_profile(&b, &b.profiles[0]), vec![]);
    }

    #[test]
    fn bad_fields_are_all_reported() {
        let b = bundle(&profile(
            "  folders:\n    include: ['a/[b']\n  filter:\n    minAgeDays: 9\n    maxAgeDays: 3\n  maxParallelJobs: 0\n",
        ));
        let errors = validate_profile(&b, &b.profiles[0]);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.maxParallelJobs",
                "spec.folders.include[0]",
                "spec.filter.minAgeDays"
            ]
        );
        assert!(errors[0].to_string().starts_with(&format!(
            "{}:1: ArchiveProfile default/p",
            b.profiles[0].file.display()
        )));
    }

    #[test]
    fn missing_references_are_named() {
        let text = profile("").replace("name: master\nstringData", "name: other\nstringData");
        let b = bundle(&text);
        let errors = validate_profile(&b, &b.profiles[0]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "MailboxSet default/s");
        assert!(errors[0]
            .message
            .contains("Secret default/master is not in the given files"));
        let text =
            profile("").replace("mailboxSetRef:\n    name: s", "mailboxSetRef:\n    name: t");
        let b = bundle(&text);
        let errors = validate_profile(&b, &b.profiles[0]);
        assert_eq!(errors[0].field, "spec.mailboxSetRef.name");
    }

    const DIRECTORY: &str = "    directory:
      maxRemovedPercent: 101
      syncBeforeRun: false
      ldap:
        url: https://dc1.example.org/dc=example
        baseDN: ' '
        groupDN: staff
        filter: uid=alice
        bindSecretRef:
          name: reader
        caSecretRef:
          name: master
          key: ca.crt
";

    #[test]
    fn directory_fields_and_secrets_are_checked() {
        let text = SET.replace("    staticUsers:", &format!("{DIRECTORY}    staticUsers:"));
        let b = bundle(&text);
        let errors = validate_mailbox_set(&b, &b.mailbox_sets[0]);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.masterPassword.directory.maxRemovedPercent",
                "spec.masterPassword.directory.syncBeforeRun",
                "spec.masterPassword.directory.ldap.url",
                "spec.masterPassword.directory.ldap.url",
                "spec.masterPassword.directory.ldap.baseDN",
                "spec.masterPassword.directory.ldap.filter",
                "spec.masterPassword.directory.ldap.groupDN",
                "spec.masterPassword.directory.ldap.bindSecretRef.name",
                "spec.masterPassword.directory.ldap.caSecretRef",
            ],
            "{errors:#?}"
        );
        assert!(errors[1]
            .message
            .contains("every run reads the directory first"));
        assert!(errors[7]
            .message
            .contains("Secret default/reader is not in the given files"));
        assert!(errors[8].message.contains("has no key \"ca.crt\""));
    }

    #[test]
    fn a_good_directory_is_valid() {
        let directory = "    directory:
      ldap:
        url: ldaps://dc1.example.org
        baseDN: dc=example,dc=org
        bindSecretRef:
          name: master
";
        // The master Secret doubles as the bind Secret here.
        let text = SET
            .replace("    staticUsers:", &format!("{directory}    staticUsers:"))
            .replace("  password: pw\n", "  password: pw\n  bindDN: cn=reader\n");
        let b = bundle(&text);
        assert_eq!(validate_mailbox_set(&b, &b.mailbox_sets[0]), vec![]);
        let directory = b.mailbox_sets[0]
            .object
            .spec
            .master_password
            .as_ref()
            .unwrap();
        let directory = directory.directory.as_ref().unwrap();
        assert!(directory.sync_before_run);
        assert_eq!(directory.max_removed_percent, 50);
        assert_eq!(directory.ldap.base_dn, "dc=example,dc=org");
    }

    const S3_SECRET: &str = "---
apiVersion: v1
kind: Secret
metadata:
  name: s3-keys
stringData:
  accessKeyId: AKIAEXAMPLE
";

    fn store_errors(store: &str) -> Vec<(String, String)> {
        let b = bundle(&format!("{}{S3_SECRET}", profile(store)));
        validate_profile(&b, &b.profiles[0])
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn a_store_needs_exactly_one_backend() {
        assert_eq!(
            store_errors("  store: {}\n"),
            [("spec.store".into(), "set exactly one of local or s3".into())]
        );
        let both = "  store:\n    local: {}\n    s3:\n      bucket: b\n";
        assert_eq!(store_errors(both)[0].0, "spec.store");
        assert_eq!(store_errors("  store:\n    s3:\n      bucket: b\n"), []);
    }

    #[test]
    fn the_encryption_key_must_be_in_its_secret() {
        let store = |name: &str, key: &str| {
            format!(
                "  store:\n    local: {{}}\n    encryption:\n      keySecretRef:\n        \
                 name: {name}\n        key: '{key}'\n"
            )
        };
        assert_eq!(store_errors(&store("s3-keys", "accessKeyId")), []);
        let errors = store_errors(&store("s3-keys", "keys.txt"));
        assert_eq!(errors[0].0, "spec.store.encryption.keySecretRef.key");
        assert!(
            errors[0].1.contains("has no key \"keys.txt\""),
            "{errors:?}"
        );
        let errors = store_errors(&store("nowhere", "keys.txt"));
        assert_eq!(errors[0].0, "spec.store.encryption.keySecretRef.name");
        assert!(
            errors[0].1.contains("is not in the given files"),
            "{errors:?}"
        );
        let errors = store_errors(&store("s3-keys", " "));
        assert_eq!(errors[0].0, "spec.store.encryption.keySecretRef.key");
    }

    #[test]
    fn the_profile_alone_is_blamed_only_for_its_own_fields() {
        // The set's Secret lacks its password, the profile's key Secret its key.
        let text = format!(
            "{}{S3_SECRET}",
            profile(
                "  store:\n    local: {}\n    encryption:\n      keySecretRef:\n        \
                 name: s3-keys\n        key: keys.txt\n"
            )
        )
        .replace("  password: pw\n", "");
        let b = bundle(&text);
        let fields = |errors: Vec<FieldError>| -> Vec<String> {
            errors.into_iter().map(|e| e.field).collect()
        };
        assert_eq!(
            fields(validate_profile(&b, &b.profiles[0])),
            [
                "spec.store.encryption.keySecretRef.key",
                "spec.masterPassword.credentialsSecretRef.name"
            ]
        );
        assert_eq!(
            fields(validate_profile_alone(&b, &b.profiles[0])),
            ["spec.store.encryption.keySecretRef.key"]
        );
    }

    #[test]
    fn s3_store_fields_are_checked() {
        let errors = store_errors(
            "  store:\n    s3:\n      bucket: ''\n      prefix: a//b\n      endpoint: ftp://s3\n      \
             credentialsSecretRef:\n        name: s3-keys\n      kmsKeyId: k1\n",
        );
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.store.s3.bucket",
                "spec.store.s3.prefix",
                "spec.store.s3.endpoint",
                "spec.store.s3.credentialsSecretRef.name",
                "spec.store.s3.kmsKeyId",
            ]
        );
        assert!(
            errors[3].1.contains("has no key \"secretAccessKey\""),
            "{errors:?}"
        );
        let valid = "  store:\n    s3:\n      bucket: archive\n      prefix: /mail/\n      \
                     endpoint: https://s3.example.org\n      forcePathStyle: true\n      \
                     serverSideEncryption: aws:kms\n      kmsKeyId: k1\n";
        assert_eq!(store_errors(valid), []);
    }

    #[test]
    fn a_claim_path_stays_inside_the_claim() {
        let store = |path: &str| {
            format!("  store:\n    local:\n      persistentVolumeClaim:\n        claimName: archive\n{path}")
        };
        for ok in ["", "      path: staff\n", "      path: ./a/b\n"] {
            let b = bundle(&profile(&store(ok)));
            assert_eq!(validate_profile(&b, &b.profiles[0]), vec![], "{ok}");
        }
        for bad in ["      path: /srv/archive\n", "      path: a/../../b\n"] {
            let b = bundle(&profile(&store(bad)));
            let errors = validate_profile(&b, &b.profiles[0]);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].field, "spec.store.local.path");
        }
    }

    #[test]
    fn two_static_users_in_one_archive_place_are_refused() {
        let text = SET.replace(
            "        email: alice@example.org\n",
            "        email: alice@example.org\n      - name: bob\n        email: bob@example.org\n      \
             - name: Alice\n        email: ALICE@example.org\n      - name: alice\n        email: ali@example.org\n",
        );
        let b = bundle(&text);
        let errors = validate_mailbox_set(&b, &b.mailbox_sets[0]);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].field, "spec.masterPassword.staticUsers[2]");
        assert!(
            errors[0]
                .message
                .contains("the same place as staticUsers[0]"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn a_set_needs_exactly_one_mode() {
        let text = SET.replace(
            "  masterPassword:",
            "  csv:\n    secretRef:\n      name: master\n  masterPassword:",
        );
        let b = bundle(&text);
        let errors = validate_mailbox_set(&b, &b.mailbox_sets[0]);
        assert_eq!(errors[0].field, "spec");
        let text = SET.replace(
            "  masterPassword:",
            "  oauth2:\n    provider: Google\n    credentialsSecretRef:\n      name: master\n  masterPassword:",
        );
        let b = bundle(&text);
        let errors = validate_mailbox_set(&b, &b.mailbox_sets[0]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].message,
            "set exactly one of masterPassword, csv or oauth2"
        );
    }

    const M365: &str = "provider: Microsoft365\n    tenantID: contoso.com\n    clientID: c";
    const GENERIC: &str =
        "provider: Generic\n    clientID: c\n    tokenURL: https://sso.example.org/token";

    /// An OAuth2 set (`provider` and its settings) whose Secret `app` holds `keys`, with
    /// `extra` spec lines.
    fn oauth2_set(provider: &str, keys: &[&str], extra: &str) -> Bundle {
        let data: String = match keys {
            [] => " {}\n".into(),
            keys => {
                keys.iter()
                    .map(|k| format!("\n  {k}: x"))
                    .collect::<String>()
                    + "\n"
            }
        };
        bundle(&format!(
            "apiVersion: mailvault.io/v1alpha1\nkind: MailboxSet\nmetadata:\n  name: s\nspec:\n  \
             oauth2:\n    {provider}\n    credentialsSecretRef:\n      name: app\n{extra}\
             ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: app\nstringData:{data}"
        ))
    }

    fn set_errors(b: &Bundle) -> Vec<(String, String)> {
        validate_mailbox_set(b, &b.mailbox_sets[0])
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    }

    #[test]
    fn an_oauth2_secret_needs_the_providers_keys() {
        for keys in [&["clientSecret"][..], &["tls.crt", "tls.key"][..]] {
            assert_eq!(set_errors(&oauth2_set(M365, keys, "")), vec![]);
        }
        for keys in [&[][..], &["tls.crt"][..], &["serviceAccount.json"][..]] {
            let errors = set_errors(&oauth2_set(GENERIC, keys, ""));
            assert_eq!(errors.len(), 1, "{keys:?}: {errors:?}");
            assert_eq!(errors[0].0, "spec.oauth2.credentialsSecretRef.name");
            assert!(
                errors[0].1.contains("neither key \"clientSecret\""),
                "{errors:?}"
            );
        }
        let google = "provider: Google";
        assert_eq!(
            set_errors(&oauth2_set(google, &["serviceAccount.json"], "")),
            vec![]
        );
        let errors = set_errors(&oauth2_set(google, &["clientSecret"], ""));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].1.contains("has no key \"serviceAccount.json\""),
            "{errors:?}"
        );
    }

    #[test]
    fn oauth2_static_users_are_checked_like_master_password_ones() {
        let users = "    staticUsers:\n      - name: alice\n        email: alice@contoso.com\n      \
                     - name: ALICE\n        email: Alice@Contoso.com\n      - name: ' '\n        email: bob\n";
        let fields: Vec<String> = set_errors(&oauth2_set(M365, &["clientSecret"], users))
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.oauth2.staticUsers[1]",
                "spec.oauth2.staticUsers[2].name",
                "spec.oauth2.staticUsers[2].email"
            ]
        );
    }

    #[test]
    fn tokens_are_never_sent_over_a_plain_connection() {
        let b = oauth2_set(M365, &["clientSecret"], "");
        let p = bundle(
            "apiVersion: mailvault.io/v1alpha1\nkind: ArchiveProfile\nmetadata:\n  name: p\nspec:\n  \
             mailboxSetRef:\n    name: s\n  server:\n    host: imap.example.org\n    security: None\n",
        );
        let b = Bundle {
            profiles: p.profiles,
            ..b
        };
        let errors = validate_profile(&b, &b.profiles[0]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "spec.server.security");
        assert!(errors[0].message.contains("never in the clear"));
    }
}
