//! `blindkd-server`: the query server alone, built without any key-holding code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = blindkd_server::ServeArgs::parse();
    if blindkd_engine::KEY_HOLDING {
        eprintln!(
            "error: this blindkd-server binary links the engine's key-holding code (Cargo unified \
             features in a workspace build). Build the operator's binary on its own: \
             `cargo build --release -p blindkd-server`."
        );
        return ExitCode::from(2);
    }
    match blindkd_server::run_from_args(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
