//! The handler chain as a pure function: a record in, the actions it calls for out.
//!
//! Being pure is what makes "handled exactly once" cheap: the dispatcher stores a
//! message's actions and marks it handled in one transaction, and the outbox
//! performs them (at least once, with idempotency keys) afterwards.

use super::actions::{Action, Purpose};
use super::record::Record;
use crate::config::{Channels, KfSettings};
use crate::messages::kf::{KfEvent, Origin};
use crate::messages::Message;
use crate::store::conversations::{Customer, Observation};

/// What the built-in `帮助` / `help` command answers.
pub const HELP_TEXT: &str = "wechat-api 在线。\n可用命令：\n• 帮助 / help — 显示本帮助\n其他消息已收到并转交处理。";

/// Settings the handlers need.
#[derive(Debug, Clone, Default)]
pub(crate) struct HandlerSettings {
    pub forward: bool,
    /// `WECOM_AGENT_ID`, for `message/send` replies.
    pub agent_id: Option<i64>,
    /// Unix seconds of this installation's first start: kf messages older than
    /// this are history.
    pub first_started_at: i64,
    /// `WELCOME_TEXT`, `KF_REPLAY_HISTORY` and the handover (`HANDOFF_*`).
    pub kf: KfSettings,
    /// Every channel: a file channel's own agent id, forward target and welcome text.
    pub channels: Channels,
}

impl HandlerSettings {
    /// Whether a kf message sent at `send_time` is history that must not be answered.
    pub(crate) fn is_history(&self, send_time: i64) -> bool {
        !self.kf.replay_history && send_time < self.first_started_at
    }

    /// The agent id replies to `record` are sent with: a file channel's own,
    /// else `WECOM_AGENT_ID`.
    pub(crate) fn agent_id_of(&self, record: &Record) -> Option<i64> {
        match self.channels.get(record.channel.as_str()) {
            Some(channel) if !channel.builtin => channel.agent_id(),
            _ => self.agent_id,
        }
    }

    /// Whether `record` is forwarded: its channel's `forward_url`, else `FORWARD_URL`.
    pub(crate) fn forwards(&self, record: &Record) -> bool {
        self.forward || self.channels.get(record.channel.as_str()).is_some_and(|c| c.forward.is_some())
    }

    /// The welcome text of `record`'s channel, else `WELCOME_TEXT`.
    fn welcome_text_of(&self, record: &Record) -> Option<&String> {
        let own = self.channels.get(record.channel.as_str()).and_then(|c| c.welcome_text.as_ref());
        own.or(self.kf.welcome_text.as_ref())
    }
}

/// Whether `text` is the help command.
pub(crate) fn is_help(text: &str) -> bool {
    let text = text.trim();
    text == "帮助" || text.eq_ignore_ascii_case("help")
}

/// Whether a kf customer's `message` asks for a human (`HANDOFF_KEYWORDS`).
pub(crate) fn asks_for_human(message: &Message, record: &Record, settings: &HandlerSettings) -> bool {
    matches!(message, Message::Kf(_))
        && record.answerable()
        && message.text().is_some_and(|text| settings.kf.handoff.keywords.iter().any(|k| k == text.trim()))
}

/// The kf conversation a message belongs to: its account and customer.
pub(crate) fn customer_of(message: &Message, record: &Record) -> Option<Customer> {
    let Message::Kf(kf) = message else { return None };
    Some(Customer {
        channel: record.channel.clone(),
        open_kfid: record.open_kfid.clone()?,
        external_userid: kf.external_userid.clone()?,
    })
}

/// What a kf message tells about its conversation, for the kf rules: the
/// customer wrote (and perhaps asked for a human); a human has the session (a
/// servicer wrote, a session was taken or transferred); the session ended.
pub(crate) fn observe(message: &Message, record: &Record, settings: &HandlerSettings) -> Vec<(Customer, Observation)> {
    let Message::Kf(kf) = message else { return Vec::new() };
    let Some(customer) = customer_of(message, record) else { return Vec::new() };
    let observations = match (kf.origin, kf.event()) {
        (_, Some(KfEvent::SessionStatusChange { change_type: Some(3), .. })) => vec![Observation::Ended],
        (_, Some(KfEvent::SessionStatusChange { change_type: Some(_), .. })) => {
            vec![Observation::Human { at: kf.send_time }]
        }
        (Origin::Servicer, _) => vec![Observation::Human { at: kf.send_time }],
        (Origin::Customer, _) if asks_for_human(message, record, settings) => {
            vec![Observation::Wrote { at: kf.send_time }, Observation::Human { at: kf.send_time }]
        }
        (Origin::Customer, _) => vec![Observation::Wrote { at: kf.send_time }],
        _ => Vec::new(),
    };
    observations.into_iter().map(|o| (customer.clone(), o)).collect()
}

/// The actions for one message, in handler order. Decisions read the typed
/// `message`; `record` is what replies address and forwards carry;
/// `human_has_session`: a human has this kf conversation as the appliance knows
/// it before this message (service state 2 or 3), where a handover keyword
/// announces nothing and hands over nothing again (SPEC §15) but is still
/// forwarded with `"handoff": true`.
pub(crate) fn plan(
    message: &Message,
    record: &Record,
    settings: &HandlerSettings,
    human_has_session: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if message.is_kf_notice() {
        // A transport notice: it triggers a kf sync, it is not a message.
        return actions;
    }
    let answerable = record.answerable();
    let handing_over;
    let record = if asks_for_human(message, record, settings) {
        if !human_has_session {
            actions.extend(Action::announce_handover(
                record,
                &settings.kf.handoff.text,
                settings.kf.handoff.servicer.clone(),
            ));
        }
        handing_over = Record { handoff: true, ..record.clone() };
        &handing_over
    } else {
        record
    };
    if answerable && !record.handoff && message.text().is_some_and(is_help) {
        if let Some(reply) = Action::reply_to(record, HELP_TEXT, Purpose::Help, settings.agent_id_of(record)) {
            actions.push(reply);
        }
    }
    if let (true, Some(code), Some(text)) = (answerable, message.welcome_code(), settings.welcome_text_of(record)) {
        actions.extend(Action::welcome(record, code, text));
    }
    if let Message::Aibot { message: bot, .. } = message {
        let urls = bot.media_urls();
        if !urls.is_empty() {
            // Fetched at once after journaling: the URLs live 5 minutes.
            actions.push(Action::DownloadAibotMedia {
                record: record.clone(),
                urls,
                forward: settings.forwards(record),
            });
            return actions;
        }
    }
    if record.media_id.is_some() {
        // The download forwards the record (with `media_path`) when it is done.
        actions.push(Action::DownloadMedia { record: record.clone(), forward: settings.forwards(record) });
    } else if settings.forwards(record) {
        actions.push(Action::Forward { record: record.clone() });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::super::record::Source;
    use super::*;
    use crate::channels::{ChannelKind, ChannelName};
    use crate::config::Handoff;
    use crate::messages::kf::{KfMessage, Origin};
    use crate::messages::AppMessage;

    fn source(name: ChannelName, kind: ChannelKind) -> Source {
        Source { name, kind, corp_id: "ww1".into() }
    }

    /// An app text message from zhangsan, and its record.
    fn text_message(text: &str) -> (Message, Record) {
        let xml = format!(
            "<xml><ToUserName>ww1</ToUserName><FromUserName>zhangsan</FromUserName><CreateTime>1</CreateTime>\
             <MsgType>text</MsgType><Content><![CDATA[{text}]]></Content><MsgId>1</MsgId><AgentID>1000002</AgentID></xml>"
        );
        let message = Message::App { channel: ChannelName::app(), message: AppMessage::parse(&xml).expect("parses") };
        let record =
            Record::new("app:msg:1".into(), source(ChannelName::app(), ChannelKind::App), &message, &xml, 1, false);
        (message, record)
    }

    /// A kf message (`raw` as `kf/sync_msg` returns it), and its record.
    fn kf_message(raw: serde_json::Value, history: bool) -> (Message, Record) {
        let message = Message::Kf(KfMessage::parse(raw).expect("parses"));
        let record =
            Record::new("kf:msg:1".into(), source(ChannelName::kf(), ChannelKind::Kf), &message, "", 1, history);
        (message, record)
    }

    fn kf_text(text: &str, origin: i64, history: bool) -> (Message, Record) {
        kf_message(
            serde_json::json!({"msgid": "1", "open_kfid": "wk", "external_userid": "wm", "origin": origin,
                               "msgtype": "text", "text": {"content": text}}),
            history,
        )
    }

    #[test]
    fn help_is_answered_and_everything_is_forwarded() {
        let settings = HandlerSettings { forward: true, ..HandlerSettings::default() };
        let (message, record) = text_message(" 帮助 ");
        let actions = plan(&message, &record, &settings, false);
        assert_eq!(actions.len(), 2);
        assert!(
            matches!(&actions[0], Action::AppText { touser, agentid: 1_000_002, content, .. } if touser == "zhangsan" && content == HELP_TEXT)
        );
        assert!(matches!(&actions[1], Action::Forward { .. }));
        let (message, record) = text_message("HELP");
        assert_eq!(plan(&message, &record, &HandlerSettings::default(), false).len(), 1);
        let (message, record) = text_message("hello");
        assert!(plan(&message, &record, &HandlerSettings::default(), false).is_empty());
    }

    #[test]
    fn the_configured_agent_id_wins_for_replies() {
        let settings = HandlerSettings { agent_id: Some(42), ..HandlerSettings::default() };
        let (message, record) = text_message("help");
        let actions = plan(&message, &record, &settings, false);
        assert!(matches!(&actions[0], Action::AppText { agentid: 42, .. }));
    }

    #[test]
    fn kf_notices_are_not_messages() {
        let xml = "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>\
                   <Event>kf_msg_or_event</Event><Token>T</Token><OpenKfId>wk</OpenKfId></xml>";
        let message = Message::App { channel: ChannelName::kf(), message: AppMessage::parse(xml).expect("parses") };
        let record =
            Record::new("kf:evt:1".into(), source(ChannelName::kf(), ChannelKind::Kf), &message, xml, 1, false);
        assert!(
            plan(&message, &record, &HandlerSettings { forward: true, ..HandlerSettings::default() }, false).is_empty()
        );
    }

    fn welcome(text: &str) -> KfSettings {
        KfSettings { welcome_text: Some(text.into()), ..KfSettings::default() }
    }

    #[test]
    fn history_and_servicer_messages_are_forwarded_but_never_answered() {
        let settings = HandlerSettings { forward: true, kf: welcome("欢迎"), ..HandlerSettings::default() };
        let (message, record) = kf_text("帮助", 3, true);
        assert!(matches!(plan(&message, &record, &settings, false)[..], [Action::Forward { .. }]));
        let (message, record) = kf_text("帮助", 5, false);
        assert_eq!(record.origin, Some(Origin::Servicer));
        assert!(matches!(plan(&message, &record, &settings, false)[..], [Action::Forward { .. }]));
        let (message, record) = kf_text("帮助", 3, false);
        assert!(matches!(
            plan(&message, &record, &settings, false)[..],
            [Action::KfText { .. }, Action::Forward { .. }]
        ));
    }

    #[test]
    fn enter_session_with_a_code_gets_the_welcome_text_and_media_is_downloaded_first() {
        let settings = HandlerSettings { forward: true, kf: welcome("欢迎光临"), ..HandlerSettings::default() };
        let (message, record) = kf_message(
            serde_json::json!({"msgid": "1", "origin": 4, "msgtype": "event",
                               "event": {"event_type": "enter_session", "open_kfid": "wk", "external_userid": "wm", "welcome_code": "CODE"}}),
            false,
        );
        let actions = plan(&message, &record, &settings, false);
        assert!(
            matches!(&actions[0], Action::KfWelcome { code, content, .. } if code == "CODE" && content == "欢迎光临")
        );
        let (message, record) = kf_message(
            serde_json::json!({"msgid": "2", "origin": 3, "msgtype": "image", "image": {"media_id": "M"}}),
            false,
        );
        assert!(matches!(plan(&message, &record, &settings, false)[..], [Action::DownloadMedia { forward: true, .. }]));
    }

    #[test]
    fn a_handover_keyword_while_a_human_has_the_session_is_only_forwarded_marked_handoff() {
        let handoff = Handoff { keywords: vec!["转人工".into()], text: "转接中".into(), servicer: None };
        let kf = KfSettings { handoff, ..KfSettings::default() };
        let settings = HandlerSettings { forward: true, kf, ..HandlerSettings::default() };
        let (message, record) = kf_text(" 转人工 ", 3, false);
        let with_bot = plan(&message, &record, &settings, false);
        assert!(
            matches!(&with_bot[..], [Action::KfText { handover: Some(_), .. }, Action::Forward { record }] if record.handoff),
            "{with_bot:?}"
        );
        let with_human = plan(&message, &record, &settings, true);
        assert!(matches!(&with_human[..], [Action::Forward { record }] if record.handoff), "{with_human:?}");
    }
}
