//! The `tapswitch` binary: `run` (the daemon), the CLI verbs that talk to it over the control
//! socket, and `demo`.

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Run { .. } | cli::Command::Demo) {
        // A listing piped into `head` ends quietly when the reader goes, as `ip` does.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // The demo prints its own story; the daemon's log is for `run`.
    let level = if matches!(args.command, cli::Command::Demo) {
        "warn"
    } else {
        "info"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    match cli::execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapswitch: {e}");
            ExitCode::FAILURE
        }
    }
}
