//! What the appliance sends out: no redirect is ever followed, so a 3xx from
//! `FORWARD_URL` never carries a message and its `X-Signature` to a URL nobody
//! configured; it is a failed attempt, retried with back-off.

use std::time::{Duration, Instant};

use crate::fakes::{FakeWeCom, ForwardReceiver};
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_307_from_the_forward_url_is_a_failed_attempt_and_the_target_never_receives_anything() {
    let (wecom, first, second) =
        (FakeWeCom::start().await, ForwardReceiver::start().await, ForwardReceiver::start().await);
    // Were the redirect followed, the second would take the record and its reply be sent.
    second.reply_with("acted on");
    first.redirect_to(&second.url);
    let app = spawn_app_with(&[
        ("WECOM_API_BASE_URL", wecom.base_url.as_str()),
        ("WECOM_SECRET", "app-secret"),
        ("WECOM_AGENT_ID", "1000002"),
        ("FORWARD_URL", first.url.as_str()),
        ("FORWARD_SECRET", first.secret.as_str()),
    ])
    .await;
    assert_eq!(app.post_text("转账", 307).await, 200);
    // The first attempt and its retry (after the 1 s back-off) both end at the 307.
    let deadline = Instant::now() + Duration::from_secs(15);
    while first.attempts() < 2 {
        assert!(Instant::now() < deadline, "{} attempts, expected a retry", first.attempts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first.delivered().is_empty());
    assert_eq!(second.attempts(), 0, "the redirect target received a request");
    assert!(wecom.calls("message/send").is_empty(), "nothing was acted on");
    assert_eq!(app.store.outbox_backlog().await.expect("outbox"), 1, "the forward is still to do");
}
