//! Request and response bodies of the WeCom APIs we call. Only the fields we use.

use serde::{Deserialize, Serialize};

use crate::store::tokens::AccessToken;

/// `gettoken`'s answer (its `Debug` shows the token's length, never the token).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: AccessToken,
    pub expires_in: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct TextContent<'a> {
    pub content: &'a str,
}

/// `message/send` with a text message from the self-built app.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AppTextMessage<'a> {
    pub touser: &'a str,
    pub msgtype: &'static str,
    pub agentid: i64,
    pub text: TextContent<'a>,
    /// 1: WeCom drops the same text to the same member within the interval, so a
    /// retry after a lost answer is not delivered twice.
    pub enable_duplicate_check: u8,
    pub duplicate_check_interval: u64,
}

/// `kf/service_state/trans`: hand a session to the queue (2) or a servicer (3).
#[derive(Debug, Clone, Serialize)]
pub(super) struct KfServiceStateTrans<'a> {
    pub open_kfid: &'a str,
    pub external_userid: &'a str,
    pub service_state: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicer_userid: Option<&'a str>,
}

/// `kf/send_msg` with a text message.
#[derive(Debug, Clone, Serialize)]
pub(super) struct KfTextMessage<'a> {
    pub touser: &'a str,
    pub open_kfid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<&'a str>,
    pub msgtype: &'static str,
    pub text: TextContent<'a>,
}

/// `kf/send_msg_on_event` (e.g. the welcome message of `enter_session`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct KfEventMessage<'a> {
    pub code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<&'a str>,
    pub msgtype: &'static str,
    pub text: TextContent<'a>,
}

/// WeCom's answer to a send, past its errcode. Its `msgid` is not kept: kf parts
/// carry our own (`wecom::kf_msgid`), and an app text's is never asked for again.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SendResult {}

/// `kf/sync_msg` request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KfSyncRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_kfid: Option<String>,
}

/// `kf/sync_msg` page; messages stay JSON until classified.
#[derive(Debug, Clone, Deserialize)]
pub struct KfSyncPage {
    #[serde(default)]
    pub next_cursor: String,
    #[serde(default)]
    pub has_more: i64,
    #[serde(default)]
    pub msg_list: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KfAccount {}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KfAccountList {
    #[serde(default)]
    pub account_list: Vec<KfAccount>,
}

/// `kf/service_state/get`'s answer, as WeCom sends it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct KfServiceStateAnswer {
    pub service_state: i64,
    #[serde(default)]
    pub servicer_userid: Option<String>,
}

/// Who owns a kf session (`service_state`), with what that means for sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceState {
    /// 0: not handled yet.
    Untreated,
    /// 1: the bot (this appliance, through the API) owns it.
    Bot,
    /// 2: queued for a human servicer.
    Queued,
    /// 3: a human servicer owns it; only they can send.
    Human,
    /// 4: ended, or not started.
    Ended,
    /// A state this version does not know.
    Other(i64),
}

impl ServiceState {
    /// The state of WeCom's `service_state` number.
    pub(crate) fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Untreated,
            1 => Self::Bot,
            2 => Self::Queued,
            3 => Self::Human,
            4 => Self::Ended,
            other => Self::Other(other),
        }
    }

    /// WeCom's number for the state.
    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Untreated => 0,
            Self::Bot => 1,
            Self::Queued => 2,
            Self::Human => 3,
            Self::Ended => 4,
            Self::Other(code) => code,
        }
    }

    /// What the state means, in the console's words and in English.
    pub(crate) fn meaning(self) -> &'static str {
        match self {
            Self::Untreated => "未处理 (not yet handled)",
            Self::Bot => "由智能助手接待 (the bot owns it)",
            Self::Queued => "待接入池排队中 (queued for a servicer)",
            Self::Human => "由人工接待 (a human servicer owns it: only they can send)",
            Self::Ended => "已结束或未开始 (ended: send within 48 h of the customer's last message)",
            Self::Other(_) => "unknown",
        }
    }
}

/// Who owns a kf session, and which servicer when a human does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KfServiceState {
    pub state: ServiceState,
    pub servicer_userid: Option<String>,
}

impl std::fmt::Display for KfServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session state {} {}", self.state.code(), self.state.meaning())?;
        if let Some(servicer) = &self.servicer_userid {
            write!(f, ", servicer {servicer}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KfCustomer {
    pub external_userid: String,
    #[serde(default)]
    pub nickname: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct KfCustomers {
    #[serde(default)]
    pub customer_list: Vec<KfCustomer>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct User {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExternalContact {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExternalContactResponse {
    pub external_contact: ExternalContact,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_states_keep_their_codes_and_say_who_owns_the_session() {
        for code in -1..6 {
            assert_eq!(ServiceState::from_code(code).code(), code);
        }
        let state = KfServiceState { state: ServiceState::from_code(3), servicer_userid: Some("zhangsan".into()) };
        assert_eq!(
            state.to_string(),
            "session state 3 由人工接待 (a human servicer owns it: only they can send), servicer zhangsan"
        );
    }

    #[test]
    fn a_token_response_never_prints_its_token() {
        let answer: TokenResponse =
            serde_json::from_str(r#"{"errcode":0,"access_token":"SECRET-ACCESS-TOKEN","expires_in":7200}"#)
                .expect("gettoken answer");
        let shown = format!("{answer:?}");
        assert!(!shown.contains("SECRET-ACCESS-TOKEN"), "{shown}");
        assert!(shown.contains("19 chars"), "{shown}");
    }
}
