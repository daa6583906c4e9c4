//! The connection report behind `GET /api/test-wecom-connection` (and later
//! `diagnose`): a real `gettoken` per configured Secret, and whether the kf
//! Secret may call 微信客服 APIs.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::{ApiError, TokenSource, WeCom, WeComError};

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

#[derive(Debug, Clone, Serialize)]
pub(crate) struct KfApiReport {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<usize>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectionReport {
    pub status: &'static str,
    pub corp_id: String,
    pub secrets: Vec<SecretReport>,
}

async fn secret_report(wecom: &WeCom, corp_id: &str, source: &Arc<TokenSource>, app: String, kf: bool) -> SecretReport {
    let mut report = match wecom.client.gettoken(corp_id, source.secret().expose()).await {
        Ok(token) => SecretReport {
            app,
            status: "success",
            expires_in: Some(token.expires_in),
            problem: None,
            ip: None,
            kf_api: None,
        },
        Err(error) => {
            let ip = error.api().and_then(ApiError::caller_ip);
            return SecretReport {
                app,
                status: "error",
                expires_in: None,
                problem: Some(Problem::of(&error)),
                ip,
                kf_api: None,
            };
        }
    };
    if kf {
        let listed = source.call(|token| async move { wecom.client.kf_account_list(&token).await }).await;
        report.kf_api = Some(match listed {
            Ok(list) => KfApiReport { status: "success", accounts: Some(list.account_list.len()), problem: None },
            Err(error) => {
                report.status = "error";
                let mut problem = Problem::of(&error);
                problem.hint = problem.hint.or_else(|| {
                    Some("this Secret may not call 微信客服 APIs: use the kf Secret, or authorise the app under 微信客服 → 可调用接口的应用".into())
                });
                KfApiReport { status: "error", accounts: None, problem: Some(problem) }
            }
        });
    }
    report
}

/// Tests every configured Secret against WeCom.
pub(crate) async fn test_connection(wecom: &WeCom, corp_id: &str) -> ConnectionReport {
    let mut secrets = Vec::new();
    let shared = matches!((&wecom.app, &wecom.kf), (Some(a), Some(k)) if Arc::ptr_eq(a, k));
    if let Some(app) = &wecom.app {
        let name = if shared { "app+kf" } else { "app" };
        secrets.push(secret_report(wecom, corp_id, app, name.into(), shared).await);
    }
    if let (Some(kf), false) = (&wecom.kf, shared) {
        secrets.push(secret_report(wecom, corp_id, kf, "kf".into(), true).await);
    }
    let status = if !secrets.is_empty() && secrets.iter().all(|s| s.status == "success") { "success" } else { "error" };
    ConnectionReport { status, corp_id: corp_id.to_owned(), secrets }
}
