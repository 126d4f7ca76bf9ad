//! `blindkd`: parse the arguments, call [`blindkd::run`], map errors to an exit code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc keeps freed pages for reuse: a query allocates and frees many 100–200 KB polynomial
/// buffers, which the system allocator returned to the kernel and got back zeroed each time
/// (a fifth of a 10⁶ kNN query's CPU in `perf`; issue 12, benches/README.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = blindkd::Cli::parse();
    match blindkd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
