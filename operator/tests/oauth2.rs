//! OAuth2: token requests of each provider as their documentation describes them, the
//! errors people get, logins with XOAUTH2 and OAUTHBEARER against a Dovecot that accepts
//! nothing else, the Microsoft Graph and Google Directory user listings, and secrets that
//! never show. Against the test kit's fake cloud (`testkit::cloud`) and a real Dovecot.

use std::io::Write;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::util::SubscriberInitExt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use mailvault::imap::{Credentials, ImapError, ServerConfig, Session};
use mailvault::oauth2::{
    ClientSettings, Credential, HttpClient, ImapTokens, Provider, Retry, TokenError, Tokens,
};
use mailvault::resources::Security;
use mailvault::resources::{GoogleDirectorySpec, MicrosoftGraphSpec};
use mailvault::sensitive::Sensitive;
use mailvault::sources::directory::DirectoryError;
use mailvault::sources::google;
use mailvault::sources::graph;
use mailvault_testkit::cloud::{
    app_principal, user_principal, App, Cloud, Fault, GenericClient, Group, ServiceAccount, Tenant,
    TestKey, User,
};
use mailvault_testkit::dovecot::{Dovecot, DovecotOptions, OAuth2Login};
use serde_json::Value;

const TENANT_ID: &str = "7d1a3f52-0a5e-4d8b-9c11-2b6c0f1e9a01";
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "8a3f2c1e-5b7d-4e9f-a0b1-c2d3e4f5a6b7";
const SECRET: &str = "Qx8~secret.Value_that-must-never-leak";
const IMAP_SCOPE: &str = "https://outlook.office365.com/.default";
const SA_EMAIL: &str = "archiver@mailvault-test.iam.gserviceaccount.com";
const SA_CLIENT_ID: &str = "104857600123456789012";
const GENERIC_SECRET: &str = "generic:secret with spaces&signs";

fn client(cloud: &Cloud) -> HttpClient {
    HttpClient::new(Some(cloud.ca_pem().as_bytes()), Duration::from_secs(10))
        .unwrap()
        .with_retry(Retry {
            attempts: 3,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        })
}

fn app(roles: &[&str]) -> App {
    App::consented(CLIENT_ID, SECRET, roles)
}

/// A tenant with the app, `IMAP.AccessAsApp`, `User.Read.All` and `GroupMember.Read.All`.
fn microsoft_cloud() -> Cloud {
    let cloud = Cloud::start().unwrap();
    cloud.update(|s| {
        s.tenants.push(Tenant {
            id: TENANT_ID.into(),
            domains: vec![TENANT.into(), "contoso.com".into()],
            apps: vec![app(&[
                "IMAP.AccessAsApp",
                "User.Read.All",
                "GroupMember.Read.All",
            ])],
        })
    });
    cloud
}

fn microsoft_settings(base: &str) -> ClientSettings {
    ClientSettings {
        tenant_id: Some(TENANT.into()),
        client_id: Some(CLIENT_ID.into()),
        token_url: Some(format!("{base}/{TENANT}/oauth2/v2.0/token")),
        scopes: Vec::new(),
    }
}

fn secret_keys(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<Vec<u8>> {
    let pairs: Vec<(String, Vec<u8>)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    move |key| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn microsoft_tokens(cloud: &Cloud, secret: &str) -> Arc<Tokens> {
    let credential = Credential::from_keys(
        Provider::Microsoft365,
        secret_keys(&[("clientSecret", secret)]),
    )
    .unwrap();
    Arc::new(
        Tokens::new(
            Provider::Microsoft365,
            &microsoft_settings(&cloud.https_url()),
            credential,
            client(cloud),
        )
        .unwrap(),
    )
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Header and claims of a JWT.
fn jwt(text: &str) -> (Value, Value) {
    let parts: Vec<&str> = text.split('.').collect();
    assert_eq!(parts.len(), 3, "{text}");
    (decode(parts[0]), decode(parts[1]))
}

fn refused(e: &TokenError) -> (&str, String) {
    match e {
        TokenError::Refused { code, .. } => (code.as_str(), e.to_string()),
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test]
async fn microsoft_client_secret_request_is_as_documented_and_cached() {
    let cloud = microsoft_cloud();
    let tokens = microsoft_tokens(&cloud, SECRET);
    let scopes = vec![IMAP_SCOPE.to_string()];
    let first = tokens.get(&scopes, None).await.unwrap();
    assert_eq!(first.lifetime, Duration::from_secs(3599));
    let again = tokens.get(&scopes, None).await.unwrap();
    assert_eq!(
        again.token.expose(),
        first.token.expose(),
        "served from the cache"
    );

    let path = format!("/{TENANT}/oauth2/v2.0/token");
    let requests = cloud.update(|s| s.requests_to(&path));
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    let mut fields: Vec<&str> = request.form.iter().map(|(k, _)| k.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["client_id", "client_secret", "grant_type", "scope"]
    );
    assert_eq!(request.field("grant_type"), Some("client_credentials"));
    assert_eq!(request.field("scope"), Some(IMAP_SCOPE));
    assert_eq!(request.field("client_id"), Some(CLIENT_ID));
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("authorization"), None);

    // Without tokenURL, the tenant's endpoint at login.microsoftonline.com.
    let default = Tokens::new(
        Provider::Microsoft365,
        &ClientSettings {
            token_url: None,
            ..microsoft_settings("")
        },
        Credential::from_keys(
            Provider::Microsoft365,
            secret_keys(&[("clientSecret", "x")]),
        )
        .unwrap(),
        client(&cloud),
    )
    .unwrap();
    assert_eq!(
        default.token_url().as_str(),
        format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    );
}

#[tokio::test]
async fn microsoft_certificate_assertions_are_signed_as_documented() {
    let cloud = microsoft_cloud();
    let key = TestKey::generate().unwrap();
    cloud.update(|s| s.tenants[0].apps[0].certificates.push(key.clone()));
    let credential = Credential::from_keys(
        Provider::Microsoft365,
        secret_keys(&[("tls.crt", &key.cert_pem), ("tls.key", &key.key_pem)]),
    )
    .unwrap();
    let token_url = format!("{}/{TENANT}/oauth2/v2.0/token", cloud.https_url());
    let tokens = Tokens::new(
        Provider::Microsoft365,
        &microsoft_settings(&cloud.https_url()),
        credential,
        client(&cloud),
    )
    .unwrap();
    tokens.get(&[IMAP_SCOPE.to_string()], None).await.unwrap();
    let graph_scope = format!("{}/.default", cloud.https_url());
    tokens.get(&[graph_scope], None).await.unwrap();

    let path = format!("/{TENANT}/oauth2/v2.0/token");
    let requests = cloud.update(|s| s.requests_to(&path));
    assert_eq!(requests.len(), 2);
    let mut ids = Vec::new();
    for request in &requests {
        let mut fields: Vec<&str> = request.form.iter().map(|(k, _)| k.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "client_assertion",
                "client_assertion_type",
                "client_id",
                "grant_type",
                "scope"
            ]
        );
        assert_eq!(
            request.field("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        let (header, claims) = jwt(request.field("client_assertion").unwrap());
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], key.thumbprint_sha256());
        assert_eq!(claims["aud"], token_url.as_str());
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["sub"], CLIENT_ID);
        let (nbf, exp) = (
            claims["nbf"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert!(exp > nbf && exp - nbf <= 600, "{claims}");
        ids.push(claims["jti"].as_str().unwrap().to_string());
    }
    assert_ne!(ids[0], ids[1], "every assertion has its own jti");

    // A certificate the app registration does not know.
    let other = TestKey::generate().unwrap();
    let tokens = Tokens::new(
        Provider::Microsoft365,
        &microsoft_settings(&cloud.https_url()),
        Credential::from_keys(
            Provider::Microsoft365,
            secret_keys(&[("tls.crt", &other.cert_pem), ("tls.key", &other.key_pem)]),
        )
        .unwrap(),
        client(&cloud),
    )
    .unwrap();
    let e = tokens
        .get(&[IMAP_SCOPE.to_string()], None)
        .await
        .unwrap_err();
    let (code, message) = refused(&e);
    assert_eq!(code, "invalid_client");
    assert!(
        message.contains("AADSTS700027") && message.contains("upload tls.crt"),
        "{message}"
    );
}

#[tokio::test]
async fn microsoft_errors_name_the_code_and_what_to_do() {
    let cloud = microsoft_cloud();
    let scopes = vec![IMAP_SCOPE.to_string()];

    let wrong = microsoft_tokens(&cloud, "wrong-secret-value");
    let e = wrong.get(&scopes, None).await.unwrap_err();
    // Asked again for every mailbox of a run: answered from memory, not by the server.
    for _ in 0..5 {
        wrong
            .for_imap()
            .token_for("x@contoso.com")
            .await
            .unwrap_err();
    }
    let path = format!("/{TENANT}/oauth2/v2.0/token");
    assert_eq!(cloud.update(|s| s.requests_to(&path).len()), 1);
    let (code, message) = refused(&e);
    assert_eq!(code, "invalid_client");
    assert!(message.contains("AADSTS7000215"), "{message}");
    assert!(message.contains("not its Secret ID"), "{message}");
    assert!(message.contains("trace ID"), "{message}");
    assert!(!message.contains("wrong-secret-value"), "{message}");
    assert!(e.is_permanent() && e.affects_every_mailbox());

    cloud.update(|s| s.tenants[0].apps[0].secrets[0].expired = true);
    let e = microsoft_tokens(&cloud, SECRET)
        .get(&scopes, None)
        .await
        .unwrap_err();
    assert!(refused(&e).1.contains("AADSTS7000222"), "{e}");
    assert!(e.to_string().contains("has expired"), "{e}");
    cloud.update(|s| s.tenants[0].apps[0].secrets[0].expired = false);

    cloud.update(|s| s.tenants[0].apps[0].disabled = true);
    let e = microsoft_tokens(&cloud, SECRET)
        .get(&scopes, None)
        .await
        .unwrap_err();
    assert!(refused(&e).1.contains("AADSTS7000112"), "{e}");
    cloud.update(|s| s.tenants[0].apps[0].disabled = false);

    cloud.update(|s| s.tenants[0].apps[0].client_id = "someone-else".into());
    let e = microsoft_tokens(&cloud, SECRET)
        .get(&scopes, None)
        .await
        .unwrap_err();
    let (code, message) = refused(&e);
    assert_eq!(code, "unauthorized_client");
    assert!(
        message.contains("AADSTS700016") && message.contains("check clientID and tenantID"),
        "{message}"
    );
    cloud.update(|s| s.tenants[0].apps[0].client_id = CLIENT_ID.into());

    cloud.update(|s| s.tenants[0].domains.clear());
    let e = microsoft_tokens(&cloud, SECRET)
        .get(&scopes, None)
        .await
        .unwrap_err();
    assert!(
        refused(&e).1.contains("AADSTS90002") && e.to_string().contains("tenantID"),
        "{e}"
    );
    cloud.update(|s| s.tenants[0].domains.push(TENANT.into()));

    let e = microsoft_tokens(&cloud, SECRET)
        .get(
            &["https://outlook.office365.com/IMAP.AccessAsApp".to_string()],
            None,
        )
        .await
        .unwrap_err();
    let (code, message) = refused(&e);
    assert_eq!(code, "invalid_scope");
    assert!(message.contains("AADSTS1002012"), "{message}");

    // Overload: retried, then the token comes.
    cloud.update(|s| {
        for _ in 0..2 {
            s.faults.push_back(Fault {
                path_prefix: path.clone(),
                status: 503,
                retry_after: None,
            });
        }
    });
    microsoft_tokens(&cloud, SECRET)
        .get(&scopes, None)
        .await
        .unwrap();
    // Overload that outlasts the retries: a transient error, not a permanent one.
    cloud.update(|s| {
        for _ in 0..3 {
            s.faults.push_back(Fault {
                path_prefix: path.clone(),
                status: 503,
                retry_after: Some(0),
            });
        }
    });
    let e = microsoft_tokens(&cloud, SECRET)
        .get(&scopes, None)
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
}

fn service_account(key: &TestKey, scopes: &[&str]) -> ServiceAccount {
    ServiceAccount {
        client_email: SA_EMAIL.into(),
        client_id: SA_CLIENT_ID.into(),
        key: key.clone(),
        delegated_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        disabled: false,
    }
}

fn google_user(address: &str) -> User {
    User::new(&format!("id-{address}"), address)
}

/// A service account with delegation for IMAP and the directory, users alice, bob and the
/// administrator boss.
fn google_cloud() -> (Cloud, ServiceAccount) {
    let cloud = Cloud::start().unwrap();
    let key = TestKey::generate().unwrap();
    let account = service_account(
        &key,
        &[
            mailvault::oauth2::GOOGLE_IMAP_SCOPE,
            mailvault::oauth2::GOOGLE_DIRECTORY_SCOPE,
        ],
    );
    cloud.update(|s| {
        s.service_accounts.push(account.clone());
        s.users = vec![
            google_user("alice@example.org"),
            google_user("bob@example.org"),
            User {
                is_admin: true,
                ..google_user("boss@example.org")
            },
        ];
    });
    (cloud, account)
}

fn google_tokens(cloud: &Cloud, account: &ServiceAccount) -> Arc<Tokens> {
    let json = account.json(&format!("{}/token", cloud.https_url()));
    let credential = Credential::from_keys(
        Provider::Google,
        secret_keys(&[("serviceAccount.json", &json)]),
    )
    .unwrap();
    Arc::new(
        Tokens::new(
            Provider::Google,
            &ClientSettings::default(),
            credential,
            client(cloud),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn google_grants_are_signed_per_user_as_documented() {
    let (cloud, account) = google_cloud();
    let tokens = google_tokens(&cloud, &account).for_imap();
    let alice = tokens.token_for("alice@example.org").await.unwrap();
    let bob = tokens.token_for("bob@example.org").await.unwrap();
    assert_ne!(
        alice.token.expose(),
        bob.token.expose(),
        "one token per user"
    );
    let again = tokens.token_for("Alice@Example.org").await.unwrap();
    assert_eq!(
        again.token.expose(),
        alice.token.expose(),
        "cached per user, any case"
    );

    let requests = cloud.update(|s| s.requests_to("/token"));
    assert_eq!(requests.len(), 2);
    let request = &requests[0];
    let mut fields: Vec<&str> = request.form.iter().map(|(k, _)| k.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["assertion", "grant_type"]);
    assert_eq!(
        request.field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let (header, claims) = jwt(request.field("assertion").unwrap());
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], account.key_id().as_str());
    assert_eq!(claims["iss"], SA_EMAIL);
    assert_eq!(claims["sub"], "alice@example.org");
    assert_eq!(claims["scope"], "https://mail.google.com/");
    assert_eq!(
        claims["aud"],
        format!("{}/token", cloud.https_url()).as_str()
    );
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat && exp - iat <= 3600, "{claims}");
}

#[tokio::test]
async fn google_errors_tell_delegation_from_a_missing_user() {
    let (cloud, account) = google_cloud();
    let tokens = google_tokens(&cloud, &account).for_imap();

    let e = tokens.token_for("nobody@example.org").await.unwrap_err();
    let (code, message) = refused(&e);
    assert_eq!(code, "invalid_grant");
    assert!(
        message.contains("no Google Workspace user \"nobody@example.org\""),
        "{message}"
    );
    assert!(!e.affects_every_mailbox(), "one user's problem");

    cloud.update(|s| s.service_accounts[0].delegated_scopes.clear());
    let e = tokens.token_for("alice@example.org").await.unwrap_err();
    let (code, message) = refused(&e);
    assert_eq!(code, "unauthorized_client");
    assert!(
        message.contains(SA_CLIENT_ID) && message.contains("Domain-wide"),
        "{message}"
    );
    assert!(e.affects_every_mailbox());

    // The key was deleted in the console and another one made; a new run (a new client:
    // this one remembers the refusal above for a minute) meets the old key.
    cloud.update(|s| s.service_accounts[0].key = TestKey::generate().unwrap());
    let tokens = google_tokens(&cloud, &account).for_imap();
    let e = tokens.token_for("bob@example.org").await.unwrap_err();
    let (_, message) = refused(&e);
    assert!(
        message.contains("Invalid JWT Signature") && message.contains("create a new key"),
        "{message}"
    );
}

fn generic_cloud(key: Option<&TestKey>) -> Cloud {
    let cloud = Cloud::start().unwrap();
    cloud.update(|s| {
        s.generic_clients.push(GenericClient {
            client_id: "archiver:1".into(),
            secret: GENERIC_SECRET.into(),
            scopes: vec!["imap".into(), "other".into()],
            imap_scope: "imap".into(),
            certificates: key.into_iter().cloned().collect(),
        })
    });
    cloud
}

fn generic_tokens(cloud: &Cloud, credential: Credential) -> Result<Tokens, TokenError> {
    Tokens::new(
        Provider::Generic,
        &ClientSettings {
            client_id: Some("archiver:1".into()),
            token_url: Some(format!("{}/generic/token", cloud.http_url())),
            scopes: vec!["imap".into()],
            ..ClientSettings::default()
        },
        credential,
        client(cloud),
    )
}

#[tokio::test]
async fn generic_client_credentials_use_http_basic_or_an_assertion() {
    let key = TestKey::generate().unwrap();
    let cloud = generic_cloud(Some(&key));
    let secret = || {
        Credential::from_keys(
            Provider::Generic,
            secret_keys(&[("clientSecret", GENERIC_SECRET)]),
        )
        .unwrap()
    };
    let tokens = Arc::new(generic_tokens(&cloud, secret()).unwrap()).for_imap();
    tokens.token_for("anyone@example.org").await.unwrap();
    let request = cloud.update(|s| s.requests_to("/generic/token")[0].clone());
    assert!(request
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    assert_eq!(request.field("scope"), Some("imap"));
    assert_eq!(
        request.field("client_secret"),
        None,
        "the secret goes in the header only"
    );

    let assertion = Credential::from_keys(
        Provider::Generic,
        secret_keys(&[("tls.crt", &key.cert_pem), ("tls.key", &key.key_pem)]),
    )
    .unwrap();
    let tokens = Arc::new(generic_tokens(&cloud, assertion).unwrap()).for_imap();
    tokens.token_for("anyone@example.org").await.unwrap();
    let request = cloud.update(|s| s.requests_to("/generic/token")[1].clone());
    let (header, _) = jwt(request.field("client_assertion").unwrap());
    assert_eq!(header["alg"], "RS256");

    cloud.update(|s| s.generic_clients[0].secret = "changed".into());
    let e = Arc::new(generic_tokens(&cloud, secret()).unwrap())
        .for_imap()
        .token_for("x@example.org")
        .await
        .unwrap_err();
    let (code, message) = refused(&e);
    assert_eq!(code, "invalid_client");
    assert!(
        message.contains("Client authentication failed"),
        "{message}"
    );
}

#[tokio::test]
async fn endpoints_must_be_https_with_verified_certificates_or_loopback() {
    let cloud = microsoft_cloud();
    let credential = || {
        Credential::from_keys(
            Provider::Microsoft365,
            secret_keys(&[("clientSecret", SECRET)]),
        )
        .unwrap()
    };
    let e = Tokens::new(
        Provider::Microsoft365,
        &ClientSettings {
            token_url: Some("http://login.example.org/t/oauth2/v2.0/token".into()),
            ..microsoft_settings("")
        },
        credential(),
        client(&cloud),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("tokenURL") && e.to_string().contains("loopback"),
        "{e}"
    );

    // Plain HTTP on loopback is fine.
    let tokens = Tokens::new(
        Provider::Microsoft365,
        &microsoft_settings(&cloud.http_url()),
        credential(),
        client(&cloud),
    )
    .unwrap();
    tokens.get(&[IMAP_SCOPE.into()], None).await.unwrap();

    // HTTPS with a certificate nobody vouches for is refused, and nothing is sent.
    let untrusting = HttpClient::new(None, Duration::from_secs(5)).unwrap();
    let tokens = Tokens::new(
        Provider::Microsoft365,
        &microsoft_settings(&cloud.https_url()),
        credential(),
        untrusting,
    )
    .unwrap();
    let before = cloud.update(|s| s.requests.len());
    let e = tokens.get(&[IMAP_SCOPE.into()], None).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    assert!(
        !e.is_permanent() || e.to_string().contains("certificate"),
        "{e}"
    );
    assert_eq!(cloud.update(|s| s.requests.len()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_share_one_token_request_and_renew_it_before_expiry() {
    let cloud = microsoft_cloud();
    cloud.update(|s| s.token_lifetime = Duration::from_secs(2));
    let tokens = microsoft_tokens(&cloud, SECRET).for_imap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.token_for(&format!("u{i}@contoso.com")).await })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for task in tasks {
        seen.insert(task.await.unwrap().unwrap().token.expose().to_string());
    }
    assert_eq!(seen.len(), 1, "one app token for every mailbox");
    let count = || cloud.update(|s| s.issued.len());
    assert_eq!(count(), 1);
    // Fresh for the first half of its two seconds, renewed in the second.
    tokens.token_for("a@contoso.com").await.unwrap();
    assert_eq!(count(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renewed = tokens.token_for("a@contoso.com").await.unwrap();
    assert_eq!(count(), 2);
    assert!(!seen.contains(renewed.token.expose()));
}

// ---- IMAP logins against an OAuth2-only Dovecot ----

/// An OAuth2-only Dovecot offering `mechanisms`, with `users`, of whom the Microsoft app
/// may open those in `app_may_open`.
fn oauth2_dovecot(
    cloud: &Cloud,
    mechanisms: &[&str],
    users: &[&str],
    app_may_open: &[&str],
) -> Dovecot {
    let mut login = OAuth2Login::new(&cloud.introspection_url());
    login.mechanisms = mechanisms.iter().map(|m| m.to_string()).collect();
    let dovecot = Dovecot::start_with(DovecotOptions {
        oauth2: Some(login),
        ..DovecotOptions::default()
    })
    .unwrap();
    for user in users {
        dovecot.add_user(user, "unused-password").unwrap();
    }
    for user in app_may_open {
        dovecot
            .grant_oauth2(&app_principal(CLIENT_ID), user)
            .unwrap();
    }
    dovecot
}

fn server(dovecot: &Dovecot, security: Security) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: match security {
            Security::Tls => dovecot.imaps_port(),
            _ => dovecot.imap_port(),
        },
        security,
        insecure_skip_tls_verify: false,
        extra_ca_pem: Some(dovecot.ca_pem().into_bytes()),
        timeout: Duration::from_secs(10),
    }
}

fn oauth(user: &str, tokens: &ImapTokens) -> Credentials {
    Credentials::OAuth2 {
        user: user.into(),
        tokens: tokens.clone(),
    }
}

async fn folders(
    server: &ServerConfig,
    credentials: &Credentials,
) -> Result<Vec<String>, ImapError> {
    let mut session = Session::connect(server, credentials).await?;
    let folders = session.folders().await?.iter().map(|f| f.path()).collect();
    session.logout().await;
    Ok(folders)
}

#[tokio::test]
async fn xoauth2_and_oauthbearer_logins_over_tls_and_starttls() {
    let cloud = microsoft_cloud();
    let tokens = microsoft_tokens(&cloud, SECRET).for_imap();
    for mechanism in ["xoauth2", "oauthbearer"] {
        let alice = ["alice@contoso.com"];
        let dovecot = oauth2_dovecot(&cloud, &[mechanism], &alice, &alice);
        for security in [Security::Tls, Security::StartTls] {
            let found = folders(
                &server(&dovecot, security),
                &oauth("alice@contoso.com", &tokens),
            )
            .await
            .unwrap_or_else(|e| panic!("{mechanism} over {security:?}: {e}"));
            assert!(found.contains(&"INBOX".to_string()), "{found:?}");
        }
        let log = std::fs::read_to_string(dovecot.dir().join("dovecot.log")).unwrap();
        let method = format!("method={}", mechanism.to_uppercase());
        assert_eq!(log.matches(&method).count(), 2, "{log}");
    }
}

#[tokio::test]
async fn mailbox_permission_and_app_roles_decide_per_mailbox_in_plain_words() {
    let cloud = microsoft_cloud();
    let dovecot = oauth2_dovecot(
        &cloud,
        &["xoauth2", "oauthbearer"],
        &["alice@contoso.com", "bob@contoso.com"],
        &["alice@contoso.com"],
    );
    let tokens = microsoft_tokens(&cloud, SECRET).for_imap();
    let tls = server(&dovecot, Security::Tls);
    folders(&tls, &oauth("alice@contoso.com", &tokens))
        .await
        .unwrap();
    let e = folders(&tls, &oauth("bob@contoso.com", &tokens))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImapError::Login { .. }) && e.is_permanent(),
        "{e}"
    );
    let message = e.to_string();
    assert!(message.contains("bob@contoso.com (OAuth2)"), "{message}");
    assert!(message.contains("Add-MailboxPermission"), "{message}");
    assert!(
        message.contains("status invalid_token"),
        "OAUTHBEARER's status: {message}"
    );

    // Taking the permission back closes the mailbox at once.
    dovecot
        .revoke_oauth2(&app_principal(CLIENT_ID), "alice@contoso.com")
        .unwrap();
    assert!(folders(&tls, &oauth("alice@contoso.com", &tokens))
        .await
        .is_err());
    dovecot
        .grant_oauth2(&app_principal(CLIENT_ID), "alice@contoso.com")
        .unwrap();

    // Without admin consent the token has no IMAP.AccessAsApp role and opens nothing.
    cloud.update(|s| s.tenants[0].apps[0].admin_consent = false);
    let unconsented = microsoft_tokens(&cloud, SECRET).for_imap();
    let e = folders(&tls, &oauth("alice@contoso.com", &unconsented))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("IMAP.AccessAsApp"), "{e}");
}

#[tokio::test]
async fn google_logins_use_each_users_own_token() {
    let (cloud, account) = google_cloud();
    let users = ["alice@example.org", "bob@example.org"];
    let dovecot = oauth2_dovecot(&cloud, &["xoauth2"], &users, &[]);
    for user in users {
        dovecot.grant_oauth2(&user_principal(user), user).unwrap();
    }
    let tokens = google_tokens(&cloud, &account).for_imap();
    let tls = server(&dovecot, Security::StartTls);
    for user in ["alice@example.org", "bob@example.org"] {
        folders(&tls, &oauth(user, &tokens)).await.unwrap();
    }
    // Alice's token does not open Bob's mailbox: the grant is per principal.
    dovecot
        .revoke_oauth2(&user_principal("bob@example.org"), "bob@example.org")
        .unwrap();
    dovecot
        .grant_oauth2(&user_principal("alice@example.org"), "bob@example.org")
        .unwrap();
    assert!(folders(&tls, &oauth("bob@example.org", &tokens))
        .await
        .is_err());
    let issued = cloud.update(|s| s.issued.len());
    assert_eq!(issued, 2, "one token per user, reused");
}

#[tokio::test]
async fn tokens_never_cross_a_plain_connection_or_go_to_a_server_without_oauth2() {
    let cloud = microsoft_cloud();
    let tokens = microsoft_tokens(&cloud, SECRET).for_imap();
    let dovecot = oauth2_dovecot(&cloud, &["xoauth2"], &["alice@contoso.com"], &[]);
    let e = folders(
        &server(&dovecot, Security::None),
        &oauth("alice@contoso.com", &tokens),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("unencrypted"), "{e}");
    assert!(e.is_permanent());

    // A server that offers only passwords: told plainly, and no token is even fetched.
    let plain = Dovecot::start().unwrap();
    plain.add_user("alice@contoso.com", "pw").unwrap();
    let e = folders(
        &server(&plain, Security::Tls),
        &oauth("alice@contoso.com", &tokens),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("neither SASL OAUTHBEARER nor XOAUTH2"),
        "{e}"
    );
    assert_eq!(cloud.update(|s| (s.issued.len(), s.introspections)), (0, 0));
}

#[tokio::test]
async fn an_expired_token_is_replaced_between_logins_of_a_long_run() {
    let cloud = microsoft_cloud();
    cloud.update(|s| s.token_lifetime = Duration::from_secs(2));
    let alice = ["alice@contoso.com"];
    let dovecot = oauth2_dovecot(&cloud, &["xoauth2", "oauthbearer"], &alice, &alice);
    let tokens = microsoft_tokens(&cloud, SECRET).for_imap();
    let tls = server(&dovecot, Security::Tls);
    folders(&tls, &oauth("alice@contoso.com", &tokens))
        .await
        .unwrap();
    let first = cloud.update(|s| s.issued[0].token.clone());
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // The server no longer takes the first token...
    let introspect = introspect(&cloud.introspection_url(), &first).await;
    assert_eq!(introspect["active"], false, "{introspect}");
    // ...and the next login brings a new one.
    folders(&tls, &oauth("alice@contoso.com", &tokens))
        .await
        .unwrap();
    assert_eq!(cloud.update(|s| s.issued.len()), 2);
}

/// POSTs `token=…` the way Dovecot does, with the crate's own client.
async fn introspect(url: &str, token: &str) -> Value {
    let client = HttpClient::new(None, Duration::from_secs(5)).unwrap();
    let body = mailvault::oauth2::http::Body::form(&[("token", token)]);
    let response = client
        .send(http::Method::POST, &url.parse().unwrap(), &[], Some(&body))
        .await
        .unwrap();
    serde_json::from_slice(&response.body).unwrap()
}

// ---- Directories ----

fn graph_settings(cloud: &Cloud, group: Option<&str>) -> MicrosoftGraphSpec {
    MicrosoftGraphSpec {
        endpoint: Some(cloud.https_url()),
        group_id: group.map(str::to_string),
    }
}

/// alice (aliases), bob, a disabled account, a guest, a user without a mailbox address.
fn graph_people() -> Vec<User> {
    vec![
        User {
            proxy_addresses: vec![
                "smtp:ali@contoso.com".into(),
                "SMTP:alice@contoso.com".into(),
                "X500:/o=ExchangeLabs/ou=x/cn=alice".into(),
                "smtp:Alice@contoso.onmicrosoft.com".into(),
            ],
            ..User::new("a0000000-0000-0000-0000-000000000001", "alice@contoso.com")
        },
        User::new("b0000000-0000-0000-0000-000000000002", "bob@contoso.com"),
        User {
            account_enabled: false,
            ..User::new(
                "c0000000-0000-0000-0000-000000000003",
                "shared-info@contoso.com",
            )
        },
        User {
            user_type: "Guest".into(),
            name: "guest_partner.example#EXT#@contoso.onmicrosoft.com".into(),
            ..User::new(
                "d0000000-0000-0000-0000-000000000004",
                "guest@partner.example",
            )
        },
        User {
            mail: None,
            proxy_addresses: Vec::new(),
            ..User::new(
                "e0000000-0000-0000-0000-000000000005",
                "nomailbox@contoso.com",
            )
        },
    ]
}

fn names(users: &[mailvault::sources::directory::DirectoryUser]) -> Vec<(String, Vec<String>)> {
    users
        .iter()
        .map(|u| (u.name.clone(), u.emails.clone()))
        .collect()
}

#[tokio::test]
async fn graph_users_come_page_by_page_without_disabled_accounts_and_guests() {
    let cloud = microsoft_cloud();
    cloud.update(|s| {
        s.users = graph_people();
        s.page_limit = Some(2);
    });
    let tokens = microsoft_tokens(&cloud, SECRET);
    let users = graph::fetch_users(&graph_settings(&cloud, None), &tokens, &client(&cloud))
        .await
        .unwrap();
    assert_eq!(
        names(&users),
        vec![
            (
                "alice@contoso.com".to_string(),
                vec![
                    "alice@contoso.com".to_string(),
                    "ali@contoso.com".to_string(),
                    "Alice@contoso.onmicrosoft.com".to_string()
                ]
            ),
            ("bob@contoso.com".into(), vec!["bob@contoso.com".into()]),
            ("nomailbox@contoso.com".into(), vec![]),
        ]
    );
    let (pages, token_scope) = cloud.update(|s| {
        let pages = s.requests_to("/v1.0/users");
        let scope = s.requests_to(&format!("/{TENANT}/oauth2/v2.0/token"))[0]
            .field("scope")
            .map(str::to_string);
        (pages, scope)
    });
    assert_eq!(pages.len(), 3, "five users, two per page");
    assert_eq!(token_scope, Some(format!("{}/.default", cloud.https_url())));
    let first = &pages[0];
    assert!(first.query.contains(&(
        "$select".into(),
        "id,userPrincipalName,mail,accountEnabled,userType,proxyAddresses".into()
    )));
    assert!(first.query.contains(&("$top".into(), "999".into())));
    assert!(first
        .header("authorization")
        .unwrap()
        .starts_with("Bearer mvt-"));
}

#[tokio::test]
async fn graph_groups_are_read_through_nesting_and_missing_rights_are_named() {
    let cloud = microsoft_cloud();
    let outer = "10000000-0000-0000-0000-0000000000aa";
    let inner = "20000000-0000-0000-0000-0000000000bb";
    cloud.update(|s| {
        s.users = graph_people();
        s.groups = vec![
            Group {
                id: outer.into(),
                members: vec!["a0000000-0000-0000-0000-000000000001".into(), inner.into()],
            },
            // Nested, and back again: a cycle must not loop.
            Group {
                id: inner.into(),
                members: vec![
                    "b0000000-0000-0000-0000-000000000002".into(),
                    "c0000000-0000-0000-0000-000000000003".into(),
                    outer.into(),
                ],
            },
        ];
        s.page_limit = Some(1);
    });
    let tokens = microsoft_tokens(&cloud, SECRET);
    let users = graph::fetch_users(
        &graph_settings(&cloud, Some(outer)),
        &tokens,
        &client(&cloud),
    )
    .await
    .unwrap();
    let found: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    assert_eq!(found, ["alice@contoso.com", "bob@contoso.com"]);

    let e = graph::fetch_users(
        &graph_settings(&cloud, Some("30000000-0000-0000-0000-0000000000cc")),
        &tokens,
        &client(&cloud),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("Request_ResourceNotFound") && e.to_string().contains("groupID"),
        "{e}"
    );

    // Members may be listed but users not read: an error, never a list of nobody.
    cloud.update(|s| s.tenants[0].apps[0].roles.retain(|r| r != "User.Read.All"));
    let tokens = microsoft_tokens(&cloud, SECRET);
    let e = graph::fetch_users(
        &graph_settings(&cloud, Some(outer)),
        &tokens,
        &client(&cloud),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("User.Read.All"), "{e}");
    let e = graph::fetch_users(&graph_settings(&cloud, None), &tokens, &client(&cloud))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("Authorization_RequestDenied")
            && e.to_string().contains("User.Read.All"),
        "{e}"
    );
}

#[tokio::test]
async fn graph_links_elsewhere_are_not_followed_and_throttling_is_waited_out() {
    let cloud = microsoft_cloud();
    cloud.update(|s| {
        s.users = graph_people();
        s.page_limit = Some(2);
        s.next_link_origin = Some("https://graph.evil.example".into());
    });
    let tokens = microsoft_tokens(&cloud, SECRET);
    let e = graph::fetch_users(&graph_settings(&cloud, None), &tokens, &client(&cloud))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("refusing to follow @odata.nextLink to https://graph.evil.example"),
        "{e}"
    );

    cloud.update(|s| {
        s.next_link_origin = None;
        s.faults.push_back(Fault {
            path_prefix: "/v1.0/users".into(),
            status: 429,
            retry_after: Some(1),
        });
    });
    let started = std::time::Instant::now();
    let users = graph::fetch_users(&graph_settings(&cloud, None), &tokens, &client(&cloud))
        .await
        .unwrap();
    assert_eq!(users.len(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

fn google_settings(cloud: &Cloud, admin: &str) -> GoogleDirectorySpec {
    GoogleDirectorySpec {
        endpoint: Some(cloud.http_url()),
        customer: None,
        admin_email: admin.into(),
    }
}

#[tokio::test]
async fn google_directory_pages_leave_out_suspended_users_and_keep_aliases() {
    let (cloud, account) = google_cloud();
    cloud.update(|s| {
        s.users[0].aliases = vec!["al@example.org".into()];
        s.users[0].non_editable_aliases = vec!["alice@example-alias.org".into()];
        s.users.push(User {
            suspended: true,
            ..google_user("left@example.org")
        });
        s.page_limit = Some(2);
    });
    let tokens = google_tokens(&cloud, &account);
    let users = google::fetch_users(
        &google_settings(&cloud, "boss@example.org"),
        &tokens,
        &client(&cloud),
    )
    .await
    .unwrap();
    assert_eq!(
        names(&users),
        vec![
            (
                "alice@example.org".to_string(),
                vec![
                    "alice@example.org".to_string(),
                    "al@example.org".to_string(),
                    "alice@example-alias.org".to_string()
                ]
            ),
            ("bob@example.org".into(), vec!["bob@example.org".into()]),
            ("boss@example.org".into(), vec!["boss@example.org".into()]),
        ]
    );
    let (pages, grant) = cloud.update(|s| {
        (
            s.requests_to("/admin/directory/v1/users"),
            s.requests_to("/token")[0].clone(),
        )
    });
    assert_eq!(pages.len(), 2, "four users, two per page");
    assert!(pages[0]
        .query
        .contains(&("customer".into(), "my_customer".into())));
    assert!(pages[0]
        .query
        .contains(&("maxResults".into(), "500".into())));
    let (_, claims) = jwt(grant.field("assertion").unwrap());
    assert_eq!(claims["sub"], "boss@example.org");
    assert_eq!(claims["scope"], mailvault::oauth2::GOOGLE_DIRECTORY_SCOPE);

    // Not an administrator.
    let e = google::fetch_users(
        &google_settings(&cloud, "alice@example.org"),
        &tokens,
        &client(&cloud),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("forbidden") && e.to_string().contains("administrator"),
        "{e}"
    );
    // No delegation for the directory scope.
    cloud.update(|s| {
        s.service_accounts[0]
            .delegated_scopes
            .retain(|scope| scope != mailvault::oauth2::GOOGLE_DIRECTORY_SCOPE)
    });
    let tokens = google_tokens(&cloud, &account);
    let e = google::fetch_users(
        &google_settings(&cloud, "boss@example.org"),
        &tokens,
        &client(&cloud),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DirectoryError::Api { .. }));
    assert!(
        e.to_string().contains("unauthorized_client")
            && e.to_string().contains("admin.directory.user.readonly"),
        "{e}"
    );
}

// ---- Secrets ----

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_appears_in_any_message_or_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();
    let mut shown: Vec<String> = Vec::new();

    let cloud = microsoft_cloud();
    let key = TestKey::generate().unwrap();
    cloud.update(|s| {
        s.users = graph_people();
        s.tenants[0].apps[0].certificates.push(key.clone());
    });
    let dovecot = oauth2_dovecot(
        &cloud,
        &["xoauth2"],
        &["alice@contoso.com", "bob@contoso.com"],
        &["alice@contoso.com"],
    );
    let tls = server(&dovecot, Security::Tls);

    for secret in [SECRET, "wrong-secret-value"] {
        let tokens = microsoft_tokens(&cloud, secret);
        shown.push(format!("{tokens:?}"));
        let imap = tokens.for_imap();
        for user in ["alice@contoso.com", "bob@contoso.com"] {
            let credentials = oauth(user, &imap);
            shown.push(format!("{credentials:?}"));
            match folders(&tls, &credentials).await {
                Ok(_) => {}
                Err(e) => shown.extend([e.to_string(), format!("{e:?}")]),
            }
        }
        match graph::fetch_users(&graph_settings(&cloud, None), &tokens, &client(&cloud)).await {
            Ok(users) => shown.push(format!("{users:?}")),
            Err(e) => shown.extend([e.to_string(), format!("{e:?}")]),
        }
    }
    let credential = Credential::from_keys(
        Provider::Microsoft365,
        secret_keys(&[("tls.crt", &key.cert_pem), ("tls.key", &key.key_pem)]),
    )
    .unwrap();
    shown.push(format!("{credential:?}"));
    let e = Credential::from_keys(
        Provider::Microsoft365,
        secret_keys(&[("tls.crt", &key.key_pem), ("tls.key", &key.key_pem)]),
    )
    .unwrap_err();
    shown.push(e);
    let e = Credential::from_keys(
        Provider::Google,
        secret_keys(&[(
            "serviceAccount.json",
            &format!("{{\"private_key\": \"{}\"", key.key_pem),
        )]),
    )
    .unwrap_err();
    shown.push(e);

    let (tokens_issued, log): (Vec<String>, String) = (
        cloud.update(|s| s.issued.iter().map(|i| i.token.clone()).collect()),
        String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned(),
    );
    assert!(!tokens_issued.is_empty());
    assert!(
        log.contains("read users from Microsoft Graph"),
        "the log was captured: {log}"
    );
    let key_body: String = key.key_pem.lines().nth(1).unwrap().to_string();
    let all = format!("{}\n{log}", shown.join("\n"));
    for needle in [SECRET, "wrong-secret-value", key_body.as_str()]
        .into_iter()
        .chain(tokens_issued.iter().map(String::as_str))
    {
        assert!(!all.contains(needle), "{needle:?} leaked:\n{all}");
    }
    // The secret's own type never prints it either.
    assert_eq!(format!("{:?}", Sensitive::new(SECRET)), "Sensitive(***)");
}
