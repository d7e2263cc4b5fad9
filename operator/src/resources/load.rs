//! Loading the YAML a user would `kubectl apply`: files and directories of multi-document
//! YAML holding ArchiveProfiles, MailboxSets and Secrets. Other kinds are ignored, as they
//! may well sit beside ours in a GitOps directory.
//!
//! Every error names the file, the line the document starts on (or the exact line for a
//! syntax error), the object and the field. Secret values never reach an error message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml::Value;

use super::{ArchiveProfile, MailboxSet, API_VERSION, GROUP};

/// An object and where it was read from.
#[derive(Clone, Debug)]
pub struct Located<T> {
    pub file: PathBuf,
    /// 1-based line where the object's YAML document starts.
    pub line: usize,
    pub object: T,
}

impl<T> Located<T> {
    /// `file:line`, for error messages.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A `v1/Secret`, decoded. Values are kept as bytes; `Debug` prints only the keys.
#[derive(Clone)]
pub struct SecretObject {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for SecretObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretObject")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Everything read from the given paths.
#[derive(Debug, Default)]
pub struct Bundle {
    pub profiles: Vec<Located<ArchiveProfile>>,
    pub mailbox_sets: Vec<Located<MailboxSet>>,
    pub secrets: Vec<Located<SecretObject>>,
}

impl Bundle {
    pub fn mailbox_set(&self, namespace: &str, name: &str) -> Option<&Located<MailboxSet>> {
        self.mailbox_sets.iter().find(|m| {
            m.object.metadata.name.as_deref() == Some(name)
                && namespace_of(&m.object.metadata) == namespace
        })
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Located<SecretObject>> {
        self.secrets
            .iter()
            .find(|s| s.object.name == name && s.object.namespace == namespace)
    }
}

/// The namespace of an object, `default` when the YAML leaves it out (as kubectl does with
/// the default context).
pub fn namespace_of(meta: &kube::core::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no .yaml, .yml or .json files in this directory")]
    EmptyDirectory { path: PathBuf },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: {object}: {field}: {message}")]
    Field {
        file: PathBuf,
        line: usize,
        object: String,
        field: String,
        message: String,
    },
    #[error("{file}:{line}: {object} is defined twice (first at {first})")]
    Duplicate {
        file: PathBuf,
        line: usize,
        object: String,
        first: String,
    },
}

/// Reads every path (a file, or a directory of `.yaml`/`.yml`/`.json` files, not recursive,
/// like `kubectl apply -f DIR`) in order.
pub fn load_paths(paths: &[PathBuf]) -> Result<Bundle, LoadError> {
    let mut bundle = Bundle::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let files = yaml_files_in(path)?;
            if files.is_empty() {
                return Err(LoadError::EmptyDirectory { path: path.clone() });
            }
            for file in files {
                load_file(&file, &mut bundle)?;
            }
        } else {
            load_file(path, &mut bundle)?;
        }
    }
    Ok(bundle)
}

fn yaml_files_in(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(file: &Path, bundle: &mut Bundle) -> Result<(), LoadError> {
    let text = std::fs::read_to_string(file).map_err(|source| LoadError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    for (line, doc) in split_documents(&text) {
        load_document(file, line, &doc, bundle)?;
    }
    Ok(())
}

/// Splits multi-document YAML at `---` lines, keeping the 1-based line each document
/// starts on, so that errors can point into the file.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---" || line.starts_with("--- ") || line == "...";
        if is_separator {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

fn load_document(
    file: &Path,
    line: usize,
    doc: &str,
    bundle: &mut Bundle,
) -> Result<(), LoadError> {
    let syntax = |e: serde_yaml::Error| LoadError::Syntax {
        file: file.to_path_buf(),
        line: line + e.location().map_or(0, |l| l.line().saturating_sub(1)),
        message: e.to_string(),
    };
    let value: Value = serde_yaml::from_str(doc).map_err(syntax)?;
    if value.is_null() {
        return Ok(());
    }
    let str_at = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or("");
    let api_version = str_at("apiVersion").to_string();
    let kind = str_at("kind").to_string();
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let object = format!("{kind} {namespace}/{name}");
    let field_error = |field: &str, message: String| LoadError::Field {
        file: file.to_path_buf(),
        line,
        object: object.clone(),
        field: field.to_string(),
        message,
    };

    let ours = api_version.split('/').next() == Some(GROUP);
    if ours && api_version != API_VERSION {
        return Err(field_error(
            "apiVersion",
            format!("unsupported version {api_version:?}, expected {API_VERSION:?}"),
        ));
    }
    let is_secret = api_version == "v1" && kind == "Secret";
    if !ours && !is_secret {
        return Ok(());
    }
    if name.is_empty() {
        return Err(field_error("metadata.name", "is required".into()));
    }
    fn located<T>(file: &Path, line: usize, object: T) -> Located<T> {
        Located {
            file: file.to_path_buf(),
            line,
            object,
        }
    }
    match kind.as_str() {
        "Secret" => {
            let secret = parse_secret(&value, namespace.clone(), name.clone())
                .map_err(|(field, message)| field_error(&field, message))?;
            if let Some(first) = bundle.secret(&namespace, &name) {
                return Err(duplicate(file, line, &object, first.place()));
            }
            bundle.secrets.push(located(file, line, secret));
        }
        "ArchiveProfile" => {
            let profile: ArchiveProfile = typed(doc, line, file, &object)?;
            let first = bundle.profiles.iter().find(|p| {
                p.object.metadata.name == profile.metadata.name
                    && namespace_of(&p.object.metadata) == namespace
            });
            if let Some(first) = first {
                return Err(duplicate(file, line, &object, first.place()));
            }
            bundle.profiles.push(located(file, line, profile));
        }
        "MailboxSet" => {
            let set: MailboxSet = typed(doc, line, file, &object)?;
            if let Some(first) = bundle.mailbox_set(&namespace, &name) {
                return Err(duplicate(file, line, &object, first.place()));
            }
            bundle.mailbox_sets.push(located(file, line, set));
        }
        other => {
            return Err(field_error(
                "kind",
                format!("unknown kind {other:?} in {GROUP}, expected ArchiveProfile or MailboxSet"),
            ))
        }
    }
    Ok(())
}

fn duplicate(file: &Path, line: usize, object: &str, first: String) -> LoadError {
    LoadError::Duplicate {
        file: file.to_path_buf(),
        line,
        object: object.to_string(),
        first,
    }
}

/// Deserializes one of our kinds, reporting the path of the offending field and its line.
fn typed<T: serde::de::DeserializeOwned>(
    doc: &str,
    line: usize,
    file: &Path,
    object: &str,
) -> Result<T, LoadError> {
    let de = serde_yaml::Deserializer::from_str(doc);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = line + inner.location().map_or(0, |l| l.line().saturating_sub(1));
        // serde_yaml appends " at line N column M", relative to the document; the line we
        // report is the file's.
        let message = inner.to_string();
        let message = match message.find(" at line ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        // It also starts with the path of the enclosing map, which the field already says.
        let message = match message.split_once(": ") {
            Some((head, rest)) if field.starts_with(head) => rest.to_string(),
            _ => message,
        };
        LoadError::Field {
            file: file.to_path_buf(),
            line,
            object: object.to_string(),
            field: if field == "." {
                "(document)".into()
            } else {
                field
            },
            message,
        }
    })
}

/// Decodes a Secret's `data` (base64) and `stringData` (plain; wins, as on the API server).
/// Errors name the key, never the value.
fn parse_secret(
    value: &Value,
    namespace: String,
    name: String,
) -> Result<SecretObject, (String, String)> {
    let mut data = BTreeMap::new();
    if let Some(map) = value.get("data") {
        let map = map.as_mapping().ok_or_else(|| {
            (
                "data".to_string(),
                "must be a map of keys to base64 strings".to_string(),
            )
        })?;
        for (k, v) in map {
            let key = k.as_str().unwrap_or("").to_string();
            let field = format!("data.{key}");
            let text = v
                .as_str()
                .ok_or_else(|| (field.clone(), "must be a base64 string".to_string()))?;
            let compact: String = text.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|_| (field.clone(), "is not valid base64".to_string()))?;
            data.insert(key, bytes);
        }
    }
    if let Some(map) = value.get("stringData") {
        let map = map.as_mapping().ok_or_else(|| {
            (
                "stringData".to_string(),
                "must be a map of keys to strings".to_string(),
            )
        })?;
        for (k, v) in map {
            let key = k.as_str().unwrap_or("").to_string();
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err((format!("stringData.{key}"), "must be a string".to_string()));
                }
            };
            data.insert(key, text.into_bytes());
        }
    }
    Ok(SecretObject {
        namespace,
        name,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Bundle, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.yaml");
        std::fs::write(&path, text).unwrap();
        load_paths(&[path])
    }

    const PROFILE: &str = "apiVersion: mailvault.io/v1alpha1
kind: ArchiveProfile
metadata:
  name: p
spec:
  mailboxSetRef:
    name: s
  server:
    host: imap.example.org
";

    #[test]
    fn loads_multi_document_files_and_skips_other_kinds() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\n{PROFILE}---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: mail\n\
             data:\n  password: aHVudGVyMg==\nstringData:\n  username: archiver\n"
        );
        let bundle = load_str(&text).unwrap();
        assert_eq!(bundle.profiles.len(), 1);
        assert_eq!(bundle.profiles[0].line, 6);
        let spec = &bundle.profiles[0].object.spec;
        assert_eq!(spec.server.effective_port(), 993);
        assert_eq!(spec.max_parallel_jobs, 4);
        assert!(spec.folders.exclude_defaults);
        let secret = bundle.secret("mail", "creds").unwrap();
        assert_eq!(secret.object.data["password"], b"hunter2");
        assert_eq!(secret.object.data["username"], b"archiver");
        assert!(!format!("{:?}", secret.object).contains("hunter2"));
    }

    #[test]
    fn field_errors_name_file_line_object_and_field() {
        let text = format!("# comment\n---\n{PROFILE}    security: Tlz\n");
        let err = load_str(&text).unwrap_err().to_string();
        assert!(err.contains("in.yaml:12:"), "{err}");
        assert!(err.contains("ArchiveProfile default/p"), "{err}");
        assert!(err.contains("spec.server.security"), "{err}");
        assert!(err.contains("Tlz"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = format!("{PROFILE}    hots: typo\n");
        let err = load_str(&text).unwrap_err().to_string();
        assert!(err.contains("spec.server"), "{err}");
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = load_str("a: 1\n---\nb: [1,\n  c: :\n").unwrap_err();
        assert!(
            matches!(err, LoadError::Syntax { line: 4 | 5, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_base64_names_the_key_not_the_value() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  password: '!!hunter2!!'\n";
        let err = load_str(text).unwrap_err().to_string();
        assert!(err.contains("data.password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn duplicates_and_foreign_versions_are_rejected() {
        let err = load_str(&format!("{PROFILE}---\n{PROFILE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("defined twice"), "{err}");
        let err = load_str(&PROFILE.replace("v1alpha1", "v9"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apiVersion"), "{err}");
    }

    #[test]
    fn a_directory_is_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            PROFILE.replace("name: p", "name: b"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            PROFILE.replace("name: p", "name: a"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let bundle = load_paths(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = bundle
            .profiles
            .iter()
            .map(|p| p.object.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    // 256 cases each by default; `PROPTEST_CASES=100000` fuzzes for longer.
    proptest::proptest! {
        /// Whatever bytes a file holds, loading returns a value or an error naming the
        /// file; it never panics.
        #[test]
        fn arbitrary_input_never_panics(text in "(?s).{0,400}") {
            match load_str(&text) {
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(e.to_string().contains("in.yaml")),
            }
        }

        /// Damaging a valid document anywhere (one character replaced, a line cut) gives
        /// a result or a located error, never a panic.
        #[test]
        fn damaged_documents_never_panic(at in 0usize..400, replacement in proptest::char::any(), cut in proptest::bool::ANY) {
            let valid = format!("{PROFILE}  folders:\n    include: [\"INBOX\"]\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  k: aGk=\n");
            let mut chars: Vec<char> = valid.chars().collect();
            let at = at % chars.len();
            if cut {
                chars.truncate(at);
            } else {
                chars[at] = replacement;
            }
            let text: String = chars.into_iter().collect();
            if let Err(e) = load_str(&text) {
                proptest::prop_assert!(e.to_string().contains("in.yaml"), "{}", e);
            }
        }
    }
}
