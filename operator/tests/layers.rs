//! Dependencies between the crate's top-level modules point one way: down the layers
//! below, never up, and never in a circle. The test reads every file under `src/`, maps
//! each `crate::a::...` path, each name in `use crate::{a, b}` and each `super::` path that
//! climbs out of its module to the top-level module it names, and fails on an import of a
//! higher layer and on any cycle. A new top-level module must be placed in a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first. A module may use modules of its own layer and of the layers
/// below, as long as no cycle forms. `main` is the binary's `src/main.rs`. The README's
/// "How the code is laid out" shows the same table.
const LAYERS: &[(&str, &[&str])] = &[
    ("the command line", &["main", "cli"]),
    ("operator and worker", &["operator", "worker"]),
    (
        "the run contract and the local run",
        &["runplan", "archiving"],
    ),
    ("archiving and export", &["engine", "export"]),
    (
        "parts",
        &[
            "imap",
            "oauth2",
            "store",
            "sources",
            "resources",
            "protocol",
            "tls",
            "time",
            "sensitive",
        ],
    ),
];

#[test]
fn dependencies_point_down_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = module_edges(&src);
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, modules))| modules.iter().map(move |m| (*m, i)))
        .collect();

    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    let unplaced: Vec<&String> = modules
        .iter()
        .filter(|m| !layer_of.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "top-level modules in no layer (add them to LAYERS): {unplaced:?}"
    );
    let absent: Vec<&&str> = layer_of.keys().filter(|m| !modules.contains(**m)).collect();
    assert!(
        absent.is_empty(),
        "LAYERS names modules that do not exist: {absent:?}"
    );

    let mut violations = Vec::new();
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, targets) in &edges {
        for (to, place) in targets {
            if from == to {
                continue;
            }
            if layer_of[to.as_str()] < layer_of[from.as_str()] {
                violations.push(format!(
                    "{from} ({}) uses {to} ({}), a higher layer, in {place}",
                    LAYERS[layer_of[from.as_str()]].0,
                    LAYERS[layer_of[to.as_str()]].0
                ));
            }
            graph.entry(from).or_default().insert(to);
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let found = cycles(&graph);
    assert!(found.is_empty(), "module cycles: {found:?}");

    // Within a top-level module too, submodules use each other one way.
    for (top, graph) in submodule_graphs(&src) {
        let graph: BTreeMap<&str, BTreeSet<&str>> = graph
            .iter()
            .map(|(from, to)| (from.as_str(), to.iter().map(String::as_str).collect()))
            .collect();
        let found = cycles(&graph);
        assert!(
            found.is_empty(),
            "cycles between the submodules of {top}: {found:?}"
        );
    }
}

/// A path of the crate as the code names it, from its top-level module down, where it
/// was named.
struct Use {
    /// The module path of the file that names it.
    from: Vec<String>,
    /// What it names: `["store", "open", "DEFAULT_STORE"]`.
    to: Vec<String>,
    place: String,
}

/// Every path to another part of the crate that the files under `src/` name.
fn crate_uses(src: &Path) -> Vec<Use> {
    let mut uses = Vec::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let mut path: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|p| p == "mod") {
            path.pop();
        }
        if path == ["lib"] {
            // The crate root only declares the modules.
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, to) in used_paths(&code_only(&text), &path) {
            uses.push(Use {
                from: path.clone(),
                to,
                place: format!("{}:{line}", relative.display()),
            });
        }
    }
    uses
}

/// Every top-level module and, for each module it uses, the first place it does so.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).unwrap();
        let top = relative.iter().next().unwrap().to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if top != "lib" {
            edges.entry(top.to_string()).or_default();
        }
    }
    for u in crate_uses(src) {
        edges
            .get_mut(&u.from[0])
            .unwrap()
            .entry(u.to[0].clone())
            .or_insert(u.place);
    }
    edges
}

/// Within each top-level module, which of its submodules use which others (a path that
/// names the module itself, or an item of it, is no edge).
fn submodule_graphs(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for u in crate_uses(src) {
        let (Some(from), Some(to)) = (u.from.get(1), u.to.get(1)) else {
            continue;
        };
        let top = &u.from[0];
        if u.to[0] != *top || from == to || !is_module(src, top, to) {
            continue;
        }
        graphs
            .entry(top.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    graphs
}

fn is_module(src: &Path, top: &str, name: &str) -> bool {
    let dir = src.join(top);
    dir.join(format!("{name}.rs")).is_file() || dir.join(name).join("mod.rs").is_file()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The source with comments, string and character literals blanked out (newlines kept, so
/// that line numbers stay).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(chars[i..j.min(chars.len())].iter().map(|c| blank(*c)));
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            out.extend(chars[i..end].iter().map(|c| blank(*c)));
            i = end;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\''), else a lifetime ('a).
            let end = if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                Some(j + 1)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    let end = end.min(chars.len());
                    out.extend(chars[i..end].iter().map(|c| blank(*c)));
                    i = end;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// A token of the code: an identifier, `::`, or one other character.
#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<(usize, Token)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_alphanumeric() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((n + 1, Token::Ident(chars[start..i].iter().collect())));
            } else if c == ':' && chars.get(i + 1) == Some(&':') {
                out.push((n + 1, Token::PathSep));
                i += 2;
            } else {
                if !c.is_whitespace() {
                    out.push((n + 1, Token::Punct(c)));
                }
                i += 1;
            }
        }
    }
    out
}

/// The crate paths the code of the file at module path `file_path` names (`crate::a::b`,
/// `mailvault::a::b`, `super::b` and the names in `use` groups), each from its top-level
/// module down, with the line it is on.
fn used_paths(code: &str, file_path: &[String]) -> Vec<(usize, Vec<String>)> {
    let tokens = tokens(code);
    let is = |i: usize, t: &Token| tokens.get(i).map(|(_, x)| x) == Some(t);
    let word = |i: usize, w: &str| matches!(tokens.get(i), Some((_, Token::Ident(s))) if s == w);
    let mut used = Vec::new();
    // Inline modules (`mod tests { ... }`) open a deeper module path for `super::`.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let (line, token) = &tokens[i];
        let after_path = i > 0 && is(i - 1, &Token::PathSep);
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(w) if w == "mod" && is(i + 2, &Token::Punct('{')) => {
                if let Some((_, Token::Ident(name))) = tokens.get(i + 1) {
                    inline.push((name.clone(), depth));
                }
            }
            Token::Ident(w)
                if (w == "crate" || w == "mailvault")
                    && !after_path
                    && is(i + 1, &Token::PathSep) =>
            {
                for path in use_tree(&tokens, i + 2, Vec::new()).0 {
                    used.push((*line, path));
                }
            }
            Token::Ident(w) if w == "super" && !after_path && is(i + 1, &Token::PathSep) => {
                // Climb one level per `super`, from the module this code is in.
                let mut module: Vec<String> = file_path.to_vec();
                module.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                while word(j, "super") && is(j + 1, &Token::PathSep) {
                    module.pop();
                    j += 2;
                }
                for path in use_tree(&tokens, j, module).0 {
                    used.push((*line, path));
                }
            }
            _ => {}
        }
        i += 1;
    }
    used.retain(|(_, path)| {
        !path.is_empty()
            && path
                .iter()
                .all(|segment| segment != "self" && segment != "*")
    });
    used
}

/// The paths of the use tree (or plain path) that starts at `start`, each after `prefix`:
/// `a::b`, `a::{b, c::d}`, `{a, b}`. Returns them and where the tree ends.
fn use_tree(
    tokens: &[(usize, Token)],
    start: usize,
    prefix: Vec<String>,
) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    let mut i = start;
    loop {
        match tokens.get(i) {
            Some((_, Token::Ident(name))) => {
                path.push(name.clone());
                i += 1;
                if tokens.get(i).map(|(_, t)| t) != Some(&Token::PathSep) {
                    return (vec![path], i);
                }
                i += 1;
            }
            Some((_, Token::Punct('{'))) => {
                let mut paths = Vec::new();
                i += 1;
                loop {
                    match tokens.get(i) {
                        Some((_, Token::Punct('}'))) | None => return (paths, i + 1),
                        Some((_, Token::Punct(','))) => i += 1,
                        _ => {
                            let (more, next) = use_tree(tokens, i, path.clone());
                            paths.extend(more);
                            // Skip what follows the path in the group (`as name`).
                            i = next;
                            while let Some((_, t)) = tokens.get(i) {
                                if matches!(t, Token::Punct(',') | Token::Punct('}')) {
                                    break;
                                }
                                i += 1;
                            }
                        }
                    }
                }
            }
            Some((_, Token::Punct('*'))) => {
                path.push("*".to_string());
                return (vec![path], i + 1);
            }
            _ => return (vec![path], i),
        }
    }
}

/// The cycles of `graph`, each as the modules on it.
fn cycles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(*from).chain(to.iter().copied()))
        .collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for start in nodes {
        let mut stack = vec![start];
        visit(graph, start, &mut stack, &mut done, &mut found);
    }
    found
}

fn visit<'a>(
    graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    node: &'a str,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    found: &mut Vec<Vec<&'a str>>,
) {
    if done.contains(node) {
        return;
    }
    for next in graph.get(node).into_iter().flatten() {
        if let Some(at) = stack.iter().position(|n| n == next) {
            found.push(stack[at..].to_vec());
            continue;
        }
        stack.push(next);
        visit(graph, next, stack, done, found);
        stack.pop();
    }
    done.insert(node);
}

#[test]
fn the_readme_shows_the_layers() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).unwrap();
    let section = readme
        .split("\n## How the code is laid out\n")
        .nth(1)
        .expect("the README has the section")
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<(String, Vec<String>)> = section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| layer") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let modules = cells[1]
                .split(',')
                .map(|m| m.trim().trim_matches('`').to_string())
                .collect();
            (cells[0].to_string(), modules)
        })
        .collect();
    let want: Vec<(String, Vec<String>)> = LAYERS
        .iter()
        .map(|(name, modules)| {
            (
                name.to_string(),
                modules.iter().map(|m| m.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(rows, want, "the README's table differs from LAYERS");
}

#[test]
fn the_reader_sees_what_the_compiler_sees() {
    let paths = |code: &str, file: &[&str]| -> Vec<String> {
        let file: Vec<String> = file.iter().map(|s| s.to_string()).collect();
        used_paths(&code_only(code), &file)
            .into_iter()
            .map(|(_, p)| p.join("::"))
            .collect()
    };
    let code = "use crate::{a, b::c, d::{e, f as g}};\n// crate::commented\n\
                let s = \"crate::quoted\";\nlet c = '\\''; fn f<'a>(x: &'a str) {}\n\
                mod tests { use super::*; fn g() { super::h(); } }\n\
                let r = r#\"crate::raw\"#; crate::g::x(); pub(crate) fn y() {}\n";
    assert_eq!(
        paths(code, &["top"]),
        ["a", "b::c", "d::e", "d::f", "top::h", "g::x"]
    );
    let nested = "use super::super::other::X;\nfn f() { super::sibling(); }\n";
    assert_eq!(
        paths(nested, &["top", "inner"]),
        ["other::X", "top::sibling"]
    );
    let graph = BTreeMap::from([
        ("a", BTreeSet::from(["b"])),
        ("b", BTreeSet::from(["c"])),
        ("c", BTreeSet::from(["a"])),
    ]);
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
}
