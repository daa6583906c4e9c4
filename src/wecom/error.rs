//! WeCom's errors: the API said no ([`ApiError`], with errcode, errmsg and a hint),
//! kept apart from transport and decoding failures.

use std::net::IpAddr;

/// An `errcode` other than 0, as WeCom sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub errcode: i64,
    pub errmsg: String,
}

impl ApiError {
    /// The IP WeCom saw, from "… from ip: 1.2.3.4 …" (60020 and friends).
    pub(crate) fn caller_ip(&self) -> Option<IpAddr> {
        Self::caller_ip_of(&self.errmsg)
    }

    /// The IP an `errmsg` names ("… from ip: 1.2.3.4, more info at …"): WeCom
    /// writes it into every error answer.
    pub(crate) fn caller_ip_of(errmsg: &str) -> Option<IpAddr> {
        let rest = &errmsg[errmsg.find("from ip:")? + "from ip:".len()..];
        let candidate: String =
            rest.trim_start().chars().take_while(|c| c.is_ascii_hexdigit() || *c == '.' || *c == ':').collect();
        candidate.trim_end_matches(['.', ':']).parse().ok()
    }

    /// What an operator should do about it.
    pub(crate) fn hint(&self) -> Option<String> {
        let hint = match self.errcode {
            -1 => "WeCom is busy; the call is retried with back-off".to_owned(),
            40001 => {
                "invalid credential: the Secret is wrong (WECOM_SECRET / WECOM_KF_SECRET), or the token was revoked"
                    .to_owned()
            }
            40013 => "invalid corp id: check WECOM_CORP_ID (我的企业 → 企业信息 → 企业ID)".to_owned(),
            40014 | 42001 => "the access token is invalid or expired; it is refreshed automatically".to_owned(),
            45009 => "API frequency limit reached; backing off".to_owned(),
            45033 => "too many concurrent calls; backing off".to_owned(),
            48002 => {
                "the app lacks permission for this API: grant it in the admin console (应用管理 → the app → API权限)"
                    .to_owned()
            }
            60020 => match self.caller_ip() {
                Some(ip) => format!("add {ip} to the app's trusted IPs (应用管理 → the app → 企业可信IP)"),
                None => {
                    "add this server's public IP to the app's trusted IPs (应用管理 → the app → 企业可信IP)".to_owned()
                }
            },
            95018 => "kf send refused by the session state: a human servicer may own the session, or this Secret \
                      cannot call 微信客服 APIs (check WECOM_KF_SECRET)"
                .to_owned(),
            95007 => "the kf sync Token expired (valid 10 minutes); the next event brings a fresh one".to_owned(),
            _ => return None,
        };
        Some(hint)
    }

    /// The token must be dropped and fetched again (42001, 40014, and 40001 from a
    /// business API).
    pub(crate) fn token_invalid(&self) -> bool {
        matches!(self.errcode, 40001 | 40014 | 42001)
    }

    /// -1: WeCom is busy; worth a retry after a short pause.
    pub(crate) fn is_busy(&self) -> bool {
        self.errcode == -1
    }

    /// 60020: the calling IP is not on the app's trusted-IP list ([`Self::caller_ip`] names it).
    pub(crate) fn is_ip_not_trusted(&self) -> bool {
        self.errcode == 60020
    }

    /// 95018: the session state refuses a kf send (a human owns it, or the Secret
    /// may not call 微信客服 APIs).
    pub(crate) fn is_session_refused(&self) -> bool {
        self.errcode == 95018
    }

    /// Worth trying again: WeCom busy, rate limits, an expired token, and an IP
    /// not yet trusted (60020: the operator adds it; the outbox parks the channel
    /// meanwhile, SPEC §14). Any other errcode is WeCom's answer to this request
    /// and will be the same next time.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self.errcode, -1 | 45009 | 45033) || self.token_invalid() || self.is_ip_not_trusted()
    }

    /// A kf send whose `msgid` WeCom has seen before: the message went out on an
    /// earlier attempt whose answer was lost. WeCom documents no errcode for it,
    /// so its message is what tells.
    pub(crate) fn is_duplicate_msgid(&self) -> bool {
        let errmsg = self.errmsg.to_ascii_lowercase();
        errmsg.contains("msgid") && ["exist", "duplicate", "repeat", "conflict"].iter().any(|w| errmsg.contains(w))
    }

    /// 95007..=95009: the `kf_msg_or_event` Token expired or does not fit; a sync
    /// without it still works.
    pub(crate) fn is_sync_token_refused(&self) -> bool {
        matches!(self.errcode, 95007..=95009)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errmsg: String = self.errmsg.chars().take(200).collect();
        write!(f, "errcode {}: {errmsg}", self.errcode)?;
        if let Some(hint) = self.hint() {
            write!(f, " — {hint}")?;
        }
        Ok(())
    }
}

/// Why a WeCom call failed.
#[derive(Debug, thiserror::Error)]
pub enum WeComError {
    #[error("WeCom {api}: {error}")]
    Api { api: &'static str, error: ApiError },
    /// Connection, TLS or timeout. The URL (which carries the token) is never kept.
    #[error("WeCom {api}: {reason}")]
    Transport { api: &'static str, reason: String },
    #[error("WeCom {api}: unexpected answer: {reason}")]
    Decode { api: &'static str, reason: String },
    /// Our own request could not be written as JSON.
    #[error("WeCom {api}: cannot encode the request: {reason}")]
    Encode { api: &'static str, reason: String },
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
}

impl WeComError {
    pub(crate) fn transport(api: &'static str, error: reqwest::Error) -> Self {
        // reqwest's message includes the URL, and the URL includes the token.
        let error = error.without_url();
        let reason = if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            format!(
                "cannot connect ({})",
                std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default()
            )
        } else {
            error.to_string()
        };
        Self::Transport { api, reason }
    }

    /// The API error, when WeCom answered with one.
    pub(crate) fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    pub fn errcode(&self) -> Option<i64> {
        self.api().map(|e| e.errcode)
    }

    /// Whether WeCom answered with an API error that `is` describes.
    pub(crate) fn is(&self, is: impl FnOnce(&ApiError) -> bool) -> bool {
        self.api().is_some_and(is)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(errcode: i64, errmsg: &str) -> ApiError {
        ApiError { errcode, errmsg: errmsg.to_owned() }
    }

    #[test]
    fn the_60020_hint_names_the_ip_to_trust() {
        let e = error(60020, "not allow to access from your ip, hint: [1693981234_12_abcd], from ip: 203.0.113.7, more info at https://open.work.weixin.qq.com/devtool/query?e=60020");
        assert_eq!(e.caller_ip(), Some("203.0.113.7".parse().expect("ip")));
        assert!(e.hint().expect("hint").contains("add 203.0.113.7 to the app's trusted IPs"));
        assert!(e.to_string().starts_with("errcode 60020: not allow"));
    }

    #[test]
    fn hints_explain_the_usual_suspects() {
        assert!(error(95018, "").hint().expect("hint").contains("WECOM_KF_SECRET"));
        assert!(error(40013, "").hint().expect("hint").contains("WECOM_CORP_ID"));
        assert!(error(48002, "").hint().expect("hint").contains("API权限"));
        assert!(error(12345, "").hint().is_none());
        assert!(
            error(42001, "").token_invalid() && error(40014, "").token_invalid() && error(40001, "").token_invalid()
        );
        assert!(error(60020, "").is_ip_not_trusted() && error(95018, "").is_session_refused());
        assert!((95007..=95009).all(|code| error(code, "").is_sync_token_refused()));
        assert!(!error(95010, "").is_sync_token_refused());
    }
}
