//! `wechat-api diagnose [--json]`: every check of the troubleshooting guide, one
//! line each with ✔/✖ and the fix; exit 0 only when everything passes.

use std::process::ExitCode;

use crate::config::Sources;
use crate::diagnose;

pub fn run(sources: &Sources, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(diagnose::run(sources));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", diagnose::render(&report));
    }
    if report.status == "pass" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
