//! The request body's deadline, as middleware around every route.
//!
//! Owns: [`BODY_READ_TIMEOUT`] and the rule that a request body is read within it
//! or not at all. Deliberately not here: the header timeout and keep-alive (the
//! server's own settings in `startup`) and what a route answers to a late body
//! (each route maps the timeout error itself).

use std::time::Duration;

/// Body read deadline, counted from the end of the head: actix has no body timer,
/// so without this a client sending one byte a second holds its connection forever.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds the request body in time: once [`BODY_READ_TIMEOUT`] has passed, the
/// body fails with a timeout, so the handler answers and the connection closes.
///
/// It also keeps the body alive until the response is written. actix-http drains
/// a chunked body that a handler dropped unread (a 404, a 413) with no time limit,
/// so a client that then goes quiet would hold its connection forever; a body
/// still held when the response ends makes actix close the connection instead.
pub(crate) async fn body_deadline(
    mut request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    use futures_util::{FutureExt, StreamExt};
    let payload = request.take_payload();
    if matches!(payload, actix_web::dev::Payload::None) {
        return next.call(request).await.map(|response| response.map_into_boxed_body());
    }
    let body = std::rc::Rc::new(std::cell::RefCell::new(payload));
    let reader = std::rc::Rc::clone(&body);
    let mut timer = Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT));
    let bounded = futures_util::stream::poll_fn(move |cx| match reader.borrow_mut().poll_next_unpin(cx) {
        std::task::Poll::Pending if timer.poll_unpin(cx).is_ready() => {
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body not received in time");
            std::task::Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(late))))
        }
        polled => polled,
    });
    request.set_payload(actix_web::dev::Payload::Stream { payload: Box::pin(bounded) });
    let response = next.call(request).await?;
    Ok(response.map_body(|_, answer| {
        actix_web::body::BoxBody::new(HoldingBody { answer: answer.boxed(), _request_body: body })
    }))
}

/// A response body that holds the request body until it has been written.
struct HoldingBody {
    answer: actix_web::body::BoxBody,
    /// Never read: only held, so actix sees the request body as still wanted.
    _request_body: std::rc::Rc<std::cell::RefCell<actix_web::dev::Payload>>,
}

impl actix_web::body::MessageBody for HoldingBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.answer.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().answer).poll_next(cx)
    }
}
