//! OAuth2 sets (`MailboxSet.spec.oauth2`): the app's token client, built from the keys of
//! its credentials Secret (read from the bundle by `mailvault run` and the operator, from
//! the mounted files by a worker), the directory it reads, and the check before a run that
//! the app gets a token at all.

use std::sync::Arc;
use std::time::Duration;

use super::directory::{DirectoryError, DirectoryUser};
use super::{google, graph, Mailbox};
use crate::oauth2::http::HttpClient;
use crate::oauth2::{ClientSettings, Credential, Provider, TokenError, Tokens};
use crate::resources::{OAuth2DirectorySpec, OAuth2Provider, OAuth2Spec};

/// Limit for each request to a token endpoint or directory API.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An OAuth2 set's client: its tokens, and the HTTP client for its directory.
pub struct Client {
    pub tokens: Arc<Tokens>,
    pub http: HttpClient,
}

/// The client of `spec`, trusting `ca_pem` (from `caSecretRef`) besides the system's
/// authorities; `get` returns a key of the credentials Secret. The error names the Secret,
/// key or setting at fault, never a value.
pub fn client(
    spec: &OAuth2Spec,
    ca_pem: Option<&[u8]>,
    get: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Client, String> {
    let provider = match spec.provider {
        OAuth2Provider::Microsoft365 => Provider::Microsoft365,
        OAuth2Provider::Google => Provider::Google,
        OAuth2Provider::Generic => Provider::Generic,
    };
    let credential = Credential::from_keys(provider, get).map_err(|e| {
        let secret = &spec.credentials_secret_ref.name;
        format!("the credentials Secret {secret} {e}")
    })?;
    let http = HttpClient::new(ca_pem, HTTP_TIMEOUT).map_err(|e| match &spec.ca_secret_ref {
        Some(r) => format!("caSecretRef: Secret {} key {:?}: {e}", r.name, r.key),
        None => e,
    })?;
    let settings = ClientSettings {
        tenant_id: spec.tenant_id.clone(),
        client_id: spec.client_id.clone(),
        token_url: spec.token_url.clone(),
        scopes: spec.scopes.clone(),
    };
    let tokens =
        Tokens::new(provider, &settings, credential, http.clone()).map_err(|e| e.to_string())?;
    Ok(Client {
        tokens: Arc::new(tokens),
        http,
    })
}

/// The users of the set's cloud directory (Microsoft Graph or the Google Directory API;
/// an LDAP directory is read like a master-password set's).
pub async fn fetch_users(
    directory: &OAuth2DirectorySpec,
    client: &Client,
) -> Result<Vec<DirectoryUser>, DirectoryError> {
    if let Some(spec) = &directory.microsoft_graph {
        return graph::fetch_users(spec, &client.tokens, &client.http).await;
    }
    if let Some(spec) = &directory.google_directory {
        return google::fetch_users(spec, &client.tokens, &client.http).await;
    }
    Err(DirectoryError::InvalidSpec(vec![(
        "directory".into(),
        "set exactly one of microsoftGraph, googleDirectory or ldap".into(),
    )]))
}

/// Asks for the first OAuth2 mailbox's token before a run: a refusal that no mailbox
/// would get past (a wrong secret, no admin consent, no delegation) fails the run once,
/// with the provider's words, instead of every mailbox with the same message. Other
/// refusals (one user unknown) are left to that mailbox.
pub async fn preflight(mailboxes: &[Mailbox]) -> Result<(), PreflightError> {
    let Some((mailbox, tokens)) = mailboxes
        .iter()
        .find_map(|m| m.oauth2.as_ref().map(|t| (m, t)))
    else {
        return Ok(());
    };
    match tokens.token_for(&mailbox.login).await {
        Err(e) if e.affects_every_mailbox() => Err(PreflightError(e)),
        _ => Ok(()),
    }
}

/// A token refusal that every mailbox of the run would meet.
#[derive(Debug, thiserror::Error)]
#[error("no OAuth2 token for any mailbox: {0}")]
pub struct PreflightError(pub TokenError);
