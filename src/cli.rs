//! The command line, as clap parses it. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Receives WeCom (企业微信) and WeChat Customer Service (微信客服) callbacks over its
/// own TLS and watches its own health.
#[derive(Debug, Parser)]
#[command(name = "wechat-api", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (settings are the variable names in lower case).
    /// Also `WECHAT_API_CONFIG`. Environment variables and `.env` override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default). Logs go to stdout at info; `RUST_LOG=debug`
    /// (or e.g. `RUST_LOG=info,wechat_api::dispatch=trace`) raises the service's
    /// own lines; other crates stay at info at most, so no secret reaches a log.
    Serve {
        /// First start with no configuration: generate a Token, an EncodingAESKey,
        /// a demo corp id and a self-signed certificate under `DATA_DIR` from the
        /// environment (default ./wechat-api-demo) and print ready-to-run curl
        /// commands. The demo keeps its data there (SQLite, never DATABASE_URL) and
        /// does not read `.env`; other variables of the environment (ports,
        /// FORWARD_URL, …) apply. Not for production.
        #[arg(long)]
        demo: bool,
    },
    /// Ask the local liveness endpoint; exit 0 when live (for Docker HEALTHCHECK).
    Healthcheck {
        /// Check this URL instead of the configured local listener.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// The troubleshooting guide as one command: configuration, certificate, a
    /// signed URL verification against the running service, clock, WeCom (gettoken
    /// per Secret, 60020 with the IP to trust, kf API permission), upload and data
    /// directories, SMTP login. Exit 0 only when everything passes.
    Diagnose {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a fresh callback Token (WECOM_TOKEN), EncodingAESKey
    /// (WECOM_ENCODING_AES_KEY) and admin bearer token (ADMIN_TOKEN), as `.env`
    /// lines. The Token and key go into the app's 接收消息 settings too; the admin
    /// token opens /api/test-wecom-connection, names and the test alert (unset:
    /// those endpoints are off). Run it again for a SEND_TOKEN.
    Keygen,
    /// Print curl commands for a signed URL verification and a signed, encrypted
    /// text callback, using the configured Token and EncodingAESKey.
    Sign {
        /// Callback URL (default: the local listener's /api/v1/wecom/callback).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Text of the test message.
        #[arg(long, value_name = "TEXT", default_value = "hello from wechat-api sign")]
        text: String,
        /// Use the demo configuration made by `serve --demo` (the same directory:
        /// `DATA_DIR` from the environment, else ./wechat-api-demo; `.env` is not read).
        #[arg(long)]
        demo: bool,
    },
    /// Move this installation's SQLite store (DATA_DIR) into an empty PostgreSQL
    /// database, for replicas: kf cursors, the first start, unhandled messages,
    /// owed actions, alert state and names. Stop the service first.
    MigrateStore {
        /// The target, as DATABASE_URL: postgres://user:password@host:port/dbname?sslmode=…
        #[arg(long, value_name = "DATABASE_URL")]
        to: String,
    },
}
