//! `wechat-api diagnose [--json]`: every check of the troubleshooting guide, one
//! line each with ✔/✖ and the fix; exit 0 only when everything passes.
//!
//! Deliberately not here: the checks themselves (`crate::diagnose`).

use std::process::ExitCode;

use crate::config::Sources;
use crate::diagnose;

/// Runs every check and prints the report; the exit code says whether all passed.
pub(crate) fn run(sources: &Sources, json: bool) -> ExitCode {
    let runtime = match super::runtime(super::Threads::One) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(diagnose::run(sources));
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: cannot write the report as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", diagnose::render(&report));
    }
    if report.status == "pass" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
