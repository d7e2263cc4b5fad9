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

fn columns(crd: &Value) -> Vec<(String, String)> {
    version(crd)["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["jsonPath"].as_str().unwrap().to_string(),
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
    let names: Vec<String> = columns(crd).into_iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        ["Schedule", "Last Run", "Result", "Archived", "Next Run", "Age"]
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
    let names: Vec<String> = columns(crd).into_iter().map(|c| c.0).collect();
    assert_eq!(names, ["Mode", "Mailboxes", "Synced", "Age"]);
    let schema = &version(crd)["schema"]["openAPIV3Schema"];
    assert_structural(schema, "");
    let mut found = Vec::new();
    rules(schema, &mut found);
    assert!(found.contains(&"has(self.masterPassword) != has(self.csv)".to_string()));
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(status["mailboxes"]["type"], "integer");
    assert!(status["lastSync"].is_object());
}
