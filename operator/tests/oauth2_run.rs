//! `mailvault run` and `mailvault mailboxes` with an `oauth2` MailboxSet, end to end: the
//! directory (Microsoft Graph, the Google Directory API, from the test kit's fake cloud; or
//! OpenLDAP) and tokens from the fake cloud, XOAUTH2 and OAUTHBEARER logins against a real
//! Dovecot that accepts nothing else, the archive, a re-run that stores nothing new, a
//! mailbox permission taken back, a wrong secret that fails the run once, and tokens that
//! expire during a run that lasts longer than they do. No secret or token ever in the
//! output.

mod common;

use common::*;
use mailvault_testkit::cloud::{
    app_principal, user_principal, App, Cloud, Principal, ServiceAccount, Tenant, TestKey, User,
    GOOGLE_DIRECTORY_SCOPE, GOOGLE_IMAP_SCOPE,
};
use mailvault_testkit::dovecot::{Dovecot, DovecotOptions, OAuth2Login};
use mailvault_testkit::mail;
use mailvault_testkit::proxy::Proxy;
use std::time::{Duration, Instant};

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "8a3f2c1e-5b7d-4e9f-a0b1-c2d3e4f5a6b7";
const SECRET: &str = "Qx8~run.Secret_that-must-never-leak";
/// 2025-01-06, as INTERNALDATE.
const DATE: i64 = 1_736_157_600;

/// A Dovecot that takes only `mechanism` (OAuth2), with `users`, each holding `counts[i]`
/// messages in INBOX.
fn oauth2_dovecot(cloud: &Cloud, mechanism: &str, users: &[&str], counts: &[u64]) -> Dovecot {
    let mut login = OAuth2Login::new(&cloud.introspection_url());
    login.mechanisms = vec![mechanism.to_string()];
    let dovecot = Dovecot::start_with(DovecotOptions {
        oauth2: Some(login),
        ..DovecotOptions::default()
    })
    .unwrap();
    for (user, count) in users.iter().zip(counts) {
        dovecot.add_user(user, "unused-password").unwrap();
        for n in 0..*count {
            deliver(&dovecot, user, n);
        }
    }
    dovecot
}

fn deliver(dovecot: &Dovecot, user: &str, n: u64) {
    let m = mail::message(7, n, "sender@example.net", user, &format!("M {n}"), 2000);
    dovecot.deliver(user, "INBOX", &m, DATE, &[]).unwrap();
}

fn microsoft_cloud(users: Vec<User>) -> Cloud {
    let cloud = Cloud::start().unwrap();
    cloud.update(|s| {
        s.tenants.push(Tenant {
            id: "7d1a3f52-0a5e-4d8b-9c11-2b6c0f1e9a01".into(),
            domains: vec![TENANT.into(), "contoso.com".into()],
            apps: vec![App::consented(
                CLIENT_ID,
                SECRET,
                &["IMAP.AccessAsApp", "User.Read.All"],
            )],
        });
        s.users = users;
    });
    cloud
}

/// `spec.oauth2` of a Microsoft 365 set against the cloud at `url`, with `rest` added.
fn microsoft_spec(url: &str, rest: &str) -> String {
    format!(
        "    provider: Microsoft365\n    tenantID: {TENANT}\n    clientID: {CLIENT_ID}\n    \
         tokenURL: {url}/{TENANT}/oauth2/v2.0/token\n    credentialsSecretRef:\n      name: app\n{rest}"
    )
}

/// Every token the fake cloud issued, and the secrets given: none may be shown.
fn assert_nothing_secret(cloud: &Cloud, secrets: &[&str], outputs: &[&Outcome]) {
    let tokens: Vec<String> = cloud.update(|s| s.issued.iter().map(|i| i.token.clone()).collect());
    for out in outputs {
        let text = format!("{}\n{}", out.stdout, out.stderr);
        for needle in tokens
            .iter()
            .map(String::as_str)
            .chain(secrets.iter().copied())
        {
            assert!(!text.contains(needle), "{needle:?} shown:\n{text}");
        }
    }
}

/// `mailvault run` as [`run`] does, logging everything at trace level, as JSON.
fn traced_run(input: &std::path::Path, store: &std::path::Path) -> Outcome {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .args(["run", "-f", input.to_str().unwrap()])
        .args(["--store", store.to_str().unwrap(), "-o", "json"])
        .args(["--log-format", "json"])
        .env(
            "MAILVAULT_LOG",
            "async_imap=trace,hyper=trace,rustls=trace,trace",
        )
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn token_requests(cloud: &Cloud, path: &str) -> usize {
    cloud.update(|s| s.requests_to(path).len())
}

#[test]
fn microsoft365_set_reads_graph_logs_in_with_xoauth2_and_archives_each_mailbox_once() {
    let mut guest = User::new(
        "d0000000-0000-0000-0000-000000000004",
        "guest@partner.example",
    );
    guest.user_type = "Guest".into();
    let mut disabled = User::new("c0000000-0000-0000-0000-000000000003", "shared@contoso.com");
    disabled.account_enabled = false;
    let mut alice = User::new("a0000000-0000-0000-0000-000000000001", "alice@contoso.com");
    alice.proxy_addresses = vec![
        "SMTP:alice@contoso.com".into(),
        "smtp:ali@contoso.com".into(),
    ];
    let cloud = microsoft_cloud(vec![
        alice,
        User::new("b0000000-0000-0000-0000-000000000002", "bob@contoso.com"),
        disabled,
        guest,
    ]);
    let mailboxes = ["alice@contoso.com", "bob@contoso.com"];
    let dovecot = oauth2_dovecot(&cloud, "xoauth2", &mailboxes, &[3, 2]);
    for user in mailboxes {
        // Add-MailboxPermission for the app.
        dovecot
            .grant_oauth2(&app_principal(CLIENT_ID), user)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    // Over HTTPS, the fake cloud's certificate verified with its CA from caSecretRef.
    let url = cloud.https_url();
    let directory = format!(
        "    caSecretRef:\n      name: cloud-ca\n      key: ca.crt\n    \
         directory:\n      microsoftGraph:\n        endpoint: {url}\n"
    );
    let ca: String = cloud
        .ca_pem()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let yaml = oauth2_yaml(
        &dovecot,
        &microsoft_spec(&url, &directory),
        &format!(
            "  clientSecret: {SECRET}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  \
             name: cloud-ca\nstringData:\n  ca.crt: |\n{ca}"
        ),
    );
    // Without the CA the cloud's certificate is not trusted: nothing is sent to it.
    let untrusted = write_yaml(
        dir.path(),
        &yaml.replace(
            "    caSecretRef:\n      name: cloud-ca\n      key: ca.crt\n",
            "",
        ),
    );
    let refused = mailvault(&["mailboxes", "-f", untrusted.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.contains("certificate") || refused.stderr.contains("certificate"),
        "{}\n{}",
        refused.stdout,
        refused.stderr
    );
    assert_eq!(cloud.update(|s| s.requests.len()), 0);
    let input = write_yaml(dir.path(), &yaml);

    let listed = mailvault(&["mailboxes", "-f", input.to_str().unwrap()]);
    assert_eq!(listed.code, 0, "{}\n{}", listed.stdout, listed.stderr);
    assert!(
        listed.stdout.contains("(oauth2)")
            && listed.stdout.contains("mailboxes: 2")
            && listed
                .stdout
                .contains("login alice@contoso.com with OAuth2")
            && listed.stdout.contains("login bob@contoso.com with OAuth2")
            && !listed.stdout.contains("guest@partner.example")
            && !listed.stdout.contains("shared@contoso.com"),
        "{}",
        listed.stdout
    );

    let token_path = format!("/{TENANT}/oauth2/v2.0/token");
    // The listing read Graph, with a Graph token; no IMAP token.
    assert_eq!(token_requests(&cloud, &token_path), 1);
    let first = run(&input, &store);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let p = first.json();
    assert_eq!(p["result"], "Succeeded");
    assert_eq!(mailbox(&p, "alice@contoso.com")["archived"], 3);
    assert_eq!(mailbox(&p, "bob@contoso.com")["archived"], 2);
    assert_eq!(p["totals"]["mailboxes"], 2);
    // One app token serves every mailbox: one request for IMAP, one for Graph.
    assert_eq!(token_requests(&cloud, &token_path), 3);
    let log = std::fs::read_to_string(dovecot.dir().join("dovecot.log")).unwrap();
    assert_eq!(log.matches("method=XOAUTH2").count(), 2, "{log}");

    // At trace level, for every library too: the tokens still never show.
    let again = traced_run(&input, &store);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(again.stderr.contains("mailbox done"), "logging is on");
    let p = again.json();
    assert_eq!(p["totals"]["archived"], 0);
    assert_eq!(p["totals"]["alreadyArchived"], 5);

    // The mailbox permission on bob's mailbox is taken back: only bob fails, in plain
    // words, and alice's new message is archived.
    dovecot
        .revoke_oauth2(&app_principal(CLIENT_ID), "bob@contoso.com")
        .unwrap();
    deliver(&dovecot, "alice@contoso.com", 10);
    let third = run(&input, &store);
    assert_eq!(third.code, 1, "{}\n{}", third.stdout, third.stderr);
    let p = third.json();
    assert_eq!(mailbox(&p, "alice@contoso.com")["archived"], 1);
    let bob = mailbox(&p, "bob@contoso.com");
    assert_eq!(bob["result"], "Failed");
    let message = bob["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("Add-MailboxPermission"), "{message}");
    assert_nothing_secret(&cloud, &[SECRET], &[&listed, &first, &again, &third]);
}

/// Lifetime of the tokens in the runs over a slow link.
const SHORT_LIFETIME: Duration = Duration::from_secs(2);

/// A run of [`run_over_a_slow_link`].
struct SlowRun {
    mailboxes: Vec<String>,
    out: Outcome,
    took: Duration,
    dovecot: Dovecot,
}

/// Four mailboxes `m1@domain`..`m4@domain` of 120 KB each, listed as static users and
/// opened by the tokens of `principal(mailbox)`, archived one after another through a link
/// that passes 100 KB/s from the server: each takes more than a second, longer than a token
/// of [`SHORT_LIFETIME`] is handed out for, so the run outlasts several tokens whatever
/// the speed of the machine. `spec(static users)` is the set's `spec.oauth2`.
fn run_over_a_slow_link(
    cloud: &Cloud,
    mechanism: &str,
    domain: &str,
    principal: impl Fn(&str) -> String,
    spec: impl Fn(&str) -> String,
    secret: &str,
) -> SlowRun {
    cloud.update(|s| s.token_lifetime = SHORT_LIFETIME);
    let dovecot = oauth2_dovecot(cloud, mechanism, &[], &[]);
    let mailboxes: Vec<String> = (1..=4).map(|i| format!("m{i}@{domain}")).collect();
    let mut statics = String::from("    staticUsers:\n");
    for (i, user) in mailboxes.iter().enumerate() {
        dovecot.add_user(user, "unused-password").unwrap();
        let messages: Vec<(Vec<u8>, i64)> = (0..3)
            .map(|n| {
                let m = mail::message(9, n, "sender@example.net", user, "big", 40_000);
                (m, DATE)
            })
            .collect();
        dovecot.deliver_many(user, "INBOX", &messages).unwrap();
        dovecot.grant_oauth2(&principal(user), user).unwrap();
        statics.push_str(&format!("      - name: m{i}\n        email: {user}\n"));
    }
    let link = Proxy::throttled(dovecot.imaps_port(), 100_000).unwrap();
    let yaml = oauth2_yaml(&dovecot, &spec(&statics), secret)
        .replace(
            &format!("port: {}", dovecot.imaps_port()),
            &format!("port: {}", link.port()),
        )
        .replace("  mailboxSetRef:", "  maxParallelJobs: 1\n  mailboxSetRef:");
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = run(&write_yaml(dir.path(), &yaml), &dir.path().join("archive"));
    SlowRun {
        mailboxes,
        out,
        took: started.elapsed(),
        dovecot,
    }
}

impl SlowRun {
    /// Every mailbox archived, each with one login with `method`, none of them refused,
    /// and no token shown to Dovecot after it expired.
    fn assert_logged_in_with_fresh_tokens(&self, cloud: &Cloud, method: &str) {
        let out = &self.out;
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        let p = out.json();
        assert_eq!(p["result"], "Succeeded", "{p:#}");
        for user in &self.mailboxes {
            let m = mailbox(&p, user);
            assert_eq!(
                (&m["result"], &m["archived"]),
                (&"Succeeded".into(), &3.into())
            );
        }
        let took = self.took;
        assert!(
            took > 2 * SHORT_LIFETIME,
            "the run outlasts a token: {took:?}"
        );
        let log = std::fs::read_to_string(self.dovecot.dir().join("dovecot.log")).unwrap();
        assert_eq!(log.matches(&format!("method={method}")).count(), 4, "{log}");
        assert!(!log.contains("auth failed"), "{log}");
        assert_eq!(cloud.update(|s| s.expired_introspections), 0);
    }
}

/// Microsoft 365: one token for every mailbox, so the one fetched before the run expires
/// during it; the logins late in the run get renewed ones, and a token is still reused
/// while it is fresh (not one request per login and more).
#[test]
fn a_token_that_expires_during_a_run_is_renewed_before_a_login_needs_it() {
    let cloud = microsoft_cloud(Vec::new());
    let slow = run_over_a_slow_link(
        &cloud,
        "xoauth2",
        "contoso.com",
        |_| app_principal(CLIENT_ID),
        |statics| microsoft_spec(&cloud.http_url(), statics),
        &format!("  clientSecret: {SECRET}\n"),
    );
    slow.assert_logged_in_with_fresh_tokens(&cloud, "XOAUTH2");
    let imap_tokens = cloud.update(|s| {
        s.requests_to(&format!("/{TENANT}/oauth2/v2.0/token"))
            .iter()
            .filter(|r| r.field("scope") == Some("https://outlook.office365.com/.default"))
            .count()
    });
    // Renewed during the run; at most one per login, and one for the check before it.
    let took = slow.took;
    assert!(
        (2..=5).contains(&imap_tokens),
        "{imap_tokens} tokens in {took:?}"
    );
    assert_nothing_secret(&cloud, &[SECRET], &[&slow.out]);
}

/// Google: a token per user, each asked for right before that user's login: the last
/// login comes after a token fetched at the start would have expired, and each user's
/// token is asked for once (twice at most for the first, whose token is also the check's
/// before the run).
#[test]
fn google_tokens_are_fetched_per_user_when_the_login_comes() {
    let cloud = Cloud::start().unwrap();
    let account = ServiceAccount {
        client_email: "archiver@mailvault-test.iam.gserviceaccount.com".into(),
        client_id: "104857600123456789012".into(),
        key: TestKey::generate().unwrap(),
        delegated_scopes: vec![GOOGLE_IMAP_SCOPE.into()],
        disabled: false,
    };
    cloud.update(|s| {
        s.service_accounts.push(account.clone());
        s.users = (1..=4)
            .map(|i| User::new(&format!("id-{i}"), &format!("m{i}@example.org")))
            .collect();
    });
    let json = account.json(&format!("{}/token", cloud.http_url()));
    let indented: String = json.lines().map(|l| format!("    {l}\n")).collect();
    let slow = run_over_a_slow_link(
        &cloud,
        "oauthbearer",
        "example.org",
        user_principal,
        |statics| {
            format!("    provider: Google\n    credentialsSecretRef:\n      name: app\n{statics}")
        },
        &format!("  serviceAccount.json: |\n{indented}"),
    );
    slow.assert_logged_in_with_fresh_tokens(&cloud, "OAUTHBEARER");
    let subjects: Vec<String> = cloud.update(|s| {
        s.issued
            .iter()
            .filter_map(|i| match &i.principal {
                Principal::Delegated { user, .. } => user.clone(),
                _ => None,
            })
            .collect()
    });
    for (i, user) in slow.mailboxes.iter().enumerate() {
        let n = subjects.iter().filter(|s| *s == user).count();
        let most = if i == 0 { 2 } else { 1 };
        assert!((1..=most).contains(&n), "{user}: {subjects:?}");
    }
    let key_line = account.key.key_pem.lines().nth(1).unwrap().to_string();
    assert_nothing_secret(&cloud, &[key_line.as_str()], &[&slow.out]);
}

#[test]
fn a_wrong_secret_fails_the_run_once_without_touching_a_mailbox() {
    let cloud = microsoft_cloud(Vec::new());
    let mailboxes = ["alice@contoso.com", "bob@contoso.com"];
    let dovecot = oauth2_dovecot(&cloud, "xoauth2", &mailboxes, &[1, 1]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let statics = "    staticUsers:\n      - name: alice\n        email: alice@contoso.com\n      \
                   - name: bob\n        email: bob@contoso.com\n";
    let wrong = "Qx8~an.old_secret-value";
    let yaml = oauth2_yaml(
        &dovecot,
        &microsoft_spec(&cloud.http_url(), statics),
        &format!("  clientSecret: {wrong}\n"),
    );
    let out = run(&write_yaml(dir.path(), &yaml), &store);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no OAuth2 token for any mailbox")
            && out.stderr.contains("AADSTS7000215"),
        "{}",
        out.stderr
    );
    // Asked once, not once per mailbox; no login was tried.
    assert_eq!(
        token_requests(&cloud, &format!("/{TENANT}/oauth2/v2.0/token")),
        1
    );
    assert_eq!(cloud.update(|s| s.introspections), 0);
    assert!(!store.join("runs").exists());
    assert_nothing_secret(&cloud, &[wrong, SECRET], &[&out]);
}

#[test]
fn google_set_reads_the_directory_and_logs_in_as_each_user_with_oauthbearer() {
    let cloud = Cloud::start().unwrap();
    let key = TestKey::generate().unwrap();
    let account = ServiceAccount {
        client_email: "archiver@mailvault-test.iam.gserviceaccount.com".into(),
        client_id: "104857600123456789012".into(),
        key,
        delegated_scopes: vec![GOOGLE_IMAP_SCOPE.into(), GOOGLE_DIRECTORY_SCOPE.into()],
        disabled: false,
    };
    let user = |address: &str| User::new(&format!("id-{address}"), address);
    cloud.update(|s| {
        s.service_accounts.push(account.clone());
        s.users = vec![
            User {
                aliases: vec!["ali@example.org".into()],
                ..user("alice@example.org")
            },
            user("bob@example.org"),
            User {
                suspended: true,
                ..user("carol@example.org")
            },
            User {
                is_admin: true,
                ..user("boss@example.org")
            },
        ];
    });
    let mailboxes = ["alice@example.org", "bob@example.org", "boss@example.org"];
    let dovecot = oauth2_dovecot(&cloud, "oauthbearer", &mailboxes, &[2, 1, 1]);
    for user in mailboxes {
        // Delegation: a token for the user opens the user's own mailbox.
        dovecot.grant_oauth2(&user_principal(user), user).unwrap();
    }
    let json = account.json(&format!("{}/token", cloud.http_url()));
    let indented: String = json.lines().map(|l| format!("    {l}\n")).collect();
    let spec = format!(
        "    provider: Google\n    credentialsSecretRef:\n      name: app\n    \
         users:\n      selection: AllExcept\n      names: [boss@example.org]\n    \
         directory:\n      googleDirectory:\n        endpoint: {}\n        \
         adminEmail: boss@example.org\n",
        cloud.http_url()
    );
    let yaml = oauth2_yaml(
        &dovecot,
        &spec,
        &format!("  serviceAccount.json: |\n{indented}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(dir.path(), &yaml);

    let first = traced_run(&input, &store);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let p = first.json();
    assert_eq!(p["totals"]["mailboxes"], 2, "{p:#}");
    assert_eq!(mailbox(&p, "alice@example.org")["archived"], 2);
    assert_eq!(mailbox(&p, "bob@example.org")["archived"], 1);
    let log = std::fs::read_to_string(dovecot.dir().join("dovecot.log")).unwrap();
    assert_eq!(log.matches("method=OAUTHBEARER").count(), 2, "{log}");
    // A token per user, each for that user only.
    let subjects: Vec<String> = cloud.update(|s| {
        s.requests_to("/token")
            .iter()
            .filter_map(|r| r.field("assertion").map(str::to_string))
            .collect()
    });
    assert_eq!(subjects.len(), 3, "the directory's and one per mailbox");

    let again = run(&input, &store);
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    let p = again.json();
    assert_eq!(p["totals"]["archived"], 0);
    assert_eq!(p["totals"]["alreadyArchived"], 3);
    let key_line = account.key.key_pem.lines().nth(1).unwrap().to_string();
    assert_nothing_secret(&cloud, &[key_line.as_str()], &[&first, &again]);
}

#[test]
fn a_bad_oauth2_set_is_refused_by_file_line_and_field_before_any_request() {
    let cloud = microsoft_cloud(Vec::new());
    let dovecot = oauth2_dovecot(&cloud, "xoauth2", &[], &[]);
    let spec = format!(
        "    provider: Microsoft365\n    tenantID: {TENANT}\n    \
         tokenURL: http://login.example.org/{TENANT}/oauth2/v2.0/token\n    \
         credentialsSecretRef:\n      name: app\n    directory:\n      \
         googleDirectory:\n        adminEmail: admin@example.org\n"
    );
    let yaml = oauth2_yaml(&dovecot, &spec, "  tls.crt: not a certificate\n");
    let dir = tempfile::tempdir().unwrap();
    let input = write_yaml(dir.path(), &yaml);
    let out = run(&input, &dir.path().join("archive"));
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    // The object's first line (1-based): the one before its kind.
    let line = yaml.lines().position(|l| l == "kind: MailboxSet").unwrap();
    let place = format!("{}:{line}: MailboxSet default/users: ", input.display());
    for (field, words) in [
        (
            "spec.oauth2.credentialsSecretRef.name",
            "neither key \"clientSecret\"",
        ),
        ("spec.oauth2.clientID", "application (client) ID"),
        ("spec.oauth2.tokenURL", "loopback"),
        ("spec.oauth2.directory", "googleDirectory for Google"),
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&format!("{place}{field}: ")) && l.contains(words)),
            "{field}: {}",
            out.stderr
        );
    }
    assert_eq!(cloud.update(|s| s.requests.len()), 0);
}

/// A Generic OAuth2 server, the client proving itself with a certificate (a signed client
/// assertion), and the users from LDAP: the directory of a master-password set, with a
/// token instead of the master password.
#[cfg(unix)]
#[test]
fn generic_set_with_a_certificate_reads_ldap_users() {
    use mailvault_testkit::cloud::GenericClient;
    use mailvault_testkit::slapd::{self, Slapd};

    let cloud = Cloud::start().unwrap();
    let key = TestKey::generate().unwrap();
    cloud.update(|s| {
        s.generic_clients.push(GenericClient {
            client_id: "archiver".into(),
            secret: String::new(),
            scopes: vec!["imap".into()],
            imap_scope: "imap".into(),
            certificates: vec![key.clone()],
        })
    });
    let ldap = Slapd::start().expect("slapd starts");
    ldap.add_ldif(slapd::SAMPLE_LDIF).unwrap();
    // The users of the sample directory that have an address.
    let mailboxes = ["alice@example.org", "bob@example.org", "dave@example.org"];
    let dovecot = oauth2_dovecot(&cloud, "oauthbearer", &mailboxes, &[1, 2, 3]);
    for user in mailboxes {
        dovecot
            .grant_oauth2(&app_principal("archiver"), user)
            .unwrap();
    }
    let spec = format!(
        "    provider: Generic\n    clientID: archiver\n    tokenURL: {}/generic/token\n    \
         scopes: [imap]\n    credentialsSecretRef:\n      name: app\n    directory:\n      \
         ldap:\n        url: {}\n        baseDN: {}\n        bindSecretRef:\n          name: reader\n",
        cloud.http_url(),
        ldap.url(),
        slapd::PEOPLE_DN
    );
    let pem = |text: &str| -> String { text.lines().map(|l| format!("    {l}\n")).collect() };
    let secret = format!(
        "  tls.crt: |\n{}  tls.key: |\n{}---\napiVersion: v1\nkind: Secret\nmetadata:\n  \
         name: reader\nstringData:\n  bindDN: {}\n  password: {}\n",
        pem(&key.cert_pem),
        pem(&key.key_pem),
        slapd::READER_DN,
        slapd::READER_PASSWORD
    );
    let yaml = oauth2_yaml(&dovecot, &spec, &secret);
    let dir = tempfile::tempdir().unwrap();
    let input = write_yaml(dir.path(), &yaml);
    let out = run(&input, &dir.path().join("archive"));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let p = out.json();
    assert_eq!(p["totals"]["mailboxes"], 3, "{p:#}");
    assert_eq!(p["totals"]["archived"], 6);
    // The assertion, never a secret, went to the token endpoint.
    let requests = cloud.update(|s| s.requests_to("/generic/token"));
    assert_eq!(requests.len(), 1);
    assert!(requests[0].field("client_assertion").is_some());
    let key_line = key.key_pem.lines().nth(1).unwrap().to_string();
    assert_nothing_secret(
        &cloud,
        &[key_line.as_str(), slapd::READER_PASSWORD],
        &[&out],
    );
}

/// A Graph sync that loses most of the users known from the last run is refused, as an
/// LDAP one is: a wrong group or an emptied tenant does not silently stop the archiving.
#[test]
fn a_graph_sync_that_drops_most_users_is_refused() {
    let people: Vec<User> = (1..=4)
        .map(|i| {
            User::new(
                &format!("a000000{i}-0000-0000-0000-000000000000"),
                &format!("user{i}@contoso.com"),
            )
        })
        .collect();
    let cloud = microsoft_cloud(people.clone());
    let mailboxes: Vec<String> = people.iter().map(|u| u.name.clone()).collect();
    let addresses: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
    let dovecot = oauth2_dovecot(&cloud, "xoauth2", &addresses, &[1, 1, 1, 1]);
    for user in &addresses {
        dovecot
            .grant_oauth2(&app_principal(CLIENT_ID), user)
            .unwrap();
    }
    let url = cloud.http_url();
    let spec = microsoft_spec(
        &url,
        &format!("    directory:\n      maxRemovedPercent: 50\n      microsoftGraph:\n        endpoint: {url}\n"),
    );
    let yaml = oauth2_yaml(&dovecot, &spec, &format!("  clientSecret: {SECRET}\n"));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("archive");
    let input = write_yaml(dir.path(), &yaml);
    let first = run(&input, &store);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.json()["totals"]["archived"], 4);

    cloud.update(|s| s.users.truncate(1));
    let listed = mailvault(&[
        "mailboxes",
        "-f",
        input.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    let again = run(&input, &store);
    for out in [&listed, &again] {
        assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("refusing the directory sync: it would drop 3 of the 4"),
            "{text}"
        );
    }
}

/// A key that cannot be read, and a CA that is no certificate, are named without their
/// content, before any request.
#[test]
fn unreadable_credentials_are_named_without_their_content() {
    let cloud = Cloud::start().unwrap();
    let dovecot = oauth2_dovecot(&cloud, "oauthbearer", &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate().unwrap();
    let broken = format!(
        "{{\"type\": \"service_account\", \"private_key\": \"{}",
        key.key_pem.replace('\n', "\\n")
    );
    let google = "    provider: Google\n    credentialsSecretRef:\n      name: app\n    \
                  staticUsers:\n      - name: alice\n        email: alice@example.org\n";
    let yaml = oauth2_yaml(
        &dovecot,
        google,
        &format!("  serviceAccount.json: '{broken}'\n"),
    );
    let out = run(&write_yaml(dir.path(), &yaml), &dir.path().join("archive"));
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("the credentials Secret app key serviceAccount.json: not valid JSON"),
        "{}",
        out.stderr
    );
    let with_ca = format!(
        "{}    caSecretRef:\n      name: app\n      key: ca.crt\n",
        microsoft_spec(&cloud.https_url(), "")
    );
    let yaml = oauth2_yaml(
        &dovecot,
        &with_ca,
        &format!("  clientSecret: {SECRET}\n  ca.crt: not a certificate\n"),
    );
    let out2 = run(&write_yaml(dir.path(), &yaml), &dir.path().join("archive"));
    assert_eq!(out2.code, 2, "{}\n{}", out2.stdout, out2.stderr);
    assert!(
        out2.stderr
            .contains("caSecretRef: Secret app key \"ca.crt\""),
        "{}",
        out2.stderr
    );
    assert_eq!(cloud.update(|s| s.requests.len()), 0);
    let key_line = key.key_pem.lines().nth(1).unwrap().to_string();
    assert_nothing_secret(&cloud, &[key_line.as_str(), SECRET], &[&out, &out2]);
}
