//! The binary as an operator runs it: exit codes, output, and the curl commands
//! `sign` and `serve --demo` print, executed for real.

use std::process::Command;

use crate::helpers::*;

/// Runs every `curl` line of `commands` with sh and returns their outputs.
fn run_curl_lines(commands: &str) -> Vec<String> {
    let curls: Vec<&str> = commands.lines().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 2, "{commands}");
    curls
        .iter()
        .map(|line| {
            let out = Command::new("sh").args(["-c", line]).output().expect("sh runs curl");
            assert!(out.status.success(), "{line}\n{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect()
}

/// The text the first comment promises the GET will print.
fn promised_echo(commands: &str) -> String {
    commands.lines().next().and_then(|l| l.rsplit(' ').next()).expect("first comment").to_owned()
}

#[test]
fn keygen_prints_a_valid_token_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let out = wechat_api(dir.path()).arg("keygen").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let value = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).expect(name).to_owned();
    assert!(wechat_api::testing::config::Token::parse(&value("WECOM_TOKEN")).is_ok());
    assert_eq!(value("WECOM_ENCODING_AES_KEY").len(), 43);
    assert!(value("WECOM_ENCODING_AES_KEY").chars().all(|c| c.is_ascii_alphanumeric()), "the console's alphabet");
    assert!(wechat_api::testing::crypto::AesKey::parse(&value("WECOM_ENCODING_AES_KEY")).is_ok());
}

#[test]
fn bad_configuration_exits_64_naming_each_variable_without_a_panic() {
    let dir = tempfile::tempdir().expect("dir");
    let out = wechat_api(dir.path())
        .arg("serve")
        .env("WECOM_TOKEN", TOKEN)
        .env("WECOM_ENCODING_AES_KEY", &AES_KEY[..42])
        .env("HTTPS_PORT", "http")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.contains(&"configuration error: WECOM_ENCODING_AES_KEY must be 43 characters of base64, got 42 (copy it again from the callback settings)"), "{stderr}");
    assert!(lines.contains(&"configuration error: WECOM_CORP_ID is required but not set"), "{stderr}");
    assert!(lines.iter().any(|l| l.starts_with("configuration error: HTTPS_PORT must be a port")), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert!(!stderr.contains(&AES_KEY[..42]), "the key leaked: {stderr}");
}

#[test]
fn numbers_beyond_their_bounds_and_a_malformed_replica_id_exit_64_one_line_each() {
    // No certificate on purpose: a value that passed validation still ends in exit
    // 64 (TLS_CERT_PATH) instead of a service that never exits.
    let dir = tempfile::tempdir().expect("dir");
    let beyond = [
        ("LEASE_SECS", "18446744073709551615"),
        ("SUPERVISOR_INTERVAL_SECS", "18446744073709551615"),
        ("RETENTION_SECS", "18446744073709551615"),
        ("ALERT_GROUP_WAIT_SECS", "18446744073709551615"),
        ("ALERT_REPEAT_HOURS", "18446744073709551615"),
        ("MEDIA_RETENTION_SECS", "18446744073709551615"),
        ("CALLBACK_MAX_AGE_SECS", "18446744073709551615"),
        ("DATABASE_POOL_SIZE", "4294967296"),
        ("WECOM_AGENT_ID", "9223372036854775807"),
    ];
    for (name, value) in
        beyond.iter().copied().chain([("REPLICA_ID", "replica-1\nINFO forged"), ("REPLICA_ID", &*"r".repeat(10_000))])
    {
        let out =
            wechat_api(dir.path()).arg("serve").envs(test_env(dir.path(), &[(name, value)])).output().expect("runs");
        assert_eq!(out.status.code(), Some(64), "{name}={value:.40}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr:.2000}");
        assert!(lines[0].starts_with(&format!("configuration error: {name} must be")), "{}", lines[0]);
        assert!(lines[0].len() < 200 && !stderr.contains("INFO forged"), "{name}: {}", lines[0]);
        assert!(!stderr.contains("panicked"), "{stderr:.2000}");
    }
}

#[test]
fn an_unreadable_certificate_exits_64_naming_tls_cert_path() {
    let dir = tempfile::tempdir().expect("dir");
    let out = wechat_api(dir.path()).arg("serve").envs(test_env(dir.path(), &[])).output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("configuration error: TLS_CERT_PATH"), "{stderr}");
    assert!(stderr.contains("server.crt"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_prints_curl_commands_that_pass_against_the_service() {
    let app = spawn_app().await;
    let url = app.url("/api/v1/wecom/callback");
    let out = wechat_api(app.dir.path())
        .args(["sign", "--url", &url, "--text", "帮助 it's ]]> tricky"])
        .envs(test_env(app.dir.path(), &[]))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let commands = String::from_utf8(out.stdout).expect("UTF-8");
    let outputs = tokio::task::spawn_blocking({
        let commands = commands.clone();
        move || run_curl_lines(&commands)
    })
    .await
    .expect("curl thread");
    assert_eq!(outputs[0], promised_echo(&commands), "GET prints the echo");
    assert_eq!(outputs[1], "200", "POST is acknowledged");
    assert_eq!(app.metric("wechat_api_callbacks_total{channel=\"app\",outcome=\"ok\"}").await, 2.0);
}

#[test]
fn serve_runs_answers_healthcheck_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 30);
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(test_env(dir.path(), &[]));
    let mut service = Running::start(command);
    let port = service.port();
    let live = wechat_api(dir.path())
        .args(["healthcheck", "--url", &format!("https://127.0.0.1:{port}/api/health/live")])
        .output()
        .expect("runs");
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    // Without --url it finds the listener from the same settings (port 0 → ask it).
    let env = test_env(dir.path(), &[("HTTPS_PORT", &port.to_string())]);
    let live = wechat_api(dir.path()).arg("healthcheck").envs(env).output().expect("runs");
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let status = service.terminate();
    assert!(status.success(), "graceful stop exits 0, got {status}");
}

/// Regression: an empty value (`HTTPS_PORT=` as `.env.example` ships it, or as
/// compose passes an unset variable) was stored as "" instead of the default, and
/// start-up ended in a bare "configuration is incomplete"; `healthcheck` too.
#[test]
fn empty_values_are_unset_for_serve_and_healthcheck() {
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 30);
    let empties =
        ["RETENTION_SECS", "SUPERVISOR_INTERVAL_SECS", "LOG_FORMAT", "HANDOFF_TEXT", "AIBOT_WS_URL", "ADMIN_TOKEN"];
    let dotenv: String = empties.iter().map(|name| format!("{name}=\n")).collect();
    std::fs::write(dir.path().join(".env"), format!("HTTPS_PORT=0\n{dotenv}")).expect("write .env");
    // The environment's empty HTTPS_PORT sets nothing: .env's value shows through.
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(test_env(dir.path(), &[("HTTPS_PORT", "")]));
    let mut service = Running::start(command);
    let port = service.port().to_string();
    let env = test_env(dir.path(), &[("HTTPS_PORT", &port), ("BIND_ADDRESS", ""), ("TLS_ENABLED", "")]);
    let live = wechat_api(dir.path()).arg("healthcheck").envs(env).output().expect("runs");
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    assert!(service.terminate().success());
}

/// SPEC §2 sets `ADMIN_TOKEN` no minimum, and an old `.env` must keep working:
/// a short one starts the service with one warning that never shows the token.
#[test]
fn a_short_admin_token_starts_the_service_with_a_warning_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 30);
    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(test_env(dir.path(), &[("ADMIN_TOKEN", "Qm7Zk2Wx9R")]));
    let mut service = Running::start(command);
    let lines = service.read_until(|l| l.contains("wechat-api listening"));
    let named: Vec<&String> = lines.iter().filter(|l| l.contains("ADMIN_TOKEN")).collect();
    assert_eq!(named.len(), 1, "{lines:#?}");
    assert!(named[0].contains("WARN") && named[0].contains("short and guessable"), "{}", named[0]);
    assert!(!lines.join("\n").contains("Qm7Zk2Wx9R"), "the token is never shown");
    assert!(service.terminate().success());
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let dir = tempfile::tempdir().expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = wechat_api(dir.path())
        .args(["healthcheck", "--url", &format!("https://127.0.0.1:{port}/api/health/live")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("unhealthy:"));
}

#[test]
fn demo_mode_starts_with_no_configuration_and_its_curl_commands_pass() {
    let dir = tempfile::tempdir().expect("dir");
    let mut command = wechat_api(dir.path());
    command.args(["serve", "--demo"]).env("HTTPS_PORT", "0").env("BIND_ADDRESS", "127.0.0.1");
    let service = Running::start(command);
    let banner = service.read_until(|l| l.starts_with("More at any time")).join("\n");
    assert!(banner.contains("DEMO MODE"), "{banner}");
    let start = banner.find("# 1. URL verification").expect("commands in the banner");
    let commands = &banner[start..];
    let outputs = run_curl_lines(commands);
    assert_eq!(outputs[0], promised_echo(commands));
    assert_eq!(outputs[1], "200");
    assert!(dir.path().join("wechat-api-demo/demo.toml").is_file());
    assert!(dir.path().join("wechat-api-demo/certs/server.crt").is_file());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("wechat-api-demo/demo.toml")).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the demo secrets are private");
}

/// Regression: the demo's first impression was `ERROR giving up: WECOM_SECRET is
/// not configured` after the printed 帮助 callback. Now the reply reaches the
/// demo's stand-in for WeCom's API, which logs what WeCom would deliver.
#[test]
fn demo_first_impression_is_the_reply_not_an_error() {
    let dir = tempfile::tempdir().expect("dir");
    let mut command = wechat_api(dir.path());
    command.args(["serve", "--demo"]).env("HTTPS_PORT", "0").env("BIND_ADDRESS", "127.0.0.1");
    let service = Running::start(command);
    let mut output = service.read_until(|l| l.starts_with("More at any time"));
    let banner = output.join("\n");
    let start = banner.find("# 1. URL verification").expect("commands in the banner");
    let outputs = run_curl_lines(&banner[start..]);
    assert_eq!(outputs[1], "200", "the 帮助 callback is acknowledged");
    output.extend(service.read_until(|l| l.contains("demo: WeCom would deliver to wechat-api-sign")));
    let reply = output.last().expect("a line");
    assert!(reply.contains("wechat-api 在线"), "the help text is the reply: {reply}");
    let failures: Vec<&String> = output.iter().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
    assert!(failures.is_empty(), "a new user sees no failure:\n{}", output.join("\n"));
}

/// The service's log lines (not the banner) at `level`.
fn logged_at<'a>(lines: &'a [String], level: &str) -> Vec<&'a String> {
    lines.iter().filter(|l| l.split_whitespace().nth(1) == Some(level)).collect()
}

/// Regression (issue 20): a first start logged one `store migrated` line per
/// schema step and a WARN for the `[wechat-api STARTED]` notice it could not mail
/// with email off. A clean first start, its demo callbacks and its stop now show
/// no WARN or ERROR, and the migration is one line.
#[test]
fn a_clean_first_start_logs_one_migration_line_and_no_warning_or_error() {
    let dir = tempfile::tempdir().expect("dir");
    let mut command = wechat_api(dir.path());
    command.args(["serve", "--demo"]).env("HTTPS_PORT", "0").env("BIND_ADDRESS", "127.0.0.1");
    let mut service = Running::start(command);
    let mut output = service.read_until(|l| l.starts_with("More at any time"));
    let banner = output.join("\n");
    let start = banner.find("# 1. URL verification").expect("commands in the banner");
    run_curl_lines(&banner[start..]);
    output.extend(service.read_until(|l| l.contains("demo: WeCom would deliver to")));
    assert!(service.terminate().success());
    output.extend(service.rest());
    let shown = output.join("\n");
    let noisy: Vec<&String> = [logged_at(&output, "WARN"), logged_at(&output, "ERROR")].concat();
    assert!(noisy.is_empty(), "a clean first start warns of nothing:\n{shown}");
    assert!(!logged_at(&output, "INFO").is_empty(), "the log format is as expected:\n{shown}");
    let migrated: Vec<&String> = output.iter().filter(|l| l.contains("store migrated")).collect();
    assert_eq!(migrated.len(), 1, "{shown}");
    assert!(migrated[0].contains("store migrated from schema 0 to "), "{shown}");
    assert!(output.iter().any(|l| l.contains("[wechat-api STARTED]")), "the start is still logged:\n{shown}");
}

/// The port of the first `https://127.0.0.1:<port>/` in `text`.
fn port_in(text: &str) -> u16 {
    let after = text.split("https://127.0.0.1:").nth(1).expect("a local URL");
    after.chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a port")
}

/// Regression (issue 20): `cp .env.example .env` and then `serve --demo` exited 64
/// (the `.env`'s empty WECOM_* values overrode the demo's), and without those
/// lines failed on `DATA_DIR /app/data`. The environment of the image (its
/// certificate paths) and of a replica (DATABASE_URL) must not break the demo
/// either, nor send its data elsewhere. `sign --demo` beside it agrees.
#[test]
fn the_demo_works_beside_a_copied_env_example_and_a_deployments_environment() {
    let dir = tempfile::tempdir().expect("dir");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.example");
    std::fs::copy(example, dir.path().join(".env")).expect("cp .env.example .env");
    let deployment = [
        ("HTTPS_PORT", "0"),
        ("BIND_ADDRESS", "127.0.0.1"),
        ("TLS_CERT_PATH", "/app/certs/server.crt"),
        ("TLS_KEY_PATH", "/app/certs/server.key"),
        ("UPLOAD_DIR", "/app/wwwroot/uploadall"),
        ("DATABASE_URL", "postgres://wechat_api:Pw9Secret@127.0.0.1:9/wechat_api"),
    ];
    let mut command = wechat_api(dir.path());
    command.args(["serve", "--demo"]).envs(deployment);
    let service = Running::start(command);
    let banner = service.read_until(|l| l.starts_with("More at any time")).join("\n");
    assert!(banner.contains("The .env here was not read"), "{banner}");
    let start = banner.find("# 1. URL verification").expect("commands in the banner");
    let outputs = run_curl_lines(&banner[start..]);
    assert_eq!(outputs[0], promised_echo(&banner[start..]));
    assert_eq!(outputs[1], "200");
    let demo = dir.path().join("wechat-api-demo");
    assert!(demo.join("wechat-api.sqlite3").is_file(), "the store is the demo's, SQLite");
    assert!(demo.join("uploads").is_dir(), "uploads under the demo directory");

    let url = format!("https://127.0.0.1:{}/api/v1/wecom/callback", port_in(&banner[start..]));
    let out = wechat_api(dir.path()).args(["sign", "--demo", "--url", &url]).envs(deployment).output().expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let commands = String::from_utf8(out.stdout).expect("UTF-8");
    let outputs = run_curl_lines(&commands);
    assert_eq!(outputs[0], promised_echo(&commands), "sign --demo signs with the running demo's Token");
    assert_eq!(outputs[1], "200");
}

#[test]
fn keygen_help_names_the_three_values_it_prints() {
    let dir = tempfile::tempdir().expect("dir");
    let out = wechat_api(dir.path()).args(["keygen", "--help"]).output().expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for name in ["WECOM_TOKEN", "WECOM_ENCODING_AES_KEY", "ADMIN_TOKEN"] {
        assert!(help.contains(name), "{name} in:\n{help}");
    }
}

/// `diagnose --json` with `env`; returns the exit code and the report.
fn diagnose(dir: &std::path::Path, env: std::collections::HashMap<String, String>) -> (Option<i32>, serde_json::Value) {
    let out = wechat_api(dir).args(["diagnose", "--json"]).envs(env).output().expect("runs");
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), report)
}

fn finding<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|f| f["check"] == check))
        .unwrap_or_else(|| panic!("no {check} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_passes_against_a_healthy_service_and_names_the_ip_for_60020() {
    let wecom = crate::fakes::FakeWeCom::start().await;
    let settings = [
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
    ];
    let app = spawn_app_with(&settings).await;
    let port = app.port.to_string();
    let mut env_pairs = settings.to_vec();
    env_pairs.push(("HTTPS_PORT", &port));
    let env = test_env(app.dir.path(), &env_pairs);

    let (code, report) = tokio::task::spawn_blocking({
        let (dir, env) = (app.dir.path().to_owned(), env.clone());
        move || diagnose(&dir, env)
    })
    .await
    .expect("diagnose");
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "pass");
    assert_eq!(finding(&report, "local URL verification")["ok"], true);
    assert_eq!(finding(&report, "wecom kf API")["ok"], true);

    wecom.refuse_secret("app-secret", Some(serde_json::json!({"errcode": 60020, "errmsg": "not allow to access from your ip, hint: [x], from ip: 198.51.100.8, more info at https://open.work.weixin.qq.com/devtool/query?e=60020"})));
    let (code, report) = tokio::task::spawn_blocking({
        let dir = app.dir.path().to_owned();
        move || diagnose(&dir, env)
    })
    .await
    .expect("diagnose");
    assert_eq!(code, Some(1));
    let gettoken = finding(&report, "wecom gettoken WECOM_SECRET");
    assert_eq!(gettoken["ok"], false);
    assert!(gettoken["fix"].as_str().expect("fix").contains("add 198.51.100.8 to 企业可信IP"), "{gettoken}");
    assert!(!report.to_string().contains("app-secret"), "no secret in the report");
}

#[test]
fn diagnose_names_the_variable_of_a_wrong_key() {
    let dir = tempfile::tempdir().expect("dir");
    let env = test_env(dir.path(), &[("WECOM_ENCODING_AES_KEY", "tooshort")]);
    let (code, report) = diagnose(dir.path(), env);
    assert_eq!(code, Some(1));
    let key = finding(&report, "config WECOM_ENCODING_AES_KEY");
    assert_eq!(key["ok"], false);
    assert!(key["detail"].as_str().expect("detail").contains("must be 43 characters of base64, got 8"), "{key}");
    let text = wechat_api(dir.path())
        .arg("diagnose")
        .envs(test_env(dir.path(), &[("WECOM_ENCODING_AES_KEY", "tooshort")]))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&text.stdout);
    let line = stdout.lines().find(|l| l.starts_with("✖ config WECOM_ENCODING_AES_KEY")).expect("a ✖ line");
    assert!(line.ends_with("— fix: fix the variable in .env (see .env.example)"), "the fix on the same line: {stdout}");
}

/// Regression: `RUST_LOG` was ignored, although operators reach for it first.
/// The binary also starts with umask 077, and its store is private.
#[test]
fn rust_log_raises_the_level_a_bad_filter_exits_64_and_the_store_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    write_certificate(dir.path(), 30);
    let out = wechat_api(dir.path())
        .arg("serve")
        .envs(test_env(dir.path(), &[("RUST_LOG", "wechat_api=loud")]))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUST_LOG must be a log filter"), "{out:?}");

    let mut command = wechat_api(dir.path());
    command.arg("serve").envs(test_env(dir.path(), &[("RUST_LOG", "debug")]));
    let mut service = Running::start(command);
    // `store open` is a debug line of the service's own.
    service.read_until(|line| line.contains("store open"));
    service.port();
    // A file SQLite removes between the listing and the stat (a transient
    // journal) has no mode to check; every file still there must be 0600.
    let mode = |path: &std::path::Path| std::fs::metadata(path).ok().map(|meta| meta.permissions().mode() & 0o777);
    let data = dir.path().join("data");
    assert_eq!(mode(&data), Some(0o700), "DATA_DIR");
    for file in std::fs::read_dir(&data).expect("DATA_DIR").flatten() {
        let found = mode(&file.path());
        assert!(
            matches!(found, None | Some(0o600)),
            "{} has mode {:?}",
            file.path().display(),
            found.map(|m| format!("{m:o}"))
        );
    }
    let status = service.terminate();
    assert!(status.success(), "{status:?}");
}

/// Regression: `scripts/diagnose-wechat-api.sh` missed lower-case TOML keys,
/// `Bearer …` and URL passwords, and wrote its report (which holds customer
/// text) with the default umask. A stand-in `docker` prints what a container
/// could: settings in every spelling, a bearer, a database URL.
#[test]
fn the_diagnose_script_redacts_secrets_in_any_spelling_and_writes_its_report_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let secrets = ["UpperSecret1", "lowerSecret2", "jsonPass3", "bearerTok4", "urlPass5", "queryTok6"];
    // `logs` and `exec` (diagnose) print secrets; `inspect` and `port` a container.
    let docker = format!(
        "#!/bin/sh\ncase \"$1\" in logs|exec) ;; *) echo running; exit 0 ;; esac\ncat <<'OUT'\n\
         WECOM_SECRET={}\nwecom_kf_secret = \"{}\"\n{{\"smtp_pass\": \"{}\"}}\n\
         Authorization: Bearer {}\nDATABASE_URL=postgres://wechat:{}@db:5432/wechat\n\
         GET /cgi-bin/media/get?access_token={}&media_id=M1\ncustomer said 你好\nOUT\n",
        secrets[0], secrets[1], secrets[2], secrets[3], secrets[4], secrets[5]
    );
    std::fs::write(bin.join("docker"), docker).expect("stand-in docker");
    std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let report = dir.path().join("report.txt");
    std::fs::write(&report, "an older report").expect("old report");
    std::fs::set_permissions(&report, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/diagnose-wechat-api.sh");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&report)
        .env_clear()
        .env("PATH", path)
        .current_dir(dir.path())
        .output()
        .expect("the script runs");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&report).expect("report");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in the report:\n{text}");
    }
    assert!(text.contains("customer said 你好") && text.contains("Holds customer message text"), "{text}");
    assert!(text.contains("wecom_kf_secret = \"<redacted>\""), "{text}");
    let mode = std::fs::metadata(&report).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
