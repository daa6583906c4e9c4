//! `.env.example`, the file an operator copies first, against what reads it: every
//! variable of the service's table (`wechat_api::config::VARIABLES`) and every
//! `${…}` the compose files interpolate from `.env` is named there, set or
//! commented out (issue 20: `SEND_TOKEN`, `HANDOFF_*`, `CALLBACK_MAX_AGE_SECS` and
//! the compose-only variables were missing). Deliberately not here: whether the
//! values are sensible (the service validates them; `cli.rs` starts the demo
//! beside a copy of this file).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// The names `.env.example` sets, in `NAME=…` or commented-out `#NAME=…` lines.
fn named_in_env_example() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repository().join(".env.example")).expect(".env.example is readable");
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            let (name, _) = line.split_once('=')?;
            let is_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| name.to_owned())
        })
        .collect()
}

/// Every variable a compose file interpolates: `${NAME}`, `${NAME:-default}`,
/// `${NAME:?message}` and `$NAME` (not the escaped `$$`).
fn interpolated(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(offset) = text[at..].find('$') {
        let dollar = at + offset;
        at = dollar + 1;
        if bytes.get(at) == Some(&b'$') {
            at += 1;
            continue;
        }
        let start = if bytes.get(at) == Some(&b'{') { at + 1 } else { at };
        let name: String = text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

fn compose_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repository())
        .expect("the repository")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("docker-compose") && n.ends_with(".yml"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn the_interpolation_reader_finds_every_form_compose_accepts() {
    let found = interpolated("a: ${ONE}\nb: ${TWO:-x}\nc: ${THREE:?set it}\nd: $FOUR\ne: $$NOT\n");
    assert_eq!(found, ["FOUR", "ONE", "THREE", "TWO"].map(String::from).into());
}

#[test]
fn env_example_names_every_variable_of_the_service() {
    let named = named_in_env_example();
    let missing: Vec<&str> =
        wechat_api::config::VARIABLES.iter().map(|var| var.name).filter(|name| !named.contains(*name)).collect();
    assert!(
        missing.is_empty(),
        ".env.example lacks {missing:?} (set or commented out, with a line saying what it does)"
    );
}

#[test]
fn env_example_names_every_variable_the_compose_files_interpolate() {
    let named = named_in_env_example();
    let files = compose_files();
    assert!(files.len() >= 2, "docker-compose.production.yml and docker-compose.ha.yml: {files:?}");
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a compose file");
        for name in interpolated(&text) {
            if !named.contains(&name) {
                missing.push(format!("{name} ({})", file.file_name().and_then(|n| n.to_str()).unwrap_or_default()));
            }
        }
    }
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
}
