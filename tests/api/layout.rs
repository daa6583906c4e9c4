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
