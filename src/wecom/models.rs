//! Request and response bodies of the WeCom APIs we call. Only the fields we use.

use serde::{Deserialize, Serialize};

/// `gettoken`'s answer. `Debug` shows the token's length, never the token.
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: i64,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &format_args!("<{} chars>", self.access_token.len()))
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TextContent {
    pub content: String,
}

/// `message/send` with a text message from the self-built app.
#[derive(Debug, Clone, Serialize)]
pub struct AppTextMessage {
    pub touser: String,
    pub msgtype: &'static str,
    pub agentid: i64,
    pub text: TextContent,
}

/// `kf/send_msg` with a text message.
#[derive(Debug, Clone, Serialize)]
pub struct KfTextMessage {
    pub touser: String,
    pub open_kfid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    pub msgtype: &'static str,
    pub text: TextContent,
}

/// `kf/send_msg_on_event` (e.g. the welcome message of `enter_session`).
#[derive(Debug, Clone, Serialize)]
pub struct KfEventMessage {
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    pub msgtype: &'static str,
    pub text: TextContent,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SendResult {
    #[serde(default)]
    pub msgid: Option<String>,
}

/// `kf/sync_msg` request.
#[derive(Debug, Clone, Serialize)]
pub struct KfSyncRequest {
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
pub struct KfAccount {
    pub open_kfid: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KfAccountList {
    #[serde(default)]
    pub account_list: Vec<KfAccount>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KfServiceState {
    pub service_state: i64,
    #[serde(default)]
    pub servicer_userid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KfCustomer {
    pub external_userid: String,
    #[serde(default)]
    pub nickname: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KfCustomers {
    #[serde(default)]
    pub customer_list: Vec<KfCustomer>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub userid: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExternalContact {
    pub external_userid: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExternalContactResponse {
    pub external_contact: ExternalContact,
}

/// A downloaded media file.
#[derive(Debug, Clone)]
pub struct Media {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// From `Content-Disposition`, untrusted: never use it as a path.
    pub filename: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
