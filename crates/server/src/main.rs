//! `relayapi`: the binary. All logic lives in the library; see `cli.rs`.

use clap::Parser;
use relayapi::cli::{self, Cli, Command};

/// jemalloc returns the memory of closed streams to the OS; see `alloc.rs`.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// The main runtime only runs control work (signals, key reloads, the log
// pipeline, shutdown); requests are served on the worker threads that
// `server::serve` starts, one single-threaded runtime per CPU.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    relayapi::alloc::tune();
    let args = Cli::parse_from(cli::translate_legacy_args(std::env::args_os().collect()));
    let result = match args.into_command() {
        Command::Serve(s) => cli::serve(s).await,
        Command::GenConfig { host, port } => cli::gen_config(&host, port),
        Command::Token(t) => cli::token(*t),
        Command::Admin(a) => cli::admin(a).await,
        Command::CheckConfig { config, rai } => cli::check_config(config, rai),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
