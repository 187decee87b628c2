//! `relayapi`: the binary. All logic lives in the library; see `cli.rs`.

use clap::Parser;
use relayapi::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse_from(cli::translate_legacy_args(std::env::args_os().collect()));
    let result = match args.command {
        None => cli::serve(args.serve).await,
        Some(Command::Serve(s)) => cli::serve(s).await,
        Some(Command::GenConfig { host, port }) => cli::gen_config(&host, port),
        Some(Command::Token(t)) => cli::token(*t),
        Some(Command::Admin(a)) => cli::admin(a).await,
        Some(Command::CheckConfig { config, rai }) => cli::check_config(config, rai),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
