//! `mailvault operator`: both controllers, and the HTTP endpoints for probes and metrics.
//!
//! One replica is enough and is what the manifests deploy. Two replicas (e.g. during a
//! rolling update) are safe without leader election: run names are deterministic, a Job
//! that exists is adopted instead of created twice, and statuses are applied whole.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use futures::StreamExt;
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

use super::context::{backoff, Context, Error};
use super::mailboxset;
use super::metrics::Metrics;
use super::profile;
use crate::resources::{ArchiveProfile, MailboxSet};

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
pub async fn main(args: OperatorArgs) -> u8 {
    // KUBECONFIG, ~/.kube/config or the in-cluster service account, as kubectl does.
    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: connecting to Kubernetes: {e}");
            return 1;
        }
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(serve(args.listen, metrics.clone(), ready.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(chrono::Utc::now),
        args.worker_image,
        metrics,
    ));
    ready.store(true, Ordering::SeqCst);
    run(client, ctx).await;
    server.abort();
    0
}

/// Both controllers until shutdown; every request they send is in [`super::api::API_CALLS`].
pub(super) async fn run(client: Client, ctx: Arc<Context>) {
    let profiles: Api<ArchiveProfile> = Api::all(client.clone());
    let sets: Api<MailboxSet> = Api::all(client.clone());
    // Secrets by metadata only: the operator keeps no Secret contents in memory.
    let secrets: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());

    // Only spec changes (generation) trigger a reconcile of the main objects: the status
    // the operator writes itself must not.
    let (set_reader, set_writer) = reflector::store();
    let set_stream = watcher(sets.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(set_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let (profile_reader, profile_writer) = reflector::store();
    let profile_stream = watcher(profiles, watcher::Config::default())
        .default_backoff()
        .reflect(profile_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    let profiles_for_set = profile_reader.clone();
    let profiles_for_secret = profile_reader.clone();
    let sets_for_secret = set_reader.clone();
    let profile_controller = Controller::for_stream(profile_stream, profile_reader)
        .owns(
            jobs,
            watcher::Config::default().labels(&format!(
                "{}={}",
                super::job::LABEL_MANAGED_BY,
                super::job::MANAGED_BY
            )),
        )
        .watches(sets, watcher::Config::default(), move |set: MailboxSet| {
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
        .watches(
            secrets.clone(),
            watcher::Config::default(),
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
        .run(profile::reconcile, profile_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let sets_for_secret = set_reader.clone();
    let set_controller = Controller::for_stream(set_stream, set_reader)
        .watches(
            secrets,
            watcher::Config::default(),
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
        .run(mailboxset::reconcile, set_error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    futures::join!(profile_controller, set_controller);
}

fn policy<K: kube::Resource<DynamicType = ()>>(
    controller: &'static str,
    object: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    let key = format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or(""),
        object.meta().name.as_deref().unwrap_or("")
    );
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

/// A minimal HTTP/1 server: `/metrics`, `/healthz` (the process serves), `/readyz` (the
/// controllers run).
async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
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
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.uri().path(), &metrics, ready.load(Ordering::SeqCst));
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
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
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
    fn endpoints() {
        let m = Metrics::default();
        assert_eq!(respond("/healthz", &m, false).status(), 200);
        assert_eq!(respond("/readyz", &m, false).status(), 503);
        assert_eq!(respond("/readyz", &m, true).status(), 200);
        assert_eq!(respond("/metrics", &m, true).status(), 200);
        assert_eq!(respond("/nope", &m, true).status(), 404);
    }
}
