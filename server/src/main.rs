//! `blindkd-server`: the query server alone. It depends on the keyless `blindkd-engine` only, so it
//! links no key-holding code, whatever else a workspace build compiles.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed pages for reuse across queries (issue 12; see the `blindkd` binary).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
