//! A stand-in for WeCom's API, for demo mode only: a tiny HTTP/1.1 responder on
//! 127.0.0.1 that issues access tokens to any Secret and, instead of delivering a
//! message, logs at INFO what WeCom would deliver to whom. With it a new user sees
//! the whole loop (callback → handler → reply) work, with no WeCom account.
//!
//! Deliberately small and not a general HTTP server: one request per connection
//! (`Connection: close`), bodies up to [`MAX_REQUEST_BYTES`], no TLS. It speaks a
//! few fields of WeCom's JSON (`touser`, `text.content`, `errcode`) by necessity;
//! the service itself still learns WeCom's JSON only from `wecom/`. Not used by
//! tests or benches, which have their own fake that records requests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest request read; the service's own messages are far smaller.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// A connection that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The access token every `gettoken` gets.
const DEMO_ACCESS_TOKEN: &str = "demo-access-token";

/// The bound stand-in, not serving yet: bound before the configuration is
/// validated so its URL can be part of it.
#[derive(Debug)]
pub(crate) struct StandIn {
    listener: std::net::TcpListener,
    base_url: String,
}

impl StandIn {
    /// Binds a free port on 127.0.0.1.
    pub(crate) fn bind() -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        listener.set_nonblocking(true)?;
        let base_url = format!("http://{}", listener.local_addr()?);
        Ok(Self { listener, base_url })
    }

    /// `http://127.0.0.1:<port>`, for `WECOM_API_BASE_URL`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Answers requests until `shutdown`, then waits for the ones under way.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        tracing::info!("demo: stand-in for WeCom's API on {}", self.base_url);
        let connections = TaskTracker::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(async move {
                            match tokio::time::timeout(REQUEST_TIMEOUT, serve(stream)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(error)) => tracing::debug!("demo: stand-in connection failed: {error}"),
                                Err(_) => tracing::debug!("demo: stand-in connection sent no request in time"),
                            }
                        });
                    }
                    Err(error) => tracing::debug!("demo: stand-in accept failed: {error}"),
                },
            }
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

/// Reads one request from `stream` and answers it.
async fn serve(mut stream: TcpStream) -> io::Result<()> {
    let (head, body) = read_request(&mut stream).await?;
    let target = head.lines().next().and_then(|line| line.split(' ').nth(1)).unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target);
    let answer = answer(path, &body);
    let body = answer.to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request head (as text) and body.
async fn read_request(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > MAX_REQUEST_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if length > MAX_REQUEST_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "request body too large"));
    }
    let mut body = buffer.split_off(head_end);
    while body.len() < length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);
    Ok((head, body))
}

/// What WeCom would answer to `path`; sends are logged instead of delivered.
fn answer(path: &str, body: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = request.pointer("/text/content").and_then(Value::as_str).unwrap_or("");
    match path.trim_start_matches("/cgi-bin/") {
        "gettoken" => json!({"errcode": 0, "errmsg": "ok", "access_token": DEMO_ACCESS_TOKEN, "expires_in": 7200}),
        "message/send" | "kf/send_msg" => {
            let to = request.get("touser").and_then(Value::as_str).unwrap_or("?");
            tracing::info!("demo: WeCom would deliver to {to}: {text:?}");
            json!({"errcode": 0, "errmsg": "ok", "msgid": format!("demo-{}", rand::random::<u32>())})
        }
        "kf/send_msg_on_event" => {
            tracing::info!("demo: WeCom would deliver to the customer who entered the session: {text:?}");
            json!({"errcode": 0, "errmsg": "ok", "msgid": format!("demo-{}", rand::random::<u32>())})
        }
        other => {
            tracing::info!("demo: WeCom's {other} answered with an empty success");
            json!({"errcode": 0, "errmsg": "ok"})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_issued_and_sends_succeed() {
        assert_eq!(answer("/cgi-bin/gettoken", b"")["access_token"], DEMO_ACCESS_TOKEN);
        let send = br#"{"touser":"u","msgtype":"text","agentid":1,"text":{"content":"hi"}}"#;
        assert_eq!(answer("/cgi-bin/message/send", send)["errcode"], 0);
        assert_eq!(answer("/cgi-bin/kf/send_msg", send)["errcode"], 0);
    }

    #[tokio::test]
    async fn it_answers_one_request_per_connection_over_http() {
        crate::tls::install_crypto_provider();
        let stand_in = StandIn::bind().expect("bind");
        let url = format!("{}/cgi-bin/gettoken?corpid=ww&corpsecret=s", stand_in.base_url());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(stand_in.run(shutdown.clone()));
        let answer: Value = reqwest::get(&url).await.expect("answers").json().await.expect("JSON");
        assert_eq!(answer["errcode"], 0);
        shutdown.cancel();
        server.await.expect("joined").expect("stopped cleanly");
    }
}
