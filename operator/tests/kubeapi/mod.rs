//! One mock Kubernetes API server for the controller tests (tower-test, as in kube-rs's
//! controller-rs), and the objects they share. It answers in one of two ways: a scenario
//! lists the requests a reconcile must make, in order ([`MockApi::expect`]), or a small
//! in-memory cluster answers whatever comes and records it ([`Cluster`]).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use mailvault::operator::api::classify;
use mailvault::operator::context::Context;
use mailvault::operator::metrics::Metrics;
use mailvault::resources::ArchiveProfile;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The API server side of a client.
pub struct MockApi(Handle);

/// A controller context whose client `MockApi` answers, on a clock stopped at `now`.
pub fn setup(now: &str) -> (Arc<Context>, MockApi) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "mail");
    let now = mailvault::time::parse(now).unwrap();
    let ctx = Context::new(
        client,
        Arc::new(move || now),
        "mailvault:test".into(),
        Arc::new(Metrics::default()),
    );
    (Arc::new(ctx), MockApi(handle))
}

impl MockApi {
    /// Expects a request `method` on `path` (without query), answers `respond(body)`, and
    /// returns the request's JSON body.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        respond: impl FnOnce(&Value) -> (u16, Value),
    ) -> Value {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request; expected {method} {path}"))
            .expect("the client is alive");
        let actual = format!("{} {}", request.method(), request.uri().path());
        assert_eq!(actual, format!("{method} {path}"), "uri {}", request.uri());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (status, answer) = respond(&body);
        send.send_response(response(status, &answer));
        body
    }

    /// Expects no further request.
    pub async fn done(mut self) {
        let next = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }

    /// Answers every request from now on from `cluster`.
    pub fn serve(mut self, cluster: Arc<tokio::sync::Mutex<Cluster>>) {
        tokio::spawn(async move {
            while let Some((request, send)) = self.0.next_request().await {
                let mut cluster = cluster.lock().await;
                match cluster.answer(request).await {
                    Some((status, body)) => send.send_response(response(status, &body)),
                    None => cluster.pending_watches.push(send),
                }
            }
        });
    }
}

fn response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// A request as RBAC names it: group, resource, verb.
pub type Call = (String, String, String);

/// A cluster in memory: objects by path (without `/status`), every request recorded.
/// Creating a Job answers 409 as if another replica had just created it, so that the run
/// adopts it; watches never answer, as a quiet cluster's would not.
#[derive(Default)]
pub struct Cluster {
    pub objects: BTreeMap<String, Value>,
    pub calls: BTreeSet<Call>,
    pending_watches: Vec<tower_test::mock::SendResponse<Response<Body>>>,
}

impl Cluster {
    /// A cluster holding `objects`, each at its path.
    pub fn with(objects: impl IntoIterator<Item = Value>) -> Self {
        let objects = objects.into_iter().map(|o| (path_of(&o), o)).collect();
        Cluster {
            objects,
            ..Default::default()
        }
    }

    async fn answer(&mut self, request: Request<Body>) -> Option<(u16, Value)> {
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let call = classify(method.as_str(), target)
            .unwrap_or_else(|| panic!("not an API request: {method} {uri}"));
        self.calls.insert(call.clone());
        let body = request.into_body().collect_bytes().await.unwrap();
        let path = uri.path().trim_end_matches("/status").to_string();
        let (_, resource, verb) = call;
        let ok = StatusCode::OK.as_u16();
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
                (ok, list)
            }
            "get" => match self.objects.get(&path) {
                Some(o) => (ok, o.clone()),
                None => not_found(),
            },
            "create" if resource == "jobs" => {
                let mut job: Value = serde_json::from_slice(&body).unwrap();
                let name = job["metadata"]["name"].as_str().unwrap().to_string();
                job["metadata"]["uid"] = json!(format!("uid-{name}"));
                self.objects.insert(format!("{path}/{name}"), job);
                (409, api_status(409, "AlreadyExists"))
            }
            "create" => (201, serde_json::from_slice(&body).unwrap()),
            // Status patches answer with the object; an event's patch is the whole event.
            "patch" => match self.objects.get(&path) {
                Some(o) => (ok, o.clone()),
                None => (ok, serde_json::from_slice(&body).unwrap()),
            },
            "delete" => ok_status(),
            other => panic!("unexpected verb {other}"),
        })
    }
}

/// The path of a namespaced object in the API.
fn path_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap();
    let base = match api_version {
        "v1" => "/api/v1".to_string(),
        group => format!("/apis/{group}"),
    };
    let resource = match object["kind"].as_str().unwrap() {
        "ArchiveProfile" => "archiveprofiles",
        "MailboxSet" => "mailboxsets",
        "Secret" => "secrets",
        "Job" => "jobs",
        "Pod" => "pods",
        other => panic!("no path for {other}"),
    };
    format!(
        "{base}/namespaces/{}/{resource}/{}",
        object["metadata"]["namespace"].as_str().unwrap(),
        object["metadata"]["name"].as_str().unwrap()
    )
}

pub const JOBS: &str = "/apis/batch/v1/namespaces/mail/jobs";
pub const PODS: &str = "/api/v1/namespaces/mail/pods";
pub const SECRETS: &str = "/api/v1/namespaces/mail/secrets";
pub const SET: &str = "/apis/mailvault.io/v1alpha1/namespaces/mail/mailboxsets/staff";
pub const STATUS: &str =
    "/apis/mailvault.io/v1alpha1/namespaces/mail/archiveprofiles/nightly/status";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/mail/events";

fn api_status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
           "status": if code < 300 { "Success" } else { "Failure" },
           "reason": reason, "code": code, "message": reason})
}

pub fn not_found() -> (u16, Value) {
    (404, api_status(404, "NotFound"))
}

pub fn ok_status() -> (u16, Value) {
    (200, api_status(200, ""))
}

pub fn list(items: Vec<Value>) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
    )
}

/// Answers a create with the object.
pub fn echo(body: &Value) -> (u16, Value) {
    (200, body.clone())
}

/// Answers a status patch of `object` with the object and the patched status.
pub fn patched(object: Value) -> impl FnOnce(&Value) -> (u16, Value) {
    move |body| {
        let mut object = object;
        object["status"] = body["status"].clone();
        (200, object)
    }
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_} in {status:#}"))
}

/// The ArchiveProfile `mail/nightly`: nightly at 02:00 into a claim, four Jobs at a time,
/// with `extra_spec` over that.
pub fn profile(extra_spec: Value, status: Value) -> ArchiveProfile {
    let mut spec = json!({
        "mailboxSetRef": {"name": "staff"},
        "server": {"host": "imap.example.org"},
        "maxParallelJobs": 4,
        "schedule": {"cron": "0 2 * * *"},
        "store": {"local": {"persistentVolumeClaim": {"claimName": "archive"}}},
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra_spec.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "mailvault.io/v1alpha1",
        "kind": "ArchiveProfile",
        "metadata": {"name": "nightly", "namespace": "mail", "uid": "profile-uid", "generation": 2,
                     "creationTimestamp": "2025-01-06T10:00:00Z"},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

/// The MailboxSet `mail/staff`: two static users through the master user of the Secret
/// `master`.
pub fn mailbox_set() -> Value {
    json!({
        "apiVersion": "mailvault.io/v1alpha1", "kind": "MailboxSet",
        "metadata": {"name": "staff", "namespace": "mail", "uid": "set-uid", "generation": 1},
        "spec": {"masterPassword": {
            "credentialsSecretRef": {"name": "master"},
            "staticUsers": [{"name": "alice", "email": "alice@example.org"},
                            {"name": "bob", "email": "bob@example.org"}]}}
    })
}

pub fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "mail"}, "data": data})
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A plan Secret of `run` owned by the profile, as a metadata list returns it.
pub fn plan_secret(run: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "mail",
                        "creationTimestamp": "2025-01-07T02:00:30Z",
                        "labels": {"mailvault.io/run": run, "mailvault.io/profile": "nightly",
                                   "app.kubernetes.io/managed-by": "mailvault"},
                        "ownerReferences": [{"apiVersion": "mailvault.io/v1alpha1",
                                             "kind": "ArchiveProfile", "name": "nightly",
                                             "uid": "profile-uid"}]}})
}

/// The profile's Job (run) `name` with the shard sizes `sizes` (`"2,1"`).
pub fn job(name: &str, sizes: &str, status: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "mail", "uid": format!("{name}-uid"),
                     "creationTimestamp": "2025-01-07T02:00:31Z",
                     "labels": {"mailvault.io/profile": "nightly", "mailvault.io/run": name,
                                "app.kubernetes.io/managed-by": "mailvault"},
                     "annotations": {"mailvault.io/shard-sizes": sizes}},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status,
    })
}

/// A pod of index `index` of Job `job` that ended with the termination message `message`.
pub fn pod(job: &str, index: u32, phase: &str, message: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{job}-{index}-abcde"), "namespace": "mail",
                     "creationTimestamp": "2025-01-07T02:00:33Z",
                     "annotations": {"batch.kubernetes.io/job-completion-index": index.to_string()}},
        "status": {"phase": phase, "containerStatuses": [{
            "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "message": message.to_string()}}}]}
    })
}

pub fn totals(mailboxes: u64, failed: u64, archived: u64) -> Value {
    json!({"mailboxes": mailboxes, "mailboxesFailed": failed, "archived": archived, "alreadyArchived": 1,
           "failed": 0, "deleted": 0, "bytes": archived * 100, "skipped": 0})
}
