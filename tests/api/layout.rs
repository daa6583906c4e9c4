//! The layering ARCHITECTURE.md promises, checked on the source: no import cycle
//! between the crate's top-level modules, only `routes/` and `startup.rs` know
//! actix-web, and only `startup.rs` the parts its listeners are built from
//! (actix-server, actix-http, the TLS acceptor). (Test code is left out: it may
//! reach anywhere.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, with its text up to its first `#[cfg(test)]`.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
            out.push((path.display().to_string(), code));
        }
    }
}

/// The top-level module a file of `src/` belongs to (`store` for `src/store/kf.rs`).
fn module_of(file: &str) -> String {
    let rel = file.split("src/").last().unwrap_or(file);
    rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs").to_owned()
}

/// The top-level modules `code` names as `crate::<module>`.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            found.extend(inner.split(',').map(|p| p.trim().split("::").next().unwrap_or_default().to_owned()));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.insert(name);
        }
    }
    found.retain(|m| !m.is_empty() && m.chars().next().is_some_and(char::is_lowercase));
    found
}

#[test]
fn no_two_top_level_modules_import_each_other_even_through_others() {
    let mut files = Vec::new();
    sources(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in &files {
        let module = module_of(file);
        if module == "main" || module == "lib" {
            continue;
        }
        let deps: Vec<String> = uses(code).into_iter().filter(|d| *d != module).collect();
        graph.entry(module).or_default().extend(deps);
    }
    // Each module, and everything it reaches: a module that reaches itself is in a cycle.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = graph[start].iter().collect();
        while let Some(next) = todo.pop() {
            if next == start {
                panic!("an import cycle through `{start}`; its direct imports: {:?}", graph[start]);
            }
            if seen.insert(next.clone()) {
                todo.extend(graph.get(next).into_iter().flatten());
            }
        }
    }
}

#[test]
fn only_routes_and_startup_know_actix_web() {
    let mut files = Vec::new();
    sources(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut files);
    let strangers: Vec<&String> = files
        .iter()
        .filter(|(file, code)| {
            code.contains("actix_web") && !file.contains("/src/routes/") && !file.ends_with("/src/startup.rs")
        })
        .map(|(file, _)| file)
        .collect();
    assert!(strangers.is_empty(), "actix-web outside routes/ and startup.rs: {strangers:?}");
}

/// SPEC §15: a store call on a request path answers within 3 s whatever the
/// database does, so every use of the store in `routes/` is inside a statement
/// that wraps it in `store::bounded`.
#[test]
fn every_store_call_of_a_route_is_bounded_by_the_request_deadline() {
    let mut files = Vec::new();
    sources(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes")), &mut files);
    let mut unbounded = Vec::new();
    for (file, code) in &files {
        for (at, _) in code.match_indices("state.store") {
            // The statement around it: from the last `;`, `{` or `}` before it.
            let start = code[..at].rfind([';', '{', '}']).map_or(0, |i| i + 1);
            if !code[start..at].contains("bounded(") {
                let line = code[..at].lines().count();
                unbounded.push(format!("{file}:{line}: {}", code[start..at + "state.store".len()].trim()));
            }
        }
    }
    assert!(unbounded.is_empty(), "store calls of routes without store::bounded:\n{}", unbounded.join("\n"));
}

#[test]
fn only_startup_knows_the_parts_the_listeners_are_built_from() {
    let mut files = Vec::new();
    sources(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut files);
    let parts = ["actix_http::", "actix_server::", "actix_service::", "tokio_rustls::"];
    let strangers: Vec<&String> = files
        .iter()
        .filter(|(file, code)| parts.iter().any(|p| code.contains(p)) && !file.ends_with("/src/startup.rs"))
        .map(|(file, _)| file)
        .collect();
    assert!(strangers.is_empty(), "the listeners' parts outside startup.rs: {strangers:?}");
}

/// `code` with comments, string and character literals blanked out (lengths kept),
/// so a path in a doc comment or a URL in a string is not mistaken for an import.
fn code_only(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars[..i].last().is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
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
            while j < chars.len() {
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{1F600}'), not a lifetime.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The module path of a file of `src/` given relative to it (`store/kf.rs` → `[store, kf]`,
/// `store/mod.rs` → `[store]`, `lib.rs` → `[]`).
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts
}

/// The paths a piece of code names from `start` (`crate::`, `super::`, `self::`), each
/// as its segments; a use-tree's groups are expanded (`crate::a::{b, c::d}` is two paths).
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    for root in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(root) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|b| b.is_alphanumeric() || b == '_' || b == ':' || b == '$') {
                continue; // `$crate::`, `a::self::` (not a path root), `mycrate::`
            }
            let mut pos = at;
            tree(code, bytes, &mut pos, Vec::new(), &mut paths);
        }
    }
    paths
}

/// Parses a use-tree (or a plain path) at `pos` into `out`, each path prefixed by `prefix`.
fn tree(code: &str, bytes: &[u8], pos: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        while bytes.get(*pos).is_some_and(u8::is_ascii_whitespace) {
            *pos += 1;
        }
        match bytes.get(*pos) {
            Some(b'{') => {
                *pos += 1;
                loop {
                    tree(code, bytes, pos, path.clone(), out);
                    while bytes.get(*pos).is_some_and(u8::is_ascii_whitespace) {
                        *pos += 1;
                    }
                    match bytes.get(*pos) {
                        Some(b',') => *pos += 1,
                        Some(b'}') => {
                            *pos += 1;
                            return;
                        }
                        _ => return,
                    }
                    while bytes.get(*pos).is_some_and(u8::is_ascii_whitespace) {
                        *pos += 1;
                    }
                    if bytes.get(*pos) == Some(&b'}') {
                        *pos += 1;
                        return;
                    }
                }
            }
            Some(b'*') => {
                *pos += 1;
                out.push(path);
                return;
            }
            _ => {}
        }
        let start = *pos;
        while bytes.get(*pos).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            *pos += 1;
        }
        if start == *pos {
            out.push(path);
            return;
        }
        path.push(code[start..*pos].to_owned());
        if code[*pos..].starts_with("::") {
            *pos += 2;
        } else {
            // `as name` and the rest of the statement are not part of the path.
            out.push(path);
            return;
        }
    }
}

/// The graph between the files of `src/` (relative paths such as `store/kf.rs`):
/// an edge for each path a file names, to the deepest module file along it
/// (`crate::store::kf::Cursor` → `store/kf.rs`; `crate::store::Store` → `store/mod.rs`).
fn file_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<Vec<String>, &String> = files.iter().map(|(rel, _)| (module_path(rel), rel)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in files {
        if rel == "main.rs" {
            continue;
        }
        let here = module_path(rel);
        let edges = graph.entry(rel.clone()).or_default();
        for path in named_paths(&code_only(code)) {
            let mut module: Vec<String> = match path.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                _ => here.clone(),
            };
            for segment in &path {
                match segment.as_str() {
                    "crate" | "self" => {}
                    "super" => {
                        module.pop();
                    }
                    name => {
                        let mut deeper = module.clone();
                        deeper.push(name.to_owned());
                        if !by_module.contains_key(&deeper) {
                            break;
                        }
                        module = deeper;
                    }
                }
            }
            if let Some(target) = by_module.get(&module) {
                if *target != rel && !target.ends_with("lib.rs") {
                    edges.insert((*target).clone());
                }
            }
        }
    }
    graph
}

/// Every cycle of `graph`, each as the files along it (the smallest file first), once.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        // Breadth first from `start`: the shortest way back to it, if any.
        let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue: std::collections::VecDeque<&String> = std::collections::VecDeque::from([start]);
        let mut back = None;
        'search: while let Some(node) = queue.pop_front() {
            for next in graph.get(node).into_iter().flatten() {
                if next == start {
                    back = Some(node);
                    break 'search;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        if let Some(mut node) = back {
            let mut cycle = vec![node.clone()];
            while node != start {
                node = came_from[node];
                cycle.push(node.clone());
            }
            cycle.reverse();
            let least = cycle.iter().enumerate().min_by_key(|(_, f)| *f).map_or(0, |(i, _)| i);
            cycle.rotate_left(least);
            found.insert(cycle);
        }
    }
    found.into_iter().collect()
}

/// The files of `src/` relative to it, with their code up to the first `#[cfg(test)]`.
fn src_files() -> Vec<(String, String)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
    let mut files = Vec::new();
    sources(Path::new(root), &mut files);
    files.into_iter().map(|(file, code)| (file.trim_start_matches(root).to_owned(), code)).collect()
}

#[test]
fn no_two_files_of_src_import_each_other_even_through_others() {
    let found = cycles(&file_graph(&src_files()));
    let lines: Vec<String> = found.iter().map(|c| format!("{} → {}", c.join(" → "), c[0])).collect();
    assert!(lines.is_empty(), "import cycles between files of src/:\n{}", lines.join("\n"));
}

/// The guard above would pass if it saw nothing: it sees a cycle however the paths are written.
#[test]
fn the_file_cycle_guard_sees_cycles_through_use_trees_and_relative_paths() {
    let file = |rel: &str, code: &str| (rel.to_owned(), code.to_owned());
    let files = [
        file("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        file("a/mod.rs", "pub mod x; pub mod y;"),
        file("a/x.rs", "use super::y::Thing; // crate::c is only a comment\nfn f() { let _ = \"crate::c\"; }"),
        file("a/y.rs", "use crate::{b::{self, Other}, VERSION};\nuse crate::a::x::Helper as H;"),
        file("b.rs", "fn g() { crate::c::call(); }"),
        file("c.rs", "use crate::b as _; use self::inner::*;"),
    ];
    let found = cycles(&file_graph(&files));
    let expected: Vec<Vec<String>> = vec![vec!["a/x.rs".into(), "a/y.rs".into()], vec!["b.rs".into(), "c.rs".into()]];
    assert_eq!(found, expected);
}

/// `telemetry/` is a foundation: the domain names its labels' values and passes
/// them as strings, so telemetry imports nothing but itself and `config`.
#[test]
fn telemetry_imports_nothing_of_the_domain() {
    let graph = file_graph(&src_files());
    let strays: Vec<String> = graph
        .iter()
        .filter(|(file, _)| file.starts_with("telemetry"))
        .flat_map(|(file, deps)| deps.iter().map(move |dep| (file, dep)))
        .filter(|(_, dep)| !dep.starts_with("telemetry") && !dep.starts_with("config/"))
        .map(|(file, dep)| format!("{file} → {dep}"))
        .collect();
    assert!(strays.is_empty(), "telemetry stands on the domain: {strays:?}");
}

/// `lib.rs` reads as the table of contents: its `//!` overview names every module.
#[test]
fn the_table_of_contents_names_every_module() {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).expect("lib.rs");
    let overview: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().strip_suffix(';')?.split("mod ").nth(1))
        .filter(|module| !overview.contains(&format!("[`{module}`]")) && !overview.contains(&format!("`{module}`")))
        .collect();
    assert!(missing.is_empty(), "modules lib.rs's overview does not name: {missing:?}");
}

/// Where a channel name may still be a string: the edges where it is raw input,
/// before it is looked up (the configuration file's tables, a query or JSON
/// field of an admin request, the names API that checks it), and the store's
/// reading of a snapshot, which parses it.
const CHANNEL_AS_TEXT_ALLOWED: &[&str] = &["config/", "routes/admin.rs", "names.rs", "store/sqlite/snapshot.rs"];

/// Typed declarations of a channel as a string in `code`: `channel: String`,
/// `channel: &str`, `channel: Option<&str>` and the like (fields and parameters).
fn channels_as_text(code: &str) -> Vec<String> {
    let code = code_only(code);
    let mut found = Vec::new();
    for (at, _) in code.match_indices("channel: ") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `kf_channel: …`, a name of its own
        }
        let ty: String = code[at + "channel: ".len()..].chars().take_while(|c| !",){=;\n".contains(*c)).collect();
        let ty = ty.trim();
        let text = ["String", "&str", "&'static str", "Option<String>", "Option<&str>", "Vec<String>"];
        if text.contains(&ty) {
            found.push(format!("channel: {ty}"));
        }
    }
    found
}

/// A channel is a `ChannelName` from the configuration to the outbox (SPEC §12):
/// no file past the edges holds one as a string.
#[test]
fn a_channel_is_never_a_string_past_the_edges() {
    let strays: Vec<String> = src_files()
        .iter()
        .filter(|(file, _)| !CHANNEL_AS_TEXT_ALLOWED.iter().any(|allowed| file.starts_with(allowed)))
        .flat_map(|(file, code)| channels_as_text(code).into_iter().map(move |decl| format!("{file}: {decl}")))
        .collect();
    assert!(strays.is_empty(), "a channel as a string (use ChannelName): {strays:?}");
}

/// The guard above would pass if it saw nothing: it sees fields and parameters.
#[test]
fn the_channel_guard_sees_fields_and_parameters_but_not_other_names() {
    let code = "struct A { pub channel: String, kf_channel: String }\n\
                fn f(channel: &str, other: u8) {}\nfn g(channel: Option<&str>) {}\n\
                // channel: String in a comment\nfn h(channel: &ChannelName) {}";
    assert_eq!(channels_as_text(code), ["channel: String", "channel: &str", "channel: Option<&str>"]);
}
