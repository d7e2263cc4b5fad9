//! The Kubernetes objects of a run: its indexed Job and the plan Secrets the Job's pods
//! mount; and what the operator reads from them (progress, a run that cannot start, a
//! store that would vanish with the pods). Built here as plain values (and tested as
//! such); the reconciler only sends them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, KeyToPath,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, SeccompProfile, Secret, SecretProjection, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use kube::Resource;

use super::history;
use super::names::PLAN_SUFFIX;
use crate::resources::{
    directory_warnings, namespace_of, ArchiveProfile, ArchiveProfileSpec, Bundle, LocalStoreSpec,
    MailboxSet, SecretKeyRef, StoreSpec,
};
use crate::runplan::{
    RunPlan, ARCHIVE_DIR, EXIT_INVALID_PLAN, EXIT_LOGIN_REJECTED, OAUTH2_CREDENTIALS_DIR, PLAN_DIR,
    PLAN_KEY, STORE_CREDENTIALS_DIR, STORE_KEYS_DIR,
};
use crate::sources::Mailbox;
use crate::time::from_k8s;

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
const ARCHIVE_VOLUME: &str = "archive";
/// An unprivileged user and group (the distroless "nonroot" one).
const RUN_AS: i64 = 65532;

/// On a run's first plan Secret: how many plan Secrets the run has.
pub const ANNOTATION_PLAN_PARTS: &str = "mailvault.io/plan-parts";
/// On a run's first plan Secret: the profile's generation the plan was made from.
pub const ANNOTATION_PROFILE_GENERATION: &str = "mailvault.io/profile-generation";
/// On a run's first plan Secret, for an OAuth2 set: the name of its credentials Secret,
/// which the run's pods mount (so that a retry that reuses the plan mounts it too).
pub const ANNOTATION_OAUTH2_SECRET: &str = "mailvault.io/oauth2-credentials";
/// Most bytes of plan files in one Secret: half of what the API server takes, so that
/// no Secret (nor the etcd request carrying it) comes near the limit.
const PLAN_PART_BYTES: usize = 512 * 1024;
/// Most plan Secrets of one run (32 MiB of compressed plan: several million mailboxes).
const MAX_PLAN_PARTS: usize = 64;

/// The name of a run's plan Secret number `part`: the first is `<run>-plan` (it holds the
/// plan itself), the others `<run>-plan-<part>`.
pub fn plan_secret_name(run: &str, part: usize) -> String {
    match part {
        0 => format!("{run}{PLAN_SUFFIX}"),
        n => format!("{run}{PLAN_SUFFIX}-{n}"),
    }
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
pub fn build(profile: &ArchiveProfile, run: &str, plan: &PlanShape, default_image: &str) -> Job {
    let (shard_sizes, plan_parts) = (&plan.sizes[..], plan.parts);
    let name = profile.metadata.name.clone().unwrap_or_default();
    let template = profile.spec.job_template.clone().unwrap_or_default();
    let mut labels = template.labels.clone();
    labels.extend(run_labels(&name, run));
    let mut annotations = template.annotations.clone();
    let pod_annotations = annotations.clone();
    annotations.insert(ANNOTATION_SHARD_SIZES.to_string(), sizes_text(shard_sizes));
    let shards = shard_sizes.len().max(1) as i32;
    let mut volumes = vec![
        Volume {
            name: "plan".into(),
            // All plan Secrets in one directory: the plan and every shard's file.
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    (0..plan_parts.max(1))
                        .map(|part| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: plan_secret_name(run, part),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
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
    let store_keys = profile
        .spec
        .store
        .as_ref()
        .and_then(|s| s.encryption.as_ref())
        .map(|e| &e.key_secret_ref);
    if let Some(secret) = store_keys {
        // The archive's keys as a file too, and only the one key of the Secret.
        volumes.push(Volume {
            name: "store-keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: Some(vec![KeyToPath {
                    key: secret.key.clone(),
                    path: secret.key.clone(),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(secret) = &plan.oauth2_secret {
        // The OAuth2 app's credential, for the worker to get its tokens with.
        volumes.push(Volume {
            name: "oauth2-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
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
            mount_path: STORE_CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if store_keys.is_some() {
        volume_mounts.push(VolumeMount {
            name: "store-keys".into(),
            mount_path: STORE_KEYS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if plan.oauth2_secret.is_some() {
        volume_mounts.push(VolumeMount {
            name: "oauth2-credentials".into(),
            mount_path: OAUTH2_CREDENTIALS_DIR.into(),
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

/// The plan of run `run` of `profile` for `mailboxes` (resolved from `set`, whose Secrets
/// and the profile's are in `bundle`), and the mailboxes split into its shards.
pub fn run_plan(
    profile: &ArchiveProfile,
    run: &str,
    bundle: &Bundle,
    set: &MailboxSet,
    mailboxes: Vec<Mailbox>,
) -> (RunPlan, Vec<Vec<Mailbox>>) {
    let spec = &profile.spec;
    let namespace = namespace_of(&profile.metadata);
    let count = mailboxes.len();
    let shards = history::shard(
        mailboxes,
        history::shard_count(count, spec.max_parallel_jobs),
    );
    let pem = |r: &SecretKeyRef| {
        bundle
            .secret(namespace, &r.name)
            .and_then(|s| s.object.data.get(&r.key))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let server_ca_pem = spec.server.ca_secret_ref.as_ref().and_then(pem);
    let oauth2_ca_pem = set
        .spec
        .oauth2
        .as_ref()
        .and_then(|o| o.ca_secret_ref.as_ref())
        .and_then(pem);
    let plan = RunPlan {
        namespace: namespace.to_string(),
        profile: profile.metadata.name.clone().unwrap_or_default(),
        run: run.to_string(),
        server: spec.server.clone(),
        folders: spec.folders.clone(),
        filter: spec.filter.clone(),
        deletion: spec.deletion.clone(),
        server_ca_pem,
        store: worker_store(spec.store.as_ref()),
        store_durable: store_not_durable(spec).is_none(),
        warnings: directory_warnings(set),
        shards: shards.len() as u32,
        oauth2: set.spec.oauth2.clone(),
        oauth2_ca_pem,
    };
    (plan, shards)
}

/// The plan Secrets of a run, in the order to create them: the files of
/// [`crate::runplan::plan_files`] packed into Secrets of at most [`PLAN_PART_BYTES`], the
/// first (with the plan itself and the shard sizes) last, so that its existence means the
/// whole plan exists. They are made before the Job, so that no pod ever waits for a
/// Secret that never comes, and owned by the profile: the operator deletes them once the
/// run is recorded (or was never started).
pub fn plan_secrets(
    profile: &ArchiveProfile,
    run: &str,
    shape: &PlanShape,
    files: Vec<(String, Vec<u8>)>,
) -> Result<Vec<Secret>, String> {
    let shard_sizes = &shape.sizes[..];
    let mut parts: Vec<BTreeMap<String, ByteString>> = vec![BTreeMap::new()];
    let mut used = 0;
    for (key, bytes) in files {
        if bytes.len() > PLAN_PART_BYTES {
            return Err(format!(
                "the run plan's file {key} is {} KiB, more than a Secret should hold; \
                 lower the number of mailboxes per shard by splitting the MailboxSet",
                bytes.len() / 1024
            ));
        }
        if used + bytes.len() > PLAN_PART_BYTES {
            parts.push(BTreeMap::new());
            used = 0;
        }
        used += bytes.len();
        parts
            .last_mut()
            .expect("one part at least")
            .insert(key, ByteString(bytes));
    }
    if parts.len() > MAX_PLAN_PARTS {
        return Err(format!(
            "the run plan needs {} Secrets of {} KiB, more than the {MAX_PLAN_PARTS} a run may use",
            parts.len(),
            PLAN_PART_BYTES / 1024
        ));
    }
    let name = profile.metadata.name.clone().unwrap_or_default();
    let count = parts.len();
    let mut secrets: Vec<Secret> = parts
        .into_iter()
        .enumerate()
        .map(|(part, data)| {
            let annotations = (part == 0).then(|| {
                let mut annotations = BTreeMap::from([
                    (ANNOTATION_PLAN_PARTS.to_string(), count.to_string()),
                    (ANNOTATION_SHARD_SIZES.to_string(), sizes_text(shard_sizes)),
                    (
                        ANNOTATION_PROFILE_GENERATION.to_string(),
                        profile.metadata.generation.unwrap_or(0).to_string(),
                    ),
                ]);
                if let Some(secret) = &shape.oauth2_secret {
                    annotations.insert(ANNOTATION_OAUTH2_SECRET.to_string(), secret.clone());
                }
                annotations
            });
            Secret {
                metadata: ObjectMeta {
                    name: Some(plan_secret_name(run, part)),
                    namespace: Some(namespace_of(&profile.metadata).to_string()),
                    labels: Some(run_labels(&name, run)),
                    annotations,
                    owner_references: profile.controller_owner_ref(&()).map(|r| vec![r]),
                    ..Default::default()
                },
                data: Some(data),
                immutable: Some(true),
                type_: Some("Opaque".into()),
                ..Default::default()
            }
        })
        .collect();
    secrets.rotate_left(1);
    Ok(secrets)
}

/// A plan that an earlier attempt to start `run` left complete: its shard sizes and the
/// number of its Secrets, from the first Secret's annotations, when every Secret is there
/// and the profile did not change since. `secrets` are the run's plan Secrets (metadata).
pub fn complete_plan(
    run: &str,
    generation: Option<i64>,
    secrets: &[&ObjectMeta],
) -> Option<PlanShape> {
    let first = secrets
        .iter()
        .find(|m| m.name.as_deref() == Some(plan_secret_name(run, 0).as_str()))?;
    let annotations = first.annotations.as_ref()?;
    let parts: usize = annotations.get(ANNOTATION_PLAN_PARTS)?.parse().ok()?;
    let made_from: i64 = annotations
        .get(ANNOTATION_PROFILE_GENERATION)?
        .parse()
        .ok()?;
    if made_from != generation.unwrap_or(0) {
        return None;
    }
    let all_there = (1..parts).all(|part| {
        let name = plan_secret_name(run, part);
        secrets
            .iter()
            .any(|m| m.name.as_deref() == Some(name.as_str()))
    });
    let sizes = parse_sizes(annotations.get(ANNOTATION_SHARD_SIZES)?);
    all_there.then(|| PlanShape {
        sizes,
        parts,
        oauth2_secret: annotations.get(ANNOTATION_OAUTH2_SECRET).cloned(),
    })
}

/// What a run's Job needs to know of its plan: the shards' sizes, how many plan Secrets
/// there are, and an OAuth2 set's credentials Secret to mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanShape {
    pub sizes: Vec<u64>,
    pub parts: usize,
    pub oauth2_secret: Option<String>,
}

impl PlanShape {
    /// A shape with `sizes` and one plan Secret, for tests.
    #[cfg(test)]
    pub fn of(sizes: &[u64]) -> PlanShape {
        PlanShape {
            sizes: sizes.to_vec(),
            parts: 1,
            oauth2_secret: None,
        }
    }
}

fn sizes_text(shard_sizes: &[u64]) -> String {
    shard_sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_sizes(text: &str) -> Vec<u64> {
    text.split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The shard sizes a Job was created with.
pub fn shard_sizes(job: &Job) -> Vec<u64> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SHARD_SIZES))
        .map(|s| parse_sizes(s))
        .unwrap_or_default()
}

/// Why `spec`'s store would not outlive the run's pods, if it would not: a local store
/// must be on a PersistentVolumeClaim or on a volume the profile's `jobTemplate` mounts
/// (and not one that lives only as long as the pod). Anything else is the pod's own file
/// system, gone with the pod, and mail deleted after archiving there would be lost.
pub fn store_not_durable(spec: &ArchiveProfileSpec) -> Option<String> {
    let store = spec.store.as_ref();
    if store.is_some_and(|s| s.s3.is_some()) {
        return None;
    }
    let local = store.and_then(|s| s.local.as_ref());
    if local.is_some_and(|l| l.persistent_volume_claim.is_some()) {
        return None;
    }
    let path = crate::store::local_path(store);
    const FIX: &str = "put the store on a PersistentVolumeClaim \
        (spec.store.local.persistentVolumeClaim), on a volume that spec.jobTemplate mounts, \
        or in S3 (spec.store.s3)";
    let template = spec.job_template.clone().unwrap_or_default();
    let normalized = normalize(path);
    let mount = normalized.as_ref().and_then(|path| {
        template
            .volume_mounts
            .iter()
            .filter(|m| normalize(&m.mount_path).is_some_and(|mount| path.starts_with(&mount)))
            .max_by_key(|m| m.mount_path.len())
    });
    let Some(mount) = mount else {
        return Some(format!(
            "spec.store.local.path {path:?} is on no volume: the archive would be written into \
             the pod's own file system and vanish with the pod; {FIX}"
        ));
    };
    let volume = template.volumes.iter().find(|v| v.name == mount.name)?;
    let kind = if volume.empty_dir.is_some() {
        "an emptyDir"
    } else if volume.ephemeral.is_some() {
        "a generic ephemeral volume"
    } else if volume.csi.is_some() {
        "an inline CSI volume"
    } else if volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.projected.is_some()
        || volume.downward_api.is_some()
    {
        "a read-only projection"
    } else {
        return None;
    };
    Some(format!(
        "spec.store.local.path {path:?} is on the volume {:?}, {kind}, which lives only as \
         long as the pod; {FIX}",
        mount.name
    ))
}

/// An absolute path without `.`, `..` or repeated slashes; `None` for a relative one
/// (relative to the container's working directory: on no volume).
fn normalize(path: &str) -> Option<std::path::PathBuf> {
    use std::path::Component;
    let path = std::path::Path::new(path);
    if !path.is_absolute() {
        return None;
    }
    let mut out = std::path::PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Since when none of a Job's pods has run, and why, if none runs now: the Job's creation
/// or the last time a container started or ended, whichever is latest, and the waiting
/// reason of a pod that is not running (an image that cannot be pulled, a Secret or
/// volume that cannot be mounted, no node). `None` while a pod runs.
pub fn idle_since(job: &Job, pods: &[Pod]) -> Option<(DateTime<Utc>, String)> {
    let mut since = from_k8s(job.metadata.creation_timestamp.as_ref()?);
    let mut reason = None;
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            return None;
        }
        for c in status.container_statuses.iter().flatten() {
            let state = c.state.clone().unwrap_or_default();
            if state.running.is_some() {
                return None;
            }
            if let Some(t) = &state.terminated {
                for time in [&t.started_at, &t.finished_at].into_iter().flatten() {
                    since = since.max(from_k8s(time));
                }
            }
            if let Some(w) = &state.waiting {
                reason.get_or_insert_with(|| {
                    format!(
                        "pod {}: {}{}",
                        pod.metadata.name.as_deref().unwrap_or(""),
                        w.reason.as_deref().unwrap_or("waiting"),
                        w.message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    )
                });
            }
        }
        if status.phase.as_deref() == Some("Pending") && reason.is_none() {
            let unscheduled = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            reason = Some(format!(
                "pod {}: Pending{}",
                pod.metadata.name.as_deref().unwrap_or(""),
                unscheduled
                    .and_then(|c| c.message.as_deref())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    let reason = reason.unwrap_or_else(|| {
        if pods.is_empty() {
            "no pod was created (see the Job's events)".to_string()
        } else {
            "no pod is running".to_string()
        }
    });
    Some((since, reason))
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

    /// The Job of `profile` with the store spec `store`: the Secret volume `name`, its
    /// mount's path, and whether the Secret's name shows in the container's environment;
    /// and whether a profile without that store has the volume anyway.
    fn secret_volume(store: serde_json::Value, name: &str) -> (serde_json::Value, String, bool) {
        let mut p = profile();
        p.spec.store = serde_json::from_value(store).unwrap();
        let v = serde_json::to_value(build(&p, "nightly-1", &PlanShape::of(&[1]), "mailvault:1"))
            .unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("a volume {name}"))
            .clone();
        let container = &pod["containers"][0];
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} mounted"));
        assert_eq!(mount["readOnly"], true);
        let secret = volume["secret"]["secretName"].as_str().unwrap();
        let in_env = container["env"].to_string().contains(secret);
        // Without that store setting (IRSA, pod identity, no encryption) nothing is mounted.
        let plain = build(&profile(), "nightly-1", &PlanShape::of(&[1]), "mailvault:1");
        assert!(!serde_json::to_value(plain)
            .unwrap()
            .to_string()
            .contains(name));
        let path = mount["mountPath"].as_str().unwrap().to_string();
        (volume, path, in_env)
    }

    #[test]
    fn s3_credentials_are_mounted_as_files_and_never_in_the_environment() {
        let store = serde_json::json!({
            "s3": {"bucket": "b", "credentialsSecretRef": {"name": "archive-s3"}}
        });
        let (volume, path, in_env) = secret_volume(store, "store-credentials");
        assert_eq!(volume["secret"]["secretName"], "archive-s3");
        assert_eq!(path, STORE_CREDENTIALS_DIR);
        assert!(!in_env);
    }

    #[test]
    fn the_encryption_key_is_mounted_as_one_file_and_never_in_the_environment() {
        let store = serde_json::json!({
            "local": {"path": "/a"},
            "encryption": {"keySecretRef": {"name": "archive-keys", "key": "keys.txt"}}
        });
        let (volume, path, in_env) = secret_volume(store, "store-keys");
        assert_eq!(volume["secret"]["secretName"], "archive-keys");
        // Only the key the profile names, as a file of that name.
        assert_eq!(
            volume["secret"]["items"],
            serde_json::json!([{"key": "keys.txt", "path": "keys.txt"}])
        );
        assert_eq!(path, STORE_KEYS_DIR);
        assert!(!in_env);
    }

    #[test]
    fn job_shape() {
        let job = build(
            &profile(),
            "nightly-202501060200",
            &PlanShape {
                sizes: vec![3, 3, 2],
                parts: 2,
                oauth2_secret: None,
            },
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
        let sources = &pod["volumes"][0]["projected"]["sources"];
        assert_eq!(sources[0]["secret"]["name"], "nightly-202501060200-plan");
        assert_eq!(sources[1]["secret"]["name"], "nightly-202501060200-plan-1");
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
        let v = serde_json::to_value(build(&p, "nightly-1", &PlanShape::of(&[1]), "img")).unwrap();
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
            encryption: None,
        };
        assert_eq!(worker_store(Some(&plain)), Some(plain.clone()));
        assert_eq!(worker_store(None), None);
        // Without a claim, no archive volume.
        let v = serde_json::to_value(build(&profile(), "nightly-1", &PlanShape::of(&[1]), "img"))
            .unwrap();
        assert!(!v["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "archive"));
    }

    #[test]
    fn plan_secrets_are_owned_by_the_profile_and_split_to_fit() {
        let files = vec![
            ("plan.json".to_string(), vec![b'{'; 1000]),
            ("shard-0.json.gz".to_string(), vec![0; 300 * 1024]),
            ("shard-1.json.gz".to_string(), vec![0; 300 * 1024]),
            ("shard-2.json.gz".to_string(), vec![0; 100 * 1024]),
        ];
        let secrets =
            plan_secrets(&profile(), "nightly-1", &PlanShape::of(&[5, 5, 4]), files).unwrap();
        let names: Vec<_> = secrets
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        // The first Secret, which says how many there are, is created last.
        assert_eq!(names, ["nightly-1-plan-1", "nightly-1-plan"]);
        let first = &secrets[1];
        let keys: Vec<_> = first.data.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["plan.json", "shard-0.json.gz"]);
        let a = first.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[ANNOTATION_PLAN_PARTS], "2");
        assert_eq!(a[ANNOTATION_SHARD_SIZES], "5,5,4");
        for s in &secrets {
            let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("ArchiveProfile", "u-1")
            );
            assert_eq!(s.immutable, Some(true));
            assert_eq!(s.metadata.labels.as_ref().unwrap()[LABEL_RUN], "nightly-1");
            let bytes: usize = s.data.as_ref().unwrap().values().map(|v| v.0.len()).sum();
            assert!(bytes <= PLAN_PART_BYTES, "{bytes}");
        }
        // A complete plan is found again, with its sizes; a missing part or a changed
        // profile makes it unusable.
        let metas: Vec<&ObjectMeta> = secrets.iter().map(|s| &s.metadata).collect();
        assert_eq!(
            complete_plan("nightly-1", None, &metas),
            Some(PlanShape {
                sizes: vec![5, 5, 4],
                parts: 2,
                oauth2_secret: None
            })
        );
        assert_eq!(complete_plan("nightly-1", Some(2), &metas), None);
        assert_eq!(complete_plan("nightly-1", None, &metas[1..]), None);
        assert_eq!(complete_plan("nightly-1", None, &metas[..1]), None);
        // A file too large for any Secret is refused with its size.
        let huge = vec![("shard-0.json.gz".to_string(), vec![0; 600 * 1024])];
        let e = plan_secrets(&profile(), "nightly-1", &PlanShape::of(&[1]), huge).unwrap_err();
        assert!(e.contains("600 KiB"), "{e}");
    }

    fn durable(store: serde_json::Value, template: serde_json::Value) -> Option<String> {
        let mut p = profile();
        p.spec.store = serde_json::from_value(store).unwrap();
        p.spec.job_template = serde_json::from_value(template).unwrap();
        store_not_durable(&p.spec)
    }

    #[test]
    fn only_stores_that_outlive_the_pod_are_accepted() {
        let none = serde_json::Value::Null;
        let volume = |v: serde_json::Value| serde_json::json!({"volumes": [v], "volumeMounts": [{"name": "a", "mountPath": "/srv/archive/"}]});
        // S3 and claims are durable.
        assert_eq!(
            durable(serde_json::json!({"s3": {"bucket": "b"}}), none.clone()),
            None
        );
        let claim = serde_json::json!({"local": {"persistentVolumeClaim": {"claimName": "c"}}});
        assert_eq!(durable(claim, none.clone()), None);
        // A path on a mounted claim or host path, also below the mount point.
        let pvc =
            volume(serde_json::json!({"name": "a", "persistentVolumeClaim": {"claimName": "c"}}));
        for path in [
            "/srv/archive",
            "/srv/archive/staff",
            "/srv/archive/./x/../y",
        ] {
            let store = serde_json::json!({"local": {"path": path}});
            assert_eq!(durable(store, pvc.clone()), None, "{path}");
        }
        let host = volume(serde_json::json!({"name": "a", "hostPath": {"path": "/data"}}));
        assert_eq!(
            durable(serde_json::json!({"local": {"path": "/srv/archive"}}), host),
            None
        );
        // The pod's own file system, /tmp (the pod's scratch space), a relative path, the
        // default, a path next to a mount or escaping it.
        for path in [
            "/tmp/archive",
            "archive",
            "/srv/archived",
            "/srv/archive/../x",
        ] {
            let e = durable(serde_json::json!({"local": {"path": path}}), pvc.clone()).unwrap();
            assert!(
                e.contains("is on no volume") && e.contains("persistentVolumeClaim"),
                "{e}"
            );
        }
        let e = durable(none.clone(), none.clone()).unwrap();
        assert!(e.contains("mailvault-archive"), "{e}");
        // Volumes that live as long as the pod.
        for v in [
            serde_json::json!({"name": "a", "emptyDir": {}}),
            serde_json::json!({"name": "a", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
            serde_json::json!({"name": "a", "csi": {"driver": "d"}}),
            serde_json::json!({"name": "a", "configMap": {"name": "c"}}),
        ] {
            let e = durable(
                serde_json::json!({"local": {"path": "/srv/archive"}}),
                volume(v.clone()),
            );
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("lives only as long as the pod")),
                "{v}: {e:?}"
            );
        }
    }

    fn pod(phase: &str, state: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r-0-abc"},
            "status": {"phase": phase, "containerStatuses": [{"name": "worker", "image": "i",
                        "imageID": "", "ready": false, "restartCount": 0, "state": state}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_run_none_of_whose_pods_runs_is_idle() {
        let mut job = build(&profile(), "r", &PlanShape::of(&[1]), "img");
        let created = parse("2025-01-01T00:00:00Z");
        job.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2025-01-01T00:00:00Z".parse().unwrap(),
            ));
        let (since, why) = idle_since(&job, &[]).unwrap();
        assert_eq!(since, created);
        assert!(why.contains("no pod was created"), "{why}");
        let waiting = pod(
            "Pending",
            serde_json::json!({"waiting": {"reason": "ErrImagePull", "message": "no such image"}}),
        );
        let (_, why) = idle_since(&job, std::slice::from_ref(&waiting)).unwrap();
        assert_eq!(why, "pod r-0-abc: ErrImagePull: no such image");
        let running = pod(
            "Running",
            serde_json::json!({"running": {"startedAt": "2025-01-01T00:01:00Z"}}),
        );
        assert_eq!(idle_since(&job, &[waiting.clone(), running]), None);
        // A pod that ran and ended moves the time on.
        let ended = pod(
            "Failed",
            serde_json::json!({"terminated": {"exitCode": 1,
            "startedAt": "2025-01-01T00:01:00Z", "finishedAt": "2025-01-01T00:02:00Z"}}),
        );
        let (since, _) = idle_since(&job, &[ended, waiting]).unwrap();
        assert_eq!(since, parse("2025-01-01T00:02:00Z"));
    }

    fn parse(s: &str) -> DateTime<Utc> {
        crate::time::parse(s).unwrap()
    }
}
