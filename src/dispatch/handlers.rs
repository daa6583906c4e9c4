//! The handler chain as a pure function: a record in, the actions it calls for out.
//!
//! Being pure is what makes "handled exactly once" cheap: the dispatcher stores a
//! message's actions and marks it handled in one transaction, and the outbox
//! performs them (at least once, with idempotency keys) afterwards.

use super::actions::Action;
use super::record::Record;

/// What the built-in `帮助` / `help` command answers.
pub const HELP_TEXT: &str =
    "wechat-api 在线。\n可用命令：\n• 帮助 / help — 显示本帮助\n其他消息已收到并转交处理。";

/// Settings the handlers need.
#[derive(Debug, Clone, Default)]
pub struct HandlerSettings {
    pub forward: bool,
    /// `WECOM_AGENT_ID`, for `message/send` replies.
    pub agent_id: Option<i64>,
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
    if record.text.as_deref().is_some_and(is_help) {
        if let Some(reply) = Action::reply_to(record, HELP_TEXT, "help", settings.agent_id) {
            actions.push(reply);
        }
    }
    if settings.forward {
        actions.push(Action::Forward {
            record: record.clone(),
        });
    }
    actions
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
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn help_is_answered_and_everything_is_forwarded() {
        let settings = HandlerSettings {
            forward: true,
            agent_id: None,
        };
        let actions = plan(&text_record(" 帮助 "), &settings);
        assert_eq!(actions.len(), 2);
        assert!(
            matches!(&actions[0], Action::AppText { touser, agentid: 1_000_002, content, .. } if touser == "zhangsan" && content == HELP_TEXT)
        );
        assert!(matches!(&actions[1], Action::Forward { .. }));
        assert_eq!(
            plan(&text_record("HELP"), &HandlerSettings::default()).len(),
            1
        );
        assert!(plan(&text_record("hello"), &HandlerSettings::default()).is_empty());
    }

    #[test]
    fn the_configured_agent_id_wins_for_replies() {
        let settings = HandlerSettings {
            forward: false,
            agent_id: Some(42),
        };
        let actions = plan(&text_record("help"), &settings);
        assert!(matches!(&actions[0], Action::AppText { agentid: 42, .. }));
    }

    #[test]
    fn kf_notices_are_not_messages() {
        let mut record = text_record("帮助");
        record.event = Some("kf_msg_or_event".into());
        assert!(plan(
            &record,
            &HandlerSettings {
                forward: true,
                agent_id: None
            }
        )
        .is_empty());
    }
}
