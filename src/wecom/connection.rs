//! The connection report behind `GET /api/test-wecom-connection` (and later
//! `diagnose`): a real `gettoken` per configured Secret, and whether the kf
//! Secret may call 微信客服 APIs.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::{TokenSource, WeCom, WeComError};

/// One Secret's result.
#[derive(Debug, Clone, Serialize)]
pub struct SecretReport {
    /// `app`, `kf`, or `app+kf` when both use one Secret.
    pub app: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The IP WeCom saw (60020): the one to add to the trusted IPs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// For the Secret used for kf: may it call `kf/account/list`?
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kf_api: Option<KfApiReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KfApiReport {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionReport {
    pub status: &'static str,
    pub corp_id: String,
    pub secrets: Vec<SecretReport>,
}

fn failure(app: String, error: &WeComError) -> SecretReport {
    let api = error.api();
    SecretReport {
        app,
        status: "error",
        expires_in: None,
        errcode: error.errcode(),
        error: Some(error.to_string()),
        hint: api.and_then(|e| e.hint()),
        ip: api.and_then(|e| e.from_ip()),
        kf_api: None,
    }
}

async fn secret_report(wecom: &WeCom, corp_id: &str, source: &Arc<TokenSource>, app: String, kf: bool) -> SecretReport {
    let mut report = match wecom.client.gettoken(corp_id, source.secret().expose()).await {
        Ok(token) => SecretReport {
            app,
            status: "success",
            expires_in: Some(token.expires_in),
            errcode: None,
            error: None,
            hint: None,
            ip: None,
            kf_api: None,
        },
        Err(error) => return failure(app, &error),
    };
    if kf {
        let listed = source.call(|token| async move { wecom.client.kf_account_list(&token).await }).await;
        report.kf_api = Some(match listed {
            Ok(list) => KfApiReport {
                status: "success",
                accounts: Some(list.account_list.len()),
                errcode: None,
                error: None,
                hint: None,
            },
            Err(error) => {
                report.status = "error";
                KfApiReport {
                    status: "error",
                    accounts: None,
                    errcode: error.errcode(),
                    hint: error.api().and_then(|e| e.hint()).or_else(|| {
                        Some("this Secret may not call 微信客服 APIs: use the kf Secret, or authorise the app under 微信客服 → 可调用接口的应用".into())
                    }),
                    error: Some(error.to_string()),
                }
            }
        });
    }
    report
}

/// Tests every configured Secret against WeCom.
pub async fn test_connection(wecom: &WeCom, corp_id: &str) -> ConnectionReport {
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
