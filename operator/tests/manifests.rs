//! The installation: `manifests/` (what `kubectl apply -k manifests/` deploys), the image
//! and the end-to-end scripts. What the API server or Docker would only find out at install
//! time is checked here: the objects parse, the kustomization is complete, the CRDs are the
//! generated ones, the operator's ClusterRole grants exactly the API calls the operator
//! makes, and the Deployment is hardened and wired to its Service and its image.

mod yamlfiles;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use mailvault::controller::api::API_CALLS;
use serde_json::Value;
use yamlfiles::{assert_object, documents, relative, root, yaml_files};

const NAMESPACE: &str = "mailvault-system";
const IMAGE: &str = "ghcr.io/mailvault/mailvault:latest";

/// A kustomization's files: the kustomization itself, its configurations, and the objects
/// of its resources, following directories (other kustomizations) as kustomize does.
#[derive(Default)]
struct Build {
    files: Vec<PathBuf>,
    objects: Vec<Value>,
}

fn kustomize(dir: &Path, build: &mut Build) {
    let file = dir.join("kustomization.yaml");
    assert!(file.is_file(), "{}: no kustomization.yaml", relative(dir));
    let k = documents(&file).remove(0);
    assert_eq!(k["kind"], "Kustomization", "{}", relative(&file));
    build.files.push(file.clone());
    for configuration in k["configurations"].as_array().into_iter().flatten() {
        let path = dir.join(configuration.as_str().unwrap());
        assert!(
            path.is_file(),
            "{}: {} is missing",
            relative(&file),
            configuration
        );
        build.files.push(path);
    }
    for resource in k["resources"].as_array().expect("resources") {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            kustomize(&path, build);
        } else {
            assert!(
                path.is_file(),
                "{}: {} is missing",
                relative(&file),
                resource
            );
            for object in documents(&path) {
                assert_object(&path, &object);
                build.objects.push(object);
            }
            build.files.push(path);
        }
    }
}

fn build() -> Build {
    let mut build = Build::default();
    kustomize(&root().join("manifests"), &mut build);
    build
}

fn find<'a>(build: &'a Build, kind: &str, name: &str) -> &'a Value {
    build
        .objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in manifests/"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn the_kustomization_lists_every_manifest_and_not_argocd() {
    let build = build();
    let listed: BTreeSet<String> = build.files.iter().map(|f| relative(f)).collect();
    assert!(
        !listed.iter().any(|f| f.starts_with("manifests/argocd/")),
        "Argo CD's configuration is not part of the installation: {listed:?}"
    );
    // Every YAML file in manifests/ (but Argo CD's) is deployed: nothing lies about unused.
    let on_disk: BTreeSet<String> = yaml_files(&root().join("manifests"))
        .iter()
        .map(|f| relative(f))
        .filter(|f| !f.starts_with("manifests/argocd/"))
        .collect();
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "not in the kustomization: {unlisted:?}"
    );
    let kinds: BTreeSet<&str> = build
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "Service",
            "ServiceAccount"
        ])
    );
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for o in &build.objects {
        let kind = o["kind"].as_str().unwrap();
        let namespace = &o["metadata"]["namespace"];
        if cluster_scoped.contains(&kind) {
            assert!(namespace.is_null(), "{kind} is cluster-scoped");
        } else {
            assert_eq!(namespace, NAMESPACE, "{kind} {}", o["metadata"]["name"]);
        }
    }
    find(&build, "Namespace", NAMESPACE);
}

#[test]
fn the_crds_are_the_generated_ones() {
    let build = build();
    let deployed: Vec<&Value> = build
        .objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .collect();
    let generated: Vec<Value> =
        serde_yaml::Deserializer::from_str(&mailvault::resources::crds_yaml())
            .map(|d| {
                let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap();
                serde_yaml::from_value(v).unwrap()
            })
            .collect();
    assert_eq!(deployed, generated.iter().collect::<Vec<_>>());
}

/// The ClusterRole, rule by rule, as (group, resource, verb): exactly `API_CALLS`.
#[test]
fn the_cluster_role_grants_exactly_the_operators_api_calls() {
    let build = build();
    let role = find(&build, "ClusterRole", "mailvault-operator");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for key in rule.as_object().unwrap().keys() {
            assert!(
                ["apiGroups", "resources", "verbs"].contains(&key.as_str()),
                "rule with {key}: {rule}"
            );
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(![group, resource, verb].contains(&"*"), "wildcard: {rule}");
                    let new =
                        granted.insert((group.to_string(), resource.to_string(), verb.to_string()));
                    assert!(new, "granted twice: {group} {resource} {verb}");
                }
            }
        }
    }
    let needed: BTreeSet<(String, String, String)> = API_CALLS
        .iter()
        .map(|c| (c.group.into(), c.resource.into(), c.verb.into()))
        .collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the ClusterRole lacks {missing:?} and grants more than the operator uses: {extra:?}"
    );

    let binding = find(&build, "ClusterRoleBinding", "mailvault-operator");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "mailvault-operator");
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["namespace"], NAMESPACE);
    let account = subjects[0]["name"].as_str().unwrap();
    find(&build, "ServiceAccount", account);
    let pod = &find(&build, "Deployment", "mailvault-operator")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account);
}

fn operator_container(build: &Build) -> &Value {
    let containers =
        &find(build, "Deployment", "mailvault-operator")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1);
    &containers[0]
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the operator's env"))
}

#[test]
fn the_deployment_runs_the_operator_hardened() {
    let build = build();
    let deployment = find(&build, "Deployment", "mailvault-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = operator_container(&build);
    assert_eq!(c["image"], IMAGE);
    assert_eq!(strings(&c["args"]), ["operator"]);
    // `--worker-image`, which `mailvault operator` reads from this variable.
    assert_eq!(env(c, "MAILVAULT_WORKER_IMAGE")["value"], IMAGE);
    assert_eq!(
        env(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"]["add"].is_null());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sc["privileged"] != true);
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());

    for (kind, value) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][value].is_string(),
            "resources.{kind}.{value}"
        );
    }

    // Probes and the metrics port are where `mailvault operator` listens by default.
    let listen =
        match mailvault::cli::Cli::try_parse_from(["mailvault", "operator", "--worker-image", "x"])
            .unwrap()
            .command
        {
            mailvault::cli::Command::Operator(args) => args.listen,
            other => panic!("{other:?}"),
        };
    let ports = c["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"], "metrics");
    assert_eq!(ports[0]["containerPort"], listen.port());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let labels = &pod_template_labels(deployment);
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Deployment selects its own pods");
    }
}

fn pod_template_labels(deployment: &Value) -> Value {
    deployment["spec"]["template"]["metadata"]["labels"].clone()
}

#[test]
fn the_metrics_service_selects_the_operators_pods() {
    let build = build();
    let service = find(&build, "Service", "mailvault-operator-metrics");
    let labels = pod_template_labels(find(&build, "Deployment", "mailvault-operator"));
    let selector = service["spec"]["selector"].as_object().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "selector {k}");
    }
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["name"], "metrics");
    assert_eq!(ports[0]["targetPort"], "metrics");
}

/// The operator, its Jobs and the image agree on the user: the distroless "nonroot" one.
#[test]
fn the_image_runs_the_one_binary_as_the_pods_user() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[last_from..];
    assert!(
        runtime.contains(&r#"ENTRYPOINT ["/mailvault"]"#),
        "{runtime:?}"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage names its user");
    let uid: i64 = user.split(':').next().unwrap().parse().unwrap();

    let build = build();
    let pod = &find(&build, "Deployment", "mailvault-operator")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
    let profile: mailvault::resources::ArchiveProfile = serde_json::from_value(serde_json::json!({
        "apiVersion": "mailvault.io/v1alpha1", "kind": "ArchiveProfile",
        "metadata": {"name": "p", "namespace": "mail"},
        "spec": {"mailboxSetRef": {"name": "s"}, "server": {"host": "h"}}
    }))
    .unwrap();
    let job = serde_json::to_value(mailvault::controller::job::build(
        &profile,
        "p-1",
        &[1],
        1,
        "img",
    ))
    .unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        uid
    );

    // What the build copies exists, and what it must not see is ignored.
    for line in &lines {
        if let Some(args) = line.strip_prefix("COPY ") {
            if args.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = args.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                assert!(root().join(source).exists(), "COPY {source}: missing");
            }
        }
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    for must in ["target", ".git"] {
        assert!(ignored.contains(&must), ".dockerignore lacks {must}");
    }
}

fn kubectl() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kustomize itself (kubectl's) builds the same objects, and an `images:` override in an
/// overlay reaches the operator's image and its workers' (kustomizeconfig.yaml).
#[test]
fn kubectl_kustomize_builds_it_and_images_override_both() {
    if !kubectl() {
        eprintln!("skipped: kubectl is not installed; the structure is checked by the other tests");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A copy of the repository parts the build reads, with an overlay beside manifests/.
    for part in ["manifests", "crds"] {
        let out = Command::new("cp")
            .arg("-r")
            .arg(root().join(part))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let overlay = dir.path().join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [../manifests]\nimages:\n  - name: ghcr.io/mailvault/mailvault\n    \
         newName: registry.example.org/mailvault\n    newTag: \"1.2.3\"\n",
    )
    .unwrap();
    let kustomize = |dir: &Path| -> Vec<Value> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.join("built.yaml.out");
        std::fs::write(&file, &out.stdout).unwrap();
        documents(&file)
    };
    let built = kustomize(&dir.path().join("manifests"));
    let names = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
            .collect()
    };
    assert_eq!(names(&built), names(&build().objects));

    let overlaid = kustomize(&overlay);
    let deployment = overlaid.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example.org/mailvault:1.2.3");
    assert_eq!(
        env(c, "MAILVAULT_WORKER_IMAGE")["value"],
        "registry.example.org/mailvault:1.2.3"
    );
    assert_eq!(
        env(c, "MAILVAULT_LOG")["value"],
        "info",
        "other values stay"
    );
}

/// The end-to-end scripts (run where Docker and kind exist) at least parse.
#[test]
fn e2e_scripts_parse() {
    let scripts: Vec<PathBuf> = std::fs::read_dir(root().join("e2e"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    assert!(!scripts.is_empty());
    for script in scripts {
        let out = Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            relative(&script),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(text.contains("set -euo pipefail"), "{}", relative(&script));
    }
}

/// The workflows that run the suites parse and run what they say.
#[test]
fn workflows_run_the_scripts() {
    for (file, script) in [("e2e.yaml", "e2e/run.sh"), ("ci.yaml", ".ci/run")] {
        let path = root().join(".github/workflows").join(file);
        let workflow = documents(&path).remove(0);
        let steps: Vec<&str> = workflow["jobs"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|job| job["steps"].as_array().unwrap())
            .filter_map(|step| step["run"].as_str())
            .collect();
        assert!(
            steps.iter().any(|s| s.trim() == script),
            "{file}: {steps:?}"
        );
        assert!(root().join(script).is_file());
    }
}
