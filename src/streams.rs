//! An AI bot's answer as a stream (SPEC §13), in pure decisions: the stream's
//! id, what an update from the bot makes of it, what a refresh shows, what goes
//! through `response_url`, and where the answer stands.
//!
//! A stream is one row in the store ([`StreamRow`]), so any replica answers a
//! refresh and any replica takes the bot's next update. Its life: **opened** by
//! the callback that journals the user's message (empty, not finished); **updated**
//! by the bot (the forward's reply, or the send API: replace or append, `finish`);
//! **shown** by each refresh (a read of the row and a counter), which closes it
//! when it is finished, or when it is still unfinished past the deadline (then
//! with the late text: it is *late*); the answer the stream could not show (past
//! 20,480 bytes, or after a late close) goes through `response_url` once.
//!
//! Deliberately not here: SQL (`store/aibot.rs` applies these decisions in one
//! statement or transaction), WeCom's JSON (`wecom/aibot.rs`), HTTP.

use crate::channels::ChannelName;

/// The most a stream shows, in UTF-8 bytes (WeCom's limit on `stream.content`
/// and on a `response_url` markdown).
pub(crate) const SHOWN_MAX_BYTES: usize = 20_480;
/// The most a whole answer may be (the send API answers 413 beyond it): what the
/// stream shows and what `response_url` carries.
pub(crate) const ANSWER_MAX_BYTES: usize = 40_960;
/// How long a message's `response_url` may be used.
pub(crate) const RESPONSE_URL_SECS: i64 = 3_600;

/// The stream id of message `msgid` on `channel`: the same for every delivery of
/// that message, on any replica, with no coordination (32 hex digits of
/// SHA-256 over both).
pub fn stream_id(channel: &ChannelName, msgid: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("{channel}\n{msgid}").as_bytes());
    crate::crypto::hex(&digest[..16])
}

/// A stream as the user's message opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    /// See [`stream_id`].
    pub stream_id: String,
    /// The journaled message's id (its dedup key): the send API's `in_reply_to`.
    pub record_id: String,
    pub channel: ChannelName,
    /// `from.userid` of the message.
    pub userid: String,
    pub chatid: Option<String>,
    /// The message's `response_url`: a credential, kept for one use (never
    /// logged, never shown).
    pub response_url: Option<String>,
    /// When the user's message arrived (Unix seconds): the deadline and
    /// `response_url`'s hour count from here.
    pub created_at: i64,
    /// On the long connection, the `req_id` of the message's first delivery:
    /// every frame of the answer carries it (`None` in callback mode).
    pub req_id: Option<String>,
}

/// A stream as the store keeps it: what opened it, and how far its answer got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub opened: StreamOpen,
    /// The answer so far, as the bot gave it (up to [`ANSWER_MAX_BYTES`]).
    pub content: String,
    /// The bot said `finish`.
    pub finished: bool,
    /// What the stream showed when it was closed at the deadline (late).
    pub shown: Option<String>,
    /// A refresh showed `finish: true` (the finished answer, or the late close).
    pub delivered: bool,
    /// `response_url` has been called (it may be called once).
    pub response_used: bool,
    /// `response_url` accepted what the stream could not show.
    pub rest_sent: bool,
    /// Why the answer is lost (`expired`, WeCom's refusal).
    pub failed: Option<String>,
}

impl StreamRow {
    /// Closed at the deadline before the bot finished.
    pub(crate) fn late(&self) -> bool {
        self.shown.is_some()
    }
}

/// An update from the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub text: String,
    /// Add `text` to the answer so far instead of replacing it.
    pub append: bool,
    /// The answer is complete.
    pub finish: bool,
}

/// Why an update was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// 409: the bot finished this answer already.
    #[error("this answer was finished already (finish: true); a new answer needs a new message")]
    Finished,
    /// 413: the whole answer would be longer than [`ANSWER_MAX_BYTES`].
    #[error("the whole answer would be {bytes} bytes, more than the {ANSWER_MAX_BYTES} allowed")]
    TooLarge { bytes: usize },
    /// 409: the send API's `idempotency_key` was used before for another
    /// request; `id` is the message id that request was answered with.
    #[error("the idempotency_key was used before for another request (message {id})")]
    KeyReused { id: String },
}

/// What an update makes of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub content: String,
    pub finished: bool,
    /// What the stream cannot show must go through `response_url`.
    pub rest_owed: bool,
}

/// `update` applied to `row`.
pub(crate) fn apply(row: &StreamRow, update: &Update) -> Result<Applied, UpdateError> {
    if row.finished {
        return Err(UpdateError::Finished);
    }
    let content = if update.append { format!("{}{}", row.content, update.text) } else { update.text.clone() };
    if content.len() > ANSWER_MAX_BYTES {
        return Err(UpdateError::TooLarge { bytes: content.len() });
    }
    let after = StreamRow { content: content.clone(), finished: update.finish, ..row.clone() };
    Ok(Applied { rest_owed: rest(&after).is_some(), content, finished: update.finish })
}

/// Whether a refresh at `now` closes `row` (shows `finish: true` for the first
/// time): the bot finished, or it has not and the deadline (`deadline_secs`
/// after the message) has passed: a late close.
pub(crate) fn closes(row: &StreamRow, now: i64, deadline_secs: i64) -> bool {
    !row.delivered && (row.finished || (!row.late() && row.opened.created_at.saturating_add(deadline_secs) <= now))
}

/// What a refresh shows: the answer so far (at most [`SHOWN_MAX_BYTES`]) and
/// whether it is the last refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub content: String,
    pub finish: bool,
}

/// The first part of `text` that fits in `max` bytes, cut at a paragraph, line,
/// sentence or at least character boundary, and the rest.
pub(crate) fn cut(text: &str, max: usize) -> (&str, &str) {
    cut_leaving(text, max, text.len())
}

/// [`cut`], the rest kept to at most `rest_max` bytes where a character
/// boundary allows: the best break is taken among those that leave it so.
fn cut_leaving(text: &str, max: usize, rest_max: usize) -> (&str, &str) {
    let at = crate::shaping::cut_point(text, text.len().saturating_sub(rest_max), max);
    (text[..at].trim_end(), text[at..].trim_start())
}

/// An answer as a stream shows it and the rest `response_url` carries: the
/// first part at most [`SHOWN_MAX_BYTES`], cut where the rest fits one call of
/// [`SHOWN_MAX_BYTES`] too, so an answer of up to [`ANSWER_MAX_BYTES`] goes out
/// whole (a paragraph break early in the answer is passed over for a later
/// line, sentence or character boundary).
pub(crate) fn cut_answer(text: &str) -> (&str, &str) {
    cut_leaving(text, SHOWN_MAX_BYTES, SHOWN_MAX_BYTES)
}

/// What a refresh of `row` shows: closed (`finish`) once the bot finished, or
/// late (the snapshot of the late close plus `late_text`).
pub fn shown(row: &StreamRow, late_text: &str) -> Shown {
    if let Some(snapshot) = &row.shown {
        let room = SHOWN_MAX_BYTES.saturating_sub(late_text.len());
        let (first, _) = cut(snapshot, room);
        return Shown { content: format!("{first}{late_text}"), finish: true };
    }
    Shown { content: cut_answer(&row.content).0.to_owned(), finish: row.finished }
}

/// What a finished answer still owes after the stream: the one `response_url`
/// call (or long-connection push) and what it cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rest {
    /// What goes, at most [`SHOWN_MAX_BYTES`].
    pub text: String,
    /// Bytes of the answer that do not fit in that one call and are lost: only
    /// after a late close, whose snapshot may be short while the finished
    /// answer is long. Not 0: the answer is not delivered whole (`failed`).
    pub dropped: usize,
}

impl Rest {
    /// Why the answer is `failed` although its rest went: what the one call
    /// could not carry. `None`: the answer went whole.
    pub(crate) fn lost(&self) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "the last {} bytes of the answer were not delivered: after the late close they did not fit \
                 the one message of at most {SHOWN_MAX_BYTES} bytes",
                self.dropped
            )
        })
    }
}

/// What the chat must be sent for `row` when no stream can show it any more
/// (its `req_id` expired before any frame closed it): the whole finished
/// answer, in one message. `None`: not finished, or nothing to send.
pub(crate) fn whole(row: &StreamRow) -> Option<Rest> {
    if !row.finished {
        return None;
    }
    one_message(&row.content)
}

/// `unshown` as one message of at most [`SHOWN_MAX_BYTES`], saying what it
/// drops; `None` when there is nothing to send.
fn one_message(unshown: &str) -> Option<Rest> {
    let (text, lost) = cut(unshown, SHOWN_MAX_BYTES);
    Some(Rest { text: text.to_owned(), dropped: lost.len() }).filter(|rest| !rest.text.is_empty())
}

/// What `response_url` must carry for `row`: of a finished answer, what the
/// stream did not show (past [`cut_answer`]'s cut, or after a late close: what
/// follows the snapshot shown, or the whole answer when the bot replaced it).
/// `None`: nothing is owed.
pub(crate) fn rest(row: &StreamRow) -> Option<Rest> {
    if !row.finished {
        return None;
    }
    let unshown = match &row.shown {
        Some(snapshot) => match row.content.strip_prefix(snapshot.as_str()) {
            Some(tail) => tail.trim_start(),
            None => row.content.as_str(),
        },
        None => cut_answer(&row.content).1,
    };
    one_message(unshown)
}

/// Where an answer stands (`GET /api/v1/messages/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamStatus {
    /// Not yet shown whole.
    Streaming,
    /// A refresh showed the finished stream, and `response_url` took what it could not show.
    Sent,
    /// Lost, with the reason.
    Failed(String),
}

impl StreamStatus {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Sent => "sent",
            Self::Failed(_) => "failed",
        }
    }
}

/// Where `row`'s answer stands.
pub(crate) fn status(row: &StreamRow) -> StreamStatus {
    if let Some(reason) = &row.failed {
        return StreamStatus::Failed(reason.clone());
    }
    // A sent rest is the answer delivered: past the stream's cut, after a late
    // close, or (long connection) the whole answer when no frame could show it.
    let done =
        row.rest_sent || rest(row).is_none() && row.delivered && (row.finished || row.late() && row.content.is_empty());
    if done {
        StreamStatus::Sent
    } else {
        StreamStatus::Streaming
    }
}

/// Why `response_url` may not be called for a message received at `created_at`,
/// at `now`: it was used, or its hour is over (`expired`).
pub(crate) fn response_refused(row: &StreamRow, now: i64) -> Option<&'static str> {
    rest_refused(row, now, RESPONSE_URL_SECS, "response_url was used already (it may be used once)")
}

/// How long after the user's message its `req_id` may still carry the
/// answer's stream frames (`aibot_respond_msg`): WeCom ends a stream 6 minutes
/// after the message, as it stops asking for refreshes in callback mode
/// (`AIBOT_STREAM_DEADLINE_SECS` closes it before, at most 350 s).
pub(crate) const RESPOND_MSG_SECS: i64 = 360;
// The deadline (at most 350 s) closes a stream while its req_id still carries the frame.
const _: () = assert!(RESPOND_MSG_SECS > 350);

/// Whether a stream of a message received at `created_at` that no frame has
/// closed yet can no longer be shown at `now` (its `req_id` is past
/// [`RESPOND_MSG_SECS`]): the answer is lost, `expired`.
pub(crate) fn frames_expired(created_at: i64, now: i64) -> bool {
    now - created_at > RESPOND_MSG_SECS
}

/// How long after the user's message the long connection may still push to
/// the chat (`aibot_send_msg`): WeCom allows replies for 24 hours.
pub(crate) const SEND_MSG_SECS: i64 = 86_400;

/// Why what the stream of `row` could not show can no longer go out over the
/// long connection (`aibot_send_msg`) at `now`; `None`: it may go (once).
pub(crate) fn send_refused(row: &StreamRow, now: i64) -> Option<&'static str> {
    rest_refused(row, now, SEND_MSG_SECS, "the rest was sent already (it is sent once)")
}

/// The rule of both ways out for the rest (`response_url`, `aibot_send_msg`):
/// once (`row.response_used` then says `used`), within `window_secs` of the
/// user's message (`expired` after).
fn rest_refused(row: &StreamRow, now: i64, window_secs: i64, used: &'static str) -> Option<&'static str> {
    if row.response_used {
        Some(used)
    } else if now - row.opened.created_at > window_secs {
        Some("expired")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_req_id_carries_frames_for_six_minutes_after_the_message() {
        assert!(!frames_expired(100, 100 + RESPOND_MSG_SECS));
        assert!(frames_expired(100, 101 + RESPOND_MSG_SECS));
    }

    #[test]
    fn the_long_connection_pushes_the_rest_once_within_a_day() {
        let row = row("", false);
        assert_eq!(send_refused(&row, SEND_MSG_SECS), None);
        assert_eq!(send_refused(&row, SEND_MSG_SECS + 1), Some("expired"));
        let used = StreamRow { response_used: true, ..row };
        assert!(send_refused(&used, 1).is_some());
    }

    fn row(content: &str, finished: bool) -> StreamRow {
        let opened = StreamOpen {
            stream_id: stream_id(&ChannelName::aibot(), "m1"),
            record_id: "aibot:msg:m1".into(),
            channel: ChannelName::aibot(),
            userid: "zhangsan".into(),
            chatid: None,
            response_url: None,
            created_at: 0,
            req_id: None,
        };
        StreamRow {
            opened,
            content: content.into(),
            finished,
            shown: None,
            delivered: false,
            response_used: false,
            rest_sent: false,
            failed: None,
        }
    }

    #[test]
    fn an_answer_no_stream_showed_goes_whole_once_finished_and_is_sent_when_it_went() {
        assert!(whole(&row("还在写", false)).is_none(), "not before the bot finished");
        let short = whole(&row("完整的回答", true)).expect("owed");
        assert_eq!((short.text.as_str(), short.lost()), ("完整的回答", None));
        let long = "字".repeat(SHOWN_MAX_BYTES / 3 + 10);
        let cut = whole(&row(&long, true)).expect("owed");
        assert!(cut.text.len() <= SHOWN_MAX_BYTES && cut.lost().is_some(), "one message, what it drops said");
        let mut went = row("完整的回答", true);
        assert_eq!(status(&went), StreamStatus::Streaming);
        went.rest_sent = true;
        assert_eq!(status(&went), StreamStatus::Sent, "never shown by a stream, sent to the chat");
    }

    fn update(text: &str, append: bool, finish: bool) -> Update {
        Update { text: text.into(), append, finish }
    }

    #[test]
    fn the_stream_id_is_the_same_for_a_retry_and_differs_by_channel_and_message() {
        let (aibot, bot2) = (ChannelName::aibot(), ChannelName::parse("bot2").expect("a name"));
        assert_eq!(stream_id(&aibot, "m1"), stream_id(&aibot, "m1"));
        assert_ne!(stream_id(&aibot, "m1"), stream_id(&aibot, "m2"));
        assert_ne!(stream_id(&aibot, "m1"), stream_id(&bot2, "m1"));
        assert_eq!(stream_id(&aibot, "m1").len(), 32);
    }

    #[test]
    fn an_update_replaces_or_appends_and_nothing_follows_a_finish() {
        let applied = apply(&row("你好", false), &update("，世界", true, false)).expect("taken");
        assert_eq!((applied.content.as_str(), applied.finished), ("你好，世界", false));
        let applied = apply(&row("草稿", false), &update("定稿", false, true)).expect("taken");
        assert_eq!((applied.content.as_str(), applied.finished, applied.rest_owed), ("定稿", true, false));
        assert_eq!(apply(&row("x", true), &update("y", true, true)), Err(UpdateError::Finished));
        let big = "a".repeat(ANSWER_MAX_BYTES);
        assert_eq!(apply(&row("b", false), &update(&big, true, false)), Err(UpdateError::TooLarge { bytes: 40_961 }));
        assert!(apply(&row("", false), &update(&big, false, true)).expect("taken").rest_owed);
    }

    #[test]
    fn a_long_answer_is_cut_at_a_paragraph_and_the_rest_goes_through_response_url() {
        let first = "第一段。".repeat(1_000); // 12,000 bytes
        let second = "第二段。".repeat(1_000);
        let answer = format!("{first}\n\n{second}");
        let finished = row(&answer, true);
        let shown = shown(&finished, "");
        assert_eq!((shown.content.as_str(), shown.finish), (first.as_str(), true));
        assert_eq!(rest(&finished).map(|r| r.text).as_deref(), Some(second.as_str()));
        let unbroken = "字".repeat(10_000); // 30,000 bytes, no break at all
        let (head, tail) = cut(&unbroken, SHOWN_MAX_BYTES);
        assert!(head.len() <= SHOWN_MAX_BYTES && head.len() > SHOWN_MAX_BYTES - 3);
        assert_eq!(format!("{head}{tail}"), unbroken);
    }

    #[test]
    fn an_answer_cut_early_at_a_paragraph_is_cut_later_so_that_its_rest_fits_one_response_url_call() {
        let first = "第一段。".repeat(1_250); // 15,000 bytes
        let second = "第二段。".repeat(2_083); // 24,996 bytes, sentences only
        let answer = format!("{first}\n\n{second}");
        let finished = row(&answer, true);
        let shown = shown(&finished, "").content;
        let rest = rest(&finished).expect("a rest");
        assert!(
            shown.len() <= SHOWN_MAX_BYTES && rest.text.len() <= SHOWN_MAX_BYTES,
            "{} + {}",
            shown.len(),
            rest.text.len()
        );
        assert_eq!(rest.dropped, 0);
        assert_eq!(format!("{shown}{}", rest.text), answer, "nothing lost");
        assert!(shown.ends_with('。'), "at a sentence end");
        assert_eq!(status(&StreamRow { delivered: true, rest_sent: true, ..finished }), StreamStatus::Sent);
    }

    #[test]
    fn a_late_streams_rest_past_one_response_url_call_says_what_it_drops() {
        let answer = format!("思考中{}", "答".repeat(10_000)); // 30,009 bytes
        let late = StreamRow { shown: Some("思考中".into()), content: answer, finished: true, ..row("", false) };
        let rest = rest(&late).expect("a rest");
        assert!(rest.text.len() <= SHOWN_MAX_BYTES);
        assert_eq!(rest.text.len() + rest.dropped, 30_000);
        assert!(rest.lost().is_some_and(|reason| reason.contains(&rest.dropped.to_string())), "{rest:?}");
    }

    #[test]
    fn a_late_stream_shows_its_snapshot_with_the_late_text_and_owes_what_followed() {
        let late = StreamRow { shown: Some("思考中".into()), content: "思考中".into(), ..row("", false) };
        assert_eq!(shown(&late, "（稍后发送）"), Shown { content: "思考中（稍后发送）".into(), finish: true });
        assert_eq!(rest(&late), None, "not finished: nothing to send yet");
        let finished = StreamRow { content: "思考中……答案是 42".into(), finished: true, ..late.clone() };
        assert_eq!(rest(&finished).map(|r| r.text).as_deref(), Some("……答案是 42"));
        let replaced = StreamRow { content: "答案是 42".into(), finished: true, ..late };
        assert_eq!(rest(&replaced).map(|r| r.text).as_deref(), Some("答案是 42"));
    }

    #[test]
    fn a_refresh_closes_a_finished_stream_or_one_past_its_deadline_once() {
        let mut open = row("", false);
        open.opened.created_at = 100;
        assert!(!closes(&open, 429, 330));
        assert!(closes(&open, 430, 330), "late");
        assert!(closes(&StreamRow { finished: true, ..open.clone() }, 101, 330));
        assert!(!closes(&StreamRow { finished: true, delivered: true, ..open }, 500, 330), "closed already");
    }

    #[test]
    fn an_answer_is_sent_once_shown_whole_and_failed_when_lost() {
        let mut answer = row("hi", true);
        assert_eq!(status(&answer), StreamStatus::Streaming);
        answer.delivered = true;
        assert_eq!(status(&answer), StreamStatus::Sent);
        let mut long = row(&format!("{}\n{}", "a".repeat(20_000), "b".repeat(1_000)), true);
        long.delivered = true;
        assert_eq!(status(&long), StreamStatus::Streaming, "the rest is still owed");
        long.rest_sent = true;
        assert_eq!(status(&long), StreamStatus::Sent);
        long.failed = Some("expired".into());
        assert_eq!(status(&long), StreamStatus::Failed("expired".into()));
        assert_eq!(response_refused(&row("", true), RESPONSE_URL_SECS + 1), Some("expired"));
        assert_eq!(response_refused(&row("", true), RESPONSE_URL_SECS), None);
    }
}
