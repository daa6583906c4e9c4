//! The bearer gate: one middleware in front of a set of routes that lets a
//! request through only with `Authorization: Bearer <token>`, before any
//! extractor reads the body, so a stranger is refused at once whatever it sends.
//!
//! A [`BearerGate`] is parametrised by its secret, the variable that holds it and
//! the message it answers while that variable is unset, so the admin endpoints
//! (`ADMIN_TOKEN`) and the send API (`SEND_TOKEN`) each get their own. Its answers:
//! - secret unset: 404, saying which variable turns the endpoints on;
//! - no bearer, or a wrong one: 401 with `WWW-Authenticate: Bearer`, the same
//!   body whatever was presented;
//! - from the 11th wrong bearer from one client address within a minute: 429 with
//!   `Retry-After`. The gates share one [`SharedThrottle`]: wrong bearers to the
//!   admin endpoints and to the send API count together (10 a minute in all),
//!   so a guesser gains nothing by splitting its guesses between the doors.
//!
//! Every presented bearer is compared (in constant time, by
//! [`Secret::matches`]) and a right one is served, also from a throttled address:
//! the throttle counts per address and never holds one client's failures against
//! another. The client address is the TCP peer, or what a proxy in
//! `TRUSTED_PROXIES` says in `X-Forwarded-For` ([`super::surface::client`]).
//! The decisions are in [`crate::access`]; only the HTTP is here.
//!
//! The monitoring views ask the admin gate too ([`BearerGate::audience`]): there a
//! missing bearer is no refusal (the view shrinks instead), a wrong one is, except
//! on the health reports, which count it and answer it as a stranger.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse};

use crate::access::{presented_bearer, Throttle, Verdict};
use crate::config::Secret;
use crate::messages::LoggedId;
use crate::routes::surface::{client, Audience};
use crate::routes::{error_body, AppState};

/// One bearer-protected surface: its secret, its throttle, and how it explains itself.
#[derive(Clone, Debug)]
pub(crate) struct BearerGate {
    /// What the gate guards, for the log: `admin`, `send`.
    surface: &'static str,
    /// `None`: the surface is off.
    token: Option<Secret>,
    /// The variable that holds the token, named in the 401.
    variable: &'static str,
    /// The 404's reason while the token is unset; it says how to turn the surface on.
    off: &'static str,
    /// Shared by every worker's copy of the gate, and by the other gate.
    throttle: SharedThrottle,
}

/// The one per-address throttle of wrong bearers that every gate counts into.
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedThrottle(Arc<Mutex<Throttle>>);

impl BearerGate {
    /// A gate for the `surface` (named in the log) opened by `token`, held in
    /// `variable` (named in the 401), counting wrong bearers into `throttle`;
    /// while the token is unset the gate answers 404 with `off`.
    pub(crate) fn new(
        surface: &'static str,
        token: Option<Secret>,
        variable: &'static str,
        off: &'static str,
        throttle: &SharedThrottle,
    ) -> Self {
        Self { surface, token, variable, off, throttle: throttle.clone() }
    }

    /// The admin endpoints' gate, opened by `ADMIN_TOKEN`.
    pub(crate) fn admin(token: Option<Secret>, throttle: &SharedThrottle) -> Self {
        Self::new("admin", token, "ADMIN_TOKEN", "admin endpoints are off: set ADMIN_TOKEN to enable them", throttle)
    }

    /// The send API's gate, opened by `SEND_TOKEN`.
    pub(crate) fn send(token: Option<Secret>, throttle: &SharedThrottle) -> Self {
        Self::new(
            "send",
            token,
            "SEND_TOKEN",
            "the send API is off: set SEND_TOKEN (at least 16 characters, not ADMIN_TOKEN) to enable it",
            throttle,
        )
    }

    /// Serves `request` from `client` through `next` if it carries the right
    /// bearer; answers it here otherwise, without reading its body.
    pub(crate) async fn guard(
        &self,
        client: IpAddr,
        request: ServiceRequest,
        next: Next<impl MessageBody + 'static>,
    ) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
        let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match self.refusal(authorization, client, request.path(), Instant::now()) {
            None => next.call(request).await.map(ServiceResponse::map_into_boxed_body),
            Some(refused) => Ok(request.into_response(refused)),
        }
    }

    /// Who a request that may, but need not, carry the bearer is: a missing
    /// bearer (or one while the gate is off) makes a [`Audience::Stranger`],
    /// neither logged nor counted; a wrong one is refused (401, or 429 when
    /// throttled) and counted like any guess.
    pub(crate) fn audience(
        &self,
        authorization: Option<&str>,
        client: IpAddr,
        path: &str,
        now: Instant,
    ) -> Result<Audience, Box<HttpResponse>> {
        let bearer = authorization.and_then(presented_bearer);
        if self.token.is_none() || bearer.is_none() {
            return Ok(Audience::Stranger);
        }
        match self.refusal(authorization, client, path, now) {
            None => Ok(Audience::Insider),
            Some(refused) => Err(Box::new(refused)),
        }
    }

    /// `None` to serve; otherwise the answer to send instead.
    fn refusal(&self, authorization: Option<&str>, client: IpAddr, path: &str, now: Instant) -> Option<HttpResponse> {
        let Some(expected) = &self.token else {
            return Some(HttpResponse::NotFound().json(error_body(self.off)));
        };
        let Some(presented) = authorization.and_then(presented_bearer) else {
            // Bound first, so the lock is released before the log line is written.
            let report = self.throttle().missing_bearer(client, now);
            if let Some(refusals) = report {
                tracing::warn!(
                    %client,
                    path = %LoggedId(path),
                    refusals,
                    "{} request refused: no bearer token (logged once a minute per address)",
                    self.surface
                );
            }
            return Some(self.unauthorized());
        };
        if expected.matches(presented) {
            return None;
        }
        let wrong = self.throttle().wrong_bearer(client, now);
        let throttled = matches!(wrong.verdict, Verdict::Throttle { .. });
        if let Some(refusals) = wrong.report {
            tracing::warn!(
                %client,
                path = %LoggedId(path),
                refusals,
                throttled,
                "{} request refused: wrong bearer token (logged once a minute per address)",
                self.surface
            );
        }
        Some(match wrong.verdict {
            Verdict::Refuse => self.unauthorized(),
            Verdict::Throttle { retry_after } => too_many(retry_after),
        })
    }

    fn unauthorized(&self) -> HttpResponse {
        let reason = format!("missing or wrong bearer token (Authorization: Bearer ${})", self.variable);
        HttpResponse::Unauthorized().insert_header((header::WWW_AUTHENTICATE, "Bearer")).json(error_body(reason))
    }

    /// The throttle's state is a table of counters, whole after every step, so a
    /// panic elsewhere while it was held leaves nothing to distrust.
    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// 429 with `Retry-After`, rounded up so a client that waits that long is counted afresh.
fn too_many(retry_after: Duration) -> HttpResponse {
    super::too_many(retry_after, |seconds| {
        format!("too many wrong bearer tokens from this address; retry after {seconds} s")
    })
}

/// The middleware in front of a set of routes, guarded by the gate that `gate`
/// picks from the state (each worker's copy lives there):
/// `wrap(bearer::middleware(|state| &state.admin_gate))`.
pub(crate) fn middleware<S, B>(
    gate: fn(&AppState) -> &BearerGate,
) -> impl Transform<S, ServiceRequest, Response = ServiceResponse<BoxBody>, Error = actix_web::Error, InitError = ()>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    from_fn(move |state: web::Data<AppState>, request: ServiceRequest, next: Next<B>| async move {
        let client = client(request.request(), &state);
        gate(&state).guard(client, request, next).await
    })
}
