//! What can be said about a MailboxSet's directory and OAuth2 settings without reaching a
//! server: the problems of its LDAP, Microsoft Graph, Google Directory and token settings
//! (reported on the resource as field paths, instead of as errors at the next run) and the
//! warnings a person must see about how the directory is read.

use url::Url;

#[cfg(test)]
use super::Flavor;
use super::{
    GoogleDirectorySpec, LdapSpec, MailboxSet, MicrosoftGraphSpec, OAuth2Provider, OAuth2Spec,
};
use crate::oauth2::http::{endpoint, parse_url};

/// Checks an OAuth2 set's settings without a server, as (field below `spec.oauth2`,
/// message): what each provider needs, URLs that are `https://` (or `http://` on loopback),
/// and a directory that fits the provider.
pub fn validate_oauth2(spec: &OAuth2Spec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: &str| {
        problems.push((field.to_owned(), message.to_owned()));
    };
    let provider = spec.provider;
    match provider {
        OAuth2Provider::Microsoft365 => {
            if spec.tenant_id.is_none() && spec.token_url.is_none() {
                problem(
                    "tenantID",
                    "Microsoft365 needs the tenant: its ID (a GUID) or a domain such as contoso.onmicrosoft.com",
                );
            }
            if spec.client_id.is_none() {
                problem(
                    "clientID",
                    "Microsoft365 needs the application (client) ID of the app registration",
                );
            }
        }
        OAuth2Provider::Generic => {
            if spec.client_id.is_none() {
                problem("clientID", "Generic needs the client ID");
            }
            if spec.token_url.is_none() {
                problem("tokenURL", "Generic needs the token endpoint");
            }
            if spec.tenant_id.is_some() {
                problem("tenantID", "is only used with Microsoft365");
            }
        }
        OAuth2Provider::Google => {
            for (field, value) in [("tenantID", &spec.tenant_id), ("clientID", &spec.client_id)] {
                if value.is_some() {
                    problem(
                        field,
                        "is not used with Google: the service account key names its client",
                    );
                }
            }
        }
    }
    if let Some(tenant) = &spec.tenant_id {
        let valid = !tenant.is_empty()
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            problem(
                "tenantID",
                "must be the tenant's ID (a GUID) or one of its domains, e.g. contoso.onmicrosoft.com",
            );
        }
    }
    if spec
        .client_id
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        problem("clientID", "must not be empty");
    }
    if let Some(url) = &spec.token_url {
        if let Err(message) = parse_url("tokenURL", url) {
            problem("tokenURL", message.trim_start_matches("tokenURL: "));
        }
    }
    for (i, scope) in spec.scopes.iter().enumerate() {
        if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
            problem(&format!("scopes[{i}]"), "must be one scope, without spaces");
        }
    }
    if let Some(directory) = &spec.directory {
        let allowed = match (
            &directory.microsoft_graph,
            &directory.google_directory,
            &directory.ldap,
        ) {
            (Some(_), None, None) => provider == OAuth2Provider::Microsoft365,
            (None, Some(_), None) => provider == OAuth2Provider::Google,
            (None, None, Some(_)) => true,
            _ => {
                problem(
                    "directory",
                    "set exactly one of microsoftGraph, googleDirectory or ldap",
                );
                true
            }
        };
        if !allowed {
            problem(
                "directory",
                "microsoftGraph is for provider Microsoft365, googleDirectory for Google; ldap fits any",
            );
        }
        let mut nested = Vec::new();
        if let Some(graph) = &directory.microsoft_graph {
            nested.extend(validate_microsoft_graph(graph));
        }
        if let Some(google) = &directory.google_directory {
            nested.extend(validate_google_directory(google));
        }
        if let Some(ldap) = &directory.ldap {
            nested.extend(validate_ldap(ldap));
        }
        for (field, message) in nested {
            problem(&format!("directory.{field}"), &message);
        }
    }
    problems
}

/// Graph's global endpoint; national clouds have their own (e.g. `https://graph.microsoft.us`).
pub const GRAPH_ENDPOINT: &str = "https://graph.microsoft.com";
/// The Admin SDK's endpoint.
pub const GOOGLE_DIRECTORY_ENDPOINT: &str = "https://admin.googleapis.com";

/// Problems of Microsoft Graph settings, as (field, message).
pub fn validate_microsoft_graph(spec: &MicrosoftGraphSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Err(problem) = endpoint(
        "microsoftGraph.endpoint",
        spec.endpoint.as_deref(),
        GRAPH_ENDPOINT,
    ) {
        problems.push(problem);
    }
    if spec.group_id.as_deref().is_some_and(|id| !is_guid(id)) {
        problems.push((
            "microsoftGraph.groupID".into(),
            "must be the group's object ID, a GUID like 02bd9fd6-8f93-4758-87c3-1fb73740a315"
                .into(),
        ));
    }
    problems
}

fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Problems of Google Directory settings, as (field, message).
pub fn validate_google_directory(spec: &GoogleDirectorySpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Err(problem) = endpoint(
        "googleDirectory.endpoint",
        spec.endpoint.as_deref(),
        GOOGLE_DIRECTORY_ENDPOINT,
    ) {
        problems.push(problem);
    }
    let admin = spec.admin_email.trim();
    if admin.is_empty() || !admin.contains('@') {
        problems.push((
            "googleDirectory.adminEmail".into(),
            "must be the address of a Google Workspace administrator (the Directory API answers \
             only administrators)"
                .into(),
        ));
    }
    if spec
        .customer
        .as_deref()
        .is_some_and(|c| c.is_empty() || !c.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        problems.push((
            "googleDirectory.customer".into(),
            "must be my_customer or a customer ID like C03az79cb".into(),
        ));
    }
    problems
}

/// Checks what can be checked without a server, so that a typo is reported
/// on the resource (as field path and message) instead of as an LDAP error
/// at the next run.
pub fn validate_ldap(spec: &LdapSpec) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: &str| {
        problems.push((format!("ldap.{field}"), message.to_owned()));
    };
    match Url::parse(&spec.url) {
        Err(e) => problem("url", &format!("not a URL: {e}")),
        Ok(url) => {
            match url.scheme() {
                "ldap" => {}
                "ldaps" if spec.start_tls => problem(
                    "startTls",
                    "StartTLS is for ldap:// URLs; ldaps:// uses TLS from the start",
                ),
                "ldaps" => {}
                other => problem("url", &format!("scheme must be ldap or ldaps, not {other}")),
            }
            if url.host_str().is_none_or(str::is_empty) {
                problem("url", "has no host");
            }
            if !url.username().is_empty() || url.password().is_some() {
                problem("url", "must not hold credentials; use bindSecretRef");
            }
            if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some()
            {
                problem(
                    "url",
                    "must be only scheme, host and port; the search base goes in baseDN",
                );
            }
        }
    }
    if spec.base_dn.trim().is_empty() {
        problem("baseDN", "must not be empty");
    }
    if spec
        .filter
        .as_deref()
        .is_some_and(|f| !is_valid_ldap_filter(f))
    {
        problem(
            "filter",
            "not a valid RFC 4515 filter (it needs its outer parentheses, \
             e.g. (objectClass=person))",
        );
    }
    for (field, value) in [
        ("userNameAttribute", &spec.user_name_attribute),
        ("emailAttribute", &spec.email_attribute),
    ] {
        if value.as_deref().is_some_and(|a| !is_attribute_name(a)) {
            problem(
                field,
                "not an attribute name (letters, digits and '-', or a numeric OID)",
            );
        }
    }
    if spec.group_dn.as_deref().is_some_and(|g| !g.contains('=')) {
        problem("groupDN", "not a DN");
    }
    if spec.timeout_seconds == 0 {
        problem("timeoutSeconds", "must be at least 1");
    }
    problems
}

/// ldap3's parser also takes a bare `uid=x`, which would break once the
/// filter is combined with others, hence the parentheses check.
pub fn is_valid_ldap_filter(filter: &str) -> bool {
    filter.starts_with('(') && filter.ends_with(')') && ldap3::parse_filter(filter).is_ok()
}

/// RFC 4512 `oid`: a descriptor or a numeric OID, without options.
fn is_attribute_name(name: &str) -> bool {
    let descriptor = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let numeric_oid = !name.is_empty()
        && name
            .split('.')
            .all(|arc| !arc.is_empty() && arc.chars().all(|c| c.is_ascii_digit()));
    descriptor || numeric_oid
}

/// What a person must know about how `set`'s directory is read, for the run protocol and
/// the MailboxSet's status, like the run settings' warnings about the IMAP connection.
pub fn directory_warnings(set: &MailboxSet) -> Vec<String> {
    let master = set
        .spec
        .master_password
        .as_ref()
        .and_then(|m| m.directory.as_ref())
        .map(|d| &d.ldap);
    let oauth2 = set
        .spec
        .oauth2
        .as_ref()
        .and_then(|o| o.directory.as_ref())
        .and_then(|d| d.ldap.as_ref());
    let Some(ldap) = master.or(oauth2) else {
        return Vec::new();
    };
    let plain = ldap.url.to_ascii_lowercase().starts_with("ldap://") && !ldap.start_tls;
    if plain {
        let what = if ldap.bind_secret_ref.is_some() {
            "the bind password and the users' addresses cross"
        } else {
            "the users' addresses cross"
        };
        vec![format!(
            "the directory {} is read without encryption (ldap:// without startTls): {what} the network in the clear",
            ldap.url
        )]
    } else if ldap.insecure_skip_tls_verify {
        vec![format!(
            "the certificate of the directory {} is not verified (insecureSkipTlsVerify: true)",
            ldap.url
        )]
    } else {
        Vec::new()
    }
}

/// A valid LDAP spec of `flavor`, for tests.
#[cfg(test)]
pub fn ldap_spec_for_tests(flavor: Flavor) -> LdapSpec {
    LdapSpec {
        url: "ldap://dc1.example.org".to_owned(),
        start_tls: false,
        insecure_skip_tls_verify: false,
        ca_secret_ref: None,
        bind_secret_ref: None,
        base_dn: "dc=example,dc=org".to_owned(),
        filter: None,
        user_name_attribute: None,
        email_attribute: None,
        group_dn: None,
        flavor,
        timeout_seconds: 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(flavor: Flavor) -> LdapSpec {
        ldap_spec_for_tests(flavor)
    }

    fn fields(spec: &LdapSpec) -> Vec<String> {
        validate_ldap(spec)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn a_good_spec_has_no_problems() {
        assert!(validate_ldap(&spec(Flavor::Generic)).is_empty());
        let mut with_everything = spec(Flavor::ActiveDirectory);
        with_everything.url = "ldaps://[::1]:3269/".to_owned();
        with_everything.filter = Some("(&(objectClass=user)(department=IT*))".to_owned());
        with_everything.user_name_attribute = Some("userPrincipalName".to_owned());
        with_everything.email_attribute = Some("0.9.2342.19200300.100.1.3".to_owned());
        with_everything.group_dn = Some("CN=Staff,OU=Groups,DC=example,DC=org".to_owned());
        with_everything.timeout_seconds = 5;
        assert_eq!(validate_ldap(&with_everything), vec![]);
    }

    #[test]
    fn validate_names_each_bad_field() {
        let mut bad = spec(Flavor::Generic);
        bad.url = "https://dc1.example.org".to_owned();
        bad.base_dn = " ".to_owned();
        bad.filter = Some("(uid=alice".to_owned());
        bad.user_name_attribute = Some("uid;binary".to_owned());
        bad.email_attribute = Some("1..2".to_owned());
        bad.group_dn = Some("staff".to_owned());
        bad.timeout_seconds = 0;
        assert_eq!(
            fields(&bad),
            [
                "ldap.url",
                "ldap.baseDN",
                "ldap.filter",
                "ldap.userNameAttribute",
                "ldap.emailAttribute",
                "ldap.groupDN",
                "ldap.timeoutSeconds"
            ]
        );
    }

    #[test]
    fn validate_rejects_bad_urls() {
        let mut start_tls_over_ldaps = spec(Flavor::Generic);
        start_tls_over_ldaps.url = "ldaps://dc1.example.org".to_owned();
        start_tls_over_ldaps.start_tls = true;
        assert_eq!(fields(&start_tls_over_ldaps), ["ldap.startTls"]);

        for url in [
            "dc1.example.org",
            "ldap://",
            "ldap://reader:secret@dc1.example.org",
            "ldap://dc1.example.org/dc=example,dc=org",
            "ldap://dc1.example.org?uid",
        ] {
            let mut bad = spec(Flavor::Generic);
            bad.url = url.to_owned();
            assert_eq!(fields(&bad), ["ldap.url"], "{url}");
        }
    }

    #[test]
    fn validate_rejects_filters_that_do_not_parse() {
        for filter in [
            "uid=alice",
            "(uid=alice",
            "(uid=alice))",
            "(&(uid=alice)",
            "(uid=al(ice)",
            "",
            "(|(uid=a)(uid=b)) (uid=c)",
        ] {
            let mut bad = spec(Flavor::Generic);
            bad.filter = Some(filter.to_owned());
            assert_eq!(fields(&bad), ["ldap.filter"], "{filter:?}");
        }
    }

    #[test]
    fn unencrypted_directories_are_warned_about() {
        let set = |ldap: serde_json::Value| -> MailboxSet {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "mailvault.io/v1alpha1", "kind": "MailboxSet",
                "metadata": {"name": "s"},
                "spec": {"masterPassword": {"credentialsSecretRef": {"name": "m"},
                         "directory": {"ldap": ldap}}}
            }))
            .unwrap()
        };
        let plain = directory_warnings(&set(serde_json::json!({
            "url": "LDAP://dc1.example.org", "baseDN": "dc=x", "bindSecretRef": {"name": "b"}})));
        assert_eq!(plain.len(), 1);
        assert!(
            plain[0].contains("the bind password and the users' addresses"),
            "{plain:?}"
        );
        let anonymous = directory_warnings(&set(serde_json::json!({
            "url": "ldap://dc1.example.org", "baseDN": "dc=x"})));
        assert!(
            anonymous[0].contains("read without encryption"),
            "{anonymous:?}"
        );
        for quiet in [
            serde_json::json!({"url": "ldap://dc1", "baseDN": "dc=x", "startTls": true}),
            serde_json::json!({"url": "ldaps://dc1", "baseDN": "dc=x"}),
        ] {
            assert_eq!(directory_warnings(&set(quiet)), Vec::<String>::new());
        }
        let unverified = directory_warnings(&set(serde_json::json!({
            "url": "ldaps://dc1", "baseDN": "dc=x", "insecureSkipTlsVerify": true})));
        assert!(unverified[0].contains("not verified"), "{unverified:?}");
    }

    #[test]
    fn graph_group_ids_must_be_guids_and_endpoints_safe() {
        let graph = |endpoint: Option<&str>, group: Option<&str>| MicrosoftGraphSpec {
            endpoint: endpoint.map(str::to_string),
            group_id: group.map(str::to_string),
        };
        assert!(validate_microsoft_graph(&graph(
            None,
            Some("02bd9fd6-8f93-4758-87c3-1fb73740a315")
        ))
        .is_empty());
        let problems =
            validate_microsoft_graph(&graph(Some("http://graph.example.org"), Some("../users")));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].1.contains("loopback"), "{problems:?}");
        assert_eq!(problems[1].0, "microsoftGraph.groupID");
    }

    #[test]
    fn google_directory_settings_are_checked() {
        let good = GoogleDirectorySpec {
            endpoint: None,
            customer: None,
            admin_email: "admin@example.org".into(),
        };
        assert!(validate_google_directory(&good).is_empty());
        let bad = GoogleDirectorySpec {
            endpoint: Some("http://admin.example.org".into()),
            customer: Some("my customer&x=1".into()),
            admin_email: "admin".into(),
        };
        let fields: Vec<String> = validate_google_directory(&bad)
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            fields,
            [
                "googleDirectory.endpoint",
                "googleDirectory.adminEmail",
                "googleDirectory.customer"
            ]
        );
    }

    fn oauth2(yaml: &str) -> OAuth2Spec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn oauth2_fields(yaml: &str) -> Vec<String> {
        validate_oauth2(&oauth2(yaml))
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn each_provider_gets_what_it_needs() {
        let good = [
            "provider: Microsoft365\ntenantID: contoso.onmicrosoft.com\nclientID: 8a3f\ncredentialsSecretRef: {name: a}",
            "provider: Microsoft365\nclientID: 8a3f\ntokenURL: http://127.0.0.1:8080/token\ncredentialsSecretRef: {name: a}",
            "provider: Google\ncredentialsSecretRef: {name: a}\ndirectory: {googleDirectory: {adminEmail: admin@example.org}}",
            "provider: Generic\nclientID: c\ntokenURL: https://sso.example.org/token\nscopes: [imap]\ncredentialsSecretRef: {name: a}",
            "provider: Generic\nclientID: c\ntokenURL: https://sso.example.org/token\ncredentialsSecretRef: {name: a}\ndirectory: {ldap: {url: 'ldaps://dc1', baseDN: 'dc=x'}}",
        ];
        for yaml in good {
            assert_eq!(oauth2_fields(yaml), Vec::<String>::new(), "{yaml}");
        }
        for (yaml, fields) in [
            ("provider: Microsoft365\ncredentialsSecretRef: {name: a}", &["tenantID", "clientID"][..]),
            ("provider: Generic\ntenantID: t\ncredentialsSecretRef: {name: a}", &["clientID", "tokenURL", "tenantID"][..]),
            ("provider: Google\nclientID: c\ncredentialsSecretRef: {name: a}", &["clientID"][..]),
            // A tenant goes into the token URL's path: nothing but a name.
            ("provider: Microsoft365\ntenantID: ../common\nclientID: c\ncredentialsSecretRef: {name: a}", &["tenantID"][..]),
            ("provider: Microsoft365\ntenantID: t\nclientID: c\ntokenURL: http://login.example.org/t\ncredentialsSecretRef: {name: a}", &["tokenURL"][..]),
            ("provider: Generic\nclientID: c\ntokenURL: https://sso/t\nscopes: ['a b', '']\ncredentialsSecretRef: {name: a}", &["scopes[0]", "scopes[1]"][..]),
            // A directory that does not fit the provider.
            ("provider: Google\ncredentialsSecretRef: {name: a}\ndirectory: {microsoftGraph: {}}", &["directory"][..]),
            ("provider: Microsoft365\ntenantID: t\nclientID: c\ncredentialsSecretRef: {name: a}\ndirectory: {microsoftGraph: {groupID: staff}, ldap: {url: 'ldaps://dc1', baseDN: 'dc=x'}}", &["directory", "directory.microsoftGraph.groupID"][..]),
        ] {
            assert_eq!(oauth2_fields(yaml), fields, "{yaml}");
        }
    }
}
