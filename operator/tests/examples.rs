//! The examples users copy (examples/local, examples/cluster) and the custom resources of the
//! end-to-end suite (e2e/manifests) are valid: against the CRDs' OpenAPI schemas, as the API
//! server would check them, and through the same loading and validation as `mailvault run`.

mod yamlfiles;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mailvault::operator::schedule::Schedule;
use mailvault::resources::{self, load_paths, validate_mailbox_set, validate_profile};
use serde_json::Value;
use yamlfiles::{assert_object, documents, relative, root, yaml_files};

/// The openAPIV3Schema of each kind, from the generated CRDs (crds.rs keeps the file in
/// crds/ equal to them).
fn schemas() -> BTreeMap<String, Value> {
    let crds: Vec<Value> = serde_yaml::Deserializer::from_str(&resources::crds_yaml())
        .map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap();
            serde_yaml::from_value(v).unwrap()
        })
        .collect();
    crds.into_iter()
        .map(|crd| {
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
            let version = &crd["spec"]["versions"][0];
            assert_eq!(version["name"], resources::VERSION);
            (kind, version["schema"]["openAPIV3Schema"].clone())
        })
        .collect()
}

/// A structural-schema validator for what the CRDs use: type, properties, required, enum,
/// minimum/maximum, minLength/maxLength, items, additionalProperties, nullable,
/// x-kubernetes-int-or-string and x-kubernetes-preserve-unknown-fields. A field the schema
/// does not know is an error: the API server would silently drop it. CEL rules
/// (x-kubernetes-validations) are not evaluated here; `validate_profile` and
/// `validate_mailbox_set` below check the same conditions.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        None => schema["x-kubernetes-preserve-unknown-fields"] == true,
        Some(other) => panic!("{path}: schema type {other} not handled"),
    };
    if !type_ok {
        errors.push(format!("{path}: must be of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            errors.push(format!("{path}: {n} is less than {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            errors.push(format!("{path}: {n} is more than {}", schema["maximum"]));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| chars < min) {
            errors.push(format!("{path}: shorter than {}", schema["minLength"]));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| chars > max) {
            errors.push(format!("{path}: longer than {}", schema["maxLength"]));
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
        }
    }
    if let Some(fields) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !fields.contains_key(name) {
                errors.push(format!("{path}.{name}: required"));
            }
        }
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
        for (name, field) in fields {
            let here = format!("{path}.{name}");
            match (&schema["properties"][name], &schema["additionalProperties"]) {
                (Value::Null, Value::Null | Value::Bool(true)) if preserve => {}
                (Value::Null, Value::Null | Value::Bool(false)) => {
                    errors.push(format!("{here}: unknown field"));
                }
                (Value::Null, Value::Bool(true)) => {}
                (Value::Null, additional) => validate(additional, field, &here, errors),
                (property, _) => validate(property, field, &here, errors),
            }
        }
    }
}

/// Schema errors of one of our objects. `apiVersion`, `kind` and `metadata` are the API
/// server's to check (the CRD schema need not list them), beyond the apiVersion of our
/// group and the name that every object needs.
fn schema_errors(schemas: &BTreeMap<String, Value>, object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap();
    let schema = &schemas[kind];
    let mut errors = Vec::new();
    if object["apiVersion"] != resources::API_VERSION {
        errors.push(format!("apiVersion: not {}", resources::API_VERSION));
    }
    let mut body = object.clone();
    let mut root_schema = schema.clone();
    for field in ["apiVersion", "kind", "metadata"] {
        body.as_object_mut().unwrap().remove(field);
        root_schema["properties"]
            .as_object_mut()
            .unwrap()
            .remove(field);
    }
    validate(&root_schema, &body, "", &mut errors);
    errors
        .into_iter()
        .map(|e| e.trim_start_matches('.').to_string())
        .collect()
}

fn is_ours(object: &Value) -> bool {
    object["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with(&format!("{}/", resources::GROUP)))
}

/// The YAML files of objects: examples, and the e2e suite's (not its kustomization).
fn example_files() -> Vec<PathBuf> {
    let mut files = yaml_files(&root().join("examples"));
    files.extend(yaml_files(&root().join("e2e")));
    files.retain(|f| f.file_name().is_some_and(|n| n != "kustomization.yaml"));
    files
}

#[test]
fn every_object_matches_its_crd_schema() {
    let schemas = schemas();
    let mut ours = 0;
    let mut problems = Vec::new();
    for file in example_files() {
        for object in documents(&file) {
            assert_object(&file, &object);
            if !is_ours(&object) {
                continue;
            }
            ours += 1;
            let errors = schema_errors(&schemas, &object);
            let place = format!(
                "{} ({} {})",
                relative(&file),
                object["kind"],
                object["metadata"]["name"]
            );
            if !errors.is_empty() {
                problems.push(format!("{place}: {}", errors.join("; ")));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(ours >= 10, "only {ours} mailvault objects found");
}

/// The Secrets that the `kubectl create secret generic` commands in the comments of an
/// example file create, as YAML: the examples name their Secrets' keys only there. A value
/// from the shell (`"$PASSWORD"`) becomes a stand-in; `--from-file=PATH` reads PATH in the
/// example's directory, or the `.example` file the comment says to copy to it.
fn secrets_from_comments(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let comments: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(str::trim)
        .collect();
    let mut yaml = String::new();
    let mut command = String::new();
    for line in comments {
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if line.ends_with('\\') {
            continue;
        }
        let text = std::mem::take(&mut command);
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some(at) = words
            .windows(3)
            .position(|w| w == ["create", "secret", "generic"])
        else {
            continue;
        };
        assert_eq!(words[0], "kubectl", "{}: {words:?}", relative(file));
        let namespace = words
            .windows(2)
            .find(|w| w[0] == "-n")
            .map(|w| w[1])
            .expect("the command names its namespace");
        let name = words[at + 3];
        let mut data = Vec::new();
        for word in &words[at + 4..] {
            if let Some(literal) = word.strip_prefix("--from-literal=") {
                let (key, value) = literal.split_once('=').unwrap();
                let value = value.trim_matches('"').trim_matches('\'');
                let value = if value.starts_with('$') {
                    "stand-in"
                } else {
                    value
                };
                data.push((key.to_string(), value.to_string()));
            } else if let Some(from) = word.strip_prefix("--from-file=") {
                let (key, path) = from.split_once('=').unwrap_or((from, from));
                let dir = file.parent().unwrap();
                let mut source = dir.join(path);
                if !source.exists() {
                    let (stem, ext) = path.rsplit_once('.').unwrap();
                    source = dir.join(format!("{stem}.example.{ext}"));
                }
                let value = std::fs::read_to_string(&source)
                    .unwrap_or_else(|e| panic!("{}: {e}", relative(&source)));
                data.push((key.to_string(), value));
            } else {
                panic!("{}: unexpected {word} in {words:?}", relative(file));
            }
        }
        let data: serde_json::Map<String, Value> = data
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "stringData": data});
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&secret).unwrap());
    }
    yaml
}

/// The YAML files of an example directory, with the Secrets their comments create in a
/// file of their own (kept alive by the returned directory).
fn example_with_secrets(files: &[PathBuf]) -> (Vec<PathBuf>, tempfile::TempDir) {
    let secrets: String = files.iter().map(|f| secrets_from_comments(f)).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut files = files.to_vec();
    if !secrets.is_empty() {
        let path = dir.path().join("secrets.yaml");
        std::fs::write(&path, secrets).unwrap();
        files.push(path);
    }
    (files, dir)
}

/// Examples carry no Secret with made-up values, which `kubectl apply` would write over a
/// real one: the cluster examples say how to create their Secrets instead, and those
/// commands create exactly the keys the resources need (the validation below).
#[test]
fn examples_carry_no_placeholder_secrets() {
    for file in yaml_files(&root().join("examples")) {
        for object in documents(&file) {
            if object["kind"] != "Secret" {
                continue;
            }
            assert!(
                relative(&file).starts_with("examples/local/"),
                "{}: a Secret in a cluster example; say how to create it instead",
                relative(&file)
            );
            let text = serde_json::to_string(&object).unwrap();
            assert!(
                !text.contains("CHANGE"),
                "{}: a placeholder",
                relative(&file)
            );
        }
    }
    let cluster = yaml_files(&root().join("examples/cluster"));
    let created: String = cluster.iter().map(|f| secrets_from_comments(f)).collect();
    for name in [
        "shared-mailboxes",
        "imap-master",
        "ldap-reader",
        "s3-credentials",
    ] {
        assert!(
            created.contains(&format!("name: {name}\n")),
            "no command creates {name}"
        );
    }
}

/// Every example directory loads as `mailvault run -f DIR` would load it, and every profile
/// and set in it validates with the references resolved inside the directory (the cluster
/// examples' Secrets as their comments create them).
#[test]
fn example_directories_load_and_validate() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let names: Vec<String> = dirs.iter().map(|d| relative(d)).collect();
    assert_eq!(names, ["examples/cluster", "examples/local"]);
    for dir in dirs {
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        let (files, _secrets) = example_with_secrets(&files);
        let bundle = load_paths(&files).unwrap_or_else(|e| panic!("{}: {e}", relative(&dir)));
        assert!(
            !bundle.profiles.is_empty(),
            "{}: no profile",
            relative(&dir)
        );
        for set in &bundle.mailbox_sets {
            let errors = validate_mailbox_set(&bundle, set);
            assert!(errors.is_empty(), "{errors:#?}");
        }
        for profile in &bundle.profiles {
            let errors = validate_profile(&bundle, profile);
            assert!(errors.is_empty(), "{errors:#?}");
            if let Some(schedule) = &profile.object.spec.schedule {
                Schedule::parse(schedule)
                    .unwrap_or_else(|e| panic!("{}: schedule: {e}", profile.place()));
            }
        }
    }
}

/// The CSV example resolves to its mailboxes exactly as `mailvault mailboxes` shows them.
#[tokio::test]
async fn the_csv_example_resolves() {
    let (files, _secrets) =
        example_with_secrets(&[root().join("examples/cluster/mailboxset-csv.yaml")]);
    let bundle = load_paths(&files).unwrap();
    let resolved = mailvault::sources::resolve(&bundle, &bundle.mailbox_sets[0], None)
        .await
        .unwrap();
    let users: Vec<&str> = resolved.mailboxes.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, ["info", "sales", "support"]);
    // The quoted password keeps its separator.
    assert_eq!(resolved.mailboxes[1].password.expose(), "CHANGE;ME");
}

#[test]
fn the_validator_catches_what_the_api_server_would() {
    let schemas = schemas();
    let profile = |spec: Value| {
        serde_json::json!({"apiVersion": resources::API_VERSION, "kind": "ArchiveProfile",
                           "metadata": {"name": "p"}, "spec": spec})
    };
    let ok = serde_json::json!({"mailboxSetRef": {"name": "s"}, "server": {"host": "h"}});
    assert_eq!(
        schema_errors(&schemas, &profile(ok.clone())),
        Vec::<String>::new()
    );
    let mut bad = ok;
    bad["server"]["security"] = "Ssl".into();
    bad["server"]["port"] = 70000.into();
    bad["maxParallelJobs"] = 0.into();
    bad["store"] = serde_json::json!({"local": {"persistentVolumeClaim": {}}, "nfs": {}});
    bad["jobTemplate"] = serde_json::json!({"resources": {"limits": {"memory": []}},
                                             "affinity": {"anything": 1}});
    bad.as_object_mut().unwrap().remove("mailboxSetRef");
    let mut errors = schema_errors(&schemas, &profile(bad));
    errors.sort();
    assert_eq!(
        errors,
        [
            "spec.jobTemplate.resources.limits.memory: must be an integer or a string",
            "spec.mailboxSetRef: required",
            "spec.maxParallelJobs: 0 is less than 1.0",
            "spec.server.port: 70000 is more than 65535.0",
            "spec.server.security: \"Ssl\" is not one of [String(\"Tls\"), String(\"StartTls\"), String(\"None\")]",
            "spec.store.local.persistentVolumeClaim.claimName: required",
            "spec.store.nfs: unknown field",
        ]
    );
}
