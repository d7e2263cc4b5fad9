//! Every kind of request the operator sends to the API server, in one table. The operator's
//! ClusterRole in `manifests/` must grant exactly these (`operator/tests/manifests.rs`), and
//! `operator/tests/controller.rs` keeps the table honest: it runs both controllers and both
//! reconcilers against a mock API server that records every request, and compares what was
//! sent with the table, both ways. A new API call in the controller code fails that test until it is
//! added here, and then the manifests test until the ClusterRole grants it.

use crate::resources::GROUP;

/// One request kind as RBAC names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// The API group; `""` for the core group.
    pub group: &'static str,
    /// The resource, with its subresource (`archiveprofiles/status`).
    pub resource: &'static str,
    pub verb: &'static str,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
    }
}

/// What the operator does, cluster-wide: its objects live in any namespace.
pub const API_CALLS: &[ApiCall] = &[
    // Both kinds are watched (mod.rs); a run reads its profile's MailboxSet (profile.rs).
    call(GROUP, "archiveprofiles", "list"),
    call(GROUP, "archiveprofiles", "watch"),
    call(GROUP, "mailboxsets", "get"),
    call(GROUP, "mailboxsets", "list"),
    call(GROUP, "mailboxsets", "watch"),
    // Statuses are written with server-side apply (profile.rs, mailboxset.rs).
    call(GROUP, "archiveprofiles/status", "patch"),
    call(GROUP, "mailboxsets/status", "patch"),
    // A run is a Job: watched as owned objects (by metadata), listed per profile, created
    // (a conflict means it exists: adopted), pruned beyond the history limits, and deleted
    // when none of its pods could run.
    call("batch", "jobs", "create"),
    call("batch", "jobs", "delete"),
    call("batch", "jobs", "list"),
    call("batch", "jobs", "watch"),
    // A finished run's shard summaries are its pods' termination messages; a run's pods
    // say why they cannot start.
    call("", "pods", "list"),
    // Secrets the resources reference are read (get) and watched, by metadata only, for
    // changes; a run's plan Secrets are created, listed (by metadata) and deleted once the
    // run is recorded.
    call("", "secrets", "create"),
    call("", "secrets", "delete"),
    call("", "secrets", "get"),
    call("", "secrets", "list"),
    call("", "secrets", "watch"),
    // kube's event recorder creates an event, and patches it when the event repeats.
    call("events.k8s.io", "events", "create"),
    call("events.k8s.io", "events", "patch"),
];

/// The RBAC view of a request, from its method and its path with the query: the group,
/// the resource (with its subresource, `archiveprofiles/status`) and the verb (`watch` for
/// a GET with `watch=true`). `None` for paths outside the resource API (`/version`).
pub fn classify(method: &str, path_and_query: &str) -> Option<(String, String, String)> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, mut rest) = match *segments.first()? {
        "api" => ("", segments.get(2..)?),
        "apis" => (*segments.get(1)?, segments.get(3..)?),
        _ => return None,
    };
    if rest.len() > 2 && rest[0] == "namespaces" {
        rest = &rest[2..];
    }
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest.first()?),
        None => rest.first()?.to_string(),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, rest.len() > 1) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

#[cfg(test)]
mod tests {
    use http::Method;

    type Call = (String, String, String);

    fn classify(method: &Method, uri: &http::Uri) -> Call {
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        super::classify(method.as_str(), target)
            .unwrap_or_else(|| panic!("not an API request: {method} {uri}"))
    }

    #[test]
    fn requests_are_classified_as_rbac_does() {
        let c = |m: Method, uri: &str| {
            let (g, r, v) = classify(&m, &uri.parse().unwrap());
            format!("{g}|{r}|{v}")
        };
        assert_eq!(
            c(
                Method::GET,
                "/apis/batch/v1/namespaces/mail/jobs?labelSelector=a%3Db"
            ),
            "batch|jobs|list"
        );
        assert_eq!(
            c(Method::GET, "/api/v1/secrets?watch=true&resourceVersion=1"),
            "|secrets|watch"
        );
        assert_eq!(
            c(Method::PATCH, "/apis/mailvault.io/v1alpha1/namespaces/mail/archiveprofiles/p/status?fieldManager=x"),
            "mailvault.io|archiveprofiles/status|patch"
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/mail/secrets/s"),
            "|secrets|get"
        );
        assert_eq!(
            c(Method::DELETE, "/apis/batch/v1/namespaces/mail/jobs/j"),
            "batch|jobs|delete"
        );
    }
}
