//! Users from the Google Workspace Admin SDK Directory API
//! (`MailboxSet.spec.oauth2.directory.googleDirectory`): `users.list` of the customer, page
//! by page along `nextPageToken`. The service account acts for an administrator
//! (`adminEmail`): the Directory API answers only administrators, and domain-wide delegation
//! must include `https://www.googleapis.com/auth/admin.directory.user.readonly`.
//!
//! Suspended users are left out; aliases (also those of domain aliases, Google's
//! `nonEditableAliases`) count as the user's addresses. Any failed page fails the fetch.

use serde::Deserialize;
use url::Url;

use super::directory::{
    api_endpoint, sort_and_dedupe, unique_addresses, DirectoryError, DirectoryUser,
};
use crate::oauth2::http::{self, HttpClient};
use crate::oauth2::{Tokens, GOOGLE_DIRECTORY_SCOPE};
use crate::resources::{validate_google_directory, GoogleDirectorySpec, GOOGLE_DIRECTORY_ENDPOINT};

/// All users of the account the administrator belongs to.
pub const DEFAULT_CUSTOMER: &str = "my_customer";
const SERVICE: &str = "Google Directory API";
/// The API's largest page.
const PAGE_SIZE: u32 = 500;
const MAX_PAGES: usize = 20_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    users: Vec<GoogleUser>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoogleUser {
    id: Option<String>,
    primary_email: Option<String>,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    non_editable_aliases: Vec<String>,
}

/// Reads the users, sorted by name (the primary address) and unique regardless of case.
pub async fn fetch_users(
    settings: &GoogleDirectorySpec,
    tokens: &Tokens,
    client: &HttpClient,
) -> Result<Vec<DirectoryUser>, DirectoryError> {
    let fail = |message: String| DirectoryError::Api {
        service: SERVICE,
        message,
    };
    let endpoint = api_endpoint(
        SERVICE,
        validate_google_directory(settings),
        settings.endpoint.as_deref(),
        GOOGLE_DIRECTORY_ENDPOINT,
    )?;
    let admin = settings.admin_email.trim();
    let scopes = vec![GOOGLE_DIRECTORY_SCOPE.to_string()];
    let base = endpoint.as_str().trim_end_matches('/');
    let first =
        Url::parse(&format!("{base}/admin/directory/v1/users")).map_err(|e| fail(e.to_string()))?;
    let mut users = Vec::new();
    let mut suspended = 0usize;
    let mut page_token: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(fail(format!("more than {MAX_PAGES} pages; giving up")));
        }
        let mut url = first.clone();
        url.query_pairs_mut()
            .append_pair(
                "customer",
                settings.customer.as_deref().unwrap_or(DEFAULT_CUSTOMER),
            )
            .append_pair("maxResults", &PAGE_SIZE.to_string())
            .append_pair("projection", "basic");
        if let Some(token) = &page_token {
            url.query_pairs_mut().append_pair("pageToken", token);
        }
        let response = tokens
            .authorized_get(client, &url, &scopes, Some(admin))
            .await
            .map_err(fail)?;
        if !response.status.is_success() {
            return Err(fail(google_failure(
                response.status.as_u16(),
                &response.body,
                admin,
            )));
        }
        let page: Page = serde_json::from_slice(&response.body)
            .map_err(|e| fail(format!("{}: not a page of users ({e})", http::shown(&url))))?;
        for user in page.users {
            let Some(primary) = user
                .primary_email
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
            else {
                return Err(fail("a user came back without primaryEmail".into()));
            };
            if user.suspended {
                suspended += 1;
                continue;
            }
            let emails = unique_addresses(
                std::iter::once(primary)
                    .chain(user.aliases.iter().map(String::as_str))
                    .chain(user.non_editable_aliases.iter().map(String::as_str)),
            );
            users.push(DirectoryUser {
                name: primary.to_string(),
                emails,
                dn: user.id.unwrap_or_default(),
            });
        }
        match page.next_page_token.filter(|t| !t.is_empty()) {
            None => break,
            Some(next) if page_token.as_deref() == Some(next.as_str()) => {
                return Err(fail("nextPageToken repeats the same page".into()));
            }
            next => page_token = next,
        }
    }
    tracing::info!(
        users = users.len(),
        suspended,
        pages,
        "read users from the Google Directory API"
    );
    Ok(sort_and_dedupe(users))
}

/// A failed Directory API request in plain words, with Google's reason kept.
fn google_failure(status: u16, body: &[u8], admin: &str) -> String {
    #[derive(Deserialize)]
    struct Answer {
        error: Error,
    }
    #[derive(Deserialize)]
    struct Error {
        message: Option<String>,
        #[serde(default)]
        errors: Vec<Detail>,
    }
    #[derive(Deserialize)]
    struct Detail {
        reason: Option<String>,
    }
    let Ok(Answer { error }) = serde_json::from_slice::<Answer>(body) else {
        return format!("HTTP {status} without an error description");
    };
    let reason = error
        .errors
        .first()
        .and_then(|d| d.reason.clone())
        .unwrap_or_default();
    let what = format!(
        "{} ({reason})",
        crate::oauth2::clean_server_text(error.message.as_deref().unwrap_or(""))
    );
    let hint = match (status, reason.as_str()) {
        (403, "insufficientPermissions") => format!(
            "; add {GOOGLE_DIRECTORY_SCOPE} to the service account's domain-wide delegation"
        ),
        (403, _) => format!(
            "; is {admin} (adminEmail) a Google Workspace administrator who may read users?"
        ),
        (401, _) => "; the token was refused".to_string(),
        (400, _) => "; check googleDirectory.customer".to_string(),
        _ => String::new(),
    };
    format!("HTTP {status}: {what}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_what_to_do() {
        let body = br#"{"error":{"code":403,"message":"Not Authorized to access this resource/api","errors":[{"message":"Not Authorized to access this resource/api","domain":"global","reason":"forbidden"}]}}"#;
        let m = google_failure(403, body, "boss@example.org");
        assert!(
            m.contains("forbidden") && m.contains("boss@example.org"),
            "{m}"
        );
    }
}
