//! The Kubernetes objects of a run: its indexed Job and the plan Secret the Job's pods
//! mount. Built here as plain values (and tested as such); the reconciler only sends them.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use kube::Resource;

use super::names::PLAN_SUFFIX;
use crate::resources::{namespace_of, ArchiveProfile, LocalStoreSpec, StoreSpec};
use crate::worker::{EXIT_INVALID_PLAN, EXIT_LOGIN_REJECTED, PLAN_KEY};

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "mailvault";
pub const LABEL_PROFILE: &str = "mailvault.io/profile";
pub const LABEL_RUN: &str = "mailvault.io/run";
/// How many mailboxes each index has (`"3,3,2"`), for progress and for shards that report
/// nothing.
pub const ANNOTATION_SHARD_SIZES: &str = "mailvault.io/shard-sizes";
/// The label Kubernetes puts on a Job's pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The annotation Kubernetes puts on an indexed Job's pods.
pub const ANNOTATION_COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The worker container's name.
pub const CONTAINER: &str = "worker";
/// Retries of one index before it counts as failed: enough for a restarted node or a
/// server hiccup, few enough that a broken mailbox does not run all night.
const BACKOFF_LIMIT_PER_INDEX: i32 = 2;
const PLAN_DIR: &str = "/etc/mailvault/plan";
/// Where the claim of `spec.store.local.persistentVolumeClaim` is mounted in the pods.
pub const ARCHIVE_DIR: &str = "/var/lib/mailvault/archive";
const ARCHIVE_VOLUME: &str = "archive";
/// An unprivileged user and group (the distroless "nonroot" one).
const RUN_AS: i64 = 65532;

/// The plan Secret's name for a run.
pub fn plan_secret_name(run: &str) -> String {
    format!("{run}{PLAN_SUFFIX}")
}

/// The operator's labels of a run's objects. The profile's own labels and annotations are
/// never copied: they may carry anything, and the profile is not the Job.
fn run_labels(profile: &str, run: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_PROFILE.to_string(), profile.to_string()),
        (LABEL_RUN.to_string(), run.to_string()),
    ])
}

/// The Job of run `run` of `profile`: one index per shard, `maxParallelJobs` at a time,
/// owned by the profile so that deleting the profile deletes its Jobs (and nothing in the
/// archive). `default_image` is the operator's own image.
pub fn build(profile: &ArchiveProfile, run: &str, shard_sizes: &[u64], default_image: &str) -> Job {
    let name = profile.metadata.name.clone().unwrap_or_default();
    let template = profile.spec.job_template.clone().unwrap_or_default();
    let mut labels = template.labels.clone();
    labels.extend(run_labels(&name, run));
    let mut annotations = template.annotations.clone();
    let pod_annotations = annotations.clone();
    annotations.insert(
        ANNOTATION_SHARD_SIZES.to_string(),
        shard_sizes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    let shards = shard_sizes.len().max(1) as i32;
    let mut volumes = vec![
        Volume {
            name: "plan".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(plan_secret_name(run)),
                // Group-readable: the pod's fsGroup owns the files, the user is not root.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let store_credentials = profile
        .spec
        .store
        .as_ref()
        .and_then(|s| s.s3.as_ref())
        .and_then(|s3| s3.credentials_secret_ref.as_ref());
    if let Some(secret) = store_credentials {
        // Credentials as files, never as environment variables (which leak into crash
        // dumps and `kubectl describe`).
        volumes.push(Volume {
            name: "store-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let claim = profile
        .spec
        .store
        .as_ref()
        .and_then(|s| s.local.as_ref())
        .and_then(|l| l.persistent_volume_claim.as_ref());
    if let Some(claim) = claim {
        volumes.push(Volume {
            name: ARCHIVE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.claim_name.clone(),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    volumes.extend(template.volumes.iter().cloned());
    let mut volume_mounts = vec![
        VolumeMount {
            name: "plan".into(),
            mount_path: PLAN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if store_credentials.is_some() {
        volume_mounts.push(VolumeMount {
            name: "store-credentials".into(),
            mount_path: crate::worker::STORE_CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if claim.is_some() {
        volume_mounts.push(VolumeMount {
            name: ARCHIVE_VOLUME.into(),
            mount_path: ARCHIVE_DIR.into(),
            ..Default::default()
        });
    }
    volume_mounts.extend(template.volume_mounts.iter().cloned());
    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            template
                .image
                .clone()
                .unwrap_or_else(|| default_image.to_string()),
        ),
        args: Some(vec![
            "worker".into(),
            "--plan".into(),
            format!("{PLAN_DIR}/{PLAN_KEY}"),
        ]),
        env: Some(vec![EnvVar {
            name: "MAILVAULT_LOG_FORMAT".into(),
            value: Some("json".into()),
            ..Default::default()
        }]),
        resources: template.resources.clone(),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("File".into()),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        // The worker never talks to the API server; a token is only mounted when the
        // profile names a service account (for a store that authenticates with it).
        automount_service_account_token: Some(template.service_account_name.is_some()),
        service_account_name: template.service_account_name.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!template.node_selector.is_empty()).then(|| template.node_selector.clone()),
        tolerations: (!template.tolerations.is_empty()).then(|| template.tolerations.clone()),
        affinity: template.affinity.clone(),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(run.to_string()),
            namespace: Some(namespace_of(&profile.metadata).to_string()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            owner_references: profile.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(shards),
            parallelism: Some((profile.spec.max_parallel_jobs as i32).clamp(1, shards)),
            backoff_limit_per_index: Some(BACKOFF_LIMIT_PER_INDEX),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![
                    // A drained node or a preempted pod is no failure of the shard.
                    PodFailurePolicyRule {
                        action: "Ignore".into(),
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".into(),
                            status: Some("True".into()),
                        }]),
                        ..Default::default()
                    },
                    // An invalid plan or rejected logins: retrying cannot help.
                    PodFailurePolicyRule {
                        action: "FailIndex".into(),
                        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                            container_name: Some(CONTAINER.into()),
                            operator: "In".into(),
                            values: vec![
                                i32::from(EXIT_INVALID_PLAN),
                                i32::from(EXIT_LOGIN_REJECTED),
                            ],
                        }),
                        ..Default::default()
                    },
                ],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The store as the worker opens it, for its run plan: a claim's path becomes the path
/// below [`ARCHIVE_DIR`], where [`build`] mounts the claim. Other stores pass unchanged.
pub fn worker_store(store: Option<&StoreSpec>) -> Option<StoreSpec> {
    let mut store = store.cloned()?;
    if let Some(local) = &mut store.local {
        if local.persistent_volume_claim.is_some() {
            let inside = local.path.as_deref().unwrap_or("").trim_matches('/');
            *local = LocalStoreSpec {
                path: Some(if inside.is_empty() {
                    ARCHIVE_DIR.to_string()
                } else {
                    format!("{ARCHIVE_DIR}/{inside}")
                }),
                persistent_volume_claim: None,
            };
        }
    }
    Some(store)
}

/// The plan Secret of a run, owned by its Job: it lives exactly as long as the Job (and is
/// deleted earlier, once the run's results are recorded).
pub fn plan_secret(job: &Job, plan_json: Vec<u8>) -> Secret {
    let run = job.metadata.name.clone().unwrap_or_default();
    let labels = job.metadata.labels.as_ref().map(|l| {
        l.iter()
            .filter(|(k, _)| [LABEL_MANAGED_BY, LABEL_PROFILE, LABEL_RUN].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(plan_secret_name(&run)),
            namespace: job.metadata.namespace.clone(),
            labels,
            owner_references: job.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            PLAN_KEY.to_string(),
            ByteString(plan_json),
        )])),
        immutable: Some(true),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The shard sizes a Job was created with.
pub fn shard_sizes(job: &Job) -> Vec<u64> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SHARD_SIZES))
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether the Job finished (`Complete` or `Failed`), and whether it succeeded.
pub fn finished(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find_map(|c| match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => Some(true),
            ("Failed", "True") => Some(false),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> ArchiveProfile {
        let mut p: ArchiveProfile = serde_json::from_value(serde_json::json!({
            "apiVersion": "mailvault.io/v1alpha1",
            "kind": "ArchiveProfile",
            "metadata": {"name": "nightly", "namespace": "mail", "uid": "u-1",
                         "labels": {"team": "secret-label"}, "annotations": {"note": "x"}},
            "spec": {
                "mailboxSetRef": {"name": "staff"},
                "server": {"host": "imap.example.org"},
                "maxParallelJobs": 4,
                "jobTemplate": {"labels": {"cost-center": "it", "mailvault.io/run": "spoof"},
                                "nodeSelector": {"disk": "ssd"}}
            }
        }))
        .unwrap();
        p.metadata.uid = Some("u-1".into());
        p
    }

    #[test]
    fn s3_credentials_are_mounted_as_files_and_never_in_the_environment() {
        let mut p = profile();
        p.spec.store = serde_json::from_value(serde_json::json!({
            "s3": {"bucket": "b", "credentialsSecretRef": {"name": "archive-s3"}}
        }))
        .unwrap();
        let v = serde_json::to_value(build(&p, "nightly-1", &[1], "mailvault:1")).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "store-credentials")
            .expect("a volume for the store credentials");
        assert_eq!(volume["secret"]["secretName"], "archive-s3");
        let container = &pod["containers"][0];
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "store-credentials")
            .expect("mounted");
        assert_eq!(mount["mountPath"], crate::worker::STORE_CREDENTIALS_DIR);
        assert_eq!(mount["readOnly"], true);
        assert!(!container["env"].to_string().contains("archive-s3"));
        // Without a Secret (IRSA, pod identity) nothing is mounted.
        let v = serde_json::to_value(build(&profile(), "nightly-1", &[1], "mailvault:1")).unwrap();
        assert!(!v.to_string().contains("store-credentials"));
    }

    #[test]
    fn job_shape() {
        let job = build(
            &profile(),
            "nightly-202501060200",
            &[3, 3, 2],
            "mailvault:1",
        );
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["metadata"]["name"], "nightly-202501060200");
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["kind"],
            "ArchiveProfile"
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
        let labels = &v["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "mailvault");
        assert_eq!(labels["mailvault.io/profile"], "nightly");
        assert_eq!(labels["mailvault.io/run"], "nightly-202501060200");
        assert_eq!(labels["cost-center"], "it");
        assert!(
            labels.get("team").is_none(),
            "profile labels are not copied"
        );
        assert!(v["metadata"]["annotations"].get("note").is_none());
        assert_eq!(
            v["metadata"]["annotations"]["mailvault.io/shard-sizes"],
            "3,3,2"
        );
        let spec = &v["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(spec["completions"], 3);
        assert_eq!(spec["parallelism"], 3);
        assert_eq!(spec["backoffLimitPerIndex"], 2);
        let rules = &spec["podFailurePolicy"]["rules"];
        assert_eq!(rules[0]["action"], "Ignore");
        assert_eq!(rules[0]["onPodConditions"][0]["type"], "DisruptionTarget");
        assert_eq!(rules[1]["action"], "FailIndex");
        assert_eq!(rules[1]["onExitCodes"]["values"], serde_json::json!([2, 3]));
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["nodeSelector"]["disk"], "ssd");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "mailvault:1");
        assert_eq!(
            c["args"],
            serde_json::json!(["worker", "--plan", "/etc/mailvault/plan/plan.json"])
        );
        assert!(c
            .get("env")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("valueFrom").is_none()));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            pod["volumes"][0]["secret"]["secretName"],
            "nightly-202501060200-plan"
        );
        assert_eq!(shard_sizes(&job), [3, 3, 2]);
        assert_eq!(
            spec["template"]["metadata"]["labels"]["mailvault.io/run"],
            "nightly-202501060200"
        );
    }

    #[test]
    fn a_claim_is_mounted_where_the_plan_says() {
        let mut p = profile();
        p.spec.store = serde_json::from_value(serde_json::json!({
            "local": {"path": "staff/", "persistentVolumeClaim": {"claimName": "mail-archive"}}
        }))
        .unwrap();
        let v = serde_json::to_value(build(&p, "nightly-1", &[1], "img")).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "archive")
            .unwrap();
        assert_eq!(volume["persistentVolumeClaim"]["claimName"], "mail-archive");
        let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m["name"] == "archive" && m["mountPath"] == ARCHIVE_DIR));
        let local = worker_store(p.spec.store.as_ref()).unwrap().local.unwrap();
        assert_eq!(
            local.path.as_deref(),
            Some("/var/lib/mailvault/archive/staff")
        );
        assert_eq!(local.persistent_volume_claim, None);
        // The claim's root without a path; other stores as they are.
        p.spec.store.as_mut().unwrap().local.as_mut().unwrap().path = None;
        let local = worker_store(p.spec.store.as_ref()).unwrap().local.unwrap();
        assert_eq!(local.path.as_deref(), Some(ARCHIVE_DIR));
        let plain = StoreSpec {
            local: Some(LocalStoreSpec {
                path: Some("/srv/a".into()),
                persistent_volume_claim: None,
            }),
            s3: None,
        };
        assert_eq!(worker_store(Some(&plain)), Some(plain.clone()));
        assert_eq!(worker_store(None), None);
        // Without a claim, no archive volume.
        let v = serde_json::to_value(build(&profile(), "nightly-1", &[1], "img")).unwrap();
        assert!(!v["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "archive"));
    }

    #[test]
    fn plan_secret_is_owned_by_the_job() {
        let mut job = build(&profile(), "nightly-1", &[1], "img");
        job.metadata.uid = Some("job-uid".into());
        let s = plan_secret(&job, b"{}".to_vec());
        assert_eq!(s.metadata.name.as_deref(), Some("nightly-1-plan"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Job", "job-uid")
        );
        assert_eq!(s.immutable, Some(true));
        assert!(s.data.unwrap().contains_key("plan.json"));
    }
}
