//! The connection report behind `GET /api/test-wecom-connection` (and later
//! `diagnose`): a real `gettoken` per configured Secret, and whether the kf
//! Secret may call 微信客服 APIs; per channel with `?channel=<name>`.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::{ApiError, ChannelApi, WeCom, WeComError};
use crate::channels::{ChannelKind, ChannelName};
use crate::config::{ChannelSpec, Channels};

/// What went wrong with one call, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Problem {
    fn of(error: &WeComError) -> Self {
        Self { errcode: error.errcode(), error: error.to_string(), hint: error.api().and_then(ApiError::hint) }
    }
}

/// One Secret's result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SecretReport {
    /// `app`, `kf`, or `app+kf` when both use one Secret.
    pub app: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// The IP WeCom saw (60020): the one to add to the trusted IPs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// For the Secret used for kf: may it call `kf/account/list`?
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kf_api: Option<KfApiReport>,
}

/// Whether a Secret may call `kf/account/list`: `"status": "success"` with the
/// number of accounts, or `"status": "error"` with the problem; never both.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub(crate) enum KfApiReport {
    Success { accounts: usize },
    Error(Problem),
}

/// The whole report: the built-in channels' Secrets as before channels had
/// names, then one entry per channel of the config file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectionReport {
    pub status: &'static str,
    pub corp_id: String,
    pub secrets: Vec<SecretReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelReport>,
}

/// One channel's Secret tested (`?channel=<name>`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelReport {
    pub status: &'static str,
    pub channel: ChannelName,
    pub kind: ChannelKind,
    pub corp_id: String,
    pub secrets: Vec<SecretReport>,
}

/// Tests `channel`'s Secret against WeCom (a kf channel's also on a kf API).
pub(crate) async fn test_channel(wecom: &WeCom, channel: &ChannelSpec) -> ChannelReport {
    let mut secrets = Vec::new();
    if let Ok(api) = wecom.api(&channel.name) {
        let kf = channel.kind() == ChannelKind::Kf;
        secrets.push(secret_report(api, channel.corp_id.as_str(), channel.name.to_string(), kf).await);
    }
    let status = match channel.kind() {
        // An AI bot calls no WeCom API with a Secret: nothing to fail.
        ChannelKind::Aibot => "success",
        _ if !secrets.is_empty() && secrets.iter().all(|s| s.status == "success") => "success",
        _ => "error",
    };
    ChannelReport {
        status,
        channel: channel.name.clone(),
        kind: channel.kind(),
        corp_id: channel.corp_id.as_str().to_owned(),
        secrets,
    }
}

/// A real `gettoken` with `api`'s Secret (and, for `kf`, `kf/account/list`), counted for its channel.
async fn secret_report(api: &ChannelApi, corp_id: &str, app: String, kf: bool) -> SecretReport {
    let mut report = SecretReport { app, status: "success", expires_in: None, problem: None, ip: None, kf_api: None };
    match api.client.gettoken(corp_id, api.tokens.secret().expose()).await {
        Ok(token) => report.expires_in = Some(token.expires_in),
        Err(error) => {
            report.status = "error";
            report.ip = error.api().and_then(ApiError::caller_ip);
            report.problem = Some(Problem::of(&error));
            return report;
        }
    }
    if kf {
        let listed = api.call(|client, token| async move { client.kf_account_list(&token).await }).await;
        report.kf_api = Some(match listed {
            Ok(list) => KfApiReport::Success { accounts: list.account_list.len() },
            Err(error) => {
                report.status = "error";
                let mut problem = Problem::of(&error);
                problem.hint = problem.hint.or_else(|| {
                    Some("this Secret may not call 微信客服 APIs: use the kf Secret, or authorise the app under 微信客服 → 可调用接口的应用".into())
                });
                KfApiReport::Error(problem)
            }
        });
    }
    report
}

/// Tests every configured Secret against WeCom: the built-ins' (of `corp_id`),
/// then each of `channels` from the config file.
pub(crate) async fn test_connection(wecom: &WeCom, corp_id: &str, channels: &Channels) -> ConnectionReport {
    let mut secrets = Vec::new();
    let (app, kf) = (wecom.api(&ChannelName::app()).ok(), wecom.api(&ChannelName::kf()).ok());
    let shared = matches!((app, kf), (Some(a), Some(k)) if Arc::ptr_eq(&a.tokens, &k.tokens));
    if let Some(app) = app {
        let name = if shared { "app+kf" } else { "app" };
        secrets.push(secret_report(app, corp_id, name.into(), shared).await);
    }
    if let (Some(kf), false) = (kf, shared) {
        secrets.push(secret_report(kf, corp_id, "kf".into(), true).await);
    }
    let mut reports = Vec::new();
    for channel in channels.iter().filter(|c| !c.builtin) {
        reports.push(test_channel(wecom, channel).await);
    }
    let builtins_ok = secrets.iter().all(|s| s.status == "success");
    let all_ok = builtins_ok && reports.iter().all(|r| r.status == "success");
    let status = if (!secrets.is_empty() || !reports.is_empty()) && all_ok { "success" } else { "error" };
    ConnectionReport { status, corp_id: corp_id.to_owned(), secrets, channels: reports }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kf_api_report_is_either_a_count_or_a_problem_with_its_status() {
        let listed = serde_json::to_value(KfApiReport::Success { accounts: 2 }).expect("JSON");
        assert_eq!(listed, serde_json::json!({"status": "success", "accounts": 2}));
        let problem = Problem { errcode: Some(48002), error: "api forbidden".into(), hint: None };
        let refused = serde_json::to_value(KfApiReport::Error(problem)).expect("JSON");
        assert_eq!(refused, serde_json::json!({"status": "error", "errcode": 48002, "error": "api forbidden"}));
    }
}
