//! `wechat-api`: a single-binary appliance that receives WeCom (企业微信) and WeChat
//! Customer Service (微信客服) callbacks over its own TLS and watches its own health.
//!
//! Reading order, outside in:
//! - [`cli`] and [`commands`]: what the binary does for each subcommand.
//! - [`config`]: every setting, layered and validated once into [`config::Config`].
//! - [`startup`]: the [`startup::Application`] that binds, serves and drains.
//! - [`routes`]: HTTP only; every decision is delegated ([`access`] decides who may use a bearer-protected endpoint,
//!   [`networks`] which client a request comes from and whether its network is trusted).
//! - [`callback`]: the callback pipeline (signature → channel → decrypt → receive id → parse).
//! - [`channels`]: what a channel is called and its kind; [`config::Channels`] holds them (SPEC §12).
//! - [`crypto`] and [`messages`]: pure code, no I/O.
//! - [`health`], [`telemetry`], [`tls`]: what the service reports about itself and how it listens.

/// The version this binary reports everywhere (health, metrics, emails, `diagnose`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub(crate) mod access;
pub(crate) mod alerts;
pub(crate) mod backoff;
pub mod callback;
pub mod channels;
pub mod cli;
pub(crate) mod clock;
pub mod commands;
pub mod config;
pub(crate) mod connections;
pub mod crypto;
pub(crate) mod demo;
pub(crate) mod diagnose;
pub mod dispatch;
pub mod health;
pub(crate) mod housekeeping;
pub(crate) mod kf_sync;
pub(crate) mod log_limit;
pub(crate) mod media;
pub mod messages;
pub(crate) mod names;
pub(crate) mod networks;
pub(crate) mod outbound;
pub mod outgoing;
pub mod routes;
pub mod shaping;
pub mod startup;
pub mod store;
pub(crate) mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod wecom;
