//! The `l4relay` command: run the daemon, check a config, print the version.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use l4relay::config::Config;

#[derive(Parser)]
#[command(
    name = "l4relay",
    version,
    about = "A layer-4 TCP relay: zero-copy splice, PROXY protocol, health-checked upstream pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay in the foreground (as systemd runs it).
    Run {
        /// Config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Listen even where another process already listens (SO_REUSEPORT), to start a new
        /// version beside a running one before draining the old one. Without it, an address
        /// in use is an error.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file: print every error (file:line:column: key: message) and exit 1,
    /// or exit 0 silently when it is valid. Warnings about risky settings go to stderr.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for error in &errors {
                    eprintln!("{error}");
                }
                eprintln!("{} error(s) in {}", errors.len(), config.display());
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config: path,
            takeover,
        } => {
            // First, while the process is one thread: this may execute it again.
            let copies = l4relay::daemon::platform::tune_copies();
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(errors) => {
                    for error in &errors {
                        eprintln!("{error}");
                    }
                    eprintln!(
                        "l4relay: not starting: {} error(s) in {}",
                        errors.len(),
                        path.display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            l4relay::observe::logging::init(&config.global.log_level);
            copies.log();
            let code = match l4relay::daemon::run(config, l4relay::daemon::Options { takeover }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            };
            // Diagnostics are written by a thread of their own: let it finish, unless stderr
            // is stuck.
            l4relay::observe::logging::flush(std::time::Duration::from_secs(1));
            code
        }
    }
}
