//! Users from Microsoft Graph (`MailboxSet.spec.oauth2.directory.microsoftGraph`): every
//! user of the tenant (`GET /v1.0/users`), or the members of a group at any depth of nesting
//! (`GET /v1.0/groups/{id}/transitiveMembers`), page by page along `@odata.nextLink`.
//!
//! Disabled accounts and guests are left out (a guest's address is another organisation's
//! mailbox). Users without a mailbox address are returned without one, so that they are
//! counted, and never archived. `proxyAddresses` give the aliases: `SMTP:` is the primary
//! address, `smtp:` the others, as in Active Directory.
//!
//! As with LDAP, a partial list is worse than none: any failed page fails the whole fetch,
//! and a page whose users lack their names (an app that may list group members but not read
//! users gets only IDs) is an error, not a list of nobody.

use serde::Deserialize;
use url::Url;

use super::directory::{
    ad_addresses, api_endpoint, sort_and_dedupe, DirectoryError, DirectoryUser,
};
use crate::oauth2::http::{self, HttpClient};
use crate::oauth2::Tokens;
use crate::resources::{validate_microsoft_graph, MicrosoftGraphSpec, GRAPH_ENDPOINT};

const SERVICE: &str = "Microsoft Graph";
const SELECT: &str = "id,userPrincipalName,mail,accountEnabled,userType,proxyAddresses";
/// Graph's largest page for users.
const PAGE_SIZE: u32 = 999;
/// A bound on pages (ten million users), so that a server sending links forever ends.
const MAX_PAGES: usize = 10_000;

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<GraphObject>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphObject {
    #[serde(rename = "@odata.type")]
    odata_type: Option<String>,
    id: Option<String>,
    user_principal_name: Option<String>,
    mail: Option<String>,
    account_enabled: Option<bool>,
    user_type: Option<String>,
    #[serde(default)]
    proxy_addresses: Vec<String>,
}

/// Reads the users, sorted by name and unique regardless of case. `tokens` is the set's
/// Microsoft 365 client: the token asked for is Graph's (`<endpoint>/.default`), not IMAP's.
pub async fn fetch_users(
    settings: &MicrosoftGraphSpec,
    tokens: &Tokens,
    client: &HttpClient,
) -> Result<Vec<DirectoryUser>, DirectoryError> {
    let fail = |message: String| DirectoryError::Api {
        service: SERVICE,
        message,
    };
    let endpoint = api_endpoint(
        SERVICE,
        validate_microsoft_graph(settings),
        settings.endpoint.as_deref(),
        GRAPH_ENDPOINT,
    )?;
    let origin = endpoint.origin().ascii_serialization();
    let scopes = vec![format!("{origin}/.default")];
    let base = endpoint.as_str().trim_end_matches('/');
    let path = match &settings.group_id {
        None => "/v1.0/users".to_string(),
        Some(id) => format!("/v1.0/groups/{id}/transitiveMembers"),
    };
    let mut url = Url::parse(&format!("{base}{path}")).map_err(|e| fail(e.to_string()))?;
    url.query_pairs_mut()
        .append_pair("$select", SELECT)
        .append_pair("$top", &PAGE_SIZE.to_string());

    let mut users = Vec::new();
    let (mut disabled, mut guests) = (0usize, 0usize);
    let mut pages = 0;
    loop {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(fail(format!("more than {MAX_PAGES} pages; giving up")));
        }
        let response = tokens
            .authorized_get(client, &url, &scopes, None)
            .await
            .map_err(fail)?;
        if !response.status.is_success() {
            return Err(fail(graph_failure(
                response.status.as_u16(),
                &response.body,
                settings.group_id.as_deref(),
            )));
        }
        let page: Page = serde_json::from_slice(&response.body)
            .map_err(|e| fail(format!("{}: not a page of users ({e})", http::shown(&url))))?;
        for object in page.value {
            if object
                .odata_type
                .as_deref()
                .is_some_and(|t| t != "#microsoft.graph.user")
            {
                continue; // a nested group, a device or a contact
            }
            let Some(name) = object
                .user_principal_name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
            else {
                return Err(fail(
                    "users came back without userPrincipalName: the app may list group \
                     members but not read users; grant it the application permission \
                     User.Read.All with admin consent"
                        .into(),
                ));
            };
            if object.account_enabled == Some(false) {
                disabled += 1;
                continue;
            }
            if object
                .user_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("guest"))
            {
                guests += 1;
                continue;
            }
            let mail: Vec<String> = object.mail.into_iter().collect();
            users.push(DirectoryUser {
                name: name.to_string(),
                emails: ad_addresses(&mail, &object.proxy_addresses),
                dn: object.id.unwrap_or_default(),
            });
        }
        let Some(next) = page.next_link else { break };
        let next =
            Url::parse(&next).map_err(|e| fail(format!("@odata.nextLink is not a URL: {e}")))?;
        // The token goes wherever the link points: only to the endpoint the set names.
        if next.origin() != endpoint.origin() {
            return Err(fail(format!(
                "refusing to follow @odata.nextLink to {}: not the endpoint {origin}",
                next.origin().ascii_serialization()
            )));
        }
        if next == url {
            return Err(fail("@odata.nextLink points at the same page again".into()));
        }
        url = next;
    }
    tracing::info!(
        users = users.len(),
        disabled,
        guests,
        pages,
        "read users from Microsoft Graph"
    );
    Ok(sort_and_dedupe(users))
}

/// A failed Graph request in plain words, with Graph's code kept.
fn graph_failure(status: u16, body: &[u8], group: Option<&str>) -> String {
    #[derive(Deserialize)]
    struct Answer {
        error: Error,
    }
    #[derive(Deserialize)]
    struct Error {
        code: String,
        message: Option<String>,
    }
    let Ok(Answer { error }) = serde_json::from_slice::<Answer>(body) else {
        return format!("HTTP {status} without an error description");
    };
    let what = format!(
        "{} ({})",
        crate::oauth2::clean_server_text(error.message.as_deref().unwrap_or("")),
        error.code
    );
    let hint = match (status, error.code.as_str()) {
        (403, _) => Some(if group.is_some() {
            "grant the app the Microsoft Graph application permissions User.Read.All and \
             GroupMember.Read.All, with admin consent"
        } else {
            "grant the app the Microsoft Graph application permission User.Read.All, with \
             admin consent"
        }),
        (401, _) => Some("the token was refused"),
        (404, _) if group.is_some() => Some("check groupID: no such group in the tenant"),
        _ => None,
    };
    match hint {
        Some(hint) => format!("HTTP {status}: {what}; {hint}"),
        None => format!("HTTP {status}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_graph_codes_and_say_what_to_do() {
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation.","innerError":{"date":"x"}}}"#;
        let m = graph_failure(403, body, None);
        assert!(
            m.contains("Authorization_RequestDenied") && m.contains("User.Read.All"),
            "{m}"
        );
        let m = graph_failure(403, body, Some("g"));
        assert!(m.contains("GroupMember.Read.All"), "{m}");
        assert_eq!(
            graph_failure(502, b"<html>", None),
            "HTTP 502 without an error description"
        );
    }
}
