//! The `tapswitch` binary: `run` (the daemon), the CLI verbs that talk to it over the control
//! socket, and `demo`.

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = cli::Cli::parse();
    match cli::execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapswitch: {e}");
            ExitCode::FAILURE
        }
    }
}
