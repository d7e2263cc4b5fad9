//! What can be said about a MailboxSet's directory without reaching it: the problems of
//! its LDAP settings (reported on the resource as field paths, instead of as LDAP errors at
//! the next run) and the warnings a person must see about how it is read.

use url::Url;

#[cfg(test)]
use super::Flavor;
use super::{LdapSpec, MailboxSet};

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
    let Some(directory) = set
        .spec
        .master_password
        .as_ref()
        .and_then(|m| m.directory.as_ref())
    else {
        return Vec::new();
    };
    let ldap = &directory.ldap;
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
}
