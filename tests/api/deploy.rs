//! What `deploy/` (the Prometheus alert rules, the Grafana dashboard) relies on:
//! every metric it names exists on the first scrape of a freshly started service
//! (SPEC §11), and promtool accepts the rules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::helpers::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every `wechat_api_…` name in the dashboard and the rules (and any other
/// Prometheus or Grafana file that joins them in `deploy/`).
fn names_used_in_deploy() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(deploy_dir()).expect("deploy/") {
        let path = entry.expect("entry").path();
        if !matches!(path.extension().and_then(|e| e.to_str()), Some("yml" | "yaml" | "json")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a text file");
        for (at, _) in text.match_indices("wechat_api_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            names.insert(name);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_in_deploy_exists_on_the_first_scrape_of_a_fresh_service() {
    let names = names_used_in_deploy();
    for expected in ["wechat_api_wecom_api_requests_total", "wechat_api_kf_messages_total", "wechat_api_check_status"] {
        assert!(names.contains(expected), "the dashboard or the rules use {expected}: {names:?}");
    }
    // A fresh start without any Secret: nothing has happened yet.
    let app = spawn_app().await;
    let exposition = app.metrics().await;
    let sampled: BTreeSet<&str> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names.iter().filter(|name| !sampled.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "deploy/ uses {missing:?}, absent from the first scrape:\n{exposition}");
    app.stop().await.expect("clean stop");
}

/// What `promtool <args>` says: its success and its output; `None` when promtool
/// is not installed (then required only when `CI` is set).
fn promtool(args: &[&std::ffi::OsStr]) -> Option<(bool, String)> {
    match std::process::Command::new("promtool").args(args).output() {
        Ok(output) => {
            let said =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            Some((output.status.success(), said))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed (Debian's prometheus package has it; .ci/run installs it)"
            );
            eprintln!("notice: promtool is not installed, so deploy/ was not checked with it");
            None
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    }
}

#[test]
fn promtool_accepts_the_alert_rules_and_the_scrape_config() {
    let rules = deploy_dir().join("wechat-api-rules.yml");
    let config = deploy_dir().join("prometheus.yml");
    for args in [
        ["check".as_ref(), "rules".as_ref(), rules.as_os_str()],
        ["check".as_ref(), "config".as_ref(), config.as_os_str()],
    ] {
        if let Some((passed, said)) = promtool(&args) {
            assert!(passed, "promtool {args:?}: {said}");
        }
    }
}
