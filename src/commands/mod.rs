//! One module per subcommand, and the mapping from their results to exit codes.

pub mod diagnose;
pub mod healthcheck;
pub mod keygen;
pub mod migrate_store;
pub mod serve;
pub mod sign;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::config::{ConfigErrors, Sources};

/// `EX_USAGE`: the configuration or the command line cannot be used.
pub const EXIT_CONFIG: u8 = 64;

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
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
