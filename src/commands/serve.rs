//! `wechat-api serve [--demo]`: validate the configuration, start, run until stopped.
//!
//! Deliberately not here: what demo mode chooses (`demo`) and how the service is
//! wired (`startup`).

use anyhow::Context;

use super::{runtime, CommandError, Threads};
use crate::config::{self, ConfigErrors, Settings, Sources};
use crate::demo::{self, stand_in::StandIn};
use crate::startup::Application;
use crate::telemetry;

/// Runs the service; with `demo`, on the generated demo configuration and with
/// the stand-in for WeCom's API.
pub(crate) fn run(mut sources: Sources, demo: bool) -> Result<(), CommandError> {
    // Everything the service creates is its own: the store (access tokens, every
    // message), TLS files made in demo mode, logs. Places that must be shared set
    // their modes explicitly (media: 0640). Process-wide, so set before any thread.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let dotenv_ignored = demo && sources.dotenv.is_some();
    if demo {
        sources = demo::sources(&sources).context("cannot prepare the demo directory")?;
    }
    let mut settings = Settings::read(&sources)?;
    let stand_in = if demo {
        let stand_in = StandIn::bind().context("cannot start the demo stand-in for WeCom's API")?;
        demo::use_stand_in(&mut settings, stand_in.base_url());
        Some(stand_in)
    } else {
        None
    };
    let (config, warnings) = config::validate(&settings)?;
    let _log = telemetry::init_tracing(config.logging.format, config.logging.filter.as_deref());
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let runtime = runtime(Threads::Many).context("cannot start the async runtime")?;
    runtime.block_on(async {
        let app = Application::build(config.clone()).await.map_err(|error| -> CommandError {
            if error.is_configuration() {
                ConfigErrors(vec![error.to_string()]).into()
            } else {
                anyhow::Error::from(error).into()
            }
        })?;
        let stand_in = stand_in.map(|stand_in| tokio::spawn(stand_in.run(app.shutdown_token())));
        if let (true, Some(file)) = (demo, sources.file.as_deref()) {
            println!("{}", demo::banner(&config, app.port(), file, dotenv_ignored));
        }
        app.run_until_stopped().await.context("the HTTP server failed")?;
        if let Some(stand_in) = stand_in {
            stand_in.await.context("the demo stand-in panicked")?.context("the demo stand-in failed")?;
        }
        Ok(())
    })
}
