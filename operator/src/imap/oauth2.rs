//! Logging in with an OAuth2 access token: SASL `OAUTHBEARER` (RFC 7628) or `XOAUTH2`
//! (Google's and Microsoft's older mechanism), whichever the server offers, the standard
//! one first.
//!
//! The token is fetched right before each login, so a login late in a long run gets a
//! renewed one. A token is a password for every mailbox the app may open: it is only ever
//! sent over TLS (the caller refuses plain connections before connecting).

use std::time::Duration;

use async_imap::imap_proto::{Capability, Response};
use async_imap::types::UnsolicitedResponse;

use super::stream::ImapStream;
use super::{login_failure, within, ImapError, Result, ServerConfig};
use crate::oauth2::ImapTokens;
use crate::sensitive::Sensitive;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mechanism {
    OAuthBearer,
    XOAuth2,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }
}

/// Logs `client` in as `user` (the mailbox address) with a token from `tokens`.
pub(super) async fn login(
    mut client: async_imap::Client<ImapStream>,
    user: &str,
    tokens: &ImapTokens,
    server: &ServerConfig,
    who: &str,
) -> Result<async_imap::Session<ImapStream>> {
    let offered = capabilities(&mut client, server.timeout).await?;
    let mechanism = [Mechanism::OAuthBearer, Mechanism::XOAuth2]
        .into_iter()
        .find(|m| offered.iter().any(|o| o == m.name()))
        .ok_or_else(|| ImapError::OAuth2 {
            who: who.to_string(),
            message: format!(
                "the server offers neither SASL OAUTHBEARER nor XOAUTH2 (it offers {})",
                if offered.is_empty() {
                    "no SASL mechanism".to_string()
                } else {
                    offered.join(", ")
                }
            ),
            permanent: true,
        })?;
    let token = tokens
        .token_for(user)
        .await
        .map_err(|e| ImapError::OAuth2 {
            who: who.to_string(),
            permanent: e.is_permanent(),
            message: e.to_string(),
        })?;
    let mut authenticator = TokenAuthenticator {
        mechanism,
        user,
        host: &server.host,
        port: server.port,
        token: &token.token,
        sent: false,
        server_error: None,
    };
    let outcome = within(
        server.timeout,
        "logging in",
        client.authenticate(mechanism.name(), &mut authenticator),
    )
    .await?;
    outcome.map_err(|(e, _)| {
        let mut message = login_failure(&e);
        if let Some(status) = authenticator.server_error.as_deref().and_then(error_status) {
            message.push_str(&format!(" ({} status {status})", mechanism.name()));
        }
        ImapError::Login {
            who: who.to_string(),
            message: format!("{message}; {}", tokens.rejected_login_hint()),
        }
    })
}

/// The SASL mechanisms (`AUTH=` capabilities) the server offers now, upper case. Asked
/// after TLS is up: what a server says before STARTTLS may differ and cannot be trusted.
async fn capabilities(
    client: &mut async_imap::Client<ImapStream>,
    timeout: Duration,
) -> Result<Vec<String>> {
    let during = "asking for capabilities";
    let (sender, receiver) = async_channel::unbounded();
    within(
        timeout,
        during,
        client.run_command_and_check_ok("CAPABILITY", Some(sender)),
    )
    .await?
    .map_err(|e| super::command_error(during, e))?;
    let mut mechanisms = Vec::new();
    while let Ok(response) = receiver.try_recv() {
        if let UnsolicitedResponse::Other(data) = response {
            if let Response::Capabilities(capabilities) = data.parsed() {
                for capability in capabilities {
                    if let Capability::Auth(name) = capability {
                        mechanisms.push(name.to_ascii_uppercase());
                    }
                }
            }
        }
    }
    Ok(mechanisms)
}

/// Answers the server's challenges: the initial response with the token first; then, if
/// the server sends its error details as a challenge (both mechanisms do), the empty
/// (XOAUTH2) or `%x01` (OAUTHBEARER) response that lets it finish with NO.
struct TokenAuthenticator<'a> {
    mechanism: Mechanism,
    user: &'a str,
    host: &'a str,
    port: u16,
    token: &'a Sensitive,
    sent: bool,
    /// The server's error challenge (JSON), kept for the message.
    server_error: Option<String>,
}

impl async_imap::Authenticator for &mut TokenAuthenticator<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        if self.sent {
            self.server_error = Some(String::from_utf8_lossy(challenge).into_owned());
            return match self.mechanism {
                Mechanism::OAuthBearer => vec![0x01],
                Mechanism::XOAuth2 => Vec::new(),
            };
        }
        self.sent = true;
        initial_response(self.mechanism, self.user, self.host, self.port, self.token)
    }
}

fn initial_response(
    mechanism: Mechanism,
    user: &str,
    host: &str,
    port: u16,
    token: &Sensitive,
) -> Vec<u8> {
    let token = token.expose();
    match mechanism {
        // user=<address>^Aauth=Bearer <token>^A^A
        Mechanism::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
        // RFC 7628 section 3.1: a GS2 header naming the user (',' and '=' escaped as in
        // RFC 5801), then key=value pairs separated by ^A.
        Mechanism::OAuthBearer => format!(
            "n,a={},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01",
            user.replace('=', "=3D").replace(',', "=2C")
        ),
    }
    .into_bytes()
}

/// The `status` of a server's JSON error challenge (RFC 7628 section 3.2.2), e.g. `401` or
/// `invalid_token`: short, and never anything we sent.
fn error_status(json: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    let status = value.get("status")?.as_str()?;
    let safe = status.len() <= 40
        && status
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    safe.then(|| status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_responses_follow_the_specifications() {
        let token = Sensitive::new("ya29.tok");
        assert_eq!(
            initial_response(
                Mechanism::XOAuth2,
                "a@example.org",
                "imap.example.org",
                993,
                &token
            ),
            b"user=a@example.org\x01auth=Bearer ya29.tok\x01\x01"
        );
        assert_eq!(
            initial_response(
                Mechanism::OAuthBearer,
                "a,b=c@example.org",
                "h",
                993,
                &token
            ),
            b"n,a=a=2Cb=3Dc@example.org,\x01host=h\x01port=993\x01auth=Bearer ya29.tok\x01\x01"
        );
    }

    #[test]
    fn error_challenges_answered_so_the_server_can_finish() {
        let token = Sensitive::new("t");
        for (mechanism, reply) in [
            (Mechanism::XOAuth2, &b""[..]),
            (Mechanism::OAuthBearer, &[1u8][..]),
        ] {
            let mut auth = TokenAuthenticator {
                mechanism,
                user: "u",
                host: "h",
                port: 1,
                token: &token,
                sent: false,
                server_error: None,
            };
            let mut auth = &mut auth;
            use async_imap::Authenticator;
            assert!(!auth.process(b"").is_empty());
            assert_eq!(
                auth.process(br#"{"status":"401","schemes":"bearer"}"#),
                reply
            );
            assert_eq!(
                error_status(auth.server_error.as_deref().unwrap()).as_deref(),
                Some("401")
            );
        }
        assert_eq!(error_status(r#"{"status":"x y <script>"}"#), None);
        assert_eq!(error_status("not json"), None);
    }
}
