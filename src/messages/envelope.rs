//! The outer XML of a POSTed callback: `<xml><ToUserName/><AgentID/><Encrypt/></xml>`.

use super::xml::{self, xml_fields};
use super::ParseError;

/// The encrypted envelope of a callback POST. Only `Encrypt` is required: kf
/// callbacks and some app events omit `AgentID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackEnvelope {
    pub to_user_name: Option<String>,
    pub agent_id: Option<String>,
    pub encrypt: String,
}

xml_fields! {
    struct RawEnvelope {
        to_user_name = b"ToUserName",
        agent_id = b"AgentID",
        encrypt = b"Encrypt",
    }
}

impl CallbackEnvelope {
    /// Parses the envelope from the raw request body.
    pub fn parse_bytes(body: &[u8]) -> Result<Self, ParseError> {
        let text = std::str::from_utf8(body).map_err(|_| ParseError::not_utf8("callback envelope"))?;
        Self::parse(text)
    }

    /// Parses the envelope from the request body.
    pub fn parse(body: &str) -> Result<Self, ParseError> {
        let raw: RawEnvelope = xml::read(body, "callback envelope")?;
        let encrypt = raw
            .encrypt
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .ok_or_else(|| ParseError::missing("callback envelope", "Encrypt"))?;
        Ok(Self { to_user_name: raw.to_user_name, agent_id: raw.agent_id, encrypt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_official_envelope_with_cdata() {
        let body = "<xml><ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName>\
            <Encrypt><![CDATA[abc+/=]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>";
        let envelope = CallbackEnvelope::parse(body).expect("parses");
        assert_eq!(envelope.encrypt, "abc+/=");
        assert_eq!(envelope.to_user_name.as_deref(), Some("ww1436e0e65a779aee"));
        assert_eq!(envelope.agent_id.as_deref(), Some("1000002"));
    }

    #[test]
    fn envelope_without_encrypt_is_an_error() {
        let err = CallbackEnvelope::parse("<xml><ToUserName>x</ToUserName></xml>").expect_err("no Encrypt");
        assert!(err.to_string().contains("<Encrypt>"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            "",
            "not xml",
            "<xml><Encrypt>",
            "<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>",
            "<!DOCTYPE x [<!ENTITY a \"b\">]><xml><Encrypt>&a;</Encrypt></xml>",
        ] {
            assert!(CallbackEnvelope::parse(body).is_err(), "{body}");
        }
    }
}
