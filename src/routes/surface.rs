//! The public surface (SPEC §11): port 8092 faces the internet, so the
//! monitoring views (the status page, the full health report, the metrics) are
//! for insiders only: a client in `TRUSTED_NETWORKS`, or a request with
//! `Authorization: Bearer $ADMIN_TOKEN`. A stranger gets 404 for `/` and
//! `/metrics` and only `{"status": …}` from `/api/health`, also with a wrong
//! bearer (counted as a guess: `routes::health`).
//!
//! HTTP only: the client address is decided by [`networks::client_address`]
//! (`X-Forwarded-For` believed only from `TRUSTED_PROXIES`) and the bearer by
//! the admin [`BearerGate`](super::bearer::BearerGate), which also throttles wrong ones.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use crate::networks;
use crate::routes::AppState;

/// Who is asking for a monitoring view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Audience {
    /// From a trusted network, or with the admin bearer: everything.
    Insider,
    /// Anyone else: what WeCom and a load balancer need, nothing more.
    Stranger,
}

/// The client `request` comes from: its TCP peer, or what trusted proxies say
/// in `X-Forwarded-For`. Only a test request built without a connection has no
/// peer; it counts as the unspecified address, which no sensible network trusts.
pub(crate) fn client(request: &HttpRequest, state: &AppState) -> IpAddr {
    let peer = request.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.ip());
    let forwarded_for = request.headers().get_all("x-forwarded-for").filter_map(|value| value.to_str().ok());
    networks::client_address(peer, forwarded_for, &state.surface.trusted_proxies)
}

/// The audience of `request`, or the answer to a wrong admin bearer (401, or
/// 429 once its address has sent too many): a guess is refused plainly here too,
/// and counted with the admin endpoints' guesses.
pub(crate) fn audience(request: &HttpRequest, state: &AppState) -> Result<Audience, Box<HttpResponse>> {
    let client = client(request, state);
    if state.surface.trusted_networks.contains(client) {
        return Ok(Audience::Insider);
    }
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    state.admin_gate.audience(authorization, client, request.path(), Instant::now())
}
