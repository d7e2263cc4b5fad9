//! A private stand-in for the cloud side of OAuth2: the token endpoints and user directories
//! of Microsoft 365 and Google Workspace (which cannot be reached from tests), a Generic
//! RFC 6749 token endpoint, and a token introspection endpoint through which a private
//! Dovecot decides whether a token opens a mailbox.
//!
//! It implements the documented requests and answers, field by field:
//!
//! - Microsoft identity platform v2.0 token endpoint, `POST /{tenant}/oauth2/v2.0/token`:
//!   client credentials with `client_secret` or a `client_assertion` (verified: PS256 or
//!   RS256 signature, `x5t#S256` or `x5t`, `aud`, `iss`, `sub`, `nbf`, `exp`); answers
//!   `{token_type, expires_in, access_token}` or `{error, error_description (AADSTS…),
//!   error_codes, timestamp, trace_id, correlation_id, error_uri}` (see `token.rs`).
//! - Google OAuth2 token endpoint, `POST /token`: the JWT bearer grant (RFC 7523) of a
//!   service account, verified (RS256 with the key named by `kid`, `iss`, `aud`, `iat`, `exp`
//!   at most an hour later, `scope`, `sub` and its domain-wide delegation).
//! - Generic, `POST /generic/token`: RFC 6749 client credentials, HTTP Basic or form.
//! - Microsoft Graph v1.0 `GET /v1.0/users` and `GET /v1.0/groups/{id}/transitiveMembers`
//!   with `$select`, `$top` (at most 999) and `@odata.nextLink` paging (see `directory.rs`).
//! - Admin SDK Directory `GET /admin/directory/v1/users` with `customer` or `domain`,
//!   `maxResults` (at most 500) and `nextPageToken` paging.
//! - `POST /introspect` (RFC 7662 style, `token=…`): what the Dovecot of
//!   [`crate::dovecot::OAuth2Login`] asks about each token.
//!
//! It listens on 127.0.0.1 twice: plain HTTP and HTTPS with a certificate (for `localhost`
//! and `127.0.0.1`) from a CA made for this instance. It runs on a thread of its own, so
//! that tests may block while it serves. Tests shape the world through [`Cloud::update`]
//! (tenants, apps, users, consent, faults) and read what clients sent from
//! [`State::requests`].

mod directory;
mod token;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Resource (application ID URI) of Exchange Online.
pub const EXCHANGE: &str = "https://outlook.office365.com";
/// Resource of Microsoft Graph.
pub const GRAPH: &str = "https://graph.microsoft.com";
/// Google's scope for full IMAP access (as Google documents it; the product's constant is
/// kept apart on purpose, so that a typo on either side fails a test).
pub const GOOGLE_IMAP_SCOPE: &str = "https://mail.google.com/";
/// Google's scope for reading users from the Admin SDK Directory API.
pub const GOOGLE_DIRECTORY_SCOPE: &str =
    "https://www.googleapis.com/auth/admin.directory.user.readonly";

/// A Microsoft Entra tenant.
#[derive(Clone, Debug, Default)]
pub struct Tenant {
    /// The tenant ID (a GUID).
    pub id: String,
    /// Verified domains, also accepted in place of the ID in the token URL.
    pub domains: Vec<String>,
    pub apps: Vec<App>,
}

/// An app registration with its service principal in the tenant.
#[derive(Clone, Debug, Default)]
pub struct App {
    pub client_id: String,
    pub display_name: String,
    pub secrets: Vec<ClientSecret>,
    /// Certificates uploaded under "Certificates & secrets".
    pub certificates: Vec<TestKey>,
    /// Application permissions configured: `IMAP.AccessAsApp` (Exchange Online),
    /// `User.Read.All`, `GroupMember.Read.All` (Graph).
    pub roles: Vec<String>,
    /// Whether an administrator granted consent; without it tokens carry no roles.
    pub admin_consent: bool,
    /// Whether `New-ServicePrincipal` registered the app in Exchange Online.
    pub exchange_service_principal: bool,
    pub disabled: bool,
}

impl App {
    /// An app set up as the README says: a client secret, `roles`, admin consent, and its
    /// service principal registered in Exchange Online.
    pub fn consented(client_id: &str, secret: &str, roles: &[&str]) -> App {
        App {
            client_id: client_id.to_string(),
            display_name: "mailvault".into(),
            secrets: vec![ClientSecret {
                value: secret.to_string(),
                expired: false,
            }],
            roles: roles.iter().map(|r| r.to_string()).collect(),
            admin_consent: true,
            exchange_service_principal: true,
            ..App::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientSecret {
    pub value: String,
    pub expired: bool,
}

/// A Google Cloud service account with a key.
#[derive(Clone, Debug, Default)]
pub struct ServiceAccount {
    pub client_email: String,
    /// The numeric OAuth2 client ID that domain-wide delegation is granted to.
    pub client_id: String,
    pub key: TestKey,
    /// Scopes granted by domain-wide delegation in the Admin console.
    pub delegated_scopes: Vec<String>,
    pub disabled: bool,
}

/// A client of the Generic token endpoint.
#[derive(Clone, Debug, Default)]
pub struct GenericClient {
    pub client_id: String,
    pub secret: String,
    /// Scopes it may ask for; a token with [`GenericClient::imap_scope`] opens mailboxes.
    pub scopes: Vec<String>,
    pub imap_scope: String,
    /// Certificates for RFC 7523 client assertions.
    pub certificates: Vec<TestKey>,
}

/// A user, as both directories describe it (each API shows its own fields).
#[derive(Clone, Debug, Default)]
pub struct User {
    pub id: String,
    /// Microsoft: userPrincipalName; Google: primaryEmail.
    pub name: String,
    /// Microsoft: mail (None: no mailbox address).
    pub mail: Option<String>,
    /// Microsoft: `SMTP:primary`, `smtp:alias`, `X500:...`.
    pub proxy_addresses: Vec<String>,
    /// Microsoft: false for disabled accounts (and shared mailboxes).
    pub account_enabled: bool,
    /// Microsoft: `Member` or `Guest`.
    pub user_type: String,
    /// Google.
    pub suspended: bool,
    pub archived: bool,
    pub aliases: Vec<String>,
    pub non_editable_aliases: Vec<String>,
    pub is_admin: bool,
}

impl User {
    /// An enabled member with a mailbox at `address`.
    pub fn new(id: &str, address: &str) -> User {
        User {
            id: id.to_string(),
            name: address.to_string(),
            mail: Some(address.to_string()),
            proxy_addresses: vec![format!("SMTP:{address}")],
            account_enabled: true,
            user_type: "Member".into(),
            ..User::default()
        }
    }
}

/// A Microsoft Entra group; members are user or group IDs.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub id: String,
    pub members: Vec<String>,
}

/// A canned failure for the next request whose path starts with `path_prefix`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub path_prefix: String,
    pub status: u16,
    pub retry_after: Option<u64>,
}

/// A request as received.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
}

impl Logged {
    /// The value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Who a token was issued to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An app of a tenant, acting as itself (Microsoft client credentials).
    App {
        tenant: String,
        client_id: String,
    },
    /// A service account acting for a user (Google domain-wide delegation), or as itself.
    Delegated {
        client_email: String,
        user: Option<String>,
    },
    Generic {
        client_id: String,
    },
}

#[derive(Clone, Debug)]
pub struct Issued {
    pub token: String,
    pub principal: Principal,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub expires: Instant,
}

/// Everything the fake knows; change it with [`Cloud::update`].
#[derive(Debug)]
pub struct State {
    /// Lifetime of issued tokens (default 3599 s, as Microsoft and Google grant).
    pub token_lifetime: Duration,
    pub tenants: Vec<Tenant>,
    pub service_accounts: Vec<ServiceAccount>,
    pub generic_clients: Vec<GenericClient>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// Answered before anything else, first matching first.
    pub faults: VecDeque<Fault>,
    /// At most this many users per page, whatever the client asks for (both APIs may send
    /// fewer than asked), to test paging without thousands of users.
    pub page_limit: Option<usize>,
    /// Hostile: the origin (`https://host:port`) put into `@odata.nextLink`s instead of
    /// this server's.
    pub next_link_origin: Option<String>,
    pub issued: Vec<Issued>,
    pub requests: Vec<Logged>,
    /// How many introspection requests came in.
    pub introspections: usize,
    /// How many of them named a token issued here that had expired: a client that logged
    /// in with a token it should have renewed (Dovecot refused that login).
    pub expired_introspections: usize,
    /// This server's own origins, which count as Microsoft Graph's resource.
    pub(crate) own_origins: Vec<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            token_lifetime: Duration::from_secs(3599),
            tenants: Vec::new(),
            service_accounts: Vec::new(),
            generic_clients: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            faults: VecDeque::new(),
            page_limit: None,
            next_link_origin: None,
            issued: Vec::new(),
            requests: Vec::new(),
            introspections: 0,
            expired_introspections: 0,
            own_origins: Vec::new(),
        }
    }
}

impl State {
    /// Copies of the requests to a path (exactly).
    pub fn requests_to(&self, path: &str) -> Vec<Logged> {
        self.requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn principal_of(&self, token: &str) -> Option<&Issued> {
        self.issued
            .iter()
            .find(|i| i.token == token && i.expires > Instant::now())
    }
}

/// The principal name the Dovecot grants of [`crate::dovecot::Dovecot::grant_oauth2`]
/// use for a Microsoft app or Generic client.
pub fn app_principal(client_id: &str) -> String {
    format!("app.{client_id}")
}

/// The principal name of a token a service account got for `user`.
pub fn user_principal(user: &str) -> String {
    format!("user.{}", user.to_lowercase())
}

/// A running fake; see the module docs. Dropping it stops the server.
pub struct Cloud {
    http: SocketAddr,
    https: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Cloud {
    pub fn start() -> io::Result<Cloud> {
        let dir = tempfile::Builder::new()
            .prefix("mailvault-cloud-")
            .tempdir()?;
        let (ca_pem, tls) = make_tls(dir.path())?;
        let http = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let https = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let (http_addr, https_addr) = (http.local_addr()?, https.local_addr()?);
        http.set_nonblocking(true)?;
        https.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State {
            own_origins: vec![
                format!("http://{http_addr}"),
                format!("https://{https_addr}"),
                format!("https://localhost:{}", https_addr.port()),
            ],
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("mailvault-cloud".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the fake cloud");
                runtime.block_on(serve(http, https, tls, shared, stopped));
            })?;
        Ok(Cloud {
            http: http_addr,
            https: https_addr,
            ca_pem,
            state,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `https://localhost:<port>`; trust [`Cloud::ca_pem`] to reach it.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.https.port())
    }

    /// The CA that signed the HTTPS certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Where Dovecot asks about tokens.
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.http_url())
    }

    /// Changes the world (or reads it) under the lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An RSA key with a self-signed certificate, made with openssl.
#[derive(Clone, Debug, Default)]
pub struct TestKey {
    pub key_pem: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#1 RSAPublicKey DER, to verify signatures with ring.
    pub public_key_der: Vec<u8>,
}

impl TestKey {
    pub fn generate() -> io::Result<TestKey> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name).display().to_string();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &path("key.pem"),
        ])?;
        openssl(&[
            "req",
            "-x509",
            "-key",
            &path("key.pem"),
            "-out",
            &path("cert.pem"),
            "-days",
            "30",
            "-subj",
            "/CN=mailvault-test-app",
        ])?;
        openssl(&[
            "x509",
            "-in",
            &path("cert.pem"),
            "-outform",
            "DER",
            "-out",
            &path("cert.der"),
        ])?;
        openssl(&[
            "rsa",
            "-in",
            &path("key.pem"),
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            &path("public.der"),
        ])?;
        Ok(TestKey {
            key_pem: fs::read_to_string(path("key.pem"))?,
            cert_pem: fs::read_to_string(path("cert.pem"))?,
            cert_der: fs::read(path("cert.der"))?,
            public_key_der: fs::read(path("public.der"))?,
        })
    }

    /// `x5t#S256` of the certificate.
    pub fn thumbprint_sha256(&self) -> String {
        b64url(ring::digest::digest(&ring::digest::SHA256, &self.cert_der).as_ref())
    }

    /// `x5t` (SHA-1) of the certificate.
    pub fn thumbprint_sha1(&self) -> String {
        b64url(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.cert_der).as_ref(),
        )
    }
}

impl ServiceAccount {
    /// The key file as the Google Cloud console downloads it, pointing at `token_uri`.
    pub fn json(&self, token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "mailvault-test",
            "private_key_id": self.key_id(),
            "private_key": self.key.key_pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
            "universe_domain": "googleapis.com",
        })
        .to_string()
    }

    /// The key's ID: hex of the first bytes of its certificate's SHA-1, like Google's.
    pub fn key_id(&self) -> String {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.key.cert_der);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn openssl(args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A CA and a server certificate for localhost and 127.0.0.1 (P-256, like the Dovecot
/// test kit's); returns the CA PEM and the server's TLS settings.
fn make_tls(dir: &Path) -> io::Result<(String, Arc<ServerConfig>)> {
    let path = |name: &str| dir.join(name).display().to_string();
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(new_key);
    let (ca_key, ca_cert) = (path("ca.key"), path("ca.pem"));
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_cert,
        "-days",
        "30",
        "-subj",
        "/CN=mailvault-cloud-CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca)?;
    let (key, csr, cert, ext) = (
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("server.ext"),
    );
    let mut request = vec!["req", "-new"];
    request.extend(new_key);
    request.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(&request)?;
    fs::write(
        &ext,
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "7",
        "-days",
        "30",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ])?;
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| io::Error::other(e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok((fs::read_to_string(ca_cert)?, Arc::new(config)))
}

async fn serve(
    http: StdListener,
    https: StdListener,
    tls: Arc<ServerConfig>,
    state: Arc<Mutex<State>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let http = tokio::net::TcpListener::from_std(http).expect("listener");
    let https = tokio::net::TcpListener::from_std(https).expect("listener");
    let acceptor = TlsAcceptor::from(tls);
    let accept = async {
        loop {
            tokio::select! {
                Ok((tcp, _)) = http.accept() => {
                    let state = state.clone();
                    tokio::spawn(connection(TokioIo::new(tcp), "http", state));
                }
                Ok((tcp, _)) = https.accept() => {
                    let (state, acceptor) = (state.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            connection(TokioIo::new(tls), "https", state).await;
                        }
                    });
                }
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = stopped => {}
    }
}

async fn connection<I>(io: I, scheme: &'static str, state: Arc<Mutex<State>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(request, scheme, &state).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// A request as the handlers see it.
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub form: Vec<(String, String)>,
    /// `scheme://host:port` as the client addressed us.
    pub origin: String,
}

impl Call {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn bearer(&self) -> Option<&str> {
        let value = self
            .headers
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

async fn handle(
    request: hyper::Request<Incoming>,
    scheme: &'static str,
    state: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let is_form = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let pairs = |bytes: &[u8]| -> Vec<(String, String)> {
        url::form_urlencoded::parse(bytes).into_owned().collect()
    };
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let incoming = Call {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: pairs(parts.uri.query().unwrap_or("").as_bytes()),
        headers: parts.headers.clone(),
        form: if is_form { pairs(&body) } else { Vec::new() },
        origin: format!("{scheme}://{host}"),
    };
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    state.requests.push(Logged {
        method: incoming.method.to_string(),
        path: incoming.path.clone(),
        query: incoming.query.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        form: incoming.form.clone(),
    });
    if let Some(at) = state
        .faults
        .iter()
        .position(|f| incoming.path.starts_with(&f.path_prefix))
    {
        let fault = state.faults.remove(at).expect("found above");
        let mut response = json(
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            serde_json::json!({"error": {"code": "ServiceUnavailable", "message": "try again"}}),
        );
        if let Some(seconds) = fault.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        return response;
    }
    let segments: Vec<&str> = incoming.path.trim_matches('/').split('/').collect();
    match (incoming.method.clone(), segments.as_slice()) {
        (Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
            token::microsoft(&mut state, &incoming, tenant)
        }
        (Method::POST, ["token"]) => token::google(&mut state, &incoming),
        (Method::POST, ["generic", "token"]) => token::generic(&mut state, &incoming),
        (Method::POST, ["introspect"]) => directory::introspect(&mut state, &incoming),
        (Method::GET, ["v1.0", "users"]) => directory::graph_users(&state, &incoming, None),
        (Method::GET, ["v1.0", "groups", group, "transitiveMembers"]) => {
            directory::graph_users(&state, &incoming, Some(group))
        }
        (Method::GET, ["admin", "directory", "v1", "users"]) => {
            directory::google_users(&state, &incoming)
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "path": incoming.path}),
        ),
    }
}

pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// A random hex string (token values, trace IDs).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
