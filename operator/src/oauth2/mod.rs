//! OAuth2 access tokens for app-only access to whole tenants: Microsoft 365 (client
//! credentials with a client secret or a certificate), Google Workspace (a service account
//! with domain-wide delegation, RFC 7523 JWT bearer grant, one token per user) and any
//! other authorization server (client credentials at a given token URL).
//!
//! Tokens are cached until shortly before they expire and fetched anew after that, so a run
//! longer than a token's lifetime keeps logging in. Concurrent requests for the same token
//! wait for one fetch instead of each asking the server.
//!
//! Nothing here ever puts a secret (client secret, private key, assertion, access token) into
//! an error message or a log line: the values are [`Secret`]s, and whatever text a server
//! sends back is cleaned of them before it is shown.

pub mod http;
mod jwt;
mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use crate::sensitive::Sensitive;
pub use http::{HttpClient, HttpError, Retry};
pub use token::TokenError;

/// Microsoft's IMAP scope for app-only access.
pub const MICROSOFT_IMAP_SCOPE: &str = "https://outlook.office365.com/.default";
/// Google's scope for full IMAP access.
pub const GOOGLE_IMAP_SCOPE: &str = "https://mail.google.com/";
/// Google's scope for reading users from the Admin SDK Directory API.
pub const GOOGLE_DIRECTORY_SCOPE: &str =
    "https://www.googleapis.com/auth/admin.directory.user.readonly";
/// Google's token endpoint, when the service account key names none.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// Text from a server made safe to show: token-like runs shortened, control characters
/// dropped, the length bounded.
pub fn clean_server_text(text: &str) -> String {
    token::clean(text, &[])
}

/// Who issues the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Microsoft365,
    Google,
    Generic,
}

impl Provider {
    /// The name users write in the resource.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Microsoft365 => "Microsoft365",
            Provider::Google => "Google",
            Provider::Generic => "Generic",
        }
    }
}

/// The non-secret settings of a client, as the resource states them.
#[derive(Clone, Debug, Default)]
pub struct ClientSettings {
    /// Microsoft 365: the tenant (GUID or domain), for the default token URL.
    pub tenant_id: Option<String>,
    /// Microsoft 365 and Generic: the application (client) ID.
    pub client_id: Option<String>,
    /// Overrides the provider's token endpoint (national clouds, Generic, tests).
    pub token_url: Option<String>,
    /// Overrides the provider's IMAP scope.
    pub scopes: Vec<String>,
}

/// How the client proves who it is; read from the credentials Secret.
pub enum Credential {
    /// `clientSecret`.
    ClientSecret(Sensitive),
    /// `tls.crt` and `tls.key`: a signed client assertion (RFC 7523 section 2.2).
    Certificate(jwt::Certificate),
    /// `serviceAccount.json`: a Google service account key.
    ServiceAccount(ServiceAccount),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientSecret(_) => f.write_str("ClientSecret(***)"),
            Credential::Certificate(_) => f.write_str("Certificate(***)"),
            Credential::ServiceAccount(sa) => write!(f, "ServiceAccount({})", sa.client_email),
        }
    }
}

/// The parts of a Google service account key that matter here.
pub struct ServiceAccount {
    pub client_email: String,
    pub client_id: Option<String>,
    pub private_key_id: Option<String>,
    pub token_uri: Option<String>,
    key: jwt::RsaKey,
}

/// Secret keys of the credentials Secret.
pub mod keys {
    pub const CLIENT_SECRET: &str = "clientSecret";
    pub const TLS_CRT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
    pub const SERVICE_ACCOUNT: &str = "serviceAccount.json";
}

impl Credential {
    /// Reads the credential from the keys of the credentials Secret (`get` returns a key's
    /// value). Microsoft 365 and Generic take `clientSecret`, or `tls.crt` with `tls.key`;
    /// Google takes `serviceAccount.json`. Errors name the key, never its content.
    pub fn from_keys(
        provider: Provider,
        get: impl Fn(&str) -> Option<Vec<u8>>,
    ) -> Result<Credential, String> {
        if provider == Provider::Google {
            let json = get(keys::SERVICE_ACCOUNT)
                .ok_or("has no key serviceAccount.json (the JSON key of the service account)")?;
            return ServiceAccount::from_json(&json)
                .map(Credential::ServiceAccount)
                .map_err(|e| format!("key serviceAccount.json: {e}"));
        }
        let secret = get(keys::CLIENT_SECRET);
        let (crt, key) = (get(keys::TLS_CRT), get(keys::TLS_KEY));
        match (secret, crt, key) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(
                "has both clientSecret and tls.crt/tls.key; keep one credential in the Secret"
                    .into(),
            ),
            (Some(secret), None, None) => {
                let secret = String::from_utf8(secret)
                    .map_err(|_| "key clientSecret is not UTF-8 text")?
                    .trim()
                    .to_string();
                if secret.is_empty() {
                    return Err("key clientSecret is empty".into());
                }
                Ok(Credential::ClientSecret(Sensitive::new(secret)))
            }
            (None, Some(crt), Some(key)) => {
                jwt::Certificate::from_pem(&crt, &key).map(Credential::Certificate)
            }
            (None, Some(_), None) => Err("has tls.crt but no tls.key".into()),
            (None, None, Some(_)) => Err("has tls.key but no tls.crt".into()),
            (None, None, None) => Err(
                "has neither clientSecret nor tls.crt and tls.key (a certificate registered \
                 with the app and its private key)"
                    .into(),
            ),
        }
    }
}

impl ServiceAccount {
    /// Parses a service account key file as the Google Cloud console downloads it.
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, String> {
        #[derive(Deserialize)]
        struct Key {
            #[serde(rename = "type")]
            kind: Option<String>,
            client_email: Option<String>,
            client_id: Option<String>,
            private_key_id: Option<String>,
            private_key: Option<String>,
            token_uri: Option<String>,
        }
        // serde_json's messages quote no input text, only positions.
        let key: Key = serde_json::from_slice(json).map_err(|e| format!("not valid JSON ({e})"))?;
        if let Some(kind) = key.kind.as_deref().filter(|k| *k != "service_account") {
            return Err(format!(
                "is a {kind:?} key, not a service account key (\"type\": \"service_account\")"
            ));
        }
        let client_email = key
            .client_email
            .filter(|e| !e.trim().is_empty())
            .ok_or("has no client_email")?;
        let pem = key.private_key.ok_or("has no private_key")?;
        let private =
            jwt::RsaKey::from_pem(pem.as_bytes()).map_err(|e| format!("private_key: {e}"))?;
        Ok(ServiceAccount {
            client_email: client_email.trim().to_string(),
            client_id: key.client_id,
            private_key_id: key.private_key_id,
            token_uri: key.token_uri,
            key: private,
        })
    }
}

/// An access token and when it stops being usable.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: Sensitive,
    pub expires_at: Instant,
    /// The lifetime the server granted.
    pub lifetime: Duration,
}

impl AccessToken {
    /// Whether it is still good for a login now: not within the last part of its lifetime
    /// (five minutes, or half of a lifetime shorter than ten), so that clocks a little
    /// apart and a slow login do not meet an expired token.
    fn fresh(&self, now: Instant) -> bool {
        let margin = (self.lifetime / 2).min(Duration::from_secs(300));
        now + margin < self.expires_at
    }
}

/// What a cached token is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    scopes: Vec<String>,
    subject: Option<String>,
}

type Slot = Arc<tokio::sync::Mutex<Option<AccessToken>>>;

/// Fetches and caches tokens of one client. Share it (`Arc`) among everything that logs in
/// with this client during a run.
pub struct Tokens {
    client: token::TokenClient,
    cache: Mutex<HashMap<Key, Slot>>,
    /// A refusal that no retry fixes and that hits every mailbox (a wrong client secret),
    /// and when it came: returned again for a while instead of asking the server once per
    /// mailbox, which would only earn a lockout or throttling for thousands of requests.
    refused: Mutex<Option<(TokenError, Instant)>>,
}

/// How long a refusal that hits every mailbox is answered from memory.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("provider", &self.client.provider)
            .field("client", &self.client.client_id)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// A client for `provider`. `http` carries the TLS trust and timeouts; the token URL is
    /// checked here (https, or http on loopback).
    pub fn new(
        provider: Provider,
        settings: &ClientSettings,
        credential: Credential,
        http: HttpClient,
    ) -> Result<Tokens, TokenError> {
        Ok(Tokens {
            client: token::TokenClient::new(provider, settings, credential, http)?,
            cache: Mutex::new(HashMap::new()),
            refused: Mutex::new(None),
        })
    }

    pub fn provider(&self) -> Provider {
        self.client.provider
    }

    /// The token endpoint in use.
    pub fn token_url(&self) -> &Url {
        &self.client.token_url
    }

    /// A token for `scopes`, acting as `subject` (Google's delegated user) or as the app
    /// itself; from the cache while it is fresh.
    pub async fn get(
        &self,
        scopes: &[String],
        subject: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        let key = Key {
            scopes: scopes.to_vec(),
            subject: subject.map(str::to_lowercase),
        };
        let slot = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() > 1000 {
                // A long run through many Google users: forget the tokens of users done.
                let now = Instant::now();
                cache.retain(|_, slot| {
                    slot.try_lock()
                        .map_or(true, |t| t.as_ref().is_some_and(|t| t.fresh(now)))
                });
            }
            cache.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| t.fresh(Instant::now())) {
            return Ok(token.clone());
        }
        if let Some((error, _)) = self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(_, at)| at.elapsed() < REFUSAL_MEMORY)
        {
            return Err(error.clone());
        }
        match self.client.request(scopes, subject).await {
            Ok(token) => {
                *slot = Some(token.clone());
                Ok(token)
            }
            Err(error) => {
                if error.is_permanent() && error.affects_every_mailbox() {
                    *self.refused.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((error.clone(), Instant::now()));
                }
                Err(error)
            }
        }
    }

    /// `GET url` with a token for `scopes` (acting as `subject`), asked for right before
    /// the request, so that a long listing of many pages never meets an expired token. The
    /// error is in plain words.
    pub async fn authorized_get(
        &self,
        client: &HttpClient,
        url: &Url,
        scopes: &[String],
        subject: Option<&str>,
    ) -> Result<http::Response, String> {
        let token = self.get(scopes, subject).await.map_err(|e| e.to_string())?;
        client
            .get_with_token(url, &token.token)
            .await
            .map_err(|e| e.to_string())
    }

    /// Tokens for IMAP logins: the provider's IMAP scope unless the resource overrides it;
    /// per user for Google, one for every mailbox otherwise.
    pub fn for_imap(self: &Arc<Self>) -> ImapTokens {
        let provider = self.provider();
        let scopes = match (&self.client.scopes, provider) {
            (scopes, _) if !scopes.is_empty() => scopes.clone(),
            (_, Provider::Microsoft365) => vec![MICROSOFT_IMAP_SCOPE.to_string()],
            (_, Provider::Google) => vec![GOOGLE_IMAP_SCOPE.to_string()],
            (_, Provider::Generic) => Vec::new(),
        };
        ImapTokens {
            tokens: self.clone(),
            scopes,
            per_user: provider == Provider::Google,
        }
    }
}

/// Access tokens for the IMAP logins of one MailboxSet; cheap to clone.
#[derive(Clone, Debug)]
pub struct ImapTokens {
    tokens: Arc<Tokens>,
    scopes: Vec<String>,
    per_user: bool,
}

impl ImapTokens {
    /// The token to log in as `user` (the mailbox address).
    pub async fn token_for(&self, user: &str) -> Result<AccessToken, TokenError> {
        let subject = self.per_user.then_some(user);
        self.tokens.get(&self.scopes, subject).await
    }

    pub fn provider(&self) -> Provider {
        self.tokens.provider()
    }

    /// What to check when the server rejects a token, in plain words.
    pub fn rejected_login_hint(&self) -> &'static str {
        match self.provider() {
            Provider::Microsoft365 => {
                "check that the app has the application permission IMAP.AccessAsApp \
                 (Office 365 Exchange Online) with admin consent, that its service principal \
                 is registered in Exchange Online (New-ServicePrincipal) and that it has \
                 FullAccess to this mailbox (Add-MailboxPermission)"
            }
            Provider::Google => {
                "check that the service account's domain-wide delegation includes \
                 https://mail.google.com/ and that IMAP access is allowed for this user"
            }
            Provider::Generic => {
                "check that the server accepts this client's tokens for this mailbox"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &[u8])]) -> impl Fn(&str) -> Option<Vec<u8>> {
        let map: HashMap<String, Vec<u8>> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_secret_decides_the_credential() {
        let cert = jwt::tests::TEST_CERT.as_bytes();
        let key = jwt::tests::TEST_KEY.as_bytes();
        let p = Provider::Microsoft365;
        assert!(matches!(
            Credential::from_keys(p, keys(&[("clientSecret", b" s3cr3t\n")])),
            Ok(Credential::ClientSecret(s)) if s.expose() == "s3cr3t"
        ));
        assert!(matches!(
            Credential::from_keys(p, keys(&[("tls.crt", cert), ("tls.key", key)])),
            Ok(Credential::Certificate(_))
        ));
        for (pairs, wanted) in [
            (&[][..], "neither clientSecret"),
            (&[("clientSecret", &b""[..])][..], "empty"),
            (&[("tls.crt", cert)][..], "no tls.key"),
            (&[("tls.key", key)][..], "no tls.crt"),
            (
                &[("clientSecret", &b"x"[..]), ("tls.key", key)][..],
                "keep one credential",
            ),
        ] {
            let e = Credential::from_keys(p, keys(pairs)).unwrap_err();
            assert!(e.contains(wanted), "{e}");
        }
    }

    #[test]
    fn service_account_keys_are_read_and_checked() {
        let pem = jwt::tests::TEST_KEY;
        let json = serde_json::json!({
            "type": "service_account", "project_id": "p", "private_key_id": "abc",
            "private_key": pem, "client_email": "archiver@p.iam.gserviceaccount.com",
            "client_id": "1234", "token_uri": "https://oauth2.googleapis.com/token"
        })
        .to_string();
        let Credential::ServiceAccount(sa) = Credential::from_keys(
            Provider::Google,
            keys(&[("serviceAccount.json", json.as_bytes())]),
        )
        .unwrap() else {
            panic!("not a service account")
        };
        assert_eq!(sa.client_email, "archiver@p.iam.gserviceaccount.com");
        assert_eq!(sa.private_key_id.as_deref(), Some("abc"));

        let user_key = serde_json::json!({"type": "authorized_user", "client_id": "x"}).to_string();
        let e = Credential::from_keys(
            Provider::Google,
            keys(&[("serviceAccount.json", user_key.as_bytes())]),
        )
        .unwrap_err();
        assert!(e.contains("not a service account key"), "{e}");
        let e = Credential::from_keys(
            Provider::Google,
            keys(&[("serviceAccount.json", b"{\"private_key\": \"-----BEGIN")]),
        )
        .unwrap_err();
        assert!(e.contains("not valid JSON") && !e.contains("BEGIN"), "{e}");
        let e =
            Credential::from_keys(Provider::Google, keys(&[("clientSecret", b"x")])).unwrap_err();
        assert!(e.contains("serviceAccount.json"), "{e}");
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let now = Instant::now();
        let token = |lifetime: u64, left: u64| AccessToken {
            token: Sensitive::new("t"),
            expires_at: now + Duration::from_secs(left),
            lifetime: Duration::from_secs(lifetime),
        };
        assert!(token(3600, 3600).fresh(now));
        assert!(token(3600, 301).fresh(now));
        assert!(!token(3600, 300).fresh(now));
        assert!(token(4, 3).fresh(now));
        assert!(!token(4, 2).fresh(now));
        assert!(!token(4, 0).fresh(now));
    }
}
