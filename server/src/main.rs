//! `blindkd-server`: the query server alone, built without any key-holding code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = blindkd_server::ServeArgs::parse();
    match blindkd_server::run_from_args(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
