//! `wechat-api diagnose`: the operators' troubleshooting guide as one run.
//!
//! Owns: the order of the checks and the wording of each finding and its fix.
//! Reuses what the service itself uses: configuration validation, certificate
//! loading, the `uploads:*` checks, the WeCom client and its errors with hints.
//! Opens no store and changes nothing but probe files it removes again.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::config::{self, ChannelSpec, Config, ProxyUrl, Sources};
use crate::health::checks::{uploads_free, uploads_writable};
use crate::health::Status;
use crate::telemetry::Metrics;
use crate::wecom::{WeComClient, WeComError};
use crate::{crypto, tls};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { check: check.into(), ok: true, detail: detail.into(), fix: None }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { check: check.into(), ok: false, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub status: &'static str,
    pub version: &'static str,
    pub checks: Vec<Finding>,
}

/// Runs every check. Configuration problems end the run early: the rest needs it.
pub(crate) async fn run(sources: &Sources) -> Report {
    let mut findings = Vec::new();
    match config::load(sources) {
        Err(errors) => {
            for line in errors.0 {
                let variable = line.split_whitespace().next().unwrap_or("config").to_owned();
                findings.push(Finding::fail(
                    format!("config {variable}"),
                    line,
                    "fix the variable in .env (see .env.example)",
                ));
            }
        }
        Ok((config, warnings)) => {
            findings.extend(config_findings(&config, &warnings));
            findings.extend(certificate_findings(&config));
            findings.push(local_verification(&config).await);
            for channel in config.channels.iter().filter(|c| !c.builtin) {
                let check = format!("local URL verification channels.{}", channel.name);
                findings.push(verify_locally(&config, channel, &channel.path(), &check).await);
            }
            findings.extend(wecom_findings(&config).await);
            findings.extend(channel_token_findings(&config).await);
            findings.extend(egress_findings(&config).await);
            findings.extend(directory_findings(&config));
            if let Some(finding) = smtp_finding(&config).await {
                findings.push(finding);
            }
        }
    }
    let status = if findings.iter().all(|f| f.ok) { "pass" } else { "fail" };
    Report { status, version: crate::VERSION, checks: findings }
}

fn config_findings(config: &Config, warnings: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(app) = config.channels.builtin_app() {
        out.extend([
            Finding::pass(
                "config WECOM_CORP_ID",
                format!("{} (the receive id every callback must carry)", app.corp_id.as_str()),
            ),
            Finding::pass("config WECOM_TOKEN", format!("{} letters and digits", app.keys.token.expose().len())),
            Finding::pass("config WECOM_ENCODING_AES_KEY", "43 characters of base64, decodes to a 32-byte key"),
        ]);
        out.push(match app.agent_id() {
            Some(id) => Finding::pass("config WECOM_AGENT_ID", id.to_string()),
            // Optional (SPEC §2): a warning to read, not a failure.
            None if app.secret().is_some() => Finding::pass(
                "config WECOM_AGENT_ID",
                "not set: replies through message/send use the AgentID of each message; a send to the app \
                 channel that answers no message needs it (应用管理 → the app → AgentId)",
            ),
            None => Finding::pass("config WECOM_AGENT_ID", "not set (no WECOM_SECRET either: no replies)"),
        });
    }
    for channel in config.channels.iter().filter(|c| !c.builtin) {
        out.push(Finding::pass(
            format!("config channels.{}", channel.name),
            format!(
                "{} channel of corp {}, served at {}",
                channel.kind().as_str(),
                channel.corp_id.as_str(),
                channel.path()
            ),
        ));
    }
    for warning in warnings {
        // Warnings are findings to read, not failures (identical Secrets may be right).
        out.push(Finding::pass("config warning", warning.clone()));
    }
    out
}

fn certificate_findings(config: &Config) -> Vec<Finding> {
    let listen = &config.listen;
    if !listen.tls_enabled {
        return vec![Finding::pass("tls", "TLS_ENABLED=false: plain HTTP behind a proxy that terminates TLS")];
    }
    match tls::load_certificate(&listen.cert_path, &listen.key_path) {
        Err(error) => vec![Finding::fail(
            "tls certificate",
            error.to_string(),
            "put the PEM chain and its PKCS#8 key in certs/ (see certs/README.md)",
        )],
        Ok(loaded) => {
            let days = (loaded.not_after - crate::store::now()).div_euclid(86_400);
            let detail = format!("{} — key matches, {days} days left", loaded.subject);
            if days < 14 {
                vec![Finding::fail(
                    "tls certificate",
                    detail,
                    "renew the certificate; the service picks up new files without a restart",
                )]
            } else {
                vec![Finding::pass("tls certificate", detail)]
            }
        }
    }
}

/// The local listener answers a signed URL verification on the shared path,
/// through the real port.
async fn local_verification(config: &Config) -> Finding {
    const CHECK: &str = "local URL verification";
    let Some(channel) = config.channels.iter().next() else {
        return Finding::fail(
            CHECK,
            "no channel is configured",
            "set WECOM_CORP_ID, WECOM_TOKEN and WECOM_ENCODING_AES_KEY",
        );
    };
    verify_locally(config, channel, crate::config::CALLBACK_PATH, CHECK).await
}

/// Each file channel's Secret gets a token for its corp (SPEC §12: diagnose per channel).
async fn channel_token_findings(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for channel in config.channels.iter().filter(|c| !c.builtin) {
        let client = match wecom_client(config, config.proxy_for(channel)) {
            Ok(client) => client,
            Err(finding) => return vec![finding],
        };
        let check = format!("wecom gettoken channels.{}", channel.name);
        let Some(secret) = channel.secret() else {
            out.push(Finding::pass(&check, "no Secret: this channel only receives"));
            continue;
        };
        out.push(match client.on(&channel.name).gettoken(channel.corp_id.as_str(), secret.expose()).await {
            Ok(token) => Finding::pass(
                &check,
                format!("token issued for {} (expires in {} s)", secret.redacted(), token.expires_in),
            ),
            Err(error) => wecom_failure(&check, &error),
        });
    }
    out
}

/// `channel`'s signed URL verification answered at `path` of the local listener.
async fn verify_locally(config: &Config, channel: &ChannelSpec, path: &str, check: &str) -> Finding {
    let listen = &config.listen;
    let callback = listen.local_url(listen.https_port, path);
    let echo = "diagnose-echo";
    let keys = &channel.keys;
    let echostr = crypto::encrypt(&keys.aes_key, echo.as_bytes(), channel.corp_id.as_str().as_bytes());
    let (timestamp, nonce) = (crate::store::now().to_string(), "20251121");
    let signature = crypto::sign(keys.token.expose(), &timestamp, nonce, &echostr);
    let query = serde_urlencoded::to_string([
        ("msg_signature", signature.as_str()),
        ("timestamp", &timestamp),
        ("nonce", nonce),
        ("echostr", &echostr),
    ])
    .unwrap_or_default();
    let url = format!("{callback}?{query}");
    // Our own listener on this machine: its certificate is not for 127.0.0.1.
    let client = match crate::outbound::client(Duration::from_secs(5)).danger_accept_invalid_certs(true).build() {
        Ok(client) => client,
        Err(e) => return Finding::fail(check, e.without_url().to_string(), "report this"),
    };
    match client.get(&url).send().await {
        Err(_) => Finding::fail(
            check,
            format!("nothing answers at {callback}"),
            "start the service (docker compose up -d) and check HTTPS_PORT and the port mapping",
        ),
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() && body == echo {
                Finding::pass(check, format!("{callback} answered the signed echo"))
            } else {
                Finding::fail(
                    check,
                    format!("HTTP {status}: {}", body.trim()),
                    "the running service has other WECOM_TOKEN / WECOM_ENCODING_AES_KEY / WECOM_CORP_ID values than this configuration",
                )
            }
        }
    }
}

fn wecom_failure(check: &str, error: &WeComError) -> Finding {
    let fix = match error.api() {
        Some(api) if api.is_ip_not_trusted() => match api.caller_ip() {
            Some(ip) => format!("add {ip} to 企业可信IP: admin console → 应用管理 → the app → 企业可信IP → 配置"),
            None => "add this server's public IP to 企业可信IP (应用管理 → the app)".to_owned(),
        },
        Some(api) => api.hint().unwrap_or_else(|| "see the errcode at developer.work.weixin.qq.com".to_owned()),
        None => "check DNS, the firewall and WECOM_API_BASE_URL; the VM must reach qyapi.weixin.qq.com:443".to_owned(),
    };
    Finding::fail(check, error.to_string(), fix)
}

/// The WeCom client of `diagnose`, through `proxy` (SPEC §14), counting into
/// metrics of its own that no one reads.
fn wecom_client(config: &Config, proxy: Option<&ProxyUrl>) -> Result<WeComClient, Finding> {
    let metrics = std::sync::Arc::new(Metrics::new(&crate::telemetry::BuildInfo::sqlite(crate::VERSION)));
    WeComClient::with_proxy(&config.wecom.base_url, metrics, proxy)
        .map_err(|error| wecom_failure("wecom client", &error))
}

/// Each channel's egress IP as WeCom sees it, through its proxy (SPEC §14): a
/// `gettoken` without a Secret, which WeCom refuses naming the IP.
async fn egress_findings(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for channel in config.channels.iter() {
        let check = format!("egress {}", channel.name);
        let proxy = config.proxy_for(channel);
        let route = proxy.map_or_else(|| "direct, no proxy".to_owned(), |p| format!("through the proxy {}", p.shown()));
        let client = match wecom_client(config, proxy) {
            Ok(client) => client,
            Err(finding) => {
                out.push(finding);
                continue;
            }
        };
        out.push(match client.probe_egress(channel.corp_id.as_str()).await {
            Ok(ip) => Finding::pass(
                &check,
                format!(
                    "WeCom sees {ip} ({route}): it must be among the app's trusted IPs ({})",
                    crate::egress::CONSOLE_PATH
                ),
            ),
            Err(error) => {
                let mut finding = wecom_failure(&check, &error);
                finding.fix = Some(match proxy {
                    Some(p) => format!(
                        "check the proxy {} (WECOM_PROXY_URL / channels.{}.proxy_url) and that it reaches WeCom",
                        p.shown(),
                        channel.name
                    ),
                    None => "check DNS, the firewall and WECOM_API_BASE_URL; the VM must reach qyapi.weixin.qq.com:443"
                        .to_owned(),
                });
                finding
            }
        });
    }
    out
}

async fn wecom_findings(config: &Config) -> Vec<Finding> {
    let client = match wecom_client(config, config.wecom.proxy.as_ref()) {
        Ok(client) => client,
        Err(finding) => return vec![finding],
    };
    let mut out = Vec::new();
    let (Some(app), Some(kf)) = (config.channels.builtin_app(), config.channels.builtin_kf()) else {
        return out;
    };
    let (client, kf_client) = (client.on(&app.name), client.on(&kf.name));
    let corp = app.corp_id.as_str();
    let mut kf_token = None;
    let mut secrets = Vec::new();
    if let Some(secret) = app.secret() {
        secrets.push(("WECOM_SECRET", secret));
    }
    if let Some(secret) = kf.secret().filter(|_| !config.secrets_identical()) {
        secrets.push(("WECOM_KF_SECRET", secret));
    }
    if secrets.is_empty() {
        out.push(Finding::pass("wecom gettoken", "no Secret configured: the service only receives"));
    }
    for (variable, secret) in secrets {
        let check = format!("wecom gettoken {variable}");
        match client.gettoken_with_date(corp, secret.expose()).await {
            Ok((token, date)) => {
                out.push(Finding::pass(
                    &check,
                    format!("token issued for {} (expires in {} s)", secret.redacted(), token.expires_in),
                ));
                if let Some(skew) = date.map(|d| d - crate::store::now()) {
                    out.push(if skew.abs() <= 60 {
                        Finding::pass("clock", format!("{skew:+} s from WeCom's clock"))
                    } else {
                        Finding::fail(
                            "clock",
                            format!("{skew:+} s from WeCom's clock"),
                            "enable NTP on the host (timedatectl set-ntp true)",
                        )
                    });
                }
                let uses_for_kf = variable == "WECOM_KF_SECRET" || kf.secret().is_none() || config.secrets_identical();
                if uses_for_kf {
                    kf_token = Some(token.access_token);
                }
            }
            Err(error) => out.push(wecom_failure(&check, &error)),
        }
    }
    if let Some(token) = kf_token {
        out.push(match kf_client.kf_account_list(&token).await {
            Ok(list) => Finding::pass("wecom kf API", format!("the kf Secret may call 微信客服 APIs ({} accounts)", list.account_list.len())),
            Err(error) => {
                let mut finding = wecom_failure("wecom kf API", &error);
                finding.fix = Some(
                    "use the Secret of the 微信客服 app in WECOM_KF_SECRET, or authorise this app under 微信客服 → 可调用接口的应用".into(),
                );
                finding
            }
        });
    }
    out
}

fn directory_findings(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for (variable, dir) in [("UPLOAD_DIR", &config.upload_dir), ("DATA_DIR", &config.store.data_dir)] {
        out.push(from_check(&format!("{variable} writable"), uploads_writable(dir)));
    }
    out.push(from_check("UPLOAD_DIR free space", uploads_free(Path::new(&config.upload_dir))));
    out
}

fn from_check(name: &str, result: crate::health::CheckResult) -> Finding {
    let detail = result.output.unwrap_or_default();
    match result.status {
        Status::Fail => Finding::fail(name, detail, "see above: the service runs as uid 1001 in the container"),
        _ => Finding::pass(name, detail),
    }
}

async fn smtp_finding(config: &Config) -> Option<Finding> {
    let email = config.monitoring.alert_email.as_ref()?;
    let check = format!("smtp {}:{}", email.smtp.server, email.smtp.port);
    Some(match crate::alerts::test_login(email).await {
        Ok(()) => Finding::pass(check, "connected and logged in"),
        Err(error) => Finding::fail(
            check,
            error,
            "check SMTP_SERVER, SMTP_PORT, SMTP_TLS (465 = tls) and SMTP_USER / SMTP_PASS (an auth code)",
        ),
    })
}

/// The report for people: one line per check, ✔ or ✖, with the fix on the
/// same line (SPEC §7).
pub(crate) fn render(report: &Report) -> String {
    // An answer's body or an error may hold a line break: it must not start a line.
    let one_line = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    for finding in &report.checks {
        let mark = if finding.ok { '✔' } else { '✖' };
        out.push_str(&format!("{mark} {} — {}", finding.check, one_line(&finding.detail)));
        if let Some(fix) = &finding.fix {
            out.push_str(&format!(" — fix: {}", one_line(fix)));
        }
        out.push('\n');
    }
    let failed = report.checks.iter().filter(|f| !f.ok).count();
    if failed == 0 {
        out.push_str("all checks passed\n");
    } else {
        out.push_str(&format!("{failed} check(s) failed\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn loaded(pairs: &[(&str, &str)]) -> (Config, Vec<String>) {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        config::load(&Sources { env, ..Sources::default() }).expect("valid")
    }

    #[test]
    fn a_secret_without_an_agent_id_passes_and_says_what_that_means() {
        let (config, warnings) = loaded(&[
            ("WECOM_CORP_ID", "ww1436e0e65a779aee"),
            ("WECOM_TOKEN", "QDG6eK"),
            ("WECOM_ENCODING_AES_KEY", KEY),
            ("WECOM_SECRET", "app-secret"),
        ]);
        let findings = config_findings(&config, &warnings);
        let agent = findings.iter().find(|f| f.check == "config WECOM_AGENT_ID").expect("the agent id finding");
        assert!(agent.ok, "optional (SPEC §2): {agent:?}");
        assert!(agent.detail.contains("use the AgentID of each message"), "{agent:?}");
    }

    #[test]
    fn each_check_is_one_line_with_its_fix() {
        let report = Report {
            status: "fail",
            version: crate::VERSION,
            checks: vec![
                Finding::pass("config WECOM_TOKEN", "6 letters and digits"),
                Finding::fail("tls certificate", "HTTP 500: first\nsecond", "renew\nthe certificate"),
            ],
        };
        assert_eq!(
            render(&report),
            "✔ config WECOM_TOKEN — 6 letters and digits\n\
             ✖ tls certificate — HTTP 500: first second — fix: renew the certificate\n\
             1 check(s) failed\n"
        );
    }
}
