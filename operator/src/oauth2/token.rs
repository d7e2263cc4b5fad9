//! The token requests of each provider and the reading of their answers.
//!
//! Microsoft identity platform v2.0: `POST https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`
//! with `client_id`, `scope`, `grant_type=client_credentials` and either `client_secret` or
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` with a
//! PS256 `client_assertion` (header `x5t#S256`; claims `aud` = the token URL, `iss` = `sub` =
//! the client ID, `jti`, `nbf`, `iat`, `exp`). Errors come as JSON with `error`,
//! `error_description` (starting with an `AADSTS<n>` code), `error_codes`, `trace_id` and
//! `correlation_id`.
//!
//! Google: `POST https://oauth2.googleapis.com/token` with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256 `assertion` signed
//! with the service account key (header `kid` = the key ID; claims `iss` = the service
//! account's address, `scope`, `aud` = the token URL, `iat`, `exp` at most an hour later,
//! `sub` = the user acted for). Errors: `error` and `error_description`.
//!
//! Generic (RFC 6749 section 4.4): `grant_type=client_credentials` and `scope`, the client
//! authenticated with HTTP Basic (section 2.3.1, which every server must support) or with an
//! RS256 client assertion (RFC 7523).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{self, HeaderValue};
use http::Method;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::http::{self as web, Body, HttpClient, HttpError};
use super::jwt::{self, Algorithm};
use super::{AccessToken, ClientSettings, Credential, Provider};
use crate::sensitive::Sensitive;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a signed assertion is valid: Microsoft asks for "5-10 minutes at most", Google
/// allows up to an hour. It is used at once, so a few minutes cover any clock skew.
const ASSERTION_LIFETIME_SECS: u64 = 600;
/// Assumed lifetime of a token whose answer has no `expires_in` (RFC 6749 makes it only
/// recommended): short, so that such a token is fetched anew often rather than used late.
const DEFAULT_LIFETIME_SECS: u64 = 300;

/// Why no token was issued. Messages name the endpoint, the provider's error code and what
/// to do, and never contain a secret.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TokenError {
    /// The settings or the credentials Secret are unusable; nothing was sent.
    #[error("{0}")]
    Settings(String),
    /// The endpoint could not be reached (after retries).
    #[error("cannot get a token: {0}")]
    Unreachable(HttpError),
    /// The endpoint refused, with an OAuth2 error.
    #[error("the token endpoint {url} refused ({code}): {description}{}", .hint.as_deref().map(|h| format!(". {h}")).unwrap_or_default())]
    Refused {
        url: String,
        status: u16,
        code: String,
        description: String,
        hint: Option<String>,
        every_mailbox: bool,
    },
    /// The endpoint answered, but not with a token or an OAuth2 error.
    #[error("the token endpoint {url} answered HTTP {status} without a token: {message}")]
    BadAnswer {
        url: String,
        status: u16,
        message: String,
    },
}

impl TokenError {
    /// Whether trying again later (without changing anything) cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            TokenError::Settings(_) => true,
            TokenError::Unreachable(_) => false,
            TokenError::Refused { status, code, .. } => {
                *status != 429 && *status < 500 && code != "temporarily_unavailable"
            }
            TokenError::BadAnswer { status, .. } => *status < 500 && *status != 429,
        }
    }

    /// Whether every mailbox of the set fails the same way (a wrong client secret), as
    /// opposed to one user (a Google user that does not exist).
    pub fn affects_every_mailbox(&self) -> bool {
        match self {
            TokenError::Refused { every_mailbox, .. } => *every_mailbox,
            _ => true,
        }
    }
}

pub(super) struct TokenClient {
    pub provider: Provider,
    /// The application (client) ID, or the service account's address.
    pub client_id: String,
    pub token_url: Url,
    /// The resource's scope override.
    pub scopes: Vec<String>,
    credential: Credential,
    http: HttpClient,
}

impl TokenClient {
    pub fn new(
        provider: Provider,
        settings: &ClientSettings,
        credential: Credential,
        http: HttpClient,
    ) -> Result<TokenClient, TokenError> {
        let invalid = |m: String| TokenError::Settings(m);
        let client_id = match (provider, &credential) {
            (Provider::Google, Credential::ServiceAccount(sa)) => sa.client_email.clone(),
            (Provider::Google, _) => {
                return Err(invalid(
                    "Google needs a service account key (serviceAccount.json)".into(),
                ))
            }
            (_, Credential::ServiceAccount(_)) => {
                return Err(invalid(format!(
                    "{} takes clientSecret or tls.crt and tls.key, not a service account key",
                    provider.name()
                )))
            }
            _ => settings
                .client_id
                .as_deref()
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| invalid(format!("{} needs clientID", provider.name())))?
                .to_string(),
        };
        let token_url = match (&settings.token_url, provider, &credential) {
            (Some(url), _, _) => url.clone(),
            (None, Provider::Microsoft365, _) => {
                let tenant = settings
                    .tenant_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid("Microsoft365 needs tenantID".into()))?;
                if !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    return Err(invalid(format!(
                        "tenantID {tenant:?} is neither a tenant GUID nor a domain name"
                    )));
                }
                format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
            }
            (None, Provider::Google, Credential::ServiceAccount(sa)) => sa
                .token_uri
                .clone()
                .unwrap_or_else(|| super::GOOGLE_TOKEN_URL.to_string()),
            (None, _, _) => return Err(invalid(format!("{} needs tokenURL", provider.name()))),
        };
        let token_url = web::parse_url("tokenURL", &token_url).map_err(invalid)?;
        Ok(TokenClient {
            provider,
            client_id,
            token_url,
            scopes: settings.scopes.clone(),
            credential,
            http,
        })
    }

    /// Asks the endpoint for a new token.
    pub async fn request(
        &self,
        scopes: &[String],
        subject: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        let scope = scopes.join(" ");
        let mut headers = Vec::new();
        // Values the answer must never repeat, however it is worded.
        let mut secrets: Vec<String> = Vec::new();
        let mut fields: Vec<(&str, String)> = Vec::new();
        match (self.provider, &self.credential) {
            (Provider::Google, Credential::ServiceAccount(sa)) => {
                let now = unix_now();
                let mut claims = json!({
                    "iss": sa.client_email,
                    "scope": scope,
                    "aud": self.token_url.as_str(),
                    "iat": now,
                    "exp": now + ASSERTION_LIFETIME_SECS,
                });
                if let Some(subject) = subject {
                    claims["sub"] = subject.into();
                }
                let mut header = serde_json::Map::new();
                if let Some(kid) = &sa.private_key_id {
                    header.insert("kid".into(), kid.clone().into());
                }
                let assertion = jwt::sign(Algorithm::Rs256, &sa.key, header, &claims)
                    .map_err(TokenError::Settings)?;
                secrets.push(assertion.clone());
                fields.push(("grant_type", JWT_BEARER_GRANT.into()));
                fields.push(("assertion", assertion));
            }
            (_, Credential::ClientSecret(secret)) => {
                fields.push(("grant_type", "client_credentials".into()));
                if !scope.is_empty() {
                    fields.push(("scope", scope.clone()));
                }
                secrets.push(secret.expose().to_string());
                if self.provider == Provider::Microsoft365 {
                    // Microsoft documents the secret in the body first.
                    fields.push(("client_id", self.client_id.clone()));
                    fields.push(("client_secret", secret.expose().to_string()));
                } else {
                    headers.push((header::AUTHORIZATION, basic(&self.client_id, secret)));
                }
            }
            (_, Credential::Certificate(cert)) => {
                let now = unix_now();
                let claims = json!({
                    "aud": self.token_url.as_str(),
                    "iss": self.client_id,
                    "sub": self.client_id,
                    "jti": uuid::Uuid::new_v4().to_string(),
                    "nbf": now,
                    "iat": now,
                    "exp": now + ASSERTION_LIFETIME_SECS,
                });
                let mut header = serde_json::Map::new();
                header.insert("x5t#S256".into(), cert.thumbprint_sha256().into());
                // Microsoft asks for PS256; RFC 7523 servers commonly take RS256.
                let algorithm = match self.provider {
                    Provider::Microsoft365 => Algorithm::Ps256,
                    _ => Algorithm::Rs256,
                };
                let assertion = jwt::sign(algorithm, &cert.key, header, &claims)
                    .map_err(TokenError::Settings)?;
                secrets.push(assertion.clone());
                fields.push(("grant_type", "client_credentials".into()));
                if !scope.is_empty() {
                    fields.push(("scope", scope.clone()));
                }
                fields.push(("client_id", self.client_id.clone()));
                fields.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.into()));
                fields.push(("client_assertion", assertion));
            }
            (_, Credential::ServiceAccount(_)) => {
                unreachable!("TokenClient::new accepts service accounts only for Google")
            }
        }
        let form: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sent = Instant::now();
        let response = self
            .http
            .send(
                Method::POST,
                &self.token_url,
                &headers,
                Some(&Body::form(&form)),
            )
            .await
            .map_err(TokenError::Unreachable)?;
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        self.read_answer(response, sent, &secrets, subject, &scope)
    }

    fn read_answer(
        &self,
        response: web::Response,
        sent: Instant,
        secrets: &[&str],
        subject: Option<&str>,
        scope: &str,
    ) -> Result<AccessToken, TokenError> {
        let url = web::shown(&self.token_url);
        let status = response.status.as_u16();
        let bad = |message: String| TokenError::BadAnswer {
            url: url.clone(),
            status,
            message,
        };
        if response.status.is_success() {
            let answer: Success = serde_json::from_slice(&response.body)
                .map_err(|e| bad(format!("not a token response ({e})")))?;
            let token = answer
                .access_token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("no access_token in the answer".into()))?;
            if let Some(kind) = answer
                .token_type
                .filter(|t| !t.eq_ignore_ascii_case("bearer"))
            {
                return Err(bad(format!(
                    "token_type is {:?}, not Bearer",
                    clean(&kind, secrets)
                )));
            }
            let lifetime = Duration::from_secs(
                answer
                    .expires_in
                    .as_ref()
                    .and_then(Lifetime::seconds)
                    .unwrap_or(DEFAULT_LIFETIME_SECS)
                    .max(1),
            );
            return Ok(AccessToken {
                token: Sensitive::new(token),
                // Counted from the request: the token may have been issued right then.
                expires_at: sent + lifetime,
                lifetime,
            });
        }
        let Ok(error) = serde_json::from_slice::<ErrorAnswer>(&response.body) else {
            let text = String::from_utf8_lossy(&response.body);
            return Err(bad(if text.trim().is_empty() {
                "an empty answer".into()
            } else {
                format!("{:?}", clean(&text, secrets))
            }));
        };
        let code = clean(&error.error, secrets);
        let first_line = error
            .error_description
            .as_deref()
            .and_then(|d| d.lines().next())
            .unwrap_or("no description");
        let mut description = clean(first_line, secrets);
        let ids: Vec<String> = [
            ("trace ID", &error.trace_id),
            ("correlation ID", &error.correlation_id),
        ]
        .into_iter()
        .filter_map(|(name, id)| {
            id.as_deref()
                .map(|id| format!("{name} {}", clean(id, secrets)))
        })
        .collect();
        if !ids.is_empty() {
            description = format!("{description} ({})", ids.join(", "));
        }
        let aadsts = error
            .error_codes
            .as_ref()
            .and_then(|c| c.first().copied())
            .or_else(|| aadsts_code(first_line));
        let (hint, every_mailbox) =
            self.hint(&code, first_line, aadsts, subject.unwrap_or(""), scope);
        Err(TokenError::Refused {
            url,
            status,
            code,
            description,
            hint,
            every_mailbox,
        })
    }

    /// What to do about an error, in plain words, and whether it hits every mailbox.
    fn hint(
        &self,
        code: &str,
        description: &str,
        aadsts: Option<u64>,
        subject: &str,
        scope: &str,
    ) -> (Option<String>, bool) {
        let every = |s: &str| (Some(s.to_string()), true);
        match self.provider {
            Provider::Microsoft365 => match aadsts {
                Some(7000215) => every(
                    "The client secret is wrong: put the secret's Value (not its Secret ID) \
                     into key clientSecret of the credentials Secret",
                ),
                Some(7000222) => every(
                    "The client secret has expired: create a new one under Certificates & \
                     secrets of the app registration and update the credentials Secret",
                ),
                Some(700016) => every(
                    "There is no application with this clientID in the tenant: check clientID \
                     and tenantID, and that an administrator of the tenant consented to the app",
                ),
                Some(90002) => every("The tenant does not exist: check tenantID"),
                Some(700027) => every(
                    "The certificate is not registered with the app: upload tls.crt under \
                     Certificates & secrets of the app registration",
                ),
                Some(700024) => every(
                    "The client assertion is outside its valid time: check this machine's clock",
                ),
                Some(7000112) => every("The application is disabled in the tenant"),
                Some(65001) => every(
                    "An administrator has not consented to the app's permissions: grant admin \
                     consent under API permissions of the app registration",
                ),
                Some(70011) => every(
                    "The scope is not valid: leave scopes empty for Exchange Online's \
                     https://outlook.office365.com/.default",
                ),
                Some(500011) => every(
                    "The resource is not available in the tenant (is Exchange Online licensed?)",
                ),
                _ => (None, true),
            },
            Provider::Google => match code {
                "unauthorized_client" => (
                    Some(format!(
                        "The service account (client ID {}) is not allowed domain-wide \
                         delegation for {scope}: add it in the Google Admin console under \
                         Security > Access and data control > API controls > Domain-wide \
                         delegation",
                        self.google_client_id()
                    )),
                    true,
                ),
                "access_denied" | "admin_policy_enforced" => every(
                    "A Google Workspace policy blocks this service account (Admin console, \
                     Security > API controls)",
                ),
                "invalid_client" | "disabled_client" => {
                    every("The service account or its key is disabled or deleted")
                }
                "invalid_scope" => every("The scopes are not valid for Google"),
                "invalid_grant" if description.contains("Invalid JWT Signature") => every(
                    "The service account key is no longer valid (deleted, or of another \
                     account): create a new key and update the credentials Secret",
                ),
                "invalid_grant"
                    if description.contains("short-lived") || description.contains("iat") =>
                {
                    every("The assertion's times were refused: check this machine's clock")
                }
                "invalid_grant"
                    if description.contains("email") || description.contains("User ID") =>
                {
                    (
                        Some(format!("There is no Google Workspace user {subject:?}")),
                        false,
                    )
                }
                _ => (None, code != "invalid_grant"),
            },
            Provider::Generic => match code {
                "invalid_client" => {
                    every("Client authentication failed: check clientID and the credentials Secret")
                }
                "invalid_scope" => every("Check scopes against what the server grants this client"),
                "unauthorized_client" => {
                    every("The server does not let this client use the client credentials grant")
                }
                _ => (None, true),
            },
        }
    }

    /// The numeric client ID an administrator enters for domain-wide delegation.
    fn google_client_id(&self) -> String {
        match &self.credential {
            Credential::ServiceAccount(sa) => sa
                .client_id
                .clone()
                .unwrap_or_else(|| sa.client_email.clone()),
            _ => self.client_id.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Success {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<Lifetime>,
}

/// `expires_in` is a number per RFC 6749; some servers send it as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lifetime {
    Number(f64),
    Text(String),
}

impl Lifetime {
    fn seconds(&self) -> Option<u64> {
        let n = match self {
            Lifetime::Number(n) => *n,
            Lifetime::Text(t) => t.trim().parse().ok()?,
        };
        (n.is_finite() && n >= 0.0).then_some(n as u64)
    }
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    error_description: Option<String>,
    error_codes: Option<Vec<u64>>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
}

/// `AADSTS7000215: ...` → 7000215.
fn aadsts_code(description: &str) -> Option<u64> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// HTTP Basic client authentication (RFC 6749 section 2.3.1: both parts form-encoded).
fn basic(client_id: &str, secret: &Sensitive) -> HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(secret.expose()));
    let mut value = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
        .expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// Text from a server made safe to show: the secrets sent are cut out, long runs that look
/// like tokens are shortened, control characters dropped, and the length bounded.
pub(crate) fn clean(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "***");
    }
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 64 {
            out.push_str(&run[..8]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "-_.~+/=".contains(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            if !c.is_control() {
                out.push(c);
            }
        }
    }
    flush(&mut run, &mut out);
    if out.chars().count() > 500 {
        out = out.chars().take(500).collect::<String>() + "…";
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_codes_are_found_in_descriptions() {
        assert_eq!(
            aadsts_code("AADSTS7000215: Invalid client secret provided."),
            Some(7000215)
        );
        assert_eq!(aadsts_code("no code here"), None);
    }

    #[test]
    fn server_text_is_cleaned_of_secrets_and_token_like_runs() {
        let jwt = format!("eyJ{}", "a".repeat(100));
        let text = format!("bad secret hunter22 in request; assertion {jwt}\r\nmore");
        let cleaned = clean(&text, &["hunter22"]);
        assert!(!cleaned.contains("hunter22"), "{cleaned}");
        assert!(!cleaned.contains(&"a".repeat(64)), "{cleaned}");
        assert!(cleaned.contains("eyJaaaaa…"), "{cleaned}");
        assert!(!cleaned.contains('\r'));
        assert!(clean(&"x ".repeat(1000), &[]).chars().count() <= 501);
    }

    #[test]
    fn basic_authentication_encodes_both_parts() {
        let v = basic("client:1", &Sensitive::new("p@ss word"));
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        assert_eq!(STANDARD.decode(b64).unwrap(), b"client%3A1:p%40ss+word");
        assert!(v.is_sensitive());
    }

    #[test]
    fn lifetimes_may_be_numbers_or_text() {
        let s: Success =
            serde_json::from_str(r#"{"access_token":"a","expires_in":"3599"}"#).unwrap();
        assert_eq!(s.expires_in.unwrap().seconds(), Some(3599));
        let s: Success = serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        assert_eq!(s.expires_in.unwrap().seconds(), Some(3599));
        let s: Success = serde_json::from_str(r#"{"access_token":"a","expires_in":-5}"#).unwrap();
        assert_eq!(s.expires_in.unwrap().seconds(), None);
    }
}
