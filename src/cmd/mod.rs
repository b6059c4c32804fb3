//! The commands: the only code that prints.
//!
//! [`run`] dispatches a parsed command line to one module per command;
//! [`steps`] holds what they share (loading, planning, applying).

pub mod cli;
pub mod down;
pub mod plan_apply;
pub mod status;
pub mod steps;
pub mod watch;

use std::time::Duration;

use anyhow::Result;

use crate::cmd::cli::{Cli, Command};

/// A command's exit status (SPEC: 0 success or in sync, 1 error, 2 changes
/// planned or made with `--detailed-exitcode`, or drift for `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success; no changes (with `--detailed-exitcode`); in sync.
    Ok = 0,
    /// An invalid file, a failure, an unknown name.
    Error = 1,
    /// Changes planned or made (`--detailed-exitcode`), drift (`status`).
    Changes = 2,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// Runs one command; errors are printed by the caller and exit 1.
pub async fn run(cli: Cli) -> Result<Exit> {
    match &cli.command {
        Command::Schema => {
            print!("{}", crate::core::config::schema_json());
            Ok(Exit::Ok)
        }
        Command::Validate => plan_apply::validate(&cli),
        Command::Plan {
            offline: true,
            detailed_exitcode,
            format,
        } => plan_apply::plan_offline(&cli, *detailed_exitcode, *format),
        Command::Plan {
            offline: false,
            detailed_exitcode,
            format,
        } => plan_apply::apply_cmd(&cli, true, *detailed_exitcode, *format).await,
        Command::Apply {
            dry_run,
            detailed_exitcode,
            format,
        } => plan_apply::apply_cmd(&cli, *dry_run, *detailed_exitcode, *format).await,
        Command::Status { format } => status::status(&cli, *format).await,
        Command::Inspect { network, format } => status::inspect(&cli, network, *format).await,
        Command::Down => down::down(&cli).await,
        Command::Watch { resync } => watch::watch(&cli, Duration::from_secs(*resync)).await,
    }
}
