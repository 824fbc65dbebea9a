//! The `tapswitch` binary: `run` (the daemon), the CLI verbs that talk to it over the control
//! socket, and `demo`. Run by a container runtime with `CNI_COMMAND` set (installed into a
//! CNI plugin directory as `tapswitch`), it is the CNI plugin (`tapswitch_control::cni`).

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni();
    }
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
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    logger.format_timestamp_millis();
    if args.log_format == "json" {
        // One JSON object per line, for log collectors.
        logger.format(|buf, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    logger.init();
    match cli::execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapswitch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The CNI plugin: the configuration on stdin, the result or error object on stdout.
fn cni() -> ExitCode {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let env = tapswitch_control::cni::Env::from_process();
    let (out, code) = tapswitch_control::cni::run(&env, &stdin);
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code as u8)
    }
}
