//! The Argo CD health checks and resource actions under `manifests/argocd/`: every case of
//! `health/health_test.yaml` and `actions/ArchiveProfile/action_test.yaml` runs through the
//! real Lua interpreter (`lua5.4`), in a sandbox like the one Argo CD gives custom scripts,
//! and the argocd-cm patch must hold the `.lua` files byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;

const KINDS: [&str; 2] = ["ArchiveProfile", "MailboxSet"];

/// The status codes Argo CD accepts from a health script.
const HEALTH_STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];

/// Runs a script the way Argo CD does: `obj`, Lua's base and table libraries and the
/// globals in `EXTRA`, no string or math library, no methods on strings; the script's value
/// is then `result`, and the string methods are back. Before it, the test defines `OBJ`,
/// `SCRIPT`, `CHUNKNAME` and `EXTRA`; after it comes what prints the result.
const SANDBOX: &str = r#"
local env = { obj = OBJ, table = table }
local given = { obj = true, table = true }
for name, value in pairs(EXTRA) do
  env[name] = value
  given[name] = true
end
local base = {
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print",
  "rawequal", "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring",
  "type", "unpack", "xpcall",
}
for _, name in ipairs(base) do
  env[name] = _G[name]
  given[name] = true
end
getmetatable("").__index = nil
local chunk = assert(load(SCRIPT, CHUNKNAME, "t", env))
local result = chunk()
for name in pairs(env) do
  if not given[name] then
    error("the script set the global " .. tostring(name))
  end
end
getmetatable("").__index = string
"#;

/// A health script: nothing more than the base and table libraries. Prints the status, a
/// newline and the message.
const HEALTH: (&str, &str) = (
    "{}",
    r#"
if type(result) ~= "table" then
  error("the script returned a " .. type(result) .. ", not a table")
end
if type(result.status) ~= "string" or type(result.message) ~= "string" then
  error("hs.status and hs.message must be strings")
end
io.write(result.status, "\n", result.message)
"#,
);

/// An action or discovery script: also a safe `os` with only `date` and `time`. Prints what
/// the script returns as JSON (keys sorted; an empty table as `{}`).
const ACTION: (&str, &str) = (
    "{ os = { date = os.date, time = os.time } }",
    r#"
local function json_string(s)
  return '"' .. s:gsub('[%c"\\\\]', function(c)
    return string.format("\\\\u%04x", c:byte())
  end) .. '"'
end
local function encode(v)
  local t = type(v)
  if t == "table" then
    local count = 0
    for _ in pairs(v) do count = count + 1 end
    if count > 0 and count == #v then
      local parts = {}
      for i = 1, #v do parts[i] = encode(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do
      assert(type(k) == "string", "a key that is not a string")
      keys[#keys + 1] = k
    end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do parts[i] = json_string(k) .. ":" .. encode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" then
    return json_string(v)
  elseif t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    return string.format("%.17g", v)
  elseif t == "boolean" then
    return tostring(v)
  end
  error("cannot encode a " .. t)
end
io.write(encode(result))
"#,
);

fn argocd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/argocd")
}

fn health_dir() -> PathBuf {
    argocd_dir().join("health")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KindTests {
    tests: Vec<TestCase>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestCase {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct HealthStatus {
    status: String,
    message: String,
}

fn test_cases() -> BTreeMap<String, KindTests> {
    let path = health_dir().join("health_test.yaml");
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `lua5.4` from PATH; installed with apt-get when it is missing and the test runs as root.
fn lua() -> &'static Path {
    static LUA: OnceLock<PathBuf> = OnceLock::new();
    LUA.get_or_init(|| {
        if let Some(found) = find_on_path("lua5.4") {
            return found;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "lua5.4 is not on PATH: install the Debian package lua5.4 (apt-get install lua5.4)"
        );
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        let install = ["install", "-y", "-q", "--no-install-recommends", "lua5.4"];
        if !apt(&install) {
            assert!(apt(&["update", "-q"]), "apt-get update failed");
            assert!(apt(&install), "apt-get install lua5.4 failed");
        }
        find_on_path("lua5.4").expect("lua5.4 is still not on PATH after installing it")
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A Lua expression for a YAML value: maps and sequences become tables (sequences 1-based),
/// nulls nil.
fn lua_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                write!(out, "{i}").unwrap();
            } else if let Some(u) = n.as_u64() {
                write!(out, "{u}").unwrap();
            } else {
                let f = n.as_f64().expect("a YAML number is an integer or a float");
                if f.is_nan() {
                    out.push_str("(0/0)");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "(1/0)" } else { "(-1/0)" });
                } else {
                    // Debug keeps a fraction (`3.0`), so Lua reads a float back.
                    write!(out, "{f:?}").unwrap();
                }
            }
        }
        Value::String(s) => lua_string(s, out),
        Value::Sequence(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Mapping(map) => {
            out.push('{');
            for (key, item) in map {
                assert!(!key.is_null(), "a Lua table cannot have a nil key");
                out.push('[');
                lua_literal(key, out);
                out.push_str("] = ");
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Tagged(tagged) => lua_literal(&tagged.value, out),
    }
}

/// A double-quoted Lua string with the same bytes as `s`: printable ASCII as it is, the rest
/// escaped (`\ddd` takes exactly three digits, so a digit after it stays a digit).
fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b' '..=b'~' => out.push(char::from(b)),
            _ => write!(out, "\\{b:03}").unwrap(),
        }
    }
    out.push('"');
}

/// Runs `script` on `obj` as a health script and returns what it printed.
fn run_lua(chunk_name: &str, script: &str, obj: &Value) -> Result<String, String> {
    run_driver(HEALTH, chunk_name, script, obj)
}

/// Runs `script` on `obj` in the [`SANDBOX`] with a kind's extra globals and printer.
fn run_driver(
    (extra, print): (&str, &str),
    chunk_name: &str,
    script: &str,
    obj: &Value,
) -> Result<String, String> {
    let mut program = String::from("local OBJ = ");
    lua_literal(obj, &mut program);
    program.push_str("\nlocal SCRIPT = ");
    lua_string(script, &mut program);
    program.push_str("\nlocal CHUNKNAME = ");
    lua_string(&format!("={chunk_name}"), &mut program);
    program.push_str("\nlocal EXTRA = ");
    program.push_str(extra);
    program.push_str(SANDBOX);
    program.push_str(print);

    let mut file = tempfile::Builder::new()
        .suffix(".lua")
        .tempfile()
        .expect("temporary file");
    file.write_all(program.as_bytes())
        .expect("writing the Lua program");
    let output = Command::new(lua())
        .arg(file.path())
        .output()
        .expect("running lua5.4");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    String::from_utf8(output.stdout).map_err(|e| format!("output is not UTF-8: {e}"))
}

fn health(kind: &str, obj: &Value) -> Result<HealthStatus, String> {
    let script = read(&health_dir().join(format!("{kind}.lua")));
    let printed = run_lua(&format!("{kind}.lua"), &script, obj)?;
    let (status, message) = printed
        .split_once('\n')
        .ok_or_else(|| format!("unexpected output {printed:?}"))?;
    Ok(HealthStatus {
        status: status.to_string(),
        message: message.to_string(),
    })
}

fn check_kind(kind: &str) {
    let cases = test_cases();
    let tests = &cases
        .get(kind)
        .unwrap_or_else(|| panic!("health_test.yaml has no {kind}"))
        .tests;
    assert!(!tests.is_empty(), "no cases for {kind}");
    let mut failures = Vec::new();
    for case in tests {
        let path = health_dir().join(&case.input_path);
        let obj: Value = serde_yaml::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            obj["kind"].as_str(),
            Some(kind),
            "{} is not a {kind}",
            case.input_path
        );
        assert!(
            HEALTH_STATUSES.contains(&case.health_status.status.as_str()),
            "{}: {} is not an Argo CD health status",
            case.input_path,
            case.health_status.status
        );
        match health(kind, &obj) {
            Ok(got) if got == case.health_status => {}
            Ok(got) => failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.input_path, case.health_status
            )),
            Err(e) => failures.push(format!("{}: the script failed: {e}", case.input_path)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn archive_profile_health() {
    check_kind("ArchiveProfile");
}

#[test]
fn mailbox_set_health() {
    check_kind("MailboxSet");
}

#[test]
fn every_fixture_is_a_listed_case() {
    let cases = test_cases();
    let listed: BTreeSet<String> = cases
        .values()
        .flat_map(|k| k.tests.iter().map(|c| c.input_path.clone()))
        .collect();
    assert_eq!(
        cases.keys().map(String::as_str).collect::<Vec<_>>(),
        KINDS,
        "health_test.yaml lists other kinds"
    );
    let mut on_disk = BTreeSet::new();
    for kind in KINDS {
        let dir = health_dir().join("testdata").join(kind);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let name = entry.unwrap().file_name().into_string().unwrap();
            on_disk.insert(format!("testdata/{kind}/{name}"));
        }
    }
    assert_eq!(
        on_disk, listed,
        "testdata/ and health_test.yaml list different files"
    );
}

#[test]
fn argocd_cm_patch_embeds_the_scripts() {
    let path = argocd_dir().join("argocd-cm-patch.yaml");
    let patch: Value = serde_yaml::from_str(&read(&path)).unwrap();
    assert_eq!(patch["apiVersion"].as_str(), Some("v1"));
    assert_eq!(patch["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(patch["metadata"]["name"].as_str(), Some("argocd-cm"));
    assert_eq!(patch["metadata"]["namespace"].as_str(), Some("argocd"));
    let data = patch["data"].as_mapping().expect("data");
    let stale = "differs from the scripts: run manifests/argocd/update-patch.sh";
    let mut keys = Vec::new();
    for kind in KINDS {
        let key = format!("resource.customizations.health.mailvault.io_{kind}");
        let embedded = data
            .get(key.as_str())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("argocd-cm-patch.yaml has no {key}"));
        let script = read(&health_dir().join(format!("{kind}.lua")));
        assert!(embedded == script, "{key} {stale}");
        keys.push(key);
    }

    let key = "resource.customizations.actions.mailvault.io_ArchiveProfile";
    let actions: Value = serde_yaml::from_str(data[key].as_str().expect(key)).unwrap();
    let dir = actions_dir();
    assert!(
        actions["discovery.lua"].as_str() == Some(read(&dir.join("discovery.lua")).as_str()),
        "discovery.lua {stale}"
    );
    let definitions = actions["definitions"].as_sequence().unwrap();
    let names: BTreeSet<&str> = definitions
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, action_names().iter().map(String::as_str).collect());
    for definition in definitions {
        let name = definition["name"].as_str().unwrap();
        let script = read(&dir.join(name).join("action.lua"));
        assert!(
            definition["action.lua"].as_str() == Some(script.as_str()),
            "{name}/action.lua {stale}"
        );
    }
    keys.push(key.to_string());

    // The action sets spec.trigger, which Git does not hold: without this, Argo CD shows
    // the profile OutOfSync, and self-heal could remove the value before the operator saw it.
    let key = "resource.customizations.ignoreDifferences.mailvault.io_ArchiveProfile";
    let ignored: Value = serde_yaml::from_str(data[key].as_str().expect(key)).unwrap();
    assert_eq!(ignored["jsonPointers"][0].as_str(), Some("/spec/trigger"));
    keys.push(key.to_string());

    assert_eq!(
        data.len(),
        keys.len(),
        "argocd-cm-patch.yaml has other keys"
    );
}

fn actions_dir() -> PathBuf {
    argocd_dir().join("actions/ArchiveProfile")
}

/// The actions defined: the directories with an `action.lua`.
fn action_names() -> BTreeSet<String> {
    std::fs::read_dir(actions_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("action.lua").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActionTests {
    discovery_tests: Vec<DiscoveryTest>,
    action_tests: Vec<ActionTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DiscoveryTest {
    input_path: String,
    result: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ActionTest {
    action: String,
    input_path: String,
    expected_output_path: String,
}

fn action_tests() -> ActionTests {
    let path = actions_dir().join("action_test.yaml");
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(path: &str) -> Value {
    let path = actions_dir().join(path);
    serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs an action script as Argo CD would and returns what it made of `obj`.
fn run_action(chunk_name: &str, script: &str, obj: &Value) -> serde_json::Value {
    let printed = run_driver(ACTION, chunk_name, script, obj)
        .unwrap_or_else(|e| panic!("{chunk_name} failed: {e}"));
    serde_json::from_str(&printed).unwrap_or_else(|e| panic!("{chunk_name}: {e}: {printed}"))
}

/// Empty lists as empty maps: Lua has one empty table for both.
fn as_lua_sees_it(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Array(items) if items.is_empty() => serde_json::json!({}),
        serde_json::Value::Array(items) => items.into_iter().map(as_lua_sees_it).collect(),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| (k, as_lua_sees_it(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other,
    }
}

#[test]
fn archive_profile_actions_are_offered() {
    let script = read(&actions_dir().join("discovery.lua"));
    for case in action_tests().discovery_tests {
        let offered = run_action("discovery.lua", &script, &fixture(&case.input_path));
        let mut expected = serde_json::Map::new();
        for action in &case.result {
            let mut fields = action.as_object().unwrap().clone();
            let name = fields.remove("name").unwrap();
            expected.insert(name.as_str().unwrap().to_string(), fields.into());
        }
        assert_eq!(
            offered,
            serde_json::Value::Object(expected),
            "{}",
            case.input_path
        );
        let names: BTreeSet<String> = offered.as_object().unwrap().keys().cloned().collect();
        assert_eq!(names, action_names(), "discovery offers what is defined");
    }
}

/// "Run now" sets spec.trigger.manual to a new value, the time it ran, and nothing else.
#[test]
fn run_now_sets_the_trigger_to_now_and_changes_nothing_else() {
    let tests = action_tests();
    assert!(!tests.action_tests.is_empty());
    for case in tests.action_tests {
        let name = format!("{}/action.lua", case.action);
        let script = read(&actions_dir().join(&name));
        let input = fixture(&case.input_path);
        let before = chrono::Utc::now().timestamp();
        let output = run_action(&name, &script, &input);
        let after = chrono::Utc::now().timestamp();
        let now = output["spec"]["trigger"]["manual"]
            .as_str()
            .unwrap()
            .to_string();
        let ran = chrono::DateTime::parse_from_rfc3339(&now)
            .unwrap_or_else(|e| panic!("{}: {now:?}: {e}", case.input_path))
            .timestamp();
        assert!((before..=after).contains(&ran), "{now} is not now");
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
        assert_ne!(
            input["spec"]["trigger"]["manual"].as_str(),
            Some(now.as_str()),
            "the value must be new"
        );
        let expected =
            read(&actions_dir().join(&case.expected_output_path)).replace("${NOW}", &now);
        let expected: serde_json::Value = serde_yaml::from_str(&expected).unwrap();
        assert_eq!(output, as_lua_sees_it(expected), "{}", case.input_path);
    }
}

#[test]
fn every_action_fixture_is_a_listed_case() {
    let tests = action_tests();
    let mut listed: BTreeSet<String> = tests
        .discovery_tests
        .iter()
        .map(|c| c.input_path.clone())
        .collect();
    for case in &tests.action_tests {
        assert!(action_names().contains(&case.action), "{}", case.action);
        listed.insert(case.input_path.clone());
        listed.insert(case.expected_output_path.clone());
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(actions_dir().join("testdata"))
        .unwrap()
        .map(|e| format!("testdata/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(on_disk, listed);
}

#[test]
fn example_application_deploys_manifests() {
    let path = argocd_dir().join("application.yaml");
    let app: Value = serde_yaml::from_str(&read(&path)).unwrap();
    assert_eq!(app["apiVersion"].as_str(), Some("argoproj.io/v1alpha1"));
    assert_eq!(app["kind"].as_str(), Some("Application"));
    assert_eq!(app["spec"]["source"]["path"].as_str(), Some("manifests"));
}

#[test]
fn lua_literals_read_back_as_the_same_values() {
    let tricky =
        "quote \" backslash \\ newline \n tab \t cr \r nul \0 bell \u{7} digits \u{1}23 é ✓";
    let obj: Value = serde_yaml::from_str(&format!(
        "s: {}\nlist: [1, -2, 3.5, true, false]\nmissing: null\n7: seven\nbig: 18446744073709551615",
        serde_json::to_string(tricky).unwrap()
    ))
    .unwrap();
    let script = r#"
local o = obj
local hs = {}
hs.status = o.s
hs.message = o.list[1] .. " " .. o.list[2] .. " " .. o.list[3] .. " " .. tostring(o.list[4])
  .. " " .. tostring(o.list[5]) .. " " .. #o.list .. " " .. tostring(o.missing) .. " " .. o[7]
  .. " " .. tostring(o.big > 1e19)
return hs
"#;
    let printed = run_lua("literal.lua", script, &obj).expect("lua run");
    assert_eq!(
        printed,
        format!("{tricky}\n1 -2 3.5 true false 5 nil seven true")
    );
}
