//! The directory source against a real OpenLDAP server: reading users
//! (`fetch_users`), over StartTLS and across pages, and resolving MailboxSets
//! that use it, with the selection and the removal guard.

use std::fmt::Write;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, Scope};
use mailvault::resources::{load_paths, Bundle, Flavor, LdapSpec, SyncRecord};
use mailvault::sensitive::Sensitive;
use mailvault::sources::directory::{fetch_users, Bind, DirectoryError, DirectoryUser};
use mailvault::sources::{self, Resolved, SourceError};
use mailvault_testkit::slapd::{
    Slapd, PEOPLE_DN as PEOPLE, READER_DN, READER_PASSWORD, SAMPLE_LDIF, SUFFIX,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const MASTER_PASSWORD: &str = "master-pw-5d1e";

fn seeded() -> Slapd {
    let slapd = Slapd::start().unwrap();
    slapd.add_ldif(SAMPLE_LDIF).unwrap();
    slapd
}

fn spec(slapd: &Slapd) -> LdapSpec {
    spec_for_url(&slapd.url())
}

fn reader() -> Bind {
    Bind {
        dn: READER_DN.to_owned(),
        password: Sensitive::new(READER_PASSWORD),
    }
}

fn user(name: &str, emails: &[&str]) -> DirectoryUser {
    DirectoryUser {
        name: name.to_owned(),
        emails: emails.iter().map(|e| (*e).to_owned()).collect(),
        dn: format!("uid={name},{PEOPLE}"),
    }
}

fn everyone() -> Vec<DirectoryUser> {
    vec![
        user("alice", &["alice@example.org"]),
        user("bob", &["bob@example.org", "robert.baker@example.org"]),
        user("carol", &[]),
        user("dave", &["dave@example.org"]),
    ]
}

#[tokio::test]
async fn anonymous_fetch_returns_the_people_with_addresses_in_order() {
    let slapd = seeded();
    let users = fetch_users(&spec(&slapd), None, None).await.unwrap();
    assert_eq!(users, everyone());
}

#[tokio::test]
async fn bound_fetch_returns_the_same() {
    let slapd = seeded();
    let users = fetch_users(&spec(&slapd), Some(&reader()), None)
        .await
        .unwrap();
    assert_eq!(users, everyone());
}

#[tokio::test]
async fn custom_filter_leaves_out_disabled_people() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.filter = Some("(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))".to_owned());
    let users = fetch_users(&spec, None, None).await.unwrap();
    assert_eq!(users, everyone()[..3]);
}

#[tokio::test]
async fn custom_attributes_are_used() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.user_name_attribute = Some("sn".to_owned());
    spec.email_attribute = Some("CN".to_owned());
    let users = fetch_users(&spec, None, None).await.unwrap();
    let pairs: Vec<_> = users
        .iter()
        .map(|u| (u.name.as_str(), u.emails.join(",")))
        .collect();
    assert_eq!(
        pairs,
        [
            ("Archer", "Alice Archer".to_owned()),
            ("Baker", "Bob Baker".to_owned()),
            ("Cook", "Carol Cook".to_owned()),
            ("Dean", "Dave Dean".to_owned()),
            ("Uid", "No Uid".to_owned()),
        ]
    );
}

#[tokio::test]
async fn group_of_names_restricts_to_its_members() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.group_dn = Some(format!("cn=staff,ou=groups,{SUFFIX}"));
    let users = fetch_users(&spec, Some(&reader()), None).await.unwrap();
    assert_eq!(users, [everyone()[0].clone(), everyone()[2].clone()]);
}

#[tokio::test]
async fn posix_and_unique_member_groups_restrict_too() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.group_dn = Some(format!("cn=ops,ou=groups,{SUFFIX}"));
    let names = |users: Vec<DirectoryUser>| users.into_iter().map(|u| u.name).collect::<Vec<_>>();
    assert_eq!(
        names(fetch_users(&spec, None, None).await.unwrap()),
        ["bob"]
    );
    spec.group_dn = Some(format!("CN=Auditors, OU=Groups, {SUFFIX}"));
    assert_eq!(
        names(fetch_users(&spec, None, None).await.unwrap()),
        ["dave"]
    );
}

#[tokio::test]
async fn users_with_the_same_name_in_other_case_are_kept_once() {
    let slapd = seeded();
    slapd
        .add_ldif(&format!(
            "dn: ou=contractors,{PEOPLE}\nobjectClass: organizationalUnit\nou: contractors\n\n\
             dn: uid=ALICE,ou=contractors,{PEOPLE}\nobjectClass: inetOrgPerson\nuid: ALICE\n\
             cn: Other Alice\nsn: Other\nmail: other.alice@example.org\n"
        ))
        .unwrap();
    let users = fetch_users(&spec(&slapd), None, None).await.unwrap();
    let names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["ALICE", "bob", "carol", "dave"]);
}

#[tokio::test]
async fn missing_group_is_a_group_error() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.group_dn = Some(format!("cn=nobody,ou=groups,{SUFFIX}"));
    let error = fetch_users(&spec, None, None).await.unwrap_err();
    assert!(matches!(error, DirectoryError::Group { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "read group cn=nobody,ou=groups,{SUFFIX} on {} failed: noSuchObject (32)",
            slapd.url()
        )
    );
}

#[tokio::test]
async fn missing_base_is_a_search_error() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.base_dn = format!("ou=nobody,{SUFFIX}");
    let error = fetch_users(&spec, None, None).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "search under ou=nobody,{SUFFIX} on {} failed: noSuchObject (32)",
            slapd.url()
        )
    );
}

#[tokio::test]
async fn wrong_password_is_a_bind_error_without_the_password() {
    let slapd = seeded();
    let wrong = Bind {
        dn: READER_DN.to_owned(),
        password: Sensitive::new("not-the-password-91c2"),
    };
    let error = fetch_users(&spec(&slapd), Some(&wrong), None)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, DirectoryError::Bind { .. }), "{error:?}");
    assert_eq!(
        message,
        format!(
            "bind as {READER_DN} to {} failed: invalidCredentials (49)",
            slapd.url()
        )
    );
    assert!(!format!("{message} {error:?}").contains("not-the-password-91c2"));
}

#[tokio::test]
async fn empty_password_is_refused_before_it_becomes_an_anonymous_bind() {
    let slapd = seeded();
    let empty = Bind {
        dn: READER_DN.to_owned(),
        password: Sensitive::new(""),
    };
    let error = fetch_users(&spec(&slapd), Some(&empty), None)
        .await
        .unwrap_err();
    assert!(matches!(error, DirectoryError::Bind { .. }), "{error:?}");
    assert!(error.to_string().contains("the password is empty"));
}

#[tokio::test]
async fn closed_port_is_a_quick_connect_error() {
    let mut slapd = Slapd::start().unwrap();
    let spec = spec(&slapd);
    slapd.stop();
    let started = Instant::now();
    let error = fetch_users(&spec, None, None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(error, DirectoryError::Connect { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("connect to {}: connection refused", spec.url)
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts TCP connections but never answers, like a hung server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ldap://{}", listener.local_addr().unwrap());
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let spec = LdapSpec {
        timeout_seconds: 1,
        ..spec_for_url(&url)
    };
    let started = Instant::now();
    let error = fetch_users(&spec, Some(&reader()), None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        error.to_string(),
        format!("bind as {READER_DN} to {url} failed: timed out after 1 s")
    );
    accepting.abort();
}

fn spec_for_url(url: &str) -> LdapSpec {
    LdapSpec {
        url: url.to_owned(),
        start_tls: false,
        insecure_skip_tls_verify: false,
        ca_secret_ref: None,
        bind_secret_ref: None,
        base_dn: PEOPLE.to_owned(),
        filter: None,
        user_name_attribute: None,
        email_attribute: None,
        group_dn: None,
        flavor: Flavor::Generic,
        timeout_seconds: 5,
    }
}

#[tokio::test]
async fn bad_filter_is_rejected_before_connecting() {
    let slapd = seeded();
    let mut spec = spec(&slapd);
    spec.filter = Some("(&(objectClass=inetOrgPerson)".to_owned());
    let error = fetch_users(&spec, None, None).await.unwrap_err();
    match error {
        DirectoryError::InvalidSpec(problems) => {
            assert_eq!(problems.len(), 1);
            assert_eq!(problems[0].0, "ldap.filter");
        }
        other => panic!("{other:?}"),
    }
}

fn names(users: Vec<DirectoryUser>) -> Vec<String> {
    users.into_iter().map(|u| u.name).collect()
}

struct Pki {
    ca_pem: String,
    server_chain_pem: String,
    server_key_pem: String,
}

/// A CA and a server certificate for 127.0.0.1, which is the name the
/// client checks since the URL uses the address.
fn make_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailvault test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_chain_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

fn seeded_tls(pki: Option<&Pki>) -> Slapd {
    let slapd = Slapd::start().unwrap();
    if let Some(pki) = pki {
        slapd
            .enable_tls(&pki.server_chain_pem, &pki.server_key_pem)
            .unwrap();
    }
    slapd.add_ldif(SAMPLE_LDIF).unwrap();
    slapd
}

fn start_tls_spec(slapd: &Slapd) -> LdapSpec {
    LdapSpec {
        url: slapd.url(),
        start_tls: true,
        insecure_skip_tls_verify: false,
        ca_secret_ref: None,
        bind_secret_ref: None,
        base_dn: SUFFIX.to_owned(),
        filter: Some("(uid=alice)".to_owned()),
        user_name_attribute: None,
        email_attribute: None,
        group_dn: None,
        flavor: Flavor::Generic,
        timeout_seconds: 5,
    }
}

#[tokio::test]
async fn start_tls_with_the_ca_from_the_secret() {
    let pki = make_pki();
    let slapd = seeded_tls(Some(&pki));
    let users = fetch_users(
        &start_tls_spec(&slapd),
        Some(&reader()),
        Some(pki.ca_pem.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(names(users), ["alice"]);
}

#[tokio::test]
async fn start_tls_refuses_an_unknown_ca() {
    let pki = make_pki();
    let slapd = seeded_tls(Some(&pki));
    let spec = start_tls_spec(&slapd);
    let error = fetch_users(&spec, Some(&reader()), None).await.unwrap_err();
    assert!(matches!(error, DirectoryError::Tls { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "StartTLS with {} failed: invalid peer certificate: UnknownIssuer",
            spec.url
        )
    );

    let other_ca = make_pki().ca_pem;
    let error = fetch_users(&spec, Some(&reader()), Some(other_ca.as_bytes()))
        .await
        .unwrap_err();
    assert!(matches!(error, DirectoryError::Tls { .. }), "{error:?}");
}

#[tokio::test]
async fn insecure_skip_tls_verify_accepts_the_unknown_ca() {
    let pki = make_pki();
    let slapd = seeded_tls(Some(&pki));
    let spec = LdapSpec {
        insecure_skip_tls_verify: true,
        ..start_tls_spec(&slapd)
    };
    let users = fetch_users(&spec, Some(&reader()), None).await.unwrap();
    assert_eq!(names(users), ["alice"]);
}

#[tokio::test]
async fn start_tls_against_a_server_without_tls_fails() {
    let slapd = seeded_tls(None);
    let spec = start_tls_spec(&slapd);
    let error = fetch_users(&spec, Some(&reader()), None).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "StartTLS with {} failed: protocolError (2): unsupported extended operation",
            spec.url
        )
    );
}

#[tokio::test]
async fn garbage_ca_is_a_settings_error() {
    let slapd = seeded_tls(None);
    let spec = start_tls_spec(&slapd);
    for garbage in [&b"-----BEGIN nonsense"[..], b"no PEM at all"] {
        let error = fetch_users(&spec, None, Some(garbage)).await.unwrap_err();
        assert!(
            matches!(error, DirectoryError::TlsConfig { .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with(&format!(
                "TLS settings for {}: caSecretRef: the CA certificate",
                spec.url
            )),
            "{error}"
        );
    }
}

/// Active Directory's default MaxPageSize, also its unpaged limit.
const SIZE_LIMIT: u32 = 1000;
/// More than the limit, and more than two of the client's 500-entry pages.
const USERS: usize = 1201;

fn bulk_ldif() -> String {
    let mut ldif = format!(
        "{SAMPLE_LDIF}\ndn: ou=bulk,{SUFFIX}\nobjectClass: organizationalUnit\nou: bulk\n\n"
    );
    for i in 0..USERS {
        write!(
            ldif,
            "dn: uid=user{i:04},ou=bulk,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: user{i:04}\n\
             cn: User {i}\nsn: {i}\nmail: user{i:04}@example.org\n\n"
        )
        .unwrap();
    }
    ldif
}

#[tokio::test]
async fn paged_search_returns_more_users_than_the_size_limit() {
    let slapd = Slapd::start().unwrap();
    slapd.add_ldif(&bulk_ldif()).unwrap();
    slapd.set_size_limit(SIZE_LIMIT).unwrap();
    let base = format!("ou=bulk,{SUFFIX}");
    let reader_dn = READER_DN.to_owned();

    // The limit is real: an unpaged search stops at it.
    let (conn, mut ldap) = LdapConnAsync::new(&slapd.url()).await.unwrap();
    tokio::spawn(conn.drive());
    ldap.simple_bind(&reader_dn, READER_PASSWORD)
        .await
        .unwrap()
        .success()
        .unwrap();
    let unpaged = ldap
        .search(
            &base,
            Scope::Subtree,
            "(objectClass=inetOrgPerson)",
            vec!["uid"],
        )
        .await
        .unwrap();
    assert_eq!(unpaged.1.rc, 4, "{}", unpaged.1);
    assert_eq!(unpaged.0.len(), SIZE_LIMIT as usize);
    ldap.unbind().await.unwrap();

    let spec = LdapSpec {
        url: slapd.url(),
        start_tls: false,
        insecure_skip_tls_verify: false,
        ca_secret_ref: None,
        bind_secret_ref: None,
        base_dn: base,
        filter: None,
        user_name_attribute: None,
        email_attribute: None,
        group_dn: None,
        flavor: Flavor::Generic,
        timeout_seconds: 10,
    };
    let reader = Bind {
        dn: reader_dn,
        password: Sensitive::new(READER_PASSWORD),
    };
    let users = fetch_users(&spec, Some(&reader), None).await.unwrap();
    assert_eq!(users.len(), USERS);
    for (i, user) in users.iter().enumerate() {
        assert_eq!(user.name, format!("user{i:04}"));
        assert_eq!(user.emails, [format!("user{i:04}@example.org")]);
    }
}

// Resolving MailboxSets with a directory.

/// A MailboxSet `mail/staff` reading the people of [`SAMPLE_LDIF`] as the
/// reader, with static user erin; `users` and `ldap_extra` are YAML lines
/// for `spec.masterPassword.users` and `...directory.ldap`.
fn set_yaml(url: &str, users: &str, directory_extra: &str, ldap_extra: &str) -> String {
    format!(
        "apiVersion: mailvault.io/v1alpha1
kind: MailboxSet
metadata:
  name: staff
  namespace: mail
spec:
  masterPassword:
    credentialsSecretRef:
      name: master
    users:
{users}    staticUsers:
      - name: erin
        email: erin@example.org
    directory:
{directory_extra}      ldap:
        url: {url}
        baseDN: {PEOPLE}
        bindSecretRef:
          name: reader
        timeoutSeconds: 5
{ldap_extra}---
apiVersion: v1
kind: Secret
metadata:
  name: master
  namespace: mail
stringData:
  username: archiver
  password: {MASTER_PASSWORD}
---
apiVersion: v1
kind: Secret
metadata:
  name: reader
  namespace: mail
stringData:
  bindDN: {READER_DN}
  password: {READER_PASSWORD}
"
    )
}

fn load(yaml: &str) -> Bundle {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("set.yaml");
    std::fs::write(&path, yaml).unwrap();
    let bundle = load_paths(&[path]).unwrap();
    let set = &bundle.mailbox_sets[0];
    let errors = mailvault::resources::validate_mailbox_set(&bundle, set);
    assert!(errors.is_empty(), "{errors:?}");
    bundle
}

async fn resolve(yaml: &str, previous: Option<&SyncRecord>) -> Result<Resolved, SourceError> {
    let bundle = load(yaml);
    sources::resolve(&bundle, &bundle.mailbox_sets[0], previous).await
}

/// (user, authorization identity) of each mailbox, and (name, reason) of
/// each exclusion.
/// Pairs of names, as compared in these tests.
type Pairs = Vec<(String, String)>;

fn summary(resolved: &Resolved) -> (Pairs, Pairs) {
    for mailbox in &resolved.mailboxes {
        assert_eq!(mailbox.login, "archiver");
        assert_eq!(mailbox.password.expose(), MASTER_PASSWORD);
        assert_eq!(mailbox.email, mailbox.authorization_identity);
    }
    (
        resolved
            .mailboxes
            .iter()
            .map(|m| (m.user.clone(), m.authorization_identity.clone().unwrap()))
            .collect(),
        resolved
            .excluded
            .iter()
            .map(|e| (e.name.clone(), e.reason.clone()))
            .collect(),
    )
}

fn pairs(items: &[(&str, &str)]) -> Pairs {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn all_selects_directory_and_static_users_with_an_address() {
    let slapd = seeded();
    let resolved = resolve(
        &set_yaml(&slapd.url(), "      selection: All\n", "", ""),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        summary(&resolved),
        (
            pairs(&[
                ("alice", "alice@example.org"),
                ("bob", "bob@example.org"),
                ("dave", "dave@example.org"),
                ("erin", "erin@example.org"),
            ]),
            pairs(&[("carol", "no email address")]),
        )
    );
    let record = resolved.directory_sync.unwrap();
    assert_eq!(
        (
            record.users_found,
            record.without_email,
            record.excluded_by_selection,
            record.added,
            record.removed
        ),
        (4, 1, 0, 4, 0)
    );
    assert_eq!(record.users, ["alice", "bob", "carol", "dave"]);
    assert!(record.time.ends_with('Z'), "{}", record.time);
}

#[tokio::test]
async fn all_except_leaves_out_the_named_by_name_or_any_address() {
    let slapd = seeded();
    let users = "      selection: AllExcept\n      names: [Robert.Baker@example.org, erin]\n";
    let resolved = resolve(&set_yaml(&slapd.url(), users, "", ""), None)
        .await
        .unwrap();
    assert_eq!(
        summary(&resolved),
        (
            pairs(&[("alice", "alice@example.org"), ("dave", "dave@example.org")]),
            pairs(&[
                ("bob", "excluded by selection"),
                ("carol", "no email address"),
                ("erin", "excluded by selection"),
            ]),
        )
    );
    let record = resolved.directory_sync.unwrap();
    assert_eq!((record.without_email, record.excluded_by_selection), (1, 1));
}

#[tokio::test]
async fn only_selects_the_named_and_reports_names_not_found() {
    let slapd = seeded();
    let users = "      selection: Only\n      names: [ALICE, erin, carol, zed]\n";
    let resolved = resolve(&set_yaml(&slapd.url(), users, "", ""), None)
        .await
        .unwrap();
    assert_eq!(
        summary(&resolved),
        (
            pairs(&[("alice", "alice@example.org"), ("erin", "erin@example.org")]),
            pairs(&[
                ("bob", "not selected"),
                ("carol", "no email address"),
                ("dave", "not selected"),
                ("zed", "named in the selection but not found"),
            ]),
        )
    );
    let record = resolved.directory_sync.unwrap();
    assert_eq!((record.without_email, record.excluded_by_selection), (1, 2));
}

#[tokio::test]
async fn a_static_user_replaces_the_directory_user_of_that_name() {
    let slapd = seeded();
    let yaml = set_yaml(&slapd.url(), "      selection: All\n", "", "").replace(
        "      - name: erin\n        email: erin@example.org\n",
        "      - name: Carol\n        email: carol@example.org\n",
    );
    let resolved = resolve(&yaml, None).await.unwrap();
    let (mailboxes, excluded) = summary(&resolved);
    assert!(mailboxes.contains(&("Carol".to_owned(), "carol@example.org".to_owned())));
    assert_eq!(mailboxes.len(), 4);
    assert!(excluded.is_empty(), "{excluded:?}");
    assert_eq!(resolved.directory_sync.unwrap().without_email, 0);
}

#[tokio::test]
async fn group_restricts_the_directory_users_but_not_the_static_ones() {
    let slapd = seeded();
    let group = format!("        groupDN: cn=staff,ou=groups,{SUFFIX}\n");
    let resolved = resolve(
        &set_yaml(&slapd.url(), "      selection: All\n", "", &group),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        summary(&resolved),
        (
            pairs(&[("alice", "alice@example.org"), ("erin", "erin@example.org")]),
            pairs(&[("carol", "no email address")]),
        )
    );
    assert_eq!(resolved.directory_sync.unwrap().users, ["alice", "carol"]);
}

#[tokio::test]
async fn a_sync_dropping_more_than_max_removed_percent_is_refused() {
    let slapd = seeded();
    let all = "      selection: All\n";
    let first = resolve(&set_yaml(&slapd.url(), all, "", ""), None)
        .await
        .unwrap()
        .directory_sync
        .unwrap();

    // Half of the four known users gone: at the limit, accepted.
    let staff = format!("        groupDN: cn=staff,ou=groups,{SUFFIX}\n");
    let second = resolve(&set_yaml(&slapd.url(), all, "", &staff), Some(&first))
        .await
        .unwrap()
        .directory_sync
        .unwrap();
    assert_eq!((second.added, second.removed), (0, 2));

    // Three of four gone (a wrong group, say): refused, not an empty list.
    let ops = format!("        groupDN: cn=ops,ou=groups,{SUFFIX}\n");
    let error = resolve(&set_yaml(&slapd.url(), all, "", &ops), Some(&first))
        .await
        .unwrap_err();
    assert!(!error.is_invalid_input());
    let message = error.to_string();
    assert!(
        matches!(error, SourceError::TooManyRemoved { known: 4, ref removed, max_percent: 50, .. } if removed == &["alice", "carol", "dave"]),
        "{error:?}"
    );
    assert!(
        message.contains(
            "refusing the directory sync: it would drop 3 of the 4 previously known users, \
             more than maxRemovedPercent (50%) allows (e.g. alice, carol, dave)"
        ),
        "{message}"
    );

    // The same sync, allowed by a higher limit.
    let third = resolve(
        &set_yaml(&slapd.url(), all, "      maxRemovedPercent: 75\n", &ops),
        Some(&first),
    )
    .await
    .unwrap();
    let record = third.directory_sync.as_ref().unwrap();
    assert_eq!((record.added, record.removed), (0, 3));
    assert_eq!(
        summary(&third).0,
        pairs(&[("bob", "bob@example.org"), ("erin", "erin@example.org")])
    );
}

#[tokio::test]
async fn a_failed_bind_fails_resolution_without_the_password() {
    let slapd = seeded();
    let yaml = set_yaml(&slapd.url(), "      selection: All\n", "", "")
        .replace(READER_PASSWORD, "wrong-pw-3e9a");
    let error = resolve(&yaml, None).await.unwrap_err();
    assert!(matches!(error, SourceError::Directory { .. }), "{error:?}");
    assert!(!error.is_invalid_input());
    let text = format!("{error} {error:?}");
    assert!(
        error.to_string().ends_with(&format!(
            "MailboxSet mail/staff: reading the directory failed: bind as {READER_DN} to {} \
             failed: invalidCredentials (49)",
            slapd.url()
        )),
        "{error}"
    );
    assert!(!text.contains("wrong-pw-3e9a") && !text.contains(MASTER_PASSWORD));
}

#[tokio::test]
async fn an_unreachable_directory_fails_resolution() {
    let mut slapd = Slapd::start().unwrap();
    let url = slapd.url();
    slapd.stop();
    let error = resolve(&set_yaml(&url, "      selection: All\n", "", ""), None)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with(&format!("connect to {url}: connection refused")),
        "{error}"
    );
}
