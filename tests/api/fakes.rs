//! Real local servers the service talks to: a fake WeCom API and a downstream
//! forward receiver (both actix-web servers on 127.0.0.1:0), and an HTTP forward
//! proxy with Basic credentials (`WECOM_PROXY_URL`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One call the fake WeCom API received.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub api: String,
    pub query: HashMap<String, String>,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct WeComState {
    calls: Vec<Call>,
    /// Answers to give instead of the default, per API, in order.
    scripted: HashMap<String, VecDeque<Value>>,
    delays: HashMap<String, Duration>,
    issued: u64,
    valid_tokens: Vec<String>,
    /// APIs in the order their answers were sent (after any delay).
    answered: Vec<String>,
    /// Calls of each API being answered right now, and the most there ever were.
    in_flight: HashMap<String, (usize, usize)>,
    /// Answers every call of an API gets until cleared (a failing WeCom).
    failing: HashMap<String, Value>,
    /// `gettoken` answers for a Secret, every time.
    by_secret: HashMap<String, Value>,
    /// Files served by `media/get`, by media id.
    media: HashMap<String, Vec<u8>>,
    /// What issued access tokens start with (`TOKEN` unless set).
    token_prefix: Option<String>,
    /// `kf/send_msg` messages accepted, by our `msgid`, in order: a msgid seen
    /// again is refused as WeCom does, and not delivered twice.
    kf_delivered: Vec<(String, Value)>,
    /// The IP every error answer names (`from ip: …`), as WeCom's do; `None`:
    /// [`DEFAULT_CALLER_IP`].
    caller_ip: Option<String>,
    /// Secrets whose tokens' business calls are refused with 60020 (the IP is
    /// not among that app's trusted IPs).
    untrusted: HashSet<String>,
    /// The Secret each issued token was issued for.
    token_secrets: HashMap<String, String>,
    /// AI bot `response_url` bodies accepted, by `response_code`: each code once.
    responses: Vec<(String, Value)>,
    /// AI bot media served at `/aibot/media/<name>`, already encrypted.
    aibot_media: HashMap<String, Vec<u8>>,
}

/// The IP the fake names in its error answers unless told another.
pub(crate) const DEFAULT_CALLER_IP: &str = "203.0.113.7";

/// A fake WeCom API: issues tokens, checks them, records every call, and can be
/// told to answer an errcode once or to be slow.
#[derive(Clone)]
pub(crate) struct FakeWeCom {
    pub base_url: String,
    state: Arc<Mutex<WeComState>>,
    _server: Arc<actix_web::dev::ServerHandle>,
}

impl FakeWeCom {
    pub(crate) async fn start() -> Self {
        let state = Arc::new(Mutex::new(WeComState::default()));
        let shared = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || App::new().app_data(shared.clone()).default_service(web::to(wecom_api)))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind fake WeCom");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { base_url: format!("http://127.0.0.1:{port}"), state, _server: Arc::new(handle) }
    }

    /// The next call to `api` answers `answer` instead of the default.
    pub(crate) fn answer_once(&self, api: &str, answer: Value) {
        self.state.lock().expect("lock").scripted.entry(api.to_owned()).or_default().push_back(answer);
    }

    pub(crate) fn calls(&self, api: &str) -> Vec<Call> {
        self.state.lock().expect("lock").calls.iter().filter(|c| c.api == api).cloned().collect()
    }

    /// Every call to any API, in order.
    pub(crate) fn all_calls(&self) -> Vec<Call> {
        self.state.lock().expect("lock").calls.clone()
    }

    /// Access tokens issued from now on are `<prefix>-<n>`.
    pub(crate) fn issue_tokens_as(&self, prefix: &str) {
        self.state.lock().expect("lock").token_prefix = Some(prefix.to_owned());
    }

    /// Accepts `token` as if this fake had issued it (a token an earlier run cached).
    pub(crate) fn accept_token(&self, token: &str) {
        self.state.lock().expect("lock").valid_tokens.push(token.to_owned());
    }

    /// Every `gettoken` with `secret` answers `answer` (e.g. 60020) until cleared.
    pub(crate) fn refuse_secret(&self, secret: &str, answer: Option<Value>) {
        let mut s = self.state.lock().expect("lock");
        match answer {
            Some(answer) => s.by_secret.insert(secret.to_owned(), answer),
            None => s.by_secret.remove(secret),
        };
    }

    /// Every call to `api` answers `answer` (e.g. errcode 45009) until cleared with `None`.
    pub(crate) fn fail_api(&self, api: &str, answer: Option<Value>) {
        let mut s = self.state.lock().expect("lock");
        match answer {
            Some(answer) => s.failing.insert(api.to_owned(), answer),
            None => s.failing.remove(api),
        };
    }

    /// Error answers name `ip` as the caller from now on (the egress IP changed).
    pub(crate) fn set_caller_ip(&self, ip: &str) {
        self.state.lock().expect("lock").caller_ip = Some(ip.to_owned());
    }

    /// Business calls with a token of `secret` answer 60020 (the caller's IP is
    /// not among the app's trusted IPs) while `refused`.
    pub(crate) fn distrust(&self, secret: &str, refused: bool) {
        let mut s = self.state.lock().expect("lock");
        if refused {
            s.untrusted.insert(secret.to_owned());
        } else {
            s.untrusted.remove(secret);
        }
    }

    /// The calls to `api` made with a token issued for `secret`.
    pub(crate) fn calls_of(&self, api: &str, secret: &str) -> Vec<Call> {
        let s = self.state.lock().expect("lock");
        s.calls
            .iter()
            .filter(|c| c.api == api)
            .filter(|c| c.query.get("access_token").and_then(|t| s.token_secrets.get(t)).is_some_and(|t| t == secret))
            .cloned()
            .collect()
    }

    /// Every call to `api` waits `delay` before answering.
    pub(crate) fn delay(&self, api: &str, delay: Duration) {
        self.state.lock().expect("lock").delays.insert(api.to_owned(), delay);
    }

    /// `media/get` serves `bytes` for `media_id`.
    pub(crate) fn serve_media(&self, media_id: &str, bytes: &[u8]) {
        self.state.lock().expect("lock").media.insert(media_id.to_owned(), bytes.to_vec());
    }

    /// The most calls of `api` that were ever in flight at once.
    pub(crate) fn most_at_once(&self, api: &str) -> usize {
        self.state.lock().expect("lock").in_flight.get(api).map_or(0, |flight| flight.1)
    }

    /// How many answers to `api` have been sent so far.
    pub(crate) fn answered(&self, api: &str) -> usize {
        self.state.lock().expect("lock").answered.iter().filter(|a| *a == api).count()
    }

    /// The kf texts WeCom accepted (each msgid once), in order: what customers saw.
    pub(crate) fn kf_delivered(&self) -> Vec<Value> {
        self.state.lock().expect("lock").kf_delivered.iter().map(|(_, body)| body.clone()).collect()
    }

    /// A `response_url` of the AI bot, one use, valid here.
    pub(crate) fn response_url(&self, code: &str) -> String {
        format!("{}/cgi-bin/aibot/response?response_code={code}", self.base_url)
    }

    /// What `response_url`s accepted, in order (`response_code`, body).
    pub(crate) fn responses(&self) -> Vec<(String, Value)> {
        self.state.lock().expect("lock").responses.clone()
    }

    /// Serves `bytes` encrypted as WeCom encrypts AI bot media (AES-256-CBC with
    /// the callback `key`, IV = key[..16], PKCS#7 to 32); the URL to fetch it.
    pub(crate) fn serve_aibot_media(&self, name: &str, bytes: &[u8], key: &str) -> String {
        let key = wechat_api::testing::crypto::AesKey::parse(key).expect("key");
        let encrypted = wechat_api::testing::crypto::encrypt_media(&key, bytes);
        self.state.lock().expect("lock").aibot_media.insert(name.to_owned(), encrypted);
        format!("{}/aibot/media/{name}", self.base_url)
    }

    /// Polls until `api` was called `count` times, or fails after 15 s.
    pub(crate) async fn wait_for_calls(&self, api: &str, count: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let calls = self.calls(api);
            if calls.len() >= count {
                return calls;
            }
            assert!(Instant::now() < deadline, "{api}: {} calls, expected {count}", calls.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wecom_api(request: HttpRequest, body: web::Bytes, state: web::Data<Mutex<WeComState>>) -> HttpResponse {
    let api = request.path().trim_start_matches("/cgi-bin/").to_owned();
    let query: HashMap<String, String> = serde_urlencoded::from_str(request.query_string()).unwrap_or_default();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let headers = header_pairs(&request);
    let (answer, delay) = {
        let mut s = state.lock().expect("lock");
        s.calls.push(Call { api: api.clone(), query: query.clone(), body: body_json.clone(), headers });
        let delay = s.delays.get(&api).copied();
        let flight = s.in_flight.entry(api.clone()).or_default();
        flight.0 += 1;
        flight.1 = flight.1.max(flight.0);
        let scripted = s.scripted.get_mut(&api).and_then(VecDeque::pop_front).or_else(|| s.failing.get(&api).cloned());
        let answer = scripted.map(Ok).unwrap_or_else(|| default_answer(&mut s, &api, &query, &body_json));
        let ip = s.caller_ip.clone().unwrap_or_else(|| DEFAULT_CALLER_IP.to_owned());
        (answer.map(|answer| name_the_caller(answer, &ip)), delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    {
        let mut s = state.lock().expect("lock");
        if let Some(flight) = s.in_flight.get_mut(&api) {
            flight.0 -= 1;
        }
        s.answered.push(api);
    }
    match answer {
        Ok(json) => HttpResponse::Ok().json(json),
        Err(bytes) => HttpResponse::Ok().content_type("image/png").body(bytes),
    }
}

/// An error answer as WeCom writes it: `…, from ip: A.B.C.D, more info at …`.
fn name_the_caller(mut answer: Value, ip: &str) -> Value {
    let errcode = answer["errcode"].as_i64().unwrap_or(0);
    let errmsg = answer["errmsg"].as_str().unwrap_or_default().to_owned();
    if errcode != 0 && !errmsg.contains("from ip:") {
        answer["errmsg"] = Value::String(format!(
            "{errmsg}, hint: [1765000000_12_fake], from ip: {ip}, more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}"
        ));
    }
    answer
}

/// The answer WeCom gives when all is well; `Err` carries a binary body.
fn default_answer(
    s: &mut WeComState,
    api: &str,
    query: &HashMap<String, String>,
    body: &Value,
) -> Result<Value, Vec<u8>> {
    if let Some(answer) = query.get("corpsecret").and_then(|secret| s.by_secret.get(secret)) {
        return Ok(answer.clone());
    }
    if api == "gettoken" && query.get("corpsecret").is_none_or(String::is_empty) {
        return Ok(json!({"errcode": 41004, "errmsg": "corpsecret missing"}));
    }
    if api == "aibot/response" {
        // The URL is the credential: no access token; each code answers once.
        let code = query.get("response_code").cloned().unwrap_or_default();
        if code.is_empty() || s.responses.iter().any(|(seen, _)| *seen == code) {
            return Ok(json!({"errcode": 40001, "errmsg": "invalid response_code (used or expired)"}));
        }
        s.responses.push((code, body.clone()));
        return Ok(json!({"errcode": 0, "errmsg": "ok"}));
    }
    if let Some(name) = api.strip_prefix("/aibot/media/") {
        return match s.aibot_media.get(name) {
            Some(bytes) => Err(bytes.clone()),
            None => Ok(json!({"errcode": 40007, "errmsg": "no such media"})),
        };
    }
    if api == "gettoken" {
        s.issued += 1;
        let token = format!("{}-{}", s.token_prefix.as_deref().unwrap_or("TOKEN"), s.issued);
        s.valid_tokens.push(token.clone());
        let secret = query.get("corpsecret").cloned().unwrap_or_default();
        s.token_secrets.insert(token.clone(), secret);
        return Ok(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}));
    }
    let token = query.get("access_token").cloned().unwrap_or_default();
    if !s.valid_tokens.contains(&token) {
        return Ok(json!({"errcode": 42001, "errmsg": "access_token expired"}));
    }
    if s.token_secrets.get(&token).is_some_and(|secret| s.untrusted.contains(secret)) {
        return Ok(json!({"errcode": 60020, "errmsg": "not allow to access from your ip"}));
    }
    Ok(match api {
        "media/get" => match query.get("media_id").and_then(|id| s.media.get(id)) {
            Some(bytes) => return Err(bytes.clone()),
            None => json!({"errcode": 40007, "errmsg": "invalid media_id"}),
        },
        "kf/account/list" => {
            json!({"errcode": 0, "errmsg": "ok", "account_list": [{"open_kfid": "wkTEST", "name": "客服"}]})
        }
        "kf/sync_msg" => json!({"errcode": 0, "errmsg": "ok", "next_cursor": "", "has_more": 0, "msg_list": []}),
        "kf/send_msg" => {
            let msgid = body["msgid"].as_str().unwrap_or_default().to_owned();
            if !msgid.is_empty() && s.kf_delivered.iter().any(|(seen, _)| *seen == msgid) {
                // WeCom documents no errcode for a repeated msgid; this is the fake's.
                return Ok(json!({"errcode": 95019, "errmsg": format!("msgid {msgid} exist")}));
            }
            s.kf_delivered.push((msgid.clone(), body.clone()));
            json!({"errcode": 0, "errmsg": "ok", "msgid": msgid})
        }
        "kf/service_state/get" => json!({"errcode": 0, "errmsg": "ok", "service_state": 3, "servicer_userid": "lisi"}),
        "externalcontact/get" => json!({"errcode": 84061, "errmsg": "not external contact"}),
        "kf/customer/batchget" => json!({"errcode": 0, "errmsg": "ok",
            "customer_list": [{"external_userid": "wmCUSTOMER", "nickname": "微信用户甲"}]}),
        "user/get" => {
            json!({"errcode": 0, "errmsg": "ok", "userid": query.get("userid"), "name": "张三"})
        }
        _ => json!({"errcode": 0, "errmsg": "ok", "msgid": "MSG"}),
    })
}

/// Every header of `request`, values lossily as text.
fn header_pairs(request: &HttpRequest) -> Vec<(String, String)> {
    request.headers().iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
}

/// One POST the forward receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub message_id: String,
    pub signature_ok: bool,
    pub content_type: String,
    pub record: Value,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Default)]
struct ReceiverState {
    attempts: usize,
    fail_first: usize,
    answer: Option<Value>,
    /// Answer every POST with a 307 to this URL instead of taking it.
    redirect: Option<String>,
    delivered: Vec<Delivery>,
}

/// A downstream webhook receiver: checks `X-Signature`, can fail the first N
/// posts, can answer with a reply.
#[derive(Clone)]
pub(crate) struct ForwardReceiver {
    pub url: String,
    pub secret: String,
    state: Arc<Mutex<ReceiverState>>,
    _server: Arc<actix_web::dev::ServerHandle>,
}

impl ForwardReceiver {
    pub(crate) async fn start() -> Self {
        Self::start_with_secret("forward-secret-for-tests").await
    }

    /// A receiver that checks `X-Signature` under `secret`.
    pub(crate) async fn start_with_secret(secret: &str) -> Self {
        let secret = secret.to_owned();
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let shared = web::Data::from(Arc::clone(&state));
        let key = web::Data::new(secret.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(shared.clone()).app_data(key.clone()).default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url: format!("http://127.0.0.1:{port}/hook"), secret, state, _server: Arc::new(handle) }
    }

    pub(crate) fn fail_first(&self, n: usize) {
        self.state.lock().expect("lock").fail_first = n;
    }

    pub(crate) fn reply_with(&self, text: &str) {
        self.answer_with(json!({"reply": {"text": text}}));
    }

    /// Every post is answered `answer` (a 2xx JSON body) from now on.
    pub(crate) fn answer_with(&self, answer: Value) {
        self.state.lock().expect("lock").answer = Some(answer);
    }

    /// Answers every POST with `307 Temporary Redirect` to `url` from now on.
    pub(crate) fn redirect_to(&self, url: &str) {
        self.state.lock().expect("lock").redirect = Some(url.to_owned());
    }

    pub(crate) fn attempts(&self) -> usize {
        self.state.lock().expect("lock").attempts
    }

    pub(crate) fn delivered(&self) -> Vec<Delivery> {
        self.state.lock().expect("lock").delivered.clone()
    }

    /// Polls until `count` deliveries arrived, or fails after `within`.
    pub(crate) async fn wait_for(&self, count: usize, within: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= count {
                return delivered;
            }
            assert!(Instant::now() < deadline, "{} deliveries, expected {count}", delivered.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<Mutex<ReceiverState>>,
    secret: web::Data<String>,
) -> HttpResponse {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let expected = wechat_api::testing::dispatch::signature(secret.as_bytes(), &body);
    let mut s = state.lock().expect("lock");
    s.attempts += 1;
    if s.attempts <= s.fail_first {
        return HttpResponse::InternalServerError().body("not now");
    }
    if let Some(url) = &s.redirect {
        return HttpResponse::TemporaryRedirect().insert_header(("Location", url.as_str())).finish();
    }
    s.delivered.push(Delivery {
        message_id: header("X-Message-Id"),
        signature_ok: header("X-Signature") == expected,
        content_type: header("Content-Type"),
        record: serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers: header_pairs(&request),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match &s.answer {
        Some(answer) => HttpResponse::Ok().json(answer),
        None => HttpResponse::Ok().json(json!({"ok": true})),
    }
}

/// One request a forward proxy received.
#[derive(Debug, Clone)]
pub(crate) struct Proxied {
    pub target: String,
    pub authorized: bool,
}

/// A small HTTP forward proxy on 127.0.0.1 that checks Basic credentials
/// (407 without them) and records every request.
pub(crate) struct ForwardProxy {
    pub port: u16,
    seen: Arc<Mutex<Vec<Proxied>>>,
}

impl ForwardProxy {
    pub(crate) async fn start(user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        let shared = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(proxy_connection(stream, expected.clone(), Arc::clone(&shared)));
            }
        });
        Self { port, seen }
    }

    pub(crate) fn seen(&self) -> Vec<Proxied> {
        self.seen.lock().expect("lock").clone()
    }

    /// `http://<credentials>127.0.0.1:<port>` (`credentials`: `user:pass@` or empty).
    pub(crate) fn url(&self, credentials: &str) -> String {
        format!("http://{credentials}127.0.0.1:{}", self.port)
    }
}

/// Serves one client connection: requests in absolute form, forwarded to their
/// target one by one.
async fn proxy_connection(stream: TcpStream, expected: String, seen: Arc<Mutex<Vec<Proxied>>>) {
    let mut client = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match client.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line.trim_end().to_owned()),
            }
        }
        let Some(request_line) = head.first().cloned() else { return };
        let mut parts = request_line.split(' ');
        let (method, target) =
            (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
        let header = |name: &str| {
            head.iter().skip(1).find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if client.read_exact(&mut body).await.is_err() {
            return;
        }
        let authorized = header("proxy-authorization").as_deref() == Some(expected.as_str());
        seen.lock().expect("lock").push(Proxied { target: target.clone(), authorized });
        if !authorized {
            let refusal = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n";
            if client.get_mut().write_all(refusal.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let Some(rest) = target.strip_prefix("http://") else { return };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let Ok(mut upstream) = TcpStream::connect(authority).await else { return };
        let mut request = format!("{method} {} HTTP/1.1\r\n", if path.is_empty() { "/" } else { path });
        for h in head.iter().skip(1) {
            let name = h.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
            if !["proxy-authorization", "proxy-connection", "connection"].contains(&name.as_str()) {
                request.push_str(h);
                request.push_str("\r\n");
            }
        }
        request.push_str("Via: 1.1 test-proxy\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        if upstream.write_all(request.as_bytes()).await.is_err()
            || upstream.write_all(&body).await.is_err()
            || upstream.read_to_end(&mut answer).await.is_err()
        {
            return;
        }
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |at| at + 4);
        let (head, body) = answer.split_at(split);
        let head: String = String::from_utf8_lossy(head)
            .split("\r\n")
            .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let writer = client.get_mut();
        if writer.write_all(head.as_bytes()).await.is_err() || writer.write_all(body).await.is_err() {
            return;
        }
    }
}

/// Where the fake bot sends its callbacks: a test application, or a replica.
pub(crate) trait Reach {
    fn url(&self, path: &str) -> String;
    fn client(&self) -> &reqwest::Client;
}

impl Reach for crate::helpers::TestApp {
    fn url(&self, path: &str) -> String {
        crate::helpers::TestApp::url(self, path)
    }
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// A replica (a `serve` process) on `port`, reached with `client`.
pub(crate) struct Replica {
    pub port: u16,
    pub client: reqwest::Client,
}

impl Reach for Replica {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// The AI bot (智能机器人) side of WeCom (SPEC §13): it signs and encrypts JSON
/// callbacks with an empty receive id for the bot's own path, opens the
/// encrypted JSON answers (checking `msgsignature` and that the nonce is the
/// request's), and plays refreshes of a stream about once a `period` until it
/// sees `finish: true` or its window (6 minutes at WeCom, shortened in tests) ends.
#[derive(Clone)]
pub(crate) struct FakeAibot {
    pub token: String,
    pub key: String,
    /// The bot's callback path on the appliance.
    pub path: String,
}

impl FakeAibot {
    pub(crate) fn new(token: &str, key: &str, channel: &str) -> Self {
        Self { token: token.into(), key: key.into(), path: format!("/api/v1/wecom/callback/{channel}") }
    }

    fn aes(&self) -> wechat_api::testing::crypto::AesKey {
        wechat_api::testing::crypto::AesKey::parse(&self.key).expect("key")
    }

    /// `json` as WeCom sends it for receive id `receive_id` (empty: the corp's own bot):
    /// the query string, the nonce, and the body `{"encrypt": …}`.
    pub(crate) fn signed_for(&self, json: &Value, receive_id: &str) -> (String, String, String) {
        use wechat_api::testing::crypto;
        let encrypted = crypto::encrypt(&self.aes(), json.to_string().as_bytes(), receive_id.as_bytes());
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        let nonce = format!("n{}", rand::random::<u32>());
        let signature = crypto::sign(&self.token, &timestamp, &nonce, &encrypted);
        let query = crate::helpers::query(signature.as_str(), &timestamp, &nonce, None);
        (query, nonce, json!({"encrypt": encrypted}).to_string())
    }

    /// POSTs `body` signed like `json` would be (a raw, possibly broken body).
    pub(crate) async fn post_raw(&self, app: &impl Reach, query: &str, body: String) -> (u16, String) {
        let url = app.url(&format!("{}?{query}", self.path));
        let response = app.client().post(url).body(body).send().await.expect("aibot callback");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    /// Delivers `json`; the status and the decrypted answer (`None`: an empty answer).
    pub(crate) async fn post(&self, app: &impl Reach, json: &Value) -> (u16, Option<Value>) {
        let (query, nonce, body) = self.signed_for(json, "");
        let (status, text) = self.post_raw(app, &query, body).await;
        if status != 200 || text.is_empty() {
            return (status, None);
        }
        (status, Some(self.open_answer(&text, &nonce)))
    }

    /// An encrypted answer opened as WeCom opens it: signed over its own
    /// ciphertext with the request's nonce, an empty receive id.
    pub(crate) fn open_answer(&self, text: &str, nonce: &str) -> Value {
        use wechat_api::testing::crypto;
        let answer: Value = serde_json::from_str(text).expect("a JSON answer");
        assert_eq!(answer["nonce"], nonce, "the answer carries the request's nonce");
        let encrypt = answer["encrypt"].as_str().expect("encrypt");
        let timestamp = answer["timestamp"].as_str().expect("timestamp");
        let signature = crypto::sign(&self.token, timestamp, nonce, encrypt);
        assert!(signature.matches(answer["msgsignature"].as_str().expect("msgsignature")), "signed: {answer}");
        let plain = crypto::decrypt(&self.aes(), encrypt).expect("decrypts");
        assert_eq!(plain.receive_id(), "", "an answer to the corp's own bot has an empty receive id");
        serde_json::from_str(plain.message()).expect("the plain answer is JSON")
    }

    /// One refresh of stream `id` by `userid`: the `stream` object answered.
    pub(crate) async fn refresh(&self, app: &impl Reach, id: &str, userid: &str) -> Value {
        let json = json!({"msgid": format!("r{}", rand::random::<u64>()), "aibotid": "BOT", "chattype": "single",
                          "from": {"userid": userid}, "msgtype": "stream", "stream": {"id": id}});
        let (status, answer) = self.post(app, &json).await;
        assert_eq!(status, 200, "a refresh is answered");
        let answer = answer.expect("a refresh has an answer");
        assert_eq!(answer["msgtype"], "stream", "{answer}");
        answer["stream"].clone()
    }

    /// Refreshes stream `id` every `period` until `finish: true` or `window`
    /// ends; every snapshot seen, in order.
    pub(crate) async fn play_refreshes(
        &self,
        app: &impl Reach,
        id: &str,
        userid: &str,
        period: Duration,
        window: Duration,
    ) -> Vec<Value> {
        let end = Instant::now() + window;
        let mut seen = Vec::new();
        loop {
            let stream = self.refresh(app, id, userid).await;
            let finished = stream["finish"] == json!(true);
            seen.push(stream);
            if finished || Instant::now() >= end {
                return seen;
            }
            tokio::time::sleep(period).await;
        }
    }
}
