//! `wechat-api sign`: ready-to-run curl commands for a signed URL verification and
//! a signed, encrypted text callback.
//!
//! Deliberately not here: building the commands (`demo::curl`, which the demo
//! banner shares) and the demo configuration (`demo`).

use super::CommandError;
use crate::config::{self, Sources};
use crate::demo;

/// Prints the commands for `url` (default: the local listener's callback).
pub(crate) fn run(mut sources: Sources, url: Option<String>, text: &str, demo: bool) -> Result<(), CommandError> {
    if demo {
        sources = demo::sources(&sources).map_err(anyhow::Error::from)?;
    }
    let (config, _) = config::load(&sources)?;
    let url = url.unwrap_or_else(|| config.listen.local_url(config.listen.https_port, demo::curl::CALLBACK_PATH));
    print!("{}", demo::curl::commands(&config, &url, text));
    Ok(())
}
