//! The controllers against a mock API server (`kubeapi`, tower-test as in kube-rs's
//! controller-rs). Each ArchiveProfile scenario lists the requests the reconcile must make,
//! in order, and answers them as the API server would: a missing or extra request fails the
//! test. And the table of every request the operator sends (`API_CALLS`, which its RBAC
//! grants) is checked against what both controllers send to an in-memory cluster.

mod kubeapi;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use kubeapi::*;
use mailvault::operator::api::API_CALLS;
use mailvault::operator::{self, mailboxset, profile};
use mailvault::resources::MailboxSet;

#[tokio::test]
async fn new_profile_gets_a_status_and_waits_for_its_slot() {
    let (ctx, mut api) = setup("2025-01-06T10:05:00Z");
    let p = Arc::new(profile(json!({}), Value::Null));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        // Every reconcile reads the set: a missing one shows on Ready at once.
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        let patch = api
            .expect(Method::PATCH, STATUS, patched(this.clone()))
            .await;
        api.done().await;
        patch
    });
    let action = profile::reconcile(p, ctx).await.unwrap();
    let patch = server.await.unwrap();
    let status = &patch["status"];
    assert_eq!(patch["kind"], "ArchiveProfile");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["nextScheduleTime"], "2025-01-07T02:00:00Z");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "Stalled")["status"], "False");
    assert!(status.get("activeRun").is_none());
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
}

#[tokio::test]
async fn a_due_run_creates_its_plan_secret_then_its_job() {
    let (ctx, mut api) = setup("2025-01-07T02:00:30Z");
    let p = Arc::new(profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        api.expect(
            Method::GET,
            "/api/v1/namespaces/mail/secrets/master",
            |_| {
                (
                    200,
                    secret(
                        "master",
                        json!({"username": b64("master"), "password": b64("s3cret-master")}),
                    ),
                )
            },
        )
        .await;
        let set_status = api
            .expect(
                Method::PATCH,
                "/apis/mailvault.io/v1alpha1/namespaces/mail/mailboxsets/staff/status",
                patched(mailbox_set()),
            )
            .await;
        // The plan first: a pod never waits for a Secret that is not there yet.
        let plan = api
            .expect(Method::POST, SECRETS, |b| (201, b.clone()))
            .await;
        let job = api
            .expect(Method::POST, JOBS, |body| {
                let mut job = body.clone();
                job["metadata"]["uid"] = json!("job-uid");
                (201, job)
            })
            .await;
        let patch = api
            .expect(Method::PATCH, STATUS, patched(this.clone()))
            .await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (set_status, job, plan, patch, event)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (set_status, job, plan, patch, event) = server.await.unwrap();

    assert_eq!(set_status["status"]["mailboxes"], 2);
    assert_eq!(condition(&set_status["status"], "Ready")["status"], "True");

    assert_eq!(job["metadata"]["name"], "nightly-202501070200");
    assert_eq!(
        job["metadata"]["labels"]["mailvault.io/run"],
        "nightly-202501070200"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "profile-uid");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["completions"], 2);
    assert_eq!(job["spec"]["parallelism"], 2);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "mailvault:test"
    );
    // The password travels only in the plan Secret.
    assert!(!job.to_string().contains("s3cret-master"));

    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"],
        json!([{"secret": {"name": "nightly-202501070200-plan"}}])
    );
    assert_eq!(plan["metadata"]["name"], "nightly-202501070200-plan");
    assert_eq!(plan["metadata"]["ownerReferences"][0]["uid"], "profile-uid");
    assert_eq!(
        plan["metadata"]["labels"]["mailvault.io/run"],
        "nightly-202501070200"
    );
    assert_eq!(
        plan["metadata"]["annotations"]["mailvault.io/shard-sizes"],
        "1,1"
    );
    let data = |key: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(plan["data"][key].as_str().unwrap())
            .unwrap()
    };
    let plan_json: Value = serde_json::from_slice(&data("plan.json")).unwrap();
    assert_eq!(plan_json["shards"], 2);
    assert_eq!(plan_json["storeDurable"], true);
    assert!(!plan_json.to_string().contains("s3cret-master"));
    let mut shard = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&data("shard-1.json.gz")[..])
        .read_to_string(&mut shard)
        .unwrap();
    let shard: Value = serde_json::from_str(&shard).unwrap();
    assert_eq!(shard[0]["user"], "bob");
    assert_eq!(shard[0]["password"], "s3cret-master");

    let status = &patch["status"];
    assert_eq!(status["activeRun"]["name"], "nightly-202501070200");
    assert_eq!(status["activeRun"]["mailboxes"], 2);
    assert_eq!(status["lastScheduleTime"], "2025-01-07T02:00:00Z");
    assert_eq!(status["nextScheduleTime"], "2025-01-08T02:00:00Z");
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert!(!patch.to_string().contains("s3cret-master"));
    assert_eq!(event["reason"], "RunStarted");
}

#[tokio::test]
async fn a_running_job_shows_as_active_run_and_ready_stays_true() {
    let (ctx, mut api) = setup("2025-01-07T02:10:00Z");
    let p = Arc::new(profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-07T02:00:00Z",
               "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                               "message": "m", "lastTransitionTime": "2025-01-06T10:05:00Z"}]}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| {
            list(vec![job(
                "nightly-202501070200",
                "3,3,2",
                json!({"startTime": "2025-01-07T02:00:32Z", "active": 2, "completedIndexes": "0", "failedIndexes": "2"}),
            )])
        })
        .await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        let patch = api
            .expect(Method::PATCH, STATUS, patched(this.clone()))
            .await;
        api.done().await;
        patch
    });
    profile::reconcile(p, ctx).await.unwrap();
    let patch = server.await.unwrap();
    let active = &patch["status"]["activeRun"];
    assert_eq!(active["name"], "nightly-202501070200");
    assert_eq!(active["startTime"], "2025-01-07T02:00:32Z");
    assert_eq!(
        (
            active["mailboxes"].as_u64(),
            active["mailboxesDone"].as_u64(),
            active["mailboxesFailed"].as_u64()
        ),
        (Some(8), Some(3), Some(2))
    );
    assert_eq!(active["progress"], "5/8 mailboxes, 2 failed");
    let ready = condition(&patch["status"], "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["lastTransitionTime"], "2025-01-06T10:05:00Z");
}

#[tokio::test]
async fn a_finished_job_is_aggregated_recorded_and_old_runs_pruned() {
    let (ctx, mut api) = setup("2025-01-07T02:30:00Z");
    let p = Arc::new(profile(
        json!({"failedRunsHistoryLimit": 1}),
        json!({"lastScheduleTime": "2025-01-07T02:00:00Z",
               "runs": [{"name": "nightly-202501060200", "result": "Failed",
                         "totals": totals(2, 0, 5)}],
               "activeRun": {"name": "nightly-202501070200", "mailboxes": 3, "mailboxesDone": 0, "mailboxesFailed": 0}}),
    ));
    let run = "nightly-202501070200";
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| {
            let mut old = job("nightly-202501060200", "2", json!({"conditions": [{"type": "Failed", "status": "True"}]}));
            old["metadata"]["creationTimestamp"] = json!("2025-01-06T02:00:31Z");
            list(vec![
                old,
                job(run, "2,1", json!({"startTime": "2025-01-07T02:00:32Z", "completionTime": "2025-01-07T02:20:00Z",
                                       "conditions": [{"type": "Failed", "status": "True"}]})),
            ])
        })
        .await;
        api.expect(Method::GET, PODS, |_| {
            list(vec![
                pod(run, 0, "Succeeded", json!({"index": 0, "result": "Succeeded", "totals": totals(2, 0, 10),
                                                 "protocol": "runs/mail/nightly/x-0.json"})),
                pod(run, 1, "Failed", json!({"index": 1, "result": "Failed", "totals": totals(1, 1, 0),
                                              "failed": [{"mailbox": "carol@example.org", "reason": "login as master failed: NO"}]})),
            ])
        })
        .await;
        api.expect(Method::GET, SECRETS, |_| {
            list(vec![
                plan_secret(run, "nightly-202501070200-plan"),
                // Another profile's, and a user's Secret with the same labels: kept.
                {
                    let mut s = plan_secret(run, "nightly-202501070200-plan-1");
                    s["metadata"]["ownerReferences"][0]["uid"] = json!("other-uid");
                    s
                },
            ])
        })
        .await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        api.expect(Method::DELETE, &format!("{SECRETS}/{run}-plan"), |_| {
            (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
        })
        .await;
        api.expect(
            Method::DELETE,
            &format!("{JOBS}/nightly-202501060200"),
            |_| {
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            },
        )
        .await;
        let patch = api
            .expect(Method::PATCH, STATUS, patched(this.clone()))
            .await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (patch, event)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (patch, event) = server.await.unwrap();
    let status = &patch["status"];
    let last = &status["lastRun"];
    assert_eq!(last["name"], run);
    assert_eq!(last["result"], "PartiallyFailed");
    assert_eq!(last["totals"]["archived"], 10);
    assert_eq!(last["totals"]["mailboxes"], 3);
    assert_eq!(last["totals"]["mailboxesFailed"], 1);
    assert_eq!(last["failedMailboxes"][0]["mailbox"], "carol@example.org");
    assert_eq!(last["completionTime"], "2025-01-07T02:20:00Z");
    assert_eq!(last["protocolRef"], "pvc:archive/runs/mail/nightly/");
    assert_eq!(status["runs"][0]["name"], run);
    assert_eq!(status["runs"][1]["name"], "nightly-202501060200");
    assert!(status.get("activeRun").is_none());
    let c = condition(status, "LastRunSucceeded");
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("PartiallyFailed"))
    );
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(event["reason"], "RunFailed");
    assert_eq!(event["type"], "Warning");
}

#[tokio::test]
async fn an_invalid_csv_fails_the_run_visibly_without_a_job() {
    let (ctx, mut api) = setup("2025-01-07T02:00:30Z");
    let p = Arc::new(profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| {
            let mut set = mailbox_set();
            set["spec"] = json!({"csv": {"secretRef": {"name": "mailboxes"}}});
            (200, set)
        })
        .await;
        api.expect(
            Method::GET,
            "/api/v1/namespaces/mail/secrets/mailboxes",
            |_| {
                (
                    200,
                    secret(
                        "mailboxes",
                        json!({"mailboxes.csv": b64("user;password\nalice;\n")}),
                    ),
                )
            },
        )
        .await;
        let set_status = api
            .expect(
                Method::PATCH,
                "/apis/mailvault.io/v1alpha1/namespaces/mail/mailboxsets/staff/status",
                patched(mailbox_set()),
            )
            .await;
        let patch = api
            .expect(Method::PATCH, STATUS, patched(this.clone()))
            .await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (set_status, patch, event)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (set_status, patch, event) = server.await.unwrap();
    assert_eq!(
        condition(&set_status["status"], "Stalled")["status"],
        "True"
    );
    let status = &patch["status"];
    assert_eq!(status["lastRun"]["name"], "nightly-202501070200");
    assert_eq!(status["lastRun"]["result"], "Failed");
    assert!(
        status["lastRun"]["message"]
            .as_str()
            .unwrap()
            .contains("CSV"),
        "{status:#}"
    );
    assert_eq!(condition(status, "LastRunSucceeded")["status"], "False");
    assert_eq!(condition(status, "Stalled")["status"], "True");
    assert_eq!(status["lastScheduleTime"], "2025-01-07T02:00:00Z");
    assert!(status.get("activeRun").is_none());
    assert_eq!(event["reason"], "RunNotStarted");
    assert_eq!(event["type"], "Warning");
}

#[tokio::test]
async fn a_manual_trigger_starts_a_run_named_after_it_and_adopts_an_existing_job() {
    let (ctx, mut api) = setup("2025-01-06T12:00:00Z");
    let p = Arc::new(profile(
        json!({"trigger": {"manual": "ticket-42"}}),
        json!({}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        // The Job exists already (a restart after creating it): adopted, not created again.
        api.expect(Method::GET, JOBS, |_| {
            list(vec![job("nightly-m-ticket-42", "1", json!({"active": 1}))])
        })
        .await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        let patch = api
            .expect(Method::PATCH, STATUS, patched(this.clone()))
            .await;
        api.done().await;
        patch
    });
    profile::reconcile(p, ctx).await.unwrap();
    let patch = server.await.unwrap();
    assert_eq!(patch["status"]["activeRun"]["name"], "nightly-m-ticket-42");
}

#[tokio::test]
async fn a_deleted_profile_is_left_to_owner_references() {
    let (ctx, api) = setup("2025-01-07T02:00:30Z");
    let mut p = profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    );
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2025-01-07T02:00:00Z".parse().unwrap(),
    ));
    let action = profile::reconcile(Arc::new(p), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    api.done().await;
}

#[tokio::test]
async fn a_run_waits_for_a_mailbox_set_that_does_not_exist_yet() {
    // Objects applied together arrive in any order: the profile may come first.
    let (ctx, mut api) = setup("2025-01-07T02:00:30Z");
    let p = Arc::new(profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| not_found()).await;
        let patch = api.expect(Method::PATCH, STATUS, patched(this)).await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (patch, event)
    });
    let action = profile::reconcile(p, ctx).await.unwrap();
    let (patch, event) = server.await.unwrap();
    let status = &patch["status"];
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("ReferenceMissing"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("MailboxSet mail/staff does not exist"),
        "{ready:#}"
    );
    // The slot is not taken: the run starts once the set is there.
    assert_eq!(status["lastScheduleTime"], "2025-01-06T02:00:00Z");
    assert!(status.get("lastRun").is_none());
    assert_eq!(condition(status, "Stalled")["status"], "False");
    assert_eq!(event["reason"], "RunWaiting");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

#[tokio::test]
async fn a_retry_uses_the_plan_an_earlier_attempt_made() {
    // The plan Secrets were made, then creating the Job failed (the API server was away):
    // the retry creates the Job from them, without reading the MailboxSet or directory.
    let (ctx, mut api) = setup("2025-01-07T02:01:30Z");
    let p = Arc::new(profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    ));
    let run = "nightly-202501070200";
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| {
            let mut first = plan_secret(run, &format!("{run}-plan"));
            first["metadata"]["annotations"] = json!({"mailvault.io/plan-parts": "2",
                "mailvault.io/shard-sizes": "3,2", "mailvault.io/profile-generation": "2"});
            list(vec![first, plan_secret(run, &format!("{run}-plan-1"))])
        })
        .await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        let job = api.expect(Method::POST, JOBS, |b| (201, b.clone())).await;
        let patch = api.expect(Method::PATCH, STATUS, patched(this)).await;
        api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (job, patch)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (job, patch) = server.await.unwrap();
    assert_eq!(
        job["metadata"]["annotations"]["mailvault.io/shard-sizes"],
        "3,2"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"],
        json!([{"secret": {"name": format!("{run}-plan")}},
               {"secret": {"name": format!("{run}-plan-1")}}])
    );
    assert_eq!(patch["status"]["activeRun"]["mailboxes"], 5);
}

#[tokio::test]
async fn a_job_the_api_server_refuses_fails_the_run_visibly_once() {
    let (ctx, mut api) = setup("2025-01-07T02:00:30Z");
    let p = Arc::new(profile(
        json!({}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    ));
    let run = "nightly-202501070200";
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        api.expect(Method::GET, &format!("{SECRETS}/master"), |_| {
            (
                200,
                secret(
                    "master",
                    json!({"username": b64("m"), "password": b64("pw")}),
                ),
            )
        })
        .await;
        api.expect(
            Method::PATCH,
            &format!("{SET}/status"),
            patched(mailbox_set()),
        )
        .await;
        api.expect(Method::POST, SECRETS, |b| (201, b.clone()))
            .await;
        api.expect(Method::POST, JOBS, |_| {
            (422, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "Invalid", "code": 422,
                         "message": "Job.batch \"x\" is invalid: spec.template.spec.containers[0].volumeMounts[4].name: Not found: \"data\""}))
        })
        .await;
        // Its plan goes at once: the run is over.
        api.expect(Method::DELETE, &format!("{SECRETS}/{run}-plan"), |_| {
            ok_status()
        })
        .await;
        let patch = api.expect(Method::PATCH, STATUS, patched(this)).await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (patch, event)
    });
    let action = profile::reconcile(p, ctx).await.unwrap();
    let (patch, event) = server.await.unwrap();
    let status = &patch["status"];
    let message = status["lastRun"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused the run's Job") && message.contains("volumeMounts[4].name"),
        "{message}"
    );
    assert_eq!(status["lastRun"]["name"], run);
    assert_eq!(condition(status, "Stalled")["reason"], "JobRejected");
    assert_eq!(event["reason"], "RunNotStarted");
    // The slot is taken: no retry until the next slot or a fix of the spec.
    assert_eq!(status["lastScheduleTime"], "2025-01-07T02:00:00Z");
    assert_ne!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn a_store_that_vanishes_with_the_pod_is_refused_without_a_job() {
    let (ctx, mut api) = setup("2025-01-07T02:00:30Z");
    let p = Arc::new(profile(
        json!({"store": {"local": {"path": "/tmp/archive"}},
               "deletion": {"mode": "AfterArchiving"}}),
        json!({"lastScheduleTime": "2025-01-06T02:00:00Z"}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| list(vec![])).await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        let patch = api.expect(Method::PATCH, STATUS, patched(this)).await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (patch, event)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (patch, event) = server.await.unwrap();
    let status = &patch["status"];
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("StoreNotDurable"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("/tmp/archive") && message.contains("persistentVolumeClaim"),
        "{message}"
    );
    assert_eq!(condition(status, "Stalled")["reason"], "StoreNotDurable");
    assert_eq!(status["lastRun"]["result"], "Failed");
    assert_eq!(event["reason"], "RunNotStarted");
}

#[tokio::test]
async fn a_run_none_of_whose_pods_can_start_is_failed_and_stopped() {
    let (ctx, mut api) = setup("2025-01-07T02:20:00Z");
    let run = "nightly-202501070200";
    let p = Arc::new(profile(
        json!({"jobTemplate": {"pendingDeadlineSeconds": 600}}),
        json!({"lastScheduleTime": "2025-01-07T02:00:00Z",
               "activeRun": {"name": run, "mailboxes": 3, "mailboxesDone": 0, "mailboxesFailed": 0}}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| {
            list(vec![job(run, "2,1", json!({"active": 2, "ready": 0}))])
        })
        .await;
        api.expect(Method::GET, PODS, |_| {
            list(vec![json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{run}-0-abcde"), "namespace": "mail",
                             "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
                "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "image": "i",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}}}]}})])
        })
        .await;
        // Everything is read before anything is done.
        api.expect(Method::GET, SECRETS, |_| {
            list(vec![plan_secret(run, &format!("{run}-plan"))])
        })
        .await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        api.expect(Method::DELETE, &format!("{JOBS}/{run}"), |_| ok_status())
            .await;
        api.expect(Method::DELETE, &format!("{SECRETS}/{run}-plan"), |_| {
            ok_status()
        })
        .await;
        let patch = api.expect(Method::PATCH, STATUS, patched(this)).await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (patch, event)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (patch, event) = server.await.unwrap();
    let status = &patch["status"];
    assert!(status.get("activeRun").is_none(), "{status:#}");
    assert_eq!(status["lastRun"]["name"], run);
    assert_eq!(status["lastRun"]["result"], "Failed");
    assert_eq!(status["lastRun"]["totals"]["mailboxesFailed"], 3);
    let reason = status["lastRun"]["failedMailboxes"][0]["reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("ErrImagePull: pull access denied") && reason.contains("1169 s"),
        "{reason}"
    );
    assert_eq!(event["reason"], "RunFailed");
}

#[tokio::test]
async fn a_manual_trigger_value_used_before_says_so() {
    let (ctx, mut api) = setup("2025-01-08T12:00:00Z");
    let p = Arc::new(profile(
        json!({"trigger": {"manual": "a"}}),
        json!({"lastManualTrigger": "b", "lastScheduleTime": "2025-01-08T02:00:00Z",
               "runs": [{"name": "nightly-m-b", "result": "Succeeded", "totals": totals(1, 0, 1)},
                        {"name": "nightly-m-a", "result": "Succeeded", "totals": totals(1, 0, 1)}]}),
    ));
    let this = serde_json::to_value(&*p).unwrap();
    let server = tokio::spawn(async move {
        api.expect(Method::GET, JOBS, |_| {
            let done = json!({"conditions": [{"type": "Complete", "status": "True"}]});
            let mut a = job("nightly-m-a", "1", done.clone());
            a["metadata"]["creationTimestamp"] = json!("2025-01-07T00:00:00Z");
            list(vec![a, job("nightly-m-b", "1", done)])
        })
        .await;
        api.expect(Method::GET, SECRETS, |_| list(vec![])).await;
        api.expect(Method::GET, SET, |_| (200, mailbox_set())).await;
        let patch = api.expect(Method::PATCH, STATUS, patched(this)).await;
        let event = api.expect(Method::POST, EVENTS, echo).await;
        api.done().await;
        (patch, event)
    });
    profile::reconcile(p, ctx).await.unwrap();
    let (patch, event) = server.await.unwrap();
    assert_eq!(patch["status"]["lastManualTrigger"], "a");
    assert!(patch["status"].get("activeRun").is_none());
    assert_eq!(event["reason"], "TriggerAlreadyUsed");
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"].as_str().unwrap().contains("set a new value"),
        "{event:#}"
    );
}

#[tokio::test]
async fn the_api_calls_table_is_what_the_operator_sends() {
    let run = "nightly-202501060200";
    let done = json!({"conditions": [{"type": "Complete", "status": "True"}],
                      "completionTime": "2025-01-07T01:00:00Z"});
    let p = profile(
        json!({"trigger": {"manual": "now"}, "successfulRunsHistoryLimit": 0,
               "failedRunsHistoryLimit": 0}),
        Value::Null,
    );
    let set = mailbox_set();
    let cluster = Arc::new(tokio::sync::Mutex::new(Cluster::with([
        serde_json::to_value(&p).unwrap(),
        set.clone(),
        secret(
            "master",
            json!({"username": b64("master"), "password": b64("pw")}),
        ),
        // A finished run, and its plan Secret, deleted once the run is recorded.
        job(run, "1", done),
        plan_secret(run, &format!("{run}-plan")),
    ])));
    let (ctx, api) = setup("2025-01-07T02:30:00Z");
    api.serve(cluster.clone());

    // Both controllers start: their watches (list, then watch).
    let controllers = tokio::spawn(operator::controllers(
        ctx.client.clone(),
        ctx.clone(),
        operator::Readiness::new(&[]),
    ));
    let want_watches = 4; // profiles, sets, secrets, jobs
    for _ in 0..400 {
        let calls = cluster.lock().await.calls.clone();
        if calls.iter().filter(|c| c.2 == "watch").count() >= want_watches {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    controllers.abort();

    // A profile reconcile that records a finished run (deleting its plan Secret), starts
    // (adopts) a manual one and prunes; twice, so that its events repeat. Then a
    // MailboxSet reconcile.
    for _ in 0..2 {
        profile::reconcile(Arc::new(p.clone()), ctx.clone())
            .await
            .unwrap();
    }
    let set: MailboxSet = serde_json::from_value(set).unwrap();
    mailboxset::reconcile(Arc::new(set), ctx).await.unwrap();

    let sent = cluster.lock().await.calls.clone();
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
