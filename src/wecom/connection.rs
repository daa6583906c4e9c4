//! The connection report behind `GET /api/test-wecom-connection` (and later
//! `diagnose`): a real `gettoken` per configured Secret, and whether the kf
//! Secret may call 微信客服 APIs; per channel with `?channel=<name>`. Each
//! report leads with its [`Verdict`] (SPEC §3: the status, the WeCom errcode and
//! a hint), then the detail of every Secret.

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

/// The top of a report, what a reader looks at first (SPEC §3): `errcode` 0
/// when every call succeeded (and no hint: there is nothing to fix); else the
/// first problem's WeCom `errcode` (absent when WeCom did not answer one, e.g.
/// it was not reached), its `error` and its `hint`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Verdict {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Verdict {
    /// Every call succeeded.
    const SUCCESS: Self = Self { errcode: Some(0), error: None, hint: None };

    /// The first problem of `secrets` (in the report's order); `unset`, the
    /// hint, when none of them failed a call (there was no Secret to test).
    fn first_problem(secrets: &[SecretReport], unset: impl FnOnce() -> String) -> Self {
        match secrets.iter().find_map(SecretReport::problem) {
            Some(problem) => {
                Self { errcode: problem.errcode, error: Some(problem.error.clone()), hint: problem.hint.clone() }
            }
            None => Self { errcode: None, error: Some("no Secret to test".into()), hint: Some(unset()) },
        }
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

impl SecretReport {
    /// What failed: `gettoken`, else `kf/account/list`.
    fn problem(&self) -> Option<&Problem> {
        match &self.kf_api {
            _ if self.problem.is_some() => self.problem.as_ref(),
            Some(KfApiReport::Error(problem)) => Some(problem),
            _ => None,
        }
    }
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
    /// The first failing Secret's, the built-ins' first, then the channels'.
    #[serde(flatten)]
    pub verdict: Verdict,
    pub corp_id: String,
    pub secrets: Vec<SecretReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelReport>,
}

/// One channel's Secret tested (`?channel=<name>`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChannelReport {
    pub status: &'static str,
    #[serde(flatten)]
    pub verdict: Verdict,
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
    let verdict = match status {
        "success" => Verdict::SUCCESS,
        _ => Verdict::first_problem(&secrets, || {
            let variable = match (channel.builtin, channel.kind()) {
                (true, ChannelKind::Kf) => "WECOM_KF_SECRET".to_owned(),
                (true, _) => "WECOM_SECRET".to_owned(),
                (false, _) => format!("channels.{}.secret", channel.name),
            };
            format!("set {variable}: without a Secret the channel receives callbacks but calls no WeCom API")
        }),
    };
    ChannelReport {
        status,
        verdict,
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
    let verdict = match reports.iter().find(|r| r.status != "success") {
        _ if status == "success" => Verdict::SUCCESS,
        // The built-ins' problem first, as they are listed first.
        Some(channel) if builtins_ok => channel.verdict.clone(),
        _ => Verdict::first_problem(&secrets, || "set WECOM_SECRET or channels.<name>.secret".to_owned()),
    };
    ConnectionReport { status, verdict, corp_id: corp_id.to_owned(), secrets, channels: reports }
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

    fn secret(app: &str, problem: Option<Problem>, kf_api: Option<KfApiReport>) -> SecretReport {
        let status =
            if problem.is_some() || matches!(kf_api, Some(KfApiReport::Error(_))) { "error" } else { "success" };
        SecretReport { app: app.into(), status, expires_in: None, problem, ip: None, kf_api }
    }

    fn problem(errcode: i64, hint: &str) -> Problem {
        Problem { errcode: Some(errcode), error: format!("errcode {errcode}"), hint: Some(hint.into()) }
    }

    #[test]
    fn a_verdict_is_the_first_failing_calls_errcode_and_hint_or_the_secret_to_set() {
        let fine = secret("app", None, Some(KfApiReport::Success { accounts: 1 }));
        let forbidden = secret("kf", None, Some(KfApiReport::Error(problem(48002, "authorise the app"))));
        let refused = secret("hr", Some(problem(40001, "wrong Secret")), None);
        let first = Verdict::first_problem(&[fine, forbidden, refused], || "unused".into());
        let expected = Verdict {
            errcode: Some(48002),
            error: Some("errcode 48002".into()),
            hint: Some("authorise the app".into()),
        };
        assert_eq!(first, expected);
        let none = Verdict::first_problem(&[], || "set WECOM_SECRET".into());
        assert_eq!((none.errcode, none.hint.as_deref()), (None, Some("set WECOM_SECRET")));
    }

    #[test]
    fn a_report_leads_with_its_status_errcode_and_hint_and_keeps_every_secrets_detail() {
        let report = |status, verdict, secrets| ConnectionReport {
            status,
            verdict,
            corp_id: "ww1".into(),
            secrets,
            channels: Vec::new(),
        };
        let fine = serde_json::to_value(report("success", Verdict::SUCCESS, vec![secret("app", None, None)]));
        assert_eq!(
            fine.expect("JSON"),
            serde_json::json!({"status": "success", "errcode": 0, "corp_id": "ww1",
                "secrets": [{"app": "app", "status": "success"}]})
        );
        let refused = vec![secret("app", Some(problem(60020, "add the IP")), None)];
        let verdict = Verdict::first_problem(&refused, String::new);
        let json = serde_json::to_value(report("error", verdict, refused)).expect("JSON");
        assert_eq!((&json["errcode"], &json["hint"]), (&serde_json::json!(60020), &serde_json::json!("add the IP")));
        assert_eq!(json["secrets"][0]["errcode"], 60020);
    }
}
