//! Users from an LDAP directory or Active Directory
//! (`MailboxSet.spec.masterPassword.directory`).
//!
//! The directory says which mailboxes exist: every user it returns is one
//! mailbox to archive with the master password. Getting the list wrong in
//! the "too short" direction is the dangerous case (mailboxes would stop
//! being archived), so this module fails loudly rather than return a partial
//! list: every page of a paged search must succeed, and any LDAP error ends
//! the fetch with a message that names the server, the phase and the result
//! code, never the bind password.

use std::collections::HashSet;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{
    Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry, StdStream,
};
use tokio::net::TcpStream;
use tokio::time::timeout;
use url::Url;

use crate::resources::{validate_ldap, Flavor, LdapSpec};
use crate::sensitive::Sensitive;

/// Entries per page of the paged search (RFC 2696). Below Active
/// Directory's MaxPageSize (1,000), which is also its size limit for
/// unpaged searches, so directories of any size come back whole.
const PAGE_SIZE: i32 = 500;

const GENERIC_FILTER: &str = "(objectClass=inetOrgPerson)";
const GENERIC_NAME_ATTRIBUTE: &str = "uid";

/// `objectCategory=person` alone also matches contacts, `objectClass=user`
/// alone also matches computer accounts; both together mean user accounts.
const AD_FILTER: &str = "(&(objectCategory=person)(objectClass=user))";
const AD_NAME_ATTRIBUTE: &str = "sAMAccountName";

/// Bit 2 (ACCOUNTDISABLE) of userAccountControl, tested with the bitwise
/// AND matching rule: disabled accounts have no mailbox worth archiving.
const AD_ENABLED_ONLY: &str = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))";

/// LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups too,
/// resolved by the domain controller.
const AD_MEMBER_OF_IN_CHAIN: &str = "memberOf:1.2.840.113556.1.4.1941:=";

/// Exchange keeps a user's addresses here as `SMTP:primary` and
/// `smtp:alias`, next to X500:, SIP: and other non-mail entries.
const AD_PROXY_ADDRESSES: &str = "proxyAddresses";

const DEFAULT_EMAIL_ATTRIBUTE: &str = "mail";

/// groupOfNames, groupOfUniqueNames and posixGroup, in that order.
const GROUP_MEMBER_ATTRIBUTES: [&str; 3] = ["member", "uniqueMember", "memberUid"];

/// Credentials for a simple bind, read from the `bindSecretRef` Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub dn: String,
    pub password: Sensitive,
}

/// One user in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    /// Login name (the `userNameAttribute` value).
    pub name: String,
    /// Addresses, primary first; empty if the entry has none.
    pub emails: Vec<String>,
    /// The entry's DN, to tell users apart in logs.
    pub dn: String,
}

/// Why the users could not be read. Each message names the server and the
/// step that failed; none contains the bind password.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The spec fails [`validate`]; nothing was sent to the server.
    #[error("invalid directory settings: {}", join_problems(.0))]
    InvalidSpec(Vec<(String, String)>),
    /// The TLS client settings could not be built (e.g. a bad CA PEM).
    #[error("TLS settings for {url}: {message}")]
    TlsConfig { url: String, message: String },
    /// No TCP connection.
    #[error("connect to {url}: {message}")]
    Connect { url: String, message: String },
    /// StartTLS refused, or the TLS handshake failed (e.g. an untrusted
    /// certificate).
    #[error("{step} with {url} failed: {message}")]
    Tls {
        url: String,
        step: &'static str,
        message: String,
    },
    /// The server refused the bind credentials.
    #[error("bind as {dn} to {url} failed: {message}")]
    Bind {
        url: String,
        dn: String,
        message: String,
    },
    /// The `groupDN` entry could not be read.
    #[error("read group {group_dn} on {url} failed: {message}")]
    Group {
        url: String,
        group_dn: String,
        message: String,
    },
    /// The user search failed (on any page).
    #[error("search under {base_dn} on {url} failed: {message}")]
    Search {
        url: String,
        base_dn: String,
        message: String,
    },
    /// Microsoft Graph or the Google Directory API: no token, or a failed request (on any
    /// page). The message says what to do, in plain words.
    #[error("{service}: {message}")]
    Api {
        service: &'static str,
        message: String,
    },
}

/// The endpoint of a directory API, once its settings' `problems` (from resource
/// validation) are none: nothing is sent for settings a resource could not have.
pub(super) fn api_endpoint(
    service: &'static str,
    problems: Vec<(String, String)>,
    given: Option<&str>,
    default: &str,
) -> Result<Url, DirectoryError> {
    if !problems.is_empty() {
        return Err(DirectoryError::InvalidSpec(problems));
    }
    crate::oauth2::http::endpoint("endpoint", given, default)
        .map_err(|(_, message)| DirectoryError::Api { service, message })
}

fn join_problems(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(field, message)| format!("{field}: {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The search filter sent to the server.
///
/// Generic: `filter` or `(objectClass=inetOrgPerson)`; group membership is
/// checked against the group entry afterwards, since plain directories
/// need not maintain `memberOf`. ActiveDirectory: `filter` or user accounts,
/// always without disabled accounts, and with `groupDN` as a nested
/// `memberOf` condition.
pub fn build_filter(spec: &LdapSpec) -> String {
    match spec.flavor {
        Flavor::Generic => spec
            .filter
            .clone()
            .unwrap_or_else(|| GENERIC_FILTER.to_owned()),
        Flavor::ActiveDirectory => {
            let mut parts = vec![
                spec.filter.clone().unwrap_or_else(|| AD_FILTER.to_owned()),
                AD_ENABLED_ONLY.to_owned(),
            ];
            if let Some(group_dn) = &spec.group_dn {
                parts.push(format!(
                    "({AD_MEMBER_OF_IN_CHAIN}{})",
                    ldap3::ldap_escape(group_dn.as_str())
                ));
            }
            format!("(&{})", parts.concat())
        }
    }
}

fn name_attribute(spec: &LdapSpec) -> &str {
    spec.user_name_attribute
        .as_deref()
        .unwrap_or(match spec.flavor {
            Flavor::Generic => GENERIC_NAME_ATTRIBUTE,
            Flavor::ActiveDirectory => AD_NAME_ATTRIBUTE,
        })
}

fn email_attribute(spec: &LdapSpec) -> &str {
    spec.email_attribute
        .as_deref()
        .unwrap_or(DEFAULT_EMAIL_ATTRIBUTE)
}

/// Reads all users that `spec` selects, sorted by name (case-insensitively)
/// and with names unique regardless of case.
///
/// `bind` is the content of the `bindSecretRef` Secret (anonymous if
/// `None`), `ca_pem` the content of the `caSecretRef` key. Entries without
/// the user name attribute are skipped, and logged as a count.
pub async fn fetch_users(
    spec: &LdapSpec,
    bind: Option<&Bind>,
    ca_pem: Option<&[u8]>,
) -> Result<Vec<DirectoryUser>, DirectoryError> {
    let problems = validate_ldap(spec);
    if !problems.is_empty() {
        return Err(DirectoryError::InvalidSpec(problems));
    }
    let limit = Duration::from_secs(u64::from(spec.timeout_seconds));
    let mut ldap = connect(spec, ca_pem, limit).await?;
    let users = fetch_on(&mut ldap, spec, bind, limit).await;
    // Best effort: the server also cleans up when the connection drops.
    let _ = ldap.unbind().await;
    users
}

/// Names that a sync added and removed compared with the previous one,
/// compared without regard to case (as [`fetch_users`] makes names unique).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// What changed from the `previous` names to the `users` just read.
pub fn changes(previous: &[String], users: &[DirectoryUser]) -> Changes {
    let before: HashSet<String> = previous.iter().map(|n| n.to_lowercase()).collect();
    let now: HashSet<String> = users.iter().map(|u| u.name.to_lowercase()).collect();
    Changes {
        added: users
            .iter()
            .filter(|u| !before.contains(&u.name.to_lowercase()))
            .map(|u| u.name.clone())
            .collect(),
        removed: previous
            .iter()
            .filter(|n| !now.contains(&n.to_lowercase()))
            .cloned()
            .collect(),
    }
}

/// Whether dropping `removed` of `known` users is more than `max_percent`
/// allows. Nothing known yet (a first sync) is never too much.
pub fn too_many_removed(known: usize, removed: usize, max_percent: u32) -> bool {
    known > 0 && removed as u128 * 100 > u128::from(max_percent) * known as u128
}

async fn connect(
    spec: &LdapSpec,
    ca_pem: Option<&[u8]>,
    limit: Duration,
) -> Result<Ldap, DirectoryError> {
    let url = spec.url.as_str();
    let connect_error = |message: String| DirectoryError::Connect {
        url: url.to_owned(),
        message,
    };
    let parsed = Url::parse(url).map_err(|e| connect_error(e.to_string()))?;
    let ldaps = parsed.scheme() == "ldaps";
    let tls = ldaps || spec.start_tls;
    // Built before connecting: a bad CA is a settings problem, whatever the
    // network does.
    let tls_config = if tls {
        Some(
            crate::tls::client_config(spec.insecure_skip_tls_verify, ca_pem).map_err(|e| {
                DirectoryError::TlsConfig {
                    url: url.to_owned(),
                    message: format!("caSecretRef: {e}"),
                }
            })?,
        )
    } else {
        None
    };

    // The TCP connection is made here rather than by ldap3, so that a
    // refused or unreachable server is told apart from a TLS failure.
    let port = parsed.port().unwrap_or(if ldaps { 636 } else { 389 });
    let address = format!("{}:{port}", parsed.host_str().unwrap_or_default());
    let tcp = match timeout(limit, TcpStream::connect(&address)).await {
        Err(_) => return Err(connect_error(timed_out(limit))),
        Ok(Err(e)) => return Err(connect_error(io_message(&e))),
        Ok(Ok(tcp)) => tcp,
    };
    let tcp = tcp.into_std().map_err(|e| connect_error(io_message(&e)))?;

    let mut settings = LdapConnSettings::new().set_std_stream(StdStream::Tcp(tcp));
    if let Some(config) = tls_config {
        settings = settings
            .set_config(config)
            .set_starttls(spec.start_tls)
            .set_no_tls_verify(spec.insecure_skip_tls_verify);
    }
    let step = if spec.start_tls {
        "StartTLS"
    } else {
        "TLS handshake"
    };
    let tls_error = |message: String| DirectoryError::Tls {
        url: url.to_owned(),
        step,
        message,
    };
    let (conn, ldap) = match timeout(limit, LdapConnAsync::with_settings(settings, url)).await {
        Err(_) => return Err(tls_error(timed_out(limit))),
        Ok(Err(e)) if tls => return Err(tls_error(describe(&e, limit))),
        Ok(Err(e)) => return Err(connect_error(describe(&e, limit))),
        Ok(Ok(pair)) => pair,
    };
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "LDAP connection closed with an error");
        }
    });
    Ok(ldap)
}

async fn fetch_on(
    ldap: &mut Ldap,
    spec: &LdapSpec,
    bind: Option<&Bind>,
    limit: Duration,
) -> Result<Vec<DirectoryUser>, DirectoryError> {
    if let Some(bind) = bind {
        if !spec.start_tls && !spec.url.to_ascii_lowercase().starts_with("ldaps:") {
            tracing::warn!(
                url = %spec.url,
                "binding to the directory without TLS: the password crosses the network in the clear"
            );
        }
        simple_bind(ldap, spec, bind, limit).await?;
    }
    let members = match (&spec.group_dn, spec.flavor) {
        (Some(group_dn), Flavor::Generic) => Some(read_group(ldap, spec, group_dn, limit).await?),
        // Active Directory: the filter restricts to members.
        _ => None,
    };
    let entries = search_users(ldap, spec, limit).await?;
    Ok(collect_users(entries, spec, members.as_ref()))
}

async fn simple_bind(
    ldap: &mut Ldap,
    spec: &LdapSpec,
    bind: &Bind,
    limit: Duration,
) -> Result<(), DirectoryError> {
    let bind_error = |message: String| DirectoryError::Bind {
        url: spec.url.clone(),
        dn: bind.dn.clone(),
        message,
    };
    // RFC 4513 5.1.2: a DN with an empty password is an "unauthenticated"
    // bind, which many servers accept as anonymous; a missing password
    // must not pass for a working one.
    if bind.password.expose().is_empty() {
        return Err(bind_error("the password is empty".to_owned()));
    }
    ldap.with_timeout(limit)
        .simple_bind(&bind.dn, bind.password.expose())
        .await
        .and_then(LdapResult::success)
        .map_err(|e| bind_error(describe(&e, limit)))?;
    Ok(())
}

async fn read_group(
    ldap: &mut Ldap,
    spec: &LdapSpec,
    group_dn: &str,
    limit: Duration,
) -> Result<GroupMembers, DirectoryError> {
    let group_error = |message: String| DirectoryError::Group {
        url: spec.url.clone(),
        group_dn: group_dn.to_owned(),
        message,
    };
    let (entries, _) = ldap
        .with_timeout(limit)
        .search(
            group_dn,
            Scope::Base,
            "(objectClass=*)",
            GROUP_MEMBER_ATTRIBUTES.to_vec(),
        )
        .await
        .and_then(|result| result.success())
        .map_err(|e| group_error(describe(&e, limit)))?;
    match entries.into_iter().next() {
        Some(entry) => Ok(GroupMembers::from_entry(&SearchEntry::construct(entry))),
        // Access control can hide an entry without an error.
        None => Err(group_error(
            "no such entry visible to this identity".to_owned(),
        )),
    }
}

async fn search_users(
    ldap: &mut Ldap,
    spec: &LdapSpec,
    limit: Duration,
) -> Result<Vec<SearchEntry>, DirectoryError> {
    let search_error = |e: LdapError| DirectoryError::Search {
        url: spec.url.clone(),
        base_dn: spec.base_dn.clone(),
        message: describe(&e, limit),
    };
    let mut attributes = vec![
        name_attribute(spec).to_owned(),
        email_attribute(spec).to_owned(),
    ];
    if spec.flavor == Flavor::ActiveDirectory {
        attributes.push(AD_PROXY_ADDRESSES.to_owned());
    }
    // EntriesOnly drops search references, which Active Directory sends for
    // its DNS partitions when searching at the domain root.
    let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(PAGE_SIZE)),
    ];
    let mut stream = ldap
        .with_timeout(limit)
        .streaming_search_with(
            adapters,
            &spec.base_dn,
            Scope::Subtree,
            &build_filter(spec),
            attributes,
        )
        .await
        .map_err(search_error)?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await.map_err(search_error)? {
        entries.push(SearchEntry::construct(entry));
    }
    // A size or time limit shows up only here; the entries so far are then
    // an incomplete list and must not be used.
    stream.finish().await.success().map_err(search_error)?;
    Ok(entries)
}

fn collect_users(
    entries: Vec<SearchEntry>,
    spec: &LdapSpec,
    members: Option<&GroupMembers>,
) -> Vec<DirectoryUser> {
    let name_attribute = name_attribute(spec);
    let email_attribute = email_attribute(spec);
    let mut nameless = 0usize;
    let mut users = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(name) = values(&entry, name_attribute)
            .first()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
        else {
            nameless += 1;
            continue;
        };
        if members.is_some_and(|members| !members.contains(&entry.dn, &name)) {
            continue;
        }
        let mail = values(&entry, email_attribute);
        let emails = match spec.flavor {
            Flavor::Generic => unique_addresses(mail.iter().map(String::as_str)),
            Flavor::ActiveDirectory => ad_addresses(mail, values(&entry, AD_PROXY_ADDRESSES)),
        };
        users.push(DirectoryUser {
            name,
            emails,
            dn: entry.dn,
        });
    }
    if nameless > 0 {
        tracing::warn!(
            count = nameless,
            attribute = name_attribute,
            base_dn = %spec.base_dn,
            "skipped directory entries without a user name"
        );
    }
    sort_and_dedupe(users)
}

/// Sorted by name without regard to case, then by the exact name and DN,
/// so that which of two same-named entries is kept does not depend on the
/// server's order.
pub(super) fn sort_and_dedupe(mut users: Vec<DirectoryUser>) -> Vec<DirectoryUser> {
    users.sort_by_cached_key(|user| (user.name.to_lowercase(), user.name.clone(), user.dn.clone()));
    let mut unique: Vec<DirectoryUser> = Vec::with_capacity(users.len());
    for user in users {
        match unique.last() {
            Some(kept) if kept.name.to_lowercase() == user.name.to_lowercase() => {
                tracing::warn!(
                    name = %user.name,
                    dn = %user.dn,
                    kept = %kept.dn,
                    "ignoring a second directory entry with the same user name"
                );
            }
            _ => unique.push(user),
        }
    }
    unique
}

/// Values of an attribute, whatever the case of its name in the response
/// (servers answer with their own spelling).
fn values<'e>(entry: &'e SearchEntry, attribute: &str) -> &'e [String] {
    entry
        .attrs
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(attribute))
        .map_or(&[], |(_, values)| values.as_slice())
}

/// Trimmed, non-empty, first spelling of each address kept, order kept.
pub(super) fn unique_addresses<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    addresses
        .into_iter()
        .map(str::trim)
        .filter(|address| !address.is_empty() && seen.insert(address.to_lowercase()))
        .map(str::to_owned)
        .collect()
}

/// Active Directory: the `SMTP:` proxy address is the primary one, then the
/// mail attribute's values, then the `smtp:` aliases.
pub(super) fn ad_addresses(mail: &[String], proxy_addresses: &[String]) -> Vec<String> {
    let mut primary = None;
    let mut aliases = Vec::new();
    for proxy in proxy_addresses {
        if let Some((kind, address)) = proxy.split_once(':') {
            if kind == "SMTP" && primary.is_none() {
                primary = Some(address);
            } else if kind.eq_ignore_ascii_case("smtp") {
                aliases.push(address);
            }
        }
    }
    unique_addresses(
        primary
            .into_iter()
            .chain(mail.iter().map(String::as_str))
            .chain(aliases),
    )
}

/// Members of the `groupDN` entry, as normalised DNs and as user names.
struct GroupMembers {
    dns: HashSet<String>,
    names: HashSet<String>,
}

impl GroupMembers {
    fn from_entry(entry: &SearchEntry) -> Self {
        let [member, unique_member, member_uid] = GROUP_MEMBER_ATTRIBUTES;
        let dns = values(entry, member)
            .iter()
            .map(|dn| normalize_dn(dn))
            .chain(
                values(entry, unique_member)
                    .iter()
                    .map(|value| normalize_dn(strip_optional_uid(value))),
            )
            .collect();
        let names = values(entry, member_uid)
            .iter()
            .map(|name| name.trim().to_lowercase())
            .collect();
        GroupMembers { dns, names }
    }

    fn contains(&self, dn: &str, name: &str) -> bool {
        self.dns.contains(&normalize_dn(dn)) || self.names.contains(&name.to_lowercase())
    }
}

/// uniqueMember values may end in an optional `#'0101'B` unique
/// identifier (RFC 4517 NameAndOptionalUID), which is not part of the DN.
fn strip_optional_uid(value: &str) -> &str {
    match value.rfind("#'") {
        Some(at)
            if !value[..at].ends_with('\\')
                && value.ends_with("'B")
                && value.len() >= at + 4
                && value[at + 2..value.len() - 2]
                    .chars()
                    .all(|c| c == '0' || c == '1') =>
        {
            &value[..at]
        }
        _ => value,
    }
}

/// A DN in a form where two spellings of the same DN are equal: no
/// whitespace around `,`, `+` and `=`, runs of whitespace in values made
/// one space, and lower case (the attributes used in DNs compare without
/// regard to case). Escapes are kept as they are.
fn normalize_dn(dn: &str) -> String {
    let mut normalized = String::with_capacity(dn.len());
    let mut component = String::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                component.push(c);
                component.extend(chars.next());
            }
            ',' | '+' | '=' => {
                push_component(&mut normalized, &component);
                normalized.push(c);
                component.clear();
            }
            _ => component.push(c),
        }
    }
    push_component(&mut normalized, &component);
    normalized.to_lowercase()
}

fn push_component(normalized: &mut String, component: &str) {
    let collapsed = component.split_whitespace().collect::<Vec<_>>().join(" ");
    normalized.push_str(&collapsed);
    // An escaped trailing space ("\ ") belongs to the value.
    if collapsed.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1 {
        normalized.push(' ');
    }
}

fn timed_out(limit: Duration) -> String {
    format!("timed out after {} s", limit.as_secs())
}

/// An ldap3 error as the reason part of a message: result codes by name
/// and number, I/O errors without ldap3's prefixes.
fn describe(error: &LdapError, limit: Duration) -> String {
    match error {
        LdapError::LdapResult { result } => result_message(result),
        LdapError::Io { source } => io_message(source),
        LdapError::Timeout { .. } => timed_out(limit),
        LdapError::Rustls { source } => source.to_string(),
        other => other.to_string(),
    }
}

/// "connection refused" rather than "Connection refused (os error 111)";
/// a wrapped error (rustls inside an I/O error) is shown itself.
fn io_message(error: &std::io::Error) -> String {
    if let Some(inner) = error.get_ref() {
        return inner.to_string();
    }
    let text = error.to_string();
    let text = match text.find(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

/// "invalidCredentials (49)", plus the server's diagnostic text, which on
/// Active Directory tells e.g. an expired password from a wrong one.
fn result_message(result: &LdapResult) -> String {
    let mut message = format!("{} ({})", result_code_name(result.rc), result.rc);
    let text = result.text.trim();
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(text);
    }
    message
}

/// RFC 4511 section 4.1.9 names (ldap3 keeps its table private).
fn result_code_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        80 => "other",
        _ => "resultCode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{is_valid_ldap_filter, DirectorySpec};

    fn spec(flavor: Flavor) -> LdapSpec {
        crate::resources::ldap_spec_for_tests(flavor)
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let parsed: DirectorySpec = serde_json::from_value(serde_json::json!({
            "ldap": {"url": "ldaps://dc1.example.org", "baseDN": "dc=example,dc=org",
                     "flavor": "ActiveDirectory",
                     "bindSecretRef": {"name": "reader"}}
        }))
        .unwrap();
        assert!(parsed.sync_before_run);
        assert_eq!(parsed.max_removed_percent, 50);
        assert_eq!(parsed.ldap.timeout_seconds, 30);
        assert_eq!(parsed.ldap.flavor, Flavor::ActiveDirectory);
        assert_eq!(parsed.ldap.bind_secret_ref.unwrap().name, "reader");

        let unknown = serde_json::from_value::<DirectorySpec>(serde_json::json!({
            "ldap": {"url": "ldap://x", "baseDN": "dc=x", "baseDn": "dc=x"}
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn invalid_spec_error_lists_the_problems() {
        let mut bad = spec(Flavor::Generic);
        bad.filter = Some("(uid=alice".to_owned());
        let error = DirectoryError::InvalidSpec(validate_ldap(&bad));
        assert_eq!(
            error.to_string(),
            "invalid directory settings: ldap.filter: not a valid RFC 4515 filter \
             (it needs its outer parentheses, e.g. (objectClass=person))"
        );
    }

    #[test]
    fn generic_filter_is_the_given_one_or_inet_org_person() {
        let mut generic = spec(Flavor::Generic);
        assert_eq!(build_filter(&generic), "(objectClass=inetOrgPerson)");
        generic.filter = Some("(objectClass=posixAccount)".to_owned());
        generic.group_dn = Some("cn=staff,dc=example,dc=org".to_owned());
        assert_eq!(build_filter(&generic), "(objectClass=posixAccount)");
    }

    #[test]
    fn ad_filter_leaves_out_disabled_accounts() {
        let ad = spec(Flavor::ActiveDirectory);
        let filter = build_filter(&ad);
        assert_eq!(
            filter,
            "(&(&(objectCategory=person)(objectClass=user))\
             (!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
        );
        assert!(is_valid_ldap_filter(&filter));
    }

    #[test]
    fn ad_filter_adds_nested_group_membership_with_escaped_dn() {
        let mut ad = spec(Flavor::ActiveDirectory);
        ad.filter = Some("(objectClass=user)".to_owned());
        ad.group_dn = Some(r"CN=Mail (all)\, staff*,OU=Groups,DC=example,DC=org".to_owned());
        let filter = build_filter(&ad);
        assert_eq!(
            filter,
            "(&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2))\
             (memberOf:1.2.840.113556.1.4.1941:=CN=Mail \\28all\\29\\5c, staff\\2a,\
             OU=Groups,DC=example,DC=org))"
        );
        assert!(is_valid_ldap_filter(&filter));
    }

    #[test]
    fn default_attributes_depend_on_flavor() {
        assert_eq!(name_attribute(&spec(Flavor::Generic)), "uid");
        assert_eq!(
            name_attribute(&spec(Flavor::ActiveDirectory)),
            "sAMAccountName"
        );
        assert_eq!(email_attribute(&spec(Flavor::ActiveDirectory)), "mail");
        let mut custom = spec(Flavor::ActiveDirectory);
        custom.user_name_attribute = Some("cn".to_owned());
        custom.email_attribute = Some("otherMailbox".to_owned());
        assert_eq!(name_attribute(&custom), "cn");
        assert_eq!(email_attribute(&custom), "otherMailbox");
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn ad_primary_address_is_the_uppercase_smtp_proxy() {
        let mail = strings(&["alice@example.org"]);
        let proxies = strings(&[
            "smtp:alice@old.example.org",
            "X500:/o=Example/cn=alice",
            "SIP:alice@example.org",
            "SMTP:Alice.Smith@example.org",
            "smtp:ALICE@example.org",
        ]);
        assert_eq!(
            ad_addresses(&mail, &proxies),
            [
                "Alice.Smith@example.org",
                "alice@example.org",
                "alice@old.example.org"
            ]
        );
        assert_eq!(ad_addresses(&mail, &[]), ["alice@example.org"]);
        assert_eq!(ad_addresses(&[], &[]), Vec::<String>::new());
    }

    #[test]
    fn addresses_keep_order_and_drop_blanks_and_case_duplicates() {
        assert_eq!(
            unique_addresses(["b@x.org", " ", "a@x.org", "B@X.org ", " c@x.org"]),
            ["b@x.org", "a@x.org", "c@x.org"]
        );
    }

    #[test]
    fn dns_compare_without_case_and_spacing() {
        assert_eq!(
            normalize_dn(" UID=Alice , ou=People,  DC=example,dc=ORG"),
            "uid=alice,ou=people,dc=example,dc=org"
        );
        assert_eq!(
            normalize_dn("cn = Smith  John + uid=js"),
            "cn=smith john+uid=js"
        );
        assert_eq!(
            normalize_dn(r"cn=Smith\, John,dc=x"),
            r"cn=smith\, john,dc=x"
        );
        assert_eq!(normalize_dn(r"cn=trailing\ ,dc=x"), r"cn=trailing\ ,dc=x");
    }

    #[test]
    fn unique_member_uid_suffix_is_stripped() {
        assert_eq!(strip_optional_uid("uid=bob,dc=x#'0101'B"), "uid=bob,dc=x");
        assert_eq!(strip_optional_uid("uid=bob,dc=x"), "uid=bob,dc=x");
        assert_eq!(strip_optional_uid(r"cn=a\#'01'B"), r"cn=a\#'01'B");
        assert_eq!(strip_optional_uid("cn=a#'2'B"), "cn=a#'2'B");
    }

    #[test]
    fn users_are_sorted_and_deduplicated_by_name_regardless_of_case() {
        let user = |name: &str, dn: &str| DirectoryUser {
            name: name.to_owned(),
            emails: vec![],
            dn: dn.to_owned(),
        };
        let sorted = sort_and_dedupe(vec![
            user("carol", "uid=carol,ou=b"),
            user("alice", "uid=alice,ou=b"),
            user("Bob", "uid=Bob,ou=a"),
            user("alice", "uid=alice,ou=a"),
            user("ALICE", "uid=ALICE,ou=c"),
        ]);
        assert_eq!(
            sorted,
            [
                user("ALICE", "uid=ALICE,ou=c"),
                user("Bob", "uid=Bob,ou=a"),
                user("carol", "uid=carol,ou=b"),
            ]
        );
    }

    #[test]
    fn error_reasons_name_result_codes_and_keep_server_text() {
        let result = LdapResult {
            rc: 49,
            matched: String::new(),
            text: " 80090308: LdapErr: DSID-0C09044E, data 52e ".to_owned(),
            refs: vec![],
            ctrls: vec![],
        };
        assert_eq!(
            result_message(&result),
            "invalidCredentials (49): 80090308: LdapErr: DSID-0C09044E, data 52e"
        );
    }

    #[test]
    fn bind_debug_output_hides_the_password() {
        let bind = Bind {
            dn: "cn=reader,dc=example,dc=org".to_owned(),
            password: Sensitive::new("hunter2"),
        };
        assert!(!format!("{bind:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn invalid_spec_is_refused_before_any_connection() {
        let mut bad = spec(Flavor::Generic);
        bad.url = "ldap://127.0.0.1:1".to_owned();
        bad.filter = Some("uid=alice".to_owned());
        let error = fetch_users(&bad, None, None).await.unwrap_err();
        assert!(matches!(error, DirectoryError::InvalidSpec(ref p) if p.len() == 1));
    }

    #[test]
    fn changes_compare_names_without_case() {
        let user = |name: &str| DirectoryUser {
            name: name.to_owned(),
            emails: vec![],
            dn: format!("uid={name},dc=x"),
        };
        let previous = strings(&["alice", "Bob", "carol"]);
        assert_eq!(
            changes(&previous, &[user("ALICE"), user("bob"), user("dave")]),
            Changes {
                added: strings(&["dave"]),
                removed: strings(&["carol"]),
            }
        );
        assert_eq!(changes(&[], &[]), Changes::default());
    }

    #[test]
    fn removal_guard_allows_up_to_the_limit() {
        assert!(!too_many_removed(0, 0, 50));
        assert!(!too_many_removed(4, 2, 50));
        assert!(too_many_removed(4, 3, 50));
        assert!(too_many_removed(4, 1, 0));
        assert!(!too_many_removed(4, 0, 0));
        assert!(!too_many_removed(4, 4, 100));
        assert!(!too_many_removed(usize::MAX, usize::MAX, 100));
    }
}
