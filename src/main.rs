//! The `wechat-api` binary: parse the command line, run it, exit with its code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    wechat_api::commands::run(wechat_api::cli::Cli::parse())
}
