//! `loadgen fake-api`: a fake WeCom API (what WECOM_API_BASE_URL points at) and a
//! webhook receiver at /forward (FORWARD_URL), on tokio + hyper. It answers every
//! call with success: `gettoken` a new token, `kf/sync_msg` a page of new text
//! messages, the send APIs a fake msgid; it counts what it answered, at GET /stats
//! and as one JSON line on SIGINT/SIGTERM.
//!
//! Deliberately not here: WeCom's errors, throttling or latency (the benchmarks
//! measure the service, not its error paths). Nor is it shared with the integration
//! tests' fake (tests/api/fakes.rs): that one records every call and answers what a
//! test programs, while this one must stay cheap under load through an hours-long
//! soak: counters (and the distinct forwarded ids), not a log of every call.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::generate::OPEN_KFID;
use crate::unix_nanos;

/// What the fake has answered.
#[derive(Default)]
struct Fake {
    page: u32,
    run: u64,
    gettoken: AtomicU64,
    sync_msg: AtomicU64,
    kf_messages: AtomicU64,
    send_msg: AtomicU64,
    message_send: AtomicU64,
    other: AtomicU64,
    forward: AtomicU64,
    forwarded_ids: Mutex<HashSet<String>>,
}

impl Fake {
    fn stats(&self) -> Value {
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        json!({
            "gettoken": n(&self.gettoken),
            "sync_msg": n(&self.sync_msg),
            "kf_messages": n(&self.kf_messages),
            "send_msg": n(&self.send_msg),
            "message_send": n(&self.message_send),
            "other": n(&self.other),
            "forward": n(&self.forward),
            "forward_distinct": self.forwarded_ids.lock().unwrap_or_else(PoisonError::into_inner).len(),
        })
    }

    /// A page of `self.page` new text messages, all there is.
    fn sync_page(&self, request: &[u8]) -> Value {
        let call = self.sync_msg.fetch_add(1, Ordering::Relaxed);
        let open_kfid = serde_json::from_slice::<Value>(request)
            .ok()
            .and_then(|body| body.get("open_kfid").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| OPEN_KFID.to_owned());
        let send_time = u64::try_from(unix_nanos() / 1_000_000_000).unwrap_or_default();
        let messages: Vec<Value> = (0..self.page)
            .map(|_| {
                let n = self.kf_messages.fetch_add(1, Ordering::Relaxed);
                json!({"msgid": format!("load{}-{n}", self.run), "open_kfid": open_kfid,
                       "external_userid": format!("wmload{}", n % 100), "send_time": send_time, "origin": 3,
                       "msgtype": "text", "text": {"content": format!("kf load message {n}")}})
            })
            .collect();
        json!({"errcode": 0, "errmsg": "ok", "next_cursor": format!("C{}-{call}", self.run), "has_more": 0,
               "msg_list": messages})
    }
}

/// Serves the fake on `listen` until SIGINT or SIGTERM, then prints the counts;
/// each kf/sync_msg page holds `page` new messages.
pub(crate) async fn fake_api(listen: SocketAddr, page: u32) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let run = u64::try_from(unix_nanos() / 1_000_000).unwrap_or_default();
    let fake = Arc::new(Fake { page, run, ..Fake::default() });
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    eprintln!("fake WeCom API on http://{listen} (WECOM_API_BASE_URL), webhook receiver at /forward, counts at /stats");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let fake = Arc::clone(&fake);
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let service = hyper::service::service_fn(move |request| answer(Arc::clone(&fake), request));
                        // A connection's end, clean or not, is the client's business.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(error) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    eprintln!("fake-api: accept: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    println!("{}", fake.stats());
    Ok(())
}

/// One call's answer, counted; the webhook receiver's too (`/forward`).
async fn answer(fake: Arc<Fake>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let message_id = request.headers().get("x-message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let answer = match path.as_str() {
        "/stats" => fake.stats(),
        "/forward" => {
            fake.forward.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = message_id {
                fake.forwarded_ids.lock().unwrap_or_else(PoisonError::into_inner).insert(id);
            }
            json!({})
        }
        "/cgi-bin/gettoken" => {
            let n = fake.gettoken.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok", "access_token": format!("FAKE-TOKEN-{n}"), "expires_in": 7200})
        }
        "/cgi-bin/kf/sync_msg" => fake.sync_page(&body),
        "/cgi-bin/kf/send_msg" => {
            fake.send_msg.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok", "msgid": "FAKE"})
        }
        "/cgi-bin/message/send" => {
            fake.message_send.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok", "msgid": "FAKE"})
        }
        _ => {
            fake.other.fetch_add(1, Ordering::Relaxed);
            json!({"errcode": 0, "errmsg": "ok"})
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}
