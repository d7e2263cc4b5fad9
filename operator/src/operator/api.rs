//! Every kind of request the operator sends to the API server, in one table. The operator's
//! ClusterRole in `manifests/` must grant exactly these (`operator/tests/manifests.rs`), and
//! the test below keeps the table honest: it runs both controllers and both reconcilers
//! against a fake API server that records every request, and compares what was sent with
//! the table, both ways. A new API call in the controller code fails that test until it is
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
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Method, Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use kube::Client;
    use serde_json::{json, Value};

    use super::*;
    use crate::operator::context::Context;
    use crate::operator::metrics::Metrics;
    use crate::operator::{self as operator, mailboxset, profile};
    use crate::resources::{ArchiveProfile, MailboxSet};

    type Call = (String, String, String);

    fn classify(method: &Method, uri: &http::Uri) -> Call {
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        super::classify(method.as_str(), target)
            .unwrap_or_else(|| panic!("not an API request: {method} {uri}"))
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
               "status": if code < 300 { "Success" } else { "Failure" },
               "reason": reason, "code": code, "message": reason})
    }

    /// A fake API server: objects by path (without `/status`), every request recorded.
    /// Creating a Job answers 409 as if another replica had just created it, so that the
    /// run adopts it; watches never answer, as a quiet cluster's would not.
    #[derive(Default)]
    struct Fake {
        objects: BTreeMap<String, Value>,
        calls: BTreeSet<Call>,
        pending_watches: Vec<tower_test::mock::SendResponse<Response<Body>>>,
    }

    impl Fake {
        async fn answer(&mut self, request: Request<Body>) -> Option<(StatusCode, Value)> {
            let (method, uri) = (request.method().clone(), request.uri().clone());
            let call = classify(&method, &uri);
            self.calls.insert(call.clone());
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let path = uri.path().trim_end_matches("/status").to_string();
            let (_, resource, verb) = call;
            Some(match verb.as_str() {
                "watch" => return None,
                "list" => {
                    let prefix = format!("{}/", uri.path());
                    let items: Vec<Value> = self
                        .objects
                        .iter()
                        .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                        .map(|(_, o)| o.clone())
                        .collect();
                    let list = json!({"apiVersion": "v1", "kind": "List",
                                      "metadata": {"resourceVersion": "1"}, "items": items});
                    (StatusCode::OK, list)
                }
                "get" => match self.objects.get(&path) {
                    Some(o) => (StatusCode::OK, o.clone()),
                    None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
                },
                "create" if resource == "jobs" => {
                    let mut job: Value = serde_json::from_slice(&body).unwrap();
                    let name = job["metadata"]["name"].as_str().unwrap().to_string();
                    job["metadata"]["uid"] = json!(format!("uid-{name}"));
                    self.objects.insert(format!("{path}/{name}"), job);
                    (StatusCode::CONFLICT, status(409, "AlreadyExists"))
                }
                "create" => (StatusCode::CREATED, serde_json::from_slice(&body).unwrap()),
                // Status patches answer with the object; an event's patch is the whole event.
                "patch" => match self.objects.get(&path) {
                    Some(o) => (StatusCode::OK, o.clone()),
                    None => (StatusCode::OK, serde_json::from_slice(&body).unwrap()),
                },
                "delete" => (StatusCode::OK, status(200, "")),
                other => panic!("unexpected verb {other}"),
            })
        }
    }

    /// A client whose requests `fake` answers.
    fn client(fake: Arc<tokio::sync::Mutex<Fake>>) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let mut fake = fake.lock().await;
                match fake.answer(request).await {
                    Some((code, body)) => send.send_response(
                        Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&body).unwrap()))
                            .unwrap(),
                    ),
                    None => fake.pending_watches.push(send),
                }
            }
        });
        Client::new(service, "default")
    }

    const NS: &str = "/namespaces/mail";

    fn fixtures() -> BTreeMap<String, Value> {
        let meta = |name: &str| {
            json!({"name": name, "namespace": "mail", "uid": format!("uid-{name}"),
                                       "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"})
        };
        let profile = json!({
            "apiVersion": "mailvault.io/v1alpha1", "kind": "ArchiveProfile", "metadata": meta("p"),
            "spec": {"mailboxSetRef": {"name": "staff"}, "server": {"host": "imap.example.org"},
                     "store": {"local": {"persistentVolumeClaim": {"claimName": "archive"}}},
                     "trigger": {"manual": "now"}, "successfulRunsHistoryLimit": 0,
                     "failedRunsHistoryLimit": 0}
        });
        // A finished run's plan Secret, deleted once the run is recorded.
        let mut plan_meta = meta("p-old-plan");
        plan_meta["labels"] = json!({"mailvault.io/run": "p-old", "mailvault.io/profile": "p",
                                     "app.kubernetes.io/managed-by": "mailvault"});
        plan_meta["ownerReferences"] = json!([{"apiVersion": "mailvault.io/v1alpha1",
            "kind": "ArchiveProfile", "name": "p", "uid": "uid-p"}]);
        let plan = json!({"apiVersion": "v1", "kind": "Secret", "metadata": plan_meta});
        let set = json!({
            "apiVersion": "mailvault.io/v1alpha1", "kind": "MailboxSet", "metadata": meta("staff"),
            "spec": {"csv": {"secretRef": {"name": "csv"}}}
        });
        let csv = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": meta("csv"),
            // "Login;Password\nalice;pw\n"
            "data": {"mailboxes.csv": "TG9naW47UGFzc3dvcmQKYWxpY2U7cHcK"}
        });
        let job = |name: &str| {
            let mut m = meta(name);
            m["labels"] =
                json!({"mailvault.io/profile": "p", "app.kubernetes.io/managed-by": "mailvault"});
            m["annotations"] = json!({"mailvault.io/shard-sizes": "1"});
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": m,
                   "spec": {"template": {"spec": {"containers": []}}},
                   "status": {"conditions": [{"type": "Complete", "status": "True"}],
                              "completionTime": "2025-01-01T01:00:00Z"}})
        };
        BTreeMap::from([
            (
                format!("/apis/mailvault.io/v1alpha1{NS}/archiveprofiles/p"),
                profile,
            ),
            (
                format!("/apis/mailvault.io/v1alpha1{NS}/mailboxsets/staff"),
                set,
            ),
            (format!("/api/v1{NS}/secrets/csv"), csv),
            (format!("/api/v1{NS}/secrets/p-old-plan"), plan),
            (format!("/apis/batch/v1{NS}/jobs/p-old"), job("p-old")),
        ])
    }

    #[tokio::test]
    async fn the_table_is_what_the_operator_sends() {
        let fake = Arc::new(tokio::sync::Mutex::new(Fake {
            objects: fixtures(),
            ..Default::default()
        }));
        let client = client(fake.clone());
        let ctx = Arc::new(Context::new(
            client.clone(),
            Arc::new(|| chrono::DateTime::from_timestamp(1_735_776_000, 0).unwrap()),
            "img".into(),
            Arc::new(Metrics::default()),
        ));

        // Both controllers start: their watches (list, then watch).
        let controllers = tokio::spawn(operator::controllers(
            client,
            ctx.clone(),
            operator::Readiness::new(&[]),
        ));
        let want_watches = 4; // profiles, sets, secrets, jobs
        for _ in 0..400 {
            let watches = fake
                .lock()
                .await
                .calls
                .iter()
                .filter(|c| c.2 == "watch")
                .count();
            if watches >= want_watches {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        controllers.abort();

        // A profile reconcile that records a finished run (deleting its plan Secret),
        // starts (adopts) a manual one and prunes; twice, so that its events repeat. Then
        // a MailboxSet reconcile.
        let objects = fixtures();
        let get = |path: &str| objects[&format!("/apis/mailvault.io/v1alpha1{NS}/{path}")].clone();
        let p: ArchiveProfile = serde_json::from_value(get("archiveprofiles/p")).unwrap();
        let set: MailboxSet = serde_json::from_value(get("mailboxsets/staff")).unwrap();
        for _ in 0..2 {
            profile::reconcile(Arc::new(p.clone()), ctx.clone())
                .await
                .unwrap();
        }
        mailboxset::reconcile(Arc::new(set), ctx).await.unwrap();

        let sent = fake.lock().await.calls.clone();
        let table: BTreeSet<Call> = API_CALLS
            .iter()
            .map(|c| (c.group.into(), c.resource.into(), c.verb.into()))
            .collect();
        assert_eq!(table.len(), API_CALLS.len(), "duplicates in API_CALLS");
        let missing: Vec<_> = sent.difference(&table).collect();
        let unused: Vec<_> = table.difference(&sent).collect();
        assert!(
            missing.is_empty() && unused.is_empty(),
            "sent but not in API_CALLS: {missing:?}; in API_CALLS but never sent: {unused:?}"
        );
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
