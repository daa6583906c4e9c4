//! One module per subcommand, the mapping from their results to exit codes, and
//! the one tokio runtime builder they share.
//!
//! Deliberately not here: what a command does beyond parsing its arguments and
//! printing; the work lives in the library (`config`, `startup`, `diagnose`, `demo`).

pub(crate) mod diagnose;
pub(crate) mod healthcheck;
pub(crate) mod keygen;
pub(crate) mod migrate_store;
pub(crate) mod serve;
pub(crate) mod sign;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::config::{ConfigErrors, Sources};

/// `EX_USAGE`: the configuration or the command line cannot be used.
pub(crate) const EXIT_CONFIG: u8 = 64;

/// How many threads a command's runtime needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// The service: a worker per core.
    Many,
    /// A short client run (`healthcheck`, `diagnose`).
    One,
}

/// The tokio runtime for a command, with time and I/O enabled.
pub(crate) fn runtime(threads: Threads) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Threads::Many => tokio::runtime::Builder::new_multi_thread(),
        Threads::One => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all().thread_name("wechat-api").build()
}

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// Configuration problems, printed one per line; exit 64.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// Anything else; exit 1.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Runs the parsed command line and maps the outcome to an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let sources = Sources::from_process(cli.config);
    let result = match cli.command.unwrap_or(Command::Serve { demo: false }) {
        Command::Serve { demo } => serve::run(sources, demo),
        Command::Healthcheck { url } => return healthcheck::run(&sources, url),
        Command::Diagnose { json } => return diagnose::run(&sources, json),
        Command::Keygen => keygen::run(),
        Command::Sign { url, text, demo } => sign::run(sources, url, &text, demo),
        Command::MigrateStore { to } => migrate_store::run(&sources, &to),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CommandError::Config(errors)) => {
            for line in &errors.0 {
                eprintln!("configuration error: {line}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        Err(CommandError::Failed(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
