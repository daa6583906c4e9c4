//! The handler chain as a pure function: a record in, the actions it calls for out.
//!
//! Being pure is what makes "handled exactly once" cheap: the dispatcher stores a
//! message's actions and marks it handled in one transaction, and the outbox
//! performs them (at least once, with idempotency keys) afterwards.

use super::actions::Action;
use super::record::Record;

/// What the built-in `帮助` / `help` command answers.
pub const HELP_TEXT: &str = "wechat-api 在线。\n可用命令：\n• 帮助 / help — 显示本帮助\n其他消息已收到并转交处理。";

/// Settings the handlers need.
#[derive(Debug, Clone, Default)]
pub struct HandlerSettings {
    pub forward: bool,
    /// `WECOM_AGENT_ID`, for `message/send` replies.
    pub agent_id: Option<i64>,
    /// `WELCOME_TEXT`, sent on kf `enter_session`.
    pub welcome_text: Option<String>,
    /// Unix seconds of this installation's first start: kf messages older than
    /// this are history.
    pub first_started_at: i64,
    /// `KF_REPLAY_HISTORY`.
    pub replay_history: bool,
}

impl HandlerSettings {
    /// Whether a kf message sent at `send_time` is history that must not be answered.
    pub fn is_history(&self, send_time: i64) -> bool {
        !self.replay_history && send_time < self.first_started_at
    }
}

/// Whether `text` is the help command.
pub fn is_help(text: &str) -> bool {
    let text = text.trim();
    text == "帮助" || text.eq_ignore_ascii_case("help")
}

/// The actions for one record, in handler order.
pub fn plan(record: &Record, settings: &HandlerSettings) -> Vec<Action> {
    let mut actions = Vec::new();
    if record.event.as_deref() == Some("kf_msg_or_event") {
        // A transport notice: it triggers a kf sync, it is not a message.
        return actions;
    }
    if record.answerable() && record.text.as_deref().is_some_and(is_help) {
        if let Some(reply) = Action::reply_to(record, HELP_TEXT, "help", settings.agent_id) {
            actions.push(reply);
        }
    }
    if let (true, Some(code), Some(text)) = (record.answerable(), welcome_code(record), &settings.welcome_text) {
        actions.push(Action::KfWelcome { key: format!("welcome:{}", record.id), code, content: text.clone() });
    }
    if record.media_id.is_some() {
        // The download forwards the record (with `media_path`) when it is done.
        actions.push(Action::DownloadMedia { record: record.clone(), forward: settings.forward });
    } else if settings.forward {
        actions.push(Action::Forward { record: record.clone() });
    }
    actions
}

/// The `welcome_code` of a kf `enter_session` event.
fn welcome_code(record: &Record) -> Option<String> {
    if record.channel != "kf" || record.event.as_deref() != Some("enter_session") {
        return None;
    }
    record.raw.get("event")?.get("welcome_code")?.as_str().filter(|c| !c.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_record(text: &str) -> Record {
        Record {
            id: "app:msg:1".into(),
            channel: "app".into(),
            msgtype: "text".into(),
            event: None,
            from: Some("zhangsan".into()),
            open_kfid: None,
            agent_id: Some(1_000_002),
            time: 1,
            text: Some(text.into()),
            media_id: None,
            media_path: None,
            origin: None,
            history: false,
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn help_is_answered_and_everything_is_forwarded() {
        let settings = HandlerSettings { forward: true, ..HandlerSettings::default() };
        let actions = plan(&text_record(" 帮助 "), &settings);
        assert_eq!(actions.len(), 2);
        assert!(
            matches!(&actions[0], Action::AppText { touser, agentid: 1_000_002, content, .. } if touser == "zhangsan" && content == HELP_TEXT)
        );
        assert!(matches!(&actions[1], Action::Forward { .. }));
        assert_eq!(plan(&text_record("HELP"), &HandlerSettings::default()).len(), 1);
        assert!(plan(&text_record("hello"), &HandlerSettings::default()).is_empty());
    }

    #[test]
    fn the_configured_agent_id_wins_for_replies() {
        let settings = HandlerSettings { agent_id: Some(42), ..HandlerSettings::default() };
        let actions = plan(&text_record("help"), &settings);
        assert!(matches!(&actions[0], Action::AppText { agentid: 42, .. }));
    }

    #[test]
    fn kf_notices_are_not_messages() {
        let mut record = text_record("帮助");
        record.event = Some("kf_msg_or_event".into());
        assert!(plan(&record, &HandlerSettings { forward: true, ..HandlerSettings::default() }).is_empty());
    }

    #[test]
    fn history_and_servicer_messages_are_forwarded_but_never_answered() {
        let settings =
            HandlerSettings { forward: true, welcome_text: Some("欢迎".into()), ..HandlerSettings::default() };
        let mut record = text_record("帮助");
        record.channel = "kf".into();
        record.open_kfid = Some("wk".into());
        record.history = true;
        assert!(matches!(plan(&record, &settings)[..], [Action::Forward { .. }]));
        record.history = false;
        record.origin = Some(5);
        assert!(matches!(plan(&record, &settings)[..], [Action::Forward { .. }]));
        record.origin = Some(3);
        assert!(matches!(plan(&record, &settings)[..], [Action::KfText { .. }, Action::Forward { .. }]));
    }

    #[test]
    fn enter_session_with_a_code_gets_the_welcome_text_and_media_is_downloaded_first() {
        let settings =
            HandlerSettings { forward: true, welcome_text: Some("欢迎光临".into()), ..HandlerSettings::default() };
        let mut record = text_record("");
        record.text = None;
        record.channel = "kf".into();
        record.msgtype = "event".into();
        record.event = Some("enter_session".into());
        record.origin = Some(4);
        record.raw = serde_json::json!({"event": {"event_type": "enter_session", "welcome_code": "CODE"}});
        let actions = plan(&record, &settings);
        assert!(
            matches!(&actions[0], Action::KfWelcome { code, content, .. } if code == "CODE" && content == "欢迎光临")
        );
        let mut image = text_record("");
        image.text = None;
        image.media_id = Some("M".into());
        assert!(matches!(plan(&image, &settings)[..], [Action::DownloadMedia { forward: true, .. }]));
    }
}
