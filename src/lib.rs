//! `wechat-api`: a single-binary appliance that receives WeCom (企业微信) and WeChat
//! Customer Service (微信客服) callbacks over its own TLS and watches its own health.
//!
//! Reading order, outside in (every module is named here; `tests/api/layout.rs`
//! keeps the files from importing each other in a circle):
//!
//! The binary and its configuration
//! - [`cli`] and [`commands`]: what the binary does for each subcommand;
//!   [`diagnose`] is `wechat-api diagnose`, [`demo`] what `serve --demo` and
//!   `sign --demo` need.
//! - [`config`]: every setting, layered and validated once into [`config::Config`].
//! - [`startup`]: the [`startup::Application`] that binds, serves and drains;
//!   [`connections`] is the per-address table every connection passes first,
//!   [`tls`] the certificates and the rustls set-up.
//!
//! Receiving
//! - [`routes`]: HTTP only; every decision is delegated ([`access`] decides who
//!   may use a bearer-protected endpoint, [`networks`] which client a request
//!   comes from and whether its network is trusted).
//! - [`callback`]: the callback pipeline (signature → channel → decrypt →
//!   receive id → parse); [`callback_metrics`] counts it.
//! - [`channels`]: what a channel is called and its kind; `config::Channels` holds
//!   them (SPEC §12).
//! - [`crypto`] and [`messages`]: pure code, no I/O.
//! - [`store`]: the boundary of everything kept (journal, outbox, cursors,
//!   tokens, leases, sends), SQLite or PostgreSQL behind it.
//!
//! Acting
//! - [`dispatch`]: journal → handlers → outbox → the world (forward, replies,
//!   sends); [`outgoing`] is the send API's request, [`shaping`] makes every text
//!   fit WeChat, [`media`] keeps downloaded files, [`names`] resolves display names;
//!   [`streams`] is an AI bot's answer as a stream (its life, in pure decisions).
//! - [`kf_sync`]: pulls WeChat Customer Service messages into the journal;
//!   [`aibot_ws`] holds an AI bot's long connection (one per bot in the cluster).
//! - [`wecom`]: the WeCom API client, its wire format, errors and tokens;
//!   [`outbound`] builds every outbound HTTP client.
//! - [`housekeeping`]: pruning under the cluster's lease.
//!
//! Watching itself
//! - [`health`] (the checks and the board), [`supervisor`] (runs them, feeds the
//!   alert state machines), [`alerts`] (the only mail), [`telemetry`] (logs and
//!   metrics, standing on no domain module), [`egress`] (the IP WeCom sees, per
//!   channel: changes mailed, 60020 parks the channel's outbox).
//!
//! Small foundations: [`backoff`] (the one retry formula), [`clock`] (times as
//! people read them), [`log_limit`] (rate-limited log lines).
//!
//! Tests and benches reach the crate only through `testing` (the `testing`
//! feature).

// Without the `testing` feature nothing but `cli` and `commands` is public, so an
// item that is `pub` only for `testing`'s re-exports would be reported here; the
// lint is enforced where it means something, in the build with `testing` (the
// tests, benches and clippy). Dead code, on the other hand, is reported here.
#![cfg_attr(not(feature = "testing"), allow(unreachable_pub))]

/// The version this binary reports everywhere (health, metrics, emails, `diagnose`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) mod access;
pub(crate) mod aibot_ws;
pub(crate) mod alerts;
pub(crate) mod backoff;
pub(crate) mod callback;
pub(crate) mod callback_metrics;
pub(crate) mod channels;
pub mod cli;
pub(crate) mod clock;
pub mod commands;
pub(crate) mod config;
pub(crate) mod connections;
pub(crate) mod crypto;
pub(crate) mod demo;
pub(crate) mod diagnose;
pub(crate) mod dispatch;
pub(crate) mod egress;
pub(crate) mod health;
pub(crate) mod housekeeping;
pub(crate) mod kf_sync;
pub(crate) mod log_limit;
pub(crate) mod media;
pub(crate) mod messages;
pub(crate) mod names;
pub(crate) mod networks;
pub(crate) mod outbound;
pub(crate) mod outgoing;
pub(crate) mod routes;
pub(crate) mod shaping;
pub(crate) mod startup;
pub(crate) mod store;
pub(crate) mod streams;
pub(crate) mod supervisor;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod wecom;

#[cfg(feature = "testing")]
pub mod testing;
