//! The [`Executor`]: performs the outbox's actions at least once, each under a
//! timeout: the forward (HMAC-signed, its answer read for a reply or a
//! handoff), media downloads, kf handovers; texts through `sending.rs`.
//! Deliberately not here: what an action is (`actions.rs`), and when it is
//! retried (the outbox in `mod.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::actions::{Action, ActionError, Purpose};
use super::record::Record;
use super::sending::Sending;
use crate::channels::{ChannelKind, ChannelName};
use crate::config::{Config, Forward, Handoff};
use crate::health::checks::ForwardDelivery;
use crate::messages::LoggedId;
use crate::store::aibot::Settled;
use crate::store::conversations::{Customer, Observation};
use crate::store::Store;
use crate::streams::Update;
use crate::telemetry::Metrics;
use crate::telemetry::AIBOT_STREAMS_TOTAL;
use crate::wecom::{aibot, WeCom, WeComError};

/// Longest forward answer we read (it may carry a reply).
const MAX_FORWARD_ANSWER: usize = 64 * 1024;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer a forward receiver may give: `{"reply":{"text":"…"}, "handoff": true}`.
#[derive(Deserialize)]
struct ForwardAnswer {
    reply: Option<ForwardReply>,
    #[serde(default)]
    handoff: bool,
}

#[derive(Deserialize)]
struct ForwardReply {
    text: Option<String>,
}

/// Attempts at a media download before the record is forwarded without it.
const MEDIA_ATTEMPTS: i64 = 5;

/// How much of a download is gathered before it is written (off the runtime's
/// threads): the most of a file held in memory at once.
const WRITE_BATCH: usize = 256 * 1024;

/// Why a media file was not saved: the download (worth retrying) or the disk
/// (not: the record goes on without it).
enum MediaFailure {
    Download(WeComError),
    Save(crate::media::MediaError),
}

/// Runs a file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, crate::media::MediaError> + Send + 'static,
) -> Result<T, MediaFailure> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result.map_err(MediaFailure::Save),
        // The operation panicked: report it as a failed write, not a lost action.
        Err(error) => Err(MediaFailure::Save(crate::media::MediaError {
            dir: PathBuf::new(),
            name: String::new(),
            reason: error.to_string(),
        })),
    }
}

/// Performs actions.
#[derive(Debug)]
pub(crate) struct Executor {
    http: reqwest::Client,
    forward: Option<Forward>,
    /// The file channels' own forward targets (`channels.<name>.forward_url`).
    channel_forwards: HashMap<ChannelName, Forward>,
    wecom: Arc<WeCom>,
    /// Every channel: the agent id a forward answer's reply is sent with.
    channels: crate::config::Channels,
    upload_dir: PathBuf,
    handoff: Handoff,
    sending: Sending,
    /// `MEDIA_MIN_FREE_PERCENT` of `UPLOAD_DIR`'s volume.
    floor: crate::media::Floor,
    /// Each forward's outcome, for `forward:delivery`; present with `FORWARD_URL`.
    delivery: Option<Arc<ForwardDelivery>>,
    /// `WECOM_API_BASE_URL`: the only origin a `response_url` may have.
    api_base_url: String,
    metrics: Arc<Metrics>,
}

impl Executor {
    pub(crate) fn new(
        config: &Config,
        wecom: Arc<WeCom>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ActionError> {
        let http = crate::outbound::client(FORWARD_TIMEOUT).build().map_err(|e| ActionError {
            retry: false,
            message: format!("cannot build the forward client: {}", e.without_url()),
        })?;
        Ok(Self {
            http,
            forward: config.forward.clone(),
            channel_forwards: config
                .channels
                .iter()
                .filter_map(|c| Some((c.name.clone(), c.forward.clone()?)))
                .collect(),
            wecom: Arc::clone(&wecom),
            channels: config.channels.clone(),
            upload_dir: config.upload_dir.clone(),
            handoff: config.kf.handoff.clone(),
            floor: crate::media::Floor::media(config.retention.media_min_free_percent),
            delivery: config.forward.as_ref().map(|_| Arc::default()),
            api_base_url: config.wecom.base_url.clone(),
            metrics: Arc::clone(&metrics),
            sending: Sending::new(store, wecom, metrics, &config.channels),
        })
    }

    /// What `forward:delivery` reads; `None` without `FORWARD_URL`.
    pub(crate) fn forward_delivery(&self) -> Option<Arc<ForwardDelivery>> {
        self.delivery.clone()
    }

    /// Performs `action` (attempted `attempts` times before); returns the
    /// follow-up actions it produced.
    pub(crate) async fn execute(&self, action: &Action, attempts: i64) -> Result<Vec<Action>, ActionError> {
        match action {
            Action::DownloadMedia { record, forward } => self.download(record, *forward, attempts).await,
            Action::KfWelcome { key, channel, code, content } => {
                self.sending.welcome(channel, key, code, content).await
            }
            Action::Forward { record } => {
                let forwarded = self.forward(record).await;
                let to_forward_url = !self.channel_forwards.contains_key(record.channel.as_str());
                if let (Some(delivery), true) = (&self.delivery, self.forward.is_some() && to_forward_url) {
                    match &forwarded {
                        Ok(_) => delivery.delivered(),
                        Err(error) => delivery.failed(crate::store::now(), &error.message),
                    }
                }
                forwarded
            }
            Action::AppText { .. } => self.sending.app_text(action).await,
            Action::KfText { .. } => self.sending.kf_text(action).await,
            Action::KfHandover { channel, touser, open_kfid, servicer, .. } => {
                self.sending.hand_over(channel, touser, open_kfid, servicer.as_deref()).await
            }
            Action::AibotRest { channel, stream_id, .. } => self.aibot_rest(channel, stream_id).await,
            Action::DownloadAibotMedia { record, urls, forward } => {
                self.download_aibot(record, urls, *forward, attempts).await
            }
        }
    }

    /// An AI bot message's media: each URL fetched (no redirects, at most
    /// `MAX_MEDIA_BYTES`), decrypted with the channel's key (AES-256-CBC, IV =
    /// key[..16], 32-byte PKCS#7) and saved like other media; the record then
    /// goes on with `media_path` (the first file) or `media_skipped`.
    async fn download_aibot(
        &self,
        record: &Record,
        urls: &[String],
        forward: bool,
        attempts: i64,
    ) -> Result<Vec<Action>, ActionError> {
        let forward_with = |path, skipped| forwarded(record, path, skipped, forward);
        let Some(channel) = self.channels.get(record.channel.as_str()).cloned() else {
            return Ok(forward_with(None, Some("the channel is no longer configured".into())));
        };
        let (floor, upload_dir) = (self.floor, self.upload_dir.clone());
        let refused = tokio::task::spawn_blocking(move || floor.check(&upload_dir)).await.unwrap_or(None);
        if let Some(reason) = refused {
            tracing::warn!(id = %LoggedId(&record.id), "AI bot media not downloaded: {reason}");
            return Ok(forward_with(None, Some(reason)));
        }
        let mut first = None;
        for url in urls {
            let bytes = match self.fetch_aibot(url).await {
                Ok(bytes) => bytes,
                Err(error) if attempts + 1 < MEDIA_ATTEMPTS && error.retry => return Err(error),
                Err(error) => {
                    tracing::error!(id = %LoggedId(&record.id), "AI bot media not downloaded, forwarding without it: {error}");
                    return Ok(forward_with(first, Some(format!("download failed: {error}"))));
                }
            };
            let plain = match crate::crypto::decrypt_media(&channel.keys.aes_key, bytes) {
                Ok(plain) => plain,
                Err(error) => {
                    tracing::error!(id = %LoggedId(&record.id), "AI bot media cannot be decrypted: {error}");
                    return Ok(forward_with(first, Some(format!("cannot decrypt: {error}"))));
                }
            };
            let (dir, id, msgtype) = (self.upload_dir.clone(), record.id.clone(), record.msgtype.clone());
            let saved = blocking(move || {
                let mut part =
                    crate::media::Part::create(&dir, &id, &msgtype, None, None, time::OffsetDateTime::now_utc())?;
                part.write(&plain)?;
                part.finish()
            })
            .await;
            match saved {
                Ok(path) => {
                    tracing::info!(id = %LoggedId(&record.id), path = %path.display(), "AI bot media saved");
                    first = first.or(Some(path.display().to_string()));
                }
                Err(MediaFailure::Save(error)) => {
                    tracing::error!(id = %LoggedId(&record.id), "{error}");
                    return Ok(forward_with(first, Some(format!("not saved: {error}"))));
                }
                Err(MediaFailure::Download(error)) => return Err(error.into()),
            }
        }
        Ok(forward_with(first, None))
    }

    /// The encrypted bytes at an AI bot media `url`, at most `MAX_MEDIA_BYTES`.
    async fn fetch_aibot(&self, url: &str) -> Result<Vec<u8>, ActionError> {
        let limit = crate::media::MAX_MEDIA_BYTES;
        // The URL is a short-lived credential: errors are told without it.
        let mut response =
            self.http.get(url).send().await.map_err(|e| ActionError::retry(format!("media: {}", e.without_url())))?;
        if let Some(reason) = crate::outbound::refused_redirect(&response) {
            return Err(ActionError { retry: false, message: format!("media: {reason}") });
        }
        if !response.status().is_success() {
            return Err(ActionError::retry(format!("media: HTTP {}", response.status())));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| ActionError::retry(format!("media: {}", e.without_url())))?
        {
            if bytes.len() + chunk.len() > limit + 32 {
                return Err(ActionError { retry: false, message: format!("media: larger than {limit} bytes") });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// What an AI bot's stream could not show, through the message's
    /// `response_url`: at most once (the use is taken before the call, so an
    /// attempt after a crash never calls it again), within its hour, and only
    /// on `WECOM_API_BASE_URL`'s origin. An answer that can no longer go is
    /// `failed` (`expired`).
    async fn aibot_rest(&self, channel: &ChannelName, stream_id: &str) -> Result<Vec<Action>, ActionError> {
        if self.channels.get(channel.as_str()).is_some_and(|c| c.long_connection().is_some()) {
            // No response_url on the long connection: its holder pushes the rest (aibot_send_msg).
            return Ok(Vec::new());
        }
        let store = &self.sending.store;
        let Some(row) = store.aibot_stream(stream_id.to_owned()).await? else { return Ok(Vec::new()) };
        let Some(rest) = crate::streams::rest(&row) else { return Ok(Vec::new()) };
        if row.rest_sent || row.failed.is_some() {
            return Ok(Vec::new());
        }
        let failed = |reason: &str| Settled::Failed(reason.to_owned());
        let refusal = match (crate::streams::response_refused(&row, crate::store::now()), &row.opened.response_url) {
            (Some(reason), _) => Some(failed(reason)),
            (None, None) => Some(failed("the message had no response_url")),
            (None, Some(url)) if !aibot::response_url_allowed(url, &self.api_base_url) => {
                Some(failed("its response_url is not on WECOM_API_BASE_URL's scheme, host and port"))
            }
            (None, Some(_)) => None,
        };
        if let Some(refused) = refusal {
            if row.response_used {
                // An earlier attempt took the one use; how it ended is recorded, or unknown.
                return Ok(Vec::new());
            }
            tracing::warn!(channel = channel.as_str(), stream = %LoggedId(stream_id), "AI bot answer not delivered: {refused:?}");
            self.count_stream(channel, "expired");
            store.aibot_settle(stream_id.to_owned(), refused).await?;
            return Ok(Vec::new());
        }
        if !store.aibot_take_response(stream_id.to_owned()).await? {
            return Ok(Vec::new());
        }
        let url = row.opened.response_url.unwrap_or_default();
        // Through the WeCom API's client and its proxy (WECOM_PROXY_URL), not the forward's (SPEC §14).
        let settled = match self.wecom.post_response_url(channel, &url, &rest.text).await {
            Ok(()) => rest.lost().map_or(Settled::Sent, Settled::Failed),
            Err(error) => Settled::Failed(format!("response_url: {error}")),
        };
        if let Settled::Failed(reason) = &settled {
            tracing::warn!(channel = channel.as_str(), stream = %LoggedId(stream_id), "AI bot answer's rest not delivered: {reason}");
            self.count_stream(channel, "expired");
        }
        store.aibot_settle(stream_id.to_owned(), settled).await?;
        Ok(Vec::new())
    }

    fn count_stream(&self, channel: &ChannelName, outcome: &str) {
        self.metrics
            .counter(AIBOT_STREAMS_TOTAL, &[("channel", channel.to_string()), ("outcome", outcome.to_owned())])
            .increment(1);
    }

    async fn download(&self, record: &Record, forward: bool, attempts: i64) -> Result<Vec<Action>, ActionError> {
        let forward_with = |path, skipped| forwarded(record, path, skipped, forward);
        let Some(media_id) = record.media_id.as_deref() else {
            // Handlers download only what has a media id; forward it all the same.
            return Ok(forward_with(None, None));
        };
        let (floor, upload_dir) = (self.floor, self.upload_dir.clone());
        let refused = tokio::task::spawn_blocking(move || floor.check(&upload_dir)).await.unwrap_or(None);
        if let Some(reason) = refused {
            // The journal may share the volume: it must keep its room.
            tracing::warn!(id = %LoggedId(&record.id), "media {} not downloaded: {reason}", LoggedId(media_id));
            return Ok(forward_with(None, Some(reason)));
        }
        match self.fetch(record, media_id).await {
            Ok(path) => {
                tracing::info!(id = %LoggedId(&record.id), path = %path.display(), "media saved");
                Ok(forward_with(Some(path.display().to_string()), None))
            }
            Err(MediaFailure::Download(error))
                if attempts + 1 < MEDIA_ATTEMPTS && !matches!(error, WeComError::NotConfigured(_)) =>
            {
                Err(ActionError::retry(format!("media {}: {error}", LoggedId(media_id))))
            }
            Err(MediaFailure::Download(error)) => {
                tracing::error!(
                    id = %LoggedId(&record.id),
                    "media {} not downloaded, forwarding without it: {error}",
                    LoggedId(media_id)
                );
                Ok(forward_with(None, Some(format!("download failed: {error}"))))
            }
            Err(MediaFailure::Save(error)) => {
                // A full or unwritable volume: say so, and let the message go on.
                tracing::error!(id = %LoggedId(&record.id), "{error}");
                Ok(forward_with(None, Some(format!("not saved: {error}"))))
            }
        }
    }

    /// Streams media `media_id` of `record` into its file: never more than
    /// [`WRITE_BATCH`] of it in memory.
    async fn fetch(&self, record: &Record, media_id: &str) -> Result<PathBuf, MediaFailure> {
        let mut media = self
            .wecom
            .download_media(&record.channel, media_id, crate::media::MAX_MEDIA_BYTES)
            .await
            .map_err(MediaFailure::Download)?;
        let (upload_dir, id, msgtype) = (self.upload_dir.clone(), record.id.clone(), record.msgtype.clone());
        let (content_type, filename) = (media.content_type.clone(), media.filename.clone());
        let mut part = blocking(move || {
            crate::media::Part::create(
                &upload_dir,
                &id,
                &msgtype,
                content_type.as_deref(),
                filename.as_deref(),
                time::OffsetDateTime::now_utc(),
            )
        })
        .await?;
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            let chunk = media.chunk().await.map_err(MediaFailure::Download)?;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                batch.extend_from_slice(&chunk);
            }
            if batch.len() >= WRITE_BATCH || (done && !batch.is_empty()) {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
                part = blocking(move || part.write(&full).map(|()| part)).await?;
            }
            if done {
                break;
            }
        }
        blocking(move || part.finish()).await
    }
    async fn forward(&self, record: &Record) -> Result<Vec<Action>, ActionError> {
        let Some(target) = self.channel_forwards.get(record.channel.as_str()).or(self.forward.as_ref()) else {
            return Err(ActionError { retry: false, message: "FORWARD_URL is no longer set".into() });
        };
        let body = serde_json::to_vec(record).map_err(|e| ActionError { retry: false, message: e.to_string() })?;
        let mut request = self
            .http
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Message-Id", &record.id);
        if let Some(secret) = &target.secret {
            request = request.header("X-Signature", signature(secret.expose().as_bytes(), &body));
        }
        let mut response =
            request.body(body).send().await.map_err(|e| ActionError::retry(format!("forward: {}", e.without_url())))?;
        let status = response.status();
        if let Some(reason) = crate::outbound::refused_redirect(&response) {
            return Err(ActionError::retry(format!("forward: {reason}")));
        }
        if !status.is_success() {
            return Err(ActionError::retry(format!("forward: HTTP {status}")));
        }
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            if answer.len() + chunk.len() > MAX_FORWARD_ANSWER {
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        let Ok(answer) = serde_json::from_slice::<ForwardAnswer>(&answer) else { return Ok(Vec::new()) };
        let reply = answer.reply.and_then(|r| r.text).filter(|t| !t.trim().is_empty());
        if let (ChannelKind::Aibot, Some(stream_id)) = (record.kind(), &record.stream_id) {
            if let Some(text) = reply {
                // The whole answer, in the message's stream.
                let update = Update { text, append: false, finish: true };
                let store = &self.sending.store;
                match super::sending::update_stream(store, &record.id, &record.channel, stream_id, update, None).await {
                    Ok(Some(Ok(_))) | Ok(None) => {}
                    Ok(Some(Err(refused))) => {
                        tracing::warn!(id = %LoggedId(&record.id), "forward reply not taken into the stream: {refused}")
                    }
                    Err(super::sending::QueueError::Store(error)) => return Err(error.into()),
                    Err(other) => tracing::error!(id = %LoggedId(&record.id), "forward reply: {other}"),
                }
            }
            return Ok(Vec::new());
        }
        if !record.answerable() {
            // History or a servicer's own message: recorded and forwarded, never
            // answered (SPEC §4), whatever the receiver says.
            if reply.is_some() || answer.handoff {
                tracing::info!(id = %LoggedId(&record.id), "forward answer not sent: the record is not answered (history or a servicer's message)");
            }
            return Ok(Vec::new());
        }
        if answer.handoff && record.kind() == ChannelKind::Kf {
            // The receiver asks for a human: silent from now on, then the announcement and the handover.
            if let (Some(open_kfid), Some(from)) = (&record.open_kfid, &record.from) {
                let customer = Customer {
                    channel: record.channel.clone(),
                    open_kfid: open_kfid.clone(),
                    external_userid: from.clone(),
                };
                let conversation = self.sending.store.kf_conversation(customer.clone()).await?;
                if conversation.is_some_and(|c| c.human_since.is_some()) {
                    // A human has the session already: nothing to announce or hand over (SPEC §15).
                    tracing::info!(id = %LoggedId(&record.id), "forward answer asks for a human, who has the session already");
                    return Ok(Vec::new());
                }
                self.sending.store.observe_kf(vec![(customer, Observation::Human { at: crate::store::now() })]).await?;
            }
            let text = reply.as_deref().unwrap_or(&self.handoff.text);
            return Ok(Action::announce_handover(record, text, self.handoff.servicer.clone()).into_iter().collect());
        }
        Ok(reply
            .and_then(|text| {
                Action::reply_to(
                    record,
                    &text,
                    Purpose::Reply,
                    self.channels.get(record.channel.as_str()).and_then(|c| c.agent_id()),
                )
            })
            .into_iter()
            .collect())
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, the `X-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", crate::crypto::hex(&mac.finalize().into_bytes()))
}

/// What follows a media download: the record forwarded with where its media went
/// (or why not), when it is to be forwarded at all.
fn forwarded(record: &Record, path: Option<String>, skipped: Option<String>, forward: bool) -> Vec<Action> {
    if forward {
        vec![Action::Forward { record: Record { media_path: path, media_skipped: skipped, ..record.clone() } }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
