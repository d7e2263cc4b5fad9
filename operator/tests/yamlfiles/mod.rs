//! The repository's YAML files (manifests, examples, e2e objects) as JSON values, for the
//! tests that check them.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `path` relative to the repository root, for messages.
pub fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every `.yaml`/`.yml` file below `dir` (recursively), sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The documents of a (multi-document) YAML file, empty ones left out.
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", relative(path)));
            serde_yaml::from_value::<Value>(value)
                .unwrap_or_else(|e| panic!("{}: {e}", relative(path)))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Checks that `object` (from `file`) has what every Kubernetes object has.
pub fn assert_object(file: &Path, object: &Value) {
    let place = relative(file);
    for field in ["apiVersion", "kind"] {
        assert!(
            object[field].as_str().is_some_and(|s| !s.is_empty()),
            "{place}: an object without {field}: {object}"
        );
    }
    assert!(
        object["metadata"]["name"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{place}: a {} without metadata.name",
        object["kind"]
    );
}
