//! `plan` and `status` ask a running agent first (see
//! [`crate::host::agentsock`]) and read the kernel themselves when no
//! agent answers, or when it declines; `NETLOOM_ASK_AGENT=0` skips the
//! agent. `apply` of the agent's own file is applied by the agent, as the
//! command read it (`NETLOOM_AGENT_APPLIES=0`: by the command itself).
//!
//! The agent answers from its view of the host, kept current by kernel
//! events, and computes again only what may have changed (see
//! `cmd::watch::serve`): at 1,000 containers that is a few milliseconds
//! against the few hundred a command needs to read the kernel (the
//! README's performance section). The answers are the same either way
//! (tests/kernel_agentsock.rs).

use std::io::IsTerminal;

use crate::cmd::cli::{Cli, Format};
use crate::cmd::steps::{Exit, Out};
use crate::host::agentsock::{self, Answer, Request};

/// Set to 0 to read the kernel without asking a running agent.
pub const ASK_AGENT_ENV: &str = "NETLOOM_ASK_AGENT";

/// Set to 0 to have `apply` of the agent's file applied by the command
/// itself rather than by the agent.
pub const AGENT_APPLIES_ENV: &str = "NETLOOM_AGENT_APPLIES";

/// Whether `apply` asks a running agent to apply its file: it applies
/// from its view of the host, which at 1,000 containers costs a third of
/// the command's own apply, quiet or loaded (the README's figures).
pub fn agent_applies() -> bool {
    std::env::var_os(AGENT_APPLIES_ENV).is_none_or(|v| v != "0")
}

/// What the command asks the agent.
pub struct Ask {
    /// `plan`, `status` or `apply`.
    pub command: &'static str,
    pub format: Format,
    pub detailed: bool,
    pub verbose: bool,
}

/// Asks a running agent to answer for the file the command was given,
/// and prints its answer: the command's own output. None: no agent
/// answered (why is logged at debug), and the command goes on by itself
/// (and says what is wrong with the file, or that it needs root).
///
/// The command asks before it parses the file: the agent answers only
/// for the very bytes it parsed itself (and declines an invalid file), so
/// parsing them again here would only delay the answer (at 1,000
/// containers, by about as long as the agent takes to answer `status`).
pub fn ask(cli: &Cli, ask: &Ask) -> Option<Exit> {
    if std::env::var_os(ASK_AGENT_ENV).is_some_and(|v| v == "0") {
        return None;
    }
    // No socket: no agent (the common case without one), no message.
    if !agentsock::path().exists() {
        return None;
    }
    crate::cmd::steps::require_root(ask.command).ok()?;
    let bytes = crate::cmd::steps::read_config(&cli.config).ok()?;
    let Ok(config_text) = String::from_utf8(bytes) else {
        return None;
    };
    let req = Request {
        version: agentsock::VERSION,
        command: ask.command.to_string(),
        config: cli.config.clone(),
        config_text,
        state_dir: cli.state_dir.clone(),
        upstream_dns: crate::cmd::steps::upstream_dns(),
        format: format_name(ask.format).to_string(),
        detailed: ask.detailed,
        verbose: ask.verbose,
        color: std::io::stdout().is_terminal(),
    };
    match agentsock::ask(&req) {
        Ok(Answer::Output {
            stdout,
            stderr,
            exit,
        }) => {
            let exit = exit_of(exit)?;
            Out { stdout, stderr }.print();
            Some(exit)
        }
        Ok(Answer::Declined(why)) => {
            tracing::debug!("the agent declined: {why}; reading the kernel");
            None
        }
        Err(e) => {
            tracing::debug!("no answer from the agent ({e:#}); reading the kernel");
            None
        }
    }
}

/// The name of a format on the wire.
pub fn format_name(f: Format) -> &'static str {
    match f {
        Format::Text => "text",
        Format::Json => "json",
        Format::Markdown => "markdown",
    }
}

/// The format a name on the wire names.
pub fn format_of(name: &str) -> Option<Format> {
    match name {
        "text" => Some(Format::Text),
        "json" => Some(Format::Json),
        "markdown" => Some(Format::Markdown),
        _ => None,
    }
}

fn exit_of(code: u8) -> Option<Exit> {
    match code {
        0 => Some(Exit::Ok),
        1 => Some(Exit::Error),
        2 => Some(Exit::Changes),
        _ => None,
    }
}
