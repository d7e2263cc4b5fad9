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
use mailvault::operator::api::API_CALLS;
use serde_json::Value;
use yamlfiles::{assert_object, documents, relative, root, yaml_files};

const NAMESPACE: &str = "mailvault-system";
/// The image as the manifests name it; kustomization.yaml adds the release's tag.
const IMAGE: &str = "ghcr.io/mailvault/mailvault";

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
    // Every YAML file in manifests/ (but Argo CD's and the opt-in components) is deployed:
    // nothing lies about unused.
    let on_disk: BTreeSet<String> = yaml_files(&root().join("manifests"))
        .iter()
        .map(|f| relative(f))
        .filter(|f| !f.starts_with("manifests/argocd/") && !f.starts_with("manifests/components/"))
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
    let job = serde_json::to_value(mailvault::operator::job::build(
        &profile,
        "p-1",
        &mailvault::operator::job::PlanShape {
            sizes: vec![1],
            parts: 1,
            oauth2_secret: None,
        },
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

/// Whether kubectl is there to build with kustomize. CI (`CI=true`) installs it
/// (.ci/run), so a test that needs it never skips there.
fn kubectl() -> bool {
    let found = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "kubectl is missing on CI; .ci/run installs it"
    );
    found
}

/// Kustomize itself (kubectl's) builds the same objects, and an `images:` override in an
/// overlay reaches the operator's image and its workers' (kustomizeconfig.yaml).
#[test]
fn kubectl_kustomize_builds_it_and_images_override_both() {
    if !kubectl() {
        eprintln!("skipped: kubectl is not installed; the structure is checked by the other tests");
        return;
    }
    let (dir, overlay) = overlay(
        "resources: [../manifests]\nimages:\n  - name: ghcr.io/mailvault/mailvault\n    \
         newName: registry.example.org/mailvault\n    newTag: \"1.2.3\"\n",
    );
    let built = kubectl_kustomize(&dir.path().join("manifests"));
    assert_eq!(names(&built), names(&build().objects));
    // As installed: this version's release, for the operator and its workers.
    let pinned = format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    let deployment = built.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], pinned.as_str());
    assert_eq!(env(c, "MAILVAULT_WORKER_IMAGE")["value"], pinned.as_str());

    let overlaid = kubectl_kustomize(&overlay);
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

/// A copy of the repository parts a kustomize build reads, in a temporary directory, with
/// an overlay beside manifests/ (kustomize refuses absolute paths): the directory and the
/// overlay's path.
fn overlay(kustomization: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
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
    std::fs::write(overlay.join("kustomization.yaml"), kustomization).unwrap();
    (dir, overlay)
}

fn kubectl_kustomize(dir: &Path) -> Vec<Value> {
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
}

fn names(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
        .collect()
}

/// Kustomize renders the monitoring component onto the installation, as an overlay would
/// enable it: the installation's objects and the component's, all in their namespace.
#[test]
fn kubectl_kustomize_renders_the_monitoring_component() {
    if !kubectl() {
        eprintln!("skipped: kubectl is not installed; the component's files are checked by the other tests");
        return;
    }
    let (_dir, overlay) =
        overlay("resources: [../manifests]\ncomponents: [../manifests/components/monitoring]\n");
    let rendered = kubectl_kustomize(&overlay);
    let mut expected = names(&build().objects);
    let parts = component(&root().join("manifests/components/monitoring"));
    expected.extend(names(&parts));
    assert_eq!(names(&rendered), expected);
    for object in rendered
        .iter()
        .filter(|o| o["apiVersion"] == "monitoring.coreos.com/v1")
    {
        assert_eq!(object["metadata"]["namespace"], NAMESPACE);
        assert!(
            parts.contains(object),
            "kustomize changed {}",
            object["kind"]
        );
    }
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

/// The objects of a kustomize Component (resources only, as ours are).
fn component(dir: &Path) -> Vec<Value> {
    let file = dir.join("kustomization.yaml");
    let k = documents(&file).remove(0);
    assert_eq!(k["kind"], "Component", "{}", relative(&file));
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1alpha1");
    let mut objects = Vec::new();
    let mut listed = BTreeSet::new();
    for resource in strings(&k["resources"]) {
        let path = dir.join(resource);
        for object in documents(&path) {
            assert_object(&path, &object);
            objects.push(object);
        }
        listed.insert(relative(&path));
    }
    let on_disk: BTreeSet<String> = yaml_files(dir)
        .iter()
        .map(|f| relative(f))
        .filter(|f| !f.ends_with("/kustomization.yaml"))
        .collect();
    assert_eq!(on_disk, listed, "{}: files not listed", relative(dir));
    objects
}

/// The names a PromQL expression uses: metric names and label names, the latter from
/// selectors (`{result="Failed"}`) and `by`/`on` clauses.
fn promql_names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '"') {
        rest = &rest[start..];
        if let Some(quoted) = rest.strip_prefix('"') {
            rest = &quoted[quoted.find('"').unwrap() + 1..];
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        let after = rest.trim_start();
        if matches!(word, "by" | "on" | "without" | "ignoring") && after.starts_with('(') {
            let close = after.find(')').unwrap();
            labels.extend(after[1..close].split(',').map(|l| l.trim().to_string()));
            rest = &after[close + 1..];
        } else if after.starts_with('{') {
            metrics.insert(word.to_string());
            let close = after.find('}').unwrap();
            for matcher in after[1..close].split(',') {
                let name = matcher.split(['=', '!', '~']).next().unwrap().trim();
                labels.insert(name.to_string());
            }
            rest = &after[close + 1..];
        } else if !after.starts_with('(') && word.contains('_') || word == "up" {
            metrics.insert(word.to_string());
        }
    }
    (metrics, labels)
}

#[test]
fn promql_names_are_read_as_prometheus_would() {
    let (metrics, labels) = promql_names(
        r#"time() - max by (a, b) (m_one{result="x_y", c!="d"}) > 1.5 * on(e) m_two and absent(up{job="j"} == 1)"#,
    );
    assert_eq!(
        metrics,
        BTreeSet::from(["m_one", "m_two", "up"].map(String::from))
    );
    assert_eq!(
        labels,
        BTreeSet::from(["a", "b", "c", "e", "job", "result"].map(String::from))
    );
}

/// Metric names the operator's source writes (`"mailvault_...`).
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![root().join("operator/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("\"mailvault_") {
                    let name: String = text[at + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// The labels a mailvault series may carry: none of Prometheus' target labels
/// (`namespace`, `pod`, `job`, ...), which would be renamed `exported_*` on scraping.
const METRIC_LABELS: [&str; 7] = [
    "profile_namespace",
    "profile",
    "mailboxset_namespace",
    "mailboxset",
    "result",
    "controller",
    "error",
];

/// The opt-in monitoring component: a ServiceMonitor for the metrics Service, and alerts
/// on nothing but metrics and labels the operator exports.
#[test]
fn the_monitoring_component_alerts_on_metrics_the_operator_exports() {
    let objects = component(&root().join("manifests/components/monitoring"));
    let build = build();
    let monitor = objects
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], NAMESPACE);
    let service = find(&build, "Service", "mailvault-operator-metrics");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&service["metadata"]["labels"][k], v, "selector {k}");
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");

    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let alert = r["alert"].as_str().unwrap();
            let expr = r["expr"].as_str().unwrap();
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{alert}: {expr}"
            );
            let (metrics, labels) = promql_names(expr);
            assert!(!metrics.is_empty(), "{alert}: {expr}");
            for label in &labels {
                if label == "job" {
                    // Prometheus' own: the scrape job is the metrics Service's name.
                    assert!(
                        expr.contains(r#"up{job="mailvault-operator-metrics"}"#),
                        "{expr}"
                    );
                } else {
                    assert!(
                        METRIC_LABELS.contains(&label.as_str()),
                        "{alert}: label {label}"
                    );
                }
            }
            assert!(
                ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap()),
                "{alert}"
            );
            assert!(r["annotations"]["summary"].is_string(), "{alert}");
            alerts.insert(alert.to_string());
            used.extend(metrics.into_iter().filter(|m| m != "up"));
        }
    }
    assert_eq!(
        alerts,
        BTreeSet::from(
            [
                "MailvaultArchiveOverdue",
                "MailvaultLastRunFailed",
                "MailvaultLastRunPartiallyFailed",
                "MailvaultMailboxSetNotReady",
                "MailvaultOperatorDown",
                "MailvaultProfileNotReady",
            ]
            .map(String::from)
        )
    );
    let exported = exported_metrics();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the alerts use metrics the operator does not export: {missing:?} (exported: {exported:?})"
    );
}

/// Namespace users get mailvault's kinds through Kubernetes' aggregated roles: edit and
/// admin can change them (and so start a run, a patch of spec.trigger), view can read them.
/// No user role writes a status.
#[test]
fn user_roles_aggregate_to_admin_edit_and_view() {
    let build = build();
    let crds = mailvault::resources::crds_yaml();
    let plurals: BTreeSet<String> = ["archiveprofiles", "mailboxsets"]
        .into_iter()
        .inspect(|p| assert!(crds.contains(&format!("plural: {p}")), "{p}"))
        .map(String::from)
        .collect();
    let grants = |role: &Value| -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            assert_eq!(strings(&rule["apiGroups"]), ["mailvault.io"], "{rule}");
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(out.insert((resource.to_string(), verb.to_string())));
                }
            }
        }
        out
    };
    let aggregates = |role: &Value, to: &[&str]| {
        let labels = role["metadata"]["labels"].as_object().unwrap();
        let got: BTreeSet<&str> = labels
            .iter()
            .filter(|(_, v)| *v == "true")
            .filter_map(|(k, _)| k.strip_prefix("rbac.authorization.k8s.io/aggregate-to-"))
            .collect();
        assert_eq!(
            got,
            to.iter().copied().collect(),
            "{}",
            role["metadata"]["name"]
        );
    };
    let read = ["get", "list", "watch"];
    let write = ["create", "delete", "deletecollection", "patch", "update"];

    let edit = find(&build, "ClusterRole", "mailvault-edit");
    aggregates(edit, &["admin", "edit"]);
    let edit = grants(edit);
    let view = find(&build, "ClusterRole", "mailvault-view");
    aggregates(view, &["view"]);
    let view = grants(view);
    for kind in &plurals {
        for verb in read.iter().chain(&write) {
            assert!(
                edit.contains(&(kind.clone(), verb.to_string())),
                "edit: {verb} {kind}"
            );
        }
        for verb in read {
            assert!(
                view.contains(&(kind.clone(), verb.to_string())),
                "view: {verb} {kind}"
            );
            let status = format!("{kind}/status");
            assert!(
                view.contains(&(status.clone(), verb.to_string())),
                "view: {verb} {status}"
            );
        }
    }
    for (resource, verb) in edit.iter().chain(&view) {
        let kind = resource.trim_end_matches("/status");
        assert!(plurals.contains(kind), "{resource}");
        if resource.ends_with("/status") || view.contains(&(resource.clone(), verb.clone())) {
            assert!(
                read.contains(&verb.as_str()),
                "{verb} {resource}: only the operator writes statuses, view only reads"
            );
        }
    }
}

/// The README's table of the operator's API calls is the one the ClusterRole grants.
#[test]
fn the_readme_lists_the_operators_api_calls() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = readme
        .split("The operator's API calls, for its RBAC:")
        .nth(1)
        .expect("the README's RBAC table");
    let mut listed = BTreeSet::new();
    for row in table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let unquote = |s: &str| s.trim_matches('`').trim_matches('"').to_string();
        for resource in cells[1].split(',') {
            for verb in cells[2].split(',') {
                let verb = verb.split_whitespace().next().unwrap().to_string();
                listed.insert((unquote(cells[0]), unquote(resource.trim()), verb));
            }
        }
    }
    let needed: BTreeSet<(String, String, String)> = API_CALLS
        .iter()
        .map(|c| (c.group.into(), c.resource.into(), c.verb.into()))
        .collect();
    assert_eq!(listed, needed, "README.md's table differs from API_CALLS");
}

/// One version: the crate's is the image tag the manifests install and has a changelog
/// section; the release workflow refuses a tag that is not it.
#[test]
fn the_manifests_pin_the_crates_version() {
    let version = env!("CARGO_PKG_VERSION");
    let k = documents(&root().join("manifests/kustomization.yaml")).remove(0);
    let images = k["images"]
        .as_array()
        .expect("kustomization.yaml pins the image");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0]["name"], IMAGE);
    assert!(
        images[0]["newName"].is_null(),
        "the image is the project's own"
    );
    assert_eq!(
        images[0]["newTag"].as_str(),
        Some(version),
        "manifests/kustomization.yaml must pin the crate's version"
    );
    let changelog = std::fs::read_to_string(root().join("CHANGELOG.md")).unwrap();
    assert!(
        changelog.contains(&format!("\n## [{version}]")),
        "CHANGELOG.md has no section for {version}"
    );
    let release = std::fs::read_to_string(root().join(".github/workflows/release.yaml")).unwrap();
    for check in [
        r#"[[ "v$version" == "$GITHUB_REF_NAME" ]]"#,
        r#"grep -q "newTag: \"$version\"" manifests/kustomization.yaml"#,
        r#"grep -q "^## \[$version\]" CHANGELOG.md"#,
    ] {
        assert!(release.contains(check), "release.yaml lacks {check}");
    }
}

/// The release builds both architectures and refuses an image above 40 MB; the e2e suite
/// runs on the oldest Kubernetes the README promises.
#[test]
fn the_release_and_e2e_workflows_keep_the_readmes_promises() {
    let release = documents(&root().join(".github/workflows/release.yaml")).remove(0);
    let on = &release["on"];
    assert!(
        on["push"]["tags"][0].as_str().unwrap().starts_with("v"),
        "{on}"
    );
    let job = &release["jobs"]["release"];
    let max: u64 = job["env"]["MAX_IMAGE_BYTES"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(max <= 40_000_000, "{max}");
    let steps = job["steps"].as_array().unwrap();
    let image = steps
        .iter()
        .find(|s| s["name"] == "Image (amd64, arm64)")
        .expect("the image step");
    assert_eq!(image["with"]["platforms"], "linux/amd64,linux/arm64");
    assert_eq!(image["with"]["push"], true);
    let runs: String = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    for needed in [
        "MAX_IMAGE_BYTES",
        "kubectl kustomize release-overlay",
        "gh release create",
    ] {
        assert!(runs.contains(needed), "release.yaml does not run {needed}");
    }

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let minimum = readme
        .split("Kubernetes ")
        .skip(1)
        .find_map(|rest| rest.split_once(" or later").map(|(v, _)| v))
        .filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .expect("the README states the oldest Kubernetes (\"Kubernetes 1.N or later\")");
    let e2e = documents(&root().join(".github/workflows/e2e.yaml")).remove(0);
    let node = e2e["jobs"]["kind"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["env"]["KIND_NODE_IMAGE"].as_str())
        .expect("e2e.yaml names the kind node image");
    assert!(
        node.starts_with(&format!("kindest/node:v{minimum}.")) && node.contains("@sha256:"),
        "e2e runs on {node}, the README promises Kubernetes {minimum}"
    );
}
