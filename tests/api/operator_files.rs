//! The files an operator copies or installs, against what they serve:
//! - `.env.example`: every variable of the service's table
//!   (`wechat_api::testing::config::VARIABLES`) and every `${…}` the compose files
//!   interpolate from `.env` is named there, set or commented out (issue 20:
//!   `SEND_TOKEN`, `HANDOFF_*`, `CALLBACK_MAX_AGE_SECS` and the compose-only
//!   variables were missing);
//! - README.md's variables table: a row for every variable of that table, and no
//!   row for a name the service does not read;
//! - `scripts/certbot-deploy-hook.sh`: a renewed Let's Encrypt pair reaches the
//!   running service without a restart.
//!
//! Deliberately not here: whether `.env.example`'s values are sensible (the service
//! validates them; `cli.rs` starts the demo beside a copy of it); the monitor and
//! diagnose scripts (`cli.rs`, `tests/container/`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::helpers::*;

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
    let missing: Vec<&str> = wechat_api::testing::config::VARIABLES
        .iter()
        .map(|var| var.name)
        .filter(|name| !named.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        ".env.example lacks {missing:?} (set or commented out, with a line saying what it does)"
    );
}

/// The names in the first column of README.md's variables table
/// (`| variable | meaning | default |`), aliases included.
fn named_in_readme_table() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repository().join("README.md")).expect("README.md is readable");
    let (_, table) = text.split_once("| variable | meaning | default |").expect("README.md has the variables table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn the_readme_variables_table_names_every_variable_of_the_service() {
    let named = named_in_readme_table();
    let known: BTreeSet<&str> = wechat_api::testing::config::VARIABLES
        .iter()
        .flat_map(|var| std::iter::once(var.name).chain(var.alias))
        .collect();
    let missing: Vec<&str> = wechat_api::testing::config::VARIABLES
        .iter()
        .map(|var| var.name)
        .filter(|name| !named.contains(*name))
        .collect();
    let unknown: Vec<&String> = named.iter().filter(|name| !known.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "README.md's variables table lacks {missing:?}");
    assert!(unknown.is_empty(), "README.md's variables table names {unknown:?}, which the service does not read");
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

/// Runs the deploy hook as certbot would after renewing `lineage`, with `extra`
/// settings; returns its success and output.
fn deploy_hook(lineage: &Path, domains: &str, extra: &[(&str, String)]) -> (bool, String) {
    let out = std::process::Command::new("bash")
        .arg(repository().join("scripts/certbot-deploy-hook.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RENEWED_LINEAGE", lineage)
        .env("RENEWED_DOMAINS", domains)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("the hook runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A `/etc/letsencrypt/live/<host>`: a fresh certificate for 127.0.0.1.
fn renewed_lineage(dir: &Path) -> (PathBuf, String) {
    let lineage = dir.join("live").join("wechat.example.com");
    std::fs::create_dir_all(&lineage).expect("lineage");
    let fresh =
        wechat_api::testing::tls::self_signed(&["localhost", "127.0.0.1"], time::Duration::days(90)).expect("fresh");
    std::fs::write(lineage.join("fullchain.pem"), &fresh.cert_pem).expect("fullchain.pem");
    std::fs::write(lineage.join("privkey.pem"), &fresh.key_pem).expect("privkey.pem");
    (lineage, fresh.cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certbot_deploy_hook_installs_a_renewed_pair_that_the_running_service_serves() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let app = spawn_app_with(&[("SUPERVISOR_INTERVAL_SECS", "1")]).await;
    let certs = app.dir.path().to_owned();
    let letsencrypt = tempfile::tempdir().expect("dir");
    let (lineage, fresh_pem) = renewed_lineage(letsencrypt.path());
    // As root the hook makes uid 1001 the owner; a test may only give its own.
    let meta = std::fs::metadata(&certs).expect("stat");
    let owner = format!("{}:{}", meta.uid(), meta.gid());
    let settings = [("WECHAT_API_CERTS_DIR", certs.display().to_string()), ("WECHAT_API_CERTS_OWNER", owner)];

    // A hook for every certificate of the machine skips the others.
    let mut only_ours = settings.to_vec();
    only_ours.push(("WECHAT_API_DOMAIN", "wechat.example.com".into()));
    let before = std::fs::read_to_string(certs.join("server.crt")).expect("served certificate");
    let (ok, said) = deploy_hook(&lineage, "mail.example.com", &only_ours);
    assert!(ok, "{said}");
    assert_eq!(std::fs::read_to_string(certs.join("server.crt")).expect("certificate"), before, "another domain");

    let (ok, said) = deploy_hook(&lineage, "wechat.example.com", &only_ours);
    assert!(ok, "{said}");
    assert_eq!(std::fs::read_to_string(certs.join("server.crt")).expect("certificate"), fresh_pem);
    let mode = |name: &str| std::fs::metadata(certs.join(name)).expect("stat").permissions().mode() & 0o777;
    assert_eq!((mode("server.key"), mode("server.crt")), (0o600, 0o644));
    let leftovers: Vec<_> = std::fs::read_dir(&certs)
        .expect("certs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".server."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The running service serves it without a restart.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(fresh_pem.as_bytes()).expect("pem"))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{}/api/health/live", app.port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.get(&url).send().await.is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    app.stop().await.expect("clean stop");
}

#[test]
fn the_certbot_deploy_hook_outside_certbot_says_what_is_missing() {
    let out = std::process::Command::new("bash")
        .arg(repository().join("scripts/certbot-deploy-hook.sh"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("the hook runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RENEWED_LINEAGE is not set"), "{out:?}");
}
