//! The HTTP client for the WeCom API (`WECOM_API_BASE_URL`): timeouts, retries of
//! "system busy" (-1), and one count per call in
//! `wechat_api_wecom_api_requests_total{channel,api,errcode}`.
//!
//! Every call takes the access token as an argument; which token, and what to do
//! when it is refused, is [`super::tokens`]'s business. Which channel a call is
//! for is the client's: [`WeComClient::on`] gives the client of one channel,
//! which counts its calls under that channel's name.

use std::sync::Arc;
use std::time::Duration;

use reqwest::RequestBuilder;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, WeComError};
use super::models::*;
use crate::backoff::Backoff;
use crate::channels::{ChannelKind, ChannelName};
use crate::config::ProxyUrl;
use crate::egress::{Answer, Egress};
use crate::store::tokens::AccessToken;
use crate::telemetry::Metrics;

const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off between retries of errcode -1 (system busy): 100, 200, 400 ms.
const BUSY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
/// Retries of errcode -1 before giving up.
const BUSY_RETRIES: u32 = 3;
/// `message/send`'s duplicate check: as long as the outbox retries a text
/// (`SEND_RETRY_WINDOW`), so a retry after a lost answer is dropped by WeCom.
pub(crate) const APP_DUPLICATE_CHECK: Duration = Duration::from_secs(3600);
/// Largest JSON answer accepted (a full `kf/sync_msg` page is well below).
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

use crate::telemetry::WECOM_API_REQUESTS_TOTAL as REQUESTS_TOTAL;

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// A client of one WeCom API base URL, through one proxy (or none), counting its
/// calls for one channel.
#[derive(Debug, Clone)]
pub struct WeComClient {
    http: reqwest::Client,
    base_url: Arc<str>,
    metrics: Arc<Metrics>,
    /// The `channel` label of its calls; `None` only before [`WeComClient::on`].
    channel: Option<ChannelName>,
    /// Told every answer's errcode and IP (SPEC §14): a channel's client
    /// ([`WeComClient::for_channel`]).
    egress: Option<Arc<Egress>>,
}

/// The APIs an `app` channel's Secret calls: the known values of the `api`
/// label of such a channel, whose successes (`errcode="0"`) are counted from
/// zero on start.
const APP_APIS: &[&str] = &["gettoken", "message/send", "user/get", "externalcontact/get", "media/get"];

/// The APIs a `kf` channel's Secret calls, likewise.
const KF_APIS: &[&str] = &[
    "gettoken",
    "kf/sync_msg",
    "kf/send_msg",
    "kf/send_msg_on_event",
    "kf/account/list",
    "kf/service_state/get",
    "kf/service_state/trans",
    "kf/customer/batchget",
    "media/get",
];

/// The APIs an `aibot` channel calls, likewise: its answers' `response_url`.
const AIBOT_APIS: &[&str] = &["aibot/response"];

/// The `channel` label of a call made for no channel (none is, once built).
const NO_CHANNEL: &str = "unknown";

impl WeComClient {
    /// A client that calls WeCom directly (tests; the service builds its clients
    /// with [`WeComClient::with_proxy`]).
    #[cfg(any(test, feature = "testing"))]
    pub fn new(base_url: &str, metrics: Arc<Metrics>) -> Result<Self, WeComError> {
        Self::with_proxy(base_url, metrics, None)
    }

    /// The shared part: the HTTP client, through `proxy` (SPEC §14) or directly,
    /// and the base URL. Calls are made by the client of a channel
    /// ([`WeComClient::on`], [`WeComClient::for_channel`]). Only this
    /// configuration counts: the environment's `HTTP_PROXY`, `HTTPS_PROXY` and
    /// `ALL_PROXY`, which reqwest would read by itself, are not used for WeCom.
    pub(crate) fn with_proxy(
        base_url: &str,
        metrics: Arc<Metrics>,
        proxy: Option<&ProxyUrl>,
    ) -> Result<Self, WeComError> {
        let builder = crate::outbound::client(TIMEOUT).connect_timeout(CONNECT_TIMEOUT);
        let builder = match proxy {
            None => builder.no_proxy(),
            Some(proxy) => {
                // reqwest's own error would show the URL, password included.
                let proxy = reqwest::Proxy::all(proxy.expose()).map_err(|_| WeComError::Transport {
                    api: "client",
                    reason: format!("cannot use the proxy {}", proxy.shown()),
                })?;
                builder.proxy(proxy)
            }
        };
        let http = builder.build().map_err(|e| WeComError::transport("client", e))?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').into(), metrics, channel: None, egress: None })
    }

    /// The same client (connections shared), counting its calls for `channel`.
    pub(crate) fn on(&self, channel: &ChannelName) -> Self {
        Self { channel: Some(channel.clone()), ..self.clone() }
    }

    /// This client for `channel`'s calls: counted under its name, and each
    /// answer tells `egress` the errcode and the IP it named.
    pub(crate) fn for_channel(&self, channel: &ChannelName, egress: Arc<Egress>) -> Self {
        Self { channel: Some(channel.clone()), egress: Some(egress), ..self.clone() }
    }

    /// Makes the successes of the APIs a channel of `kind` calls exist at zero.
    pub(crate) fn declare(&self, kind: ChannelKind) {
        let apis = match kind {
            ChannelKind::App => APP_APIS,
            ChannelKind::Kf => KF_APIS,
            ChannelKind::Aibot => AIBOT_APIS,
        };
        for api in apis {
            self.metrics.declare(REQUESTS_TOTAL, &self.labels(api, "0".to_owned()));
        }
    }

    /// Tells the channel's egress what WeCom answered to `api`.
    fn observe(&self, api: &'static str, errcode: i64, errmsg: &str) {
        if let (Some(channel), Some(egress)) = (&self.channel, &self.egress) {
            let ip = ApiError::caller_ip_of(errmsg);
            egress.answered(channel, Answer { business: api != "gettoken", errcode, ip });
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/cgi-bin/{path}", self.base_url)
    }

    /// A GET of `api` (the path under `/cgi-bin/`) with `query`.
    fn get(&self, api: &str, query: &[(&str, &str)]) -> RequestBuilder {
        self.http.get(self.url(api)).query(query)
    }

    /// GETs `api` with `query`, retrying "system busy", and decodes its answer.
    async fn get_json<T: DeserializeOwned>(&self, api: &'static str, query: &[(&str, &str)]) -> Result<T, WeComError> {
        self.call(api, || self.get(api, query)).await
    }

    fn labels(&self, api: &str, errcode: String) -> [(&'static str, String); 3] {
        let channel = self.channel.as_ref().map_or(NO_CHANNEL, ChannelName::as_str);
        [("channel", channel.to_owned()), ("api", api.to_owned()), ("errcode", errcode)]
    }

    fn count(&self, api: &'static str, errcode: String) {
        self.metrics.counter(REQUESTS_TOTAL, &self.labels(api, errcode)).increment(1);
    }

    /// Sends the request `build` makes, retrying -1 with back-off.
    async fn call<T: DeserializeOwned>(
        &self,
        api: &'static str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, WeComError> {
        let mut retries = 0;
        loop {
            match self.once(api, build()).await {
                Err(error) if error.is(ApiError::is_busy) && retries < BUSY_RETRIES => {
                    retries += 1;
                    tokio::time::sleep(BUSY_BACKOFF.delay(retries)).await;
                }
                other => return other,
            }
        }
    }

    async fn once<T: DeserializeOwned>(&self, api: &'static str, request: RequestBuilder) -> Result<T, WeComError> {
        let bytes = match self.send(api, request).await {
            Ok(response) => read_limited(api, response, MAX_JSON_BYTES).await?,
            Err(error) => return Err(error),
        };
        self.decode(api, &bytes)
    }

    async fn send(&self, api: &'static str, request: RequestBuilder) -> Result<reqwest::Response, WeComError> {
        let response = request.send().await.map_err(|e| {
            self.count(api, "transport".into());
            WeComError::transport(api, e)
        })?;
        // WeCom never redirects an API call; one that does is not WeCom's answer.
        if let Some(reason) = crate::outbound::refused_redirect(&response) {
            self.count(api, "redirect".into());
            return Err(WeComError::Decode { api, reason });
        }
        Ok(response)
    }

    fn decode<T: DeserializeOwned>(&self, api: &'static str, bytes: &[u8]) -> Result<T, WeComError> {
        let decode_error = |e: serde_json::Error| WeComError::Decode { api, reason: e.to_string() };
        let status: Status = serde_json::from_slice(bytes).map_err(|e| {
            self.count(api, "decode".into());
            decode_error(e)
        })?;
        self.count(api, status.errcode.to_string());
        self.observe(api, status.errcode, &status.errmsg);
        if status.errcode != 0 {
            return Err(WeComError::Api { api, error: ApiError { errcode: status.errcode, errmsg: status.errmsg } });
        }
        serde_json::from_slice(bytes).map_err(decode_error)
    }

    /// POSTs `body` as JSON to `api` (the path under `/cgi-bin/`) with the token.
    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        api: &'static str,
        token: &AccessToken,
        body: &B,
    ) -> Result<T, WeComError> {
        let body = serde_json::to_vec(body).map_err(|e| WeComError::Encode { api, reason: e.to_string() })?;
        let url = self.url(api);
        self.call(api, || {
            self.http
                .post(&url)
                .query(&[("access_token", token.expose())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// POSTs `text` as markdown to an AI bot message's `response_url` (SPEC
    /// §13), a URL the caller checked is on the base URL's origin: through this
    /// client's proxy like every call to WeCom, and once (no retry of "system
    /// busy": the URL's one use may be spent). A 2xx answer without an errcode
    /// counts as taken. The URL is a credential: no error shows it.
    pub(crate) async fn post_response_url(&self, url: &str, text: &str) -> Result<(), WeComError> {
        const API: &str = "aibot/response";
        let response = self.send(API, self.http.post(url).json(&super::aibot::response_body(text))).await?;
        if !response.status().is_success() {
            self.count(API, format!("http_{}", response.status().as_u16()));
            return Err(WeComError::Decode { api: API, reason: format!("HTTP {}", response.status()) });
        }
        let bytes = read_limited(API, response, MAX_JSON_BYTES).await?;
        let status = serde_json::from_slice::<Status>(&bytes).unwrap_or(Status { errcode: 0, errmsg: String::new() });
        self.count(API, status.errcode.to_string());
        match status.errcode {
            0 => Ok(()),
            errcode => Err(WeComError::Api { api: API, error: ApiError { errcode, errmsg: status.errmsg } }),
        }
    }

    /// `gettoken` for one Secret.
    pub(crate) async fn gettoken(&self, corp_id: &str, secret: &str) -> Result<TokenResponse, WeComError> {
        self.get_json("gettoken", &[("corpid", corp_id), ("corpsecret", secret)]).await
    }

    /// `gettoken`, with the `Date` WeCom answered at (unix seconds), for clock checks.
    pub(crate) async fn gettoken_with_date(
        &self,
        corp_id: &str,
        secret: &str,
    ) -> Result<(TokenResponse, Option<i64>), WeComError> {
        const API: &str = "gettoken";
        let response = self.send(API, self.get(API, &[("corpid", corp_id), ("corpsecret", secret)])).await?;
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        let bytes = read_limited(API, response, MAX_JSON_BYTES).await?;
        Ok((self.decode(API, &bytes)?, date))
    }

    /// `gettoken` with the corp id and no Secret: WeCom refuses it (41004),
    /// naming the IP it sees (SPEC §14). The IP, or why none came.
    pub(crate) async fn probe_egress(&self, corp_id: &str) -> Result<std::net::IpAddr, WeComError> {
        const API: &str = "gettoken";
        let url = self.url(API);
        let result: Result<TokenResponse, WeComError> =
            self.call(API, || self.http.get(&url).query(&[("corpid", corp_id), ("corpsecret", "")])).await;
        match result {
            Err(WeComError::Api { error, .. }) => match error.caller_ip() {
                Some(ip) => Ok(ip),
                None => Err(WeComError::Decode { api: API, reason: format!("the answer named no IP ({error})") }),
            },
            Err(other) => Err(other),
            Ok(_) => Err(WeComError::Decode { api: API, reason: "a token without a Secret".into() }),
        }
    }

    /// `message/send`: a text from the self-built app to a member.
    pub async fn send_app_text(
        &self,
        token: &AccessToken,
        touser: &str,
        agentid: i64,
        content: &str,
    ) -> Result<SendResult, WeComError> {
        let message = AppTextMessage {
            touser,
            msgtype: "text",
            agentid,
            text: TextContent { content },
            enable_duplicate_check: 1,
            duplicate_check_interval: APP_DUPLICATE_CHECK.as_secs(),
        };
        self.post_json("message/send", token, &message).await
    }

    /// `kf/sync_msg`: one page of an account's messages after `cursor`.
    pub(crate) async fn kf_sync_msg(
        &self,
        token: &AccessToken,
        request: &KfSyncRequest,
    ) -> Result<KfSyncPage, WeComError> {
        self.post_json("kf/sync_msg", token, request).await
    }

    /// `kf/send_msg`: a text to a customer of the `open_kfid` account, under our own `msgid`.
    pub(crate) async fn send_kf_text(
        &self,
        token: &AccessToken,
        touser: &str,
        open_kfid: &str,
        msgid: &str,
        content: &str,
    ) -> Result<SendResult, WeComError> {
        let message =
            KfTextMessage { touser, open_kfid, msgid: Some(msgid), msgtype: "text", text: TextContent { content } };
        self.post_json("kf/send_msg", token, &message).await
    }

    /// `kf/send_msg_on_event`: the welcome text an `enter_session` code allows.
    pub(crate) async fn send_kf_welcome(
        &self,
        token: &AccessToken,
        code: &str,
        msgid: &str,
        content: &str,
    ) -> Result<SendResult, WeComError> {
        let message = KfEventMessage { code, msgid: Some(msgid), msgtype: "text", text: TextContent { content } };
        self.post_json("kf/send_msg_on_event", token, &message).await
    }

    pub(crate) async fn kf_account_list(&self, token: &AccessToken) -> Result<KfAccountList, WeComError> {
        self.post_json("kf/account/list", token, &serde_json::json!({"offset": 0, "limit": 100})).await
    }

    pub(crate) async fn kf_service_state_get(
        &self,
        token: &AccessToken,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<KfServiceState, WeComError> {
        let body = serde_json::json!({"open_kfid": open_kfid, "external_userid": external_userid});
        let answer: KfServiceStateAnswer = self.post_json("kf/service_state/get", token, &body).await?;
        Ok(KfServiceState {
            state: ServiceState::from_code(answer.service_state),
            servicer_userid: answer.servicer_userid.filter(|s| !s.is_empty()),
        })
    }

    /// `kf/service_state/trans`: to the queue (2), or to `servicer` (3).
    pub(crate) async fn kf_service_state_trans(
        &self,
        token: &AccessToken,
        open_kfid: &str,
        external_userid: &str,
        servicer: Option<&str>,
    ) -> Result<serde_json::Value, WeComError> {
        let body = KfServiceStateTrans {
            open_kfid,
            external_userid,
            service_state: if servicer.is_some() { 3 } else { 2 },
            servicer_userid: servicer,
        };
        self.post_json("kf/service_state/trans", token, &body).await
    }

    pub(crate) async fn kf_customer_batchget(
        &self,
        token: &AccessToken,
        external_userids: &[String],
    ) -> Result<KfCustomers, WeComError> {
        let body = serde_json::json!({"external_userid_list": external_userids});
        self.post_json("kf/customer/batchget", token, &body).await
    }

    pub(crate) async fn user_get(&self, token: &AccessToken, userid: &str) -> Result<User, WeComError> {
        self.get_json("user/get", &[("access_token", token.expose()), ("userid", userid)]).await
    }

    pub(crate) async fn externalcontact_get(
        &self,
        token: &AccessToken,
        external_userid: &str,
    ) -> Result<ExternalContactResponse, WeComError> {
        self.get_json("externalcontact/get", &[("access_token", token.expose()), ("external_userid", external_userid)])
            .await
    }

    /// `media/get`: the file, to be read chunk by chunk ([`Media::chunk`]), or
    /// WeCom's JSON error. At most `max_bytes`: a larger `Content-Length` is refused
    /// before the body is read, a body that grows past it while being read.
    pub(crate) async fn media_get(
        &self,
        token: &AccessToken,
        media_id: &str,
        max_bytes: usize,
    ) -> Result<Media, WeComError> {
        const API: &str = "media/get";
        let response =
            self.send(API, self.get(API, &[("access_token", token.expose()), ("media_id", media_id)])).await?;
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let filename = header(reqwest::header::CONTENT_DISPOSITION)
            .and_then(|d| d.split("filename=").nth(1).map(|f| f.trim_matches(['"', ' ', ';']).to_owned()));
        let is_json =
            content_type.as_deref().is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/plain"));
        if is_json {
            // An error (a success would be the file itself); decode says which.
            let bytes = read_limited(API, response, MAX_JSON_BYTES.min(max_bytes)).await?;
            let status: Result<serde_json::Value, _> = self.decode(API, &bytes);
            return Err(status
                .err()
                .unwrap_or(WeComError::Decode { api: API, reason: "JSON instead of a file".into() }));
        }
        if response.content_length().is_some_and(|len| len > max_bytes as u64) {
            self.count(API, "too_large".into());
            return Err(too_large(API, max_bytes));
        }
        self.count(API, "0".into());
        self.observe(API, 0, "");
        Ok(Media { response, content_type, filename, max_bytes, read: 0 })
    }
}

/// A media file being downloaded: its headers, and its body read chunk by chunk
/// so that it never has to be held in memory whole.
#[derive(Debug)]
pub(crate) struct Media {
    response: reqwest::Response,
    pub content_type: Option<String>,
    /// From `Content-Disposition`, untrusted: never use it as a path.
    pub filename: Option<String>,
    max_bytes: usize,
    read: usize,
}

impl Media {
    /// The next piece of the body, `None` at its end; an error once the body
    /// grows past the limit or the connection fails.
    pub(crate) async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, WeComError> {
        const API: &str = "media/get";
        let Some(chunk) = self.response.chunk().await.map_err(|e| WeComError::transport(API, e))? else {
            return Ok(None);
        };
        self.read += chunk.len();
        if self.read > self.max_bytes {
            return Err(too_large(API, self.max_bytes));
        }
        Ok(Some(chunk))
    }
}

fn too_large(api: &'static str, max_bytes: usize) -> WeComError {
    WeComError::Decode { api, reason: format!("answer larger than {max_bytes} bytes") }
}

async fn read_limited(
    api: &'static str,
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<Vec<u8>, WeComError> {
    if response.content_length().is_some_and(|len| len > max_bytes as u64) {
        return Err(too_large(api, max_bytes));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| WeComError::transport(api, e))? {
        if bytes.len() + chunk.len() > max_bytes {
            return Err(too_large(api, max_bytes));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::{AIBOT_APIS, APP_APIS, KF_APIS};

    /// A new API must join [`APP_APIS`], [`KF_APIS`] or [`AIBOT_APIS`], or its series appears
    /// only with its first call.
    #[test]
    fn every_api_this_client_calls_is_declared_in_apis() {
        let source = include_str!("client.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap_or(source.len())];
        let called: Vec<&str> = ["post_json(\"", "get_json(\"", "const API: &str = \""]
            .iter()
            .flat_map(|opening| source.match_indices(opening).map(move |(at, _)| &source[at + opening.len()..]))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(called.len() >= 10, "{called:?}");
        for api in called {
            assert!([APP_APIS, KF_APIS, AIBOT_APIS].concat().contains(&api), "{api} is called but in no list");
        }
    }
}
