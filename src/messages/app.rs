//! The decrypted XML of a self-built-app callback (and of the `kf_msg_or_event`
//! notice, which arrives the same way), classified into [`AppMessageKind`].

use super::xml::{self, xml_fields};
use super::{clip, ParseError};

/// One decrypted app callback.
#[derive(Debug, Clone, PartialEq)]
pub struct AppMessage {
    /// The corp id the message was sent to.
    pub to_user_name: String,
    /// The member's userid. Absent on some events (e.g. `kf_msg_or_event`).
    pub from_user_name: Option<String>,
    /// Unix seconds, as WeCom stamped it.
    pub create_time: Option<i64>,
    /// `MsgType` exactly as received.
    pub msg_type: String,
    /// Present on ordinary messages, never on events: the dedup key.
    pub msg_id: Option<String>,
    pub agent_id: Option<i64>,
    pub kind: AppMessageKind,
}

/// What the message is, with the fields that belong to that type.
#[derive(Debug, Clone, PartialEq)]
pub enum AppMessageKind {
    Text {
        content: String,
    },
    Image {
        media_id: String,
        pic_url: Option<String>,
    },
    Voice {
        media_id: String,
        format: Option<String>,
    },
    Video {
        media_id: String,
        thumb_media_id: Option<String>,
    },
    File {
        media_id: String,
    },
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        scale: Option<i64>,
        label: Option<String>,
    },
    Link {
        title: Option<String>,
        description: Option<String>,
        url: Option<String>,
        pic_url: Option<String>,
    },
    Event(AppEvent),
    /// A type this version does not know; the raw XML stays with the caller.
    Unknown,
}

/// App events. Anything not listed is [`AppEvent::Other`], with its name.
#[derive(Debug, Clone, PartialEq)]
pub enum AppEvent {
    Subscribe,
    Unsubscribe,
    EnterAgent,
    Click {
        key: Option<String>,
    },
    View {
        url: Option<String>,
    },
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        precision: Option<f64>,
    },
    ChangeContact {
        change_type: Option<String>,
        user_id: Option<String>,
    },
    ChangeExternalContact {
        change_type: Option<String>,
    },
    /// WeChat Customer Service has messages to pull with `kf/sync_msg`.
    KfMsgOrEvent {
        token: Option<String>,
        open_kfid: Option<String>,
    },
    Other {
        event: String,
        event_key: Option<String>,
    },
}

impl AppEvent {
    /// The event name as WeCom spells it.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::EnterAgent => "enter_agent",
            Self::Click { .. } => "click",
            Self::View { .. } => "view",
            Self::Location { .. } => "LOCATION",
            Self::ChangeContact { .. } => "change_contact",
            Self::ChangeExternalContact { .. } => "change_external_contact",
            Self::KfMsgOrEvent { .. } => "kf_msg_or_event",
            Self::Other { event, .. } => event,
        }
    }
}

xml_fields! {
    /// Every element any app message type uses; other tags (nested structures such
    /// as `ScanCodeInfo` included) are skipped.
    struct Fields {
        to_user_name = b"ToUserName",
        from_user_name = b"FromUserName",
        create_time = b"CreateTime",
        msg_type = b"MsgType",
        msg_id = b"MsgId",
        agent_id = b"AgentID",
        content = b"Content",
        pic_url = b"PicUrl",
        media_id = b"MediaId",
        format = b"Format",
        thumb_media_id = b"ThumbMediaId",
        location_x = b"Location_X",
        location_y = b"Location_Y",
        scale = b"Scale",
        label = b"Label",
        title = b"Title",
        description = b"Description",
        url = b"Url",
        event = b"Event",
        event_key = b"EventKey",
        latitude = b"Latitude",
        longitude = b"Longitude",
        precision = b"Precision",
        change_type = b"ChangeType",
        user_id = b"UserID",
        token = b"Token",
        open_kfid = b"OpenKfId",
    }
}

fn number<T: std::str::FromStr>(text: Option<String>) -> Option<T> {
    text.and_then(|t| t.trim().parse().ok())
}

impl AppMessage {
    /// Parses decrypted app XML. Only malformed XML or a missing `MsgType` fails;
    /// an unknown type becomes [`AppMessageKind::Unknown`].
    pub fn parse(xml: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "app message";
        let f: Fields = xml::read(xml, WHAT)?;
        let msg_type = f.msg_type.filter(|t| !t.is_empty()).ok_or_else(|| ParseError::missing(WHAT, "MsgType"))?;
        let media = |id: Option<String>| id.unwrap_or_default();
        let kind = match msg_type.as_str() {
            "text" => AppMessageKind::Text { content: f.content.unwrap_or_default() },
            "image" => AppMessageKind::Image { media_id: media(f.media_id), pic_url: f.pic_url },
            "voice" => AppMessageKind::Voice { media_id: media(f.media_id), format: f.format },
            "video" => AppMessageKind::Video { media_id: media(f.media_id), thumb_media_id: f.thumb_media_id },
            "file" => AppMessageKind::File { media_id: media(f.media_id) },
            "location" => AppMessageKind::Location {
                latitude: number(f.location_x),
                longitude: number(f.location_y),
                scale: number(f.scale),
                label: f.label,
            },
            "link" => {
                AppMessageKind::Link { title: f.title, description: f.description, url: f.url, pic_url: f.pic_url }
            }
            "event" => AppMessageKind::Event(match f.event.as_deref().unwrap_or_default() {
                "subscribe" => AppEvent::Subscribe,
                "unsubscribe" => AppEvent::Unsubscribe,
                "enter_agent" => AppEvent::EnterAgent,
                "click" => AppEvent::Click { key: f.event_key },
                "view" => AppEvent::View { url: f.event_key },
                "LOCATION" => AppEvent::Location {
                    latitude: number(f.latitude),
                    longitude: number(f.longitude),
                    precision: number(f.precision),
                },
                "change_contact" => AppEvent::ChangeContact { change_type: f.change_type, user_id: f.user_id },
                "change_external_contact" => AppEvent::ChangeExternalContact { change_type: f.change_type },
                "kf_msg_or_event" => AppEvent::KfMsgOrEvent { token: f.token, open_kfid: f.open_kfid },
                other => AppEvent::Other { event: other.to_owned(), event_key: f.event_key },
            }),
            _ => AppMessageKind::Unknown,
        };
        Ok(Self {
            to_user_name: f.to_user_name.unwrap_or_default(),
            from_user_name: f.from_user_name.filter(|u| !u.is_empty()),
            create_time: number(f.create_time),
            msg_type,
            msg_id: f.msg_id.filter(|id| !id.is_empty()),
            agent_id: number(f.agent_id),
            kind,
        })
    }

    /// The event, when this is one.
    pub(crate) fn event(&self) -> Option<&AppEvent> {
        match &self.kind {
            AppMessageKind::Event(event) => Some(event),
            _ => None,
        }
    }

    /// A one-line human summary for the log: type, sender, content or media id.
    pub fn summary(&self) -> String {
        let from = super::LoggedId(self.from_user_name.as_deref().unwrap_or("-"));
        let detail = match &self.kind {
            AppMessageKind::Text { content } => format!("text from {from}: {}", clip(content, 200)),
            AppMessageKind::Image { media_id, .. } => {
                format!("image from {from}: media_id={}", super::LoggedId(media_id))
            }
            AppMessageKind::Voice { media_id, .. } => {
                format!("voice from {from}: media_id={}", super::LoggedId(media_id))
            }
            AppMessageKind::Video { media_id, .. } => {
                format!("video from {from}: media_id={}", super::LoggedId(media_id))
            }
            AppMessageKind::File { media_id } => {
                format!("file from {from}: media_id={}", super::LoggedId(media_id))
            }
            AppMessageKind::Location { latitude, longitude, label, .. } => format!(
                "location from {from}: {},{} {}",
                latitude.unwrap_or_default(),
                longitude.unwrap_or_default(),
                clip(label.as_deref().unwrap_or_default(), 80)
            ),
            AppMessageKind::Link { url, .. } => {
                format!("link from {from}: {}", clip(url.as_deref().unwrap_or_default(), 200))
            }
            AppMessageKind::Event(AppEvent::KfMsgOrEvent { open_kfid, .. }) => {
                format!("event kf_msg_or_event for {}", open_kfid.as_deref().unwrap_or("-"))
            }
            AppMessageKind::Event(event) => format!("event {} from {from}", clip(event.name(), 64)),
            AppMessageKind::Unknown => {
                format!("unknown msgtype {} from {from}", clip(&self.msg_type, 64))
            }
        };
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OFFICIAL_TEXT: &str = "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName><CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>";

    #[test]
    fn parses_the_official_text_message() {
        let m = AppMessage::parse(OFFICIAL_TEXT).expect("parses");
        assert_eq!(m.kind, AppMessageKind::Text { content: "你好".into() });
        assert_eq!(m.from_user_name.as_deref(), Some("ChenJiaShun"));
        assert_eq!(m.msg_id.as_deref(), Some("1456453720"));
        assert_eq!(m.agent_id, Some(1_000_002));
        assert_eq!(m.create_time, Some(1_476_422_779));
        assert_eq!(m.summary(), "text from ChenJiaShun: 你好");
    }

    #[test]
    fn parses_media_location_and_link() {
        let image = AppMessage::parse("<xml><MsgType><![CDATA[image]]></MsgType><PicUrl>http://p</PicUrl><MediaId>M1</MediaId><MsgId>1</MsgId></xml>").expect("image");
        assert_eq!(image.kind, AppMessageKind::Image { media_id: "M1".into(), pic_url: Some("http://p".into()) });
        let voice = AppMessage::parse("<xml><MsgType>voice</MsgType><MediaId>V</MediaId><Format>amr</Format></xml>")
            .expect("voice");
        assert_eq!(voice.kind, AppMessageKind::Voice { media_id: "V".into(), format: Some("amr".into()) });
        let location = AppMessage::parse("<xml><MsgType>location</MsgType><Location_X>23.13</Location_X><Location_Y>113.26</Location_Y><Scale>15</Scale><Label>广州</Label></xml>").expect("location");
        assert_eq!(
            location.kind,
            AppMessageKind::Location {
                latitude: Some(23.13),
                longitude: Some(113.26),
                scale: Some(15),
                label: Some("广州".into())
            }
        );
        let link =
            AppMessage::parse("<xml><MsgType>link</MsgType><Title>t</Title><Url>https://u</Url></xml>").expect("link");
        assert!(matches!(link.kind, AppMessageKind::Link { ref url, .. } if url.as_deref() == Some("https://u")));
    }

    #[test]
    fn classifies_events() {
        let cases = [
            ("<Event>subscribe</Event>", AppEvent::Subscribe),
            ("<Event>enter_agent</Event><EventKey></EventKey>", AppEvent::EnterAgent),
            ("<Event>click</Event><EventKey>K1</EventKey>", AppEvent::Click { key: Some("K1".into()) }),
            ("<Event>view</Event><EventKey>https://x</EventKey>", AppEvent::View { url: Some("https://x".into()) }),
            (
                "<Event>LOCATION</Event><Latitude>1.5</Latitude><Longitude>2.5</Longitude><Precision>30</Precision>",
                AppEvent::Location { latitude: Some(1.5), longitude: Some(2.5), precision: Some(30.0) },
            ),
            (
                "<Event>change_contact</Event><ChangeType>update_user</ChangeType><UserID>u1</UserID>",
                AppEvent::ChangeContact { change_type: Some("update_user".into()), user_id: Some("u1".into()) },
            ),
            (
                "<Event>kf_msg_or_event</Event><Token>ENCApHxn</Token><OpenKfId>wkAJ2GCAAA</OpenKfId>",
                AppEvent::KfMsgOrEvent { token: Some("ENCApHxn".into()), open_kfid: Some("wkAJ2GCAAA".into()) },
            ),
            (
                "<Event>scancode_push</Event><EventKey>s</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo>",
                AppEvent::Other { event: "scancode_push".into(), event_key: Some("s".into()) },
            ),
        ];
        for (body, expected) in cases {
            let xml = format!(
                "<xml><ToUserName>ww1</ToUserName><CreateTime>1</CreateTime><MsgType>event</MsgType>{body}</xml>"
            );
            let m = AppMessage::parse(&xml).expect(body);
            assert_eq!(m.event(), Some(&expected), "{body}");
        }
    }

    #[test]
    fn unknown_msgtype_is_kept_not_rejected() {
        let m = AppMessage::parse("<xml><MsgType>hologram</MsgType><Depth>3</Depth></xml>").expect("parses");
        assert_eq!(m.kind, AppMessageKind::Unknown);
        assert_eq!(m.msg_type, "hologram");
    }

    #[test]
    fn malformed_xml_and_missing_msgtype_are_errors() {
        for xml in [
            "",
            "<xml>",
            "<xml><MsgType>text</MsgType>",
            "<xml><Content>a</Content></xml>",
            "<xml><MsgType>a</MsgType><MsgType>b</MsgType></xml>",
        ] {
            assert!(AppMessage::parse(xml).is_err(), "{xml}");
        }
    }

    #[test]
    fn summary_clips_long_content() {
        let long = "长".repeat(500);
        let m =
            AppMessage::parse(&format!("<xml><MsgType>text</MsgType><Content>{long}</Content></xml>")).expect("parses");
        assert!(m.summary().chars().count() < 240);
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,300}") {
            let _ = AppMessage::parse(&input);
        }

        #[test]
        fn arbitrary_element_soup_never_panics(parts in prop::collection::vec(prop::sample::select(vec!["<xml>", "</xml>", "<MsgType>", "</MsgType>", "text", "event", "<Event>", "</Event>", "<![CDATA[", "]]>", "<a>", "</a>", "&amp;", "&x;", "<?xml version=\"1.0\"?>"]), 0..40)) {
            let _ = AppMessage::parse(&parts.concat());
        }
    }
}
