//! The CRDs in `crds/` are generated from the Rust types; this keeps them in step and checks
//! what the API server will rely on (structural schema, status, columns, validation rules).

use serde_json::Value;

const REGENERATE: &str = "cargo run -q -- crds > crds/mailvault.io.yaml";

fn generated() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&mailvault::resources::crds_yaml())
        .map(|d| {
            serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d).unwrap()).unwrap()
        })
        .collect()
}

use serde::Deserialize;

#[test]
fn committed_crds_are_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/mailvault.io.yaml");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == mailvault::resources::crds_yaml(),
        "crds/mailvault.io.yaml is out of date with the Rust types; regenerate it from the \
         repository root with `{REGENERATE}` and commit it"
    );
}

#[test]
fn crds_print_from_the_command_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailvault"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        mailvault::resources::crds_yaml()
    );
}

fn version(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]
}

/// The steps of a JSONPath such as `.status.conditions[?(@.type=="Ready")].status`: dots
/// inside brackets do not separate steps.
fn steps(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut depth) = (1, 0);
    for (i, c) in path.char_indices().skip(1) {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out
}

/// The printer columns as "name type priority jsonPath", checking on the way that each
/// path names a field of the schema (a misspelt path shows an empty column, silently).
fn columns(crd: &Value) -> Vec<String> {
    let schema = &version(crd)["schema"]["openAPIV3Schema"];
    version(crd)["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let path = c["jsonPath"].as_str().unwrap();
            if !path.starts_with(".metadata.") {
                let mut node = schema;
                for step in steps(path) {
                    let (field, filter) = match step.split_once('[') {
                        Some((field, filter)) => (field, Some(filter)),
                        None => (step, None),
                    };
                    node = &node["properties"][field];
                    if filter.is_some() {
                        node = &node["items"];
                    }
                    assert!(
                        node.is_object(),
                        "column {}: {path} is not in the schema",
                        c["name"]
                    );
                }
            }
            format!(
                "{} {} {} {path}",
                c["name"].as_str().unwrap(),
                c["type"].as_str().unwrap(),
                c["priority"].as_i64().unwrap_or(0)
            )
        })
        .collect()
}

fn rules(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get("x-kubernetes-validations") {
                out.extend(list.iter().map(|r| r["rule"].as_str().unwrap().to_string()));
            }
            map.values().for_each(|v| rules(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| rules(v, out)),
        _ => {}
    }
}

/// The API server's structural schema rules, as far as a generator could break them: every
/// node has a type (or preserves unknown fields), and no object has both `properties` and
/// `additionalProperties`.
fn assert_structural(schema: &Value, path: &str) {
    let map = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    assert!(
        map.contains_key("type")
            || map.contains_key("x-kubernetes-preserve-unknown-fields")
            || map.contains_key("x-kubernetes-int-or-string"),
        "{path} has no type"
    );
    assert!(
        !(map.contains_key("properties") && map.contains_key("additionalProperties")),
        "{path} has both properties and additionalProperties"
    );
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(list)) = map.get(key) {
            // Allowed only as value validation without types of their own.
            for v in list {
                assert!(v.get("type").is_none(), "{path}.{key} declares a type");
            }
        }
    }
    if let Some(Value::Object(props)) = map.get("properties") {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = map.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(v @ Value::Object(_)) = map.get("additionalProperties") {
        assert_structural(v, &format!("{path}{{}}"));
    }
}

#[test]
fn archive_profile_crd() {
    let crds = generated();
    let crd = &crds[0];
    assert_eq!(crd["metadata"]["name"], "archiveprofiles.mailvault.io");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "ap");
    assert!(version(crd)["subresources"]["status"].is_object());
    // Next Run is text: a `date` column prints a time in the future as `<invalid>`.
    let ready = r#"conditions[?(@.type=="Ready")]"#;
    assert_eq!(
        columns(crd),
        [
            format!("Ready string 0 .status.{ready}.status"),
            "Schedule string 1 .spec.schedule.cron".into(),
            "Last Run date 0 .status.lastRun.completionTime".into(),
            "Result string 0 .status.lastRun.result".into(),
            "Archived integer 0 .status.lastRun.totals.archived".into(),
            "Progress string 0 .status.activeRun.progress".into(),
            "Next Run string 0 .status.nextScheduleTime".into(),
            "Age date 0 .metadata.creationTimestamp".into(),
            format!("Message string 1 .status.{ready}.message"),
        ]
    );
    let schema = &version(crd)["schema"]["openAPIV3Schema"];
    assert_structural(schema, "");
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["maxParallelJobs"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(
        spec["server"]["properties"]["security"]["enum"],
        serde_json::json!(["Tls", "StartTls", "None"])
    );
    assert_eq!(spec["successfulRunsHistoryLimit"]["default"], 3);
    assert_eq!(spec["schedule"]["properties"]["timeZone"]["default"], "UTC");
    let mut found = Vec::new();
    rules(schema, &mut found);
    assert!(
        found.iter().any(|r| r.contains("self.matches")),
        "{found:?}"
    );
    assert!(found
        .iter()
        .any(|r| r.contains("minAgeDays <= self.maxAgeDays")));
    // The names the Argo CD health script reads.
    let status = &schema["properties"]["status"]["properties"];
    for key in ["observedGeneration", "conditions", "lastRun", "activeRun"] {
        assert!(status.get(key).is_some(), "status.{key}");
    }
    assert!(status["lastRun"]["properties"]["totals"]["properties"]["archived"].is_object());
    assert!(spec["schedule"]["properties"]["suspend"].is_object());
}

#[test]
fn mailbox_set_crd() {
    let crds = generated();
    let crd = &crds[1];
    assert_eq!(crd["metadata"]["name"], "mailboxsets.mailvault.io");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "mbs");
    assert!(version(crd)["subresources"]["status"].is_object());
    let ready = r#"conditions[?(@.type=="Ready")]"#;
    assert_eq!(
        columns(crd),
        [
            format!("Ready string 0 .status.{ready}.status"),
            "Mode string 0 .status.mode".into(),
            "Mailboxes integer 0 .status.mailboxes".into(),
            "Synced date 0 .status.lastSync.time".into(),
            "Age date 0 .metadata.creationTimestamp".into(),
            format!("Message string 1 .status.{ready}.message"),
        ]
    );
    let schema = &version(crd)["schema"]["openAPIV3Schema"];
    assert_structural(schema, "");
    let mut found = Vec::new();
    rules(schema, &mut found);
    assert!(
        found.iter().any(|r| r
            == "(has(self.masterPassword) ? 1 : 0) + (has(self.csv) ? 1 : 0) + (has(self.oauth2) ? 1 : 0) == 1"),
        "{found:?}"
    );
    let oauth2 = &schema["properties"]["spec"]["properties"]["oauth2"];
    assert_eq!(
        oauth2["properties"]["provider"]["enum"],
        serde_json::json!(["Microsoft365", "Google", "Generic"])
    );
    for key in [
        "tenantID",
        "clientID",
        "tokenURL",
        "credentialsSecretRef",
        "directory",
    ] {
        assert!(oauth2["properties"][key].is_object(), "spec.oauth2.{key}");
    }
    let directory = &oauth2["properties"]["directory"]["properties"];
    assert!(directory["microsoftGraph"]["properties"]["groupID"].is_object());
    assert!(directory["googleDirectory"]["properties"]["adminEmail"].is_object());
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(status["mailboxes"]["type"], "integer");
    assert!(status["lastSync"].is_object());
}

/// Properties without a description, below `schema` (named by their path).
fn undescribed(schema: &Value, path: &str, out: &mut Vec<String>) {
    let described = |s: &Value| {
        s["description"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty() && !d.contains("Auto-generated"))
    };
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, property) in props {
            let here = format!("{path}.{name}");
            if !described(property) {
                out.push(here.clone());
            }
            undescribed(property, &here, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undescribed(items, &format!("{path}[]"), out);
    }
    if let Some(v @ Value::Object(_)) = schema.get("additionalProperties") {
        undescribed(v, &format!("{path}{{}}"), out);
    }
}

/// `kubectl explain` shows a description for both kinds and every field, down to the
/// Kubernetes types embedded in the job template.
#[test]
fn every_field_has_a_description() {
    for crd in generated() {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let schema = &version(&crd)["schema"]["openAPIV3Schema"];
        let description = schema["description"].as_str().unwrap_or_default();
        assert!(
            !description.is_empty() && !description.contains("Auto-generated"),
            "{kind}: {description:?}"
        );
        let mut missing = Vec::new();
        for part in ["spec", "status"] {
            let part_schema = &schema["properties"][part];
            assert!(part_schema.is_object(), "{kind} has no {part}");
            if part_schema["description"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                missing.push(part.to_string());
            }
            undescribed(part_schema, part, &mut missing);
        }
        assert!(
            missing.is_empty(),
            "{kind}: {} fields without a description:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }
}

/// Conditions as in Kubernetes' own `meta/v1` Condition: merged by type under server-side
/// apply, a status that is one of three words, and a timestamp the API server checks.
#[test]
fn conditions_follow_the_api_conventions() {
    for crd in generated() {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let schema = &version(&crd)["schema"]["openAPIV3Schema"];
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
        let condition = &conditions["items"];
        let required: Vec<&str> = condition["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for key in ["type", "status", "lastTransitionTime", "reason", "message"] {
            assert!(required.contains(&key), "{kind}: {key} is not required");
        }
        let fields = &condition["properties"];
        assert_eq!(
            fields["status"]["enum"],
            serde_json::json!(["True", "False", "Unknown"]),
            "{kind}"
        );
        assert_eq!(
            fields["lastTransitionTime"]["format"], "date-time",
            "{kind}"
        );
        assert_eq!(fields["observedGeneration"]["minimum"].as_f64(), Some(0.0));
    }
}
