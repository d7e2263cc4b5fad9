//! `mailvault operator`: the Kubernetes operator. Its controllers reconcile ArchiveProfiles
//! ([`profile`]) and MailboxSets ([`mailboxset`]) from their watches; the decisions they are
//! made of (schedule, names, shards, history, summaries, conditions) are pure functions,
//! tested with a fake clock and no API server. This module starts the controllers and
//! serves the HTTP endpoints for probes and metrics.
//!
//! One replica is enough and is what the manifests deploy. Two replicas (e.g. during a
//! rolling update) are safe without leader election: run names are deterministic, a Job
//! that exists is adopted instead of created twice, and statuses are applied whole.

pub mod api;
pub mod conditions;
pub mod context;
pub mod history;
pub mod job;
pub mod mailboxset;
pub mod metrics;
pub mod names;
pub mod profile;
pub mod schedule;
pub mod status;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Args;
use futures::{Stream, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{predicates, reflector, watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};

use crate::resources::{ArchiveProfile, MailboxSet};
use context::{backoff, Context, Error};
use metrics::Metrics;

/// How the operator names itself in every API request, so that audit logs tell its
/// requests from everyone else's.
pub const USER_AGENT: &str = concat!("mailvault-operator/", env!("CARGO_PKG_VERSION"));

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The archiving pods' image unless a profile names one: the operator's own, which its
    /// Deployment passes in.
    #[arg(long, env = "MAILVAULT_WORKER_IMAGE")]
    pub worker_image: String,
}

/// Runs the operator until SIGTERM or Ctrl-C; returns the exit code.
pub async fn operate(args: OperatorArgs) -> u8 {
    let client = match client().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "connecting to Kubernetes failed");
            return 1;
        }
    };
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::new(&WATCHES);
    let server = tokio::spawn(serve_endpoints(
        args.listen,
        metrics.clone(),
        readiness.clone(),
    ));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(chrono::Utc::now),
        args.worker_image,
        metrics,
    ));
    controllers(client, ctx, readiness).await;
    server.abort();
    0
}

/// A client configured like kubectl (`KUBECONFIG`, `~/.kube/config` or the in-cluster
/// service account) that sends [`USER_AGENT`].
async fn client() -> Result<Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Every watch the controllers keep; the operator is ready once each has listed its
/// objects.
const WATCHES: [&str; 6] = [
    "archiveprofiles",
    "mailboxsets",
    "jobs",
    "mailboxsets (for profiles)",
    "secrets (for profiles)",
    "secrets (for mailboxsets)",
];

/// Which watches have not yet delivered their first complete list. `/readyz` fails until
/// none is left: before that, the controllers would act on a partial view (and the
/// metrics would miss profiles).
#[derive(Clone)]
pub struct Readiness(Arc<Mutex<BTreeSet<&'static str>>>);

impl Readiness {
    pub fn new(pending: &[&'static str]) -> Self {
        Readiness(Arc::new(Mutex::new(pending.iter().copied().collect())))
    }

    fn listed(&self, watch: &'static str) {
        self.0.lock().expect("readiness lock").remove(watch);
    }

    pub fn ready(&self) -> bool {
        self.0.lock().expect("readiness lock").is_empty()
    }

    /// `events`, noting when `watch` has listed everything (after the cache, if any, took
    /// the list in).
    fn track<K, S>(&self, watch: &'static str, events: S) -> impl Stream<Item = S::Item>
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    {
        let readiness = self.clone();
        events.inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                readiness.listed(watch);
            }
        })
    }
}

/// Both controllers until shutdown; every request they send is in [`api::API_CALLS`].
pub async fn controllers(client: Client, ctx: Arc<Context>, readiness: Readiness) {
    let profiles: Api<ArchiveProfile> = Api::all(client.clone());
    let sets: Api<MailboxSet> = Api::all(client.clone());
    // Secrets and Jobs by metadata only: the operator keeps no Secret contents in memory,
    // and the API server sends none.
    let secrets: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
    let jobs: Api<PartialObjectMeta<Job>> = Api::all(client.clone());
    let secret_events = |watch| {
        readiness
            .track(
                watch,
                watcher(secrets.clone(), watcher::Config::default()).default_backoff(),
            )
            .touched_objects()
    };

    // Only spec changes (generation) trigger a reconcile of the main objects: the status
    // the operator writes itself must not. The caches see every change, status included:
    // the metrics show what the statuses say.
    let (set_reader, set_writer) = reflector::store();
    let set_stream = readiness
        .track(
            "mailboxsets",
            watcher(sets.clone(), watcher::Config::default())
                .default_backoff()
                .reflect(set_writer),
        )
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let (profile_reader, profile_writer) = reflector::store();
    let profile_stream = readiness
        .track(
            "archiveprofiles",
            watcher(profiles, watcher::Config::default())
                .default_backoff()
                .reflect(profile_writer),
        )
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    ctx.metrics
        .watch(profile_reader.clone(), set_reader.clone());

    let profiles_for_set = profile_reader.clone();
    let profiles_for_secret = profile_reader.clone();
    let sets_for_secret = set_reader.clone();
    let job_events = readiness
        .track(
            "jobs",
            watcher(
                jobs,
                watcher::Config::default().labels(&format!(
                    "{}={}",
                    job::LABEL_MANAGED_BY,
                    job::MANAGED_BY
                )),
            )
            .default_backoff(),
        )
        .touched_objects();
    let set_events = readiness
        .track(
            "mailboxsets (for profiles)",
            watcher(sets, watcher::Config::default()).default_backoff(),
        )
        .touched_objects();
    let profile_controller = Controller::for_stream(profile_stream, profile_reader)
        .owns_stream(job_events)
        .watches_stream(set_events, move |set: MailboxSet| {
            profiles_for_set
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace() == set.namespace()
                        && p.spec.mailbox_set_ref.name == set.name_any()
                })
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .watches_stream(
            secret_events("secrets (for profiles)"),
            move |secret: PartialObjectMeta<Secret>| {
                let name = secret.name_any();
                let sets = sets_for_secret.state();
                profiles_for_secret
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == secret.namespace())
                    .filter(|p| {
                        let set = sets.iter().find(|s| {
                            s.namespace() == p.namespace()
                                && s.name_any() == p.spec.mailbox_set_ref.name
                        });
                        match set {
                            Some(set) => mailboxset::references(set, Some(p), &name),
                            None => p
                                .spec
                                .server
                                .ca_secret_ref
                                .as_ref()
                                .is_some_and(|r| r.name == name),
                        }
                    })
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            |p, ctx: Arc<Context>| async move {
                let key = object_key(&*p);
                let result = profile::reconcile(p, ctx.clone()).await;
                if result.is_ok() {
                    ctx.metrics.reconcile_succeeded("ArchiveProfile", key);
                }
                result
            },
            profile_error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));

    let sets_for_secret = set_reader.clone();
    let set_controller = Controller::for_stream(set_stream, set_reader)
        .watches_stream(
            secret_events("secrets (for mailboxsets)"),
            move |secret: PartialObjectMeta<Secret>| {
                let name = secret.name_any();
                sets_for_secret
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.namespace() == secret.namespace()
                            && mailboxset::references(s, None, &name)
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            |s, ctx: Arc<Context>| async move {
                let key = object_key(&*s);
                let result = mailboxset::reconcile(s, ctx.clone()).await;
                if result.is_ok() {
                    ctx.metrics.reconcile_succeeded("MailboxSet", key);
                }
                result
            },
            set_error_policy,
            ctx,
        )
        .for_each(|_| futures::future::ready(()));
    futures::join!(profile_controller, set_controller);
}

/// `namespace/name`, the key of an object's failure streak.
fn object_key<K: kube::Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or(""),
        object.meta().name.as_deref().unwrap_or("")
    )
}

fn policy<K: kube::Resource<DynamicType = ()>>(
    controller: &'static str,
    object: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    let key = object_key(object);
    let failures = ctx
        .metrics
        .reconcile_failed(controller, key.clone(), error.metric_label());
    tracing::warn!(controller, object = %key, failures, %error, "reconcile failed");
    backoff(failures)
}

fn profile_error_policy(p: Arc<ArchiveProfile>, error: &Error, ctx: Arc<Context>) -> Action {
    policy("ArchiveProfile", &*p, error, &ctx)
}

fn set_error_policy(s: Arc<MailboxSet>, error: &Error, ctx: Arc<Context>) -> Action {
    policy("MailboxSet", &*s, error, &ctx)
}

/// A minimal HTTP/1 server: `/metrics`, `/healthz` (the process serves), `/readyz` (every
/// watch has listed its objects).
async fn serve_endpoints(addr: SocketAddr, metrics: Arc<Metrics>, readiness: Readiness) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.uri().path(), &metrics, readiness.ready());
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The response to a GET of `path`.
pub fn respond(path: &str, metrics: &Metrics, ready: bool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            metrics.render(chrono::Utc::now()),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" if ready => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => (503, "text/plain", "starting\n".to_string()),
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static responses build")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_watch_listed() {
        let r = Readiness::new(&["a", "b"]);
        assert!(!r.ready());
        r.listed("a");
        r.listed("a");
        assert!(!r.ready());
        r.listed("b");
        assert!(r.ready());
    }

    #[test]
    fn endpoints() {
        let m = Metrics::default();
        assert_eq!(respond("/healthz", &m, false).status(), 200);
        assert_eq!(respond("/readyz", &m, false).status(), 503);
        assert_eq!(respond("/readyz", &m, true).status(), 200);
        assert_eq!(respond("/metrics", &m, true).status(), 200);
        assert_eq!(respond("/nope", &m, true).status(), 404);
    }
}
