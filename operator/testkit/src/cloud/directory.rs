//! The fake directories and the introspection endpoint.
//!
//! Microsoft Graph v1.0, "List users" and "List group transitive members": bearer token
//! of an app with `User.Read.All` (groups: also `GroupMember.Read.All`, else members come
//! with limited information: `@odata.type` and `id` only), `$select` (only the selected
//! properties are returned; without it the default set, which lacks `accountEnabled`,
//! `userType` and `proxyAddresses`), `$top` from 1 to 999 (default 100), `@odata.nextLink`
//! with an opaque `$skiptoken`; errors `{"error": {code, message, innerError: {date,
//! request-id, client-request-id}}}`: 401 `InvalidAuthenticationToken`, 403
//! `Authorization_RequestDenied`, 404 `Request_ResourceNotFound`, 400 `Request_BadRequest`.
//!
//! Admin SDK Directory API, "users.list": bearer token of a service account acting for an
//! administrator, with `admin.directory.user.readonly` (or `admin.directory.user`);
//! `customer` (`my_customer`) or `domain`, `maxResults` 1 to 500 (default 100),
//! `pageToken`; answer `{kind: admin#directory#users, etag, users (absent when none),
//! nextPageToken (absent on the last page)}`; errors `{"error": {code, message, errors:
//! [{message, domain, reason}], status}}`.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};

use super::token::unix_expiry;
use super::{app_principal, json, user_principal, Call, Issued, Principal, State, User};
use super::{EXCHANGE, GOOGLE_DIRECTORY_SCOPE, GOOGLE_IMAP_SCOPE, GRAPH};

type Answer = Response<Full<Bytes>>;

const GRAPH_USER_PROPERTIES: [&str; 9] = [
    "id",
    "userPrincipalName",
    "mail",
    "accountEnabled",
    "userType",
    "proxyAddresses",
    "displayName",
    "givenName",
    "surname",
];
/// What Graph returns for a user without `$select` (a subset of its documented default set).
const GRAPH_DEFAULT_PROPERTIES: [&str; 6] = [
    "id",
    "userPrincipalName",
    "mail",
    "displayName",
    "givenName",
    "surname",
];

/// `POST /introspect`: whether a token opens mailboxes, and as whom.
pub(super) fn introspect(state: &mut State, call: &Call) -> Answer {
    state.introspections += 1;
    let inactive = json(StatusCode::OK, json!({"active": false}));
    let token = call.field("token").unwrap_or_default();
    let Some(issued) = state.principal_of(token).cloned() else {
        if state.issued.iter().any(|i| i.token == token) {
            state.expired_introspections += 1;
        }
        return inactive;
    };
    let principal = match &issued.principal {
        Principal::App { tenant, client_id } => {
            let app = state
                .tenants
                .iter()
                .filter(|t| t.id == *tenant)
                .flat_map(|t| &t.apps)
                .find(|a| a.client_id == *client_id);
            let usable = issued
                .scopes
                .iter()
                .any(|s| s == &format!("{EXCHANGE}/.default"))
                && issued.roles.iter().any(|r| r == "IMAP.AccessAsApp")
                && app.is_some_and(|a| a.exchange_service_principal && !a.disabled);
            usable.then(|| app_principal(client_id))
        }
        Principal::Delegated {
            user: Some(user), ..
        } => issued
            .scopes
            .iter()
            .any(|s| s == GOOGLE_IMAP_SCOPE)
            .then(|| user_principal(user)),
        Principal::Delegated { user: None, .. } => None,
        Principal::Generic { client_id } => state
            .generic_clients
            .iter()
            .find(|c| c.client_id == *client_id)
            .filter(|c| issued.scopes.contains(&c.imap_scope))
            .map(|_| app_principal(client_id)),
    };
    match principal {
        None => inactive,
        Some(principal) => json(
            StatusCode::OK,
            json!({
                "active": true,
                "mailvault_principal": principal,
                "scope": issued.scopes.join(" "),
                "exp": unix_expiry(issued.expires),
            }),
        ),
    }
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Answer {
    json(
        status,
        json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": uuid::Uuid::new_v4().to_string(),
                "client-request-id": uuid::Uuid::new_v4().to_string(),
            }
        }}),
    )
}

/// The token of a request, or the error answer a bad one gets.
fn graph_token<'s>(state: &'s State, call: &Call) -> Result<&'s Issued, Box<Answer>> {
    let unauthorized = |m: &str| {
        Box::new(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            m,
        ))
    };
    let token = call
        .bearer()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("Access token is empty."))?;
    if let Some(known) = state.issued.iter().find(|i| i.token == token) {
        if known.expires <= std::time::Instant::now() {
            return Err(unauthorized(
                "Lifetime validation failed, the token is expired.",
            ));
        }
    }
    let issued = state
        .principal_of(token)
        .ok_or_else(|| unauthorized("Invalid token"))?;
    let graph_audience = issued.scopes.iter().any(|s| {
        let resource = s.trim_end_matches("/.default");
        resource == GRAPH || state.own_origins.iter().any(|o| o == resource)
    });
    if !matches!(issued.principal, Principal::App { .. }) || !graph_audience {
        return Err(unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    Ok(issued)
}

/// `GET /v1.0/users`, or `GET /v1.0/groups/{id}/transitiveMembers` with `group`.
pub(super) fn graph_users(state: &State, call: &Call, group: Option<&str>) -> Answer {
    let issued = match graph_token(state, call) {
        Ok(issued) => issued,
        Err(answer) => return *answer,
    };
    let has = |roles: &[&str]| issued.roles.iter().any(|r| roles.contains(&r.as_str()));
    let read_users = has(&["User.Read.All", "User.ReadWrite.All", "Directory.Read.All"]);
    let denied = || {
        graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    };
    let top = match call.param("$top").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=999).contains(&n) => n,
        Some(_) => {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                &format!(
                    "Invalid page size specified: '{}'. Must be between 1 and 999 inclusive.",
                    call.param("$top").unwrap_or("")
                ),
            )
        }
    };
    let top = state.page_limit.map_or(top, |limit| top.min(limit));
    let select: Vec<String> = match call.param("$select") {
        None => GRAPH_DEFAULT_PROPERTIES
            .iter()
            .map(|p| p.to_string())
            .collect(),
        Some(list) => list.split(',').map(|p| p.trim().to_string()).collect(),
    };
    if let Some(unknown) = select
        .iter()
        .find(|p| !GRAPH_USER_PROPERTIES.contains(&p.as_str()))
    {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            &format!("Could not find a property named '{unknown}' on type 'microsoft.graph.user'."),
        );
    }
    // Users (and, for a group, the nested groups themselves, as Graph lists them).
    let objects: Vec<Value> = match group {
        None => {
            if !read_users {
                return denied();
            }
            state
                .users
                .iter()
                .map(|u| graph_user(u, &select, None))
                .collect()
        }
        Some(id) => {
            if !has(&[
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
            ]) {
                return denied();
            }
            if !state.groups.iter().any(|g| g.id == id) {
                return graph_error(
                    StatusCode::NOT_FOUND,
                    "Request_ResourceNotFound",
                    &format!(
                        "Resource '{id}' does not exist or one of its queried reference-property \
                         objects are not present."
                    ),
                );
            }
            transitive_members(state, id)
                .into_iter()
                .map(|member| match state.users.iter().find(|u| u.id == member) {
                    Some(user) if read_users => {
                        graph_user(user, &select, Some("#microsoft.graph.user"))
                    }
                    // Limited information: the app may read memberships but not users.
                    Some(user) => json!({"@odata.type": "#microsoft.graph.user", "id": user.id}),
                    None => json!({"@odata.type": "#microsoft.graph.group", "id": member}),
                })
                .collect()
        }
    };
    let offset = match call.param("$skiptoken") {
        None => 0,
        Some(token) => match token
            .strip_prefix("RFNwdAIAAQAAA")
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        {
            Some(offset) => offset,
            None => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "Request_BadRequest",
                    "Invalid paging token.",
                )
            }
        },
    };
    let page: Vec<Value> = objects.iter().skip(offset).take(top).cloned().collect();
    let mut answer = Map::new();
    answer.insert(
        "@odata.context".into(),
        format!(
            "https://graph.microsoft.com/v1.0/$metadata#{}",
            if group.is_some() {
                "directoryObjects".to_string()
            } else {
                format!("users({})", select.join(","))
            }
        )
        .into(),
    );
    if offset + top < objects.len() {
        let origin = state.next_link_origin.as_deref().unwrap_or(&call.origin);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &call.query {
            if name != "$skiptoken" {
                query.append_pair(name, value);
            }
        }
        query.append_pair("$skiptoken", &format!("RFNwdAIAAQAAA{:x}", offset + top));
        answer.insert(
            "@odata.nextLink".into(),
            format!("{origin}{}?{}", call.path, query.finish()).into(),
        );
    }
    answer.insert("value".into(), page.into());
    json(StatusCode::OK, Value::Object(answer))
}

fn graph_user(user: &User, select: &[String], odata_type: Option<&str>) -> Value {
    let mut object = Map::new();
    if let Some(t) = odata_type {
        object.insert("@odata.type".into(), t.into());
    }
    for property in select {
        let value = match property.as_str() {
            "id" => json!(user.id),
            "userPrincipalName" => json!(user.name),
            "mail" => json!(user.mail),
            "accountEnabled" => json!(user.account_enabled),
            "userType" => json!(user.user_type),
            "proxyAddresses" => json!(user.proxy_addresses),
            "displayName" => json!(user.name.split('@').next()),
            _ => Value::Null,
        };
        object.insert(property.clone(), value);
    }
    Value::Object(object)
}

/// Members of a group and of every group nested in it, each once, nested groups included.
fn transitive_members(state: &State, group: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut queue = vec![group.to_string()];
    while let Some(id) = queue.pop() {
        for member in state
            .groups
            .iter()
            .filter(|g| g.id == id)
            .flat_map(|g| &g.members)
        {
            if *member != group && !seen.contains(member) {
                seen.push(member.clone());
                queue.push(member.clone());
            }
        }
    }
    seen
}

fn google_error(status: StatusCode, message: &str, reason: &str, extra: Option<&str>) -> Answer {
    let mut error = json!({
        "code": status.as_u16(),
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
    });
    if let Some(s) = extra {
        error["status"] = s.into();
    }
    json(status, json!({ "error": error }))
}

/// `GET /admin/directory/v1/users`.
pub(super) fn google_users(state: &State, call: &Call) -> Answer {
    let issued = call.bearer().and_then(|t| state.principal_of(t));
    let Some(issued) = issued else {
        let mut answer = google_error(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential. See \
             https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "authError",
            Some("UNAUTHENTICATED"),
        );
        answer.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
        );
        return answer;
    };
    let scoped = issued.scopes.iter().any(|s| {
        s == GOOGLE_DIRECTORY_SCOPE || s == "https://www.googleapis.com/auth/admin.directory.user"
    });
    if !scoped {
        return google_error(
            StatusCode::FORBIDDEN,
            "Request had insufficient authentication scopes.",
            "insufficientPermissions",
            Some("PERMISSION_DENIED"),
        );
    }
    let admin = match &issued.principal {
        Principal::Delegated {
            user: Some(user), ..
        } => state
            .users
            .iter()
            .any(|u| u.name.eq_ignore_ascii_case(user) && u.is_admin),
        _ => false,
    };
    if !admin {
        return google_error(
            StatusCode::FORBIDDEN,
            "Not Authorized to access this resource/api",
            "forbidden",
            None,
        );
    }
    let domain = call.param("domain");
    let customer = call.param("customer");
    if domain.is_none() && customer.is_none() {
        return google_error(StatusCode::BAD_REQUEST, "Bad Request", "badRequest", None);
    }
    if customer.is_some_and(|c| c != "my_customer" && c != "C03az79cb") {
        return google_error(StatusCode::BAD_REQUEST, "Bad Request", "badRequest", None);
    }
    let max = match call.param("maxResults").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "Invalid value for: maxResults",
                "invalid",
                None,
            )
        }
    };
    let max = state.page_limit.map_or(max, |limit| max.min(limit));
    let users: Vec<&User> = state
        .users
        .iter()
        .filter(|u| {
            domain.is_none_or(|d| {
                u.name
                    .rsplit_once('@')
                    .is_some_and(|(_, ud)| ud.eq_ignore_ascii_case(d))
            })
        })
        .collect();
    let offset = match call.param("pageToken") {
        None => 0,
        Some(token) => match token.strip_prefix("Q0FFU0").and_then(|n| n.parse().ok()) {
            Some(offset) => offset,
            None => return google_error(StatusCode::BAD_REQUEST, "Invalid Input", "invalid", None),
        },
    };
    let page: Vec<Value> = users
        .iter()
        .skip(offset)
        .take(max)
        .map(|u| google_user(u))
        .collect();
    let mut answer = json!({
        "kind": "admin#directory#users",
        "etag": format!("\"{}\"", super::random_hex(8)),
    });
    if !page.is_empty() {
        answer["users"] = page.into();
    }
    if offset + max < users.len() {
        answer["nextPageToken"] = format!("Q0FFU0{}", offset + max).into();
    }
    json(StatusCode::OK, answer)
}

fn google_user(user: &User) -> Value {
    let local = user.name.split('@').next().unwrap_or("");
    let mut object = json!({
        "kind": "admin#directory#user",
        "id": user.id,
        "etag": format!("\"{}\"", user.id),
        "primaryEmail": user.name,
        "name": {"givenName": local, "familyName": "Test", "fullName": format!("{local} Test")},
        "isAdmin": user.is_admin,
        "isDelegatedAdmin": false,
        "lastLoginTime": "1970-01-01T00:00:00.000Z",
        "creationTime": "2020-01-01T00:00:00.000Z",
        "agreedToTerms": true,
        "suspended": user.suspended,
        "archived": user.archived,
        "changePasswordAtNextLogin": false,
        "ipWhitelisted": false,
        "emails": [{"address": user.name, "primary": true}],
        "customerId": "C03az79cb",
        "orgUnitPath": "/",
        "isMailboxSetup": true,
        "includeInGlobalAddressList": true,
    });
    if !user.aliases.is_empty() {
        object["aliases"] = json!(user.aliases);
    }
    if !user.non_editable_aliases.is_empty() {
        object["nonEditableAliases"] = json!(user.non_editable_aliases);
    }
    object
}
