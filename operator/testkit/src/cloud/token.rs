//! The fake token endpoints. Requests and answers follow the providers' documentation:
//!
//! - Microsoft identity platform v2.0, client credentials flow ("First case: access token
//!   request with a shared secret", "Second case: ... with a certificate") and "Microsoft
//!   identity platform application authentication certificate credentials" (assertion
//!   header `alg` PS256 (RS256 accepted), `typ`, `x5t#S256` (`x5t` accepted); claims `aud`,
//!   `exp`, `iss`, `jti`, `nbf`, `sub`, `iat`). Answers: `{token_type, expires_in,
//!   access_token}`; errors HTTP 400/401 `{error, error_description, error_codes, timestamp,
//!   trace_id, correlation_id, error_uri}` with the AADSTS codes of Entra's error code list.
//! - Google, "Using OAuth 2.0 for Server to Server Applications": `grant_type` =
//!   `urn:ietf:params:oauth:grant-type:jwt-bearer`, `assertion` = RS256 JWT with `iss`,
//!   `scope`, `aud`, `exp` (at most an hour after `iat`), `iat`, optional `sub`; answer
//!   `{access_token, scope, token_type, expires_in}`; errors `{error, error_description}`
//!   (`unauthorized_client`, `invalid_grant` with "Invalid email or User ID", "Invalid JWT
//!   Signature.", the short-lived token message, `invalid_scope`, `disabled_client`).
//! - Generic, RFC 6749 sections 2.3.1, 4.4 and 5, RFC 7523 client assertions.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};
use serde_json::{json, Value};

use super::{json, random_hex, Call, Issued, Principal, State, TestKey, EXCHANGE, GRAPH};

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Roles that belong to Exchange Online; the others are Graph's.
const EXCHANGE_ROLES: [&str; 3] = ["IMAP.AccessAsApp", "POP.AccessAsApp", "full_access_as_app"];

type Answer = Response<Full<Bytes>>;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An Entra ID error answer.
fn aad(status: u16, error: &str, code: u64, message: &str) -> Answer {
    let (trace, correlation) = (uuid(), uuid());
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    json(
        StatusCode::from_u16(status).expect("a valid status"),
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

/// An RFC 6749 section 5.2 error answer.
fn oauth_error(status: u16, error: &str, description: &str) -> Answer {
    json(
        StatusCode::from_u16(status).expect("a valid status"),
        json!({"error": error, "error_description": description}),
    )
}

fn issue(
    state: &mut State,
    principal: Principal,
    scopes: Vec<String>,
    roles: Vec<String>,
) -> (String, u64) {
    let token = format!("mvt-{}", random_hex(24));
    let lifetime = state.token_lifetime;
    state.issued.push(Issued {
        token: token.clone(),
        principal,
        scopes,
        roles,
        expires: Instant::now() + lifetime,
    });
    (token, lifetime.as_secs())
}

/// A JWT split up; `None` when it is not three base64url parts of which the first two
/// are JSON objects.
pub(super) struct Jwt {
    pub header: Value,
    pub claims: Value,
    input: String,
    signature: Vec<u8>,
}

impl Jwt {
    pub fn parse(text: &str) -> Option<Jwt> {
        let mut parts = text.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let decode = |part: &str| -> Option<Value> {
            let value: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()?;
            value.is_object().then_some(value)
        };
        Some(Jwt {
            header: decode(header)?,
            claims: decode(claims)?,
            input: format!("{header}.{claims}"),
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    pub fn alg(&self) -> &str {
        self.header["alg"].as_str().unwrap_or("")
    }

    /// Whether the signature is valid for `key` under the header's algorithm.
    pub fn verifies_with(&self, key: &TestKey) -> bool {
        let algorithm = match self.alg() {
            "RS256" => &RSA_PKCS1_2048_8192_SHA256,
            "PS256" => &RSA_PSS_2048_8192_SHA256,
            _ => return false,
        };
        UnparsedPublicKey::new(algorithm, &key.public_key_der)
            .verify(self.input.as_bytes(), &self.signature)
            .is_ok()
    }

    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims[name].as_str()
    }

    pub fn time(&self, name: &str) -> Option<i64> {
        self.claims[name].as_i64()
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(super) fn microsoft(state: &mut State, call: &Call, tenant_name: &str) -> Answer {
    let Some(tenant) = state
        .tenants
        .iter()
        .find(|t| {
            t.id.eq_ignore_ascii_case(tenant_name)
                || t.domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(tenant_name))
        })
        .cloned()
    else {
        return aad(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant_name}' not found. Check to make sure you have the correct \
                 tenant ID and are signing into the correct cloud. Check with your \
                 subscription administrator, this may happen if there are no active \
                 subscriptions for the tenant."
            ),
        );
    };
    let missing = |name: &str| {
        aad(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let Some(grant) = call.field("grant_type") else {
        return missing("grant_type");
    };
    if grant != "client_credentials" {
        return aad(
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    let Some(client_id) = call.field("client_id") else {
        return missing("client_id");
    };
    let Some(scope) = call.field("scope") else {
        return missing("scope");
    };
    let Some(app) = tenant.apps.iter().find(|a| a.client_id == client_id) else {
        return aad(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You \
                 may have sent your authentication request to the wrong tenant.",
                tenant.domains.first().unwrap_or(&tenant.id)
            ),
        );
    };
    if app.disabled {
        return aad(
            400,
            "unauthorized_client",
            7000112,
            &format!(
                "Application '{client_id}'({}) is disabled.",
                app.display_name
            ),
        );
    }
    if let Some(secret) = call.field("client_secret") {
        match app.secrets.iter().find(|s| s.value == secret) {
            None => {
                return aad(
                    401,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{client_id}'."
                    ),
                )
            }
            Some(s) if s.expired => {
                return aad(
                    401,
                    "invalid_client",
                    7000222,
                    &format!(
                        "The provided client secret keys for app '{client_id}' are expired. \
                         Visit the Azure portal to create new keys for your app: \
                         https://aka.ms/NewClientSecret, or consider using certificate \
                         credentials for added security: https://aka.ms/certCreds."
                    ),
                )
            }
            Some(_) => {}
        }
    } else if let Some(assertion) = call.field("client_assertion") {
        if call.field("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
            return missing("client_assertion_type");
        }
        let expected_aud = format!("{}{}", call.origin, call.path);
        if let Err(answer) = check_assertion(assertion, client_id, &app.certificates, &expected_aud)
        {
            return *answer;
        }
    } else {
        return aad(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        );
    }
    let scopes: Vec<String> = scope.split_whitespace().map(str::to_string).collect();
    if let Some(bad) = scopes.iter().find(|s| !s.ends_with("/.default")) {
        return aad(
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {bad} is not valid. Client credential flows \
                 must have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        );
    }
    let mut resources: Vec<&str> = scopes
        .iter()
        .map(|s| s.trim_end_matches("/.default"))
        .collect();
    resources.dedup();
    if resources.len() != 1 {
        return aad(
            400,
            "invalid_scope",
            70011,
            &format!(
                "The provided value for the input parameter 'scope' is not valid. The scope \
                 {scope} is not valid."
            ),
        );
    }
    let resource = resources[0].to_string();
    let is_exchange = resource == EXCHANGE;
    let is_graph = resource == GRAPH || state.own_origins.contains(&resource);
    if !is_exchange && !is_graph {
        return aad(
            400,
            "invalid_resource",
            500011,
            &format!(
                "The resource principal named {resource} was not found in the tenant named \
                 {}. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You \
                 might have sent your authentication request to the wrong tenant.",
                tenant.domains.first().unwrap_or(&tenant.id)
            ),
        );
    }
    // Without admin consent Entra still issues an app-only token, only without roles.
    let roles = if app.admin_consent {
        app.roles
            .iter()
            .filter(|r| EXCHANGE_ROLES.contains(&r.as_str()) == is_exchange)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let principal = Principal::App {
        tenant: tenant.id.clone(),
        client_id: client_id.to_string(),
    };
    let (token, lifetime) = issue(state, principal, scopes, roles);
    json(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime, "access_token": token}),
    )
}

fn check_assertion(
    assertion: &str,
    client_id: &str,
    certificates: &[TestKey],
    expected_aud: &str,
) -> Result<(), Box<Answer>> {
    let malformed = || {
        Box::new(aad(
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ))
    };
    let jwt = Jwt::parse(assertion).ok_or_else(malformed)?;
    if !matches!(jwt.alg(), "PS256" | "RS256") {
        return Err(malformed());
    }
    let (thumbprint, certificate) = if let Some(t) = jwt.header["x5t#S256"].as_str() {
        (t, certificates.iter().find(|c| c.thumbprint_sha256() == t))
    } else if let Some(t) = jwt.header["x5t"].as_str() {
        (t, certificates.iter().find(|c| c.thumbprint_sha1() == t))
    } else {
        return Err(malformed());
    };
    let Some(certificate) = certificate else {
        return Err(Box::new(aad(
            401,
            "invalid_client",
            700027,
            &format!(
                "The certificate with identifier used to sign the client assertion is not \
                 registered on application. [Reason - The key was not found., Thumbprint of \
                 key used by client: '{thumbprint}', Please visit the Azure Portal, Graph \
                 Explorer or directly use MS Graph to see configured keys for app Id \
                 '{client_id}'.]"
            ),
        )));
    };
    if !jwt.verifies_with(certificate) {
        return Err(Box::new(aad(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        )));
    }
    if jwt.claim("iss") != Some(client_id) || jwt.claim("sub") != Some(client_id) {
        return Err(Box::new(aad(
            401,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. \
             Review the documentation at \
             https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .",
        )));
    }
    if jwt.claim("aud") != Some(expected_aud) || jwt.claim("jti").is_none_or(str::is_empty) {
        return Err(malformed());
    }
    let now = unix_now();
    let (nbf, exp) = (jwt.time("nbf").unwrap_or(0), jwt.time("exp").unwrap_or(0));
    if nbf > now + 300 || exp <= now {
        return Err(Box::new(aad(
            400,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {now}, \
                 assertion valid from {nbf}, expiry time of assertion {exp}."
            ),
        )));
    }
    Ok(())
}

/// `POST /token` (Google).
pub(super) fn google(state: &mut State, call: &Call) -> Answer {
    let grant = call.field("grant_type").unwrap_or("");
    if grant != JWT_BEARER {
        return oauth_error(
            400,
            "unsupported_grant_type",
            &format!("Invalid grant_type: {grant}"),
        );
    }
    let Some(assertion) = call.field("assertion") else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let signature = || oauth_error(400, "invalid_grant", "Invalid JWT Signature.");
    let Some(jwt) = Jwt::parse(assertion) else {
        return oauth_error(400, "invalid_grant", "Invalid JWT.");
    };
    let iss = jwt.claim("iss").unwrap_or("");
    let Some(account) = state
        .service_accounts
        .iter()
        .find(|a| a.client_email == iss)
        .cloned()
    else {
        return oauth_error(400, "invalid_grant", "Invalid grant: account not found");
    };
    if account.disabled {
        return oauth_error(400, "disabled_client", "The OAuth client was disabled.");
    }
    let kid_ok = jwt.header["kid"]
        .as_str()
        .is_none_or(|kid| kid == account.key_id());
    if jwt.alg() != "RS256" || !kid_ok || !jwt.verifies_with(&account.key) {
        return signature();
    }
    let expected_aud = format!("{}{}", call.origin, call.path);
    if jwt.claim("aud") != Some(expected_aud.as_str()) {
        return oauth_error(
            400,
            "invalid_grant",
            &format!("Invalid JWT: Failed audience check. The right audience is {expected_aud}"),
        );
    }
    let now = unix_now();
    let (iat, exp) = (jwt.time("iat").unwrap_or(0), jwt.time("exp").unwrap_or(0));
    if exp - iat > 3600 || iat > now + 300 || exp <= now {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable \
             timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let scopes: Vec<String> = jwt
        .claim("scope")
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if scopes.is_empty() {
        return oauth_error(400, "invalid_scope", "Empty or missing scope not allowed.");
    }
    let user = jwt.claim("sub").map(str::to_lowercase);
    if let Some(user) = &user {
        if !state
            .users
            .iter()
            .any(|u| u.name.eq_ignore_ascii_case(user))
        {
            return oauth_error(400, "invalid_grant", "Invalid email or User ID");
        }
        if !scopes.iter().all(|s| account.delegated_scopes.contains(s)) {
            return oauth_error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or \
                 client not authorized for any of the scopes requested.",
            );
        }
    }
    let principal = Principal::Delegated {
        client_email: account.client_email.clone(),
        user,
    };
    let scope = scopes.join(" ");
    let (token, lifetime) = issue(state, principal, scopes, Vec::new());
    json(
        StatusCode::OK,
        json!({"access_token": token, "scope": scope, "token_type": "Bearer", "expires_in": lifetime}),
    )
}

/// `POST /generic/token`: RFC 6749 client credentials.
pub(super) fn generic(state: &mut State, call: &Call) -> Answer {
    let basic = call
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let decode = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (client_id, secret, used_basic) = match &basic {
        Some(pair) => {
            let (id, secret) = pair.split_once(':').unwrap_or((pair, ""));
            (decode(id), Some(decode(secret)), true)
        }
        None => (
            call.field("client_id").unwrap_or("").to_string(),
            call.field("client_secret").map(str::to_string),
            false,
        ),
    };
    let unauthorized = || {
        let mut answer = oauth_error(401, "invalid_client", "Client authentication failed.");
        if used_basic {
            answer.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"mailvault-test\""),
            );
        }
        answer
    };
    let Some(client) = state
        .generic_clients
        .iter()
        .find(|c| c.client_id == client_id)
        .cloned()
    else {
        return unauthorized();
    };
    match (&secret, call.field("client_assertion")) {
        (Some(secret), None) if *secret == client.secret => {}
        (None, Some(assertion)) => {
            let expected_aud = format!("{}{}", call.origin, call.path);
            let good = call.field("client_assertion_type") == Some(CLIENT_ASSERTION_TYPE)
                && Jwt::parse(assertion).is_some_and(|jwt| {
                    jwt.claim("iss") == Some(&client_id)
                        && jwt.claim("sub") == Some(&client_id)
                        && jwt.claim("aud") == Some(expected_aud.as_str())
                        && jwt.time("exp").is_some_and(|exp| exp > unix_now())
                        && client.certificates.iter().any(|c| jwt.verifies_with(c))
                });
            if !good {
                return unauthorized();
            }
        }
        _ => return unauthorized(),
    }
    if call.field("grant_type") != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        );
    }
    let requested: Vec<String> = call
        .field("scope")
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if let Some(bad) = requested.iter().find(|s| !client.scopes.contains(s)) {
        return oauth_error(
            400,
            "invalid_scope",
            &format!("Scope {bad} is not allowed."),
        );
    }
    let scopes = if requested.is_empty() {
        client.scopes.clone()
    } else {
        requested
    };
    let scope = scopes.join(" ");
    let (token, lifetime) = issue(state, Principal::Generic { client_id }, scopes, Vec::new());
    json(
        StatusCode::OK,
        json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}),
    )
}

/// When a token expires, in Unix seconds, as introspection reports it.
pub(super) fn unix_expiry(expires: Instant) -> i64 {
    unix_now() + expires.saturating_duration_since(Instant::now()).as_secs() as i64
}
