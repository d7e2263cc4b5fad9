//! Dependencies between the crate's top-level modules point one way: down the layers
//! below, never up, and never in a circle. The test reads every file under `src/`, maps
//! each `crate::a::...` path, each name in `use crate::{a, b}` and each `super::` path that
//! climbs out of its module to the top-level module it names, and fails on an import of a
//! higher layer and on any cycle. A new top-level module must be placed in a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top first. A module may use modules of its own layer and of the layers
/// below, as long as no cycle forms. `main` is the binary's `src/main.rs`.
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
            "store",
            "sources",
            "resources",
            "protocol",
            "tls",
            "time",
            "secret",
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
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "module cycles: {cycles:?}");
}

/// Every top-level module and, for each module it uses, the first place it does so.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
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
            path.clear();
        }
        let top = match path.first() {
            Some(top) => top.clone(),
            None => "lib".to_string(),
        };
        if top == "lib" {
            // The crate root only declares the modules.
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let entry = edges.entry(top).or_default();
        for (line, used) in used_modules(&code_only(&text), &path) {
            entry
                .entry(used)
                .or_insert_with(|| format!("{}:{line}", relative.display()));
        }
    }
    edges
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

/// The top-level modules the code of the file at module path `file_path` names, with the
/// line of each mention.
fn used_modules(code: &str, file_path: &[String]) -> Vec<(usize, String)> {
    let tokens = tokens(code);
    let ident = |i: usize| match tokens.get(i) {
        Some((_, Token::Ident(s))) => Some(s.as_str()),
        _ => None,
    };
    let is = |i: usize, t: &Token| tokens.get(i).map(|(_, x)| x) == Some(t);
    let mut used = Vec::new();
    // Inline modules (`mod tests { ... }`) open a deeper module path for `super::`.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let (line, token) = &tokens[i];
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some(name), true) = (ident(i + 1), is(i + 2, &Token::Punct('{'))) {
                    inline.push((name.to_string(), depth));
                }
            }
            Token::Ident(word) if word == "crate" && is(i + 1, &Token::PathSep) => {
                if is(i + 2, &Token::Punct('{')) {
                    used.extend(group_heads(&tokens, i + 3).into_iter().map(|m| (*line, m)));
                } else if let Some(m) = ident(i + 2) {
                    used.push((*line, m.to_string()));
                }
            }
            Token::Ident(word)
                if word == "super"
                    && is(i + 1, &Token::PathSep)
                    && !(i > 0 && is(i - 1, &Token::PathSep)) =>
            {
                // Climb one level per `super`, from the module this code is in.
                let mut module: Vec<String> = file_path.to_vec();
                module.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                while ident(j) == Some("super") && is(j + 1, &Token::PathSep) {
                    module.pop();
                    j += 2;
                }
                if module.is_empty() {
                    if is(j, &Token::Punct('{')) {
                        used.extend(group_heads(&tokens, j + 1).into_iter().map(|m| (*line, m)));
                    } else if let Some(m) = ident(j) {
                        used.push((*line, m.to_string()));
                    }
                }
            }
            Token::Ident(word) if word == "mailvault" && is(i + 1, &Token::PathSep) => {
                if let Some(m) = ident(i + 2) {
                    used.push((*line, m.to_string()));
                }
            }
            _ => {}
        }
        i += 1;
    }
    used.retain(|(_, m)| m != "self" && m != "*");
    used
}

/// The first names of the paths in a `{a, b::c, d::{e, f}}` group that starts at `start`
/// (just after its `{`).
fn group_heads(tokens: &[(usize, Token)], start: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (_, token) in &tokens[start..] {
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') if depth == 0 => break,
            Token::Punct('}') => depth -= 1,
            Token::Punct(',') if depth == 0 => expect_head = true,
            Token::Ident(name) if depth == 0 && expect_head => {
                heads.push(name.clone());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
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
fn the_reader_sees_what_the_compiler_sees() {
    let code = code_only(
        "use crate::{a, b::c, d::{e, f}};\n// crate::commented\nlet s = \"crate::quoted\";\n\
         let c = '\\''; fn f<'a>(x: &'a str) {}\nmod tests { use super::*; fn g() { super::h(); } }\n\
         let r = r#\"crate::raw\"#; crate::g::x();\n",
    );
    let found: Vec<String> = used_modules(&code, &["top".to_string()])
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(found, ["a", "b", "d", "g"]);
    let nested = code_only("use super::super::other::X;\nfn f() { super::sibling(); }\n");
    let found: Vec<String> = used_modules(&nested, &["top".into(), "inner".into()])
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(found, ["other"]);
    let graph = BTreeMap::from([
        ("a", BTreeSet::from(["b"])),
        ("b", BTreeSet::from(["c"])),
        ("c", BTreeSet::from(["a"])),
    ]);
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
}
