//! `wechat-api`: a single-binary appliance that receives WeCom (企业微信) and WeChat
//! Customer Service (微信客服) callbacks over its own TLS and watches its own health.
//!
//! Reading order, outside in:
//! - [`cli`] and [`commands`]: what the binary does for each subcommand.
//! - [`config`]: every setting, layered and validated once into [`config::Config`].
//! - [`startup`]: the [`startup::Application`] that binds, serves and drains.
//! - [`routes`]: HTTP only; every decision is delegated.
//! - [`callback`]: the callback pipeline (signature → channel → decrypt → receive id → parse).
//! - [`crypto`] and [`messages`]: pure code, no I/O.
//! - [`health`], [`telemetry`], [`tls`]: what the service reports about itself and how it listens.

pub mod alerts;
pub mod callback;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod diagnose;
pub mod dispatch;
pub mod health;
pub mod kf_sync;
pub mod media;
pub mod messages;
pub mod names;
pub mod routes;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod wecom;
